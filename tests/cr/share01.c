/* share01: sharing between processes the engine refuses to carry (the `refuse` mode),
 * by argument:
 *   siblings (the default): the root clones two children with CLONE_FILES, then takes a table of
 * its own (unshare): the children share a table their parent doesn't, which no parent can hand down
 * at restore;
 *   vmkids:   a child cloned with CLONE_VM | SIGCHLD (not a thread) shares the root's
 *             address space, bumping a counter the root reads, and has forked a child of its
 *             own (vmshare00 carries one without);
 *   vmthreads: the same child with a thread of its own instead;
 *   vfork:    a child vfork()s: it waits in vfork() until its own child (which loops
 *             in the shared memory until SIGUSR1) exits.
 * `kleap check` must name the task with the reason and `kleap dump` must fail; the tree
 * keeps running. On SIGUSR1 each process checks the sharing is still there. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static pid_t root_pid, kids[2];
static volatile sig_atomic_t nkids;
static volatile int vm_counter, vm_stop;
static int p_ready[2], p_done[2];

static void on_usr1(int sig) {
  int saved = errno;
  (void)sig;
  wl_usr1 = 1;
  for (int i = 0; i < nkids; i++) kill(kids[i], SIGUSR1);
  errno = saved;
}

static int kcmp(pid_t a, pid_t b, int type) {
  return (int)syscall(SYS_kcmp, a, b, type, 0L, 0L);
}

/* clone(2) with fork semantics; every argument after flags is 0 (their order differs
 * between x86_64 and i386). */
static pid_t raw_clone(unsigned long flags) {
  return (pid_t)syscall(SYS_clone, flags, 0L, 0L, 0L, 0L);
}

static int sibling(const char* role) {
  nkids = 0;
  char c0 = 'r';
  if (write(p_ready[1], &c0, 1) != 1) wl_die(role, "write: %s", strerror(errno));
  struct wl_check c;
  if (wl_await(role, &c) != 0) return 1;
  wl_check(&c, kcmp(getpid(), root_pid, KCMP_FILES) != 0, "kcmp: the root's table shared");
  /* Alive until the root has compared the two tables (a and b). */
  char done;
  wl_check(&c, wl_read_full(p_done[0], &done, 1) == 1, "no word from the root");
  return wl_check_result(role, &c);
}

static int run_siblings(void) {
  pid_t a = raw_clone(CLONE_FILES | SIGCHLD);
  if (a < 0) wl_die("root", "clone: %s", strerror(errno));
  if (a == 0) return sibling("a");
  kids[nkids++] = a;
  pid_t b = raw_clone(CLONE_FILES | SIGCHLD);
  if (b < 0) wl_die("root", "clone: %s", strerror(errno));
  if (b == 0) return sibling("b");
  kids[nkids++] = b;
  if (unshare(CLONE_FILES) != 0) wl_die("root", "unshare CLONE_FILES: %s", strerror(errno));
  char got[2];
  if (wl_read_full(p_ready[0], got, 2) != 2) wl_die("root", "a child never got ready");
  wl_ready("root a b");
  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  wl_check(&c, kcmp(a, b, KCMP_FILES) == 0, "kcmp: a and b no longer share a table");
  wl_check(&c, kcmp(root_pid, a, KCMP_FILES) != 0, "kcmp: the root shares a's table");
  if (write(p_done[1], "dd", 2) != 2) wl_check(&c, 0, "write to a and b failed");
  wl_check_reaped(&c, a, "a", 5000);
  wl_check_reaped(&c, b, "b", 5000);
  return wl_check_result("root", &c);
}

/* A thread of the CLONE_VM child, or its forked child (which dies with it). */
static int vm_extra(void* arg) {
  (void)arg;
  syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  struct timespec ms = {0, 1000000};
  while (!vm_stop) syscall(SYS_nanosleep, &ms, NULL);
  syscall(SYS_exit, 0);
  return 0;
}

static char vm_thread_stack[64 * 1024] __attribute__((aligned(16)));

