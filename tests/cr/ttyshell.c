/* ttyshell: the acceptance test of terminals. An interactive bash runs under a pty
 * whose master this driver holds, outside the dumped tree; it gets a background job
 * (`sleep 1000 &`) and some history. The driver dumps bash's tree with kleap (which
 * kills it), waits until every pid is gone, restores it, and then types `jobs` and a
 * history recall through the master and checks what bash answers, and that the
 * background job is the same process, still running.
 *
 *   ttyshell --kleap PATH [--shell PATH]
 * Exits 0 on success, 1 on failure, 77 when there is no shell to test. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static int master = -1;
static char seen[65536];
static size_t seen_len;
static pid_t tree[64];
static int ntree;

static void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "ttyshell: FAIL: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n--- terminal output so far:\n%.*s\n---\n", (int)seen_len, seen);
  va_end(ap);
  for (int i = 0; i < ntree; ++i) kill(tree[i], SIGKILL);
  exit(1);
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads the master until `want` appears after offset `from`; returns where it ends. */
static size_t expect(size_t from, const char* want, int ms) {
  long end = now_ms() + ms;
  for (;;) {
    seen[seen_len] = 0;
    char* hit = from <= seen_len ? strstr(seen + from, want) : NULL;
    if (hit) return (size_t)(hit - seen) + strlen(want);
    long left = end - now_ms();
    if (left <= 0) die("no '%s' from the shell within %d ms", want, ms);
    struct pollfd p = {master, POLLIN, 0};
    if (poll(&p, 1, (int)left) <= 0) continue;
    ssize_t n = read(master, seen + seen_len, sizeof seen - 1 - seen_len);
    if (n > 0) seen_len += (size_t)n;
    if (n <= 0) usleep(10000);
    if (seen_len >= sizeof seen - 1) die("too much output");
  }
}

static void type(const char* s) {
  if (write(master, s, strlen(s)) != (ssize_t)strlen(s)) die("write: %s", strerror(errno));
}

static int run(const char* const argv[], char* out, size_t n) {
  int p[2];
  if (pipe(p) < 0) die("pipe");
  pid_t pid = fork();
  if (pid == 0) {
    dup2(p[1], 1);
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    close(p[0]);
    close(master);
    execv(argv[0], (char* const*)argv);
    _exit(127);
  }
  close(p[1]);
  size_t len = 0;
  ssize_t r;
  while ((r = read(p[0], out + len, n - 1 - len)) > 0) len += (size_t)r;
  out[len] = 0;
  close(p[0]);
  int st;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void collect(pid_t pid) {
  if (ntree < 64) tree[ntree++] = pid;
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, pid);
  FILE* f = fopen(path, "r");
  if (!f) return;
  int c;
  while (fscanf(f, "%d", &c) == 1) collect(c);
  fclose(f);
}

static int alive(pid_t pid) {
  char path[32];
  snprintf(path, sizeof path, "/proc/%d", pid);
  return access(path, F_OK) == 0;
}

int main(int argc, char** argv) {
  const char* kleap = NULL;
  const char* shell = "/bin/bash";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--kleap")) kleap = argv[i + 1];
    if (!strcmp(argv[i], "--shell")) shell = argv[i + 1];
  }
  if (!kleap) {
    fprintf(stderr, "usage: ttyshell --kleap PATH [--shell PATH]\n");
    return 2;
  }
  if (access(shell, X_OK) != 0) {
    printf("ttyshell: SKIP: no %s\n", shell);
    return 77;
  }
  master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
  int unlock = 0;
  unsigned index = 0;
  if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &index) < 0)
    die("open /dev/ptmx: %s", strerror(errno));
  char slave_path[64];
  snprintf(slave_path, sizeof slave_path, "/dev/pts/%u", index);
  struct winsize ws = {30, 100, 0, 0};
  ioctl(master, TIOCSWINSZ, &ws);

  pid_t sh = fork();
  if (sh == 0) {
    setsid();
    int s = open(slave_path, O_RDWR | O_NOCTTY);
    if (s < 0 || ioctl(s, TIOCSCTTY, 0) < 0) _exit(126);
    dup2(s, 0);
    dup2(s, 1);
    dup2(s, 2);
    if (s > 2) close(s);
    char* env[] = {"PS1=sh$ ",           "TERM=dumb", "HISTFILE=/dev/null",
                   "PATH=/usr/bin:/bin", "LANG=C",    NULL};
    execle(shell, shell, "--norc", "--noprofile", "--noediting", "-i", (char*)NULL, env);
    _exit(127);
  }
  size_t at = expect(0, "sh$ ", 10000);
  type("sleep 1000 &\n");
  at = expect(at, "sh$ ", 5000);
  type("echo hist-$((6*7))-marker\n");
  at = expect(at, "hist-42-marker", 5000);
  at = expect(at, "sh$ ", 5000);
  type("cd /tmp; echo ready-$((1+1))\n");
  at = expect(at, "ready-2", 5000);
  at = expect(at, "sh$ ", 5000);
  usleep(200000);  // the shell is back in its read

  collect(sh);
  if (ntree != 2) die("the shell's tree has %d processes, want 2 (bash, sleep)", ntree);
  pid_t sleeper = tree[1];
  char out[8192], arg[32], dir[] = "/tmp/kleap-ttyshell.XXXXXX";
  if (!mkdtemp(dir)) die("mkdtemp");
  snprintf(arg, sizeof arg, "%d", sh);
  const char* check[] = {kleap, "check", "--tree", arg, NULL};
  if (run(check, out, sizeof out) != 0) die("kleap check refuses the shell:\n%s", out);
  const char* dump[] = {kleap, "dump", "--tree", arg, "--images", dir, NULL};
  if (run(dump, out, sizeof out) != 0) die("kleap dump failed:\n%s", out);
  int st;
  waitpid(sh, &st, 0);
  for (long end = now_ms() + 30000; alive(sh) || alive(sleeper);)
    if (now_ms() > end)
      die("the shell's pids are still in /proc 30 s after the dump");
    else
      usleep(20000);
  // The slave is closed now: what the master reads meanwhile is dropped.
  const char* restore[] = {kleap, "restore", "--images", dir, "--detach", NULL};
  if (run(restore, out, sizeof out) != 0) die("kleap restore failed:\n%s", out);
  printf("ttyshell: restored %d (sleep %d)\n", sh, sleeper);
  tcflush(master, TCIFLUSH);
  seen_len = at = 0;

  type("jobs\n");
  at = expect(at, "Running", 5000);
  at = expect(at, "sleep 1000 &", 5000);
  at = expect(at, "sh$ ", 5000);
  type("!?marker?\n");
  at = expect(at, "hist-42-marker", 5000);
  at = expect(at, "sh$ ", 5000);
  type("echo $$ $! $(pwd) done-$((2+3))\n");
  char want[128];
  snprintf(want, sizeof want, "%d %d /tmp done-5", sh, sleeper);
  at = expect(at, want, 5000);
  char comm[64] = "", path[64];
  snprintf(path, sizeof path, "/proc/%d/comm", sleeper);
  FILE* f = fopen(path, "r");
  if (!f || !fgets(comm, sizeof comm, f) || strcmp(comm, "sleep\n") != 0)
    die("the background job %d is gone", sleeper);
  fclose(f);
  printf("ttyshell: PASS\n%.*s\n", (int)seen_len, seen);
  kill(sleeper, SIGKILL);
  kill(sh, SIGKILL);
  const char* rm[] = {"/bin/rm", "-rf", dir, NULL};
  run(rm, out, sizeof out);
  return 0;
}
