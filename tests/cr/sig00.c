/* sig00: signal state.
 *   dispositions: SIGUSR2 -> SA_SIGINFO|SA_RESTART handler with sa_mask
 *                 {SIGHUP, SIGALRM}; SIGINT ignored; SIGTERM default;
 *                 SIGRTMIN+1 SA_SIGINFO; SIGRTMIN+2 SA_SIGINFO|SA_NODEFER;
 *                 SIGWINCH SA_SIGINFO|SA_ONSTACK|SA_RESTART;
 *   blocked:      {SIGUSR2, SIGRTMIN+1, SIGRTMIN+2, SIGWINCH, SIGALRM} in both
 *                 threads, thread A also blocks SIGUSR1;
 *   pending, shared:     sigqueue(self, SIGUSR2, 0x3333),
 *                        sigqueue(self, SIGRTMIN+1, 0x1111) and (.., 0x2222);
 *   pending, per-thread: pthread_sigqueue(A, SIGRTMIN+2, 0x4444),
 *                        pthread_kill(A, SIGWINCH);
 *   thread A has a sigaltstack.
 * After the restore: every disposition (all signals) equals what sigaction()
 * said before, masks and sigpending() are unchanged, sigaltstack() is
 * unchanged, and unblocking delivers every pending signal once, with
 * its si_value/si_code/si_pid (queued instances of one signal in queue order),
 * the SIGUSR2 handler runs with SIGHUP blocked and
 * the SIGWINCH handler runs on the alternate stack. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#define MAXLOG 16
struct delivery {
  int signo, code, value, on_altstack, hup_blocked;
  pid_t pid;
};
static __thread struct delivery dlog[MAXLOG];
static __thread volatile int ndlog;
static __thread char* altstack_lo;
static __thread size_t altstack_size;

static void handler(int sig, siginfo_t* si, void* uc) {
  (void)uc;
  char here;
  if (ndlog >= MAXLOG) return;
  struct delivery* d = &dlog[ndlog];
  d->signo = sig;
  d->code = si->si_code;
  d->value = si->si_value.sival_int;
  d->pid = si->si_pid;
  d->on_altstack = altstack_lo && &here >= altstack_lo && &here < altstack_lo + altstack_size;
  uint64_t cur = 0;
  syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, &cur, sizeof cur);
  d->hup_blocked = (cur >> (SIGHUP - 1)) & 1;
  ndlog++;
}

struct disp {
  int rc;
  void* handler;
  int flags;
  void (*restorer)(void);
  uint64_t mask;
};
static struct disp disp_before[_NSIG];

static uint64_t set_bits(const sigset_t* s) {
  uint64_t m = 0;
  for (int i = 1; i <= 64 && i < _NSIG; i++)
    if (sigismember(s, i) == 1) m |= 1ull << (i - 1);
  return m;
}

static void get_disp(int sig, struct disp* d) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  memset(d, 0, sizeof *d);
  d->rc = sigaction(sig, NULL, &sa);
  if (d->rc != 0) return;
  d->handler = (void*)sa.sa_handler;
  d->flags = sa.sa_flags;
  d->restorer = sa.sa_restorer;
  d->mask = set_bits(&sa.sa_mask);
}

static uint64_t blocked_now(void) {
  sigset_t s;
  pthread_sigmask(SIG_BLOCK, NULL, &s);
  return set_bits(&s);
}

static uint64_t pending_now(void) {
  sigset_t s;
  sigemptyset(&s);
  sigpending(&s);
  return set_bits(&s);
}

static uint64_t bit(int sig) {
  return 1ull << (sig - 1);
}

static pthread_t thread_a;
static pid_t tid_a;
static atomic_int a_ready, check_req, a_done;
static uint64_t mask_main, mask_a;
static stack_t ss_main, ss_a;
static struct wl_check chk_a;

/* Expects exactly the deliveries want[0..n). Different signals may run in any
 * order (the kernel stacks one frame per signal, so the last one set up runs
 * first), but instances of one queued signal must come in queue order. */
static void check_deliveries(struct wl_check* c, const char* who, const struct delivery* want,
                             int n) {
  wl_check(c, ndlog == n, "%s: %d signals delivered after unblocking, want %d", who, ndlog, n);
  int used[MAXLOG] = {0};
  for (int i = 0; i < n; i++) {
    const struct delivery* w = &want[i];
    const struct delivery* g = NULL;
    for (int j = 0; j < ndlog; j++)
      if (!used[j] && dlog[j].signo == w->signo) {
        used[j] = 1;
        g = &dlog[j];
        break;
      }
    if (!wl_check(c, g != NULL, "%s: signal %d (value 0x%x) was not delivered", who, w->signo,
                  w->value))
      continue;
    wl_check(c, g->code == w->code && g->pid == w->pid,
             "%s: signal %d: si_code %d si_pid %d, want si_code %d si_pid %d", who, w->signo,
             g->code, (int)g->pid, w->code, (int)w->pid);
    if (w->code == SI_QUEUE)
      wl_check(c, g->value == w->value, "%s: signal %d si_value 0x%x, want 0x%x (queue order)", who,
               g->signo, g->value, w->value);
    if (w->on_altstack)
      wl_check(c, g->on_altstack, "%s: signal %d did not run on the alternate stack", who,
               g->signo);
    if (w->hup_blocked)
      wl_check(c, g->hup_blocked, "%s: signal %d ran without SIGHUP blocked (sa_mask lost)", who,
               g->signo);
  }
}

