/* aio00: kernel AIO contexts (io_setup, not POSIX aio).
 *   a: io_setup(32); five pwrites on a file in STATEDIR submitted and reaped
 *      (head 5), then a pwrite, a pread and a pwrite whose data field is a
 *      recognisable tag, completed and left in the ring;
 *   b: io_setup(8); 125 pwrites submitted and reaped one by one, then three more left
 *      in the ring, so its pending events wrap around the end of the ring.
 * After the restore, for each context: the ring header (nr, head, tail) is what it
 * was; io_getevents returns exactly the pending events, in order, with their data,
 * obj and res; the pread's buffer holds what it read; then a new pwrite on the same
 * context id completes and lands in the file, and io_destroy succeeds. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

struct ring {
  unsigned id, nr, head, tail, magic, compat, incompat, hlen;
  struct io_event ev[];
};

struct want {
  uint64_t data, obj;
  int64_t res;
};

struct ctx {
  const char* what;
  aio_context_t id;
  unsigned nr, head, tail;
  int npending;
  struct want pending[8];
};

static int fd;
static struct iocb cbs[16];
static char bufs[16][64];
static char readbuf[64];

static long io_setup_(unsigned n, aio_context_t* id) {
  return syscall(SYS_io_setup, n, id);
}
static long io_submit_(aio_context_t id, long n, struct iocb** p) {
  return syscall(SYS_io_submit, id, n, p);
}
/* A zero timeout, as the kernel's timespec of this ABI (two longs). */
static long io_getevents_(aio_context_t id, long min, long n, struct io_event* ev) {
  long ts[2] = {0, 0};
  return syscall(SYS_io_getevents, id, min, n, ev, ts);
}

static void prep(struct iocb* cb, int opcode, void* buf, size_t len, off_t off, uint64_t data) {
  memset(cb, 0, sizeof *cb);
  cb->aio_lio_opcode = (uint16_t)opcode;
  cb->aio_fildes = (uint32_t)fd;
  cb->aio_buf = (uint64_t)(uintptr_t)buf;
  cb->aio_nbytes = len;
  cb->aio_offset = off;
  cb->aio_data = data;
}

static void submit1(struct ctx* c, struct iocb* cb) {
  struct iocb* p = cb;
  if (io_submit_(c->id, 1, &p) != 1) wl_die("main", "%s: io_submit: %s", c->what, strerror(errno));
}

static void reap(struct ctx* c, long n) {
  struct io_event ev[8];
  if (io_getevents_(c->id, n, n, ev) != n)
    wl_die("main", "%s: io_getevents %ld: %s", c->what, n, strerror(errno));
}

/* Leaves cb completed in the ring and remembers what its event must say. */
static void leave(struct ctx* c, struct iocb* cb) {
  submit1(c, cb);
  struct want* w = &c->pending[c->npending++];
  w->data = cb->aio_data;
  w->obj = (uint64_t)(uintptr_t)cb;
  w->res = (int64_t)cb->aio_nbytes;
}

static void snapshot(struct ctx* c) {
  const struct ring* r = (const struct ring*)(uintptr_t)c->id;
  c->nr = r->nr;
  c->head = r->head;
  c->tail = r->tail;
}

