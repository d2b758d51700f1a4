/* timens00: a time namespace of the tree's own.
 * The root unshares a time namespace (unshare(CLONE_NEWTIME)), writes its offsets
 * (monotonic +1000 days, boottime +2000 s) to /proc/self/timens_offsets, then forks a
 * child, which is born in it. The root sends its own clock readings down a pipe; the
 * child checks the difference to its own clocks is the offsets.
 * After the restore: the child's /proc/self/timens_offsets reads the same, its
 * monotonic clock did not go backwards, and the difference to the root's clocks is
 * still the offsets (the root sends them again); the root still makes its children in
 * the child's namespace and is not in it itself.
 * `timens00 STATEDIR outside`: a process outside the tree (a grandchild that left it
 * by a double fork; it exits once the root is gone) is in the namespace too, which
 * check and dump must refuse, naming it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

#define MONO_OFF (1000LL * 86400)
#define BOOT_OFF 2000LL

struct clocks {
  int64_t mono, boot; /* ns */
};

static int64_t now(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct clocks read_clocks(void) {
  struct clocks c = {now(CLOCK_MONOTONIC), now(CLOCK_BOOTTIME)};
  return c;
}

static int read_text(const char* path, char* out, size_t n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t got = read(fd, out, n - 1);
  close(fd);
  if (got < 0) return -1;
  out[got] = 0;
  return 0;
}

static ino_t ns_ino(const char* path) {
  struct stat st;
  return stat(path, &st) == 0 ? st.st_ino : 0;
}

/* The child's clocks less the root's (read before them) are the offsets, to 2 s. */
static int offsets_ok(struct wl_check* c, const struct clocks* root, const struct clocks* mine,
                      const char* when) {
  int64_t dm = (mine->mono - root->mono) / 1000000000LL - MONO_OFF;
  int64_t db = (mine->boot - root->boot) / 1000000000LL - BOOT_OFF;
  return wl_check(c, dm >= -2 && dm <= 2 && db >= -2 && db <= 2,
                  "%s: the child's clocks are off the root's by monotonic %+lld s and boottime "
                  "%+lld s beyond the offsets",
                  when, (long long)dm, (long long)db);
}

static int child_main(int rfd) {
  char offs[256];
  if (read_text("/proc/self/timens_offsets", offs, sizeof offs) != 0)
    wl_die("child", "read timens_offsets: %s", strerror(errno));
  struct clocks root, mine;
  if (wl_read_full(rfd, &root, sizeof root) != sizeof root) wl_die("child", "no clocks from root");
  mine = read_clocks();
  struct wl_check c;
  wl_check_init(&c);
  if (!offsets_ok(&c, &root, &mine, "setup")) wl_die("child", "%s", c.why);
  ino_t own = ns_ino("/proc/self/ns/time");
  if (own != ns_ino("/proc/self/ns/time_for_children"))
    wl_die("child", "makes children in another time namespace than its own");
  wl_child_ready();

  if (wl_await("child", &c) != 0) return 1;
  struct clocks before = mine;
  char now_offs[256];
  wl_check(&c, read_text("/proc/self/timens_offsets", now_offs, sizeof now_offs) == 0,
           "read timens_offsets: %s", strerror(errno));
  wl_check(&c, strcmp(offs, now_offs) == 0, "timens_offsets reads '%s', was '%s'", now_offs, offs);
  wl_check(&c, ns_ino("/proc/self/ns/time") == ns_ino("/proc/self/ns/time_for_children"),
           "makes children in another time namespace than its own");
  if (wl_check(&c, wl_read_full(rfd, &root, sizeof root) == sizeof root,
               "no clocks from the root after the restore")) {
    mine = read_clocks();
    wl_check(&c, mine.mono >= before.mono && mine.boot >= before.boot,
             "the clocks went backwards: monotonic %lld -> %lld, boottime %lld -> %lld",
             (long long)before.mono, (long long)mine.mono, (long long)before.boot,
             (long long)mine.boot);
    offsets_ok(&c, &root, &mine, "after");
  }
  return wl_check_result("child", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (access("/proc/self/timens_offsets", F_OK) != 0)
    wl_skip("no time namespaces here (/proc/self/timens_offsets: %s)", strerror(errno));
  if (unshare(CLONE_NEWTIME) != 0) wl_skip("unshare(CLONE_NEWTIME): %s", strerror(errno));
  char text[128];
  int len = snprintf(text, sizeof text, "monotonic %lld 0\nboottime %lld 0\n", MONO_OFF, BOOT_OFF);
  int fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, text, (size_t)len) != len)
    wl_die("main", "write timens_offsets: %s", strerror(errno));
  close(fd);
  pid_t root = getpid();
  if (argc > 2 && strcmp(argv[2], "outside") == 0) {
    pid_t mid = fork();
    if (mid < 0) wl_die("main", "fork: %s", strerror(errno));
    if (mid == 0) {
      if (fork() == 0) {
        setsid();
        prctl(PR_SET_NAME, "timens00-out");
        while (kill(root, 0) == 0) usleep(100000);
        _exit(0);
      }
      _exit(0);
    }
    waitpid(mid, NULL, 0);
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) wl_die("main", "pipe2: %s", strerror(errno));
  pid_t child = wl_fork();
  if (child < 0) wl_die("main", "fork: %s", strerror(errno));
  if (child == 0) {
    close(p[1]);
    return child_main(p[0]);
  }
  close(p[0]);
  struct clocks mine = read_clocks();
  if (write(p[1], &mine, sizeof mine) != sizeof mine) wl_die("main", "write: %s", strerror(errno));
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("main", "%s", why);
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/time", (int)child);
  ino_t child_ns = ns_ino(path);
  if (child_ns == ns_ino("/proc/self/ns/time") ||
      child_ns != ns_ino("/proc/self/ns/time_for_children"))
    wl_die("main", "the child is not in the time namespace the root made");
  wl_ready("main child");

  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  /* Before the clocks go down the pipe: the child exits once it has them, and a
   * zombie's namespace links can't be read. */
  child_ns = ns_ino(path);
  mine = read_clocks();
  wl_check(&c, write(p[1], &mine, sizeof mine) == sizeof mine, "write: %s", strerror(errno));
  wl_check(&c, child_ns != 0 && child_ns != ns_ino("/proc/self/ns/time"),
           "the child is in the root's time namespace");
  wl_check(&c, child_ns == ns_ino("/proc/self/ns/time_for_children"),
           "the root makes its children in another time namespace than the child's");
  wl_check(&c, wl_reap_children(5000, why, sizeof why) == 0, "%s", why);
  return wl_check_result("main", &c);
}
