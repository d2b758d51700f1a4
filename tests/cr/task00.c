/* task00: a multi-threaded task.
 * Four threads each increment their own counter (about every millisecond).
 * After the restore: every counter is at least the value it had at `ready` and
 * keeps increasing, every thread sees the TID it had before (gettid), and the
 * main thread's TID is still the PID. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

#define NTHREADS 4

static atomic_ulong counter[NTHREADS];
static pid_t tid_before[NTHREADS];
static atomic_int check_req;
static atomic_int check_state[NTHREADS]; /* 0 pending, 1 ok, 2 bad */
static pid_t tid_after[NTHREADS];
static atomic_int started;

static void* worker(void* arg) {
  int i = (int)(long)arg;
  tid_before[i] = wl_gettid();
  atomic_fetch_add(&started, 1);
  for (;;) {
    atomic_fetch_add(&counter[i], 1);
    if (atomic_load(&check_req) && atomic_load(&check_state[i]) == 0) {
      tid_after[i] = wl_gettid();
      pid_t glibc_tid = gettid();
      atomic_store(&check_state[i],
                   tid_after[i] == tid_before[i] && glibc_tid == tid_before[i] ? 1 : 2);
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
    wl_check(&c, s != 2, "thread %d: gettid() %d, was %d", i, (int)tid_after[i],
             (int)tid_before[i]);
  }
  return wl_check_result("main", &c);
}
