/* pidfd00: pidfds (engine/pidfd.cc).
 *   root: pidfd of the plain child A (PIDFD_NONBLOCK) and a dup of it, a pidfd of itself,
 *         two pidfds of the child D, opened before D exited and was reaped (a dead
 *         process: fdinfo Pid -1);
 *   +- A: no code of the protocol: it sleeps until it is killed;
 *   +- C (wl_fork, after the first dead pidfd): holds a pidfd of the root, and shares the
 *         root's first dead pidfd by fork.
 * After the restore:
 *   root: fdinfo says Pid A, A's flags still O_NONBLOCK, the dup is the same open file
 *         (kcmp), its own pidfd says its pid, the dead ones say -1 and are the same
 *         process (one inode, on kernels with pidfs); then it kills A through its pidfd,
 *         which polls readable, and waitid(P_PIDFD) reports SIGKILL for A's pid;
 *   C:    its pidfd says its parent's pid, and the dead pidfd it inherited is the root's
 *         open file (kcmp).
 * `pidfd00 STATEDIR outside`: the root also holds a pidfd of a process outside the tree
 * (a grandchild that left it by a double fork), which check and dump must refuse. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static int pidfd_open(pid_t pid, unsigned flags) {
  return (int)syscall(SYS_pidfd_open, pid, flags);
}

/* fdinfo's Pid: of fd, or -2 when it can't be read. */
static int fd_pid(int fd) {
  char text[64];
  if (wl_fdinfo(fd, "Pid:", text, sizeof text) != 1) return -2;
  return atoi(text);
}

static int same_file(pid_t a, int fa, pid_t b, int fb) {
  return syscall(SYS_kcmp, a, b, KCMP_FILE, fa, fb) == 0;
}

static ino_t ino(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

static int dead1 = -1;

static int child_c(void) {
  int parent = pidfd_open(getppid(), 0);
  if (parent < 0) wl_die("C", "pidfd_open parent: %s", strerror(errno));
  pid_t root = getppid();
  wl_child_ready();
  struct wl_check c;
  if (wl_await("C", &c) != 0) return 1;
  wl_check(&c, fd_pid(parent) == root, "its pidfd of the root says Pid %d, want %d", fd_pid(parent),
           (int)root);
  wl_check(&c, same_file(getpid(), dead1, root, dead1),
           "the dead pidfd it inherited is not the root's open file");
  wl_check(&c, fd_pid(dead1) == -1, "the dead pidfd says Pid %d", fd_pid(dead1));
  return wl_check_result("C", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int self = pidfd_open(getpid(), 0);
  if (self < 0) wl_skip("pidfd_open: %s", strerror(errno));

  pid_t d = fork();
  if (d < 0) wl_die("main", "fork: %s", strerror(errno));
  if (d == 0) {
    pause();
    _exit(0);
  }
  dead1 = pidfd_open(d, 0);
  int dead2 = pidfd_open(d, 0);
  if (dead1 < 0 || dead2 < 0) wl_die("main", "pidfd_open D: %s", strerror(errno));

  pid_t c = wl_fork();
  if (c < 0) wl_die("main", "fork: %s", strerror(errno));
  if (c == 0) return child_c();

  kill(d, SIGKILL);
  if (waitpid(d, NULL, 0) != d) wl_die("main", "reap D: %s", strerror(errno));

  pid_t a = fork();
  if (a < 0) wl_die("main", "fork: %s", strerror(errno));
  if (a == 0) {
    for (;;) pause();
  }
  int pa = pidfd_open(a, PIDFD_NONBLOCK);
  if (pa < 0) wl_die("main", "pidfd_open A: %s", strerror(errno));
  int pa_dup = dup(pa);
  /* pidfs (Linux 6.9): one inode per process, so they tell processes apart. */
  int pidfs = ino(pa) != ino(self);
  if (argc > 2 && strcmp(argv[2], "outside") == 0) {
    int p[2];
    if (pipe(p) != 0) wl_die("main", "pipe: %s", strerror(errno));
    pid_t root = getpid();
    pid_t mid = fork();
    if (mid == 0) {
      pid_t out = fork();
      if (out == 0) {
        close(p[0]);
        close(p[1]);
        setsid();
        prctl(PR_SET_NAME, "pidfd00-out");
        while (kill(root, 0) == 0) usleep(100000); /* gone once the root is */
        _exit(0);
      }
      if (write(p[1], &out, sizeof out) != sizeof out) _exit(1);
      _exit(0);
    }
    pid_t out = 0;
    if (wl_read_full(p[0], &out, sizeof out) != sizeof out) wl_die("main", "no outside pid");
    waitpid(mid, NULL, 0);
    if (pidfd_open(out, 0) < 0) wl_die("main", "pidfd_open outside: %s", strerror(errno));
  }
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("main", "%s", why);
  if (fd_pid(pa) != a || fd_pid(dead1) != -1 || fd_pid(self) != getpid())
    wl_die("main", "setup: fdinfo Pid of A %d, dead %d, self %d", fd_pid(pa), fd_pid(dead1),
           fd_pid(self));
  wl_ready("main C");

  struct wl_check k;
  if (wl_await("main", &k) != 0) return 1;
  wl_check(&k, fd_pid(pa) == a, "the pidfd of A says Pid %d, want %d", fd_pid(pa), (int)a);
  wl_check(&k, (fcntl(pa, F_GETFL) & O_NONBLOCK) != 0, "the pidfd of A lost O_NONBLOCK");
  wl_check(&k, same_file(getpid(), pa, getpid(), pa_dup), "the dup of A's pidfd is another file");
  wl_check(&k, fd_pid(self) == getpid(), "its own pidfd says Pid %d", fd_pid(self));
  wl_check(&k, fd_pid(dead1) == -1 && fd_pid(dead2) == -1, "the dead pidfds say Pid %d and %d",
           fd_pid(dead1), fd_pid(dead2));
  if (pidfs) {
    wl_check(&k, ino(dead1) == ino(dead2), "the two pidfds of D are of two processes");
    wl_check(&k, ino(dead1) != ino(pa), "the pidfd of D and of A are of one process");
  }
  wl_check(&k, syscall(SYS_pidfd_send_signal, pa, SIGKILL, NULL, 0) == 0,
           "pidfd_send_signal to A: %s", strerror(errno));
  struct pollfd pfd = {pa, POLLIN, 0};
  wl_check(&k, poll(&pfd, 1, 5000) == 1, "the pidfd of A did not become readable");
  siginfo_t si;
  memset(&si, 0, sizeof si);
  wl_check(&k,
           waitid(P_PIDFD, (id_t)pa, &si, WEXITED) == 0 && si.si_pid == a &&
               si.si_code == CLD_KILLED && si.si_status == SIGKILL,
           "waitid(P_PIDFD) on A: pid %d code %d status %d (%s)", (int)si.si_pid, si.si_code,
           si.si_status, strerror(errno));
  wl_check(&k, wl_reap_children(5000, why, sizeof why) == 0, "%s", why);
  return wl_check_result("main", &k);
}
