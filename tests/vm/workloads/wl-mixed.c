/* wl-mixed: 64-bit and 32-bit processes in one tree, each parent of the other width.
 * Built twice, wl-mixed (64-bit) and wl-mixed32 (-m32); each execs the other.
 * `wl-mixed STATEDIR` makes:
 *   root64                    wl-mixed
 *   +- child32                wl-mixed32, talks with root64
 *   +- parent32               wl-mixed32, talks with root64
 *      +- child64             wl-mixed, talks with parent32
 * (`wl-mixed32 STATEDIR` makes the same tree with the widths swapped.) Every pair talks
 * both ways over a unix stream socket pair (wl-vm.h). A check (one role a process, as
 * named above): the ids and links of wl-vm.h, and the process's width: the width it
 * was started as, its code segment (0x33 runs 64-bit code, 0x23 32-bit code) and the
 * ELF class of /proc/self/exe. */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wl-vm.h"

#define MY_BITS ((int)sizeof(void*) * 8)
#define OTHER_BITS (96 - MY_BITS)

static int want_bits;

static void check_width(void* arg, struct wl_check* c) {
  (void)arg;
  wl_check(c, MY_BITS == want_bits, "started as a %d-bit process, runs %d-bit code", want_bits,
           MY_BITS);
  unsigned short cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  wl_check(c, cs == (MY_BITS == 64 ? 0x33 : 0x23), "%d-bit code with the code segment 0x%x",
           MY_BITS, cs);
  unsigned char ident[EI_NIDENT] = {0};
  int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  ssize_t r = fd >= 0 ? read(fd, ident, sizeof ident) : -1;
  if (fd >= 0) close(fd);
  int want_class = MY_BITS == 64 ? ELFCLASS64 : ELFCLASS32;
  wl_check(c, r == EI_NIDENT && ident[EI_CLASS] == want_class,
           "/proc/self/exe: ELF class %d, want %d", ident[EI_CLASS], want_class);
}

/* Forks and execs the program of the other width as `role`, with one end of a new
 * socket pair; returns the other end. */
static int spawn(const char* me, const char* role) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    wl_die(me, "socketpair: %s", strerror(errno));
  pid_t pid = wl_fork();
  if (pid < 0) wl_die(me, "fork: %s", strerror(errno));
  if (pid == 0) {
    close(sv[0]);
    if (fcntl(sv[1], F_SETFD, 0) != 0) wl_die(role, "fcntl: %s", strerror(errno));
    char peer[4096], fd[16];
    wlv_sibling(OTHER_BITS == 64 ? "wl-mixed" : "wl-mixed32", peer, sizeof peer);
    snprintf(fd, sizeof fd, "%d", sv[1]);
    char* args[] = {peer, (char*)wl_statedir, "--as", (char*)role, fd, NULL};
    wl_exec(peer, args);
    wl_die(role, "exec %s: %s", peer, strerror(errno));
  }
  close(sv[1]);
  return sv[0];
}

static void children_ready(const char* role) {
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die(role, "%s", why);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  static char role[16], child[16], parent[16], grandchild[16];
  struct wlv_proc p;
  snprintf(child, sizeof child, "child%d", OTHER_BITS);
  if (argc >= 5 && strcmp(argv[2], "--as") == 0) {
    snprintf(role, sizeof role, "%s", argv[3]);
    want_bits = atoi(role + strlen(role) - 2);
    int up = atoi(argv[4]);
    if (fcntl(up, F_SETFD, FD_CLOEXEC) != 0) wl_die(role, "fd %d: %s", up, strerror(errno));
    int down = -1;
    if (strncmp(role, "parent", 6) == 0) {
      down = spawn(role, child);
      children_ready(role);
    }
    wlv_proc_init(&p, role, 0);
    wlv_add_link(&p, "to the parent", up, 1, 1);
    if (down >= 0) wlv_add_link(&p, child, down, 1, 1);
    wl_child_ready();
  } else {
    snprintf(role, sizeof role, "root%d", MY_BITS);
    snprintf(parent, sizeof parent, "parent%d", OTHER_BITS);
    snprintf(grandchild, sizeof grandchild, "child%d", MY_BITS);
    want_bits = MY_BITS;
    int to_child = spawn(role, child);
    int to_parent = spawn(role, parent);
    children_ready(role);
    wlv_proc_init(&p, role, 1);
    wlv_add_link(&p, child, to_child, 1, 1);
    wlv_add_link(&p, parent, to_parent, 1, 1);
    char roles[80];
    snprintf(roles, sizeof roles, "%s %s %s %s", role, child, parent, grandchild);
    wl_ready(roles);
  }
  p.check = check_width;
  wlv_run(&p);
}
