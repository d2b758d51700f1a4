/* epoll00: epoll instances.
 *   ep watches: an eventfd with a count (EPOLLIN), the same eventfd again as fd 50
 *   (dup; a second registration), a pipe's read end with data (EPOLLIN|EPOLLET), its
 *   write end (EPOLLOUT), an empty eventfd (EPOLLIN|EPOLLONESHOT) and a nested epoll
 *   (EPOLLIN), each with data from the pid; an eventfd with a count registered as fd 60,
 *   a dup, whose number was then taken by another eventfd (dup2): the registration stays
 *   under 60 with the first file; ep is O_NONBLOCK.
 *   inner (EPOLL_CLOEXEC) watches an eventfd with a count.
 * Nobody waits on them before the dump. After the restore: F_GETFL, F_GETFD and the
 * fdinfo registrations (fd, events, data) of both are what they were; epoll_wait on ep
 * returns exactly the ready registrations with their events and data; a second wait
 * no longer has the edge-triggered one; a write to the empty eventfd reports the
 * one-shot one once; fd 50's registration can be modified by its number and e1's
 * deleted; fd 60's can't be deleted by its number (ENOENT: the number holds another
 * file), as before; inner returns its eventfd. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "workload.h"

struct reg {
  const char* what;
  int fd;
  uint32_t events;
  uint64_t data;
  int ready; /* reported by the first wait after the restore */
};

struct epfd {
  const char* what;
  int fd;
  int fl, fdfl;
  char tfds[2048]; /* the tfd lines up to " pos:" (inodes of new pipes differ) */
};

static void describe(struct epfd* e) {
  e->fl = fcntl(e->fd, F_GETFL);
  e->fdfl = fcntl(e->fd, F_GETFD);
  if (wl_fdinfo_sorted(e->fd, "tfd:", " pos:", e->tfds, sizeof e->tfds) < 1)
    wl_die("main", "%s: fd %d: nothing in fdinfo", e->what, e->fd);
}

static void add(int ep, struct reg* r) {
  struct epoll_event ev = {.events = r->events, .data.u64 = r->data};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, r->fd, &ev) != 0)
    wl_die("main", "epoll_ctl ADD %s: %s", r->what, strerror(errno));
}

