/* init00: a whole system in a pid namespace: the root is PID 1 (run-init.sh starts it
 * with unshare --pid), and is restored by `kleap restore --as-init`, which is PID 1 of
 * a new namespace and becomes it.
 *   root (pid 1, session 1): counts in memory; reaps every child it doesn't know, as an
 *   |    init does (the restore's controller is one: it exits once the tree runs)
 *   +- echo: answers each byte the root writes on a pipe with the byte + 1
 * After SIGUSR1: the root is still pid 1 and leads session 1, `echo` still answers with
 * the same pid and parent 1, the counter never went back, and every child the root
 * didn't make was reaped (none is left, as a zombie or otherwise). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static int p_req[2], p_ans[2];
static volatile unsigned long counter;

static int echo_main(void) {
  wl_child_ready();
  for (;;) {
    unsigned char c;
    ssize_t n = read(p_req[0], &c, 1);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    c++;
    if (write(p_ans[1], &c, 1) != 1) break;
    if (wl_usr1 && c == 0xff) break;
  }
  struct wl_check k;
  wl_check_init(&k);
  wl_check(&k, getppid() == 1, "echo: parent %d, not 1", (int)getppid());
  return wl_check_result("echo", &k);
}

/* Children of pid 1 that are not `known`: reaped when they are zombies. Returns how
 * many are left alive. */
static int reap_strangers(pid_t known, int* reaped) {
  char path[64];
  snprintf(path, sizeof path, "/proc/1/task/1/children");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[512];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = 0;
  int alive = 0;
  for (char* s = strtok(buf, " \n"); s; s = strtok(NULL, " \n")) {
    pid_t p = (pid_t)atoi(s);
    if (p == known) continue;
    if (waitpid(p, NULL, WNOHANG) == p)
      (*reaped)++;
    else
      alive++;
  }
  return alive;
}

static int round_trip(unsigned char v) {
  unsigned char got = 0;
  if (write(p_req[1], &v, 1) != 1) return 0;
  return wl_read_full(p_ans[0], &got, 1) == 1 && got == (unsigned char)(v + 1);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (getpid() != 1) wl_die("root", "not PID 1 (%d): run me with unshare --pid --fork", getpid());
  if (pipe2(p_req, O_CLOEXEC) != 0 || pipe2(p_ans, O_CLOEXEC) != 0)
    wl_die("root", "pipe: %s", strerror(errno));
  pid_t echo = wl_fork();
  if (echo < 0) wl_die("root", "fork: %s", strerror(errno));
  if (echo == 0) return echo_main();
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("root", "%s", why);
  if (!round_trip(1)) wl_die("root", "no answer from echo");
  wl_ready("root echo");
  unsigned long before = 0;
  int reaped = 0;
  /* wl_wait polls; an init reaps meanwhile (strangers only: echo is wl's). */
  while (!wl_usr1) {
    counter++;
    before = counter;
    reap_strangers(echo, &reaped);
    wl_sleep_ms(5);
  }
  struct wl_check c;
  wl_check_init(&c);
  wl_check(&c, getpid() == 1, "root: pid %d, not 1", (int)getpid());
  wl_check(&c, getsid(0) == 1, "root: session %d, not 1", (int)getsid(0));
  wl_check(&c, counter >= before, "root: counter went back from %lu to %lu", before, counter);
  wl_check(&c, kill(echo, 0) == 0, "root: echo %d is gone", (int)echo);
  wl_check(&c, round_trip(0x41), "root: echo does not answer after the restore");
  int left = -1;
  for (int i = 0; i < 200 && (left = reap_strangers(echo, &reaped)) != 0; i++) wl_sleep_ms(10);
  wl_check(&c, left == 0, "root: %d children it did not make are still alive", left);
  if (!round_trip(0xfe)) wl_check(&c, 0, "root: echo did not take the last byte");
  wl_check_reaped(&c, echo, "echo", 5000);
  wl_log("root: reaped %d children it did not make", reaped);
  return wl_check_result("root", &c);
}
