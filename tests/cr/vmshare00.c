/* vmshare00: processes (not threads) that share the root's address space.
 *   root: cwd STATEDIR, umask 022
 *   +- alone: clone(CLONE_VM | SIGCHLD): the root's memory, and a fd table, an fs and a
 *   |         process group of its own: it moved to STATEDIR/vm, set umask 077, closed
 *   |         its copy of the root's fd on STATEDIR/vm, opened /dev/null O_CLOEXEC, set
 *   |         ADDR_NO_RANDOMIZE and made a process group; then it counts in memory;
 *   +- all:   clone(CLONE_VM | CLONE_FILES | CLONE_FS | SIGCHLD): everything but its
 *             signals shared; it echoes through a pipe, blocked in read(2) at the dump.
 * The children run no libc beyond syscall(2) (their TLS is the root's), so the root checks
 * them from outside, through /proc, after SIGUSR1:
 *   - kcmp: both share the root's address space; `all` its fd table and fs, `alone` neither;
 *   - alone: cwd, umask, fds (dev/null with close-on-exec, not the root's directory fd),
 *     personality, process group, session and parent are the dump's, and its counter,
 *     written in the shared memory, still moves;
 *   - all: a token the root puts in memory comes back through the pipes, and the cwd and
 *     umask the root sets after the restore are `all`'s too.
 * Only the root reports (result.root). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "workload.h"

/* Written by the children, read by the root: the memory they share. */
static volatile int alone_ready, alone_fd = -1, stop;
static volatile unsigned alone_counter;
static volatile int token, all_echo;
static int vm_dir = -1, p_req[2], p_ans[2];

static int kcmp(pid_t a, pid_t b, int type) {
  return (int)syscall(SYS_kcmp, a, b, type, 0L, 0L);
}

static int alone_main(void* arg) {
  (void)arg;
  syscall(SYS_setpgid, 0, 0);
  syscall(SYS_fchdir, vm_dir);
  syscall(SYS_close, vm_dir);
  syscall(SYS_umask, 077);
  alone_fd = (int)syscall(SYS_openat, AT_FDCWD, "/dev/null", O_RDONLY | O_CLOEXEC);
  long pers = syscall(SYS_personality, 0xffffffffL);
  syscall(SYS_personality, pers | ADDR_NO_RANDOMIZE);
  alone_ready = 1;
  struct timespec ms = {0, 1000000};
  while (!stop) {
    alone_counter++;
    syscall(SYS_nanosleep, &ms, NULL);
  }
  syscall(SYS_exit, 0);
  return 0;
}

/* Answers each byte on p_req with the token read from memory, until 'q'. */
static int all_main(void* arg) {
  (void)arg;
  for (;;) {
    char c;
    long n = syscall(SYS_read, p_req[0], &c, 1L);
    if (n == 0 || (n == 1 && c == 'q')) break;
    if (n != 1) continue; /* EINTR */
    all_echo = token;
    int v = all_echo;
    syscall(SYS_write, p_ans[1], &v, sizeof v);
  }
  syscall(SYS_exit, 0);
  return 0;
}

static pid_t spawn(int (*fn)(void*), int flags) {
  size_t size = 64 * 1024;
  char* stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (stack == MAP_FAILED) wl_die("root", "mmap: %s", strerror(errno));
  pid_t p = clone(fn, stack + size, flags, NULL);
  if (p < 0) wl_die("root", "clone %#x: %s", flags, strerror(errno));
  return p;
}

/* One round through `all`: the token put in memory must come back on the pipe. */
static int round_trip(int value) {
  token = value;
  if (write(p_req[1], "x", 1) != 1) return 0;
  int got = 0;
  if (wl_read_full(p_ans[0], &got, sizeof got) != sizeof got) return 0;
  return got == value && all_echo == value;
}

static int read_proc(pid_t pid, const char* what, char* out, size_t n) {
  char path[96];
  snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, what);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t r = read(fd, out, n - 1);
  close(fd);
  if (r < 0) return -1;
  out[r] = 0;
  return 0;
}

/* The value after "key" in /proc/PID/status (or fdinfo), or -1. */
static long proc_field(pid_t pid, const char* file, const char* key, int base) {
  char buf[4096];
  if (read_proc(pid, file, buf, sizeof buf) != 0) return -1;
  char* p = strstr(buf, key);
  return p ? strtol(p + strlen(key), NULL, base) : -1;
}