static void check_stack(struct wl_check* c, const char* who, const stack_t* want) {
  stack_t now;
  memset(&now, 0, sizeof now);
  if (!wl_check(c, sigaltstack(NULL, &now) == 0, "%s: sigaltstack: %s", who, strerror(errno)))
    return;
  int same = now.ss_flags == want->ss_flags;
  if (!(want->ss_flags & SS_DISABLE))
    same = same && now.ss_sp == want->ss_sp && now.ss_size == want->ss_size;
  wl_check(c, same, "%s: sigaltstack sp %p size %zu flags 0x%x, was sp %p size %zu flags 0x%x", who,
           now.ss_sp, (size_t)now.ss_size, now.ss_flags, want->ss_sp, (size_t)want->ss_size,
           want->ss_flags);
}

static void* thread_a_main(void* arg) {
  (void)arg;
  tid_a = wl_gettid();
  wl_check_init(&chk_a);
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &s, NULL);
  size_t sz = 64 * 1024;
  char* mem = malloc(sz);
  if (!mem) wl_die("main", "malloc");
  stack_t ss = {.ss_sp = mem, .ss_size = sz, .ss_flags = 0};
  if (sigaltstack(&ss, NULL) != 0) wl_die("main", "thread A: sigaltstack: %s", strerror(errno));
  altstack_lo = mem;
  altstack_size = sz;
  sigaltstack(NULL, &ss_a);
  mask_a = blocked_now();
  atomic_store(&a_ready, 1);
  while (!atomic_load(&check_req)) wl_sleep_ms(5);

  struct wl_check* c = &chk_a;
  char who[32];
  snprintf(who, sizeof who, "thread A (tid %d)", (int)tid_a);
  wl_check(c, wl_gettid() == tid_a, "%s: gettid %d", who, (int)wl_gettid());
  check_stack(c, who, &ss_a);
  uint64_t m = blocked_now();
  wl_check(c, m == mask_a, "%s: blocked mask 0x%llx, was 0x%llx", who, (unsigned long long)m,
           (unsigned long long)mask_a);
  uint64_t want_pending = bit(SIGUSR2) | bit(SIGRTMIN + 1) | bit(SIGRTMIN + 2) | bit(SIGWINCH);
  uint64_t p = pending_now();
  wl_check(c, p == want_pending, "%s: sigpending 0x%llx, want 0x%llx", who, (unsigned long long)p,
           (unsigned long long)want_pending);
  sigemptyset(&s);
  sigaddset(&s, SIGRTMIN + 2);
  sigaddset(&s, SIGWINCH);
  pthread_sigmask(SIG_UNBLOCK, &s, NULL);
  struct delivery want[2] = {
      {.signo = SIGWINCH, .code = SI_TKILL, .pid = getpid(), .on_altstack = 1},
      {.signo = SIGRTMIN + 2, .code = SI_QUEUE, .value = 0x4444, .pid = getpid()},
  };
  check_deliveries(c, who, want, 2);
  atomic_store(&a_done, 1);
  return NULL;
}

