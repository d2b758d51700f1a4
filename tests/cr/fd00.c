/* fd00: file descriptors.
 *   append.txt opened O_RDWR|O_APPEND (no FD_CLOEXEC), written once;
 *   ro.txt opened O_RDONLY at offset 123, with FD_CLOEXEC, and dup2()ed to fd
 *   100 (the two share one file description, hence one offset);
 *   gone.txt opened O_RDWR at offset 777 and again O_RDONLY at offset 5, then unlinked:
 *   its content must survive, and the two descriptions must still share one inode; sparse.txt, 4
 * KiB of data at 0 and at 1 MiB in 3 MiB, owner 1:1 and modification time 1234567890, then
 * unlinked: its holes, size, blocks, owner and times must survive too; a directory fd on STATEDIR;
 *   /dev/null (O_WRONLY), /dev/zero, /dev/random (O_NONBLOCK), /dev/urandom;
 *   O_PATH fds on ro.txt, STATEDIR (O_DIRECTORY), a symlink STATEDIR/link (O_NOFOLLOW:
 *   the link itself), a FIFO STATEDIR/fifo and /dev/null.
 * After the restore, for each fd: F_GETFL, F_GETFD, the offset, the target of
 * /proc/self/fd/N, the file type, device and inode (not for the unlinked file,
 * whose inode cannot survive), then its content; the set of open fd numbers
 * must be exactly the one before the dump. Then appends still append, a read
 * through fd 100 moves the offset of the ro.txt fd, /dev/zero reads zeros.
 * With the argument "procfs" it also holds /proc/self/status and the directory
 * /proc/self/task open, which kleap must refuse (cr.refuse.fd00.procfs); with
 * "big-ghost" an unlinked file with 65 MiB of data, above what the set carries
 * (cr.refuse.fd00.big-ghost). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

struct fdrec {
  const char* what;
  int fd;
  int fl, fdfl;
  long long off;
  char link[512];
  struct stat st;
  int unlinked;
};

#define MAXFD 16
static struct fdrec rec[MAXFD];
static int nrec;
static char fdset_before[1024];

static void describe_fd(struct fdrec* r, int fd) {
  r->fd = fd;
  r->fl = fcntl(fd, F_GETFL);
  r->fdfl = fcntl(fd, F_GETFD);
  r->off = (long long)lseek(fd, 0, SEEK_CUR);
  char p[64];
  snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(p, r->link, sizeof r->link - 1);
  r->link[n > 0 ? n : 0] = '\0';
  memset(&r->st, 0, sizeof r->st);
  fstat(fd, &r->st);
}

static void track(const char* what, int fd, int unlinked) {
  if (fd < 0) wl_die("main", "%s: %s", what, strerror(errno));
  struct fdrec* r = &rec[nrec++];
  describe_fd(r, fd);
  r->what = what;
  r->unlinked = unlinked;
  wl_log("fd %d %s: flags 0%o fdflags %d offset %lld -> %s", fd, what, r->fl, r->fdfl, r->off,
         r->link);
}

/* Open fd numbers as a string "0 1 2 ...", without the fd used for reading. */
static void fd_set_string(char* out, size_t n) {
  DIR* d = opendir("/proc/self/fd");
  out[0] = '\0';
  if (!d) return;
  int self = dirfd(d);
  int fds[256], nf = 0;
  struct dirent* e;
  while ((e = readdir(d)) && nf < 256) {
    if (e->d_name[0] == '.') continue;
    int fd = atoi(e->d_name);
    if (fd != self) fds[nf++] = fd;
  }
  closedir(d);
  for (int i = 0; i < nf; i++)
    for (int j = i + 1; j < nf; j++)
      if (fds[j] < fds[i]) {
        int t = fds[i];
        fds[i] = fds[j];
        fds[j] = t;
      }
  size_t o = 0;
  for (int i = 0; i < nf && o + 12 < n; i++)
    o += (size_t)snprintf(out + o, n - o, "%s%d", i ? " " : "", fds[i]);
}