/* Waits once without blocking; checks the result is exactly the regs marked in want. */
static void expect_wait(struct wl_check* c, const char* when, int ep, struct reg* regs, int n,
                        const int* want) {
  struct epoll_event evs[16];
  int got = epoll_wait(ep, evs, 16, 0);
  int seen[16] = {0};
  int expected = 0;
  for (int i = 0; i < n; i++) expected += want[i];
  wl_check(c, got == expected, "%s: epoll_wait returned %d events, want %d", when, got, expected);
  for (int k = 0; k < got; k++) {
    int match = -1;
    for (int i = 0; i < n; i++)
      if (regs[i].data == evs[k].data.u64) match = i;
    if (!wl_check(c, match >= 0 && want[match], "%s: unexpected event %#x data %#llx", when,
                  evs[k].events, (unsigned long long)evs[k].data.u64))
      continue;
    seen[match] = 1;
    uint32_t want_ev = regs[match].events & (EPOLLIN | EPOLLOUT);
    wl_check(c, evs[k].events == want_ev, "%s: %s: events %#x, want %#x", when, regs[match].what,
             evs[k].events, want_ev);
  }
  for (int i = 0; i < n; i++)
    if (want[i]) wl_check(c, seen[i], "%s: %s was not reported", when, regs[i].what);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  uint64_t base = (uint64_t)getpid() << 32;
  int e1 = eventfd(3, 0), e2 = eventfd(0, EFD_NONBLOCK), e3 = eventfd(1, 0), p[2];
  int e4 = eventfd(2, 0), e5 = eventfd(0, 0);
  if (e1 < 0 || e2 < 0 || e3 < 0 || e4 < 0 || e5 < 0 || pipe(p) != 0)
    wl_die("main", "setup: %s", strerror(errno));
  if (write(p[1], "abc", 3) != 3 || dup2(e1, 50) != 50 || dup2(e4, 60) != 60)
    wl_die("main", "setup: %s", strerror(errno));
  struct epfd ep = {"ep", epoll_create1(0), 0, 0, ""};
  struct epfd inner = {"inner", epoll_create1(EPOLL_CLOEXEC), 0, 0, ""};
  if (ep.fd < 0 || inner.fd < 0 || fcntl(ep.fd, F_SETFL, O_NONBLOCK) != 0)
    wl_die("main", "epoll_create1: %s", strerror(errno));
  struct reg regs[] = {
      {"e1", e1, EPOLLIN, base | 1, 1},
      {"fd 50 = dup(e1)", 50, EPOLLIN, base | 2, 1},
      {"pipe read end (ET)", p[0], EPOLLIN | EPOLLET, base | 3, 1},
      {"pipe write end", p[1], EPOLLOUT, base | 4, 1},
      {"e2 (empty, ONESHOT)", e2, EPOLLIN | EPOLLONESHOT, base | 5, 0},
      {"inner epoll", inner.fd, EPOLLIN, base | 6, 1},
      {"e4 as fd 60, reused since", 60, EPOLLIN, base | 8, 1},
  };
  int nr = sizeof regs / sizeof *regs;
  struct reg in_reg = {"e3", e3, EPOLLIN, base | 7, 1};
  add(inner.fd, &in_reg);
  for (int i = 0; i < nr; i++) add(ep.fd, &regs[i]);
  if (dup2(e5, 60) != 60) wl_die("main", "dup2 60: %s", strerror(errno));
  describe(&ep);
  describe(&inner);
  wl_log("ep fd %d: %s", ep.fd, ep.tfds);
  wl_log("inner fd %d: %s", inner.fd, inner.tfds);
  wl_ready("main");
  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  struct epfd* eps[] = {&ep, &inner};
  for (int i = 0; i < 2; i++) {
    struct epfd n = *eps[i];
    describe(&n);
    wl_check(&c, n.fl == eps[i]->fl, "%s: F_GETFL 0%o, was 0%o", n.what, n.fl, eps[i]->fl);
    wl_check(&c, n.fdfl == eps[i]->fdfl, "%s: F_GETFD %d, was %d", n.what, n.fdfl, eps[i]->fdfl);
    wl_check(&c, strcmp(n.tfds, eps[i]->tfds) == 0, "%s: registrations {%s}, were {%s}", n.what,
             n.tfds, eps[i]->tfds);
  }
  int want[8];
  for (int i = 0; i < nr; i++) want[i] = regs[i].ready;
  expect_wait(&c, "first wait", ep.fd, regs, nr, want);
  want[2] = 0; /* edge-triggered: reported once */
  expect_wait(&c, "second wait", ep.fd, regs, nr, want);
  uint64_t one = 1;
  wl_check(&c, write(e2, &one, sizeof one) == sizeof one, "e2: write: %s", strerror(errno));
  want[4] = 1;
  expect_wait(&c, "after a write to e2", ep.fd, regs, nr, want);
  want[4] = 0; /* one-shot */
  expect_wait(&c, "then", ep.fd, regs, nr, want);
  struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = regs[1].data};
  wl_check(&c, epoll_ctl(ep.fd, EPOLL_CTL_MOD, 50, &ev) == 0, "MOD fd 50: %s", strerror(errno));
  wl_check(&c, epoll_ctl(ep.fd, EPOLL_CTL_DEL, e1, NULL) == 0, "DEL e1: %s", strerror(errno));
  errno = 0;
  wl_check(&c, epoll_ctl(ep.fd, EPOLL_CTL_DEL, 60, NULL) == -1 && errno == ENOENT,
           "DEL fd 60 (another file now): %s, want ENOENT", strerror(errno));
  struct reg inner_regs[] = {in_reg};
  int inner_want[] = {1};
  expect_wait(&c, "inner", inner.fd, inner_regs, 1, inner_want);
  return wl_check_result("main", &c);
}
