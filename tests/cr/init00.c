/* init00: a whole system in a pid namespace: the root is PID 1 (run-init.sh starts it
 * with unshare --pid), and is restored by `kleap restore --as-init`, which is PID 1 of
 * a new namespace and becomes it.
 *   root (pid 1, session 1): counts in memory; reaps every child it doesn't know, as an
 *   |    init does (the restore's controller is one: it exits once the tree runs)
 *   +- echo: answers each byte the root writes on a pipe with the byte + 1
 * After SIGUSR1: the root is still pid 1 and leads session 1, `echo` still answers with
 * the same pid and parent 1, the counter never went back, and every child the root
 * didn't make was reaped (none is left, as a zombie or otherwise).
 *
 * `init00 STATEDIR mounts`: the root also mounts a tmpfs at STATEDIR/mnt (its namespace's
 * own) holding a file, a directory with a 64 KiB file it keeps open at offset 100, a
 * symlink, a hard link and a fifo, with modes and times of their own; run-init.sh dumps
 * with --mounts STATEDIR/mnt and restores with --mounts. Afterwards every one of them is
 * there as it was, and the open fd is the file at its path, at offset 100. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static int p_req[2], p_ans[2];
static volatile unsigned long counter;

static int echo_main(void) {
  wl_child_ready();
  for (;;) {
    unsigned char c;
    ssize_t n = read(p_req[0], &c, 1);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    c++;
    if (write(p_ans[1], &c, 1) != 1) break;
    if (wl_usr1 && c == 0xff) break;
  }
  struct wl_check k;
  wl_check_init(&k);
  wl_check(&k, getppid() == 1, "echo: parent %d, not 1", (int)getppid());
  return wl_check_result("echo", &k);
}

/* Children of pid 1 that are not `known`: reaped when they are zombies. Returns how
 * many are left alive. */
static int reap_strangers(pid_t known, int* reaped) {
  char path[64];
  snprintf(path, sizeof path, "/proc/1/task/1/children");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[512];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = 0;
  int alive = 0;
  for (char* s = strtok(buf, " \n"); s; s = strtok(NULL, " \n")) {
    pid_t p = (pid_t)atoi(s);
    if (p == known) continue;
    if (waitpid(p, NULL, WNOHANG) == p)
      (*reaped)++;
    else
      alive++;
  }
  return alive;
}

/* The same while the set may be dumped at any moment: zombies only, through waitid, with
 * no fd open meanwhile (a dump would catch a /proc fd that reap_strangers holds for a
 * moment, and that is not what this program tests). */
static void reap_zombie_strangers(pid_t known, int* reaped) {
  for (;;) {
    siginfo_t si;
    si.si_pid = 0;
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0) return;
    if (si.si_pid == known || waitpid(si.si_pid, NULL, WNOHANG) != si.si_pid) return;
    (*reaped)++;
  }
}

static char mnt[512];
static int open_b = -1;
static const struct timespec kTimes[2] = {{1000000000, 5}, {1200000000, 7}};

static void path_in(char* out, size_t n, const char* rel) {
  snprintf(out, n, "%s/%s", mnt, rel);
}