static int create_file(const char* name, size_t len, uint32_t seed) {
  int fd = openat(wl_dirfd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) wl_die("main", "create %s: %s", name, strerror(errno));
  char* buf = malloc(len);
  if (!buf) wl_die("main", "malloc");
  wl_pattern(buf, len, seed);
  if (write(fd, buf, len) != (ssize_t)len) wl_die("main", "write %s", name);
  free(buf);
  close(fd);
  return 0;
}

static const char append_initial[] = "line 0 of append.txt\nline 1 of append.txt\n";

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char path[4096];
  create_file("ro.txt", 4096, 11);
  create_file("gone.txt", 10000, 12);
  int afd = openat(wl_dirfd, "append.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (afd < 0) wl_die("main", "append.txt: %s", strerror(errno));
  close(afd);

  snprintf(path, sizeof path, "%s/append.txt", wl_statedir);
  afd = open(path, O_RDWR | O_APPEND);
  if (afd < 0 || write(afd, append_initial, sizeof append_initial - 1) < 0)
    wl_die("main", "append.txt: %s", strerror(errno));
  track("append.txt O_RDWR|O_APPEND", afd, 0);

  snprintf(path, sizeof path, "%s/ro.txt", wl_statedir);
  int rofd = open(path, O_RDONLY);
  if (rofd < 0 || lseek(rofd, 123, SEEK_SET) != 123) wl_die("main", "ro.txt: %s", strerror(errno));
  fcntl(rofd, F_SETFD, FD_CLOEXEC);
  track("ro.txt O_RDONLY at 123, FD_CLOEXEC", rofd, 0);
  if (dup2(rofd, 100) != 100) wl_die("main", "dup2: %s", strerror(errno));
  track("fd 100 = dup2(ro.txt)", 100, 0);

  snprintf(path, sizeof path, "%s/gone.txt", wl_statedir);
  int gfd = open(path, O_RDWR);
  if (gfd < 0 || lseek(gfd, 777, SEEK_SET) != 777) wl_die("main", "gone.txt: %s", strerror(errno));
  int g2fd = open(path, O_RDONLY);
  if (g2fd < 0 || lseek(g2fd, 5, SEEK_SET) != 5) wl_die("main", "gone.txt: %s", strerror(errno));
  if (unlink(path) != 0) wl_die("main", "unlink gone.txt: %s", strerror(errno));
  track("gone.txt (unlinked) at 777", gfd, 1);
  track("gone.txt (unlinked), opened again, at 5", g2fd, 1);

  snprintf(path, sizeof path, "%s/sparse.txt", wl_statedir);
  int sfd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
  static char page[4096];
  wl_pattern(page, sizeof page, 13);
  struct timespec times[2] = {{1000000000, 0}, {1234567890, 123}};
  if (sfd < 0 || pwrite(sfd, page, sizeof page, 0) != sizeof page ||
      pwrite(sfd, page, sizeof page, 1 << 20) != sizeof page || ftruncate(sfd, 3 << 20) != 0 ||
      fchown(sfd, 1, 1) != 0 || futimens(sfd, times) != 0 || unlink(path) != 0)
    wl_die("main", "sparse.txt: %s", strerror(errno));
  track("sparse.txt (unlinked)", sfd, 1);
  struct stat sparse_st;
  fstat(sfd, &sparse_st);
  if (argc > 2 && strcmp(argv[2], "big-ghost") == 0) {
    snprintf(path, sizeof path, "%s/big.txt", wl_statedir);
    int bfd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    static char mib[1 << 20];
    memset(mib, 'b', sizeof mib);
    for (int i = 0; i < 65; i++)
      if (bfd < 0 || write(bfd, mib, sizeof mib) != sizeof mib)
        wl_die("main", "big.txt: %s", strerror(errno));
    if (unlink(path) != 0) wl_die("main", "big.txt: %s", strerror(errno));
  }

  track("STATEDIR directory", open(wl_statedir, O_RDONLY | O_DIRECTORY), 0);
  track("/dev/null O_WRONLY", open("/dev/null", O_WRONLY), 0);
  int zfd = open("/dev/zero", O_RDONLY);
  track("/dev/zero", zfd, 0);
  track("/dev/random O_NONBLOCK", open("/dev/random", O_RDONLY | O_NONBLOCK), 0);
  int ufd = open("/dev/urandom", O_RDONLY);
  track("/dev/urandom", ufd, 0);

  if (symlinkat("ro.txt", wl_dirfd, "link") != 0 || mkfifoat(wl_dirfd, "fifo", 0600) != 0)
    wl_die("main", "symlink, mkfifo: %s", strerror(errno));
  track("ro.txt O_PATH", openat(wl_dirfd, "ro.txt", O_PATH), 0);
  track("STATEDIR O_PATH|O_DIRECTORY", open(wl_statedir, O_PATH | O_DIRECTORY), 0);
  track("link O_PATH|O_NOFOLLOW", openat(wl_dirfd, "link", O_PATH | O_NOFOLLOW), 0);
  track("fifo O_PATH", openat(wl_dirfd, "fifo", O_PATH), 0);
  track("/dev/null O_PATH", open("/dev/null", O_PATH), 0);

  if (argc > 2 && strcmp(argv[2], "procfs") == 0) {
    int sfd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    int dfd = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sfd < 0 || dfd < 0) wl_die("main", "open /proc/self/...: %s", strerror(errno));
    wl_log("procfs fds %d (/proc/self/status) and %d (/proc/self/task)", sfd, dfd);
  }
  fd_set_string(fdset_before, sizeof fdset_before);
  wl_log("open fds: %s", fdset_before);
  wl_ready("main");
  struct wl_check c;
  wl_check_init(&c);
  if (!wl_check(&c, wl_wait() == 0, "timeout waiting for SIGUSR1"))
    return wl_check_result("main", &c);

  char now_set[1024];
  fd_set_string(now_set, sizeof now_set);
  wl_check(&c, strcmp(now_set, fdset_before) == 0, "open fds are {%s}, were {%s}", now_set,
           fdset_before);
  for (int i = 0; i < nrec; i++) {
    struct fdrec* b = &rec[i];
    struct fdrec n;
    describe_fd(&n, b->fd);
    const char* w = b->what;
    if (!wl_check(&c, n.fl >= 0, "fd %d (%s) is not open: %s", b->fd, w, strerror(errno))) continue;
    wl_check(&c, n.fl == b->fl, "fd %d (%s): F_GETFL 0%o, was 0%o", b->fd, w, n.fl, b->fl);
    wl_check(&c, n.fdfl == b->fdfl, "fd %d (%s): F_GETFD %d, was %d", b->fd, w, n.fdfl, b->fdfl);
    wl_check(&c, n.off == b->off, "fd %d (%s): offset %lld, was %lld", b->fd, w, n.off, b->off);
    wl_check(&c, strcmp(n.link, b->link) == 0, "fd %d (%s): links to '%s', was '%s'", b->fd, w,
             n.link, b->link);
    wl_check(&c,
             (n.st.st_mode & S_IFMT) == (b->st.st_mode & S_IFMT) && n.st.st_rdev == b->st.st_rdev,
             "fd %d (%s): mode 0%o rdev 0x%llx, was 0%o 0x%llx", b->fd, w, (unsigned)n.st.st_mode,
             (unsigned long long)n.st.st_rdev, (unsigned)b->st.st_mode,
             (unsigned long long)b->st.st_rdev);
    if (!b->unlinked)
      wl_check(&c, n.st.st_ino == b->st.st_ino && n.st.st_dev == b->st.st_dev,
               "fd %d (%s): inode %llu dev 0x%llx, was %llu 0x%llx", b->fd, w,
               (unsigned long long)n.st.st_ino, (unsigned long long)n.st.st_dev,
               (unsigned long long)b->st.st_ino, (unsigned long long)b->st.st_dev);
    else
      wl_check(&c, n.st.st_nlink == 0 && n.st.st_size == b->st.st_size,
               "fd %d (%s): nlink %lu size %lld, want 0 and %lld", b->fd, w,
               (unsigned long)n.st.st_nlink, (long long)n.st.st_size, (long long)b->st.st_size);
  }

  struct stat sst;
  memset(&sst, 0, sizeof sst);
  int sst_ok = fstat(sfd, &sst) == 0;
  wl_check(&c,
           sst_ok && sst.st_size == sparse_st.st_size && sst.st_blocks == sparse_st.st_blocks &&
               sst.st_uid == 1 && sst.st_gid == 1 && sst.st_mtim.tv_sec == 1234567890 &&
               sst.st_mtim.tv_nsec == 123 && (sst.st_mode & 07777) == 0640,
           "sparse.txt: size %lld blocks %lld owner %u:%u mtime %lld.%09ld mode 0%o, was %lld %lld "
           "1:1 1234567890.000000123 0640",
           (long long)sst.st_size, (long long)sst.st_blocks, sst.st_uid, sst.st_gid,
           (long long)sst.st_mtim.tv_sec, sst.st_mtim.tv_nsec, sst.st_mode & 07777,
           (long long)sparse_st.st_size, (long long)sparse_st.st_blocks);
  wl_check(&c, lseek(sfd, 0, SEEK_HOLE) == 4096 && lseek(sfd, 4096, SEEK_DATA) == (1 << 20),
           "sparse.txt: the hole after 4 KiB is gone (SEEK_HOLE %lld, SEEK_DATA %lld)",
           (long long)lseek(sfd, 0, SEEK_HOLE), (long long)lseek(sfd, 4096, SEEK_DATA));
  static char got[4096];
  wl_check(&c,
           pread(sfd, got, sizeof got, 1 << 20) == sizeof got &&
               wl_pattern_diff(got, sizeof got, 13) < 0,
           "sparse.txt: the data at 1 MiB differs");

  /* Contents and behaviour. */
  static char buf[16384];
  ssize_t r = pread(gfd, buf, 10000, 0);
  if (wl_check(&c, r == 10000, "gone.txt: pread %zd bytes, want 10000", r)) {
    long d = wl_pattern_diff(buf, 10000, 12);
    wl_check(&c, d < 0, "gone.txt (unlinked): content differs at byte %ld", d);
  }
  struct stat g1st, g2st;
  char mark = 0;
  wl_check(&c,
           fstat(gfd, &g1st) == 0 && fstat(g2fd, &g2st) == 0 && g1st.st_ino == g2st.st_ino &&
               g1st.st_dev == g2st.st_dev && pwrite(gfd, "M", 1, 9000) == 1 &&
               pread(g2fd, &mark, 1, 9000) == 1 && mark == 'M',
           "gone.txt: its two descriptions are no longer of one inode (%llu, %llu; read '%c')",
           (unsigned long long)g1st.st_ino, (unsigned long long)g2st.st_ino, mark);
  r = read(100, buf, 10);
  char want[4096];
  wl_pattern(want, sizeof want, 11);
  wl_check(&c, r == 10 && memcmp(buf, want + 123, 10) == 0,
           "ro.txt: read through fd 100 at offset 123 gave other bytes (%zd)", r);
  long long off = (long long)lseek(rofd, 0, SEEK_CUR);
  wl_check(&c, off == 133, "ro.txt: offset %lld after reading 10 bytes through its dup, want 133",
           off);
  wl_check(&c, write(afd, "XYZ", 3) == 3, "append.txt: write: %s", strerror(errno));
  struct stat st;
  fstat(afd, &st);
  r = pread(afd, buf, sizeof buf, 0);
  size_t want_len = sizeof append_initial - 1 + 3;
  wl_check(&c,
           r == (ssize_t)want_len && memcmp(buf, append_initial, sizeof append_initial - 1) == 0 &&
               memcmp(buf + want_len - 3, "XYZ", 3) == 0,
           "append.txt: content after an append is %zd bytes, want %zu ending in XYZ", r, want_len);
  memset(buf, 0x77, 64);
  r = read(zfd, buf, 64);
  int zeros = r == 64;
  for (int i = 0; zeros && i < 64; i++) zeros = buf[i] == 0;
  wl_check(&c, zeros, "/dev/zero: read %zd bytes, not all zero", r);
  r = read(ufd, buf, 64);
  wl_check(&c, r == 64, "/dev/urandom: read %zd: %s", r, strerror(errno));
  return wl_check_result("main", &c);
}