static void compare(struct wl_check* k, struct ctx* c) {
  const struct ring* r = (const struct ring*)(uintptr_t)c->id;
  wl_check(k, r->nr == c->nr && r->head == c->head && r->tail == c->tail,
           "%s: ring nr %u head %u tail %u, was %u %u %u", c->what, r->nr, r->head, r->tail, c->nr,
           c->head, c->tail);
  struct io_event ev[16];
  memset(ev, 0, sizeof ev);
  long got = io_getevents_(c->id, 0, 16, ev);
  if (!wl_check(k, got == c->npending, "%s: io_getevents returned %ld (%s), want %d events",
                c->what, got, got < 0 ? strerror(errno) : "ok", c->npending))
    return;
  for (int i = 0; i < c->npending; ++i) {
    const struct want* w = &c->pending[i];
    wl_check(k, ev[i].data == w->data && ev[i].obj == w->obj && ev[i].res == w->res,
             "%s: event %d is data %llx obj %llx res %lld, want %llx %llx %lld", c->what, i,
             (unsigned long long)ev[i].data, (unsigned long long)ev[i].obj, (long long)ev[i].res,
             (unsigned long long)w->data, (unsigned long long)w->obj, (long long)w->res);
  }
  /* The context goes on working under its id. */
  char buf[64];
  wl_pattern(buf, sizeof buf, 999);
  struct iocb cb;
  prep(&cb, IOCB_CMD_PWRITE, buf, sizeof buf, 4096, 0xabcdef);
  struct iocb* p = &cb;
  long s = io_submit_(c->id, 1, &p);
  if (!wl_check(k, s == 1, "%s: io_submit after the restore: %s", c->what, strerror(errno))) return;
  got = io_getevents_(c->id, 1, 1, ev);
  wl_check(k, got == 1 && ev[0].data == 0xabcdef && ev[0].res == (int64_t)sizeof buf,
           "%s: the new request: %ld events, data %llx res %lld", c->what, got,
           (unsigned long long)ev[0].data, (long long)ev[0].res);
  char back[64];
  wl_check(k,
           pread(fd, back, sizeof back, 4096) == (ssize_t)sizeof back &&
               wl_pattern_diff(back, sizeof back, 999) < 0,
           "%s: the new write is not in the file", c->what);
  wl_check(k, syscall(SYS_io_destroy, c->id) == 0, "%s: io_destroy: %s", c->what, strerror(errno));
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  fd = openat(wl_dirfd, "aio00.data", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) wl_die("main", "open aio00.data: %s", strerror(errno));
  for (int i = 0; i < 16; ++i) wl_pattern(bufs[i], sizeof bufs[i], (uint32_t)i + 1);
  if (pwrite(fd, bufs[15], 64, 64 * 15) != 64) wl_die("main", "pwrite: %s", strerror(errno));

  struct ctx a = {"a", 0, 0, 0, 0, 0, {{0, 0, 0}}}, b = {"b", 0, 0, 0, 0, 0, {{0, 0, 0}}};
  if (io_setup_(32, &a.id) != 0) {
    if (errno == ENOSYS) wl_skip("no kernel AIO (io_setup: ENOSYS)");
    wl_die("main", "io_setup: %s", strerror(errno));
  }
  if (io_setup_(8, &b.id) != 0) wl_die("main", "io_setup: %s", strerror(errno));

  for (int i = 0; i < 5; ++i) {
    prep(&cbs[i], IOCB_CMD_PWRITE, bufs[i], 64, 64 * i, 100 + (uint64_t)i);
    submit1(&a, &cbs[i]);
  }
  reap(&a, 5);
  prep(&cbs[5], IOCB_CMD_PWRITE, bufs[5], 64, 64 * 5, 105);
  leave(&a, &cbs[5]);
  prep(&cbs[6], IOCB_CMD_PREAD, readbuf, 64, 64 * 15, 106);
  leave(&a, &cbs[6]);
  prep(&cbs[7], IOCB_CMD_PWRITE, bufs[7], 64, 64 * 7, 0x5eed0000cafe0000ull + (uint64_t)getpid());
  leave(&a, &cbs[7]);
  snapshot(&a);

  /* b: around the ring once, then three left pending across its end. */
  unsigned slots = ((const struct ring*)(uintptr_t)b.id)->nr;
  for (unsigned i = 0; i + 1 < slots - 1; ++i) {
    prep(&cbs[8], IOCB_CMD_PWRITE, bufs[8], 64, 64 * 8, i);
    submit1(&b, &cbs[8]);
    reap(&b, 1);
  }
  for (int i = 0; i < 3; ++i) {
    prep(&cbs[9 + i], IOCB_CMD_PWRITE, bufs[9 + i], 64, 64 * (9 + i), 200 + (uint64_t)i);
    leave(&b, &cbs[9 + i]);
  }
  snapshot(&b);
  if (!(b.tail < b.head))
    wl_die("main", "b: the ring did not wrap (head %u tail %u)", b.head, b.tail);
  if (a.head != 5 || a.tail != 8) wl_die("main", "a: head %u tail %u", a.head, a.tail);

  wl_ready("main");
  struct wl_check k;
  if (wl_await("main", &k) != 0) return 1;
  compare(&k, &a);
  compare(&k, &b);
  wl_check(&k, wl_pattern_diff(readbuf, sizeof readbuf, 16) < 0,
           "the pread's buffer does not hold what it read");
  for (int i = 0; i < 12; ++i) {
    if (i == 6 || i == 8) continue; /* the pread's slot, b's rewritten slot */
    char back[64];
    wl_check(&k,
             pread(fd, back, 64, 64 * i) == 64 && wl_pattern_diff(back, 64, (uint32_t)i + 1) < 0,
             "the file at %d does not hold write %d", 64 * i, i);
  }
  return wl_check_result("main", &k);
}
