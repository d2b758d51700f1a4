/* workload.c: see workload.h. */
#define _GNU_SOURCE
#include "workload.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WL_MAX_CHILDREN 16

const char* wl_statedir;
int wl_dirfd = -1;
volatile sig_atomic_t wl_usr1;

static pid_t wl_children[WL_MAX_CHILDREN];
static int wl_child_sync[WL_MAX_CHILDREN]; /* read end of each child's ready pipe */
static volatile sig_atomic_t wl_nchildren;
static int wl_parent_sync = -1; /* write end of my ready pipe towards my parent */

pid_t wl_gettid(void) {
  return (pid_t)syscall(SYS_gettid);
}

static void wl_vwrite(int fd, const char* prefix, const char* fmt, va_list ap) {
  char buf[1400];
  int n = snprintf(buf, sizeof buf, "[%d] %s", (int)getpid(), prefix);
  if (n < 0) n = 0;
  int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
  if (m < 0) m = 0;
  size_t len = (size_t)n + (size_t)m;
  if (len > sizeof buf - 2) len = sizeof buf - 2;
  buf[len++] = '\n';
  ssize_t w = write(fd, buf, len);
  (void)w;
}

void wl_log(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  wl_vwrite(2, "", fmt, ap);
  va_end(ap);
}

static void wl_usr1_handler(int sig) {
  int saved = errno;
  (void)sig;
  wl_usr1 = 1;
  for (int i = 0; i < wl_nchildren; i++)
    if (wl_children[i] > 0) kill(wl_children[i], SIGUSR1);
  errno = saved;
}

void wl_init(int argc, char** argv) {
  if (argc >= 2 && strcmp(argv[1], "--wl-probe") == 0) exit(0);
  if (argc < 2 || argv[1][0] == '\0') {
    static const char usage[] = "usage: PROG STATEDIR [args...]\n";
    ssize_t w = write(2, usage, sizeof usage - 1);
    (void)w;
    exit(2);
  }
  wl_statedir = argv[1];
  wl_dirfd = open(wl_statedir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (wl_dirfd < 0) {
    wl_log("cannot open STATEDIR %s: %s", wl_statedir, strerror(errno));
    exit(2);
  }
  const char* sync = getenv("WL_SYNC_FD");
  if (sync) {
    wl_parent_sync = atoi(sync);
    unsetenv("WL_SYNC_FD");
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = wl_usr1_handler;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGUSR1, &sa, NULL) != 0) {
    wl_log("sigaction(SIGUSR1): %s", strerror(errno));
    exit(2);
  }
}

pid_t wl_fork(void) {
  int p[2];
  if (wl_nchildren >= WL_MAX_CHILDREN) {
    errno = EAGAIN;
    return -1;
  }
  if (pipe(p) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) {
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid == 0) {
    close(p[0]);
    for (int i = 0; i < wl_nchildren; i++) close(wl_child_sync[i]);
    wl_nchildren = 0;
    if (wl_parent_sync >= 0) close(wl_parent_sync);
    wl_parent_sync = p[1];
    return 0;
  }
  close(p[1]);
  wl_children[wl_nchildren] = pid;
  wl_child_sync[wl_nchildren] = p[0];
  wl_nchildren++;
  return pid;
}

void wl_exec(const char* path, char* const argv[]) {
  char num[16];
  snprintf(num, sizeof num, "%d", wl_parent_sync);
  setenv("WL_SYNC_FD", num, 1);
  execv(path, argv);
}

void wl_child_ready(void) {
  if (wl_parent_sync < 0) return;
  char c = 'R';
  ssize_t w = write(wl_parent_sync, &c, 1);
  (void)w;
  close(wl_parent_sync);
  wl_parent_sync = -1;
}

int wl_wait_children(char* why, size_t n) {
  int rc = 0;
  for (int i = 0; i < wl_nchildren; i++) {
    if (wl_child_sync[i] < 0) continue;
    char c;
    ssize_t r;
    do r = read(wl_child_sync[i], &c, 1);
    while (r < 0 && errno == EINTR);
    close(wl_child_sync[i]);
    wl_child_sync[i] = -1;
    if (r != 1 && rc == 0) {
      snprintf(why, n, "child %d exited during setup (see its result/log)", (int)wl_children[i]);
      rc = -1;
    }
  }
  return rc;
}

