/* timerfd00: timerfds.
 *   periodic:  CLOCK_MONOTONIC, relative, first in 200 ms then every 300 ms, never
 *              read: its expirations pile up, also while the tree is down;
 *   abs-mono:  CLOCK_MONOTONIC, TFD_TIMER_ABSTIME, first at now + 400 ms then every
 *              250 ms, O_NONBLOCK;
 *   wall:      CLOCK_REALTIME, TFD_TIMER_ABSTIME|TFD_TIMER_CANCEL_ON_SET, once, at
 *              now + 1 hour (wall clock), O_NONBLOCK, FD_CLOEXEC;
 *   boot:      CLOCK_BOOTTIME, relative, first in 1 hour then every 7 s;
 *   fired:     CLOCK_MONOTONIC, once in 50 ms, expired and unread before the dump;
 *   idle:      CLOCK_MONOTONIC, disarmed, with a period set (it stays in fdinfo).
 * Every deadline is recorded on its own clock when it is armed. After the restore,
 * for each: F_GETFL, F_GETFD, fdinfo clockid and settime flags, and the period are
 * what they were; the time left is the recorded deadline minus now (50 ms leeway);
 * the expirations read are as many as the deadlines that passed (one of leeway at
 * each end); then a periodic timer fires once more at its next deadline. fired reads
 * 1 and is disarmed; idle reads EAGAIN. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#define MS 1000000LL
#define LEEWAY (50 * MS) /* a loaded 2-core machine: 20 ms failed one plain run in ~300 */

struct tfd {
  const char* what;
  int clock, flags, settime;
  long long first_ns, period_ns; /* relative to arming; period 0: once */
  int fd;
  long long deadline; /* of the first expiration, on the timer's clock */
  int fl, fdfl;
  char clockid[16], setflags[16];
};

