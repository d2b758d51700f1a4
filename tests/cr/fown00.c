/* fown00: signal-driven I/O (O_ASYNC, F_SETOWN_EX, F_SETSIG), which nginx sets on its
 * master-worker socketpairs.
 *   sv: a stream socketpair; sv[0] O_ASYNC, owned by the root (F_OWNER_PID), signal
 *       SIGRTMIN+2 (F_SETSIG: the siginfo names the fd);
 *   p:  a pipe; p[0] O_ASYNC, owned by the root's process group, signal SIGIO;
 *   f:  STATEDIR/owned, opened for reading, owned by the child, no O_ASYNC;
 *   sc: a datagram socketpair in the child (in a process group of its own); sc[0]
 *       O_ASYNC, owned by the child's thread (F_OWNER_TID), set while the child had uid
 *       and euid 65534 (F_GETOWNER_UIDS): the kernel then never sends it the signal, as
 *       the child runs as root again.
 * With the argument `outside`, f is owned by the root's parent, outside the tree: check
 * and dump must refuse it, naming the fd, and the tree runs on.
 * After the restore: O_ASYNC, the owners (type and pid), the signals and the owners'
 * uids are what they were; a write to sv[1] brings SIGRTMIN+2 with si_fd sv[0], a write
 * to p[1] brings SIGIO to the root, and one to sc[1] still no SIGIO to the child. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

#ifndef F_GETOWNER_UIDS
#define F_GETOWNER_UIDS 17
#endif

static volatile sig_atomic_t got_rt, got_rt_fd = -1, got_io;

static void on_rt(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  got_rt++;
  got_rt_fd = si->si_fd;
}

static volatile sig_atomic_t io_code, io_band;

static void on_io(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc;
  got_io++;
  io_code = si->si_code;
  io_band = (sig_atomic_t)si->si_band;
}

struct own {
  const char* what;
  int fd;
  int fl, sig;
  struct f_owner_ex ex;
  uid_t uids[2];
};

static void describe(struct own* o) {
  o->fl = fcntl(o->fd, F_GETFL);
  o->sig = fcntl(o->fd, F_GETSIG);
  memset(&o->ex, 0, sizeof o->ex);
  o->uids[0] = o->uids[1] = (uid_t)-1;
  if (o->fl < 0 || o->sig < 0 || fcntl(o->fd, F_GETOWN_EX, &o->ex) != 0 ||
      fcntl(o->fd, F_GETOWNER_UIDS, o->uids) != 0)
    wl_die("fown00", "%s: fcntl: %s", o->what, strerror(errno));
}

static void check_same(struct wl_check* c, struct own* was) {
  struct own now = *was;
  describe(&now);
  wl_check(c, now.fl == was->fl, "%s: F_GETFL 0%o, was 0%o", was->what, now.fl, was->fl);
  wl_check(c, now.sig == was->sig, "%s: F_GETSIG %d, was %d", was->what, now.sig, was->sig);
  wl_check(c, now.ex.type == was->ex.type && now.ex.pid == was->ex.pid,
           "%s: owner type %d pid %d, was type %d pid %d", was->what, now.ex.type, now.ex.pid,
           was->ex.type, was->ex.pid);
  wl_check(c, now.uids[0] == was->uids[0] && now.uids[1] == was->uids[1],
           "%s: owner uids %u/%u, were %u/%u", was->what, now.uids[0], now.uids[1], was->uids[0],
           was->uids[1]);
}

static void set_owner(int fd, int type, pid_t pid, int sig, int async, const char* what) {
  struct f_owner_ex ex = {(enum __pid_type)type, pid};
  if (fcntl(fd, F_SETOWN_EX, &ex) != 0 || fcntl(fd, F_SETSIG, sig) != 0 ||
      (async && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC) != 0))
    wl_die("fown00", "%s: set the owner: %s", what, strerror(errno));
}

static int wait_for(volatile sig_atomic_t* n) {
  for (int i = 0; i < 100 && !*n; i++) wl_sleep_ms(10);
  return *n != 0;
}

static int child_main(int sc[2]) {
  /* Out of the root's group, which p[0]'s signals go to. */
  if (setpgid(0, 0) != 0) wl_die("child", "setpgid: %s", strerror(errno));
  /* The kernel records who sets the owner. */
  if (setresuid(65534, 65534, 0) != 0) wl_die("child", "setresuid: %s", strerror(errno));
  set_owner(sc[0], F_OWNER_TID, wl_gettid(), 0, 1, "sc[0]");
  if (setresuid(0, 0, 0) != 0) wl_die("child", "setresuid back: %s", strerror(errno));
  struct own o = {"sc[0]", sc[0], 0, 0, {0, 0}, {0, 0}};
  describe(&o);
  got_io = 0; /* what the setup itself brought */
  wl_child_ready();
  struct wl_check c;
  if (wl_await("child", &c) != 0) return 1;
  check_same(&c, &o);
  wl_check(&c, !got_io, "child: SIGIO came with the restore (%d, code %d band %#x)", (int)got_io,
           (int)io_code, (unsigned)io_band);
  got_io = 0;
  wl_check(&c, send(sc[1], "x", 1, 0) == 1, "sc[1]: send: %s", strerror(errno));
  wl_check(&c, !wait_for(&got_io),
           "child: SIGIO after a send to sc[0]; its owner's uids (65534) may not signal root");
  return wl_check_result("child", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int outside = argc > 2 && strcmp(argv[2], "outside") == 0;
  struct sigaction rt = {0}, io = {0};
  rt.sa_sigaction = on_rt;
  rt.sa_flags = SA_SIGINFO | SA_RESTART;
  io.sa_sigaction = on_io;
  io.sa_flags = SA_SIGINFO | SA_RESTART;
  if (sigaction(SIGRTMIN + 2, &rt, NULL) != 0 || sigaction(SIGIO, &io, NULL) != 0)
    wl_die("root", "sigaction: %s", strerror(errno));
  int sv[2], p[2], sc[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0 || pipe2(p, O_CLOEXEC) != 0 ||
      socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sc) != 0)
    wl_die("root", "setup: %s", strerror(errno));
  int f = openat(wl_dirfd, "owned", O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
  if (f < 0) wl_die("root", "open owned: %s", strerror(errno));
  set_owner(sv[0], F_OWNER_PID, getpid(), SIGRTMIN + 2, 1, "sv[0]");
  set_owner(p[0], F_OWNER_PGRP, getpgrp(), 0, 1, "p[0]");
  pid_t child = wl_fork();
  if (child < 0) wl_die("root", "fork: %s", strerror(errno));
  if (child == 0) return child_main(sc);
  set_owner(f, F_OWNER_PID, outside ? getppid() : child, 0, 0, "owned");
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("root", "%s", why);
  struct own own[] = {{"sv[0]", sv[0], 0, 0, {0, 0}, {0, 0}},
                      {"p[0]", p[0], 0, 0, {0, 0}, {0, 0}},
                      {"owned", f, 0, 0, {0, 0}, {0, 0}}};
  for (int i = 0; i < 3; i++) describe(&own[i]);
  got_rt = got_io = 0; /* what the setup itself brought */
  wl_ready("root child");
  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  for (int i = 0; i < 3; i++) check_same(&c, &own[i]);
  wl_check(&c, !got_rt && !got_io, "signals came with the restore (%d, %d)", (int)got_rt,
           (int)got_io);
  got_rt = 0;
  wl_check(&c, write(sv[1], "x", 1) == 1, "sv[1]: write: %s", strerror(errno));
  wl_check(&c, wait_for(&got_rt) && got_rt_fd == sv[0],
           "no SIGRTMIN+2 for sv[0] after a write to sv[1] (got %d, si_fd %d)", (int)got_rt,
           (int)got_rt_fd);
  got_io = 0;
  wl_check(&c, write(p[1], "x", 1) == 1, "p[1]: write: %s", strerror(errno));
  wl_check(&c, wait_for(&got_io), "no SIGIO for p[0] after a write to p[1]");
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&c, 0, "root: %s", why);
  return wl_check_result("root", &c);
}
