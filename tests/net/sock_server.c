/* sock_server: the workload that is dumped, killed and restored in the net sock tests.
 *
 *   sock_server STATEDIR FAMILY(4|6) ADDR PORT NCONN UDPPORT
 *
 * Listens on ADDR:PORT, accepts NCONN stream connections and then streams the
 * pattern (sock_common.h) to each at a steady rate while checking every byte that
 * comes back. Connections accepted later are echoed (they test the restored
 * listener). It also holds a UDP socket bound to ADDR:UDPPORT and one connected to it.
 * Ready once every stream connection carried data both ways. An echoed connection is
 * closed by the server after kEchoBytes, which leaves a TIME_WAIT connection on PORT.
 * On SIGUSR1: the UDP pair must still be bound, connected and pass a datagram; every
 * stream connection is shut down for writing and read to its end. result.server is
 * PASS when every byte read was the pattern, and STATEDIR/server.counts lists, per
 * client port, the bytes sent and received, for the harness to compare with the
 * client's. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../cr/workload.h"
#include "sock_common.h"

#define MAXCONN 64

struct conn {
  int fd;
  int echo;
  uint32_t seed;
  uint64_t sent, recvd;
  int eof;
};

static struct conn conns[MAXCONN];
static int nconns;
static struct wl_check chk;

static void add_conn(int fd, int echo) {
  if (nconns == MAXCONN) {
    close(fd);
    return;
  }
  struct sockaddr_storage peer;
  socklen_t len = sizeof peer;
  getpeername(fd, (struct sockaddr*)&peer, &len);
  fcntl(fd, F_SETFL, O_NONBLOCK);
  struct conn* c = &conns[nconns++];
  memset(c, 0, sizeof *c);
  c->fd = fd;
  c->echo = echo;
  c->seed = (uint32_t)sock_port(&peer);
}

static void serve(struct conn* c, int sending) {
  uint8_t buf[65536];
  if (c->fd < 0) return;
  for (;;) {
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
    if (n < 0) {
      wl_check(&chk, 0, "conn %u: read: %s", c->seed, strerror(errno));
      close(c->fd);
      c->fd = -1;
      return;
    }
    if (n == 0) {
      c->eof = 1;
      if (c->echo) {
        close(c->fd);
        c->fd = -1;
      }
      return;
    }
    if (c->echo) {
      if (send(c->fd, buf, (size_t)n, MSG_NOSIGNAL) != n) wl_check(&chk, 0, "echo: short write");
      c->recvd += (uint64_t)n;
      if (c->recvd >= kEchoBytes) { /* the server closes first: TIME_WAIT is on its side */
        close(c->fd);
        c->fd = -1;
        return;
      }
      continue;
    }
    long bad = sock_check(buf, (size_t)n, c->recvd, c->seed ^ kToServer);
    if (!wl_check(&chk, bad < 0, "conn %u: byte %llu is not the pattern", c->seed,
                  (unsigned long long)(c->recvd + (uint64_t)(bad < 0 ? 0 : bad)))) {
      close(c->fd);
      c->fd = -1;
      return;
    }
    c->recvd += (uint64_t)n;
  }
  if (sending && !c->echo) {
    sock_fill(buf, kChunk, c->sent, c->seed);
    ssize_t n = send(c->fd, buf, kChunk, MSG_NOSIGNAL);
    if (n > 0)
      c->sent += (uint64_t)n;
    else if (n < 0 && errno != EAGAIN)
      wl_check(&chk, 0, "conn %u: write: %s", c->seed, strerror(errno));
  }
}

static int bind_udp(int family, const char* addr, int port) {
  struct sockaddr_storage ss;
  socklen_t len = sock_addr(family, addr, port, &ss);
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr*)&ss, len) < 0) wl_die("server", "udp bind: %m");
  return fd;
}

