/* eventfd00: eventfd objects.
 *   big:   eventfd(0, 0), then a write of a counter above 2^32 (from the pid);
 *   fd 40: dup(big), one object behind two fds;
 *   sem:   eventfd(N, EFD_SEMAPHORE|EFD_NONBLOCK|EFD_CLOEXEC), N from the pid;
 *   empty: eventfd(0, EFD_NONBLOCK);
 *   sem1:  eventfd(1, EFD_SEMAPHORE|EFD_NONBLOCK): a mode a read can't tell at once;
 *   shared with a child: eventfd(V, 0); the child adds 1 after the restore.
 * After the restore, for each fd: F_GETFL, F_GETFD and the fdinfo counter and mode
 * are what they were; then big reads its counter plus what was written through
 * fd 40, sem reads 1 exactly N times and then EAGAIN, empty reads EAGAIN and then
 * what is written, and the shared object reads V + 1 once the child is done. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "workload.h"

struct efd {
  const char* what;
  int fd;
  int fl, fdfl;
  char count[64], sem[16];
};

static void describe(struct efd* e, const char* role) {
  e->fl = fcntl(e->fd, F_GETFL);
  e->fdfl = fcntl(e->fd, F_GETFD);
  if (wl_fdinfo(e->fd, "eventfd-count:", e->count, sizeof e->count) != 1)
    wl_die(role, "%s: fd %d has no eventfd-count in fdinfo", e->what, e->fd);
  if (wl_fdinfo(e->fd, "eventfd-semaphore:", e->sem, sizeof e->sem) != 1)
    wl_skip("this kernel's fdinfo does not show EFD_SEMAPHORE (Linux < 6.3)");
}

static void compare(struct wl_check* c, const struct efd* b) {
  struct efd n = *b;
  n.fl = fcntl(b->fd, F_GETFL);
  if (!wl_check(c, n.fl >= 0, "%s: fd %d is not open", b->what, b->fd)) return;
  n.fdfl = fcntl(b->fd, F_GETFD);
  wl_fdinfo(b->fd, "eventfd-count:", n.count, sizeof n.count);
  wl_fdinfo(b->fd, "eventfd-semaphore:", n.sem, sizeof n.sem);
  wl_check(c, n.fl == b->fl, "%s: F_GETFL 0%o, was 0%o", b->what, n.fl, b->fl);
  wl_check(c, n.fdfl == b->fdfl, "%s: F_GETFD %d, was %d", b->what, n.fdfl, b->fdfl);
  wl_check(c, strcmp(n.count, b->count) == 0, "%s: eventfd-count %s, was %s", b->what, n.count,
           b->count);
  wl_check(c, strcmp(n.sem, b->sem) == 0, "%s: eventfd-semaphore %s, was %s", b->what, n.sem,
           b->sem);
}

static int read_u64(int fd, uint64_t* v) {
  return read(fd, v, sizeof *v) == (ssize_t)sizeof *v ? 0 : -1;
}
static int write_u64(int fd, uint64_t v) {
  return write(fd, &v, sizeof v) == (ssize_t)sizeof v ? 0 : -1;
}

static int child_main(struct efd shared, uint64_t v) {
  wl_child_ready();
  struct wl_check c;
  if (wl_await("child", &c) != 0) return 1;
  compare(&c, &shared);
  char want[64];
  snprintf(want, sizeof want, "%llx", (unsigned long long)v);
  wl_check(&c, strcmp(shared.count, want) == 0, "child: the counter was %s before, set %s",
           shared.count, want);
  wl_check(&c, write_u64(shared.fd, 1) == 0, "child: write 1: %s", strerror(errno));
  return wl_check_result("child", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  pid_t me = getpid();
  uint64_t big_v = 0x100000000ull * (uint64_t)(1 + me % 7) + (uint64_t)me;
  unsigned sem_n = 3 + (unsigned)(me % 5);
  uint64_t shared_v = 7 + (uint64_t)(me % 11);

  struct efd big = {"big", eventfd(0, 0), 0, 0, "", ""};
  if (big.fd < 0 || write_u64(big.fd, big_v) != 0) wl_die("main", "big: %s", strerror(errno));
  struct efd dup40 = {"fd 40 = dup(big)", dup2(big.fd, 40), 0, 0, "", ""};
  if (dup40.fd != 40) wl_die("main", "dup2: %s", strerror(errno));
  struct efd sem = {"sem", eventfd(sem_n, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC), 0, 0, "",
                    ""};
  struct efd empty = {"empty", eventfd(0, EFD_NONBLOCK), 0, 0, "", ""};
  struct efd sem1 = {"sem1", eventfd(1, EFD_SEMAPHORE | EFD_NONBLOCK), 0, 0, "", ""};
  struct efd shared = {"shared", eventfd((unsigned)shared_v, 0), 0, 0, "", ""};
  if (sem.fd < 0 || empty.fd < 0 || shared.fd < 0 || sem1.fd < 0)
    wl_die("main", "eventfd: %s", strerror(errno));
  struct efd* all[] = {&big, &dup40, &sem, &empty, &shared, &sem1};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
    describe(all[i], "main");
    wl_log("%s: fd %d flags 0%o fdflags %d count %s semaphore %s", all[i]->what, all[i]->fd,
           all[i]->fl, all[i]->fdfl, all[i]->count, all[i]->sem);
  }

  char want[64];
  snprintf(want, sizeof want, "%llx", (unsigned long long)big_v);
  if (strcmp(big.count, want) != 0)
    wl_die("main", "big: fdinfo counter %s, wrote %s", big.count, want);

  pid_t pid = wl_fork();
  if (pid < 0) wl_die("main", "fork: %s", strerror(errno));
  if (pid == 0) return child_main(shared, shared_v);
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("main", "%s", why);
  wl_ready("main child");
  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;

  /* shared: the child compares it, then adds 1 meanwhile; read below. */
  for (size_t i = 0; i < sizeof all / sizeof *all; i++)
    if (all[i] != &shared) compare(&c, all[i]);
  uint64_t v = 0;
  wl_check(&c, write_u64(dup40.fd, 5) == 0 && read_u64(big.fd, &v) == 0 && v == big_v + 5,
           "big: read %llu after adding 5 through fd 40, want %llu", (unsigned long long)v,
           (unsigned long long)(big_v + 5));
  unsigned got = 0;
  while (got <= sem_n && read_u64(sem.fd, &v) == 0) {
    if (!wl_check(&c, v == 1, "sem: read %llu in semaphore mode, want 1", (unsigned long long)v))
      break;
    got++;
  }
  wl_check(&c, got == sem_n && errno == EAGAIN, "sem: %u reads of 1 then %s, want %u then EAGAIN",
           got, strerror(errno), sem_n);
  errno = 0;
  wl_check(&c, read_u64(empty.fd, &v) != 0 && errno == EAGAIN, "empty: read gave %s, want EAGAIN",
           errno ? strerror(errno) : "a value");
  wl_check(&c, write_u64(empty.fd, 9) == 0 && read_u64(empty.fd, &v) == 0 && v == 9,
           "empty: read %llu after writing 9", (unsigned long long)v);
  wl_check(&c,
           write_u64(sem1.fd, 1) == 0 && read_u64(sem1.fd, &v) == 0 && v == 1 &&
               read_u64(sem1.fd, &v) == 0 && v == 1 && read_u64(sem1.fd, &v) != 0,
           "sem1: with 2 in it, not two reads of 1 and then nothing");
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&c, 0, "main: %s", why);
  v = 0;
  wl_check(&c, read_u64(shared.fd, &v) == 0 && v == shared_v + 1,
           "shared: read %llu after the child added 1, want %llu", (unsigned long long)v,
           (unsigned long long)(shared_v + 1));
  return wl_check_result("main", &c);
}
