/* cow00: copy-on-write pages shared across forks stay shared, one physical page.
 * The root maps 64 anonymous private pages (A, each filled with a pattern of its own)
 * and 16 pages of a file in STATEDIR privately (F; it writes F's pages 0-7 before the
 * fork, so they are anonymous copies; 8-15 stay the file's). Then:
 *   root: forks the child, then writes A 16-19 and F 1 (its own copies now);
 *   +- child: writes A 0-7, drops A 8-11 (MADV_DONTNEED: they read zero), then forks
 *      +- grandchild: writes A 12.
 * Each process checks its own contents (setup and after the restore), and the child and
 * grandchild compare their physical pages with their parent's through /proc/PID/pagemap:
 *   child vs root:       A 12-15 and 20-63 and F 0 and 2-7 the same page; A 0-7 and
 *                        16-19 and F 1 not (A 8-11 read zero);
 *   grandchild vs child: A 0-7, 13-19 and 20-63 and F 0-7 the same page; A 12 not.
 * A restore that writes every page into every task gets the contents right and fails the
 * second check: the memory of a forked tree doubles. Needs the frame numbers of pagemap
 * (CAP_SYS_ADMIN); skipped without them. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define PAGE 4096
#define A_PAGES 64
#define F_PAGES 16
#define PFN_MASK ((1ULL << 55) - 1)
#define PRESENT (1ULL << 63)

enum {
  SEED_A = 1000,
  SEED_ROOT = 2000,
  SEED_CHILD = 3000,
  SEED_GRAND = 4000,
  SEED_FILE = 5000,
  SEED_FILE_W = 6000,
  SEED_FILE_ROOT = 7000
};

static char *a, *f;

/* What page p of A or F holds for each role: the pattern seed, or 0 for zeros. */
static uint32_t a_seed(const char* role, int p) {
  int child = strcmp(role, "child") == 0, grand = strcmp(role, "grandchild") == 0;
  if (!strcmp(role, "main") && p >= 16 && p < 20) return SEED_ROOT + p;
  if ((child || grand) && p < 8) return SEED_CHILD + p;
  if ((child || grand) && p >= 8 && p < 12) return 0;
  if (grand && p == 12) return SEED_GRAND + p;
  return SEED_A + p;
}
static uint32_t f_seed(const char* role, int p) {
  if (!strcmp(role, "main") && p == 1) return SEED_FILE_ROOT + p;
  return p < 8 ? SEED_FILE_W + p : SEED_FILE + p;
}

static void check_contents(struct wl_check* c, const char* role, const char* when) {
  static char zero[PAGE];
  for (int p = 0; p < A_PAGES; ++p) {
    uint32_t s = a_seed(role, p);
    long d =
        s ? wl_pattern_diff(a + p * PAGE, PAGE, s) : (memcmp(a + p * PAGE, zero, PAGE) ? 0 : -1);
    wl_check(c, d < 0, "%s: A page %d differs at byte %ld", when, p, d);
  }
  for (int p = 0; p < F_PAGES; ++p) {
    long d = wl_pattern_diff(f + p * PAGE, PAGE, f_seed(role, p));
    wl_check(c, d < 0, "%s: F page %d differs at byte %ld", when, p, d);
  }
}

/* The pagemap entries of n pages at addr in pid. */
static int pagemap(pid_t pid, const char* addr, int n, uint64_t* out) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/pagemap", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t got = pread(fd, out, (size_t)n * 8, (off_t)((uintptr_t)addr / PAGE * 8));
  close(fd);
  return got == (ssize_t)n * 8 ? 0 : -1;
}

/* 1 when page p is the same physical page in both. */
static int same(const uint64_t* x, const uint64_t* y, int p) {
  return (x[p] & PRESENT) && (y[p] & PRESENT) && (x[p] & PFN_MASK) &&
         (x[p] & PFN_MASK) == (y[p] & PFN_MASK);
}

