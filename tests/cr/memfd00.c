/* memfd00: memory-backed files, in a parent and a forked child.
 *   memfd A "kleap-memfd00-a": 5 pages + 777 bytes; pages 0-1 and the tail page hold a
 *     pattern, page 2 is where the tokens go after the restore, pages 3-4 are a hole
 *     (SEEK_DATA from page 3 must land on page 5); sealed F_SEAL_SHRINK|F_SEAL_GROW;
 *     mapped MAP_SHARED (inherited by the child) and MAP_PRIVATE with page 0 copied on
 *     write; fd A (O_RDWR, offset 1234) shared with the child by fork, and a second
 *     description of it (O_RDONLY through /proc/self/fd, offset 42);
 *   memfd B "kleap-memfd00-b": 3 pages + 10 bytes, sealed
 *     F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL, then mapped read-only MAP_SHARED
 *     (so no mapping may ever write it); fd at offset 5;
 *   memfd C "kleap-memfd00-c" created without MFD_ALLOW_SEALING (F_SEAL_SEAL), empty;
 *   POSIX shm "/kleap-memfd00-l-PID", still linked: 2 pages + 100 bytes, mapped shared,
 *     fd at offset 11;
 *   POSIX shm "/kleap-memfd00-u-PID", shm_unlink()ed while open and mapped: 3 pages + 5
 *     bytes, fd at offset 77;
 *   memfd S "kleap-memfd00-s": the script "#!/bin/true", mapped shared and writable; run
 *     through its fd (execveat(fd, "", AT_EMPTY_PATH)) before the dump and after the
 *     restore, which fails (ETXTBSY) if any description of it but memfd_create's own
 *     may write it.
 * After SIGUSR1 both check: contents byte for byte, sizes, seals, that sealed operations
 * still fail, the fds' offsets and access modes, the names in /proc/self/maps and
 * /proc/self/fd; then the parent writes a token through its shared mappings of A and of
 * the unlinked shm file, which the child must see through its own mappings and through
 * the fds, and the child answers. The private mapping must keep its copied-on-write page.
 * With the argument "hugetlb" the root holds a MFD_HUGETLB memfd instead, with
 * "future-write" a writable shared mapping of a memfd sealed F_SEAL_FUTURE_WRITE since
 * (both refusals). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

#define A_SIZE (5 * pg + 777)
#define B_SIZE (3 * pg + 10)
#define L_SIZE (2 * pg + 100)
#define U_SIZE (3 * pg + 5)
#define A_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)
#define B_SEALS (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
#define TOKEN_P2C 0x5eed0001u
#define TOKEN_C2P 0x5eed0002u

static size_t pg;
static int fd_a = -1, fd_a_ro = -1, fd_b = -1, fd_c = -1, fd_l = -1, fd_u = -1, fd_s = -1;
static unsigned char *a_shared, *a_priv, *b_map, *l_map, *u_map, *s_map;

/* Runs memfd S through its fd in a child: 0 when it exited 0, else the child's errno. */
static int run_script(void) {
  pid_t pid = fork();
  if (pid < 0) return errno;
  if (pid == 0) {
    char* argv[] = {"kleap-memfd00-s", NULL};
    char* envp[] = {NULL};
    syscall(SYS_execveat, fd_s, "", argv, envp, AT_EMPTY_PATH);
    _exit(errno & 0x7f);
  }
  int st;
  if (waitpid(pid, &st, 0) != pid) return errno;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
static char l_name[64], u_name[64];
static unsigned char* expect_a; /* the whole content of A as set up */
static struct wl_check chk;
static const char* role = "parent";

static void die(const char* what) {
  wl_die(role, "%s: %s", what, strerror(errno));
}

static void* map(size_t len, int prot, int flags, int fd) {
  void* p = mmap(NULL, len, prot, flags, fd, 0);
  if (p == MAP_FAILED) die("mmap");
  return p;
}

static void pwrite_all(int fd, const void* p, size_t len, off_t off) {
  if (pwrite(fd, p, len, off) != (ssize_t)len) die("pwrite");
}

static void fill(unsigned char* buf, size_t len, uint32_t seed) {
  wl_pattern(buf, len, seed);
}

static void check_bytes(const char* what, const unsigned char* have, const unsigned char* want,
                        size_t len) {
  for (size_t i = 0; i < len; i++)
    if (have[i] != want[i]) {
      wl_check(&chk, 0, "%s: %s differs at byte %zu (0x%02x, want 0x%02x)", role, what, i, have[i],
               want[i]);
      return;
    }
}

/* The content of a file through pread (up to its size), against want; the bytes from
 * skip for skip_len (where the tokens go) are not compared. */
static void check_fd_part(const char* what, int fd, const unsigned char* want, size_t len,
                          size_t skip, size_t skip_len) {
  static unsigned char buf[8 * 4096];
  struct stat st;
  if (!wl_check(&chk, fstat(fd, &st) == 0, "%s: fstat %s: %s", role, what, strerror(errno))) return;
  if (!wl_check(&chk, (size_t)st.st_size == len, "%s: %s has size %lld, want %zu", role, what,
                (long long)st.st_size, len))
    return;
  if (len > sizeof buf) return;
  ssize_t n = pread(fd, buf, len + 1, 0);
  if (!wl_check(&chk, n == (ssize_t)len, "%s: pread %s read %zd of %zu", role, what, n, len))
    return;
  if (skip_len) memcpy(buf + skip, want + skip, skip_len);
  check_bytes(what, buf, want, len);
}

static void check_fd_content(const char* what, int fd, const unsigned char* want, size_t len) {
  check_fd_part(what, fd, want, len, 0, 0);
}

static void check_off(const char* what, int fd, off_t want, int accmode) {
  off_t at = lseek(fd, 0, SEEK_CUR);
  wl_check(&chk, at == want, "%s: %s is at offset %lld, want %lld", role, what, (long long)at,
           (long long)want);
  int fl = fcntl(fd, F_GETFL);
  wl_check(&chk, fl >= 0 && (fl & O_ACCMODE) == accmode, "%s: %s has flags 0%o, want access %d",
           role, what, fl, accmode);
}

/* The sealed operations are only tried when the seals are right: without them they
 * would change the file under the other process. */
static int check_seals(const char* what, int fd, int want) {
  int s = fcntl(fd, F_GET_SEALS);
  return wl_check(&chk, s == want, "%s: %s has seals 0x%x, want 0x%x", role, what, s, want);
}

static void check_maps_name(const char* what, void* addr, const char* name) {
  char line[512];
  if (!wl_check(&chk, wl_maps_line((uintptr_t)addr, line, sizeof line) == 0,
                "%s: %s is not in /proc/self/maps", role, what))
    return;
  wl_check(&chk, strstr(line, name) != NULL, "%s: %s maps line '%s' does not name '%s'", role, what,
           line, name);
}

static void check_fd_name(const char* what, int fd, const char* name) {
  char path[64], link[512];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, link, sizeof link - 1);
  link[n > 0 ? n : 0] = '\0';
  wl_check(&chk, n > 0 && strcmp(link, name) == 0, "%s: %s links to '%s', want '%s'", role, what,
           link, name);
}