static int wl_write_file(const char* name, const char* content) {
  char tmp[256];
  snprintf(tmp, sizeof tmp, ".tmp.%s.%d", name, (int)getpid());
  int fd = openat(wl_dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    wl_log("cannot create %s/%s: %s", wl_statedir, tmp, strerror(errno));
    return -1;
  }
  size_t len = strlen(content);
  ssize_t w = write(fd, content, len);
  int err = errno;
  close(fd);
  if (w != (ssize_t)len) {
    wl_log("cannot write %s/%s: %s", wl_statedir, tmp, strerror(err));
    return -1;
  }
  if (renameat(wl_dirfd, tmp, wl_dirfd, name) != 0) {
    wl_log("cannot rename %s/%s: %s", wl_statedir, tmp, strerror(errno));
    return -1;
  }
  return 0;
}

void wl_ready(const char* roles) {
  char buf[64];
  if (roles) {
    char line[512];
    snprintf(line, sizeof line, "%s\n", roles);
    wl_write_file("roles", line);
  }
  snprintf(buf, sizeof buf, "%d\n", (int)getpid());
  wl_write_file("pid", buf);
  wl_write_file("ready", "ready\n");
  wl_log("ready");
}

void wl_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

int wl_wait(void) {
  for (long i = 0; i < 30000 && !wl_usr1; i++) wl_sleep_ms(20);
  if (!wl_usr1) {
    wl_log("no SIGUSR1 after 10 minutes, giving up");
    return -1;
  }
  return 0;
}

/* Waits up to timeout_ms for pid to end: 0 when it exited (with any code, in *status),
 * else -1 with the reason. */
static int wl_wait_exit(pid_t pid, int timeout_ms, int* status, char* reason, size_t n) {
  int waited = 0;
  pid_t r;
  for (;;) {
    r = waitpid(pid, status, WNOHANG);
    if (r != 0 || waited >= timeout_ms) break;
    wl_sleep_ms(10);
    waited += 10;
  }
  if (r < 0)
    snprintf(reason, n, "waitpid(child %d): %s (is it still my child?)", (int)pid, strerror(errno));
  else if (r == 0)
    snprintf(reason, n, "child %d did not exit within %d ms", (int)pid, timeout_ms);
  else if (WIFSIGNALED(*status))
    snprintf(reason, n, "child %d was killed by signal %d", (int)pid, WTERMSIG(*status));
  else if (!WIFEXITED(*status))
    snprintf(reason, n, "child %d: odd wait status 0x%x", (int)pid, *status);
  else
    return 0;
  return -1;
}

int wl_reap_children(int timeout_ms, char* why, size_t n) {
  int rc = 0;
  for (int i = 0; i < wl_nchildren; i++) {
    int status = 0;
    char reason[160];
    if (wl_wait_exit(wl_children[i], timeout_ms, &status, reason, sizeof reason) != 0) {
      wl_log("%s", reason);
      if (rc == 0) snprintf(why, n, "%s", reason);
      rc = -1;
    }
  }
  return rc;
}

int wl_check_reaped(struct wl_check* c, pid_t pid, const char* role, int timeout_ms) {
  int status = 0;
  char reason[160];
  if (wl_wait_exit(pid, timeout_ms, &status, reason, sizeof reason) != 0)
    return wl_check(c, 0, "%s: %s", role, reason);
  return wl_check(c, WEXITSTATUS(status) == 0, "%s (%d) exited with %d", role, (int)pid,
                  WEXITSTATUS(status));
}

static void wl_vresult(const char* role, int ok, const char* fmt, va_list ap) {
  char line[1200];
  if (ok) {
    snprintf(line, sizeof line, "PASS\n");
  } else {
    int n = snprintf(line, sizeof line, "FAIL:");
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    for (char* p = line; *p; p++)
      if (*p == '\n') *p = ' ';
    strcat(line, "\n");
  }
  char name[128];
  snprintf(name, sizeof name, "result.%s", role);
  wl_log("%s: %.*s", name, (int)strcspn(line, "\n"), line);
  wl_write_file(name, line);
}

void wl_result(const char* role, int ok, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  wl_vresult(role, ok, fmt, ap);
  va_end(ap);
}

void wl_skip(const char* fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  strcat(line, "\n");
  wl_log("SKIP: %s", line);
  wl_write_file("skip", line);
  exit(0);
}

void wl_die(const char* role, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char reason[1024];
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  wl_result(role, 0, "setup: %s", reason);
  exit(1);
}

int wl_await(const char* role, struct wl_check* c) {
  wl_check_init(c);
  if (wl_wait() == 0) return 0;
  wl_result(role, 0, "timeout waiting for SIGUSR1");
  return -1;
}

void wl_check_init(struct wl_check* c) {
  c->failures = 0;
  c->why[0] = '\0';
}

