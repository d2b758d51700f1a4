/* memhog STATEDIR MIB: a benchmark workload for checkpoint/restore.
 *
 * Maps MIB MiB of anonymous private memory, fills every 64-bit word with a pattern
 * derived from a per-run seed, and records a checksum. Then it writes STATEDIR/pid and
 * STATEDIR/ready and waits. On SIGUSR1 it recomputes the checksum (and, on a mismatch,
 * finds the first bad word) and writes STATEDIR/result.memhog as "PASS" or
 * "FAIL:<reason>", then exits 0. Startup failures are reported the same way (and on
 * stderr), with exit status 1.
 *
 * Files are written to a temporary name and renamed, so a reader never sees a partial
 * file. The waiting is a sigwaitinfo() loop that tolerates EINTR, as a restored process
 * may see it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char* g_statedir;
static uint64_t* g_mem;
static size_t g_words;
static uint64_t g_seed;
static uint64_t g_checksum;

static uint64_t pattern(size_t i) {
  /* A cheap, position-dependent value (not compressible to a constant, no zero pages). */
  uint64_t x = (uint64_t)i * 0x9e3779b97f4a7c15ull ^ g_seed;
  x ^= x >> 29;
  return x | 1;
}

static uint64_t checksum(const uint64_t* w, size_t n) {
  /* Four independent lanes so the loop is not one long dependency chain. */
  uint64_t a = 0x243f6a8885a308d3ull, b = 0x13198a2e03707344ull, c = 0xa4093822299f31d0ull,
           d = 0x082efa98ec4e6c89ull;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a = (a ^ w[i]) * 0x100000001b3ull;
    b = (b ^ w[i + 1]) * 0x100000001b3ull;
    c = (c ^ w[i + 2]) * 0x100000001b3ull;
    d = (d ^ w[i + 3]) * 0x100000001b3ull;
  }
  for (; i < n; ++i) a = (a ^ w[i]) * 0x100000001b3ull;
  return a ^ (b << 1 | b >> 63) ^ (c << 2 | c >> 62) ^ (d << 3 | d >> 61) ^ (uint64_t)n;
}

/* Writes STATEDIR/name atomically. Returns 0 or -1 with errno set. */
static int write_state(const char* name, const char* text) {
  char path[PATH_MAX], tmp[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/%s", g_statedir, name) >= (int)sizeof path ||
      snprintf(tmp, sizeof tmp, "%s/.%s.tmp", g_statedir, name) >= (int)sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  size_t len = strlen(text), off = 0;
  while (off < len) {
    ssize_t n = write(fd, text + off, len - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      close(fd);
      unlink(tmp);
      errno = e;
      return -1;
    }
    off += (size_t)n;
  }
  if (close(fd) != 0) return -1;
  return rename(tmp, path);
}

static void fail(int status, const char* fmt, ...) {
  char reason[512], text[600];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  snprintf(text, sizeof text, "FAIL:%s\n", reason);
  fprintf(stderr, "memhog: %s\n", reason);
  if (g_statedir) write_state("result.memhog", text);
  exit(status);
}

static void verify(void) {
  uint64_t sum = checksum(g_mem, g_words);
  if (sum == g_checksum) {
    if (write_state("result.memhog", "PASS\n") != 0) {
      fprintf(stderr, "memhog: write result: %s\n", strerror(errno));
      exit(1);
    }
    return;
  }
  /* Find the first damaged word and count damaged pages, for the reason text. */
  size_t first = (size_t)-1, bad_pages = 0;
  const size_t per_page = 4096 / sizeof(uint64_t);
  for (size_t p = 0; p * per_page < g_words; ++p) {
    int bad = 0;
    for (size_t i = p * per_page; i < (p + 1) * per_page && i < g_words; ++i) {
      if (g_mem[i] != pattern(i)) {
        if (first == (size_t)-1) first = i;
        bad = 1;
      }
    }
    bad_pages += (size_t)bad;
  }
  if (first == (size_t)-1)
    fail(0, "checksum %016" PRIx64 " != %016" PRIx64 " but every word matches its pattern", sum,
         g_checksum);
  fail(0,
       "checksum mismatch: first bad byte offset %zu (got %016" PRIx64 " want %016" PRIx64
       "), %zu of %zu pages differ",
       first * sizeof(uint64_t), g_mem[first], pattern(first), bad_pages,
       (g_words + per_page - 1) / per_page);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: memhog STATEDIR MIB\n");
    return 2;
  }
  g_statedir = argv[1];
  char* end;
  errno = 0;
  unsigned long long mib = strtoull(argv[2], &end, 10);
  if (errno || *end || end == argv[2] || mib == 0 || mib > (1ull << 24))
    fail(1, "bad MIB '%s'", argv[2]);
  struct stat st;
  if (stat(g_statedir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "memhog: %s is not a directory\n", g_statedir);
    return 1;
  }

  /* Block SIGUSR1 before announcing readiness, so an early signal is not lost. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) fail(1, "sigprocmask: %s", strerror(errno));

  size_t bytes = (size_t)mib << 20;
  g_mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (g_mem == MAP_FAILED) fail(1, "mmap %llu MiB: %s", mib, strerror(errno));
  g_words = bytes / sizeof(uint64_t);

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  g_seed = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16);
  for (size_t i = 0; i < g_words; ++i) g_mem[i] = pattern(i);
  g_checksum = checksum(g_mem, g_words);

  char buf[64];
  snprintf(buf, sizeof buf, "%d\n", (int)getpid());
  if (write_state("pid", buf) != 0) fail(1, "write pid: %s", strerror(errno));
  if (write_state("ready", "ready\n") != 0) fail(1, "write ready: %s", strerror(errno));

  for (;;) {
    int sig = sigwaitinfo(&set, NULL);
    if (sig == SIGUSR1) break;
    if (sig < 0 && errno != EINTR) fail(1, "sigwaitinfo: %s", strerror(errno));
  }
  verify();
  return 0;
}
