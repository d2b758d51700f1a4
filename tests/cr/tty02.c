/* tty02: terminals of the machine, not of the tree: an fd on /dev/console (and on
 * /dev/ttyS0 when there is one), opened O_NOCTTY. They are carried by path: after the
 * restore each fd is the same device (rdev), with the same access mode and
 * O_NONBLOCK, and nothing was written to them. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "workload.h"

struct line {
  const char* path;
  int flags;
  int fd;
  dev_t rdev;
};

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct line lines[] = {{"/dev/console", O_RDONLY | O_NOCTTY, -1, 0},
                         {"/dev/ttyS0", O_RDWR | O_NOCTTY | O_NONBLOCK, -1, 0}};
  int n = 0;
  for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
    struct line* l = &lines[i];
    l->fd = open(l->path, l->flags);
    struct stat st;
    if (l->fd < 0 || fstat(l->fd, &st) != 0) {
      if (i == 0) wl_skip("open %s: %s", l->path, strerror(errno));
      wl_log("no %s here (%s): only the console is checked", l->path, strerror(errno));
      continue;
    }
    l->rdev = st.st_rdev;
    n++;
  }
  wl_ready("root");
  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
    struct line* l = &lines[i];
    if (l->fd < 0) continue;
    struct stat st;
    if (!wl_check(&c, fstat(l->fd, &st) == 0, "fd %d (%s): %s", l->fd, l->path, strerror(errno)))
      continue;
    wl_check(&c, S_ISCHR(st.st_mode) && st.st_rdev == l->rdev, "fd %d: device %u:%u, not %s %u:%u",
             l->fd, major(st.st_rdev), minor(st.st_rdev), l->path, major(l->rdev), minor(l->rdev));
    int fl = fcntl(l->fd, F_GETFL);
    wl_check(&c,
             fl >= 0 && (fl & O_ACCMODE) == (l->flags & O_ACCMODE) &&
                 (fl & O_NONBLOCK) == (l->flags & O_NONBLOCK),
             "fd %d (%s): flags %#o, wanted %#o", l->fd, l->path, fl, l->flags);
  }
  wl_log("checked %d terminal lines", n);
  return wl_check_result("root", &c);
}
