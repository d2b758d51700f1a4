/* vdso00: time through the vDSO after the restore.
 * A thread reads CLOCK_MONOTONIC through glibc (the vDSO) every millisecond
 * during the whole test and counts every step backwards; the main thread
 * records the last reading before `ready`. After the restore:
 *   - clock_gettime(CLOCK_MONOTONIC/REALTIME/BOOTTIME), gettimeofday() and
 *     time() work and agree with the raw syscalls (a stale vvar page or a
 *     broken trampoline shows as a difference);
 *   - CLOCK_MONOTONIC never went backwards, neither in the thread nor
 *     compared with the last reading before the dump;
 *   - getauxval(AT_SYSINFO_EHDR) still points inside a mapping of
 *     /proc/self/maps, readable, starting with an ELF header.
 * Run it with `kleap restore --vdso-proxy` too (the trampoline path). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static atomic_int stop, backwards;
static atomic_llong worst_step_ns;
static atomic_llong thread_last_ns;
static atomic_long thread_reads;

static int64_t ns_of(const struct timespec* ts) {
  return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

static int64_t vdso_ns(clockid_t clk) {
  struct timespec ts;
  if (clock_gettime(clk, &ts) != 0) return -1;
  return ns_of(&ts);
}

/* The same clock straight from the kernel, bypassing the vDSO. */
static int64_t raw_ns(clockid_t clk) {
#if defined(__i386__) && defined(SYS_clock_gettime64)
  struct {
    int64_t sec, nsec;
  } t64;
  if (syscall(SYS_clock_gettime64, clk, &t64) == 0) return t64.sec * 1000000000 + t64.nsec;
  struct {
    int32_t sec, nsec;
  } t32;
  if (syscall(SYS_clock_gettime, clk, &t32) != 0) return -1;
  return (int64_t)t32.sec * 1000000000 + t32.nsec;
#else
  struct timespec ts;
  if (syscall(SYS_clock_gettime, clk, &ts) != 0) return -1;
  return ns_of(&ts);
#endif
}

static void* ticker(void* arg) {
  (void)arg;
  int64_t last = vdso_ns(CLOCK_MONOTONIC);
  while (!atomic_load(&stop)) {
    int64_t now = vdso_ns(CLOCK_MONOTONIC);
    if (now < last) {
      atomic_fetch_add(&backwards, 1);
      if (last - now > atomic_load(&worst_step_ns)) atomic_store(&worst_step_ns, last - now);
    }
    last = now;
    atomic_store(&thread_last_ns, now);
    atomic_fetch_add(&thread_reads, 1);
    wl_sleep_ms(1);
  }
  return NULL;
}

/* Finds the /proc/self/maps line containing addr; fills line. */
static int find_mapping(uintptr_t addr, char* line, size_t n) {
  if (wl_maps_line(addr, line, n) != 0) return -1;
  const char* perms = strchr(line, ' ');
  return perms && perms[1] == 'r' ? 1 : 0;
}

