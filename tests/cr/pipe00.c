/* pipe00: pipes and FIFOs with data in them.
 *   pipe A: both ends in the root, 1000 bytes buffered;
 *   pipe B: the root holds the write end, the child the read end, 2000 bytes
 *           in flight (the child does not read before the dump);
 *   FIFO STATEDIR/fifo: read end (O_NONBLOCK) and write end in the root,
 *           500 bytes buffered;
 *   pipe C: F_SETPIPE_SZ to 1 MiB, 200 KiB buffered (more than a default
 *           pipe holds), write end O_NONBLOCK;
 *   FIFO STATEDIR/gone (mode 0640): held O_RDWR, 300 bytes buffered, then unlinked.
 * The unlinked FIFO comes back unlinked, with its mode, its bytes and its link
 * ("STATEDIR/gone (deleted)"), and still passes data.
 * After the restore: F_GETFL of every end, both ends of A and C are still one
 * pipe, FIONREAD and the buffered bytes are intact, F_GETPIPE_SZ of C is
 * unchanged, the FIFO fd still names STATEDIR/fifo, and more data flows
 * through each; the child reads B's 2000 bytes, then 100 more the root writes
 * after the restore, then EOF once the root closes its end (no other writer). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define A_LEN 1000
#define B_LEN 2000
#define B_MORE 100
#define F_LEN 500
#define C_LEN (200 * 1024)
#define C_SIZE (1024 * 1024)

static int pa[2], pb[2], pc[2], fifo_r = -1, fifo_w = -1;
static int fl_before[8];
static int csize_before;
static char fifo_link[4096];
static unsigned char buf[C_LEN + 4096];

static void check_buffered(struct wl_check* c, const char* what, int rfd, size_t len,
                           uint32_t seed) {
  int n = wl_fionread(rfd);
  if (!wl_check(c, n == (int)len, "%s: FIONREAD %d, want %zu buffered bytes", what, n, len) &&
      n <= 0)
    return;
  size_t got = wl_read_full(rfd, buf, len);
  if (!wl_check(c, got == len, "%s: read %zu of %zu buffered bytes", what, got, len)) return;
  long d = wl_pattern_diff(buf, len, seed);
  wl_check(c, d < 0, "%s: buffered data differs at byte %ld", what, d);
}

static void check_flow(struct wl_check* c, const char* what, int rfd, int wfd) {
  unsigned char out[300], in[300];
  wl_pattern(out, sizeof out, 77);
  if (!wl_check(c, write(wfd, out, sizeof out) == (ssize_t)sizeof out, "%s: write: %s", what,
                strerror(errno)))
    return;
  size_t got = wl_read_full(rfd, in, sizeof in);
  wl_check(c, got == sizeof in && memcmp(in, out, sizeof in) == 0,
           "%s: wrote 300 bytes after the restore, read back %zu (or other bytes)", what, got);
}

static void same_pipe(struct wl_check* c, const char* what, int a, int b) {
  struct stat x, y;
  fstat(a, &x);
  fstat(b, &y);
  wl_check(c, S_ISFIFO(x.st_mode) && x.st_ino == y.st_ino && x.st_dev == y.st_dev,
           "%s: the read and write ends are not one pipe (inodes %llu and %llu)", what,
           (unsigned long long)x.st_ino, (unsigned long long)y.st_ino);
}

static void fill(int fd, size_t len, uint32_t seed, const char* what) {
  wl_pattern(buf, len, seed);
  if (write(fd, buf, len) != (ssize_t)len) wl_die("root", "write %s: %s", what, strerror(errno));
}

static int child_main(void) {
  close(pb[1]);
  wl_child_ready();
  if (wl_wait() != 0) {
    wl_result("child", 0, "timeout waiting for SIGUSR1");
    return 1;
  }
  struct wl_check c;
  wl_check_init(&c);
  int n = wl_fionread(pb[0]);
  wl_check(&c, n >= B_LEN, "pipe B: FIONREAD %d in the child, want at least %d", n, B_LEN);
  size_t got = wl_read_full(pb[0], buf, B_LEN);
  if (wl_check(&c, got == B_LEN, "pipe B: the child read %zu of %d bytes in flight", got, B_LEN)) {
    long d = wl_pattern_diff(buf, B_LEN, 22);
    wl_check(&c, d < 0, "pipe B: data in flight differs at byte %ld", d);
    got = wl_read_full(pb[0], buf, B_MORE);
    if (wl_check(&c, got == B_MORE,
                 "pipe B: the child read %zu of the %d bytes written after "
                 "the restore",
                 got, B_MORE)) {
      d = wl_pattern_diff(buf, B_MORE, 25);
      wl_check(&c, d < 0, "pipe B: data written after the restore differs at byte %ld", d);
    }
    /* The root closes its end next: EOF proves nobody else holds one. */
    ssize_t r = -1;
    for (int t = 0; t < 300; t++) {
      struct pollfd pfd = {pb[0], POLLIN, 0};
      if (poll(&pfd, 1, 10) > 0) {
        r = read(pb[0], buf, 1);
        break;
      }
    }
    wl_check(&c, r == 0, "pipe B: no EOF after the root closed its end (%zd): another writer?", r);
  }
  return wl_check_result("child", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (pipe(pa) || pipe(pb) || pipe(pc)) wl_die("root", "pipe: %s", strerror(errno));
  fill(pa[1], A_LEN, 21, "pipe A");
  if (fcntl(pc[0], F_SETPIPE_SZ, C_SIZE) < 0) wl_die("root", "F_SETPIPE_SZ: %s", strerror(errno));
  fcntl(pc[1], F_SETFL, O_NONBLOCK);
  csize_before = fcntl(pc[0], F_GETPIPE_SZ);
  fill(pc[1], C_LEN, 24, "pipe C");

  if (mkfifoat(wl_dirfd, "fifo", 0600) != 0) wl_die("root", "mkfifo: %s", strerror(errno));
  char path[4096];
  snprintf(path, sizeof path, "%s/fifo", wl_statedir);
  fifo_r = open(path, O_RDONLY | O_NONBLOCK);
  fifo_w = open(path, O_WRONLY);
  if (fifo_r < 0 || fifo_w < 0) wl_die("root", "open fifo: %s", strerror(errno));
  fill(fifo_w, F_LEN, 23, "fifo");
  snprintf(path, sizeof path, "/proc/self/fd/%d", fifo_r);
  ssize_t l = readlink(path, fifo_link, sizeof fifo_link - 1);
  fifo_link[l > 0 ? l : 0] = '\0';

  if (mkfifoat(wl_dirfd, "gone", 0600) != 0 || fchmodat(wl_dirfd, "gone", 0640, 0) != 0)
    wl_die("root", "mkfifo gone: %s", strerror(errno));
  int gone = openat(wl_dirfd, "gone", O_RDWR | O_NONBLOCK);
  if (gone < 0) wl_die("root", "open gone: %s", strerror(errno));
  fill(gone, 300, 26, "gone");
  if (unlinkat(wl_dirfd, "gone", 0) != 0) wl_die("root", "unlink gone: %s", strerror(errno));
  char gone_link[4096];
  snprintf(path, sizeof path, "/proc/self/fd/%d", gone);
  l = readlink(path, gone_link, sizeof gone_link - 1);
  gone_link[l > 0 ? l : 0] = '\0';

  pid_t child = wl_fork();
  if (child < 0) wl_die("root", "fork: %s", strerror(errno));
  if (child == 0) return child_main();
  close(pb[0]);
  fill(pb[1], B_LEN, 22, "pipe B");
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("root", "%s", why);

  int fds[7] = {pa[0], pa[1], pb[1], pc[0], pc[1], fifo_r, fifo_w};
  for (int i = 0; i < 7; i++) fl_before[i] = fcntl(fds[i], F_GETFL);
  wl_log("pipe C size %d; fifo %s", csize_before, fifo_link);
  wl_ready("root child");
  struct wl_check c;
  wl_check_init(&c);
  if (!wl_check(&c, wl_wait() == 0, "timeout waiting for SIGUSR1"))
    return wl_check_result("root", &c);

  /* Pipe B first: the child is waiting for the rest. */
  fill(pb[1], B_MORE, 25, "pipe B");
  close(pb[1]);

  static const char* const names[7] = {"pipe A read", "pipe A write", "pipe B write",
                                       "pipe C read", "pipe C write", "fifo read",
                                       "fifo write"};
  for (int i = 0; i < 7; i++) {
    if (i == 2) continue;
    int f = fcntl(fds[i], F_GETFL);
    wl_check(&c, f == fl_before[i], "%s (fd %d): F_GETFL 0%o, was 0%o", names[i], fds[i], f,
             fl_before[i]);
  }
  same_pipe(&c, "pipe A", pa[0], pa[1]);
  same_pipe(&c, "pipe C", pc[0], pc[1]);
  same_pipe(&c, "fifo", fifo_r, fifo_w);
  int csize = fcntl(pc[0], F_GETPIPE_SZ);
  wl_check(&c, csize == csize_before, "pipe C: F_GETPIPE_SZ %d, was %d", csize, csize_before);
  check_buffered(&c, "pipe A", pa[0], A_LEN, 21);
  check_buffered(&c, "pipe C", pc[0], C_LEN, 24);
  check_buffered(&c, "fifo", fifo_r, F_LEN, 23);
  check_flow(&c, "pipe A", pa[0], pa[1]);
  check_flow(&c, "pipe C", pc[0], pc[1]);
  check_flow(&c, "fifo", fifo_r, fifo_w);
  char link[4096];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fifo_r);
  l = readlink(path, link, sizeof link - 1);
  link[l > 0 ? l : 0] = '\0';
  wl_check(&c, strcmp(link, fifo_link) == 0, "fifo: fd links to '%s', was '%s'", link, fifo_link);

  struct stat gs;
  wl_check(&c,
           fstat(gone, &gs) == 0 && S_ISFIFO(gs.st_mode) && gs.st_nlink == 0 &&
               (gs.st_mode & 07777) == 0640,
           "gone: mode 0%o, %d links, want an unlinked FIFO of mode 0640", (unsigned)gs.st_mode,
           (int)gs.st_nlink);
  check_buffered(&c, "gone", gone, 300, 26);
  check_flow(&c, "gone", gone, gone);
  snprintf(path, sizeof path, "/proc/self/fd/%d", gone);
  l = readlink(path, link, sizeof link - 1);
  link[l > 0 ? l : 0] = '\0';
  wl_check(&c, strcmp(link, gone_link) == 0, "gone: fd links to '%s', was '%s'", link, gone_link);

  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&c, 0, "root: %s", why);
  return wl_check_result("root", &c);
}