static void set_disp(int sig, void* h, int flags, int mask1, int mask2) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  if (flags & SA_SIGINFO)
    sa.sa_sigaction = (void (*)(int, siginfo_t*, void*))h;
  else
    sa.sa_handler = (void (*)(int))h;
  sa.sa_flags = flags;
  sigemptyset(&sa.sa_mask);
  if (mask1) sigaddset(&sa.sa_mask, mask1);
  if (mask2) sigaddset(&sa.sa_mask, mask2);
  if (sigaction(sig, &sa, NULL) != 0) wl_die("main", "sigaction(%d): %s", sig, strerror(errno));
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  set_disp(SIGUSR2, (void*)handler, SA_SIGINFO | SA_RESTART, SIGHUP, SIGALRM);
  set_disp(SIGINT, (void*)SIG_IGN, 0, 0, 0);
  set_disp(SIGTERM, (void*)SIG_DFL, 0, 0, 0);
  set_disp(SIGRTMIN + 1, (void*)handler, SA_SIGINFO, 0, 0);
  set_disp(SIGRTMIN + 2, (void*)handler, SA_SIGINFO | SA_NODEFER, 0, 0);
  set_disp(SIGWINCH, (void*)handler, SA_SIGINFO | SA_ONSTACK | SA_RESTART, 0, 0);

  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGUSR2);
  sigaddset(&s, SIGRTMIN + 1);
  sigaddset(&s, SIGRTMIN + 2);
  sigaddset(&s, SIGWINCH);
  sigaddset(&s, SIGALRM);
  pthread_sigmask(SIG_BLOCK, &s, NULL);

  if (pthread_create(&thread_a, NULL, thread_a_main, NULL) != 0) wl_die("main", "pthread_create");
  while (!atomic_load(&a_ready)) wl_sleep_ms(1);

  union sigval v;
  v.sival_int = 0x3333;
  if (sigqueue(getpid(), SIGUSR2, v) != 0) wl_die("main", "sigqueue: %s", strerror(errno));
  v.sival_int = 0x1111;
  if (sigqueue(getpid(), SIGRTMIN + 1, v) != 0) wl_die("main", "sigqueue: %s", strerror(errno));
  v.sival_int = 0x2222;
  if (sigqueue(getpid(), SIGRTMIN + 1, v) != 0) wl_die("main", "sigqueue: %s", strerror(errno));
  v.sival_int = 0x4444;
  if (pthread_sigqueue(thread_a, SIGRTMIN + 2, v) != 0) wl_die("main", "pthread_sigqueue");
  if (pthread_kill(thread_a, SIGWINCH) != 0) wl_die("main", "pthread_kill");

  for (int i = 1; i < _NSIG; i++) get_disp(i, &disp_before[i]);
  mask_main = blocked_now();
  sigaltstack(NULL, &ss_main);
  uint64_t want_pending = bit(SIGUSR2) | bit(SIGRTMIN + 1);
  if (pending_now() != want_pending)
    wl_die("main", "sigpending 0x%llx before the dump, want 0x%llx",
           (unsigned long long)pending_now(), (unsigned long long)want_pending);
  wl_log("SIGRTMIN is %d; blocked 0x%llx; pending 0x%llx", SIGRTMIN, (unsigned long long)mask_main,
         (unsigned long long)want_pending);
  wl_ready("main");
  struct wl_check c;
  wl_check_init(&c);
  if (!wl_check(&c, wl_wait() == 0, "timeout waiting for SIGUSR1"))
    return wl_check_result("main", &c);

  for (int i = 1; i < _NSIG; i++) {
    struct disp now;
    get_disp(i, &now);
    const struct disp* b = &disp_before[i];
    if (b->rc != 0) continue;
    wl_check(&c,
             now.rc == 0 && now.handler == b->handler && now.flags == b->flags &&
                 now.restorer == b->restorer && now.mask == b->mask,
             "signal %d: handler %p flags 0x%x restorer %p mask 0x%llx, was %p 0x%x %p 0x%llx", i,
             now.handler, now.flags, (void*)now.restorer, (unsigned long long)now.mask, b->handler,
             b->flags, (void*)b->restorer, (unsigned long long)b->mask);
  }
  struct disp d;
  get_disp(SIGUSR2, &d);
  wl_check(&c,
           d.handler == (void*)handler &&
               (d.flags & (SA_SIGINFO | SA_RESTART)) == (SA_SIGINFO | SA_RESTART) &&
               d.mask == (bit(SIGHUP) | bit(SIGALRM)),
           "SIGUSR2: handler %p flags 0x%x mask 0x%llx, set to %p SA_SIGINFO|SA_RESTART {HUP,ALRM}",
           d.handler, d.flags, (unsigned long long)d.mask, (void*)handler);
  get_disp(SIGINT, &d);
  wl_check(&c, d.handler == (void*)SIG_IGN, "SIGINT: handler %p, want SIG_IGN", d.handler);
  get_disp(SIGTERM, &d);
  wl_check(&c, d.handler == (void*)SIG_DFL, "SIGTERM: handler %p, want SIG_DFL", d.handler);

  uint64_t m = blocked_now();
  wl_check(&c, m == mask_main, "main: blocked mask 0x%llx, was 0x%llx", (unsigned long long)m,
           (unsigned long long)mask_main);
  uint64_t p = pending_now();
  wl_check(&c, p == want_pending, "main: sigpending 0x%llx, want 0x%llx", (unsigned long long)p,
           (unsigned long long)want_pending);
  check_stack(&c, "main", &ss_main);

  atomic_store(&check_req, 1);
  for (int t = 0; t < 500 && !atomic_load(&a_done); t++) wl_sleep_ms(10);
  if (wl_check(&c, atomic_load(&a_done), "thread A did not answer")) {
    pthread_join(thread_a, NULL);
    if (chk_a.failures) wl_check(&c, 0, "%s", chk_a.why);
  }

  sigemptyset(&s);
  sigaddset(&s, SIGUSR2);
  sigaddset(&s, SIGRTMIN + 1);
  pthread_sigmask(SIG_UNBLOCK, &s, NULL);
  struct delivery want[3] = {
      {.signo = SIGUSR2, .code = SI_QUEUE, .value = 0x3333, .pid = getpid(), .hup_blocked = 1},
      {.signo = SIGRTMIN + 1, .code = SI_QUEUE, .value = 0x1111, .pid = getpid()},
      {.signo = SIGRTMIN + 1, .code = SI_QUEUE, .value = 0x2222, .pid = getpid()},
  };
  check_deliveries(&c, "main", want, 3);
  p = pending_now();
  wl_check(&c, p == 0, "main: sigpending 0x%llx after every delivery, want 0",
           (unsigned long long)p);
  return wl_check_result("main", &c);
}