static void check_clock(struct wl_check* c, const char* name, clockid_t clk, int64_t tolerance) {
  int64_t r1 = raw_ns(clk), v = vdso_ns(clk), r2 = raw_ns(clk);
  if (!wl_check(c, v >= 0, "clock_gettime(%s) failed: %s", name, strerror(errno))) return;
  if (!wl_check(c, r1 >= 0 && r2 >= 0, "raw clock_gettime(%s) failed", name)) return;
  wl_check(c, v >= r1 - tolerance && v <= r2 + tolerance,
           "clock_gettime(%s) through the vDSO reads %" PRId64 " ns, the syscall %" PRId64
           "..%" PRId64 " ns",
           name, v, r1, r2);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  uintptr_t ehdr = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
  char line[512] = "";
  if (!ehdr) wl_die("main", "AT_SYSINFO_EHDR is 0: this process has no vDSO");
  if (find_mapping(ehdr, line, sizeof line) != 1)
    wl_die("main", "AT_SYSINFO_EHDR %p is not in a readable mapping: %s", (void*)ehdr, line);
  wl_log("vDSO at %p: %s", (void*)ehdr, line);
  pthread_t th;
  if (pthread_create(&th, NULL, ticker, NULL) != 0) wl_die("main", "pthread_create");
  while (atomic_load(&thread_reads) < 5) wl_sleep_ms(1);
  wl_ready("main");
  int64_t last_before = vdso_ns(CLOCK_MONOTONIC);
  struct wl_check c;
  wl_check_init(&c);
  if (!wl_check(&c, wl_wait() == 0, "timeout waiting for SIGUSR1"))
    return wl_check_result("main", &c);

  int64_t mono = vdso_ns(CLOCK_MONOTONIC);
  wl_check(&c, mono >= last_before,
           "CLOCK_MONOTONIC went backwards across the dump: %" PRId64 " ns, before %" PRId64 " ns",
           mono, last_before);
  check_clock(&c, "CLOCK_MONOTONIC", CLOCK_MONOTONIC, 0);
  check_clock(&c, "CLOCK_REALTIME", CLOCK_REALTIME, 0);
  check_clock(&c, "CLOCK_BOOTTIME", CLOCK_BOOTTIME, 0);
  check_clock(&c, "CLOCK_MONOTONIC_COARSE", CLOCK_MONOTONIC_COARSE, 20000000);
  check_clock(&c, "CLOCK_REALTIME_COARSE", CLOCK_REALTIME_COARSE, 20000000);

  struct timeval tv;
  int64_t r1 = raw_ns(CLOCK_REALTIME);
  int g = gettimeofday(&tv, NULL);
  int64_t r2 = raw_ns(CLOCK_REALTIME);
  int64_t tv_ns = (int64_t)tv.tv_sec * 1000000000 + (int64_t)tv.tv_usec * 1000;
  if (wl_check(&c, g == 0, "gettimeofday failed: %s", strerror(errno)))
    wl_check(&c, tv_ns >= r1 - 1000 && tv_ns <= r2,
             "gettimeofday reads %" PRId64 " ns, the syscall %" PRId64 "..%" PRId64, tv_ns, r1, r2);
  time_t t = time(NULL);
  int64_t rs = raw_ns(CLOCK_REALTIME) / 1000000000;
  wl_check(&c, t == rs || t == rs - 1, "time() reads %lld, the syscall %lld", (long long)t,
           (long long)rs);

  /* Many readings in a row: monotonic, never failing. */
  int64_t prev = vdso_ns(CLOCK_MONOTONIC);
  for (int i = 0; i < 100000; i++) {
    int64_t now = vdso_ns(CLOCK_MONOTONIC);
    if (!wl_check(&c, now >= prev, "CLOCK_MONOTONIC stepped back by %" PRId64 " ns at read %d",
                  prev - now, i))
      break;
    prev = now;
  }

  long reads = atomic_load(&thread_reads);
  wl_sleep_ms(50);
  wl_check(&c, atomic_load(&thread_reads) > reads, "the ticker thread stopped reading the clock");
  atomic_store(&stop, 1);
  pthread_join(th, NULL);
  wl_check(&c, atomic_load(&backwards) == 0,
           "the ticker thread saw CLOCK_MONOTONIC go backwards %d times (worst %lld ns)",
           atomic_load(&backwards), (long long)atomic_load(&worst_step_ns));

  uintptr_t ehdr_now = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
  wl_check(&c, ehdr_now == ehdr, "AT_SYSINFO_EHDR is %p, was %p", (void*)ehdr_now, (void*)ehdr);
  int m = find_mapping(ehdr_now, line, sizeof line);
  if (wl_check(&c, m >= 0, "AT_SYSINFO_EHDR %p is in no mapping", (void*)ehdr_now) &&
      wl_check(&c, m == 1, "AT_SYSINFO_EHDR %p is in an unreadable mapping: %s", (void*)ehdr_now,
               line)) {
    wl_log("vDSO now: %s", line);
    wl_check(&c, memcmp((const void*)ehdr_now, "\177ELF", 4) == 0,
             "AT_SYSINFO_EHDR %p does not start with an ELF header (%s)", (void*)ehdr_now, line);
  }
  return wl_check_result("main", &c);
}
