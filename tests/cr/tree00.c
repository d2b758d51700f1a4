/* tree00: a process tree with process groups and sessions.
 *   root (session leader, started by the harness with setsid)
 *   +- childA: setpgid(0, 0), its own process group in the root's session
 *   +- childB: stays in the root's group
 *      +- grandchild: setsid(), its own session
 * Every process checks getpid/getppid/getpgid/getsid against what it recorded
 * (not getppid for the root, whose parent is outside the tree) and reports as
 * result.<role>. Parents check that their children are still
 * theirs (waitpid). */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "workload.h"

struct ids {
  pid_t pid, ppid, pgid, sid;
};

static struct ids my_ids(void) {
  struct ids i = {getpid(), getppid(), getpgid(0), getsid(0)};
  return i;
}

static int run(const char* role, struct ids want, int is_root) {
  if (wl_wait() != 0) {
    wl_result(role, 0, "timeout waiting for SIGUSR1");
    return 1;
  }
  struct wl_check c;
  wl_check_init(&c);
  struct ids now = my_ids();
  wl_check(&c, now.pid == want.pid, "getpid %d, was %d", (int)now.pid, (int)want.pid);
  /* The root's parent is outside the tree (the harness, then whoever adopts
   * it after a restore): only the tree's own links are checked. */
  if (!is_root)
    wl_check(&c, now.ppid == want.ppid, "getppid %d, was %d", (int)now.ppid, (int)want.ppid);
  wl_check(&c, now.pgid == want.pgid, "getpgid %d, was %d", (int)now.pgid, (int)want.pgid);
  wl_check(&c, now.sid == want.sid, "getsid %d, was %d", (int)now.sid, (int)want.sid);
  if (is_root) wl_check(&c, now.sid == now.pid, "root is no longer a session leader");
  char why[256];
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&c, 0, "%s", why);
  return wl_check_result(role, &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char why[256];
  struct ids root = my_ids();

  pid_t a = wl_fork();
  if (a < 0) wl_die("root", "fork: %s", strerror(errno));
  if (a == 0) {
    if (setpgid(0, 0) != 0) wl_die("childA", "setpgid: %s", strerror(errno));
    struct ids me = my_ids();
    if (me.pgid != me.pid) wl_die("childA", "pgid %d after setpgid", (int)me.pgid);
    wl_child_ready();
    return run("childA", me, 0);
  }

  pid_t b = wl_fork();
  if (b < 0) wl_die("root", "fork: %s", strerror(errno));
  if (b == 0) {
    pid_t g = wl_fork();
    if (g < 0) wl_die("childB", "fork: %s", strerror(errno));
    if (g == 0) {
      if (setsid() < 0) wl_die("grandchild", "setsid: %s", strerror(errno));
      struct ids me = my_ids();
      wl_child_ready();
      return run("grandchild", me, 0);
    }
    struct ids me = my_ids();
    if (wl_wait_children(why, sizeof why) != 0) wl_die("childB", "%s", why);
    wl_child_ready();
    return run("childB", me, 0);
  }

  if (wl_wait_children(why, sizeof why) != 0) wl_die("root", "%s", why);
  wl_log("root %d childA %d childB %d", (int)root.pid, (int)a, (int)b);
  wl_ready("root childA childB grandchild");
  return run("root", root, 1);
}
