/* mem00: memory mappings of every common kind, in a parent and a child.
 *   private anon    48 pages of pattern, 16 untouched pages (must read 0);
 *                   inherited copy-on-write by the child;
 *   shared anon     MAP_SHARED|MAP_ANONYMOUS, shared with the child: both see
 *                   the pattern, then exchange tokens through it;
 *   private file    STATEDIR/priv.dat mapped MAP_PRIVATE, page 0 modified:
 *                   the mapping shows the change, the file does not;
 *   shared file     STATEDIR/shared.dat mapped MAP_SHARED, written through:
 *                   the file shows it, and later writes still reach the file;
 *   heap            malloc'd blocks with patterns; sbrk(0) unchanged, then
 *                   sbrk() and malloc() work;
 *   stack           40 nested frames with a pattern each, waiting in the
 *                   deepest one;
 *   PROT_READ and PROT_NONE regions with patterns (the PROT_NONE one is made
 *   readable after the restore to check its content);
 *   mremap'd region moved with MREMAP_FIXED and grown.
 * Each process records its /proc/self/maps lines as `start-end perms path`
 * (without [vdso], [vvar], [vvar_vclock]; neighbours with equal perms and path
 * merged) before `ready` and compares after: they must be identical.
 * After the checks the child writes its private copy of page 0: the parent
 * must not see it (copy-on-write survived). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define PRIV_PAGES 64
#define PRIV_FILLED 48
#define NHEAP 64
#define DEPTH 40

static size_t pg;
static unsigned char* priv;   /* private anon */
static unsigned char* shared; /* shared anon, 4 pages; page 3 holds tokens */
static unsigned char* pfile;  /* private file mapping, 3 pages */
static unsigned char* sfile;  /* shared file mapping, 2 pages */
static unsigned char* ro;     /* PROT_READ, 2 pages */
static unsigned char* none;   /* PROT_NONE, 2 pages */
static unsigned char* moved;  /* mremap'd, 8 pages */
static unsigned char* heap[NHEAP];
static void* brk_before;
static int pfile_fd = -1, sfile_fd = -1;
static struct wl_check chk;
static const char* role = "parent";

static char maps_before[256 * 1024];
static char maps_now[256 * 1024];
static char raw[512 * 1024];

#define TOKEN_P2C 0xa11ce001u
#define TOKEN_C2P 0xb0b00002u
static volatile uint32_t* slots(void) {
  return (volatile uint32_t*)(shared + 3 * pg);
}

/* Reads /proc/self/maps into out as `start-end perms path` lines. No malloc.
 * Adjacent entries with the same perms and path are merged first: whether the
 * kernel merges two neighbouring VMAs depends on their history (anon_vma
 * chains after fork, for instance), which a restore cannot reproduce and which
 * no program can observe otherwise. */
static int read_maps(char* out, size_t n) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t len = 0;
  for (;;) {
    ssize_t r = read(fd, raw + len, sizeof raw - 1 - len);
    if (r <= 0) break;
    len += (size_t)r;
  }
  close(fd);
  raw[len] = '\0';
  size_t o = 0;
  out[0] = '\0';
  unsigned long long plo = 0, phi = 0;
  char pperms[8] = "", ppath[512] = "";
  int have = 0;
  for (char *line = raw, *next;; line = next) {
    int last = !line || !*line;
    unsigned long long lo = 0, hi = 0;
    char perms[8] = "";
    const char* path = "";
    if (!last) {
      next = strchr(line, '\n');
      if (next) *next++ = '\0';
      int path_at = 0;
      if (sscanf(line, "%llx-%llx %7s %*s %*s %*s %n", &lo, &hi, perms, &path_at) < 3) continue;
      if (path_at > 0 && (size_t)path_at <= strlen(line)) path = line + path_at;
      if (!strcmp(path, "[vdso]") || !strcmp(path, "[vvar]") || !strcmp(path, "[vvar_vclock]"))
        continue;
      /* [vsyscall] is the kernel's fixed gate page, not a mapping of the task; an ia32
       * task restored by the 64-bit kleap lists it (a known limitation, docs/engine.md). */
      if (!strcmp(path, "[vsyscall]")) continue;
      if (have && lo == phi && !strcmp(perms, pperms) && !strcmp(path, ppath)) {
        phi = hi;
        continue;
      }
    }
    if (have) {
      int w = snprintf(out + o, n - o, "%08llx-%08llx %s %s\n", plo, phi, pperms, ppath);
      if (w < 0 || (size_t)w >= n - o) return -1;
      o += (size_t)w;
    }
    if (last) break;
    plo = lo;
    phi = hi;
    snprintf(pperms, sizeof pperms, "%s", perms);
    snprintf(ppath, sizeof ppath, "%s", path);
    have = 1;
  }
  return 0;
}

