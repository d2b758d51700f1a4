/* tty01: a pty pair of a devpts instance of its own (mounted with newinstance and
 * detached at once, the fds keep it): kleap check and dump must refuse it, naming
 * "another devpts instance"; the tree runs on. After SIGUSR1 the pair still works:
 * what is written to the master is read from the slave. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char dir[4096], path[4200];
  snprintf(dir, sizeof dir, "%s/pts", wl_statedir);
  if (mkdir(dir, 0700) < 0) wl_die("main", "mkdir %s: %s", dir, strerror(errno));
  if (mount("devpts", dir, "devpts", 0, "newinstance,ptmxmode=0600") < 0)
    wl_skip("can't mount a devpts instance: %s", strerror(errno));
  snprintf(path, sizeof path, "%s/ptmx", dir);
  int master = open(path, O_RDWR | O_NOCTTY);
  int unlock = 0;
  unsigned n = 0;
  if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &n) < 0)
    wl_die("main", "open %s: %s", path, strerror(errno));
  snprintf(path, sizeof path, "%s/%u", dir, n);
  int slave = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK);
  if (slave < 0) wl_die("main", "open %s: %s", path, strerror(errno));
  umount2(dir, MNT_DETACH);
  struct termios t;
  tcgetattr(slave, &t);
  cfmakeraw(&t);
  tcsetattr(slave, TCSANOW, &t);
  wl_ready("main");

  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  wl_check(&c, write(master, "ping", 4) == 4, "write the master: %s", strerror(errno));
  struct pollfd p = {slave, POLLIN, 0};
  char buf[16] = "";
  ssize_t got = poll(&p, 1, 2000) == 1 ? read(slave, buf, sizeof buf - 1) : -1;
  wl_check(&c, got == 4 && memcmp(buf, "ping", 4) == 0, "read %zd bytes from the slave", got);
  return wl_check_result("main", &c);
}