/* The CLONE_VM child: no stdio, no malloc, no errno worth reading; just the counter. */
static int vm_child(void* arg) {
  if (arg == (void*)1) {
    if (raw_clone(SIGCHLD) == 0) vm_extra(NULL);
  } else {
    clone(vm_extra, vm_thread_stack + sizeof vm_thread_stack,
          CLONE_VM | CLONE_THREAD | CLONE_SIGHAND | CLONE_FS | CLONE_FILES, NULL);
  }
  struct timespec ms = {0, 1000000};
  while (!vm_stop) {
    vm_counter++;
    syscall(SYS_nanosleep, &ms, NULL);
  }
  syscall(SYS_exit, 0);
  return 0;
}

static int run_vm(int kids) {
  size_t size = 64 * 1024;
  char* stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (stack == MAP_FAILED) wl_die("root", "mmap: %s", strerror(errno));
  /* Not forwarded SIGUSR1: its handler would run on this very memory. */
  pid_t v = clone(vm_child, stack + size, CLONE_VM | SIGCHLD, kids ? (void*)1 : NULL);
  if (v < 0) wl_die("root", "clone CLONE_VM: %s", strerror(errno));
  for (int i = 0; i < 300 && vm_counter == 0; i++) wl_sleep_ms(10);
  if (vm_counter == 0) wl_die("root", "the CLONE_VM child never ran");
  wl_ready("root");
  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  wl_check(&c, kcmp(root_pid, v, KCMP_VM) == 0, "kcmp: the address space is not shared");
  int before = vm_counter;
  wl_sleep_ms(100);
  wl_check(&c, vm_counter != before, "the CLONE_VM child's writes are not seen (counter %d)",
           before);
  vm_stop = 1;
  wl_check_reaped(&c, v, "vm child", 5000);
  return wl_check_result("root", &c);
}

static int run_vfork(void) {
  pid_t cpid = wl_fork();
  if (cpid < 0) wl_die("root", "fork: %s", strerror(errno));
  if (cpid == 0) {
    nkids = 0;
    wl_child_ready();
    pid_t g = vfork();
    if (g == 0) {
      /* Shares the vforker's memory until it exits: only raw syscalls. */
      pid_t me = (pid_t)syscall(SYS_getpid);
      if (write(p_ready[1], &me, sizeof me) != sizeof me) _exit(3);
      struct timespec ms = {0, 20000000};
      for (int i = 0; i < 30000 && !wl_usr1; i++) syscall(SYS_nanosleep, &ms, NULL);
      _exit(wl_usr1 ? 0 : 4);
    }
    struct wl_check c;
    if (wl_await("vforker", &c) != 0) return 1;
    wl_check(&c, g > 0, "vfork: %s", strerror(errno));
    if (g > 0) wl_check_reaped(&c, g, "vfork child", 5000);
    return wl_check_result("vforker", &c);
  }
  kids[nkids++] = cpid;
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("root", "%s", why);
  pid_t g;
  if (wl_read_full(p_ready[0], &g, sizeof g) != sizeof g) wl_die("root", "no vfork child");
  kids[nkids++] = g;
  for (int i = 0; i < 300; i++) {
    char path[64], st[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)cpid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, st, sizeof st - 1) : -1;
    if (fd >= 0) close(fd);
    if (n > 0) {
      st[n] = 0;
      char* p = strrchr(st, ')');
      if (p && p[2] == 'D') break;
    }
    wl_sleep_ms(10);
  }
  wl_ready("root vforker");
  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  wl_check_reaped(&c, cpid, "vforker", 5000);
  return wl_check_result("root", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGUSR1, &sa, NULL) != 0) wl_die("root", "sigaction: %s", strerror(errno));
  root_pid = getpid();
  if (pipe2(p_ready, O_CLOEXEC) != 0 || pipe2(p_done, O_CLOEXEC) != 0)
    wl_die("root", "pipe: %s", strerror(errno));
  const char* mode = argc > 2 ? argv[2] : "siblings";
  if (strcmp(mode, "siblings") == 0) return run_siblings();
  if (strcmp(mode, "vmkids") == 0) return run_vm(1);
  if (strcmp(mode, "vmthreads") == 0) return run_vm(0);
  if (strcmp(mode, "vfork") == 0) return run_vfork();
  wl_die("root", "usage: share01 STATEDIR siblings|vmkids|vmthreads|vfork");
}
