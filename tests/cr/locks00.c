/* locks00: file locks.
 *   a:  flock LOCK_EX on fd A (file a);
 *   b:  POSIX write lock on bytes 10-19, a read lock on 100-149 and one from 400 to EOF
 *       of file b
 *       (fd B), held by the root;
 *   c:  an OFD write lock on bytes 200-299 of file b, through fd C (another open of b);
 *   d:  flock LOCK_SH on fd D (file d), shared with a child across fork;
 *   the child also holds a POSIX read lock on bytes 0-9 of file e (fd E, its own).
 * Each process records the "lock:" lines of its fdinfo before the dump. After the
 * restore they must read the same (the lock id in front aside), and a probe process
 * forked then must find each lock held: F_GETLK/F_OFD_GETLK report the owner and range,
 * and flock(LOCK_NB) on a new open of a fails with EWOULDBLOCK. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static int open_in_state(const char* name) {
  int fd = openat(wl_dirfd, name, O_RDWR | O_CREAT, 0600);
  if (fd < 0) wl_die("main", "open %s: %s", name, strerror(errno));
  return fd;
}

static void posix_lock(int fd, int cmd, short type, off_t start, off_t len) {
  struct flock fl = {0};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  if (fcntl(fd, cmd, &fl) != 0) wl_die("main", "fcntl lock: %s", strerror(errno));
}

/* The "lock:" lines of fd's fdinfo, each without its leading id ("1:"). */
static void lock_lines(int fd, char* out, size_t n) {
  char raw[1024];
  out[0] = 0;
  if (wl_fdinfo(fd, "lock:", raw, sizeof raw) < 0) return;
  char* save = NULL;
  for (char* l = strtok_r(raw, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    char* p = strchr(l, ':');
    size_t used = strlen(out);
    snprintf(out + used, n - used, "%s\n", p ? p + 1 : l);
  }
}

/* From a fresh process: is [start, start+len) of the file at path write-locked? Returns
 * the pid F_GETLK reports (-1 for an OFD lock), 0 when free. */
static int probe_posix(const char* path, int cmd, off_t start, off_t len) {
  int p[2];
  if (pipe(p) != 0) return -2;
  pid_t child = fork();
  if (child == 0) {
    int fd = openat(wl_dirfd, path, O_RDWR);
    struct flock fl = {0};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    int r = fd >= 0 && fcntl(fd, cmd, &fl) == 0 ? (fl.l_type == F_UNLCK ? 0 : fl.l_pid) : -2;
    if (write(p[1], &r, sizeof r) != sizeof r) _exit(1);
    _exit(0);
  }
  close(p[1]);
  int r = -2;
  if (read(p[0], &r, sizeof r) != sizeof r) r = -2;
  close(p[0]);
  waitpid(child, NULL, 0);
  return r;
}

static int probe_flock(const char* path) {
  int fd = openat(wl_dirfd, path, O_RDWR);
  if (fd < 0) return -2;
  int r = flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : errno;
  close(fd);
  return r;
}

static char child_before[512];

static int child_main(int fd_d) {
  int e = open_in_state("e");
  posix_lock(e, F_SETLK, F_RDLCK, 0, 10);
  lock_lines(e, child_before, sizeof child_before);
  wl_child_ready();
  struct wl_check c;
  if (wl_await("child", &c) != 0) return 1;
  char now[512];
  lock_lines(e, now, sizeof now);
  wl_check(&c, strcmp(now, child_before) == 0, "fd e: locks\n%s, were\n%s", now, child_before);
  wl_check(&c, probe_posix("e", F_GETLK, 0, 10) == getpid(), "e 0-9: not read-locked by me");
  (void)fd_d;
  return wl_check_result("child", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int a = open_in_state("a"), b = open_in_state("b"), d = open_in_state("d");
  int cfd = openat(wl_dirfd, "b", O_RDWR);
  if (flock(a, LOCK_EX) != 0 || flock(d, LOCK_SH) != 0) wl_die("main", "flock");
  posix_lock(b, F_SETLK, F_WRLCK, 10, 10);
  posix_lock(b, F_SETLK, F_RDLCK, 100, 50);
  posix_lock(b, F_SETLK, F_RDLCK, 400, 0);
  posix_lock(cfd, F_OFD_SETLK, F_WRLCK, 200, 100);
  pid_t child = wl_fork();
  if (child == 0) return child_main(d);
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("main", "%s", why);
  char before[4][1024];
  int fds[4] = {a, b, cfd, d};
  for (int i = 0; i < 4; ++i) lock_lines(fds[i], before[i], sizeof before[i]);
  wl_ready("main child");

  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  for (int i = 0; i < 4; ++i) {
    char now[1024];
    lock_lines(fds[i], now, sizeof now);
    wl_check(&c, strcmp(now, before[i]) == 0, "fd %d: locks\n%s, were\n%s", fds[i], now, before[i]);
  }
  wl_check(&c, probe_flock("a") == EWOULDBLOCK, "a: flock LOCK_EX|LOCK_NB from elsewhere: %s",
           strerror(probe_flock("a")));
  wl_check(&c, probe_posix("b", F_GETLK, 10, 10) == getpid(), "b 10-19: not write-locked by me");
  wl_check(&c, probe_posix("b", F_GETLK, 120, 10) == getpid(), "b 100-149: not read-locked by me");
  wl_check(&c, probe_posix("b", F_GETLK, 5000, 10) == getpid(), "b 400-EOF: not read-locked by me");
  wl_check(&c, probe_posix("b", F_GETLK, 50, 10) == 0, "b 50-59: locked, was free");
  wl_check(&c, probe_posix("b", F_OFD_GETLK, 250, 1) == -1, "b 200-299: no OFD lock");
  wl_check(&c, wl_reap_children(5000, why, sizeof why) == 0, "%s", why);
  return wl_check_result("main", &c);
}
