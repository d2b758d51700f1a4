/* rlimit00: per-process attributes.
 *   rlimits: RLIMIT_NOFILE soft lowered, RLIMIT_CORE soft and hard lowered,
 *            RLIMIT_STACK soft lowered (hard limits can only go down here);
 *            every limit is recorded and compared;
 *   umask(027); cwd STATEDIR/sub; personality(ADDR_NO_RANDOMIZE);
 *   PR_SET_NAME "rl-main" on the process, "rl-thread" on a second thread;
 *   a child that chroot()s into STATEDIR/root: stat("/") must still be that
 *   directory, and getcwd() "/".
 * The child also checks the limits and umask it inherited. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "workload.h"

#define NLIM RLIM_NLIMITS
static struct rlimit64 lim[NLIM];
static mode_t mask_set = 027;
static char cwd_before[4096];
static struct stat cwd_st, root_st;
static int pers_before;
static atomic_int thread_ready, check_req, thread_done;
static char thread_name_now[32];

static const char* const lim_names[] = {
    "CPU",     "FSIZE", "DATA",  "STACK",      "CORE",     "RSS",  "NPROC",  "NOFILE",
    "MEMLOCK", "AS",    "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME"};

static const char* lname(int r) {
  return r < (int)(sizeof lim_names / sizeof lim_names[0]) ? lim_names[r] : "?";
}

static void check_limits(struct wl_check* c, const char* role) {
  for (int r = 0; r < NLIM; r++) {
    struct rlimit64 now;
    if (!wl_check(c, getrlimit64(r, &now) == 0, "%s: getrlimit(%d): %s", role, r, strerror(errno)))
      continue;
    wl_check(c, now.rlim_cur == lim[r].rlim_cur && now.rlim_max == lim[r].rlim_max,
             "%s: RLIMIT_%s is %llu/%llu, was %llu/%llu", role, lname(r),
             (unsigned long long)now.rlim_cur, (unsigned long long)now.rlim_max,
             (unsigned long long)lim[r].rlim_cur, (unsigned long long)lim[r].rlim_max);
  }
  mode_t m = umask(0);
  umask(m);
  wl_check(c, m == mask_set, "%s: umask %03o, set %03o", role, (unsigned)m, (unsigned)mask_set);
}

static void* thread_main(void* arg) {
  (void)arg;
  prctl(PR_SET_NAME, "rl-thread", 0, 0, 0);
  atomic_store(&thread_ready, 1);
  while (!atomic_load(&check_req)) wl_sleep_ms(5);
  prctl(PR_GET_NAME, thread_name_now, 0, 0, 0);
  atomic_store(&thread_done, 1);
  return NULL;
}

static int child_main(void) {
  char rootdir[4096];
  snprintf(rootdir, sizeof rootdir, "%s/root", wl_statedir);
  if (chroot(rootdir) != 0) wl_die("chroot", "chroot %s: %s", rootdir, strerror(errno));
  if (chdir("/") != 0) wl_die("chroot", "chdir /: %s", strerror(errno));
  struct stat before;
  if (stat("/", &before) != 0) wl_die("chroot", "stat /: %s", strerror(errno));
  if (before.st_ino != root_st.st_ino || before.st_dev != root_st.st_dev)
    wl_die("chroot", "after chroot, / is not %s", rootdir);
  wl_child_ready();
  if (wl_wait() != 0) {
    wl_result("chroot", 0, "timeout waiting for SIGUSR1");
    return 1;
  }
  struct wl_check c;
  wl_check_init(&c);
  struct stat now;
  if (wl_check(&c, stat("/", &now) == 0, "chroot: stat /: %s", strerror(errno)))
    wl_check(&c, now.st_ino == root_st.st_ino && now.st_dev == root_st.st_dev,
             "chroot: / is inode %llu dev %llu, want %s (inode %llu dev %llu)",
             (unsigned long long)now.st_ino, (unsigned long long)now.st_dev, rootdir,
             (unsigned long long)root_st.st_ino, (unsigned long long)root_st.st_dev);
  char cwd[4096];
  wl_check(&c, getcwd(cwd, sizeof cwd) && strcmp(cwd, "/") == 0, "chroot: getcwd '%s', want '/'",
           cwd);
  wl_check(&c, access("/etc/passwd", F_OK) != 0, "chroot: /etc/passwd is visible: not chrooted");
  check_limits(&c, "chroot");
  return wl_check_result("chroot", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  /* Limits: lower only. */
  struct rlimit64 r;
  getrlimit64(RLIMIT_NOFILE, &r);
  rlim64_t soft = r.rlim_cur > 256 ? 256 : r.rlim_cur / 2;
  r.rlim_cur = soft;
  if (setrlimit64(RLIMIT_NOFILE, &r) != 0) wl_die("main", "RLIMIT_NOFILE: %s", strerror(errno));
  getrlimit64(RLIMIT_CORE, &r);
  if (r.rlim_max > (1u << 30)) r.rlim_max = 1u << 30;
  r.rlim_cur = r.rlim_max < 12288 ? r.rlim_max : 12288;
  if (setrlimit64(RLIMIT_CORE, &r) != 0) wl_die("main", "RLIMIT_CORE: %s", strerror(errno));
  getrlimit64(RLIMIT_STACK, &r);
  rlim64_t st = 6u << 20;
  if (r.rlim_max < st) st = r.rlim_max;
  if (r.rlim_cur < st) st = r.rlim_cur - r.rlim_cur / 4;
  r.rlim_cur = st;
  if (setrlimit64(RLIMIT_STACK, &r) != 0) wl_die("main", "RLIMIT_STACK: %s", strerror(errno));
  for (int i = 0; i < NLIM; i++) getrlimit64(i, &lim[i]);
  wl_log("NOFILE %llu/%llu CORE %llu/%llu STACK %llu/%llu",
         (unsigned long long)lim[RLIMIT_NOFILE].rlim_cur,
         (unsigned long long)lim[RLIMIT_NOFILE].rlim_max,
         (unsigned long long)lim[RLIMIT_CORE].rlim_cur,
         (unsigned long long)lim[RLIMIT_CORE].rlim_max,
         (unsigned long long)lim[RLIMIT_STACK].rlim_cur,
         (unsigned long long)lim[RLIMIT_STACK].rlim_max);

  umask(mask_set);
  if (mkdirat(wl_dirfd, "sub", 0755) != 0) wl_die("main", "mkdir sub: %s", strerror(errno));
  if (mkdirat(wl_dirfd, "root", 0755) != 0) wl_die("main", "mkdir root: %s", strerror(errno));
  if (fstatat(wl_dirfd, "root", &root_st, 0) != 0) wl_die("main", "stat root");
  int sub = openat(wl_dirfd, "sub", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (sub < 0 || fchdir(sub) != 0) wl_die("main", "chdir sub: %s", strerror(errno));
  close(sub);
  if (!getcwd(cwd_before, sizeof cwd_before)) wl_die("main", "getcwd: %s", strerror(errno));
  stat(".", &cwd_st);
  int p = personality(0xffffffff);
  if (personality((unsigned long)(p | ADDR_NO_RANDOMIZE)) < 0)
    wl_die("main", "personality: %s", strerror(errno));
  pers_before = personality(0xffffffff);
  if (prctl(PR_SET_NAME, "rl-main", 0, 0, 0) != 0) wl_die("main", "PR_SET_NAME");

  pthread_t th;
  if (pthread_create(&th, NULL, thread_main, NULL) != 0) wl_die("main", "pthread_create");
  while (!atomic_load(&thread_ready)) wl_sleep_ms(1);

  pid_t child = wl_fork();
  if (child < 0) wl_die("main", "fork: %s", strerror(errno));
  if (child == 0) return child_main();
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("main", "%s", why);
  wl_ready("main chroot");
  struct wl_check c;
  wl_check_init(&c);
  if (!wl_check(&c, wl_wait() == 0, "timeout waiting for SIGUSR1"))
    return wl_check_result("main", &c);

  check_limits(&c, "main");
  char cwd[4096] = "";
  wl_check(&c, getcwd(cwd, sizeof cwd) && strcmp(cwd, cwd_before) == 0,
           "main: getcwd '%s', was '%s'", cwd, cwd_before);
  struct stat now;
  wl_check(&c, stat(".", &now) == 0 && now.st_ino == cwd_st.st_ino && now.st_dev == cwd_st.st_dev,
           "main: '.' is not the directory it was (%s)", cwd_before);
  int pers = personality(0xffffffff);
  wl_check(&c, pers == pers_before, "main: personality 0x%x, was 0x%x", pers, pers_before);
  wl_check(&c, pers & ADDR_NO_RANDOMIZE, "main: ADDR_NO_RANDOMIZE lost (0x%x)", pers);
  char name[32] = "";
  prctl(PR_GET_NAME, name, 0, 0, 0);
  wl_check(&c, strcmp(name, "rl-main") == 0, "main: PR_GET_NAME '%s', set 'rl-main'", name);
  atomic_store(&check_req, 1);
  for (int t = 0; t < 300 && !atomic_load(&thread_done); t++) wl_sleep_ms(10);
  if (wl_check(&c, atomic_load(&thread_done), "main: the thread did not answer")) {
    pthread_join(th, NULL);
    wl_check(&c, strcmp(thread_name_now, "rl-thread") == 0,
             "thread: PR_GET_NAME '%s', set 'rl-thread'", thread_name_now);
  }
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&c, 0, "main: %s", why);
  return wl_check_result("main", &c);
}
