/* tty00: a pty pair with its state, and a session with it as controlling terminal.
 *   main:   opens /dev/ptmx (index N), sets the window size, packet mode, gives
 *           /dev/pts/N owner 13333:44444 and mode 0620 (as a login does); holds the master;
 *   leader: setsid(), opens /dev/pts/N and makes it its controlling terminal (TIOCSCTTY),
 *           opens /dev/tty,
 *           sets termios (canonical, no echo, own special characters, ONLCR) and
 *           TIOCEXCL, writes "output data\n" (the master gets "output data\r\n");
 *   fg:     its own process group, made the foreground group (TIOCSPGRP).
 *   main writes "line one\nline two\npart" through the master: two complete lines and a
 *   partial one wait in the slave's input.
 * After the restore: main reads one packet (TIOCPKT_DATA, then exactly "output data\r\n"),
 * checks TIOCGPTN, the window size, packet mode, the lock and /dev/pts/N's owner and
 * mode; leader checks tty_nr in
 * /proc/self/stat, TIOCGSID, the foreground group, termios and TIOCGEXCL, and that its
 * /dev/tty fd is /dev/tty standing for the slave (TIOCGDEV); fg (in the
 * foreground, so it may read) reads "line one\n", "line two\n", then nothing, then
 * writes "ial\n" through the master and reads "partial\n". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

#include "workload.h"

static int master = -1, slave = -1, devtty = -1;
static unsigned index_n;
static char slave_path[64];
static struct termios want_tio;
static pid_t leader_pid, fg_pid;
static int master_fl, slave_fl, devtty_fl;

static int stat_tty_nr(void) {
  char buf[1024];
  int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
  if (fd >= 0) close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char* p = strrchr(buf, ')');
  int tty_nr = -1;
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %d", &tty_nr) != 1) return -1;
  return tty_nr;
}

static int encode_dev(dev_t d) {
  unsigned ma = major(d), mi = minor(d);
  return (int)((mi & 0xff) | (ma << 8) | ((mi & ~0xffu) << 12));
}

/* Reads what is there within ms milliseconds (one read). */
static ssize_t read_within(int fd, char* buf, size_t n, int ms) {
  struct pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, ms) <= 0) return 0;
  return read(fd, buf, n);
}

static int fg_main(void) {
  wl_child_ready();
  struct wl_check c;
  if (wl_await("fg", &c) != 0) return 1;
  wl_check(&c, tcgetpgrp(slave) == getpid(), "fg: foreground group %d, I am %d", tcgetpgrp(slave),
           getpid());
  wl_check(&c, getsid(0) == leader_pid, "fg: session %d, want %d", getsid(0), leader_pid);
  char buf[256];
  const char* want[] = {"line one\n", "line two\n"};
  for (int i = 0; i < 2; ++i) {
    ssize_t n = read_within(slave, buf, sizeof buf - 1, 2000);
    buf[n > 0 ? n : 0] = 0;
    wl_check(&c, n == (ssize_t)strlen(want[i]) && strcmp(buf, want[i]) == 0,
             "fg: read %zd bytes '%s', want '%s'", n, buf, want[i]);
  }
  ssize_t n = read_within(slave, buf, sizeof buf, 200);
  wl_check(&c, n == 0, "fg: %zd more bytes readable before the partial line ends", n);
  wl_check(&c, write(master, "ial\n", 4) == 4, "fg: write to the master: %s", strerror(errno));
  /* The kernel may hand the completed line out in pieces. */
  size_t have = 0;
  while (have < 8 && (n = read_within(slave, buf + have, sizeof buf - 1 - have, 2000)) > 0)
    have += (size_t)n;
  buf[have] = 0;
  wl_check(&c, strcmp(buf, "partial\n") == 0, "fg: read '%s', want 'partial\\n'", buf);
  return wl_check_result("fg", &c);
}

