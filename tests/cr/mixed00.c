/* mixed00: a tree of mixed widths.
 * `mixed00 STATEDIR PEER`: the root forks and execs PEER (the same program
 * built for the other width: the 64-bit root runs a 32-bit child and the
 * 32-bit root a 64-bit child) as `PEER STATEDIR --child BITS RFD WFD`; the two
 * talk over a pair of pipes.
 * After the restore each process checks its own width: sizeof(void*), the
 * code segment selector (0x23 for 32-bit code, 0x33 for 64-bit), the ELF class
 * of /proc/self/exe, that a new mmap() lands where /proc/self/maps says, and
 * its pid/ppid; then the root sends "ping", the child answers with its width,
 * and the root checks the child is the other width. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "workload.h"

#define MY_BITS ((int)sizeof(void*) * 8)

static uint16_t code_selector(void) {
  uint16_t cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  return cs;
}

static void check_width(struct wl_check* c, const char* role) {
  wl_check(c, sizeof(void*) * 8 == (size_t)MY_BITS, "%s: sizeof(void*) %zu", role, sizeof(void*));
  uint16_t cs = code_selector();
  uint16_t want_cs = MY_BITS == 64 ? 0x33 : 0x23;
  wl_check(c, cs == want_cs, "%s: %d-bit code runs with cs 0x%x, want 0x%x", role, MY_BITS, cs,
           want_cs);
  int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  unsigned char ident[5] = {0};
  if (fd >= 0) {
    ssize_t r = read(fd, ident, sizeof ident);
    (void)r;
    close(fd);
  }
  int want_class = MY_BITS == 64 ? 2 : 1;
  wl_check(c, memcmp(ident, "\177ELF", 4) == 0 && ident[4] == want_class,
           "%s: /proc/self/exe has ELF class %d, want %d", role, ident[4], want_class);
  /* A new mapping must be where the kernel says it is (a 32-bit task with a
   * 64-bit address space layout would get truncated addresses). */
  void* p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!wl_check(c, p != MAP_FAILED, "%s: mmap: %s", role, strerror(errno))) return;
  memset(p, 0x42, 4096);
  static char maps[128 * 1024];
  fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  size_t len = 0;
  ssize_t r;
  while (fd >= 0 && (r = read(fd, maps + len, sizeof maps - 1 - len)) > 0) len += (size_t)r;
  if (fd >= 0) close(fd);
  maps[len] = '\0';
  int found = 0;
  for (char* l = maps; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    unsigned long long lo, hi;
    if (sscanf(l, "%llx-%llx", &lo, &hi) == 2 && (uintptr_t)p >= lo && (uintptr_t)p < hi) found = 1;
  }
  wl_check(c, found, "%s: mmap returned %p, which /proc/self/maps does not show", role, p);
  munmap(p, 4096);
}

static int child_main(int want_bits, int rfd, int wfd, pid_t ppid) {
  pid_t pid = getpid();
  wl_child_ready();
  if (wl_wait() != 0) {
    wl_result("child", 0, "timeout waiting for SIGUSR1");
    return 1;
  }
  struct wl_check c;
  wl_check_init(&c);
  wl_check(&c, MY_BITS == want_bits, "child: I am %d-bit, the root expected %d-bit", MY_BITS,
           want_bits);
  check_width(&c, "child");
  wl_check(&c, getpid() == pid && getppid() == ppid, "child: pid %d ppid %d, were %d %d",
           (int)getpid(), (int)getppid(), (int)pid, (int)ppid);
  char msg[8] = {0};
  ssize_t r = read(rfd, msg, 4);
  if (wl_check(&c, r == 4 && memcmp(msg, "ping", 4) == 0, "child: read %zd bytes '%.4s', want ping",
               r, msg)) {
    char reply[16];
    int n = snprintf(reply, sizeof reply, "pong%02d", MY_BITS);
    wl_check(&c, write(wfd, reply, (size_t)n) == n, "child: write: %s", strerror(errno));
  }
  return wl_check_result("child", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (argc >= 7 && strcmp(argv[2], "--child") == 0)
    return child_main(atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), (pid_t)atoi(argv[6]));
  if (argc < 3) wl_die("parent", "usage: mixed00 STATEDIR PEER");
  const char* peer = argv[2];
  int p2c[2], c2p[2];
  if (pipe(p2c) || pipe(c2p)) wl_die("parent", "pipe: %s", strerror(errno));
  int other = MY_BITS == 64 ? 32 : 64;
  pid_t me = getpid();
  pid_t child = wl_fork();
  if (child < 0) wl_die("parent", "fork: %s", strerror(errno));
  if (child == 0) {
    close(p2c[1]);
    close(c2p[0]);
    char bits[8], rfd[8], wfd[8], ppid[16];
    snprintf(bits, sizeof bits, "%d", other);
    snprintf(rfd, sizeof rfd, "%d", p2c[0]);
    snprintf(wfd, sizeof wfd, "%d", c2p[1]);
    snprintf(ppid, sizeof ppid, "%d", (int)me);
    char* args[] = {(char*)peer, (char*)wl_statedir, "--child", bits, rfd, wfd, ppid, NULL};
    wl_exec(peer, args);
    wl_die("child", "exec %s: %s", peer, strerror(errno));
  }
  close(p2c[0]);
  close(c2p[1]);
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("parent", "%s", why);
  wl_log("%d-bit parent, child %d runs %s", MY_BITS, (int)child, peer);
  wl_ready("parent child");
  struct wl_check c;
  wl_check_init(&c);
  if (!wl_check(&c, wl_wait() == 0, "timeout waiting for SIGUSR1"))
    return wl_check_result("parent", &c);
  check_width(&c, "parent");
  wl_check(&c, getpid() == me, "parent: pid %d, was %d", (int)getpid(), (int)me);
  if (wl_check(&c, write(p2c[1], "ping", 4) == 4, "parent: write ping: %s", strerror(errno))) {
    char reply[16] = {0};
    size_t got = 0;
    for (int t = 0; t < 300 && got < 6; t++) {
      ssize_t r = read(c2p[0], reply + got, 6 - got);
      if (r <= 0) break;
      got += (size_t)r;
    }
    char want[16];
    snprintf(want, sizeof want, "pong%02d", other);
    wl_check(&c, got == 6 && memcmp(reply, want, 6) == 0,
             "parent: the child answered '%.6s', want '%s' (a %d-bit peer)", reply, want, other);
  }
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&c, 0, "parent: %s", why);
  return wl_check_result("parent", &c);
}
