/* wl-tree: a small tree of processes that talk all the time.
 *   root   (a session of its own, started so by the harness)
 *   +- a   its own process group; reads what root writes into a pipe
 *   |  +- b   talks with a both ways over a unix stream socket pair
 *   +- c   talks with root both ways over a unix stream socket pair
 * Every link carries a sequence number every 10 ms (wl-vm.h). A check (roles root, a,
 * b, c): the same pid, parent, process group and session as at the start, no gap and
 * no duplicate on any link, every inbound link still brings new numbers. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wl-vm.h"

static void pair(int sv[2]) {
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    wl_die("root", "socketpair: %s", strerror(errno));
}

static void parent_ready(const char* role) {
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die(role, "%s", why);
}

/* A process with one link, both ways, and no children. */
static void run_leaf(const char* role, const char* link, int fd) {
  struct wlv_proc p;
  wlv_proc_init(&p, role, 0);
  wlv_add_link(&p, link, fd, 1, 1);
  wl_child_ready();
  wlv_run(&p);
}

static void run_a(int from_root) {
  if (setpgid(0, 0) != 0) wl_die("a", "setpgid: %s", strerror(errno));
  int ab[2];
  pair(ab);
  pid_t b = wl_fork();
  if (b < 0) wl_die("a", "fork: %s", strerror(errno));
  if (b == 0) {
    close(ab[0]);
    close(from_root);
    run_leaf("b", "a-b", ab[1]);
  }
  close(ab[1]);
  parent_ready("a");
  struct wlv_proc p;
  wlv_proc_init(&p, "a", 0);
  wlv_add_link(&p, "root->a (pipe)", from_root, 0, 1);
  wlv_add_link(&p, "a-b", ab[0], 1, 1);
  wl_child_ready();
  wlv_run(&p);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int to_a[2], rc[2];
  if (pipe2(to_a, O_CLOEXEC) != 0) wl_die("root", "pipe: %s", strerror(errno));
  pair(rc);
  pid_t a = wl_fork();
  if (a < 0) wl_die("root", "fork: %s", strerror(errno));
  if (a == 0) {
    close(to_a[1]);
    close(rc[0]);
    close(rc[1]);
    run_a(to_a[0]);
  }
  close(to_a[0]);
  pid_t c = wl_fork();
  if (c < 0) wl_die("root", "fork: %s", strerror(errno));
  if (c == 0) {
    close(to_a[1]);
    close(rc[0]);
    run_leaf("c", "c-root", rc[1]);
  }
  close(rc[1]);
  parent_ready("root");
  struct wlv_proc p;
  wlv_proc_init(&p, "root", 1);
  wlv_add_link(&p, "root->a (pipe)", to_a[1], 1, 0);
  wlv_add_link(&p, "c-root", rc[0], 1, 1);
  wl_log("root %d: a %d, c %d", (int)getpid(), (int)a, (int)c);
  wl_ready("root a b c");
  wlv_run(&p);
}
