/* inotify00: inotify instances.
 *   in (IN_NONBLOCK): STATEDIR/dir (IN_CREATE|IN_DELETE), STATEDIR/f1 (IN_MODIFY), a
 *      watch on STATEDIR/gone taken back (its wd is a gap), STATEDIR/f2
 *      (IN_OPEN|IN_ONESHOT);
 *   in2 (IN_CLOEXEC, blocking): STATEDIR/w (IN_CLOSE_WRITE|IN_EXCL_UNLINK);
 *   in3 (IN_NONBLOCK): 26 files STATEDIR/m00..m25 (IN_ATTRIB), m05's watch taken back:
 *      wds up to 26, which fdinfo shows in hex (0x1a).
 * With the argument `queued`, an event is left queued on in: the dump must refuse it.
 * After the restore: F_GETFL, F_GETFD and every fdinfo watch line (wd, inode, device,
 * mask, file handle) are what they were; a file created in dir, a write to f1 and an
 * open of f2 are read from in with their wds (f2's once, then IN_IGNORED); a file
 * written in w is read from in2; a chmod of m25 is read from in3 with wd 26; a new watch
 * gets the wd after the highest. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

struct ifd {
  const char* what;
  int fd;
  int fl, fdfl;
  char watches[2048];
};

static void describe(struct ifd* e) {
  e->fl = fcntl(e->fd, F_GETFL);
  e->fdfl = fcntl(e->fd, F_GETFD);
  if (wl_fdinfo_sorted(e->fd, "inotify wd:", NULL, e->watches, sizeof e->watches) < 1)
    wl_die("main", "%s: fd %d: nothing in fdinfo", e->what, e->fd);
}

static int watch(int fd, const char* name, uint32_t mask) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", wl_statedir, name);
  int wd = inotify_add_watch(fd, path, mask);
  if (wd < 0) wl_die("main", "watch %s: %s", name, strerror(errno));
  return wd;
}

/* Reads one event (waiting up to 1 s); 0 with wd, mask and name, or -1. */
static int next_event(int fd, int* wd, uint32_t* mask, char* name, size_t n) {
  static char buf[4096] __attribute__((aligned(8)));
  static size_t len, off;
  for (int i = 0; off >= len && i < 100; i++) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r > 0) {
      len = (size_t)r;
      off = 0;
    } else {
      wl_sleep_ms(10);
    }
  }
  if (off >= len) return -1;
  struct inotify_event* e = (struct inotify_event*)(buf + off);
  off += sizeof *e + e->len;
  *wd = e->wd;
  *mask = e->mask;
  snprintf(name, n, "%s", e->len ? e->name : "");
  return 0;
}

static void expect(struct wl_check* c, int fd, const char* what, int wd, uint32_t mask,
                   const char* name) {
  int got_wd = -1;
  uint32_t got_mask = 0;
  char got_name[256] = "";
  int r = next_event(fd, &got_wd, &got_mask, got_name, sizeof got_name);
  wl_check(c, r == 0 && got_wd == wd && got_mask == mask && strcmp(got_name, name) == 0,
           "%s: event wd %d mask %#x '%s', want wd %d mask %#x '%s'", what, got_wd, got_mask,
           got_name, wd, mask, name);
}

