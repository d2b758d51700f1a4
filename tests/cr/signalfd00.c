/* signalfd00: signalfds.
 *   rt:  signalfd({SIGUSR2, SIGRTMIN+3}, SFD_NONBLOCK), with SIGRTMIN+3 queued (a
 *        value from the pid) and pending before the dump;
 *   hup: signalfd({SIGHUP}, SFD_CLOEXEC), blocking, dup()ed to fd 30.
 * All three signals are blocked. After the restore: F_GETFL, F_GETFD and the fdinfo
 * sigmask of each fd are what they were; rt reads the queued SIGRTMIN+3 with its
 * value, then EAGAIN; a SIGHUP sent to the process is not read by rt (EAGAIN) but
 * by fd 30; a SIGUSR2 is read by rt. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "workload.h"

struct sfd {
  const char* what;
  int fd;
  int fl, fdfl;
  char mask[32];
};

static void describe(struct sfd* s) {
  s->fl = fcntl(s->fd, F_GETFL);
  s->fdfl = fcntl(s->fd, F_GETFD);
  if (wl_fdinfo(s->fd, "sigmask:", s->mask, sizeof s->mask) != 1)
    wl_die("main", "%s: fd %d: no sigmask in fdinfo", s->what, s->fd);
}

static void compare(struct wl_check* c, const struct sfd* b) {
  struct sfd n = *b;
  describe(&n);
  wl_check(c, n.fl == b->fl, "%s: F_GETFL 0%o, was 0%o", b->what, n.fl, b->fl);
  wl_check(c, n.fdfl == b->fdfl, "%s: F_GETFD %d, was %d", b->what, n.fdfl, b->fdfl);
  wl_check(c, strcmp(n.mask, b->mask) == 0, "%s: sigmask %s, was %s", b->what, n.mask, b->mask);
}

/* Reads one signal: its number, or -errno. */
static int read_sig(int fd, int* value) {
  struct signalfd_siginfo si;
  ssize_t r = read(fd, &si, sizeof si);
  if (r != sizeof si) return r < 0 ? -errno : -EIO;
  if (value) *value = si.ssi_int;
  return (int)si.ssi_signo;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int rtsig = SIGRTMIN + 3, value = 1000 + getpid() % 9000;
  sigset_t rt_set, hup_set, all;
  sigemptyset(&rt_set);
  sigaddset(&rt_set, SIGUSR2);
  sigaddset(&rt_set, rtsig);
  sigemptyset(&hup_set);
  sigaddset(&hup_set, SIGHUP);
  sigemptyset(&all);
  sigaddset(&all, SIGUSR2);
  sigaddset(&all, rtsig);
  sigaddset(&all, SIGHUP);
  if (sigprocmask(SIG_BLOCK, &all, NULL) != 0) wl_die("main", "sigprocmask: %s", strerror(errno));
  struct sfd rt = {"rt", signalfd(-1, &rt_set, SFD_NONBLOCK), 0, 0, ""};
  struct sfd hup = {"hup", signalfd(-1, &hup_set, SFD_CLOEXEC), 0, 0, ""};
  if (rt.fd < 0 || hup.fd < 0) wl_die("main", "signalfd: %s", strerror(errno));
  struct sfd hup30 = {"fd 30 = dup(hup)", dup2(hup.fd, 30), 0, 0, ""};
  if (hup30.fd != 30) wl_die("main", "dup2: %s", strerror(errno));
  union sigval sv = {.sival_int = value};
  if (sigqueue(getpid(), rtsig, sv) != 0) wl_die("main", "sigqueue: %s", strerror(errno));
  struct sfd* fds[] = {&rt, &hup, &hup30};
  for (size_t i = 0; i < 3; i++) {
    describe(fds[i]);
    wl_log("%s: fd %d sigmask %s flags 0%o", fds[i]->what, fds[i]->fd, fds[i]->mask, fds[i]->fl);
  }
  wl_ready("main");
  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  for (size_t i = 0; i < 3; i++) compare(&c, fds[i]);
  int v = 0, s = read_sig(rt.fd, &v);
  wl_check(&c, s == rtsig && v == value, "rt: read signal %d value %d, want %d value %d", s, v,
           rtsig, value);
  s = read_sig(rt.fd, NULL);
  wl_check(&c, s == -EAGAIN, "rt: read %d after the queued signal, want EAGAIN", s);
  kill(getpid(), SIGHUP);
  s = read_sig(rt.fd, NULL);
  wl_check(&c, s == -EAGAIN, "rt: read %d with SIGHUP pending, want EAGAIN (not in its mask)", s);
  s = read_sig(hup30.fd, NULL);
  wl_check(&c, s == SIGHUP, "fd 30: read %d, want SIGHUP", s);
  kill(getpid(), SIGUSR2);
  s = read_sig(rt.fd, NULL);
  wl_check(&c, s == SIGUSR2, "rt: read %d, want SIGUSR2", s);
  return wl_check_result("main", &c);
}