/* This process's pages against its parent's, as the header says. */
static void check_shared(struct wl_check* c, const char* role, const char* when) {
  int child = strcmp(role, "child") == 0;
  uint64_t mine[A_PAGES], theirs[A_PAGES];
  if (!wl_check(
          c,
          pagemap(getpid(), a, A_PAGES, mine) == 0 && pagemap(getppid(), a, A_PAGES, theirs) == 0,
          "%s: read pagemap: %s", when, strerror(errno)))
    return;
  for (int p = 0; p < A_PAGES; ++p) {
    if (p >= 8 && p < 12) continue; /* dropped: reading them mapped the zero page */
    int want = child ? !(p < 8 || (p >= 16 && p < 20)) : p != 12;
    wl_check(c, same(mine, theirs, p) == want, "%s: A page %d is %sthe parent's page", when, p,
             want ? "not " : "");
  }
  if (!wl_check(c, pagemap(getpid(), f, 8, mine) == 0 && pagemap(getppid(), f, 8, theirs) == 0,
                "%s: read pagemap: %s", when, strerror(errno)))
    return;
  for (int p = 0; p < 8; ++p) {
    int want = !(child && p == 1);
    wl_check(c, same(mine, theirs, p) == want, "%s: F page %d is %sthe parent's page", when, p,
             want ? "not " : "");
  }
}

static int report(const char* role) {
  struct wl_check c;
  wl_check_init(&c);
  check_contents(&c, role, "setup");
  /* (The root writes its own pages after the children report: only the grandchild's
   * parent is done writing.) */
  if (!strcmp(role, "grandchild")) check_shared(&c, role, "setup");
  if (c.failures) wl_die(role, "%s", c.why);
  return 0;
}

static int after(const char* role) {
  struct wl_check c;
  if (wl_await(role, &c) != 0) return 1;
  check_contents(&c, role, "after");
  if (strcmp(role, "main")) check_shared(&c, role, "after");
  char why[256];
  wl_check(&c, wl_reap_children(5000, why, sizeof why) == 0, "%s", why);
  return wl_check_result(role, &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  uint64_t e;
  a = mmap(NULL, A_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (a == MAP_FAILED) wl_die("main", "mmap: %s", strerror(errno));
  for (int p = 0; p < A_PAGES; ++p) wl_pattern(a + p * PAGE, PAGE, SEED_A + p);
  if (pagemap(getpid(), a, 1, &e) != 0 || !(e & PFN_MASK))
    wl_skip("/proc/self/pagemap shows no page frames here (it needs CAP_SYS_ADMIN)");
  /* Huge pages would make the sharing of single pages something else. */
  madvise(a, A_PAGES * PAGE, MADV_NOHUGEPAGE);
  int fd = openat(wl_dirfd, "cow00.file", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) wl_die("main", "create cow00.file: %s", strerror(errno));
  static char page[PAGE];
  for (int p = 0; p < F_PAGES; ++p) {
    wl_pattern(page, PAGE, SEED_FILE + p);
    if (write(fd, page, PAGE) != PAGE) wl_die("main", "write cow00.file: %s", strerror(errno));
  }
  f = mmap(NULL, F_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (f == MAP_FAILED) wl_die("main", "mmap cow00.file: %s", strerror(errno));
  close(fd);
  for (int p = 0; p < 8; ++p) wl_pattern(f + p * PAGE, PAGE, SEED_FILE_W + p);
  for (int p = 8; p < F_PAGES; ++p) (void)*(volatile char*)(f + p * PAGE); /* the file's page */

  pid_t child = wl_fork();
  if (child < 0) wl_die("main", "fork: %s", strerror(errno));
  if (child == 0) {
    for (int p = 0; p < 8; ++p) wl_pattern(a + p * PAGE, PAGE, SEED_CHILD + p);
    if (madvise(a + 8 * PAGE, 4 * PAGE, MADV_DONTNEED) != 0)
      wl_die("child", "madvise: %s", strerror(errno));
    pid_t grand = wl_fork();
    if (grand < 0) wl_die("child", "fork: %s", strerror(errno));
    if (grand == 0) {
      wl_pattern(a + 12 * PAGE, PAGE, SEED_GRAND + 12);
      report("grandchild");
      wl_child_ready();
      return after("grandchild");
    }
    char why[256];
    if (wl_wait_children(why, sizeof why) != 0) wl_die("child", "%s", why);
    report("child");
    wl_child_ready();
    return after("child");
  }
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("main", "%s", why);
  /* Only now: the children have compared their pages with the root's as they were. */
  for (int p = 16; p < 20; ++p) wl_pattern(a + p * PAGE, PAGE, SEED_ROOT + p);
  wl_pattern(f + 1 * PAGE, PAGE, SEED_FILE_ROOT + 1);
  report("main");
  wl_ready("main child grandchild");
  return after("main");
}
