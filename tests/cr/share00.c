/* share00: processes (not threads) that share their fd table or their fs_struct.
 *   root: cwd STATEDIR/pre, umask 033
 *   +- files: clone(CLONE_FILES | SIGCHLD), the root's fd table
 *   +- fs:    clone(CLONE_FS | SIGCHLD), the root's cwd, root and umask
 *   +- plain: clone(SIGCHLD), nothing shared
 * The children come from the raw clone(2) syscall with fork semantics (no stack of
 * their own: without CLONE_VM each runs on its copy of the parent's).
 * After SIGUSR1 (the root forwards it itself: the workload library's wl_fork can't make
 * these children):
 *   - kcmp: the root shares its fd table with `files` only, its fs with `fs` only, and
 *     its address space with no one;
 *   - fs: `fs` finds the cwd and umask of the dump, moves to STATEDIR/post and sets umask
 *     027; the root must see both; `plain` and `files` must still be in STATEDIR/pre
 *     with umask 033;
 *   - files: the root opens a file after the restore and tells `files` its number, which
 *     must find it open on the same file; `files` then opens one the root must find.
 * Each reports result.<role>. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

static pid_t root_pid, kid_files, kid_fs, kid_plain;
static volatile sig_atomic_t forward_to_kids;
static int p_ready[2], p_fd1[2], p_fd2[2], p_fsgo[2], p_fsdone[2], p_plain[2];

static void on_usr1(int sig) {
  int saved = errno;
  (void)sig;
  wl_usr1 = 1;
  if (forward_to_kids) {
    kill(kid_files, SIGUSR1);
    kill(kid_fs, SIGUSR1);
    kill(kid_plain, SIGUSR1);
  }
  errno = saved;
}

/* clone(2) with fork semantics: no stack, no tls, no tid pointers. The argument order
 * differs (x86_64: flags, stack, ptid, ctid, tls; i386: flags, stack, ptid, tls, ctid),
 * but every one after flags is 0 here. */
static pid_t raw_clone(unsigned long flags) {
  return (pid_t)syscall(SYS_clone, flags, 0L, 0L, 0L, 0L);
}

static int kcmp(pid_t a, pid_t b, int type) {
  return (int)syscall(SYS_kcmp, a, b, type, 0L, 0L);
}

/* Reads exactly n bytes from fd within 5 s. */
static int read_in_time(int fd, void* p, size_t n) {
  return wl_read_full(fd, p, n) == n ? 0 : -1;
}

