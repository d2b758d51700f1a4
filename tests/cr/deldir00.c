/* deldir00: directories removed while in use.
 *   The working directory is STATEDIR/gone (mode 0750, owner 7:8), removed after the
 *   task went there;
 *   fd 50 is an O_DIRECTORY fd on STATEDIR/gone2 (mode 0711), removed since.
 * After the restore: /proc/self/cwd reads "STATEDIR/gone (deleted)" and fd 50
 * "STATEDIR/gone2 (deleted)"; both have no links, their modes and the owner are the same;
 * nothing can be made in either (ENOENT), and the task's cwd and fd 50 are not one
 * directory. With `replaced`, a file takes STATEDIR/gone2's path after its removal: the
 * directory can't be made again there, and check must refuse. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char gone[512], gone2[512];
  snprintf(gone, sizeof gone, "%s/gone", wl_statedir);
  snprintf(gone2, sizeof gone2, "%s/gone2", wl_statedir);
  if (mkdir(gone, 0750) != 0 || chown(gone, 7, 8) != 0 || chmod(gone, 0750) != 0 ||
      mkdir(gone2, 0711) != 0 || chmod(gone2, 0711) != 0)
    wl_die("main", "mkdir: %s", strerror(errno));
  int d = open(gone2, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0 || dup2(d, 50) != 50) wl_die("main", "open gone2: %s", strerror(errno));
  close(d);
  if (chdir(gone) != 0 || rmdir(gone) != 0 || rmdir(gone2) != 0)
    wl_die("main", "chdir/rmdir: %s", strerror(errno));
  if (argc > 2 && strcmp(argv[2], "replaced") == 0) {
    int f = open(gone2, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (f < 0) wl_die("main", "a file at gone2: %s", strerror(errno));
    close(f);
  }
  wl_ready("main");

  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  char link[600] = "", want[600];
  ssize_t n = readlink("/proc/self/cwd", link, sizeof link - 1);
  if (n > 0) link[n] = 0;
  snprintf(want, sizeof want, "%s (deleted)", gone);
  wl_check(&c, strcmp(link, want) == 0, "cwd reads '%s', want '%s'", link, want);
  n = readlink("/proc/self/fd/50", link, sizeof link - 1);
  link[n > 0 ? n : 0] = 0;
  snprintf(want, sizeof want, "%s (deleted)", gone2);
  wl_check(&c, strcmp(link, want) == 0, "fd 50 reads '%s', want '%s'", link, want);
  struct stat a, b;
  wl_check(&c,
           stat(".", &a) == 0 && a.st_nlink == 0 && (a.st_mode & 07777) == 0750 && a.st_uid == 7 &&
               a.st_gid == 8,
           "cwd: nlink %lu mode 0%o owner %u:%u, want 0 0750 7:8", (unsigned long)a.st_nlink,
           a.st_mode & 07777, a.st_uid, a.st_gid);
  wl_check(&c, fstat(50, &b) == 0 && b.st_nlink == 0 && (b.st_mode & 07777) == 0711,
           "fd 50: nlink %lu mode 0%o, want 0 0711", (unsigned long)b.st_nlink, b.st_mode & 07777);
  wl_check(&c, a.st_ino != b.st_ino, "cwd and fd 50 are one directory");
  errno = 0;
  int f1 = open("x", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  int e1 = errno;
  int f2 = openat(50, "x", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  wl_check(&c, f1 < 0 && e1 == ENOENT && f2 < 0 && errno == ENOENT,
           "a file could be made in a removed directory (%d %d)", f1, f2);
  return wl_check_result("main", &c);
}
