/* tls00: thread-local storage and segment bases.
 * The main thread and three workers hold distinct values in __thread variables.
 * Every thread records its segment selectors (fs, gs) and, on x86_64, its FS
 * and GS bases (ARCH_GET_FS/GS); on i386, every TLS slot of the GDT
 * (get_thread_area). Worker 1 also installs a segment of its own:
 *   x86_64: arch_prctl(ARCH_SET_GS) to a buffer, read back through %gs:0;
 *   i386:   set_thread_area() for a new entry, loaded into %fs, read via %fs:0.
 * After the restore each thread compares all of it, including the values read
 * through the segment registers. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <asm/prctl.h>
#elif defined(__i386__)
#include <asm/ldt.h>
#endif

#include "workload.h"

#define NTHREADS 4 /* index 0 is the main thread */

static __thread volatile uint32_t tv;
static __thread volatile unsigned char tbuf[200];

/* The buffer the custom segment points to. */
static uint64_t segbuf[8] __attribute__((aligned(64)));

struct tstate {
  pid_t tid;
  uint32_t tv;
  void* tv_addr;
  uint16_t fs_sel, gs_sel;
#if defined(__x86_64__)
  unsigned long fs_base, gs_base;
#elif defined(__i386__)
  int ntls;
  struct user_desc tls[32];
#endif
  uint64_t seg_word; /* read through the custom segment (worker 1) */
};

static struct tstate before[NTHREADS];
static atomic_int nready, check_req, ndone;
static struct wl_check results[NTHREADS];

static uint16_t sel_fs(void) {
  uint16_t s;
  __asm__ volatile("mov %%fs, %0" : "=r"(s));
  return s;
}
static uint16_t sel_gs(void) {
  uint16_t s;
  __asm__ volatile("mov %%gs, %0" : "=r"(s));
  return s;
}

static uint64_t read_custom_seg(void) {
#if defined(__x86_64__)
  uint64_t v;
  __asm__ volatile("mov %%gs:8, %0" : "=r"(v));
  return v;
#else
  uint32_t lo, hi;
  __asm__ volatile("mov %%fs:8, %0\n\tmov %%fs:12, %1" : "=r"(lo), "=r"(hi));
  return ((uint64_t)hi << 32) | lo;
#endif
}

static int install_custom_seg(char* why, size_t n) {
#if defined(__x86_64__)
  if (syscall(SYS_arch_prctl, ARCH_SET_GS, (unsigned long)segbuf) != 0) {
    snprintf(why, n, "arch_prctl(ARCH_SET_GS): %s", strerror(errno));
    return -1;
  }
#else
  struct user_desc d;
  memset(&d, 0, sizeof d);
  d.entry_number = (unsigned)-1;
  d.base_addr = (unsigned)(uintptr_t)segbuf;
  d.limit = 0xfffff;
  d.seg_32bit = 1;
  d.limit_in_pages = 1;
  d.useable = 1;
  if (syscall(SYS_set_thread_area, &d) != 0) {
    snprintf(why, n, "set_thread_area: %s", strerror(errno));
    return -1;
  }
  uint16_t sel = (uint16_t)((d.entry_number << 3) | 3);
  __asm__ volatile("mov %0, %%fs" ::"r"(sel));
  wl_log("worker 1: set_thread_area entry %u, fs = 0x%x", d.entry_number, sel);
#endif
  return 0;
}

static void snapshot(struct tstate* s, int idx) {
  memset(s, 0, sizeof *s);
  s->tid = wl_gettid();
  s->tv = tv;
  s->tv_addr = (void*)&tv;
  s->fs_sel = sel_fs();
  s->gs_sel = sel_gs();
#if defined(__x86_64__)
  syscall(SYS_arch_prctl, ARCH_GET_FS, &s->fs_base);
  syscall(SYS_arch_prctl, ARCH_GET_GS, &s->gs_base);
#else
  for (unsigned e = 0; e < 32; e++) {
    struct user_desc d;
    memset(&d, 0, sizeof d);
    d.entry_number = e;
    if (syscall(SYS_get_thread_area, &d) == 0) s->tls[s->ntls++] = d;
  }
#endif
  if (idx == 1) s->seg_word = read_custom_seg();
}

