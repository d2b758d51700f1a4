/* ghostmap00: files deleted while mapped or run, as after a package upgrade replaced a
 * daemon's binary and libraries.
 *   The program copies itself to STATEDIR/ghostmap00.bin and execs the copy, which
 *   deletes itself: /proc/self/exe reads "... (deleted)".
 *   STATEDIR/data, 64 KiB of a pattern, is mapped private (one page then written: a
 *   copied-on-write page) and shared (one page written through it), kept open as fd too,
 *   then deleted.
 * After the restore: the executable and the mappings still read "(deleted)", every byte
 * is as it was, a write through the shared mapping shows through the fd (one inode), and
 * the fd's file has no name (st_nlink 0). With `shm` both files are made in /dev/shm
 * instead (a tmpfs: carried as memory files, as they are in a guest whose STATEDIR is a
 * tmpfs). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define LEN (64 * 1024)

static void copy_self(const char* to) {
  int in = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
  if (in < 0 || out < 0) wl_die("main", "copy self: %s", strerror(errno));
  static char buf[1 << 16];
  ssize_t n;
  while ((n = read(in, buf, sizeof buf)) > 0)
    if (write(out, buf, (size_t)n) != n) wl_die("main", "copy self: %s", strerror(errno));
  close(in);
  close(out);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char bin[512], data[512];
  int shm = argc > 2 && strstr(argv[2], "shm") != NULL;
  const char* dir = shm ? "/dev/shm" : wl_statedir;
  snprintf(bin, sizeof bin, "%s/ghostmap00-%d.bin", dir, (int)getpid());
  snprintf(data, sizeof data, "%s/ghostmap00-%d.data", dir, (int)getpid());
  if (argc < 3 || strstr(argv[2], "copied") == NULL) {
    copy_self(bin);
    char* args[] = {bin, argv[1], shm ? "shm-copied" : "copied", NULL};
    execv(bin, args);
    wl_die("main", "exec the copy: %s", strerror(errno));
  }
  if (unlink(bin) != 0) wl_die("main", "unlink the copy: %s", strerror(errno));
  static char want[LEN];
  wl_pattern(want, LEN, 5);
  int fd = open(data, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0 || write(fd, want, LEN) != LEN) wl_die("main", "data: %s", strerror(errno));
  char* priv = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  char* shared = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (priv == MAP_FAILED || shared == MAP_FAILED) wl_die("main", "mmap: %s", strerror(errno));
  memset(priv + 4096, 'P', 100);   /* the task's own copy */
  memset(shared + 8192, 'S', 100); /* the file's */
  memset(want + 8192, 'S', 100);
  if (unlink(data) != 0) wl_die("main", "unlink data: %s", strerror(errno));
  wl_ready("main");

  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  char exe[600] = "", line[600] = "";
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) exe[n] = 0;
  char want_exe[600];
  snprintf(want_exe, sizeof want_exe, "%s (deleted)", bin);
  wl_check(&c, strcmp(exe, want_exe) == 0, "/proc/self/exe reads '%s', want '%s'", exe, want_exe);
  wl_check(&c, wl_maps_line((uintptr_t)shared, line, sizeof line) == 0 && strstr(line, "(deleted)"),
           "the shared mapping reads '%s'", line);
  long d = wl_pattern_diff(priv, 4096, 5);
  wl_check(&c, d < 0 && priv[4096] == 'P' && priv[4195] == 'P',
           "the private mapping lost its bytes (first difference %ld)", d);
  wl_check(&c, memcmp(shared, want, LEN) == 0, "the shared mapping's bytes differ");
  static char back[LEN];
  wl_check(&c, pread(fd, back, LEN, 0) == LEN && memcmp(back, want, LEN) == 0,
           "the file through its fd differs");
  shared[100] = 'Z';
  char z = 0;
  wl_check(&c, pread(fd, &z, 1, 100) == 1 && z == 'Z',
           "a write through the shared mapping does not show through the fd (two inodes)");
  struct stat st;
  wl_check(&c, fstat(fd, &st) == 0 && st.st_nlink == 0 && st.st_size == LEN,
           "the file: nlink %lu size %lld", (unsigned long)st.st_nlink, (long long)st.st_size);
  return wl_check_result("main", &c);
}
