/* rseq00: glibc's rseq registration, in the main thread and a second thread.
 * Before the dump each thread records how the kernel answers a second
 * registration of glibc's area (EBUSY: already registered with these
 * arguments). After the restore each thread:
 *   - asks again: 0 would mean the restored thread had no registration;
 *   - checks rseq_cs is 0;
 *   - writes RSEQ_CPU_ID_UNINITIALIZED into cpu_id and cpu_id_start, calls
 *     sched_yield() and, if that did not reschedule, takes a signal; the
 *     kernel must have written the current CPU back (it only does so for a
 *     registered area).
 * If glibc did not register rseq (__rseq_size == 0) the program says why and
 * passes only when the kernel lacks rseq. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define NT 2

static void* thread_pointer(void) {
  void* p;
#if defined(__x86_64__)
  __asm__("mov %%fs:0, %0" : "=r"(p));
#else
  __asm__("mov %%gs:0, %0" : "=r"(p));
#endif
  return p;
}

static struct rseq* my_rseq(void) {
  return (struct rseq*)((char*)thread_pointer() + __rseq_offset);
}

static int probe_len(void) {
  return __rseq_size > 32 ? (int)((__rseq_size + 31) & ~31u) : 32;
}

/* Returns the errno of a second registration attempt, 0 if it succeeded. */
static int probe_registration(void) {
  long r = syscall(__NR_rseq, my_rseq(), probe_len(), 0, RSEQ_SIG);
  return r == 0 ? 0 : errno;
}

struct tinfo {
  pid_t tid;
  int probe_errno;
  int cpu_before;
  struct wl_check c;
};
static struct tinfo ti[NT];
static atomic_int nready, check_req, ndone;

static void urg_handler(int sig) {
  (void)sig;
}

static void setup(int idx) {
  struct tinfo* t = &ti[idx];
  wl_check_init(&t->c);
  t->tid = wl_gettid();
  t->probe_errno = probe_registration();
  t->cpu_before = (int)my_rseq()->cpu_id;
  wl_log("thread %d tid %d: rseq area %p, cpu_id %d, re-registration answers %s", idx, (int)t->tid,
         (void*)my_rseq(), t->cpu_before, strerror(t->probe_errno));
}

static void check(int idx) {
  struct tinfo* t = &ti[idx];
  struct wl_check* c = &t->c;
  char n[40];
  snprintf(n, sizeof n, "thread %d (tid %d)", idx, (int)t->tid);
  int e = probe_registration();
  if (!wl_check(c, e != 0, "%s: rseq() registered glibc's area anew: the registration was lost", n))
    return;
  wl_check(c, e == t->probe_errno, "%s: re-registration answers %s, before the dump %s", n,
           strerror(e), strerror(t->probe_errno));
  volatile struct rseq* rs = my_rseq();
  wl_check(c, rs->rseq_cs == 0, "%s: rseq_cs is 0x%llx, want 0", n,
           (unsigned long long)rs->rseq_cs);
  rs->cpu_id_start = (uint32_t)RSEQ_CPU_ID_UNINITIALIZED;
  rs->cpu_id = (uint32_t)RSEQ_CPU_ID_UNINITIALIZED;
  sched_yield();
  const char* how = "sched_yield";
  if ((int32_t)rs->cpu_id == RSEQ_CPU_ID_UNINITIALIZED) {
    syscall(SYS_tgkill, getpid(), wl_gettid(), SIGURG);
    how = "a signal";
  }
  int cpu = (int32_t)rs->cpu_id;
  if (wl_check(c, cpu >= 0, "%s: cpu_id still %d after sched_yield and a signal: not registered", n,
               cpu)) {
    wl_log("%s: the kernel rewrote cpu_id (%d) after %s", n, cpu, how);
    wl_check(c, (int32_t)rs->cpu_id_start >= 0, "%s: cpu_id_start %d", n,
             (int32_t)rs->cpu_id_start);
    wl_check(c, cpu < CPU_SETSIZE, "%s: cpu_id %d out of range", n, cpu);
  }
}

static void* worker(void* arg) {
  (void)arg;
  setup(1);
  atomic_fetch_add(&nready, 1);
  while (!atomic_load(&check_req)) wl_sleep_ms(5);
  check(1);
  atomic_fetch_add(&ndone, 1);
  return NULL;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (__rseq_size == 0) {
    long r = syscall(__NR_rseq, NULL, 0, 0, 0);
    int e = r < 0 ? errno : 0;
    wl_log("glibc did not register rseq (__rseq_size == 0); the kernel answers rseq() with %s",
           strerror(e));
    wl_ready("main");
    if (wl_wait() != 0) return 1;
    wl_result("main", e == ENOSYS,
              "glibc did not register rseq although the kernel supports it "
              "(GLIBC_TUNABLES=glibc.pthread.rseq=0?)");
    return e == ENOSYS ? 0 : 1;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = urg_handler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGURG, &sa, NULL);
  wl_log("__rseq_offset %ld, __rseq_size %u, __rseq_flags %u", (long)__rseq_offset, __rseq_size,
         __rseq_flags);
  setup(0);
  pthread_t th;
  if (pthread_create(&th, NULL, worker, NULL) != 0) wl_die("main", "pthread_create");
  while (atomic_load(&nready) < 1) wl_sleep_ms(1);
  for (int i = 0; i < NT; i++)
    if (ti[i].probe_errno == 0)
      wl_die("main", "thread %d: glibc's rseq area was not registered before the dump", i);
  wl_ready("main");
  if (wl_wait() != 0) {
    wl_result("main", 0, "timeout waiting for SIGUSR1");
    return 1;
  }
  atomic_store(&check_req, 1);
  check(0);
  for (int t = 0; t < 500 && atomic_load(&ndone) < 1; t++) wl_sleep_ms(10);
  struct wl_check c;
  wl_check_init(&c);
  if (wl_check(&c, atomic_load(&ndone) == 1, "the second thread did not answer")) {
    pthread_join(th, NULL);
  }
  for (int i = 0; i < NT; i++)
    if (ti[i].c.failures) wl_check(&c, 0, "%s", ti[i].c.why);
  return wl_check_result("main", &c);
}
