/* task00: a multi-threaded task.
 * Four threads each increment their own counter (about every millisecond).
 * After the restore: every counter is at least the value it had at `ready` and
 * keeps increasing, every thread sees the TID it had before (gettid), and the
 * main thread's TID is still the PID. Each thread also carries per-thread kernel
 * state of its own: its robust futex list (glibc's), nice value, scheduling policy,
 * CPU affinity, I/O priority and timer slack, which must all come back as they were. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define NTHREADS 4

static atomic_ulong counter[NTHREADS];
static pid_t tid_before[NTHREADS];
static atomic_int check_req;
static atomic_int check_state[NTHREADS]; /* 0 pending, 1 ok, 2 bad */
static pid_t tid_after[NTHREADS];
static atomic_int started;
static char thread_why[NTHREADS][256];

/* Per-thread kernel state, read through the thread's own syscalls. */
struct tstate {
  unsigned long robust_head, robust_len;
  int nice, policy, cpu0_only;
  long ioprio, slack;
};

static void read_tstate(struct tstate* s) {
  void* head = NULL;
  size_t len = 0;
  syscall(SYS_get_robust_list, 0, &head, &len);
  s->robust_head = (unsigned long)head;
  s->robust_len = (unsigned long)len;
  errno = 0;
  s->nice = getpriority(PRIO_PROCESS, (id_t)wl_gettid());
  s->policy = sched_getscheduler(0);
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof set, &set);
  s->cpu0_only = CPU_COUNT(&set) == 1 && CPU_ISSET(0, &set);
  s->ioprio = syscall(SYS_ioprio_get, 1 /* IOPRIO_WHO_PROCESS */, 0);
  s->slack = prctl(PR_GET_TIMERSLACK);
}

static int same_tstate(const struct tstate* a, const struct tstate* b, char* why, size_t n) {
  if (a->robust_head != b->robust_head || a->robust_len != b->robust_len)
    return snprintf(why, n, "robust list %#lx/%lu, was %#lx/%lu", b->robust_head, b->robust_len,
                    a->robust_head, a->robust_len),
           0;
  if (a->nice != b->nice) return snprintf(why, n, "nice %d, was %d", b->nice, a->nice), 0;
  if (a->policy != b->policy) return snprintf(why, n, "policy %d, was %d", b->policy, a->policy), 0;
  if (a->cpu0_only != b->cpu0_only) return snprintf(why, n, "CPU affinity changed"), 0;
  if (a->ioprio != b->ioprio)
    return snprintf(why, n, "ioprio %#lx, was %#lx", b->ioprio, a->ioprio), 0;
  if (a->slack != b->slack)
    return snprintf(why, n, "timer slack %ld, was %ld", b->slack, a->slack), 0;
  return 1;
}

static void* worker(void* arg) {
  int i = (int)(long)arg;
  tid_before[i] = wl_gettid();
  /* State of this thread's own, different in each thread. */
  setpriority(PRIO_PROCESS, (id_t)wl_gettid(), i + 1);
  if (i == 1) {
    struct sched_param sp = {0};
    sched_setscheduler(0, SCHED_BATCH, &sp);
  }
  if (i == 2) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    sched_setaffinity(0, sizeof set, &set);
  }
  syscall(SYS_ioprio_set, 1, 0, (2 << 13) | i); /* best effort, level i */
  prctl(PR_SET_TIMERSLACK, 100000UL * (unsigned long)(i + 1));
  struct tstate before, after;
  read_tstate(&before);
  if (!before.robust_head) wl_log("thread %d: no robust list registered by libc", i);
  atomic_fetch_add(&started, 1);
  for (;;) {
    atomic_fetch_add(&counter[i], 1);
    if (atomic_load(&check_req) && atomic_load(&check_state[i]) == 0) {
      tid_after[i] = wl_gettid();
      pid_t glibc_tid = gettid();
      read_tstate(&after);
      int ok = tid_after[i] == tid_before[i] && glibc_tid == tid_before[i];
      if (!ok)
        snprintf(thread_why[i], sizeof thread_why[i], "gettid() %d, was %d", (int)tid_after[i],
                 (int)tid_before[i]);
      if (ok) ok = same_tstate(&before, &after, thread_why[i], sizeof thread_why[i]);
      atomic_store(&check_state[i], ok ? 1 : 2);
    }
    wl_sleep_ms(1);
  }
  return NULL;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pthread_t th[NTHREADS];
  for (long i = 0; i < NTHREADS; i++)
    if (pthread_create(&th[i], NULL, worker, (void*)i) != 0) wl_die("main", "pthread_create");
  while (atomic_load(&started) < NTHREADS) wl_sleep_ms(1);
  wl_sleep_ms(50);
  unsigned long at_ready[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    at_ready[i] = atomic_load(&counter[i]);
    wl_log("thread %d tid %d counter %lu", i, (int)tid_before[i], at_ready[i]);
  }
  pid_t pid_before = getpid();
  wl_ready("main");
  if (wl_wait() != 0) {
    wl_result("main", 0, "timeout waiting for SIGUSR1");
    return 1;
  }

  struct wl_check c;
  wl_check_init(&c);
  wl_check(&c, getpid() == pid_before, "getpid %d, was %d", (int)getpid(), (int)pid_before);
  wl_check(&c, wl_gettid() == pid_before, "main thread tid %d, pid was %d", (int)wl_gettid(),
           (int)pid_before);
  unsigned long after1[NTHREADS], after2[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) after1[i] = atomic_load(&counter[i]);
  wl_sleep_ms(300);
  for (int i = 0; i < NTHREADS; i++) after2[i] = atomic_load(&counter[i]);
  for (int i = 0; i < NTHREADS; i++) {
    wl_check(&c, after1[i] >= at_ready[i], "thread %d counter %lu went back below %lu (at ready)",
             i, after1[i], at_ready[i]);
    wl_check(&c, after2[i] > after1[i], "thread %d counter stuck at %lu (thread not running?)", i,
             after2[i]);
  }
  atomic_store(&check_req, 1);
  for (int t = 0; t < 300; t++) {
    int done = 0;
    for (int i = 0; i < NTHREADS; i++) done += atomic_load(&check_state[i]) != 0;
    if (done == NTHREADS) break;
    wl_sleep_ms(10);
  }
  for (int i = 0; i < NTHREADS; i++) {
    int s = atomic_load(&check_state[i]);
    wl_check(&c, s != 0, "thread %d (tid %d) did not answer the check", i, (int)tid_before[i]);
    wl_check(&c, s != 2, "thread %d (tid %d): %s", i, (int)tid_before[i], thread_why[i]);
  }
  return wl_check_result("main", &c);
}
