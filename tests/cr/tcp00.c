/* tcp00: TCP connections that one side or both have closed, both ends in the tree, on
 * loopback (engine/sock_inet.cc: the peer's FIN comes in again after the restore).
 *   cw: b sent "tail" and shut down for writing: a is in CLOSE_WAIT with "tail" queued
 *       (b in FIN_WAIT2);
 *   la: c filled d's receive buffer (d reads nothing), d shut down, then c: c is in
 *       LAST_ACK, its FIN behind the data d has no room for;
 *   cl: e filled f's buffer and shut down (its FIN waits behind the data), then f shut
 *       down: e got f's FIN before its own was acknowledged, so it is in CLOSING.
 * After the restore each is in its state again; then a reads "tail" and end-of-file,
 * answers "reply" and shuts down, and b reads "reply" and end-of-file; d and f read every
 * byte c and e sent, then end-of-file; c and e read end-of-file; every connection ends
 * closed (the FINs were acknowledged). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

static const char* kStates[] = {"?",          "ESTABLISHED", "SYN_SENT",  "SYN_RECV",
                                "FIN_WAIT1",  "FIN_WAIT2",   "TIME_WAIT", "CLOSE",
                                "CLOSE_WAIT", "LAST_ACK",    "LISTEN",    "CLOSING"};

static int state(int fd) {
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 ? ti.tcpi_state : 0;
}

static const char* name(int s) {
  return s >= 0 && s < 12 ? kStates[s] : "?";
}

/* A connected pair on loopback: *srv accepted, *cli connected. */
static void pair(int l, const struct sockaddr_in* la, int* srv, int* cli) {
  *cli = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (*cli < 0 || connect(*cli, (const struct sockaddr*)la, sizeof *la) != 0 ||
      (*srv = accept4(l, NULL, NULL, SOCK_CLOEXEC)) < 0)
    wl_die("main", "connect: %s", strerror(errno));
}

/* Writes to fd until its buffers and the peer's are full; the bytes written. */
static long fill(int fd) {
  static char buf[65536];
  memset(buf, 'x', sizeof buf);
  long total = 0;
  for (int idle = 0; idle < 20;) {
    ssize_t n = send(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      total += n;
      idle = 0;
    } else {
      wl_sleep_ms(10); /* the peer's window closing takes a round trip */
      idle++;
    }
  }
  return total;
}

/* Reads fd to end-of-file (waiting up to 5 s for each read); the bytes, or -1. */
static long drain(int fd, char* keep, size_t keep_len) {
  static char buf[65536];
  long total = 0;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) != 1) return -1;
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return total;
    if (n < 0) return -1;
    if (keep && (size_t)total < keep_len)
      memcpy(keep + total, buf,
             (size_t)n < keep_len - (size_t)total ? (size_t)n : keep_len - (size_t)total);
    total += n;
  }
}

static int wait_state(int fd, int want) {
  for (int i = 0; i < 300 && state(fd) != want; i++) wl_sleep_ms(10);
  return state(fd) == want;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in la = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t lal = sizeof la;
  if (l < 0 || bind(l, (struct sockaddr*)&la, sizeof la) != 0 || listen(l, 8) != 0 ||
      getsockname(l, (struct sockaddr*)&la, &lal) != 0)
    wl_die("main", "listen: %s", strerror(errno));
  int a, b, c, d, e, f;
  pair(l, &la, &a, &b);
  pair(l, &la, &c, &d);
  pair(l, &la, &e, &f);

  if (send(b, "tail", 4, 0) != 4 || shutdown(b, SHUT_WR) != 0)
    wl_die("main", "b: %s", strerror(errno));
  long c_sent = fill(c);
  if (shutdown(d, SHUT_WR) != 0 || !wait_state(c, 8 /* CLOSE_WAIT */) || shutdown(c, SHUT_WR) != 0)
    wl_die("main", "c/d: %s, c is %s", strerror(errno), name(state(c)));
  long e_sent = fill(e);
  if (shutdown(e, SHUT_WR) != 0 || shutdown(f, SHUT_WR) != 0)
    wl_die("main", "e/f: %s", strerror(errno));
  if (!wait_state(a, 8) || !wait_state(c, 9 /* LAST_ACK */) || !wait_state(e, 11 /* CLOSING */))
    wl_die("main", "setup: a %s, c %s, e %s (want CLOSE_WAIT, LAST_ACK, CLOSING)", name(state(a)),
           name(state(c)), name(state(e)));
  wl_log("c sent %ld bytes, e %ld", c_sent, e_sent);
  wl_ready("main");

  struct wl_check k;
  if (wl_await("main", &k) != 0) return 1;
  /* (b's FIN is acknowledged again once a has the FIN that came in for it.) */
  wl_check(&k, wait_state(a, 8), "a is %s, want CLOSE_WAIT", name(state(a)));
  wl_check(&k, wait_state(b, 5), "b is %s, want FIN_WAIT2", name(state(b)));
  wl_check(&k, wait_state(c, 9), "c is %s, want LAST_ACK", name(state(c)));
  wl_check(&k, wait_state(e, 11), "e is %s, want CLOSING", name(state(e)));
  char got[16] = "";
  wl_check(&k, drain(a, got, sizeof got) == 4 && memcmp(got, "tail", 4) == 0,
           "a: not 'tail' and end-of-file ('%.4s')", got);
  wl_check(&k, send(a, "reply", 5, 0) == 5 && shutdown(a, SHUT_WR) == 0, "a: reply: %s",
           strerror(errno));
  memset(got, 0, sizeof got);
  wl_check(&k, drain(b, got, sizeof got) == 5 && memcmp(got, "reply", 5) == 0,
           "b: not 'reply' and end-of-file ('%.5s')", got);
  wl_log("a and b done");
  long n = drain(d, NULL, 0);
  wl_check(&k, n == c_sent, "d read %ld bytes and end-of-file, c sent %ld", n, c_sent);
  n = drain(f, NULL, 0);
  wl_check(&k, n == e_sent, "f read %ld bytes and end-of-file, e sent %ld", n, e_sent);
  wl_log("d and f drained");
  wl_check(&k, drain(c, NULL, 0) == 0 && drain(e, NULL, 0) == 0, "c or e: no end-of-file");
  /* Every FIN acknowledged: the sockets held by fds read CLOSE (TIME_WAIT is the kernel's). */
  for (int i = 0; i < 6; i++) {
    int fd = (int[]){a, b, c, d, e, f}[i];
    wl_check(&k, wait_state(fd, 7), "%c ends %s, want CLOSE", "abcdef"[i], name(state(fd)));
  }
  return wl_check_result("main", &k);
}
