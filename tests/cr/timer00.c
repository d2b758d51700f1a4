/* timer00: interval timers and POSIX timers, and the death signal and subreaper flag.
 *   itimers:  ITIMER_REAL first in 1 hour then every 2 s; ITIMER_VIRTUAL in 100 s;
 *             ITIMER_PROF in 200 s then every 50 s;
 *   POSIX timers (raw syscalls, so the ids are the kernel's):
 *     tick:   CLOCK_MONOTONIC, SIGRTMIN+1 with sigev_value 0x1234, every 250 ms: it
 *             fires across the dump and after the restore;
 *     wall:   CLOCK_REALTIME, SIGEV_NONE, once in 1 hour;
 *     gap:    created and deleted: its id must stay free;
 *     thread: CLOCK_BOOTTIME, SIGRTMIN+2 to the second thread (SIGEV_THREAD_ID) with
 *             sigev_value 0xbeef, in 2 hours then every 5 s;
 *     cpu:    CLOCK_PROCESS_CPUTIME_ID, SIGRTMIN+3, in 1000 s of CPU time;
 *   prctl:    PR_SET_CHILD_SUBREAPER on the root; a child sets PR_SET_PDEATHSIG
 *             SIGHUP on its main thread and SIGINT on a second thread (its parent is
 *             in the tree: a root's death signal would fire when the restorer exits).
 *   The second thread of the root is the target of the thread timer.
 * After the restore: /proc/self/timers reads exactly as before (ids, clocks, signals,
 * values, targets), every interval is the same and every time left is the recorded
 * deadline minus now (CPU-time ones: no more than before), the gap id is still free,
 * tick goes on firing with its value and id, and the prctl values are back. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define MS 1000000LL
#define SEC 1000000000LL
#define LEEWAY (50 * MS)

static volatile sig_atomic_t ticks, bad_ticks;
static volatile sig_atomic_t tick_id = -1;
static volatile pid_t second_tid;
static volatile sig_atomic_t second_pdeath = -1;

static long long now_ns(int clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return ts.tv_sec * SEC + ts.tv_nsec;
}
static struct timespec ts_of(long long ns) {
  struct timespec ts = {(time_t)(ns / SEC), (long)(ns % SEC)};
  return ts;
}
static long long ns_of(struct timespec ts) {
  return ts.tv_sec * SEC + ts.tv_nsec;
}
static long long ns_of_tv(struct timeval tv) {
  return tv.tv_sec * SEC + tv.tv_usec * 1000LL;
}

static void on_tick(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  if (si->si_code == SI_TIMER && si->si_value.sival_int == 0x1234 && si->si_timerid == tick_id)
    ticks++;
  else
    bad_ticks++;
}
static void on_other(int sig) {
  (void)sig;
}

static int make_timer(int clock, int notify, int signo, long value, pid_t tid) {
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = notify;
  sev.sigev_signo = signo;
  sev.sigev_value.sival_ptr = (void*)value;
  sev._sigev_un._tid = tid;
  int id = -1;
  if (syscall(SYS_timer_create, clock, &sev, &id) != 0)
    wl_die("main", "timer_create on clock %d: %s", clock, strerror(errno));
  return id;
}
static void arm_timer(int id, long long first, long long period) {
  struct itimerspec its = {ts_of(period), ts_of(first)};
  if (syscall(SYS_timer_settime, id, 0, &its, NULL) != 0)
    wl_die("main", "timer_settime %d: %s", id, strerror(errno));
}

/* The root's second thread: the target of the thread timer. */
static void* second(void* arg) {
  (void)arg;
  second_tid = wl_gettid();
  while (!wl_usr1) wl_sleep_ms(20);
  return NULL;
}

/* The child's second thread: a death signal of its own. */
static void* pdeath_thread(void* arg) {
  (void)arg;
  prctl(PR_SET_PDEATHSIG, SIGINT);
  second_tid = 1;
  while (!wl_usr1) wl_sleep_ms(20);
  int sig = 0;
  prctl(PR_GET_PDEATHSIG, &sig);
  second_pdeath = sig;
  return NULL;
}

static int child_main(void) {
  pthread_t th;
  second_tid = 0;
  if (pthread_create(&th, NULL, pdeath_thread, NULL) != 0) wl_die("child", "pthread_create");
  while (!second_tid) wl_sleep_ms(1);
  if (prctl(PR_SET_PDEATHSIG, SIGHUP) != 0) wl_die("child", "prctl: %s", strerror(errno));
  wl_child_ready();
  struct wl_check c;
  if (wl_await("child", &c) != 0) return 1;
  int sig = 0;
  prctl(PR_GET_PDEATHSIG, &sig);
  wl_check(&c, sig == SIGHUP, "main thread: death signal %d, was %d", sig, SIGHUP);
  pthread_join(th, NULL);
  wl_check(&c, second_pdeath == SIGINT, "second thread: death signal %d, was %d",
           (int)second_pdeath, SIGINT);
  return wl_check_result("child", &c);
}

static int read_file(const char* path, char* out, size_t n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t len = 0;
  ssize_t r;
  while (len < n - 1 && (r = read(fd, out + len, n - 1 - len)) > 0) len += (size_t)r;
  out[len] = 0;
  close(fd);
  return 0;
}