static int same_file(int fd, const char* name_in_statedir) {
  struct stat a, b;
  if (fstat(fd, &a) != 0 || fstatat(wl_dirfd, name_in_statedir, &b, 0) != 0) return 0;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

static int cwd_is(const char* name_in_statedir) {
  struct stat a, b;
  if (stat(".", &a) != 0 || fstatat(wl_dirfd, name_in_statedir, &b, 0) != 0) return 0;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

static mode_t read_umask(void) {
  mode_t m = umask(0);
  umask(m);
  return m;
}

static void child_ready(char c) {
  forward_to_kids = 0;
  if (write(p_ready[1], &c, 1) != 1) wl_die("child", "write ready: %s", strerror(errno));
}

static int run_files(void) {
  struct wl_check c;
  if (wl_await("files", &c) != 0) return 1;
  pid_t me = getpid();
  wl_check(&c, kcmp(me, root_pid, KCMP_FILES) == 0, "kcmp: no longer shares the root's fd table");
  wl_check(&c, kcmp(me, root_pid, KCMP_FS) != 0, "kcmp: shares the root's fs_struct");
  wl_check(&c, kcmp(me, root_pid, KCMP_VM) != 0, "kcmp: shares the root's address space");
  int x = -1;
  if (!wl_check(&c, read_in_time(p_fd1[0], &x, sizeof x) == 0, "no fd number from the root"))
    return wl_check_result("files", &c);
  wl_check(&c, fcntl(x, F_GETFD) >= 0 && same_file(x, "root-file"),
           "fd %d the root opened after the restore is not root-file here", x);
  /* The root is past the fs step: a table shared is not an fs shared. */
  wl_check(&c, cwd_is("pre"), "cwd is not STATEDIR/pre");
  mode_t m = read_umask();
  wl_check(&c, m == 033, "umask %03o, not 033", (unsigned)m);
  int y = openat(wl_dirfd, "files-file", O_CREAT | O_RDWR | O_CLOEXEC, 0600);
  wl_check(&c, y >= 0, "open files-file: %s", strerror(errno));
  if (write(p_fd2[1], &y, sizeof y) != sizeof y) wl_check(&c, 0, "write to the root failed");
  return wl_check_result("files", &c);
}

static int run_fs(void) {
  struct wl_check c;
  if (wl_await("fs", &c) != 0) return 1;
  pid_t me = getpid();
  wl_check(&c, kcmp(me, root_pid, KCMP_FS) == 0, "kcmp: no longer shares the root's fs_struct");
  wl_check(&c, kcmp(me, root_pid, KCMP_FILES) != 0, "kcmp: shares the root's fd table");
  wl_check(&c, kcmp(me, root_pid, KCMP_VM) != 0, "kcmp: shares the root's address space");
  char go;
  if (!wl_check(&c, read_in_time(p_fsgo[0], &go, 1) == 0, "no go from the root"))
    return wl_check_result("fs", &c);
  wl_check(&c, cwd_is("pre"), "cwd is not STATEDIR/pre after the restore");
  mode_t m = read_umask();
  wl_check(&c, m == 033, "umask %03o after the restore, not 033", (unsigned)m);
  int d = openat(wl_dirfd, "post", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  wl_check(&c, d >= 0 && fchdir(d) == 0, "chdir STATEDIR/post: %s", strerror(errno));
  if (d >= 0) close(d);
  umask(027);
  if (write(p_fsdone[1], "d", 1) != 1) wl_check(&c, 0, "write to the root failed");
  return wl_check_result("fs", &c);
}

static int run_plain(void) {
  struct wl_check c;
  if (wl_await("plain", &c) != 0) return 1;
  pid_t me = getpid();
  wl_check(&c, kcmp(me, root_pid, KCMP_FILES) != 0, "kcmp: shares the root's fd table");
  wl_check(&c, kcmp(me, root_pid, KCMP_FS) != 0, "kcmp: shares the root's fs_struct");
  wl_check(&c, kcmp(me, root_pid, KCMP_VM) != 0, "kcmp: shares the root's address space");
  char go;
  if (!wl_check(&c, read_in_time(p_plain[0], &go, 1) == 0, "no word from the root"))
    return wl_check_result("plain", &c);
  /* `fs` has moved the shared fs by now; this one is its own. */
  wl_check(&c, cwd_is("pre"), "cwd is not STATEDIR/pre");
  mode_t m = read_umask();
  wl_check(&c, m == 033, "umask %03o, not 033", (unsigned)m);
  return wl_check_result("plain", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGUSR1, &sa, NULL) != 0) wl_die("root", "sigaction: %s", strerror(errno));

  root_pid = getpid();
  if (mkdirat(wl_dirfd, "pre", 0755) != 0 && errno != EEXIST)
    wl_die("root", "mkdir pre: %s", strerror(errno));
  if (mkdirat(wl_dirfd, "post", 0755) != 0 && errno != EEXIST)
    wl_die("root", "mkdir post: %s", strerror(errno));
  int d = openat(wl_dirfd, "pre", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0 || fchdir(d) != 0) wl_die("root", "chdir pre: %s", strerror(errno));
  close(d);
  umask(033);
  int* pipes[] = {p_ready, p_fd1, p_fd2, p_fsgo, p_fsdone, p_plain};
  for (size_t i = 0; i < sizeof pipes / sizeof *pipes; i++)
    if (pipe2(pipes[i], O_CLOEXEC) != 0) wl_die("root", "pipe: %s", strerror(errno));

  kid_files = raw_clone(CLONE_FILES | SIGCHLD);
  if (kid_files < 0) wl_die("root", "clone CLONE_FILES: %s", strerror(errno));
  if (kid_files == 0) {
    child_ready('F');
    return run_files();
  }
  kid_fs = raw_clone(CLONE_FS | SIGCHLD);
  if (kid_fs < 0) wl_die("root", "clone CLONE_FS: %s", strerror(errno));
  if (kid_fs == 0) {
    child_ready('S');
    return run_fs();
  }
  kid_plain = raw_clone(SIGCHLD);
  if (kid_plain < 0) wl_die("root", "clone: %s", strerror(errno));
  if (kid_plain == 0) {
    child_ready('P');
    return run_plain();
  }
  forward_to_kids = 1;
  char got[3];
  if (read_in_time(p_ready[0], got, sizeof got) != 0) wl_die("root", "a child never got ready");
  wl_log("root %d files %d fs %d plain %d", (int)root_pid, (int)kid_files, (int)kid_fs,
         (int)kid_plain);
  wl_ready("root files fs plain");

  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  wl_check(&c, kcmp(root_pid, kid_files, KCMP_FILES) == 0, "kcmp: fd table not shared with files");
  wl_check(&c, kcmp(root_pid, kid_fs, KCMP_FILES) != 0, "kcmp: fd table shared with fs");
  wl_check(&c, kcmp(root_pid, kid_plain, KCMP_FILES) != 0, "kcmp: fd table shared with plain");
  wl_check(&c, kcmp(root_pid, kid_fs, KCMP_FS) == 0, "kcmp: fs_struct not shared with fs");
  wl_check(&c, kcmp(root_pid, kid_files, KCMP_FS) != 0, "kcmp: fs_struct shared with files");
  wl_check(&c, kcmp(root_pid, kid_plain, KCMP_FS) != 0, "kcmp: fs_struct shared with plain");

  /* fs: the dump's state first, then what `fs` made of the shared fs. */
  wl_check(&c, cwd_is("pre"), "cwd is not STATEDIR/pre after the restore");
  mode_t m = read_umask();
  wl_check(&c, m == 033, "umask %03o after the restore, not 033", (unsigned)m);
  char b;
  if (write(p_fsgo[1], "g", 1) != 1) wl_check(&c, 0, "write to fs failed");
  if (wl_check(&c, read_in_time(p_fsdone[0], &b, 1) == 0, "no word from fs")) {
    wl_check(&c, cwd_is("post"), "fs moved to STATEDIR/post; the root's cwd did not follow");
    m = read_umask();
    wl_check(&c, m == 027, "fs set umask 027; the root's is %03o", (unsigned)m);
  }
  if (write(p_plain[1], "p", 1) != 1) wl_check(&c, 0, "write to plain failed");

  /* files: an fd opened here after the restore is open there, and back. */
  int x = openat(wl_dirfd, "root-file", O_CREAT | O_RDWR | O_CLOEXEC, 0600);
  wl_check(&c, x >= 0, "open root-file: %s", strerror(errno));
  if (write(p_fd1[1], &x, sizeof x) != sizeof x) wl_check(&c, 0, "write to files failed");
  int y = -1;
  if (wl_check(&c, read_in_time(p_fd2[0], &y, sizeof y) == 0, "no fd number from files"))
    wl_check(&c, fcntl(y, F_GETFD) >= 0 && same_file(y, "files-file"),
             "fd %d that files opened after the restore is not files-file here", y);

  forward_to_kids = 0;
  wl_check_reaped(&c, kid_files, "files", 5000);
  wl_check_reaped(&c, kid_fs, "fs", 5000);
  wl_check_reaped(&c, kid_plain, "plain", 5000);
  return wl_check_result("root", &c);
}