static void set_up_mounts(void) {
  snprintf(mnt, sizeof mnt, "%s/mnt", wl_statedir);
  if (mkdir(mnt, 0755) != 0 && errno != EEXIST)
    wl_die("root", "mkdir %s: %s", mnt, strerror(errno));
  if (mount("kleap-init00", mnt, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=750") != 0)
    wl_die("root", "mount tmpfs at %s: %s", mnt, strerror(errno));
  char p[600], q[600];
  path_in(p, sizeof p, "a");
  int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd < 0 || write(fd, "hello\n", 6) != 6) wl_die("root", "write %s: %s", p, strerror(errno));
  close(fd);
  path_in(p, sizeof p, "d");
  if (mkdir(p, 0711) != 0) wl_die("root", "mkdir %s: %s", p, strerror(errno));
  path_in(p, sizeof p, "d/b");
  fd = open(p, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  static char buf[65536];
  wl_pattern(buf, sizeof buf, 7);
  if (fd < 0 || write(fd, buf, sizeof buf) != (ssize_t)sizeof buf ||
      lseek(fd, 100, SEEK_SET) != 100)
    wl_die("root", "write %s: %s", p, strerror(errno));
  open_b = fd;
  path_in(p, sizeof p, "l");
  if (symlink("a", p) != 0) wl_die("root", "symlink: %s", strerror(errno));
  path_in(q, sizeof q, "a");
  path_in(p, sizeof p, "h");
  if (link(q, p) != 0) wl_die("root", "link: %s", strerror(errno));
  path_in(p, sizeof p, "p");
  if (mkfifo(p, 0620) != 0 || chmod(p, 0620) != 0) wl_die("root", "mkfifo: %s", strerror(errno));
  path_in(p, sizeof p, "a");
  if (utimensat(AT_FDCWD, p, kTimes, 0) != 0) wl_die("root", "utimensat: %s", strerror(errno));
}

static void check_mounts(struct wl_check* c) {
  char p[600], buf[16] = {0};
  struct stat a, h, b, fb;
  path_in(p, sizeof p, "a");
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  wl_check(c, fd >= 0 && read(fd, buf, sizeof buf) == 6 && !memcmp(buf, "hello\n", 6),
           "mnt/a: not 'hello' (%s)", strerror(errno));
  if (fd >= 0) close(fd);
  wl_check(c,
           stat(p, &a) == 0 && (a.st_mode & 07777) == 0640 && a.st_mtim.tv_sec == 1200000000 &&
               a.st_mtim.tv_nsec == 7,
           "mnt/a: mode %o or mtime %ld.%ld not the dump's", (unsigned)a.st_mode,
           (long)a.st_mtim.tv_sec, (long)a.st_mtim.tv_nsec);
  path_in(p, sizeof p, "h");
  wl_check(c, stat(p, &h) == 0 && h.st_ino == a.st_ino && h.st_nlink == 2,
           "mnt/h: not a hard link of mnt/a");
  path_in(p, sizeof p, "l");
  ssize_t n = readlink(p, buf, sizeof buf);
  wl_check(c, n == 1 && buf[0] == 'a', "mnt/l: not a symlink to a");
  path_in(p, sizeof p, "p");
  struct stat f;
  wl_check(c, stat(p, &f) == 0 && S_ISFIFO(f.st_mode) && (f.st_mode & 07777) == 0620,
           "mnt/p: not a fifo of mode 0620");
  path_in(p, sizeof p, "d");
  wl_check(c, stat(p, &f) == 0 && S_ISDIR(f.st_mode) && (f.st_mode & 07777) == 0711,
           "mnt/d: not a directory of mode 0711");
  path_in(p, sizeof p, "d/b");
  wl_check(
      c,
      stat(p, &b) == 0 && fstat(open_b, &fb) == 0 && b.st_ino == fb.st_ino && b.st_dev == fb.st_dev,
      "fd %d is not mnt/d/b", open_b);
  wl_check(c, lseek(open_b, 0, SEEK_CUR) == 100, "fd %d: offset %ld, not 100", open_b,
           (long)lseek(open_b, 0, SEEK_CUR));
  static char got[65536];
  wl_check(c,
           pread(open_b, got, sizeof got, 0) == (ssize_t)sizeof got &&
               wl_pattern_diff(got, sizeof got, 7) < 0,
           "mnt/d/b: its bytes are not the dump's");
}

static int round_trip(unsigned char v) {
  unsigned char got = 0;
  if (write(p_req[1], &v, 1) != 1) return 0;
  return wl_read_full(p_ans[0], &got, 1) == 1 && got == (unsigned char)(v + 1);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (getpid() != 1) wl_die("root", "not PID 1 (%d): run me with unshare --pid --fork", getpid());
  int mounts = argc > 2 && strcmp(argv[2], "mounts") == 0;
  if (mounts) set_up_mounts();
  if (pipe2(p_req, O_CLOEXEC) != 0 || pipe2(p_ans, O_CLOEXEC) != 0)
    wl_die("root", "pipe: %s", strerror(errno));
  pid_t echo = wl_fork();
  if (echo < 0) wl_die("root", "fork: %s", strerror(errno));
  if (echo == 0) return echo_main();
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("root", "%s", why);
  if (!round_trip(1)) wl_die("root", "no answer from echo");
  wl_ready("root echo");
  unsigned long before = 0;
  int reaped = 0;
  /* wl_wait polls; an init reaps meanwhile (strangers only: echo is wl's). */
  while (!wl_usr1) {
    counter++;
    before = counter;
    reap_zombie_strangers(echo, &reaped);
    wl_sleep_ms(5);
  }
  struct wl_check c;
  wl_check_init(&c);
  wl_check(&c, getpid() == 1, "root: pid %d, not 1", (int)getpid());
  wl_check(&c, getsid(0) == 1, "root: session %d, not 1", (int)getsid(0));
  wl_check(&c, counter >= before, "root: counter went back from %lu to %lu", before, counter);
  wl_check(&c, kill(echo, 0) == 0, "root: echo %d is gone", (int)echo);
  wl_check(&c, round_trip(0x41), "root: echo does not answer after the restore");
  if (mounts) check_mounts(&c);
  int left = -1;
  for (int i = 0; i < 200 && (left = reap_strangers(echo, &reaped)) != 0; i++) wl_sleep_ms(10);
  wl_check(&c, left == 0, "root: %d children it did not make are still alive", left);
  if (!round_trip(0xfe)) wl_check(&c, 0, "root: echo did not take the last byte");
  wl_check_reaped(&c, echo, "echo", 5000);
  wl_log("root: reaped %d children it did not make", reaped);
  return wl_check_result("root", &c);
}