/* The UDP pair: names as before the dump, and a datagram each way. */
static void check_udp(int ub, int uc, const struct sockaddr_storage* ub_name,
                      const struct sockaddr_storage* uc_name) {
  struct sockaddr_storage now;
  socklen_t len = sizeof now;
  getsockname(ub, (struct sockaddr*)&now, &len);
  wl_check(&chk, memcmp(&now, ub_name, len) == 0, "udp: the bound socket's address changed");
  len = sizeof now;
  getsockname(uc, (struct sockaddr*)&now, &len);
  wl_check(&chk, memcmp(&now, uc_name, len) == 0, "udp: the connected socket's address changed");
  len = sizeof now;
  wl_check(&chk, getpeername(uc, (struct sockaddr*)&now, &len) == 0, "udp: not connected");
  if (send(uc, "ping", 4, 0) != 4) wl_check(&chk, 0, "udp: send: %s", strerror(errno));
  struct pollfd p = {ub, POLLIN, 0};
  char buf[16];
  struct sockaddr_storage from;
  len = sizeof from;
  if (!wl_check(&chk, poll(&p, 1, 2000) == 1, "udp: no datagram")) return;
  ssize_t n = recvfrom(ub, buf, sizeof buf, 0, (struct sockaddr*)&from, &len);
  wl_check(&chk, n == 4 && memcmp(buf, "ping", 4) == 0, "udp: bad datagram");
  wl_check(&chk, sock_port(&from) == sock_port(uc_name), "udp: datagram from another port");
  sendto(ub, "pong", 4, 0, (struct sockaddr*)&from, len);
  p.fd = uc;
  if (!wl_check(&chk, poll(&p, 1, 2000) == 1, "udp: no reply")) return;
  n = recv(uc, buf, sizeof buf, 0);
  wl_check(&chk, n == 4 && memcmp(buf, "pong", 4) == 0, "udp: bad reply");
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (argc != 7) wl_die("server", "usage: sock_server STATEDIR FAMILY ADDR PORT NCONN UDPPORT");
  int family = atoi(argv[2]), port = atoi(argv[4]), want = atoi(argv[5]), uport = atoi(argv[6]);
  const char* addr = argv[3];
  wl_check_init(&chk);
  struct sockaddr_storage ss;
  socklen_t len = sock_addr(family, addr, port, &ss);
  if (!len || want < 1 || want > MAXCONN) wl_die("server", "bad arguments");
  int lfd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (lfd < 0 || bind(lfd, (struct sockaddr*)&ss, len) < 0 || listen(lfd, 16) < 0)
    wl_die("server", "listen on %s:%d: %m", addr, port);
  int ub = bind_udp(family, addr, uport);
  int uc = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (connect(uc, (struct sockaddr*)&ss, sock_addr(family, addr, uport, &ss)) < 0)
    wl_die("server", "udp connect: %m");
  struct sockaddr_storage ub_name, uc_name;
  socklen_t l1 = sizeof ub_name, l2 = sizeof uc_name;
  getsockname(ub, (struct sockaddr*)&ub_name, &l1);
  getsockname(uc, (struct sockaddr*)&uc_name, &l2);

  while (nconns < want) {
    struct pollfd p = {lfd, POLLIN, 0};
    if (poll(&p, 1, 30000) != 1) wl_die("server", "only %d of %d clients came", nconns, want);
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) add_conn(fd, 0);
  }
  fcntl(lfd, F_SETFL, O_NONBLOCK);
  int ready = 0, finishing = 0;
  double deadline = 0;
  for (;;) {
    struct pollfd p[MAXCONN + 1];
    p[0].fd = lfd;
    p[0].events = POLLIN;
    for (int i = 0; i < nconns; i++) {
      p[i + 1].fd = conns[i].fd;
      p[i + 1].events = POLLIN;
    }
    poll(p, (nfds_t)nconns + 1, kTickMs);
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) add_conn(fd, 1);
    int all_started = 1, all_ended = 1;
    for (int i = 0; i < nconns; i++) {
      serve(&conns[i], !finishing);
      if (!conns[i].echo) {
        all_started &= conns[i].recvd >= 4 * kChunk;
        all_ended &= conns[i].eof || conns[i].fd < 0;
      }
    }
    if (!ready && all_started) {
      ready = 1;
      wl_ready("server");
    }
    if (ready && wl_usr1 && !finishing) {
      finishing = 1;
      deadline = sock_now() + 30;
      check_udp(ub, uc, &ub_name, &uc_name);
      for (int i = 0; i < nconns; i++)
        if (!conns[i].echo && conns[i].fd >= 0) shutdown(conns[i].fd, SHUT_WR);
    }
    if (finishing && (all_ended || sock_now() > deadline)) {
      wl_check(&chk, all_ended, "not every client closed its side within 30 s");
      break;
    }
  }
  char counts[4096];
  size_t off = 0;
  for (int i = 0; i < nconns; i++)
    if (!conns[i].echo && off < sizeof counts)
      off +=
          (size_t)snprintf(counts + off, sizeof counts - off, "%u %llu %llu\n", conns[i].seed,
                           (unsigned long long)conns[i].sent, (unsigned long long)conns[i].recvd);
  int fd = openat(wl_dirfd, "server.counts", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) {
    if (write(fd, counts, off) != (ssize_t)off) wl_check(&chk, 0, "write server.counts");
    close(fd);
  }
  return wl_check_result("server", &chk);
}