struct deadline {
  const char* what;
  int id; /* POSIX timer id, or -1 - which for an itimer */
  int clock;
  long long at, period, first; /* at: on clock; CPU clocks: first = time left then */
};

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_tick;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigaction(SIGRTMIN + 1, &sa, NULL);
  signal(SIGRTMIN + 2, on_other);
  signal(SIGRTMIN + 3, on_other);
  signal(SIGALRM, on_other);
  signal(SIGVTALRM, on_other);
  signal(SIGPROF, on_other);

  pthread_t th;
  if (pthread_create(&th, NULL, second, NULL) != 0) wl_die("main", "pthread_create");
  while (!second_tid) wl_sleep_ms(1);
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) wl_die("main", "prctl: %s", strerror(errno));

  struct deadline d[8];
  int n = 0;
  struct {
    int which;
    long long first, period;
  } its[3] = {{ITIMER_REAL, 3600 * SEC, 2 * SEC},
              {ITIMER_VIRTUAL, 100 * SEC, 0},
              {ITIMER_PROF, 200 * SEC, 50 * SEC}};
  for (int i = 0; i < 3; ++i) {
    struct itimerval v;
    v.it_interval.tv_sec = its[i].period / SEC;
    v.it_interval.tv_usec = 0;
    v.it_value.tv_sec = its[i].first / SEC;
    v.it_value.tv_usec = 0;
    int clock = its[i].which == ITIMER_REAL ? CLOCK_MONOTONIC : CLOCK_PROCESS_CPUTIME_ID;
    d[n] = (struct deadline){"itimer",      -1 - its[i].which, clock, now_ns(clock) + its[i].first,
                             its[i].period, its[i].first};
    if (setitimer(its[i].which, &v, NULL) != 0) wl_die("main", "setitimer: %s", strerror(errno));
    n++;
  }
  int tick = make_timer(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 1, 0x1234, 0);
  tick_id = tick;
  arm_timer(tick, 250 * MS, 250 * MS);
  int wall = make_timer(CLOCK_REALTIME, SIGEV_NONE, 0, 0, 0);
  d[n++] = (struct deadline){"wall", wall,      CLOCK_REALTIME, now_ns(CLOCK_REALTIME) + 3600 * SEC,
                             0,      3600 * SEC};
  arm_timer(wall, 3600 * SEC, 0);
  int gap = make_timer(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0);
  syscall(SYS_timer_delete, gap);
  int thr = make_timer(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 2, 0xbeef, second_tid);
  d[n++] = (struct deadline){
      "thread", thr, CLOCK_BOOTTIME, now_ns(CLOCK_BOOTTIME) + 7200 * SEC, 5 * SEC, 7200 * SEC};
  arm_timer(thr, 7200 * SEC, 5 * SEC);
  int cpu = make_timer(CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, SIGRTMIN + 3, 0, 0);
  d[n++] = (struct deadline){"cpu", cpu, CLOCK_PROCESS_CPUTIME_ID, 0, 0, 1000 * SEC};
  arm_timer(cpu, 1000 * SEC, 0);

  char before[2048], after[2048];
  if (read_file("/proc/self/timers", before, sizeof before) != 0)
    wl_skip("no /proc/self/timers (a kernel without CONFIG_CHECKPOINT_RESTORE)");
  wl_log("timers: tick %d wall %d gap %d thread %d cpu %d", tick, wall, gap, thr, cpu);
  while (ticks < 2) wl_sleep_ms(10);
  pid_t child = wl_fork();
  if (child == 0) return child_main();
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("main", "%s", why);
  wl_ready("main child");

  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  read_file("/proc/self/timers", after, sizeof after);
  wl_check(&c, strcmp(before, after) == 0, "/proc/self/timers differs:\n%s---- was:\n%s", after,
           before);
  for (int i = 0; i < n; ++i) {
    long long left, period;
    if (d[i].id < 0) {
      struct itimerval v;
      getitimer(-1 - d[i].id, &v);
      left = ns_of_tv(v.it_value);
      period = ns_of_tv(v.it_interval);
    } else {
      struct itimerspec v;
      if (!wl_check(&c, syscall(SYS_timer_gettime, d[i].id, &v) == 0,
                    "%s: timer %d: timer_gettime: %s", d[i].what, d[i].id, strerror(errno)))
        continue;
      left = ns_of(v.it_value);
      period = ns_of(v.it_interval);
    }
    wl_check(&c, period == d[i].period, "%s %d: period %lld, was %lld", d[i].what, d[i].id, period,
             d[i].period);
    if (d[i].clock == CLOCK_PROCESS_CPUTIME_ID) {
      /* The kernel rounds CPU-time itimers up by a tick, once per setitimer. */
      wl_check(&c, left > 0 && left <= d[i].first + LEEWAY && left > d[i].first - 10 * SEC,
               "%s %d: %lld ns of CPU time left, was %lld", d[i].what, d[i].id, left, d[i].first);
    } else {
      long long want = d[i].at - now_ns(d[i].clock);
      wl_check(&c, left >= want - LEEWAY && left <= want + LEEWAY,
               "%s %d: %lld ns left, want %lld (the recorded deadline)", d[i].what, d[i].id, left,
               want);
    }
  }
  struct itimerspec v;
  wl_check(&c, syscall(SYS_timer_gettime, gap, &v) != 0 && errno == EINVAL,
           "the deleted timer id %d exists after the restore", gap);
  int before_ticks = ticks;
  for (int i = 0; i < 100 && ticks < before_ticks + 2; ++i) wl_sleep_ms(10);
  wl_check(&c, ticks >= before_ticks + 2, "tick: %d expirations in 1 s after the restore",
           ticks - before_ticks);
  wl_check(&c, bad_ticks == 0, "%d SIGRTMIN+1 with the wrong value or timer id", bad_ticks);
  int sub = 0;
  prctl(PR_GET_CHILD_SUBREAPER, &sub);
  wl_check(&c, sub == 1, "child subreaper %d, was 1", sub);
  pthread_join(th, NULL);
  wl_check(&c, wl_reap_children(5000, why, sizeof why) == 0, "%s", why);
  return wl_check_result("main", &c);
}
