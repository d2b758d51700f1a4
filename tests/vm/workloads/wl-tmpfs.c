/* wl-tmpfs: files in tmpfs, one of them held open.
 * `wl-tmpfs STATEDIR` (STATEDIR must be on tmpfs) writes into STATEDIR:
 *   open.dat    40000 bytes of a known pattern, mode 0640, kept open read-write with
 *               its offset left at 12345;
 *   closed.dat  9000 bytes of another pattern, mode 0600, closed.
 * A check (role `tmpfs`): the open fd is still open.dat (the device and inode of the
 * path), read-write, at offset 12345, with the size, mode, mtime and content it was
 * written with (read through the fd); closed.dat, opened afresh by its path, has its
 * size, mode, mtime and content. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "wl-vm.h"

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

#define OPEN_SIZE 40000
#define OPEN_OFFSET 12345
#define CLOSED_SIZE 9000

struct file {
  const char* name;
  size_t size;
  mode_t mode;
  uint32_t seed;
  struct stat st; /* as written */
};

static struct file open_file = {"open.dat", OPEN_SIZE, 0640, 11, {0}};
static struct file closed_file = {"closed.dat", CLOSED_SIZE, 0600, 12, {0}};
static int open_fd = -1;

/* Creates f with its pattern; returns the fd, open read-write. */
static int create(struct file* f) {
  char* buf = malloc(f->size);
  if (!buf) wl_die("tmpfs", "malloc: %s", strerror(errno));
  wl_pattern(buf, f->size, f->seed);
  int fd = openat(wl_dirfd, f->name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, f->mode);
  if (fd < 0) wl_die("tmpfs", "create %s/%s: %s", wl_statedir, f->name, strerror(errno));
  if (fchmod(fd, f->mode) != 0 || write(fd, buf, f->size) != (ssize_t)f->size)
    wl_die("tmpfs", "write %s/%s: %s", wl_statedir, f->name, strerror(errno));
  if (fstat(fd, &f->st) != 0) wl_die("tmpfs", "fstat %s: %s", f->name, strerror(errno));
  free(buf);
  return fd;
}

/* What fd holds is f as it was written. */
static void check_file(struct wl_check* c, const struct file* f, int fd) {
  struct stat st;
  if (!wl_check(c, fstat(fd, &st) == 0, "fstat %s: %s", f->name, strerror(errno))) return;
  wl_check(c, (size_t)st.st_size == f->size, "%s: size %lld, written %zu", f->name,
           (long long)st.st_size, f->size);
  wl_check(c, (st.st_mode & 07777) == f->mode, "%s: mode %o, written %o", f->name,
           (unsigned)(st.st_mode & 07777), (unsigned)f->mode);
  wl_check(c,
           st.st_mtim.tv_sec == f->st.st_mtim.tv_sec && st.st_mtim.tv_nsec == f->st.st_mtim.tv_nsec,
           "%s: mtime %lld.%09ld, written %lld.%09ld", f->name, (long long)st.st_mtim.tv_sec,
           st.st_mtim.tv_nsec, (long long)f->st.st_mtim.tv_sec, f->st.st_mtim.tv_nsec);
  char* buf = calloc(1, f->size + 1);
  if (!wl_check(c, buf != NULL, "calloc: %s", strerror(errno))) return;
  ssize_t r = pread(fd, buf, f->size + 1, 0);
  if (wl_check(c, r == (ssize_t)f->size, "%s: read %zd bytes (%s), want %zu", f->name, r,
               r < 0 ? strerror(errno) : "", f->size)) {
    long at = wl_pattern_diff(buf, f->size, f->seed);
    wl_check(c, at < 0, "%s: the content differs from byte %ld", f->name, at);
  }
  free(buf);
}

static void check(void* arg, struct wl_check* c) {
  (void)arg;
  struct stat by_path, by_fd;
  if (wl_check(c,
               fstatat(wl_dirfd, open_file.name, &by_path, 0) == 0 && fstat(open_fd, &by_fd) == 0,
               "stat %s/%s: %s", wl_statedir, open_file.name, strerror(errno)))
    wl_check(c, by_path.st_dev == by_fd.st_dev && by_path.st_ino == by_fd.st_ino,
             "fd %d is no longer %s/%s (dev/inode %llx/%llu, the path has %llx/%llu)", open_fd,
             wl_statedir, open_file.name, (unsigned long long)by_fd.st_dev,
             (unsigned long long)by_fd.st_ino, (unsigned long long)by_path.st_dev,
             (unsigned long long)by_path.st_ino);
  off_t off = lseek(open_fd, 0, SEEK_CUR);
  wl_check(c, off == OPEN_OFFSET, "fd %d: offset %lld, left at %d", open_fd, (long long)off,
           OPEN_OFFSET);
  int fl = fcntl(open_fd, F_GETFL);
  wl_check(c, fl >= 0 && (fl & O_ACCMODE) == O_RDWR, "fd %d: flags 0%o, not read-write", open_fd,
           (unsigned)fl);
  check_file(c, &open_file, open_fd);
  int fd = openat(wl_dirfd, closed_file.name, O_RDONLY | O_CLOEXEC);
  if (wl_check(c, fd >= 0, "open %s/%s: %s", wl_statedir, closed_file.name, strerror(errno))) {
    check_file(c, &closed_file, fd);
    close(fd);
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct statfs fs;
  if (fstatfs(wl_dirfd, &fs) != 0 || fs.f_type != TMPFS_MAGIC)
    wl_die("tmpfs", "%s is not on tmpfs", wl_statedir);
  close(create(&closed_file));
  open_fd = create(&open_file);
  if (lseek(open_fd, OPEN_OFFSET, SEEK_SET) != OPEN_OFFSET)
    wl_die("tmpfs", "lseek: %s", strerror(errno));
  wlv_run_alone("tmpfs", 100, NULL, check);
}
