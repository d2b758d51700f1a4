/* memcpy_bw [--mib N] [--runs R]: single-thread memcpy bandwidth, the yardstick for
 * kleap's dump and restore throughput.
 *
 *   hot:   copy N MiB into a destination that is already mapped and touched.
 *   fresh: copy N MiB into a destination mmapped just before each copy, so the time
 *          includes the page faults (and zeroing) of first touch, as a restore does.
 *
 * Each way runs once to warm up, then R timed runs; the median is reported. GB/s means
 * 1e9 bytes per second. Prints one JSON line on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static double median(double* v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void* map_or_die(size_t bytes) {
  void* p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "memcpy_bw: mmap %zu bytes: %s\n", bytes, strerror(errno));
    exit(1);
  }
  return p;
}

/* Keeps the compiler from dropping copies whose result is otherwise unused. */
static volatile unsigned char g_sink;

static void use(const unsigned char* dst, size_t bytes) {
  unsigned char x = 0;
  for (size_t i = 0; i < bytes; i += 4096) x ^= dst[i];
  g_sink ^= x;
}

static void usage(void) {
  fprintf(stderr, "usage: memcpy_bw [--mib N] [--runs R]\n");
  exit(2);
}

static long parse_pos(const char* s) {
  char* end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || end == s || v <= 0) usage();
  return v;
}

int main(int argc, char** argv) {
  long mib = 256, runs = 5;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--mib") && i + 1 < argc) {
      mib = parse_pos(argv[++i]);
    } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
      runs = parse_pos(argv[++i]);
    } else {
      usage();
    }
  }
  if (runs > 1000 || mib > (1L << 24)) usage();
  size_t bytes = (size_t)mib << 20;

  unsigned char* src = map_or_die(bytes);
  for (size_t i = 0; i < bytes; i += sizeof(uint64_t)) {
    uint64_t v = (uint64_t)i * 0x9e3779b97f4a7c15ull;
    memcpy(src + i, &v, sizeof v);
  }

  double* hot = calloc((size_t)runs, sizeof(double));
  double* fresh = calloc((size_t)runs, sizeof(double));
  if (!hot || !fresh) return 1;

  /* hot: one destination, touched by the warm-up copy. */
  unsigned char* dst = map_or_die(bytes);
  memset(dst, 0, bytes);
  for (long r = -1; r < runs; ++r) {
    double t0 = now();
    memcpy(dst, src, bytes);
    double t = now() - t0;
    use(dst, bytes);
    if (r >= 0) hot[r] = t;
  }
  munmap(dst, bytes);

  /* fresh: a new mapping per copy; only the copy is timed, not mmap/munmap. */
  for (long r = -1; r < runs; ++r) {
    unsigned char* d = map_or_die(bytes);
    double t0 = now();
    memcpy(d, src, bytes);
    double t = now() - t0;
    use(d, bytes);
    munmap(d, bytes);
    if (r >= 0) fresh[r] = t;
  }

  double hot_s = median(hot, (int)runs), fresh_s = median(fresh, (int)runs);
  char thp[64] = "unknown";
  FILE* f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (f) {
    char line[128];
    if (fgets(line, sizeof line, f)) {
      char *a = strchr(line, '['), *b = a ? strchr(a, ']') : NULL;
      if (a && b && b - a - 1 < (long)sizeof thp) {
        memcpy(thp, a + 1, (size_t)(b - a - 1));
        thp[b - a - 1] = 0;
      }
    }
    fclose(f);
  }
  printf(
      "{\"op\":\"memcpy\",\"mib\":%ld,\"runs\":%ld,\"hot_seconds\":%.6f,\"hot_gbps\":%.3f,"
      "\"fresh_seconds\":%.6f,\"fresh_gbps\":%.3f,\"thp\":\"%s\"}\n",
      mib, runs, hot_s, (double)bytes / hot_s / 1e9, fresh_s, (double)bytes / fresh_s / 1e9, thp);
  free(hot);
  free(fresh);
  munmap(src, bytes);
  return 0;
}
