/* stop00: stopped processes (SIGSTOP, or ^Z's SIGTSTP).
 *   a child with a second thread, stopped by SIGSTOP, its stop not yet waited for
 *   (waitid WNOWAIT);
 *   a child stopped by SIGTSTP (its default action), its stop not yet waited for either.
 * Each child is in a process group of its own.
 * After the restore both are stopped again (State: T), each thread too, and waitid
 * reports each with the signal that stopped it (SIGSTOP, SIGTSTP), before the root lets
 * them go on with SIGCONT; then each answers (its own checks run) and exits. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static void* spin(void* arg) {
  (void)arg;
  for (;;) pause();
  return NULL;
}

static int child_main(const char* role, int threaded) {
  /* A process group of its own, with its parent in another of the same session: not an
   * orphaned group, whose members the kernel keeps from stopping on SIGTSTP. */
  if (setpgid(0, 0) != 0) wl_die(role, "setpgid: %s", strerror(errno));
  pthread_t t;
  if (threaded && pthread_create(&t, NULL, spin, NULL) != 0) wl_die(role, "pthread_create");
  wl_child_ready();
  struct wl_check c;
  if (wl_await(role, &c) != 0) return 1;
  return wl_check_result(role, &c);
}

/* The state letter of every thread of pid, e.g. "TT". */
static void states(pid_t pid, char* out, size_t n) {
  char path[128];
  size_t o = 0;
  out[0] = '\0';
  for (int i = 0; i < 2; i++) {
    pid_t tid = i == 0 ? pid : 0;
    if (i == 1) {
      /* the second thread: the other entry of /proc/PID/task */
      char cmd[160];
      snprintf(cmd, sizeof cmd, "ls /proc/%d/task", pid);
      FILE* f = popen(cmd, "r");
      int x;
      while (f && fscanf(f, "%d", &x) == 1)
        if (x != pid) tid = x;
      if (f) pclose(f);
      if (!tid) break;
    }
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", pid, tid);
    FILE* f = fopen(path, "r");
    char buf[512] = "";
    if (f) {
      if (!fgets(buf, sizeof buf, f)) buf[0] = '\0';
      fclose(f);
    }
    char* p = strrchr(buf, ')');
    if (o + 2 < n) out[o++] = p && p[1] == ' ' ? p[2] : '?';
    out[o] = '\0';
  }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t a = wl_fork();
  if (a < 0) wl_die("root", "fork: %s", strerror(errno));
  if (a == 0) return child_main("stopped", 1);
  pid_t b = wl_fork();
  if (b < 0) wl_die("root", "fork: %s", strerror(errno));
  if (b == 0) return child_main("tstp", 0);
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("root", "%s", why);
  siginfo_t si;
  if (kill(a, SIGSTOP) != 0 || waitid(P_PID, a, &si, WSTOPPED | WNOWAIT) != 0 ||
      kill(b, SIGTSTP) != 0 || waitid(P_PID, b, &si, WSTOPPED | WNOWAIT) != 0 ||
      si.si_status != SIGTSTP)
    wl_die("root", "stop the children: %s", strerror(errno));
  char sa[8], sb[8];
  states(a, sa, sizeof sa);
  states(b, sb, sizeof sb);
  if (strcmp(sa, "TT") != 0 || strcmp(sb, "T") != 0)
    wl_die("root", "the children are not stopped: %s %s", sa, sb);
  wl_ready("root stopped tstp");
  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  states(a, sa, sizeof sa);
  states(b, sb, sizeof sb);
  wl_check(&c, strcmp(sa, "TT") == 0, "the SIGSTOPped child's threads are '%s', want 'TT'", sa);
  wl_check(&c, strcmp(sb, "T") == 0, "the SIGTSTPped child is '%s', want 'T'", sb);
  /* Its stop was not waited for: the report is there. */
  memset(&si, 0, sizeof si);
  wl_check(&c,
           waitid(P_PID, a, &si, WSTOPPED | WNOHANG | WNOWAIT) == 0 && si.si_pid == a &&
               si.si_status == SIGSTOP,
           "the SIGSTOPped child's stop report: pid %d signal %d", (int)si.si_pid, si.si_status);
  memset(&si, 0, sizeof si);
  wl_check(&c,
           waitid(P_PID, b, &si, WSTOPPED | WNOHANG | WNOWAIT) == 0 && si.si_pid == b &&
               si.si_status == SIGTSTP,
           "the SIGTSTPped child's stop report: pid %d signal %d, want SIGTSTP", (int)si.si_pid,
           si.si_status);
  if (kill(a, SIGCONT) != 0 || kill(b, SIGCONT) != 0)
    wl_check(&c, 0, "SIGCONT: %s", strerror(errno));
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&c, 0, "root: %s", why);
  return wl_check_result("root", &c);
}