static int same_inode(const char* a, const char* name_in_statedir) {
  struct stat x, y;
  if (stat(a, &x) != 0 || fstatat(wl_dirfd, name_in_statedir, &y, 0) != 0) return 0;
  return x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

static void check_alone(struct wl_check* c, pid_t root, pid_t a) {
  char path[96];
  snprintf(path, sizeof path, "/proc/%d/cwd", (int)a);
  wl_check(c, same_inode(path, "vm"), "alone: cwd is not STATEDIR/vm");
  long m = proc_field(a, "status", "Umask:", 8);
  wl_check(c, m == 077, "alone: umask %lo, not 077", m);
  struct stat st;
  snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)a, alone_fd);
  wl_check(c, stat(path, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3),
           "alone: fd %d is not /dev/null", alone_fd);
  snprintf(path, sizeof path, "fdinfo/%d", alone_fd);
  long flags = proc_field(a, path, "flags:", 8);
  wl_check(c, flags >= 0 && (flags & O_CLOEXEC), "alone: fd %d flags %lo lack O_CLOEXEC", alone_fd,
           flags);
  snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)a, vm_dir);
  wl_check(c, vm_dir == alone_fd || access(path, F_OK) != 0,
           "alone: holds fd %d, closed in its own table", vm_dir);
  wl_check(c, fcntl(vm_dir, F_GETFD) >= 0, "root: lost its fd %d on STATEDIR/vm", vm_dir);
  wl_check(c, fstat(alone_fd, &st) != 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 3),
           "root: has alone's fd %d on /dev/null", alone_fd);
  char buf[64];
  long pers = read_proc(a, "personality", buf, sizeof buf) == 0 ? strtol(buf, NULL, 16) : -1;
  wl_check(c, pers >= 0 && (pers & ADDR_NO_RANDOMIZE), "alone: personality %lx", pers);
  long mine = syscall(SYS_personality, 0xffffffffL);
  wl_check(c, !(mine & ADDR_NO_RANDOMIZE), "root: personality %lx has alone's flag", mine);
  wl_check(c, getpgid(a) == a, "alone: process group %d, not its own", (int)getpgid(a));
  wl_check(c, getsid(a) == getsid(0), "alone: session %d, not the root's", (int)getsid(a));
  long pp = proc_field(a, "status", "PPid:", 10);
  wl_check(c, pp == root, "alone: parent %ld", pp);
  unsigned before = alone_counter;
  wl_sleep_ms(100);
  wl_check(c, alone_counter != before, "alone: its counter stopped at %u", before);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t root = getpid();
  umask(022);
  if (fchdir(wl_dirfd) != 0) wl_die("root", "chdir STATEDIR: %s", strerror(errno));
  if (mkdirat(wl_dirfd, "vm", 0755) != 0 && errno != EEXIST)
    wl_die("root", "mkdir vm: %s", strerror(errno));
  if (mkdirat(wl_dirfd, "post", 0755) != 0 && errno != EEXIST)
    wl_die("root", "mkdir post: %s", strerror(errno));
  vm_dir = openat(wl_dirfd, "vm", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (vm_dir < 0 || pipe2(p_req, O_CLOEXEC) != 0 || pipe2(p_ans, O_CLOEXEC) != 0)
    wl_die("root", "open: %s", strerror(errno));
  /* SIGUSR1 is not forwarded: a handler would run on the children's stacks with the
   * root's TLS. */
  pid_t a = spawn(alone_main, CLONE_VM | SIGCHLD);
  pid_t b = spawn(all_main, CLONE_VM | CLONE_FILES | CLONE_FS | SIGCHLD);
  for (int i = 0; i < 500 && (!alone_ready || alone_counter == 0); i++) wl_sleep_ms(10);
  if (!alone_ready || alone_counter == 0) wl_die("root", "alone never ran");
  if (!round_trip(1)) wl_die("root", "no answer from all");
  wl_ready("root");

  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  wl_check(&c, kcmp(root, a, KCMP_VM) == 0, "kcmp: alone no longer shares the address space");
  wl_check(&c, kcmp(root, b, KCMP_VM) == 0, "kcmp: all no longer shares the address space");
  wl_check(&c, kcmp(root, a, KCMP_FILES) != 0, "kcmp: alone shares the root's fd table");
  wl_check(&c, kcmp(root, a, KCMP_FS) != 0, "kcmp: alone shares the root's fs");
  wl_check(&c, kcmp(root, b, KCMP_FILES) == 0, "kcmp: all no longer shares the fd table");
  wl_check(&c, kcmp(root, b, KCMP_FS) == 0, "kcmp: all no longer shares the fs");
  check_alone(&c, root, a);
  wl_check(&c, round_trip(0x5eed), "all: the token did not come back after the restore");
  wl_check(&c, getpgid(b) == getpgid(0), "all: process group %d, not the root's", (int)getpgid(b));
  /* The root's own fs is the dump's, and what it changes now is `all`'s too. */
  struct stat here, sd;
  wl_check(&c,
           stat(".", &here) == 0 && fstat(wl_dirfd, &sd) == 0 && here.st_ino == sd.st_ino &&
               here.st_dev == sd.st_dev,
           "root: cwd is not STATEDIR");
  mode_t m = umask(026);
  wl_check(&c, m == 022, "root: umask %03o, not 022", (unsigned)m);
  int post = openat(wl_dirfd, "post", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  wl_check(&c, post >= 0 && fchdir(post) == 0, "chdir post: %s", strerror(errno));
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/cwd", (int)b);
  wl_check(&c, same_inode(path, "post"), "all: cwd did not follow the root's to STATEDIR/post");
  long bm = proc_field(b, "status", "Umask:", 8);
  wl_check(&c, bm == 026, "all: umask %lo did not follow the root's 026", bm);

  stop = 1;
  if (write(p_req[1], "q", 1) != 1) wl_check(&c, 0, "write q: %s", strerror(errno));
  wl_check_reaped(&c, a, "alone", 5000);
  wl_check_reaped(&c, b, "all", 5000);
  return wl_check_result("root", &c);
}