static long long now_ns(int clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct timespec ts_of(long long ns) {
  struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
  return ts;
}
static long long ns_of(struct timespec ts) {
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void arm(struct tfd* t) {
  t->fd = timerfd_create(t->clock, t->flags);
  if (t->fd < 0) wl_die("main", "%s: timerfd_create: %s", t->what, strerror(errno));
  struct itimerspec its = {ts_of(t->period_ns), ts_of(t->first_ns)};
  long long now = now_ns(t->clock);
  t->deadline = now + t->first_ns;
  if (t->settime & TFD_TIMER_ABSTIME) its.it_value = ts_of(t->deadline);
  if (t->first_ns == 0) t->deadline = 0;
  if (timerfd_settime(t->fd, t->settime, &its, NULL) != 0)
    wl_die("main", "%s: timerfd_settime: %s", t->what, strerror(errno));
}

static void describe(struct tfd* t) {
  t->fl = fcntl(t->fd, F_GETFL);
  t->fdfl = fcntl(t->fd, F_GETFD);
  if (wl_fdinfo(t->fd, "clockid:", t->clockid, sizeof t->clockid) != 1 ||
      wl_fdinfo(t->fd, "settime flags:", t->setflags, sizeof t->setflags) != 1)
    wl_die("main", "%s: fd %d: no clockid or settime flags in fdinfo", t->what, t->fd);
}

/* Expirations due by `now` since arming. */
static long long due(const struct tfd* t, long long now) {
  if (!t->deadline || now < t->deadline) return 0;
  if (!t->period_ns) return 1;
  return 1 + (now - t->deadline) / t->period_ns;
}

/* The next deadline after `now`, or 0 when there is none. */
static long long next_deadline(const struct tfd* t, long long now) {
  if (!t->deadline) return 0;
  if (now < t->deadline) return t->deadline;
  if (!t->period_ns) return 0;
  return t->deadline + due(t, now) * t->period_ns;
}

static void check_timer(struct wl_check* c, struct tfd* t) {
  const char* w = t->what;
  struct tfd n = *t;
  n.fl = fcntl(t->fd, F_GETFL);
  if (!wl_check(c, n.fl >= 0, "%s: fd %d is not open", w, t->fd)) return;
  n.fdfl = fcntl(t->fd, F_GETFD);
  wl_fdinfo(t->fd, "clockid:", n.clockid, sizeof n.clockid);
  wl_fdinfo(t->fd, "settime flags:", n.setflags, sizeof n.setflags);
  wl_check(c, n.fl == t->fl, "%s: F_GETFL 0%o, was 0%o", w, n.fl, t->fl);
  wl_check(c, n.fdfl == t->fdfl, "%s: F_GETFD %d, was %d", w, n.fdfl, t->fdfl);
  wl_check(c, strcmp(n.clockid, t->clockid) == 0, "%s: clockid %s, was %s", w, n.clockid,
           t->clockid);
  wl_check(c, strcmp(n.setflags, t->setflags) == 0, "%s: settime flags %s, was %s", w, n.setflags,
           t->setflags);

  struct itimerspec its;
  long long lo = now_ns(t->clock);
  if (!wl_check(c, timerfd_gettime(t->fd, &its) == 0, "%s: timerfd_gettime: %s", w,
                strerror(errno)))
    return;
  long long hi = now_ns(t->clock);
  wl_check(c, ns_of(its.it_interval) == t->period_ns, "%s: period %lld ns, was %lld ns", w,
           ns_of(its.it_interval), t->period_ns);
  long long left = ns_of(its.it_value);
  long long want_hi = next_deadline(t, lo) ? next_deadline(t, lo) - lo : 0;
  long long want_lo = next_deadline(t, hi) ? next_deadline(t, hi) - hi : 0;
  wl_check(c, left >= want_lo - LEEWAY && left <= want_hi + LEEWAY,
           "%s: %lld ms left, want %lld to %lld ms", w, left / MS, want_lo / MS, want_hi / MS);

  uint64_t ticks = 0;
  lo = now_ns(t->clock);
  ssize_t r = due(t, lo) ? read(t->fd, &ticks, sizeof ticks) : -1;
  hi = now_ns(t->clock);
  if (due(t, lo))
    wl_check(c,
             r == sizeof ticks && (long long)ticks >= due(t, lo) - 1 &&
                 (long long)ticks <= due(t, hi) + 1,
             "%s: read %lld expirations, want %lld to %lld", w, (long long)ticks, due(t, lo),
             due(t, hi));
  if (t->deadline && t->period_ns && t->period_ns < 1000 * MS) {
    /* It fires again at its next deadline: the one after those the read above took (an
     * expiration between that read and now is still pending, and comes at once). */
    long long consumed = due(t, lo) && r == sizeof ticks ? (long long)ticks : 0;
    long long next = t->deadline + consumed * t->period_ns;
    r = -1;
    for (int i = 0; i < 200 && r < 0; i++) {
      r = read(t->fd, &ticks, sizeof ticks);
      if (r < 0 && errno == EAGAIN)
        wl_sleep_ms(2);
      else if (r < 0)
        break;
    }
    long long at = now_ns(t->clock);
    wl_check(c, r == sizeof ticks && at >= next - LEEWAY && at <= next + 3 * LEEWAY,
             "%s: fired again %lld ms after its next deadline (read %zd)", w, (at - next) / MS, r);
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct tfd timers[] = {
      {"periodic", CLOCK_MONOTONIC, 0, 0, 200 * MS, 300 * MS, -1, 0, 0, 0, "", ""},
      {"abs-mono", CLOCK_MONOTONIC, TFD_NONBLOCK, TFD_TIMER_ABSTIME, 400 * MS, 250 * MS, -1, 0, 0,
       0, "", ""},
      {"wall", CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC,
       TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, 3600000 * MS, 0, -1, 0, 0, 0, "", ""},
      {"boot", CLOCK_BOOTTIME, 0, 0, 3600000 * MS, 7000 * MS, -1, 0, 0, 0, "", ""},
      {"fired", CLOCK_MONOTONIC, 0, 0, 50 * MS, 0, -1, 0, 0, 0, "", ""},
      {"idle", CLOCK_MONOTONIC, TFD_NONBLOCK, 0, 0, 900 * MS, -1, 0, 0, 0, "", ""},
  };
  size_t nt = sizeof timers / sizeof *timers;
  for (size_t i = 0; i < nt; i++) {
    arm(&timers[i]);
    describe(&timers[i]);
    wl_log("%s: fd %d clockid %s settime flags %s flags 0%o", timers[i].what, timers[i].fd,
           timers[i].clockid, timers[i].setflags, timers[i].fl);
  }
  wl_sleep_ms(100); /* "fired" expires; nobody reads it */
  wl_ready("main");
  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  for (size_t i = 0; i < nt; i++) check_timer(&c, &timers[i]);
  /* fired: read above; now disarmed. idle: never fires. */
  uint64_t ticks;
  struct itimerspec its;
  wl_check(&c, timerfd_gettime(timers[4].fd, &its) == 0 && ns_of(its.it_value) == 0,
           "fired: still armed after it expired");
  errno = 0;
  wl_check(&c, read(timers[5].fd, &ticks, sizeof ticks) < 0 && errno == EAGAIN,
           "idle: read gave %s, want EAGAIN", errno ? strerror(errno) : "expirations");
  return wl_check_result("main", &c);
}