static void dump_text(const char* title, const char* text) {
  wl_log("%s: %s:", role, title);
  ssize_t w = write(2, text, strlen(text));
  (void)w;
}

static void compare_maps(void) {
  if (!wl_check(&chk, read_maps(maps_now, sizeof maps_now) == 0, "%s: cannot read maps", role))
    return;
  if (strcmp(maps_now, maps_before) == 0) return;
  /* Name the first line that differs, on either side. */
  const char *a = maps_before, *b = maps_now;
  while (*a && *b) {
    const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
    size_t la = (size_t)(ea - a), lb = (size_t)(eb - b);
    if (la != lb || memcmp(a, b, la) != 0) break;
    a = ea + 1;
    b = eb + 1;
  }
  const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
  dump_text("maps before the dump", maps_before);
  dump_text("maps now", maps_now);
  wl_check(&chk, 0, "%s: /proc/self/maps differs: was '%.*s', now '%.*s'", role,
           *a ? (int)(ea - a) : 5, *a ? a : "<end>", *b ? (int)(eb - b) : 5, *b ? b : "<end>");
}

static void check_pattern(const char* what, const void* p, size_t len, uint32_t seed) {
  long d = wl_pattern_diff(p, len, seed);
  wl_check(&chk, d < 0, "%s: %s differs at byte %ld of %zu", role, what, d, len);
}

static void check_zero(const char* what, const unsigned char* p, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (p[i]) {
      wl_check(&chk, 0, "%s: %s byte %zu is 0x%x, want 0", role, what, i, p[i]);
      return;
    }
}

static void check_file(const char* what, int fd, off_t off, size_t len, uint32_t seed) {
  static unsigned char buf[8 * 4096];
  if (len > sizeof buf) len = sizeof buf;
  ssize_t r = pread(fd, buf, len, off);
  if (!wl_check(&chk, r == (ssize_t)len, "%s: pread %s: %zd (%s)", role, what, r, strerror(errno)))
    return;
  check_pattern(what, buf, len, seed);
}

/* Checks shared by parent and child (both inherit the same layout). */
static void check_common(void) {
  check_pattern("private anon", priv, PRIV_FILLED * pg, 1);
  check_zero("untouched private anon", priv + PRIV_FILLED * pg, (PRIV_PAGES - PRIV_FILLED) * pg);
  check_pattern("shared anon", shared, 3 * pg, 2);
  check_pattern("private file mapping page 0 (modified)", pfile, pg, 33);
  check_pattern("private file mapping page 1 (from the file)", pfile + pg, pg, 3 + 100);
  check_pattern("private file mapping page 2 (from the file)", pfile + 2 * pg, pg, 3 + 100);
  check_file("priv.dat page 0 (must not show the private change)", pfile_fd, 0, pg, 3);
  check_pattern("shared file mapping", sfile, 2 * pg, 4);
  check_file("shared.dat (written through the mapping)", sfile_fd, 0, 2 * pg, 4);
  check_pattern("PROT_READ region", ro, 2 * pg, 5);
  check_pattern("mremap'd region (old part)", moved, 4 * pg, 7);
  check_pattern("mremap'd region (grown part)", moved + 4 * pg, 4 * pg, 8);
  for (int i = 0; i < NHEAP; i++) {
    long d = wl_pattern_diff(heap[i], 1000 + (size_t)i * 8, 200 + (uint32_t)i);
    if (!wl_check(&chk, d < 0, "%s: heap block %d (%p) differs at byte %ld", role, i,
                  (void*)heap[i], d))
      break;
  }
}