int wl_check(struct wl_check* c, int ok, const char* fmt, ...) {
  if (ok) return 1;
  char reason[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  wl_log("check failed: %s", reason);
  size_t used = strlen(c->why);
  if (used + 3 < sizeof c->why)
    snprintf(c->why + used, sizeof c->why - used, "%s%s", c->failures ? "; " : "", reason);
  c->failures++;
  return 0;
}

int wl_check_result(const char* role, const struct wl_check* c) {
  if (c->failures == 0) {
    wl_result(role, 1, "%s", "");
    return 0;
  }
  if (c->failures > 1)
    wl_result(role, 0, "%s (%d failed checks)", c->why, c->failures);
  else
    wl_result(role, 0, "%s", c->why);
  return 1;
}

void wl_pattern(void* buf, size_t len, uint32_t seed) {
  unsigned char* p = buf;
  uint32_t x = seed * 2654435761u + 0x9e3779b9u;
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p[i] = (unsigned char)(x >> 24);
  }
}

long wl_pattern_diff(const void* buf, size_t len, uint32_t seed) {
  const unsigned char* p = buf;
  uint32_t x = seed * 2654435761u + 0x9e3779b9u;
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    if (p[i] != (unsigned char)(x >> 24)) return (long)i;
  }
  return -1;
}

/* Reads a whole (small) file into buf, NUL-terminated; -1 when it can't be opened. */
static int read_whole(const char* path, char* buf, size_t n) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t len = 0;
  ssize_t r;
  while ((r = read(fd, buf + len, n - 1 - len)) > 0) len += (size_t)r;
  close(fd);
  buf[len] = '\0';
  return 0;
}

int wl_maps_line(uintptr_t addr, char* out, size_t n) {
  static char buf[256 * 1024];
  if (read_whole("/proc/self/maps", buf, sizeof buf) != 0) return -1;
  for (char *l = buf, *next; l && *l; l = next) {
    next = strchr(l, '\n');
    if (next) *next++ = '\0';
    unsigned long long lo, hi;
    if (sscanf(l, "%llx-%llx", &lo, &hi) == 2 && addr >= lo && addr < hi) {
      size_t k = strlen(l) < n - 1 ? strlen(l) : n - 1;
      memcpy(out, l, k);
      out[k] = '\0';
      return 0;
    }
  }
  return -1;
}

int wl_fdinfo(int fd, const char* prefix, char* out, size_t n) {
  static char buf[64 * 1024];
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  if (read_whole(path, buf, sizeof buf) != 0) return -1;
  size_t plen = strlen(prefix), o = 0;
  int found = 0;
  if (n) out[0] = '\0';
  for (char *l = buf, *next; l && *l; l = next) {
    next = strchr(l, '\n');
    if (next) *next++ = '\0';
    if (strncmp(l, prefix, plen) != 0) continue;
    const char* v = l + plen;
    while (*v == ' ' || *v == '\t') v++;
    if (o < n) o += (size_t)snprintf(out + o, n - o, "%s%s", found ? "\n" : "", v);
    found++;
  }
  return found;
}

static int cmp_str(const void* a, const void* b) {
  return strcmp(*(char* const*)a, *(char* const*)b);
}

int wl_fdinfo_sorted(int fd, const char* prefix, const char* cut, char* out, size_t n) {
  static char raw[16 * 1024];
  int found = wl_fdinfo(fd, prefix, raw, sizeof raw);
  char* lines[256];
  int k = 0;
  for (char *l = raw, *next; found > 0 && l && *l && k < 256; l = next) {
    next = strchr(l, '\n');
    if (next) *next++ = '\0';
    char* c = cut ? strstr(l, cut) : NULL;
    if (c) *c = '\0';
    lines[k++] = l;
  }
  qsort(lines, (size_t)k, sizeof *lines, cmp_str);
  size_t o = 0;
  if (n) out[0] = '\0';
  for (int i = 0; i < k && o < n; i++) o += (size_t)snprintf(out + o, n - o, "%s;", lines[i]);
  return found;
}

int wl_fionread(int fd) {
  int n = -1;
  if (ioctl(fd, FIONREAD, &n) != 0) return -1;
  return n;
}

size_t wl_read_full(int fd, void* p, size_t len) {
  size_t got = 0;
  for (int spins = 0; got < len && spins < 300;) {
    struct pollfd pfd = {fd, POLLIN, 0};
    if (poll(&pfd, 1, 10) <= 0) {
      spins++;
      continue;
    }
    ssize_t r = read(fd, (char*)p + got, len - got);
    if (r > 0)
      got += (size_t)r;
    else if (r == 0 || (errno != EAGAIN && errno != EINTR))
      break;
  }
  return got;
}