static void check_all(void) {
  static unsigned char want[8 * 4096];
  char name[128];

  /* A: content through the fds and the shared mapping, the hole, seals, names. */
  check_fd_part("memfd A (fd)", fd_a, expect_a, A_SIZE, 2 * pg, pg);
  check_fd_part("memfd A (read-only fd)", fd_a_ro, expect_a, A_SIZE, 2 * pg, pg);
  check_bytes("memfd A pages 0-1 (shared mapping)", a_shared, expect_a, 2 * pg);
  /* (Not pages 3-4: a read fault through a shared mapping fills a hole.) */
  check_bytes("memfd A page 5 (shared mapping)", a_shared + 5 * pg, expect_a + 5 * pg,
              A_SIZE - 5 * pg);
  /* The hole is still a hole (a description of my own: the fds' offsets are shared). */
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd_a);
  int probe = open(path, O_RDONLY | O_CLOEXEC);
  off_t data = probe < 0 ? -1 : lseek(probe, 3 * pg, SEEK_DATA);
  wl_check(&chk, data == (off_t)(5 * pg), "%s: memfd A: SEEK_DATA from page 3 gives %lld, want %zu",
           role, (long long)data, 5 * pg);
  if (probe >= 0) close(probe);
  if (check_seals("memfd A", fd_a, A_SEALS)) {
    wl_check(&chk, ftruncate(fd_a, A_SIZE + pg) < 0 && errno == EPERM,
             "%s: memfd A grew past F_SEAL_GROW (%s)", role, strerror(errno));
    wl_check(&chk, ftruncate(fd_a, pg) < 0 && errno == EPERM,
             "%s: memfd A shrank past F_SEAL_SHRINK (%s)", role, strerror(errno));
  }
  check_off("memfd A fd", fd_a, 1234, O_RDWR);
  check_off("memfd A read-only fd", fd_a_ro, 42, O_RDONLY);
  check_maps_name("memfd A shared mapping", a_shared, "/memfd:kleap-memfd00-a (deleted)");
  check_maps_name("memfd A private mapping", a_priv, "/memfd:kleap-memfd00-a (deleted)");
  check_fd_name("memfd A fd", fd_a, "/memfd:kleap-memfd00-a (deleted)");
  check_fd_name("memfd A read-only fd", fd_a_ro, "/memfd:kleap-memfd00-a (deleted)");

  /* The private mapping: page 0 is my copy, page 1 still the file's. */
  fill(want, pg, 9);
  check_bytes("memfd A private page 0 (copied on write)", a_priv, want, pg);
  check_bytes("memfd A private page 1", a_priv + pg, expect_a + pg, pg);

  /* B: write-sealed, mapped read-only. */
  fill(want, B_SIZE, 3);
  check_fd_content("memfd B", fd_b, want, B_SIZE);
  check_bytes("memfd B mapping", b_map, want, B_SIZE);
  if (check_seals("memfd B", fd_b, B_SEALS))
    wl_check(&chk, pwrite(fd_b, "x", 1, 0) < 0 && errno == EPERM,
             "%s: memfd B took a write past F_SEAL_WRITE (%s)", role, strerror(errno));
  wl_check(&chk, mprotect(b_map, pg, PROT_READ | PROT_WRITE) != 0,
           "%s: memfd B's read-only shared mapping could be made writable", role);
  wl_check(&chk, fcntl(fd_b, F_GET_SEALS) != B_SEALS || fcntl(fd_b, F_ADD_SEALS, F_SEAL_EXEC) < 0,
           "%s: memfd B took a seal past F_SEAL_SEAL", role);
  check_off("memfd B fd", fd_b, 5, O_RDWR);
  check_maps_name("memfd B mapping", b_map, "/memfd:kleap-memfd00-b (deleted)");

  /* C: sealing never allowed. */
  check_seals("memfd C", fd_c, F_SEAL_SEAL);
  check_fd_content("memfd C", fd_c, want, 0);
  check_fd_name("memfd C fd", fd_c, "/memfd:kleap-memfd00-c (deleted)");

  /* POSIX shm, linked and unlinked. */
  fill(want, L_SIZE, 4);
  check_fd_content("linked shm file", fd_l, want, L_SIZE);
  check_bytes("linked shm mapping", l_map, want, L_SIZE);
  check_off("linked shm fd", fd_l, 11, O_RDWR);
  snprintf(name, sizeof name, "/dev/shm%s", l_name);
  check_maps_name("linked shm mapping", l_map, name);
  check_fd_name("linked shm fd", fd_l, name);
  fill(want, U_SIZE, 5);
  check_fd_part("unlinked shm file", fd_u, want, U_SIZE, 2 * pg, 8);
  check_bytes("unlinked shm mapping", u_map, want, 2 * pg);
  check_off("unlinked shm fd", fd_u, 77, O_RDWR);
  struct stat st;
  wl_check(&chk, fstat(fd_u, &st) == 0 && st.st_nlink == 0 && (st.st_mode & 07777) == 0640,
           "%s: unlinked shm file: nlink %lu mode 0%o", role, (unsigned long)st.st_nlink,
           (unsigned)st.st_mode & 07777);
  snprintf(name, sizeof name, "/dev/shm%s (deleted)", u_name);
  check_maps_name("unlinked shm mapping", u_map, name);
  check_fd_name("unlinked shm fd", fd_u, name);
}