static void check_prot_none(void) {
  if (!wl_check(&chk, mprotect(none, 2 * pg, PROT_READ) == 0, "%s: mprotect PROT_NONE->READ: %s",
                role, strerror(errno)))
    return;
  check_pattern("PROT_NONE region", none, 2 * pg, 6);
  mprotect(none, 2 * pg, PROT_NONE);
}

static int wait_slot(int i, uint32_t want, int ms) {
  for (int t = 0; t < ms; t++) {
    if (__atomic_load_n(&slots()[i], __ATOMIC_SEQ_CST) == want) return 1;
    wl_sleep_ms(1);
  }
  return 0;
}

static int child_main(void) {
  role = "child";
  if (read_maps(maps_before, sizeof maps_before) != 0) wl_die("child", "cannot read maps");
  wl_child_ready();
  if (wl_wait() != 0) {
    wl_result("child", 0, "timeout waiting for SIGUSR1");
    return 1;
  }
  compare_maps();
  check_common();
  check_prot_none();
  /* Sharing: wait for the parent's token, answer through the same page. */
  if (wl_check(&chk, wait_slot(0, TOKEN_P2C, 5000),
               "child: the parent's token never arrived through the shared anon page (0x%x)",
               slots()[0])) {
    __atomic_store_n(&slots()[1], TOKEN_C2P, __ATOMIC_SEQ_CST);
  }
  /* Copy-on-write: my write to private page 0 must stay mine. */
  wl_pattern(priv, pg, 9);
  check_pattern("private anon page 0 after my write", priv, pg, 9);
  __atomic_store_n(&slots()[2], 1, __ATOMIC_SEQ_CST);
  return wl_check_result("child", &chk);
}

static void __attribute__((noinline)) extend_stack(void) {
  volatile char big[192 * 1024];
  for (size_t i = 0; i < sizeof big; i += 512) big[i] = (char)i;
}

static void bottom(void) {
  extend_stack();
  if (read_maps(maps_before, sizeof maps_before) != 0) wl_die("parent", "cannot read maps");
  brk_before = sbrk(0);
  wl_ready("parent child");
  if (wl_wait() != 0) {
    wl_result("parent", 0, "timeout waiting for SIGUSR1");
    exit(1);
  }
  compare_maps();
  check_common();
  check_prot_none();
  void* brk_now = sbrk(0);
  wl_check(&chk, brk_now == brk_before, "parent: sbrk(0) is %p, was %p", brk_now, brk_before);
  void* more = sbrk((intptr_t)pg);
  if (wl_check(&chk, more != (void*)-1, "parent: sbrk(+%zu) failed: %s", pg, strerror(errno))) {
    memset(more, 0x5a, pg);
    void* small = malloc(100);
    void* large = malloc(4 << 20);
    wl_check(&chk, small && large, "parent: malloc after the restore failed");
    if (small) memset(small, 1, 100);
    if (large) memset(large, 2, 4 << 20);
    free(small);
    free(large);
  }
  /* Shared file: a write now must still reach the file. */
  sfile[100] ^= 0xff;
  unsigned char b = 0;
  wl_check(&chk, pread(sfile_fd, &b, 1, 100) == 1 && b == sfile[100],
           "parent: a write to the shared file mapping after the restore did not reach the file");
  sfile[100] ^= 0xff;
  /* Shared anon: token exchange with the child. */
  __atomic_store_n(&slots()[0], TOKEN_P2C, __ATOMIC_SEQ_CST);
  wl_check(&chk, wait_slot(1, TOKEN_C2P, 5000),
           "parent: the child's answer never arrived through the shared anon page (0x%x)",
           slots()[1]);
  if (wl_check(&chk, wait_slot(2, 1, 5000), "parent: the child did not write its private page"))
    check_pattern("private anon page 0 after the child wrote its copy", priv, pg, 1);
}

