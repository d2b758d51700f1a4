/* seccomp00: seccomp filters, per thread.
 *   A (before the second thread exists, so both threads run it): getppid fails with
 *     errno 77, sched_getscheduler with 66;
 *   B (main thread only, installed after, with SECCOMP_FILTER_FLAG_LOG):
 *     sched_getscheduler fails with errno 88, and so does setresuid, which kleap's own
 *     restore of the credentials calls in this thread: the filters must not judge kleap.
 * Both filters let every other syscall through, and any syscall of the other ABI. Where
 * two filters give an errno, the newer one's wins: their order must come back too.
 * After the restore: each thread's /proc status shows Seccomp 2 and its number of
 * filters (1 or 2), and the calls fail or succeed exactly as before. Then the main
 * thread installs C with SECCOMP_FILTER_FLAG_TSYNC, which succeeds only when the
 * second thread's A is still the very filter object under the main thread's chain
 * (inherited at clone): getpgid fails with errno 99 in both threads after that. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#if defined(__x86_64__)
#define MY_ARCH AUDIT_ARCH_X86_64
#else
#define MY_ARCH AUDIT_ARCH_I386
#endif

/* errno for nr1 and nr2 (nr2 < 0: none). Returns seccomp(2)'s result. */
static long try_install(int nr1, int err1, int nr2, int err2, unsigned flags) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MY_ARCH, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr1, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err1),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr2, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err2),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {(unsigned short)(sizeof f / sizeof f[0]), f};
  return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static void install(int nr1, int err1, int nr2, int err2, unsigned flags) {
  if (try_install(nr1, err1, nr2, err2, flags) != 0) wl_die("main", "seccomp: %s", strerror(errno));
}

static int status_field(pid_t tid, const char* key) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  char* p = strstr(buf, key);
  return p ? atoi(p + strlen(key)) : -1;
}

/* 0 when the call failed with errno want (want 0: succeeded). */
static int expect(long r, int want) {
  if (want == 0) return r >= 0 ? 0 : -1;
  return r == -1 && errno == want ? 0 : -1;
}

static volatile pid_t second_tid;
static volatile int second_result = -1, synced = 0, second_synced = -1;
static char second_why[256];

static void* second(void* arg) {
  (void)arg;
  second_tid = wl_gettid();
  while (!wl_usr1) wl_sleep_ms(20);
  int ok = expect(syscall(SYS_getppid), 77) == 0 && expect(sched_getscheduler(0), 66) == 0;
  int filters = status_field(wl_gettid(), "Seccomp_filters:");
  if (!ok)
    snprintf(second_why, sizeof second_why, "second thread: getppid/sched_getscheduler changed");
  else if (filters != -1 && filters != 1)
    snprintf(second_why, sizeof second_why, "second thread: %d filters, want 1", filters);
  second_result = ok && (filters == -1 || filters == 1);
  while (!synced) wl_sleep_ms(5);
  second_synced = synced == 1 && expect(syscall(SYS_getpgid, 0), 99) == 0;
  return NULL;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) wl_die("main", "no_new_privs");
  install(SYS_getppid, 77, SYS_sched_getscheduler, 66, 0);
  pthread_t th;
  if (pthread_create(&th, NULL, second, NULL) != 0) wl_die("main", "pthread_create");
  while (!second_tid) wl_sleep_ms(1);
  install(SYS_sched_getscheduler, 88, SYS_setresuid, 88, SECCOMP_FILTER_FLAG_LOG);
  if (expect(syscall(SYS_getppid), 77) || expect(sched_getscheduler(0), 88))
    wl_die("main", "the filters don't act as meant");
  wl_ready("main");

  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  wl_check(&c, expect(syscall(SYS_getppid), 77) == 0, "main: getppid: %s, want errno 77",
           strerror(errno));
  wl_check(&c, expect(sched_getscheduler(0), 88) == 0, "main: sched_getscheduler: %s, want 88",
           strerror(errno));
  wl_check(&c, expect(syscall(SYS_setresuid, -1, -1, -1), 88) == 0, "main: setresuid: %s, want 88",
           strerror(errno));
  wl_check(&c, expect(getpid(), 0) == 0, "main: getpid fails");
  wl_check(&c, status_field(wl_gettid(), "Seccomp:") == 2, "main: Seccomp %d, want 2",
           status_field(wl_gettid(), "Seccomp:"));
  int filters = status_field(wl_gettid(), "Seccomp_filters:");
  wl_check(&c, filters == -1 || filters == 2, "main: %d filters, want 2", filters);
  wl_check(&c, prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "main: no_new_privs lost");
  while (second_result < 0) wl_sleep_ms(5);
  long r = try_install(SYS_getpgid, 99, -1, 0, SECCOMP_FILTER_FLAG_TSYNC);
  int e = errno;
  synced = r == 0 ? 1 : 2;
  wl_check(&c, r == 0, "TSYNC: %ld (%s): thread %ld no longer shares the filters", r,
           r < 0 ? strerror(e) : "", r);
  wl_check(&c, r != 0 || expect(syscall(SYS_getpgid, 0), 99) == 0,
           "main: getpgid after TSYNC: %s, want 99", strerror(errno));
  pthread_join(th, NULL);
  wl_check(&c, second_result == 1, "%s", second_why);
  wl_check(&c, r != 0 || second_synced == 1, "second thread: getpgid after TSYNC, want errno 99");
  return wl_check_result("main", &c);
}