static volatile uint32_t* a_slot(int i) {
  return (volatile uint32_t*)(a_shared + 2 * pg) + i;
}
static volatile uint32_t* u_slot(int i) {
  return (volatile uint32_t*)(u_map + 2 * pg) + i;
}

static int wait_for(volatile uint32_t* p, uint32_t v) {
  for (int i = 0; i < 250; i++) {
    if (__atomic_load_n(p, __ATOMIC_SEQ_CST) == v) return 1;
    wl_sleep_ms(20);
  }
  return 0;
}

static uint32_t pread32(int fd, off_t off) {
  uint32_t v = 0;
  if (pread(fd, &v, sizeof v, off) != sizeof v) return 0xffffffffu;
  return v;
}

static int child_main(void) {
  role = "child";
  wl_child_ready();
  if (wl_wait() != 0) {
    wl_result("child", 0, "timeout waiting for SIGUSR1");
    return 1;
  }
  wl_check_init(&chk);
  check_all();
  /* Sharing: the parent's token through my mappings and the fds, then my answer. */
  if (wl_check(&chk, wait_for(a_slot(0), TOKEN_P2C),
               "child: the parent's token never arrived through memfd A's shared mapping")) {
    wl_check(&chk, pread32(fd_a_ro, 2 * pg) == TOKEN_P2C,
             "child: the token is not in memfd A read through the fd");
    __atomic_store_n(a_slot(1), TOKEN_C2P, __ATOMIC_SEQ_CST);
  }
  if (wl_check(&chk, wait_for(u_slot(0), TOKEN_P2C),
               "child: the parent's token never arrived through the unlinked shm mapping")) {
    wl_check(&chk, pread32(fd_u, 2 * pg) == TOKEN_P2C,
             "child: the token is not in the unlinked shm file read through the fd");
    __atomic_store_n(u_slot(1), TOKEN_C2P, __ATOMIC_SEQ_CST);
  }
  /* My private copy of page 0 stays mine. */
  a_priv[1] ^= 0xff;
  return wl_check_result("child", &chk);
}