static int deep(int depth) {
  unsigned char local[1024];
  wl_pattern(local, sizeof local, 1000 + (uint32_t)depth);
  if (depth == 0)
    bottom();
  else
    deep(depth - 1);
  long d = wl_pattern_diff(local, sizeof local, 1000 + (uint32_t)depth);
  wl_check(&chk, d < 0, "parent: stack frame at depth %d differs at byte %ld", depth, d);
  return 0;
}

static unsigned char* map_anon(size_t len, int prot, int flags) {
  void* p = mmap(NULL, len, prot, flags | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) wl_die("parent", "mmap %zu: %s", len, strerror(errno));
  return p;
}

static int make_file(const char* name, size_t len, uint32_t seed) {
  int fd = openat(wl_dirfd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) wl_die("parent", "create %s: %s", name, strerror(errno));
  unsigned char* buf = malloc(len);
  if (!buf) wl_die("parent", "malloc");
  if (seed)
    for (size_t off = 0; off < len; off += pg) wl_pattern(buf + off, pg, seed + (off ? 100 : 0));
  else
    memset(buf, 0, len);
  if (write(fd, buf, len) != (ssize_t)len) wl_die("parent", "write %s: %s", name, strerror(errno));
  free(buf);
  return fd;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  wl_check_init(&chk);
  pg = (size_t)sysconf(_SC_PAGESIZE);

  priv = map_anon(PRIV_PAGES * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE);
  wl_pattern(priv, PRIV_FILLED * pg, 1);
  shared = map_anon(4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED);
  wl_pattern(shared, 3 * pg, 2);

  /* priv.dat: page 0 pattern 3, pages 1-2 pattern 103. */
  pfile_fd = make_file("priv.dat", 3 * pg, 3);
  pfile = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, pfile_fd, 0);
  if (pfile == MAP_FAILED) wl_die("parent", "mmap priv.dat: %s", strerror(errno));
  wl_pattern(pfile, pg, 33);
  sfile_fd = make_file("shared.dat", 2 * pg, 0);
  sfile = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, sfile_fd, 0);
  if (sfile == MAP_FAILED) wl_die("parent", "mmap shared.dat: %s", strerror(errno));
  wl_pattern(sfile, 2 * pg, 4);

  ro = map_anon(2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE);
  wl_pattern(ro, 2 * pg, 5);
  if (mprotect(ro, 2 * pg, PROT_READ) != 0) wl_die("parent", "mprotect: %s", strerror(errno));
  none = map_anon(2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE);
  wl_pattern(none, 2 * pg, 6);
  if (mprotect(none, 2 * pg, PROT_NONE) != 0) wl_die("parent", "mprotect: %s", strerror(errno));

  unsigned char* old = map_anon(4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE);
  wl_pattern(old, 4 * pg, 7);
  unsigned char* target = map_anon(16 * pg, PROT_NONE, MAP_PRIVATE);
  munmap(target + 8 * pg, 8 * pg);
  moved = mremap(old, 4 * pg, 8 * pg, MREMAP_MAYMOVE | MREMAP_FIXED, target);
  if (moved == MAP_FAILED) wl_die("parent", "mremap: %s", strerror(errno));
  wl_pattern(moved + 4 * pg, 4 * pg, 8);

  for (int i = 0; i < NHEAP; i++) {
    heap[i] = malloc(1000 + (size_t)i * 8);
    if (!heap[i]) wl_die("parent", "malloc");
    wl_pattern(heap[i], 1000 + (size_t)i * 8, 200 + (uint32_t)i);
  }

  pid_t child = wl_fork();
  if (child < 0) wl_die("parent", "fork: %s", strerror(errno));
  if (child == 0) return child_main();
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("parent", "%s", why);

  deep(DEPTH);
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&chk, 0, "parent: %s", why);
  return wl_check_result("parent", &chk);
}
