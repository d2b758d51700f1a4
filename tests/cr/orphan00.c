/* orphan00: a subreaper and the orphans it inherits, in sessions and process groups
 * whose leaders are gone (the seeds' "restore an arbitrary process tree").
 *   root     PR_SET_CHILD_SUBREAPER; forks B and E, waits for both.
 *   B        setsid(), forks C, exits (a daemon's double fork): C is reparented to
 *            the root, in session B and group B, whose leader no longer exists.
 *   C        forks D (same session and group, its own child).
 *   E        setpgid(0, 0), forks F, exits: F is reparented to the root, in the
 *            root's session and in group E, whose leader no longer exists.
 * After SIGUSR1 (forwarded by the root to C and F, by C to D):
 *   C, F     their parent is the root; session and group as before; B and E gone;
 *   D        its parent is C, session and group B;
 *   root     reaps C and F, which must be its children and exit 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "workload.h"

static int ready_pipe[2];

/* The ids an orphan must keep, as it saw them before the dump. */
struct ids {
  pid_t pid, ppid, sid, pgid;
};

static struct ids my_ids(void) {
  struct ids i = {getpid(), getppid(), getsid(0), getpgid(0)};
  return i;
}

static void tell_ready(void) {
  pid_t me = getpid();
  if (write(ready_pipe[1], &me, sizeof me) != (ssize_t)sizeof me) _exit(3);
}

/* Waits for SIGUSR1, checks that the ids are still `want` and that the leader `gone`
 * doesn't exist, reaps `child` (when > 0), and reports as `role`. */
static int orphan_checks(const char* role, struct ids want, pid_t gone, pid_t child) {
  struct wl_check c;
  if (wl_await(role, &c) < 0) return 1;
  if (child > 0) kill(child, SIGUSR1);
  struct ids now = my_ids();
  wl_check(&c, now.pid == want.pid, "pid %d, was %d", now.pid, want.pid);
  wl_check(&c, now.ppid == want.ppid, "parent %d, was %d", now.ppid, want.ppid);
  wl_check(&c, now.sid == want.sid, "session %d, was %d", now.sid, want.sid);
  wl_check(&c, now.pgid == want.pgid, "process group %d, was %d", now.pgid, want.pgid);
  wl_check(&c, kill(gone, 0) != 0 && errno == ESRCH, "the gone leader %d exists again (kill: %s)",
           gone, strerror(errno));
  if (child > 0) wl_check_reaped(&c, child, "child", 10000);
  return wl_check_result(role, &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  const char* role = "root";
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) wl_die(role, "subreaper: %s", strerror(errno));
  if (pipe(ready_pipe) != 0) wl_die(role, "pipe: %s", strerror(errno));
  pid_t root = getpid();

  pid_t b = fork();
  if (b < 0) wl_die(role, "fork: %s", strerror(errno));
  if (b == 0) {
    if (setsid() < 0) _exit(2);
    pid_t c = fork();
    if (c < 0) _exit(2);
    if (c == 0) {
      /* C: wait until B is gone and we are the root's. */
      while (getppid() != root) wl_sleep_ms(5);
      pid_t d = fork();
      if (d < 0) _exit(2);
      if (d == 0) {
        struct ids want = my_ids();
        tell_ready();
        _exit(orphan_checks("D", want, want.sid, 0));
      }
      struct ids want = my_ids();
      tell_ready();
      _exit(orphan_checks("C", want, want.sid, d));
    }
    _exit(0);
  }
  pid_t e = fork();
  if (e < 0) wl_die(role, "fork: %s", strerror(errno));
  if (e == 0) {
    if (setpgid(0, 0) < 0) _exit(2);
    pid_t f = fork();
    if (f < 0) _exit(2);
    if (f == 0) {
      while (getppid() != root) wl_sleep_ms(5);
      struct ids want = my_ids();
      tell_ready();
      _exit(orphan_checks("F", want, want.pgid, 0));
    }
    _exit(0);
  }
  int st;
  if (waitpid(b, &st, 0) != b || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    wl_die(role, "B (%d) failed: %#x", b, st);
  if (waitpid(e, &st, 0) != e || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    wl_die(role, "E (%d) failed: %#x", e, st);
  pid_t orphans[3];
  for (int i = 0; i < 3; i++)
    if (wl_read_full(ready_pipe[0], &orphans[i], sizeof orphans[i]) != sizeof orphans[i])
      wl_die(role, "the orphans did not get ready");
  /* C and F are ours (D is C's): the two that are not D. */
  pid_t mine[2];
  int n = 0;
  for (int i = 0; i < 3; i++) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/stat", orphans[i]);
    FILE* f = fopen(path, "r");
    if (!f || !fgets(line, sizeof line, f)) wl_die(role, "read %s", path);
    fclose(f);
    int ppid = 0;
    char* rp = strrchr(line, ')');
    if (!rp || sscanf(rp + 2, "%*c %d", &ppid) != 1) wl_die(role, "parse %s", path);
    if (ppid == root && n < 2) mine[n++] = orphans[i];
  }
  if (n != 2) wl_die(role, "%d of the orphans are mine, want 2", n);
  wl_log("B %d and E %d are gone; orphans %d %d %d", b, e, orphans[0], orphans[1], orphans[2]);
  wl_ready("root C D F");

  struct wl_check c;
  if (wl_await(role, &c) < 0) return 1;
  for (int i = 0; i < 2; i++) kill(mine[i], SIGUSR1);
  wl_check(&c, prctl(PR_GET_CHILD_SUBREAPER, &n) == 0 && n == 1, "not a subreaper (%d)", n);
  for (int i = 0; i < 2; i++) wl_check_reaped(&c, mine[i], "orphan", 10000);
  return wl_check_result(role, &c);
}