static void hugetlb_main(void) {
  int fd = memfd_create("kleap-memfd00-huge", MFD_HUGETLB | MFD_CLOEXEC);
  if (fd < 0) wl_skip("memfd_create(MFD_HUGETLB): %s", strerror(errno));
  wl_ready("parent");
  if (wl_wait() != 0) exit(1);
  wl_result("parent", 1, "ok");
  exit(0);
}

/* A writable shared mapping made before F_SEAL_FUTURE_WRITE: it can't be made again. */
static void future_write_main(void) {
  int fd = memfd_create("kleap-memfd00-fw", MFD_ALLOW_SEALING | MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, (off_t)pg) != 0) die("memfd_create");
  unsigned char* p = map(pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd);
  p[0] = 1;
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) != 0)
    wl_skip("F_SEAL_FUTURE_WRITE: %s", strerror(errno));
  wl_ready("parent");
  if (wl_wait() != 0) exit(1);
  p[0]++;
  wl_result("parent", p[0] == 2 && pwrite(fd, "x", 1, 0) < 0, "the seal or the mapping changed");
  exit(0);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  wl_check_init(&chk);
  pg = (size_t)sysconf(_SC_PAGESIZE);
  if (argc > 2 && strcmp(argv[2], "hugetlb") == 0) hugetlb_main();
  if (argc > 2 && strcmp(argv[2], "future-write") == 0) future_write_main();

  /* A: pattern in pages 0-1 and from page 5 to the end, nothing written in 2-4. */
  expect_a = calloc(1, 6 * pg);
  if (!expect_a) die("calloc");
  fill(expect_a, 2 * pg, 1);
  fill(expect_a + 5 * pg, 777, 2);
  fd_a = memfd_create("kleap-memfd00-a", MFD_ALLOW_SEALING);
  if (fd_a < 0) die("memfd_create A");
  if (ftruncate(fd_a, A_SIZE) != 0) die("ftruncate A");
  pwrite_all(fd_a, expect_a, 2 * pg, 0);
  pwrite_all(fd_a, expect_a + 5 * pg, 777, 5 * pg);
  if (fcntl(fd_a, F_ADD_SEALS, A_SEALS) != 0) die("seal A");
  a_shared = map(6 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd_a);
  a_priv = map(6 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd_a);
  fill(a_priv, pg, 9);
  if (lseek(fd_a, 1234, SEEK_SET) != 1234) die("seek A");
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd_a);
  fd_a_ro = open(path, O_RDONLY);
  if (fd_a_ro < 0) die("reopen A read-only");
  if (lseek(fd_a_ro, 42, SEEK_SET) != 42) die("seek A read-only");

  /* B: write-sealed first, then mapped read-only. */
  unsigned char* tmp = malloc(4 * pg);
  if (!tmp) die("malloc");
  fill(tmp, B_SIZE, 3);
  fd_b = memfd_create("kleap-memfd00-b", MFD_ALLOW_SEALING);
  if (fd_b < 0) die("memfd_create B");
  pwrite_all(fd_b, tmp, B_SIZE, 0);
  if (fcntl(fd_b, F_ADD_SEALS, B_SEALS) != 0) die("seal B");
  b_map = map(B_SIZE, PROT_READ, MAP_SHARED, fd_b);
  if (lseek(fd_b, 5, SEEK_SET) != 5) die("seek B");

  fd_c = memfd_create("kleap-memfd00-c", 0);
  if (fd_c < 0) die("memfd_create C");

  /* POSIX shm: one that stays, one unlinked while open and mapped. */
  snprintf(l_name, sizeof l_name, "/kleap-memfd00-l-%d", (int)getpid());
  snprintf(u_name, sizeof u_name, "/kleap-memfd00-u-%d", (int)getpid());
  fd_l = shm_open(l_name, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd_l < 0) wl_skip("shm_open %s: %s (no /dev/shm?)", l_name, strerror(errno));
  if (ftruncate(fd_l, L_SIZE) != 0) die("ftruncate linked shm");
  l_map = map(L_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd_l);
  fill(l_map, L_SIZE, 4);
  if (lseek(fd_l, 11, SEEK_SET) != 11) die("seek linked shm");
  fd_u = shm_open(u_name, O_RDWR | O_CREAT | O_EXCL, 0640);
  if (fd_u < 0) die("shm_open unlinked");
  fchmod(fd_u, 0640);
  fill(tmp, U_SIZE, 5);
  pwrite_all(fd_u, tmp, U_SIZE, 0);
  u_map = map(U_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd_u);
  if (shm_unlink(u_name) != 0) die("shm_unlink");
  if (lseek(fd_u, 77, SEEK_SET) != 77) die("seek unlinked shm");
  free(tmp);

  fd_s = memfd_create("kleap-memfd00-s", 0);
  if (fd_s < 0) die("memfd_create S");
  pwrite_all(fd_s, "#!/bin/true\n", 12, 0);
  s_map = map(pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd_s);
  if (run_script() != 0) wl_skip("execveat of a memfd script: %s", strerror(run_script()));

  pid_t child = wl_fork();
  if (child < 0) die("fork");
  if (child == 0) return child_main();
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("parent", "%s", why);
  wl_ready("parent child");
  if (wl_wait() != 0) {
    wl_result("parent", 0, "timeout waiting for SIGUSR1");
    shm_unlink(l_name);
    return 1;
  }
  wl_check_init(&chk);
  check_all();
  __atomic_store_n(a_slot(0), TOKEN_P2C, __ATOMIC_SEQ_CST);
  __atomic_store_n(u_slot(0), TOKEN_P2C, __ATOMIC_SEQ_CST);
  wl_check(&chk, wait_for(a_slot(1), TOKEN_C2P),
           "parent: the child's answer never arrived through memfd A's shared mapping");
  wl_check(&chk, pread32(fd_a, 2 * pg + 4) == TOKEN_C2P,
           "parent: the child's answer is not in memfd A read through the fd");
  wl_check(&chk, wait_for(u_slot(1), TOKEN_C2P),
           "parent: the child's answer never arrived through the unlinked shm mapping");
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&chk, 0, "parent: %s", why);
  /* The child's write to its private copy didn't reach mine, nor the file. */
  static unsigned char want[4096];
  fill(want, pg, 9);
  check_bytes("memfd A private page 0 after the child wrote its copy", a_priv, want, pg);
  check_bytes("memfd A page 0 after the child wrote its private copy", a_shared, expect_a, pg);
  int err = run_script();
  wl_check(&chk, err == 0, "parent: execveat of memfd S: %s", strerror(err));
  wl_check(&chk, memcmp(s_map, "#!/bin/true\n", 12) == 0, "parent: memfd S's mapping differs");
  shm_unlink(l_name);
  return wl_check_result("parent", &chk);
}