static int leader_main(void) {
  if (setsid() < 0) wl_die("leader", "setsid: %s", strerror(errno));
  leader_pid = getpid();
  slave = open(slave_path, O_RDWR | O_NOCTTY);
  if (slave < 0) wl_die("leader", "open %s: %s", slave_path, strerror(errno));
  if (ioctl(slave, TIOCSCTTY, 0) < 0) wl_die("leader", "TIOCSCTTY: %s", strerror(errno));
  devtty = open("/dev/tty", O_RDWR);
  if (devtty < 0) wl_die("leader", "open /dev/tty: %s", strerror(errno));
  struct termios t;
  tcgetattr(slave, &t);
  t.c_iflag = ICRNL | IXON | IXANY | IUTF8;
  t.c_oflag = OPOST | ONLCR;
  t.c_lflag = ICANON | ISIG | IEXTEN | ECHOE | ECHOK;
  t.c_cc[VINTR] = 7;
  t.c_cc[VQUIT] = 28;
  t.c_cc[VERASE] = 8;
  t.c_cc[VKILL] = 21;
  t.c_cc[VEOF] = 4;
  t.c_cc[VEOL] = 0;
  t.c_cc[VSUSP] = 25;
  t.c_cc[VWERASE] = 23;
  cfsetispeed(&t, B9600);
  cfsetospeed(&t, B9600);
  if (tcsetattr(slave, TCSANOW, &t) < 0) wl_die("leader", "tcsetattr: %s", strerror(errno));
  tcgetattr(slave, &want_tio);
  slave_fl = fcntl(slave, F_GETFL);
  devtty_fl = fcntl(devtty, F_GETFL);
  if (ioctl(slave, TIOCEXCL) < 0) wl_die("leader", "TIOCEXCL: %s", strerror(errno));
  if (write(slave, "output data\n", 12) != 12) wl_die("leader", "write: %s", strerror(errno));
  fg_pid = wl_fork();
  if (fg_pid < 0) wl_die("leader", "fork: %s", strerror(errno));
  if (fg_pid == 0) {
    setpgid(0, 0);
    return fg_main();
  }
  setpgid(fg_pid, fg_pid);
  if (tcsetpgrp(slave, fg_pid) < 0) wl_die("leader", "tcsetpgrp: %s", strerror(errno));
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("leader", "%s", why);
  wl_child_ready();

  struct wl_check c;
  if (wl_await("leader", &c) != 0) return 1;
  struct stat st;
  fstat(slave, &st);
  int tty_nr = stat_tty_nr();
  wl_check(&c, tty_nr == encode_dev(st.st_rdev), "leader: tty_nr %d, want %d", tty_nr,
           encode_dev(st.st_rdev));
  pid_t sid = 0;
  wl_check(&c, ioctl(slave, TIOCGSID, &sid) == 0 && sid == getpid(), "leader: TIOCGSID %d (%s)",
           sid, strerror(errno));
  wl_check(&c, tcgetpgrp(slave) == fg_pid, "leader: foreground group %d, want %d", tcgetpgrp(slave),
           fg_pid);
  struct termios now;
  tcgetattr(slave, &now);
  wl_check(&c,
           now.c_iflag == want_tio.c_iflag && now.c_oflag == want_tio.c_oflag &&
               now.c_cflag == want_tio.c_cflag && now.c_lflag == want_tio.c_lflag,
           "leader: termios flags %o %o %o %o, want %o %o %o %o", now.c_iflag, now.c_oflag,
           now.c_cflag, now.c_lflag, want_tio.c_iflag, want_tio.c_oflag, want_tio.c_cflag,
           want_tio.c_lflag);
  wl_check(&c, memcmp(now.c_cc, want_tio.c_cc, sizeof now.c_cc) == 0,
           "leader: special characters differ");
  wl_check(&c, cfgetospeed(&now) == B9600, "leader: speed %d", (int)cfgetospeed(&now));
  struct stat ds;
  unsigned dev = 0;
  wl_check(&c,
           fstat(devtty, &ds) == 0 && ds.st_rdev == makedev(5, 0) &&
               ioctl(devtty, TIOCGDEV, &dev) == 0 && (int)dev == encode_dev(st.st_rdev),
           "leader: /dev/tty is not open as the controlling terminal (dev %x)", dev);
  wl_check(&c, tcgetpgrp(devtty) == fg_pid, "leader: /dev/tty: foreground group %d",
           tcgetpgrp(devtty));
  wl_check(&c, fcntl(slave, F_GETFL) == slave_fl && fcntl(devtty, F_GETFL) == devtty_fl,
           "leader: F_GETFL slave 0%o /dev/tty 0%o, were 0%o 0%o", fcntl(slave, F_GETFL),
           fcntl(devtty, F_GETFL), slave_fl, devtty_fl);
  int excl = 0;
  wl_check(&c, ioctl(slave, TIOCGEXCL, &excl) == 0 && excl == 1, "leader: TIOCGEXCL %d", excl);
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&c, 0, "leader: %s", why);
  return wl_check_result("leader", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  master = open("/dev/ptmx", O_RDWR | O_NOCTTY);
  if (master < 0) wl_die("main", "open /dev/ptmx: %s", strerror(errno));
  int unlock = 0;
  if (ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &index_n) < 0)
    wl_die("main", "unlock: %s", strerror(errno));
  snprintf(slave_path, sizeof slave_path, "/dev/pts/%u", index_n);
  if (chown(slave_path, 13333, 44444) != 0 || chmod(slave_path, 0620) != 0)
    wl_die("main", "chown %s: %s", slave_path, strerror(errno));
  struct winsize ws = {37, 101, 640, 480};
  if (ioctl(master, TIOCSWINSZ, &ws) < 0) wl_die("main", "TIOCSWINSZ: %s", strerror(errno));
  pid_t leader = wl_fork();
  if (leader < 0) wl_die("main", "fork: %s", strerror(errno));
  if (leader == 0) return leader_main();
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("main", "%s", why);
  int on = 1;
  if (ioctl(master, TIOCPKT, &on) < 0) wl_die("main", "TIOCPKT: %s", strerror(errno));
  if (write(master, "line one\nline two\npart", 22) != 22)
    wl_die("main", "write: %s", strerror(errno));
  wl_sleep_ms(50);
  master_fl = fcntl(master, F_GETFL);
  wl_ready("main leader fg");

  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  unsigned n = 0;
  wl_check(&c, ioctl(master, TIOCGPTN, &n) == 0 && n == index_n, "main: TIOCGPTN %u, want %u", n,
           index_n);
  struct stat pts;
  wl_check(&c,
           stat(slave_path, &pts) == 0 && pts.st_uid == 13333 && pts.st_gid == 44444 &&
               (pts.st_mode & 07777) == 0620,
           "main: %s is %u:%u mode 0%o, want 13333:44444 0620", slave_path, pts.st_uid, pts.st_gid,
           pts.st_mode & 07777);
  struct winsize now = {0, 0, 0, 0};
  ioctl(master, TIOCGWINSZ, &now);
  wl_check(&c,
           now.ws_row == 37 && now.ws_col == 101 && now.ws_xpixel == 640 && now.ws_ypixel == 480,
           "main: window %ux%u (%ux%u)", now.ws_row, now.ws_col, now.ws_xpixel, now.ws_ypixel);
  wl_check(&c, fcntl(master, F_GETFL) == master_fl, "main: F_GETFL 0%o, was 0%o",
           fcntl(master, F_GETFL), master_fl);
  int pkt = 0, lck = -1;
  wl_check(&c, ioctl(master, TIOCGPKT, &pkt) == 0 && pkt == 1, "main: packet mode %d", pkt);
  wl_check(&c, ioctl(master, TIOCGPTLCK, &lck) == 0 && lck == 0, "main: locked %d", lck);
  char buf[256];
  ssize_t got = read_within(master, buf, sizeof buf - 1, 2000);
  buf[got > 0 ? got : 0] = 0;
  wl_check(&c, got == 14 && buf[0] == TIOCPKT_DATA && strcmp(buf + 1, "output data\r\n") == 0,
           "main: read %zd bytes from the master, want a packet of 'output data\\r\\n'", got);
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&c, 0, "main: %s", why);
  return wl_check_result("main", &c);
}
