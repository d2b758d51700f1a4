/* vmaflags00: the flags of single mappings (smaps VmFlags), set by mmap and madvise.
 *   MADV_DONTFORK (dc), MADV_WIPEONFORK (wf), MADV_DONTDUMP (dd), MADV_SEQUENTIAL (sr),
 *   MADV_RANDOM (rr), MADV_HUGEPAGE (hg), MADV_NOHUGEPAGE (nh), MADV_MERGEABLE (mg),
 *   MAP_LOCKED (lo), mlock2(MLOCK_ONFAULT) (lf), MAP_NORESERVE (nr), MAP_DROPPABLE (dp).
 * A flag the kernel refuses at setup (no KSM, no THP, MAP_DROPPABLE before 6.11) is left
 * out of that mapping; what it had must be what it has after the restore.
 * After the restore: each mapping has the same carried flags and its pattern (a droppable
 * one may also be empty: the kernel may drop it at any time), and a child forked then
 * finds the wipe-on-fork mapping zeroed and the don't-fork one absent.
 * With `sealed`, one more mapping is sealed (mseal, Linux 6.10): it must be refused. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif

#define LEN (4 * 4096)

/* The VmFlags a restore gives back; the others are the kernel's own bookkeeping. */
static const char* const kCarried[] = {"dc", "wf", "dd", "sr", "rr", "hg",
                                       "nh", "mg", "lo", "lf", "nr", "dp"};

struct area {
  const char* what;
  int map_flags;
  int advice;  /* -1: none */
  int onfault; /* mlock2(MLOCK_ONFAULT) */
  char* p;
  char flags[64];
};

static struct area areas[] = {
    {"dontfork", MAP_PRIVATE, MADV_DONTFORK, 0, NULL, ""},
    {"locked+sequential", MAP_PRIVATE | MAP_LOCKED, MADV_SEQUENTIAL, 0, NULL, ""},
    {"noreserve+dontdump", MAP_PRIVATE | MAP_NORESERVE, MADV_DONTDUMP, 0, NULL, ""},
    {"hugepage", MAP_PRIVATE, MADV_HUGEPAGE, 0, NULL, ""},
    {"nohugepage", MAP_PRIVATE, MADV_NOHUGEPAGE, 0, NULL, ""},
    {"random", MAP_PRIVATE, MADV_RANDOM, 0, NULL, ""},
    {"mergeable", MAP_PRIVATE, MADV_MERGEABLE, 0, NULL, ""},
    {"wipeonfork", MAP_PRIVATE, MADV_WIPEONFORK, 0, NULL, ""},
    {"droppable", MAP_DROPPABLE, -1, 0, NULL, ""},
    {"lock-onfault", MAP_PRIVATE, -1, 1, NULL, ""},
};
#define NAREAS (sizeof areas / sizeof areas[0])

/* The carried VmFlags of the mapping holding addr, space-separated in smaps order. */
static int carried_flags(char* addr, char* out, size_t n) {
  int fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  static char buf[1 << 20];
  size_t len = 0;
  ssize_t r;
  while (len < sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
    len += (size_t)r;
  close(fd);
  buf[len] = 0;
  int inside = 0, found = -1;
  for (char* line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
    unsigned long lo, hi;
    char dash;
    if (sscanf(line, "%lx%c%lx ", &lo, &dash, &hi) == 3 && dash == '-') {
      inside = (uintptr_t)addr >= lo && (uintptr_t)addr < hi;
      continue;
    }
    if (!inside || strncmp(line, "VmFlags:", 8) != 0) continue;
    out[0] = 0;
    for (char* f = line + 8; *f;) {
      while (*f == ' ') f++;
      if (!f[0] || !f[1]) break;
      for (size_t i = 0; i < sizeof kCarried / sizeof kCarried[0]; i++)
        if (f[0] == kCarried[i][0] && f[1] == kCarried[i][1] && strlen(out) + 4 < n) {
          strcat(out, kCarried[i]);
          strcat(out, " ");
        }
      f += 2;
    }
    found = 0;
  }
  return found;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int have = 0;
  for (size_t i = 0; i < NAREAS; i++) {
    struct area* a = &areas[i];
    a->p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, a->map_flags | MAP_ANONYMOUS, -1, 0);
    if (a->p == MAP_FAILED) {
      if (errno != EINVAL) wl_die("main", "mmap %s: %s", a->what, strerror(errno));
      wl_log("%s: mmap refused by this kernel, left out", a->what);
      a->p = NULL;
      continue;
    }
    if (a->advice >= 0 && madvise(a->p, LEN, a->advice) != 0)
      wl_log("%s: madvise refused by this kernel (%s): its flag is left out", a->what,
             strerror(errno));
    if (a->onfault && syscall(SYS_mlock2, a->p, LEN, MLOCK_ONFAULT) != 0)
      wl_die("main", "mlock2 %s: %s", a->what, strerror(errno));
    wl_pattern(a->p, LEN, (uint32_t)i + 1);
    if (carried_flags(a->p, a->flags, sizeof a->flags) != 0)
      wl_die("main", "%s: no smaps entry", a->what);
    wl_log("%s: %s", a->what, a->flags);
    have += a->flags[0] != 0;
  }
  if (have < 6) wl_die("main", "only %d mappings hold a flag to carry", have);
  if (argc > 2 && strcmp(argv[2], "sealed") == 0) {
    char* p = mmap(NULL, LEN, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) wl_die("main", "mmap: %s", strerror(errno));
    if (syscall(462 /* mseal */, p, LEN, 0) != 0) {
      if (errno == ENOSYS || errno == EPERM)
        wl_skip("mseal: %s (before Linux 6.10, or not on this architecture)", strerror(errno));
      wl_die("main", "mseal: %s", strerror(errno));
    }
  }
  wl_ready("main");
  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  for (size_t i = 0; i < NAREAS; i++) {
    struct area* a = &areas[i];
    if (!a->p) continue;
    char now[64];
    if (!wl_check(&c, carried_flags(a->p, now, sizeof now) == 0, "%s: no smaps entry", a->what))
      continue;
    wl_check(&c, strcmp(now, a->flags) == 0, "%s: flags '%s', were '%s'", a->what, now, a->flags);
    long diff = wl_pattern_diff(a->p, LEN, (uint32_t)i + 1);
    int dropped = a->map_flags == MAP_DROPPABLE && a->p[0] == 0 && a->p[LEN - 1] == 0;
    wl_check(&c, diff < 0 || dropped, "%s: content differs at %ld", a->what, diff);
  }
  /* A child made now: the wipe-on-fork mapping is empty there, the don't-fork one gone. */
  pid_t pid = fork();
  if (pid == 0) {
    char line[256];
    int ok = wl_maps_line((uintptr_t)areas[0].p, line, sizeof line) != 0;
    for (int k = 0; k < LEN; k++) ok &= areas[7].p[k] == 0;
    _exit(ok ? 0 : 1);
  }
  int st = 0;
  wl_check(&c, pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0,
           "a child forked after the restore saw the don't-fork mapping or wipe-on-fork data "
           "(status %#x)",
           st);
  return wl_check_result("main", &c);
}