static void touch(const char* name, const char* data) {
  int fd = openat(wl_dirfd, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 || (data && write(fd, data, strlen(data)) < 0)) wl_die("main", "%s: %s", name, "io");
  close(fd);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int queued = argc > 2 && strcmp(argv[2], "queued") == 0;
  if (mkdirat(wl_dirfd, "dir", 0755) != 0 || mkdirat(wl_dirfd, "w", 0755) != 0)
    wl_die("main", "mkdir: %s", strerror(errno));
  touch("f1", "one");
  touch("f2", "two");
  touch("gone", NULL);
  struct ifd in = {"in", inotify_init1(IN_NONBLOCK), 0, 0, ""};
  struct ifd in2 = {"in2", inotify_init1(IN_CLOEXEC), 0, 0, ""};
  struct ifd in3 = {"in3", inotify_init1(IN_NONBLOCK), 0, 0, ""};
  if (in.fd < 0 || in2.fd < 0 || in3.fd < 0) wl_die("main", "inotify_init1: %s", strerror(errno));
  int wd_m25 = -1;
  for (int i = 0; i < 26; i++) {
    char name[8];
    snprintf(name, sizeof name, "m%02d", i);
    touch(name, NULL);
    wd_m25 = watch(in3.fd, name, IN_ATTRIB);
    if (i != 5) continue;
    int w3;
    uint32_t m3;
    char n3[64];
    if (inotify_rm_watch(in3.fd, wd_m25) != 0 || next_event(in3.fd, &w3, &m3, n3, sizeof n3) != 0 ||
        !(m3 & IN_IGNORED))
      wl_die("main", "rm_watch m05: no IN_IGNORED (%s)", strerror(errno));
  }
  if (wd_m25 != 26) wl_die("main", "m25 got wd %d, want 26", wd_m25);
  int wd_dir = watch(in.fd, "dir", IN_CREATE | IN_DELETE);
  int wd_f1 = watch(in.fd, "f1", IN_MODIFY);
  int wd_gone = watch(in.fd, "gone", IN_ATTRIB);
  if (inotify_rm_watch(in.fd, wd_gone) != 0) wl_die("main", "rm_watch: %s", strerror(errno));
  char ev[256];
  int w;
  uint32_t m;
  if (next_event(in.fd, &w, &m, ev, sizeof ev) != 0 || !(m & IN_IGNORED))
    wl_die("main", "no IN_IGNORED after rm_watch");
  int wd_f2 = watch(in.fd, "f2", IN_OPEN | IN_ONESHOT);
  int wd_w = watch(in2.fd, "w", IN_CLOSE_WRITE | IN_EXCL_UNLINK);
  if (queued) touch("dir/queued", NULL);
  describe(&in);
  describe(&in2);
  describe(&in3);
  wl_log("in fd %d: %s", in.fd, in.watches);
  wl_log("in2 fd %d: %s", in2.fd, in2.watches);
  wl_ready("main");
  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  struct ifd* all[] = {&in, &in2, &in3};
  for (int i = 0; i < 3; i++) {
    struct ifd n = *all[i];
    describe(&n);
    wl_check(&c, n.fl == all[i]->fl, "%s: F_GETFL 0%o, was 0%o", n.what, n.fl, all[i]->fl);
    wl_check(&c, n.fdfl == all[i]->fdfl, "%s: F_GETFD %d, was %d", n.what, n.fdfl, all[i]->fdfl);
    wl_check(&c, strcmp(n.watches, all[i]->watches) == 0, "%s: watches {%s}, were {%s}", n.what,
             n.watches, all[i]->watches);
  }
  if (queued) expect(&c, in.fd, "dir (queued)", wd_dir, IN_CREATE, "queued");
  touch("dir/x", NULL);
  expect(&c, in.fd, "dir", wd_dir, IN_CREATE, "x");
  int f1 = openat(wl_dirfd, "f1", O_WRONLY | O_APPEND | O_CLOEXEC);
  wl_check(&c, f1 >= 0 && write(f1, "!", 1) == 1, "f1: write: %s", strerror(errno));
  close(f1);
  expect(&c, in.fd, "f1", wd_f1, IN_MODIFY, "");
  int f2 = openat(wl_dirfd, "f2", O_RDONLY | O_CLOEXEC);
  close(f2);
  expect(&c, in.fd, "f2", wd_f2, IN_OPEN, "");
  expect(&c, in.fd, "f2 (one-shot)", wd_f2, IN_IGNORED, "");
  touch("w/y", "y");
  expect(&c, in2.fd, "w", wd_w, IN_CLOSE_WRITE, "y");
  wl_check(&c, fchmodat(wl_dirfd, "m25", 0600, 0) == 0, "chmod m25: %s", strerror(errno));
  expect(&c, in3.fd, "m25", wd_m25, IN_ATTRIB, "");
  int wd_new = watch(in.fd, "gone", IN_ATTRIB);
  wl_check(&c, wd_new == wd_f2 + 1, "a new watch got wd %d, want %d", wd_new, wd_f2 + 1);
  return wl_check_result("main", &c);
}
