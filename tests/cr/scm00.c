/* scm00: files in flight (SCM_RIGHTS sent, not received yet), carried with their queues.
 *   d: a datagram socketpair holding three messages:
 *      "A" with a pipe's read end (the task closed both ends after writing "k" into it:
 *          the pipe lives in flight only),
 *      "B" with nothing,
 *      "C" with an eventfd holding 42 (closed in the task) and STATEDIR/f, which the task
 *          keeps open too (one description: one offset),
 *      "D" with an epoll (closed in the task) watching s[1] for input, with data 77;
 *   s: a seqpacket socketpair holding "xyz" and then "w" with one end of a stream
 *      socketpair (the task keeps the other end, e).
 * (Files in flight on a stream socket are refused: cr.refuse.unix01.inflight.)
 * After the restore: the messages come in order with their files; the pipe reads "k",
 * the eventfd 42, a seek through the received STATEDIR/f moves the task's own offset, the
 * epoll reports s[1] readable with data 77, and
 * the received socket talks to e. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

static void send_files(int sock, const char* data, size_t len, const int* fds, int n) {
  union {
    char buf[CMSG_SPACE(4 * sizeof(int))];
    struct cmsghdr align;
  } u;
  struct iovec iov = {(void*)data, len};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  if (n) {
    mh.msg_control = u.buf;
    mh.msg_controllen = CMSG_SPACE((size_t)n * sizeof(int));
    struct cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN((size_t)n * sizeof(int));
    memcpy(CMSG_DATA(c), fds, (size_t)n * sizeof(int));
  }
  if (sendmsg(sock, &mh, 0) != (ssize_t)len) wl_die("main", "sendmsg: %s", strerror(errno));
}

/* Receives up to len bytes and the files with them; returns the bytes, -1 on error. */
static ssize_t recv_files(int sock, char* data, size_t len, int* fds, int* n) {
  union {
    char buf[CMSG_SPACE(4 * sizeof(int))];
    struct cmsghdr align;
  } u;
  struct iovec iov = {data, len};
  struct msghdr mh = {
      .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf};
  ssize_t r = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  *n = 0;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); r >= 0 && c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      memcpy(fds + *n, CMSG_DATA(c), (size_t)k * sizeof(int));
      *n += k;
    }
  return r;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int d[2], s[2], e[2], p[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, d) != 0 ||
      socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, s) != 0 ||
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, e) != 0 || pipe2(p, O_CLOEXEC) != 0)
    wl_die("main", "sockets: %s", strerror(errno));
  if (write(p[1], "k", 1) != 1) wl_die("main", "write: %s", strerror(errno));
  send_files(d[0], "A", 1, &p[0], 1);
  close(p[0]);
  close(p[1]);
  send_files(d[0], "B", 1, NULL, 0);
  int ev = eventfd(42, EFD_CLOEXEC);
  int f = openat(wl_dirfd, "f", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (ev < 0 || f < 0 || write(f, "0123456789", 10) != 10 || lseek(f, 3, SEEK_SET) != 3)
    wl_die("main", "eventfd/f: %s", strerror(errno));
  int two[2] = {ev, f};
  send_files(d[0], "C", 1, two, 2);
  close(ev);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev_in = {.events = EPOLLIN, .data.u64 = 77};
  if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, s[1], &ev_in) != 0)
    wl_die("main", "epoll: %s", strerror(errno));
  send_files(d[0], "D", 1, &ep, 1);
  close(ep);
  send_files(s[0], "xyz", 3, NULL, 0);
  send_files(s[0], "w", 1, &e[1], 1);
  close(e[1]);
  wl_ready("main");

  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  char buf[16];
  int fds[8], n;
  ssize_t r = recv_files(d[1], buf, sizeof buf, fds, &n);
  char k = 0;
  if (wl_check(&c, r == 1 && buf[0] == 'A' && n == 1, "d: message A: %zd bytes, %d files", r, n)) {
    wl_check(&c, read(fds[0], &k, 1) == 1 && k == 'k', "the pipe in flight lost its byte");
    close(fds[0]);
  }
  r = recv_files(d[1], buf, sizeof buf, fds, &n);
  wl_check(&c, r == 1 && buf[0] == 'B' && n == 0, "d: message B: %zd bytes, %d files", r, n);
  r = recv_files(d[1], buf, sizeof buf, fds, &n);
  if (wl_check(&c, r == 1 && buf[0] == 'C' && n == 2, "d: message C: %zd bytes, %d files", r, n)) {
    uint64_t v = 0;
    wl_check(&c, read(fds[0], &v, sizeof v) == sizeof v && v == 42, "the eventfd holds %llu",
             (unsigned long long)v);
    wl_check(&c, lseek(fds[1], 7, SEEK_SET) == 7 && lseek(f, 0, SEEK_CUR) == 7,
             "f in flight is not the task's own description (offset %lld)",
             (long long)lseek(f, 0, SEEK_CUR));
  }
  r = recv_files(d[1], buf, sizeof buf, fds, &n);
  if (wl_check(&c, r == 1 && buf[0] == 'D' && n == 1, "d: message D: %zd bytes, %d files", r, n)) {
    struct epoll_event got = {0};
    int k2 = epoll_wait(fds[0], &got, 1, 0);
    wl_check(&c, k2 == 1 && got.data.u64 == 77 && (got.events & EPOLLIN),
             "the epoll in flight gives %d events (data %llu)", k2,
             (unsigned long long)got.data.u64);
  }
  r = recv_files(s[1], buf, 3, fds, &n);
  wl_check(&c, r == 3 && memcmp(buf, "xyz", 3) == 0 && n == 0, "s: xyz: %zd bytes, %d files", r, n);
  r = recv_files(s[1], buf, sizeof buf, fds, &n);
  if (wl_check(&c, r == 1 && buf[0] == 'w' && n == 1, "s: w: %zd bytes, %d files", r, n)) {
    char b = 0;
    wl_check(&c,
             write(fds[0], "q", 1) == 1 && wl_read_full(e[0], &b, 1) == 1 && b == 'q' &&
                 write(e[0], "r", 1) == 1 && wl_read_full(fds[0], &b, 1) == 1 && b == 'r',
             "the socket in flight does not talk to its pair");
  }
  return wl_check_result("main", &c);
}