static void check_thread(int idx) {
  struct wl_check* c = &results[idx];
  struct tstate* b = &before[idx];
  struct tstate now;
  snapshot(&now, idx);
  char t[32];
  snprintf(t, sizeof t, "thread %d (tid %d)", idx, (int)b->tid);
  wl_check(c, now.tid == b->tid, "%s: gettid %d", t, (int)now.tid);
  wl_check(c, now.tv == b->tv, "%s: __thread value 0x%x, want 0x%x", t, now.tv, b->tv);
  wl_check(c, now.tv_addr == b->tv_addr, "%s: &tv %p, was %p", t, now.tv_addr, b->tv_addr);
  long d = wl_pattern_diff((const void*)tbuf, sizeof tbuf, 500 + (uint32_t)idx);
  wl_check(c, d < 0, "%s: __thread buffer differs at byte %ld", t, d);
  wl_check(c, now.fs_sel == b->fs_sel, "%s: fs selector 0x%x, was 0x%x", t, now.fs_sel, b->fs_sel);
  wl_check(c, now.gs_sel == b->gs_sel, "%s: gs selector 0x%x, was 0x%x", t, now.gs_sel, b->gs_sel);
#if defined(__x86_64__)
  wl_check(c, now.fs_base == b->fs_base, "%s: ARCH_GET_FS 0x%lx, was 0x%lx", t, now.fs_base,
           b->fs_base);
  wl_check(c, now.gs_base == b->gs_base, "%s: ARCH_GET_GS 0x%lx, was 0x%lx", t, now.gs_base,
           b->gs_base);
  if (idx == 1)
    wl_check(c, b->gs_base == (unsigned long)segbuf, "%s: GS base was 0x%lx, set to %p", t,
             b->gs_base, (void*)segbuf);
#else
  wl_check(c, now.ntls == b->ntls, "%s: %d TLS slots, were %d", t, now.ntls, b->ntls);
  for (int i = 0; i < b->ntls && i < now.ntls; i++) {
    const struct user_desc *x = &now.tls[i], *y = &b->tls[i];
    wl_check(c, memcmp(x, y, sizeof *x) == 0,
             "%s: get_thread_area(%u): base 0x%x limit 0x%x seg_32bit %u useable %u, was "
             "entry %u base 0x%x limit 0x%x seg_32bit %u useable %u",
             t, x->entry_number, x->base_addr, x->limit, x->seg_32bit, x->useable, y->entry_number,
             y->base_addr, y->limit, y->seg_32bit, y->useable);
  }
#endif
  if (idx == 1) {
    wl_check(c, now.seg_word == segbuf[1] && now.seg_word == b->seg_word,
             "%s: read 0x%llx through the custom segment, want 0x%llx", t,
             (unsigned long long)now.seg_word, (unsigned long long)segbuf[1]);
  }
}

static void setup_thread(int idx) {
  tv = 0xa5000000u + (uint32_t)idx * 0x10101u;
  wl_pattern((void*)tbuf, sizeof tbuf, 500 + (uint32_t)idx);
  if (idx == 1) {
    char why[160];
    if (install_custom_seg(why, sizeof why) != 0) wl_die("main", "worker 1: %s", why);
  }
  snapshot(&before[idx], idx);
}

static void* worker(void* arg) {
  int idx = (int)(long)arg;
  setup_thread(idx);
  atomic_fetch_add(&nready, 1);
  while (!atomic_load(&check_req)) wl_sleep_ms(5);
  check_thread(idx);
  atomic_fetch_add(&ndone, 1);
  return NULL;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  for (int i = 0; i < 8; i++) segbuf[i] = 0x5e9b0f0000000000ull + (uint64_t)i * 0x1111;
  for (int i = 0; i < NTHREADS; i++) wl_check_init(&results[i]);
  setup_thread(0);
  pthread_t th[NTHREADS];
  for (long i = 1; i < NTHREADS; i++)
    if (pthread_create(&th[i], NULL, worker, (void*)i) != 0) wl_die("main", "pthread_create");
  while (atomic_load(&nready) < NTHREADS - 1) wl_sleep_ms(1);
  wl_ready("main");
  if (wl_wait() != 0) {
    wl_result("main", 0, "timeout waiting for SIGUSR1");
    return 1;
  }
  atomic_store(&check_req, 1);
  check_thread(0);
  struct wl_check c;
  wl_check_init(&c);
  for (int t = 0; t < 500 && atomic_load(&ndone) < NTHREADS - 1; t++) wl_sleep_ms(10);
  if (!wl_check(&c, atomic_load(&ndone) == NTHREADS - 1, "only %d of %d workers answered",
                atomic_load(&ndone), NTHREADS - 1))
    return wl_check_result("main", &c);
  for (int i = 0; i < NTHREADS; i++) {
    if (results[i].failures) wl_check(&c, 0, "%s", results[i].why);
  }
  for (long i = 1; i < NTHREADS; i++) pthread_join(th[i], NULL);
  return wl_check_result("main", &c);
}
