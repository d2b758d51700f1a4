/* zombie00: zombies, and a child with another exit signal.
 *   exited:   a child that called _exit(42) and was never waited for;
 *   killed:   a child killed by SIGTERM, never waited for;
 *   leader:   a child that leads its own process group, which a live child ("member")
 *             joins, then exits and stays a zombie (the group outlives its leader);
 *   member:   a live child in that group (role "member"), with a zombie child of its
 *             own that exited with 7;
 *   rtsig:    a live child created with SIGRTMIN+4 as its exit signal instead of
 *             SIGCHLD (clone), which the root collects with __WALL.
 * Before the dump each zombie is 'Z' in /proc. After the restore: each is still 'Z',
 * in the same process group and session, and waitpid() collects the same status;
 * the member is in the group of the dead leader; the rtsig child's exit is signalled
 * with SIGRTMIN+4. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static char state_of(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return '?';
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return '?';
  buf[n] = 0;
  char* p = strrchr(buf, ')');
  return p && p[1] == ' ' ? p[2] : '?';
}

static pid_t zombie(int how) {
  pid_t p = fork();
  if (p < 0) wl_die("main", "fork: %s", strerror(errno));
  if (p == 0) {
    if (how > 0) _exit(how);
    raise(-how);
    _exit(99);
  }
  for (int i = 0; i < 500 && state_of(p) != 'Z'; ++i) wl_sleep_ms(2);
  if (state_of(p) != 'Z') wl_die("main", "child %d did not become a zombie", (int)p);
  return p;
}

static void check_zombie(struct wl_check* c, pid_t p, const char* what, int exited, int code) {
  wl_check(c, state_of(p) == 'Z', "%s %d: state %c after the restore, want Z", what, (int)p,
           state_of(p));
  int st = 0;
  pid_t r = waitpid(p, &st, 0);
  if (!wl_check(c, r == p, "%s %d: waitpid: %s", what, (int)p, strerror(errno))) return;
  if (exited)
    wl_check(c, WIFEXITED(st) && WEXITSTATUS(st) == code, "%s %d: status 0x%x, want exit %d", what,
             (int)p, st, code);
  else
    wl_check(c, WIFSIGNALED(st) && WTERMSIG(st) == code, "%s %d: status 0x%x, want signal %d", what,
             (int)p, st, code);
}

static volatile sig_atomic_t rt_exits;
static void on_rt(int sig) {
  (void)sig;
  rt_exits++;
}

static int member_main(pid_t leader) {
  if (setpgid(0, leader) != 0) wl_die("member", "join group %d: %s", (int)leader, strerror(errno));
  pid_t z = zombie(7);
  wl_child_ready();
  struct wl_check c;
  if (wl_await("member", &c) != 0) return 1;
  wl_check(&c, getpgid(0) == leader, "process group %d, want %d (its leader is a zombie)",
           (int)getpgid(0), (int)leader);
  check_zombie(&c, z, "my zombie", 1, 7);
  return wl_check_result("member", &c);
}

static char rt_stack[65536];
static int rt_child(void* arg) {
  (void)arg;
  while (!wl_usr1) wl_sleep_ms(20);
  _exit(5);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  signal(SIGRTMIN + 4, on_rt);
  pid_t exited = zombie(42);
  pid_t killed = zombie(-SIGTERM);
  /* The leader: its own group, kept alive until the member has joined it. */
  int go[2];
  if (pipe(go) != 0) wl_die("main", "pipe");
  pid_t leader = fork();
  if (leader == 0) {
    setpgid(0, 0);
    char b;
    close(go[1]);
    if (read(go[0], &b, 1) != 1) _exit(98);
    _exit(3);
  }
  setpgid(leader, leader);
  close(go[0]);
  pid_t member = wl_fork();
  if (member == 0) return member_main(leader);
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("main", "%s", why);
  if (write(go[1], "x", 1) != 1) wl_die("main", "release the leader");
  close(go[1]);
  for (int i = 0; i < 500 && state_of(leader) != 'Z'; ++i) wl_sleep_ms(2);
  if (state_of(leader) != 'Z') wl_die("main", "the leader did not exit");
  /* Not wl_fork: the root tells it to exit with a SIGUSR1 of its own after the restore. */
  pid_t rt = clone(rt_child, rt_stack + sizeof rt_stack, SIGRTMIN + 4, NULL);
  if (rt < 0) wl_die("main", "clone: %s", strerror(errno));
  wl_ready("main member");

  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  check_zombie(&c, exited, "exited", 1, 42);
  check_zombie(&c, killed, "killed", 0, SIGTERM);
  wl_check(&c, getpgid(member) == leader, "member: group %d, want %d", (int)getpgid(member),
           (int)leader);
  check_zombie(&c, leader, "leader", 1, 3);
  kill(rt, SIGUSR1);
  int st = 0;
  pid_t r = waitpid(rt, &st, __WALL);
  wl_check(&c, r == rt && WIFEXITED(st) && WEXITSTATUS(st) == 5,
           "rtsig child: waitpid %d status 0x%x", (int)r, st);
  for (int i = 0; i < 100 && !rt_exits; ++i) wl_sleep_ms(5);
  wl_check(&c, rt_exits == 1, "rtsig child: %d SIGRTMIN+4 on its exit, want 1", (int)rt_exits);
  wl_check(&c, wl_reap_children(5000, why, sizeof why) == 0, "%s", why);
  return wl_check_result("main", &c);
}
