/* inet00: options of TCP and UDP sockets on the host's loopback, not connected.
 *   t: TCP bound to 127.0.0.1 (state CLOSE): SO_DONTROUTE, SO_LINGER on for 7 s,
 *      SO_BINDTODEVICE lo, SO_SNDBUF set (the kernel locks it), a classic BPF filter of
 *      one instruction;
 *   u: UDP bound to 127.0.0.1: SO_BUF_LOCK on its receive size alone, SO_LINGER on for
 *      0 s, a filter of two instructions that keeps 5 bytes of each datagram (13 with
 *      the UDP header, which a UDP filter counts);
 *   l: TCP listening on 127.0.0.1: SO_KEEPALIVE, SO_LINGER off with 3 s kept;
 *   u is corked (UDP_CORK) with nothing held;
 *   w: UDP bound to 127.0.0.1: SO_NO_CHECK, SO_TIMESTAMPNS, IP_RECVTOS, IP_MULTICAST_TTL 7,
 *      shut down for sending (shutdown(SHUT_WR) on a socket with no peer);
 *   r: UDP connected to w, shut down for receiving;
 *   p1, p2: TCP listening on one port of 127.0.0.1, both bound with SO_REUSEPORT, which
 *      p1 then clears;
 *   ul: UDP-Lite bound to 127.0.0.1: checksum coverage 20 sent and 12 required, a receive
 *      timeout of 1.5 s and a send timeout of 0.25 s (where the kernel has UDP-Lite);
 *   pg: a ping socket (SOCK_DGRAM, IPPROTO_ICMP) connected to 127.0.0.1, and pu, one
 *      never bound, connected or used, where net.ipv4.ping_group_range lets the test's
 *      group make one (said in the log if not).
 * With the argument `corked`, u holds 7 bytes in its cork: check and dump must refuse it.
 * With `over`, a TCP connection on loopback (to a listener of its own) is shut down by both
 * ends until the accepted
 * end is CLOSE: check and dump must refuse it (it reads end-of-file, which no new socket
 * does).
 * After the restore every option reads back the same (getsockopt; the filters by their
 * length, SO_GET_FILTER), the addresses are the same, and a datagram of 10 bytes to u
 * arrives cut to 5 by its filter; a send on w fails with EPIPE, and poll on r gives
 * POLLRDHUP at once; ul's options and timeouts read the same and a datagram to it
 * arrives; an echo request on pg gets its reply. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "workload.h"

#ifndef SO_BUF_LOCK
#define SO_BUF_LOCK 72
#endif

struct opts {
  int dontroute, keepalive, buflock, sndbuf, rcvbuf, filter_len, cork;
  struct linger linger;
  char dev[IFNAMSIZ];
  struct sockaddr_in addr;
};

/* An int option's value, -1 when it can't be read (ENOPROTOOPT: UDP_CORK on TCP). */
static int opt(int fd, int level, int name) {
  int v = 0;
  socklen_t l = sizeof v;
  return getsockopt(fd, level, name, &v, &l) == 0 ? v : -1;
}

static void read_opts(int fd, struct opts* o) {
  memset(o, 0, sizeof *o);
  o->dontroute = opt(fd, SOL_SOCKET, SO_DONTROUTE);
  o->keepalive = opt(fd, SOL_SOCKET, SO_KEEPALIVE);
  o->buflock = opt(fd, SOL_SOCKET, SO_BUF_LOCK);
  o->sndbuf = opt(fd, SOL_SOCKET, SO_SNDBUF);
  o->rcvbuf = opt(fd, SOL_SOCKET, SO_RCVBUF);
  socklen_t l = 0;
  o->filter_len = getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, NULL, &l) == 0 ? (int)l : -1;
  o->cork = opt(fd, IPPROTO_UDP, UDP_CORK);
  l = sizeof o->linger;
  getsockopt(fd, SOL_SOCKET, SO_LINGER, &o->linger, &l);
  l = sizeof o->dev;
  getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, o->dev, &l);
  l = sizeof o->addr;
  getsockname(fd, (struct sockaddr*)&o->addr, &l);
}

static void check_same(struct wl_check* c, const char* what, int fd, const struct opts* was) {
  struct opts now;
  read_opts(fd, &now);
  wl_check(c, now.dontroute == was->dontroute && now.keepalive == was->keepalive,
           "%s: SO_DONTROUTE %d SO_KEEPALIVE %d, were %d %d", what, now.dontroute, now.keepalive,
           was->dontroute, was->keepalive);
  wl_check(c, now.buflock == was->buflock && now.sndbuf == was->sndbuf && now.rcvbuf == was->rcvbuf,
           "%s: SO_BUF_LOCK %d SO_SNDBUF %d SO_RCVBUF %d, were %d %d %d", what, now.buflock,
           now.sndbuf, now.rcvbuf, was->buflock, was->sndbuf, was->rcvbuf);
  wl_check(c, now.cork == was->cork, "%s: UDP_CORK %d, was %d", what, now.cork, was->cork);
  wl_check(c, now.filter_len == was->filter_len, "%s: a filter of %d instructions, was %d", what,
           now.filter_len, was->filter_len);
  wl_check(c,
           now.linger.l_onoff == was->linger.l_onoff && now.linger.l_linger == was->linger.l_linger,
           "%s: SO_LINGER %d/%d, was %d/%d", what, now.linger.l_onoff, now.linger.l_linger,
           was->linger.l_onoff, was->linger.l_linger);
  wl_check(c, strcmp(now.dev, was->dev) == 0, "%s: SO_BINDTODEVICE '%s', was '%s'", what, now.dev,
           was->dev);
  wl_check(c, memcmp(&now.addr, &was->addr, sizeof now.addr) == 0, "%s: another address", what);
}

struct more_opts {
  int nocheck, tsns, recvtos, mcttl;
};

static void read_ip_opts(int fd, struct more_opts* o) {
  o->nocheck = opt(fd, SOL_SOCKET, SO_NO_CHECK);
  o->tsns = opt(fd, SOL_SOCKET, SO_TIMESTAMPNS);
  o->recvtos = opt(fd, IPPROTO_IP, IP_RECVTOS);
  o->mcttl = opt(fd, IPPROTO_IP, IP_MULTICAST_TTL);
}

static int bound(int type) {
  int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (fd < 0 || bind(fd, (struct sockaddr*)&a, sizeof a) != 0)
    wl_die("main", "socket: %s", strerror(errno));
  return fd;
}

#define UDPLITE_SEND_CSCOV 10
#define UDPLITE_RECV_CSCOV 11

struct lite_opts {
  int send_cscov, recv_cscov;
  struct timeval rcvtimeo, sndtimeo;
};

static void read_lite(int fd, struct lite_opts* o) {
  memset(o, 0, sizeof *o);
  o->send_cscov = opt(fd, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV);
  o->recv_cscov = opt(fd, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV);
  socklen_t len = sizeof o->rcvtimeo;
  getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &o->rcvtimeo, &len);
  len = sizeof o->sndtimeo;
  getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &o->sndtimeo, &len);
}

/* An ICMP echo request of id `id` on a ping socket, and its reply within 3 s. */
static int ping(int fd, int seq) {
  struct {
    uint8_t type, code;
    uint16_t sum, id, seq;
  } req = {8 /* ICMP_ECHO */, 0, 0, 0, htons((uint16_t)seq)}, rep;
  if (send(fd, &req, sizeof req, 0) != (ssize_t)sizeof req) return 0;
  struct pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, 3000) != 1) return 0;
  return recv(fd, &rep, sizeof rep, 0) == (ssize_t)sizeof rep && rep.type == 0 &&
         rep.seq == htons((uint16_t)seq);
}

static void set(int fd, int name, const void* v, socklen_t len, const char* what) {
  if (setsockopt(fd, SOL_SOCKET, name, v, len) != 0)
    wl_die("main", "setsockopt %s: %s", what, strerror(errno));
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int one = 1, size = 65536, lock = 2 /* SOCK_RCVBUF_LOCK */;
  int t = bound(SOCK_STREAM), u = bound(SOCK_DGRAM), l = bound(SOCK_STREAM);
  struct linger l7 = {1, 7}, l0 = {1, 0}, off3 = {0, 3};
  struct sock_filter all[] = {BPF_STMT(BPF_RET | BPF_K, 0xffff)};
  struct sock_filter cut[] = {BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
                              BPF_STMT(BPF_RET | BPF_K, 8 + 5)};
  struct sock_fprog fall = {1, all}, fcut = {2, cut};
  set(t, SO_DONTROUTE, &one, sizeof one, "SO_DONTROUTE");
  set(t, SO_LINGER, &l7, sizeof l7, "SO_LINGER");
  set(t, SO_BINDTODEVICE, "lo", 2, "SO_BINDTODEVICE");
  set(t, SO_SNDBUF, &size, sizeof size, "SO_SNDBUF");
  set(t, SO_ATTACH_FILTER, &fall, sizeof fall, "SO_ATTACH_FILTER");
  if (setsockopt(u, SOL_SOCKET, SO_BUF_LOCK, &lock, sizeof lock) != 0)
    wl_skip("SO_BUF_LOCK: %s (Linux 5.14 and later)", strerror(errno));
  set(u, SO_LINGER, &l0, sizeof l0, "SO_LINGER");
  set(u, SO_ATTACH_FILTER, &fcut, sizeof fcut, "SO_ATTACH_FILTER");
  if (setsockopt(u, IPPROTO_UDP, UDP_CORK, &one, sizeof one) != 0)
    wl_die("main", "UDP_CORK: %s", strerror(errno));
  if (argc > 2 && strcmp(argv[2], "corked") == 0) {
    struct sockaddr_in to = {
        .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons(9)};
    if (sendto(u, "corked!", 7, 0, (struct sockaddr*)&to, sizeof to) != 7)
      wl_die("main", "sendto while corked: %s", strerror(errno));
  }
  int w = bound(SOCK_DGRAM), r = bound(SOCK_DGRAM), ttl = 7;
  set(w, SO_NO_CHECK, &one, sizeof one, "SO_NO_CHECK");
  set(w, SO_TIMESTAMPNS, &one, sizeof one, "SO_TIMESTAMPNS");
  if (setsockopt(w, IPPROTO_IP, IP_RECVTOS, &one, sizeof one) != 0 ||
      setsockopt(w, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) != 0)
    wl_die("main", "IP options: %s", strerror(errno));
  struct more_opts iw;
  read_ip_opts(w, &iw);
  struct sockaddr_in wa;
  socklen_t wal = sizeof wa;
  getsockname(w, (struct sockaddr*)&wa, &wal);
  if (shutdown(w, SHUT_WR) == 0 || errno != ENOTCONN)
    wl_die("main", "shutdown(SHUT_WR) of a socket with no peer: %s", strerror(errno));
  if (connect(r, (struct sockaddr*)&wa, sizeof wa) != 0 || shutdown(r, SHUT_RD) != 0)
    wl_die("main", "r: %s", strerror(errno));
  int p1 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0),
      p2 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in pa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t pal = sizeof pa;
  set(p1, SO_REUSEPORT, &one, sizeof one, "SO_REUSEPORT");
  set(p2, SO_REUSEPORT, &one, sizeof one, "SO_REUSEPORT");
  if (bind(p1, (struct sockaddr*)&pa, sizeof pa) != 0 ||
      getsockname(p1, (struct sockaddr*)&pa, &pal) != 0 ||
      bind(p2, (struct sockaddr*)&pa, sizeof pa) != 0 || listen(p1, 3) != 0 || listen(p2, 3) != 0)
    wl_die("main", "p1/p2: %s", strerror(errno));
  int zero = 0;
  set(p1, SO_REUSEPORT, &zero, sizeof zero, "SO_REUSEPORT");
  if (argc > 2 && strcmp(argv[2], "over") == 0) {
    int ol = bound(SOCK_STREAM), cl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ac;
    struct sockaddr_in oa;
    socklen_t oal = sizeof oa;
    if (listen(ol, 1) != 0 || getsockname(ol, (struct sockaddr*)&oa, &oal) != 0 || cl < 0 ||
        connect(cl, (struct sockaddr*)&oa, sizeof oa) != 0 ||
        (ac = accept4(ol, NULL, NULL, SOCK_CLOEXEC)) < 0)
      wl_die("main", "connection: %s", strerror(errno));
    shutdown(cl, SHUT_WR);
    shutdown(ac, SHUT_WR);
    char b;
    if (wl_read_full(ac, &b, 1) != 0 || wl_read_full(cl, &b, 1) != 0)
      wl_die("main", "no end-of-file on the connection");
    wl_sleep_ms(100); /* the last ACK */
  }
  int ul = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDPLITE);
  struct lite_opts oul;
  struct sockaddr_in ula = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t ulal = sizeof ula;
  if (ul < 0) {
    wl_log("ul: no UDP-Lite socket here (%s): left out", strerror(errno));
  } else {
    int send_cov = 20, recv_cov = 12;
    struct timeval rto = {1, 500000}, sto = {0, 250000};
    if (bind(ul, (struct sockaddr*)&ula, sizeof ula) != 0 ||
        getsockname(ul, (struct sockaddr*)&ula, &ulal) != 0 ||
        setsockopt(ul, IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, &send_cov, sizeof send_cov) != 0 ||
        setsockopt(ul, IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV, &recv_cov, sizeof recv_cov) != 0)
      wl_die("main", "ul: %s", strerror(errno));
    set(ul, SO_RCVTIMEO, &rto, sizeof rto, "SO_RCVTIMEO");
    set(ul, SO_SNDTIMEO, &sto, sizeof sto, "SO_SNDTIMEO");
    read_lite(ul, &oul);
  }
  int pg = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_ICMP);
  int pu = pg < 0 ? -1 : socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_ICMP);
  if (pg < 0) {
    wl_log("pg: no ping socket for this group (%s; net.ipv4.ping_group_range): left out",
           strerror(errno));
  } else {
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(pg, (struct sockaddr*)&lo, sizeof lo) != 0 || !ping(pg, 1))
      wl_die("main", "pg: no echo reply before the dump: %s", strerror(errno));
  }
  set(l, SO_KEEPALIVE, &one, sizeof one, "SO_KEEPALIVE");
  set(l, SO_LINGER, &off3, sizeof off3, "SO_LINGER");
  if (listen(l, 5) != 0) wl_die("main", "listen: %s", strerror(errno));
  struct opts ot, ou, ol;
  read_opts(t, &ot);
  read_opts(u, &ou);
  read_opts(l, &ol);
  wl_log("t: filter %d, linger %d/%d, dev '%s', sndbuf %d lock %d", ot.filter_len,
         ot.linger.l_onoff, ot.linger.l_linger, ot.dev, ot.sndbuf, ot.buflock);
  wl_ready("main");
  struct wl_check c;
  if (wl_await("main", &c) != 0) return 1;
  check_same(&c, "t", t, &ot);
  check_same(&c, "u", u, &ou);
  check_same(&c, "l", l, &ol);
  int rp1 = -1, rp2 = -1;
  socklen_t rl = sizeof rp1;
  getsockopt(p1, SOL_SOCKET, SO_REUSEPORT, &rp1, &rl);
  rl = sizeof rp2;
  getsockopt(p2, SOL_SOCKET, SO_REUSEPORT, &rp2, &rl);
  struct sockaddr_in pa2 = {0};
  socklen_t pal2 = sizeof pa2;
  getsockname(p2, (struct sockaddr*)&pa2, &pal2);
  wl_check(&c, rp1 == 0 && rp2 == 1 && pa2.sin_port == pa.sin_port,
           "p1/p2: SO_REUSEPORT %d %d, want 0 1, port %d, was %d", rp1, rp2, ntohs(pa2.sin_port),
           ntohs(pa.sin_port));
  struct more_opts iw2;
  read_ip_opts(w, &iw2);
  wl_check(
      &c, memcmp(&iw, &iw2, sizeof iw) == 0,
      "w: SO_NO_CHECK %d SO_TIMESTAMPNS %d IP_RECVTOS %d IP_MULTICAST_TTL %d, were %d %d %d %d",
      iw2.nocheck, iw2.tsns, iw2.recvtos, iw2.mcttl, iw.nocheck, iw.tsns, iw.recvtos, iw.mcttl);
  errno = 0;
  ssize_t sent = sendto(w, "x", 1, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr*)&wa, sizeof wa);
  wl_check(&c, sent < 0 && errno == EPIPE,
           "w: a send after shutdown(SHUT_WR) gave %zd (%s), want EPIPE", sent, strerror(errno));
  struct pollfd pr = {.fd = r, .events = POLLIN | POLLRDHUP};
  int pn = poll(&pr, 1, 0);
  wl_check(&c, pn == 1 && (pr.revents & POLLRDHUP), "r: poll gives %#x, want POLLRDHUP (shut down)",
           pr.revents);
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  char buf[32];
  ssize_t n = -1;
  if (s >= 0 && sendto(s, "0123456789", 10, 0, (struct sockaddr*)&ou.addr, sizeof ou.addr) == 10)
    for (int i = 0; i < 100 && n < 0; i++) {
      n = recv(u, buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0) wl_sleep_ms(10);
    }
  wl_check(&c, n == 5 && memcmp(buf, "01234", 5) == 0,
           "u: got %zd bytes through its filter, want 5", n);
  if (ul >= 0) {
    struct lite_opts now;
    read_lite(ul, &now);
    wl_check(&c, memcmp(&now, &oul, sizeof now) == 0,
             "ul: coverage %d/%d, timeouts %ld.%06ld/%ld.%06ld s; were %d/%d, %ld.%06ld/%ld.%06ld",
             now.send_cscov, now.recv_cscov, (long)now.rcvtimeo.tv_sec, (long)now.rcvtimeo.tv_usec,
             (long)now.sndtimeo.tv_sec, (long)now.sndtimeo.tv_usec, oul.send_cscov, oul.recv_cscov,
             (long)oul.rcvtimeo.tv_sec, (long)oul.rcvtimeo.tv_usec, (long)oul.sndtimeo.tv_sec,
             (long)oul.sndtimeo.tv_usec);
    int us = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDPLITE);
    ssize_t got = -1;
    if (us >= 0 && sendto(us, "lite", 4, 0, (struct sockaddr*)&ula, sizeof ula) == 4)
      got = recv(ul, buf, sizeof buf, 0); /* its receive timeout bounds the wait */
    wl_check(&c, got == 4 && memcmp(buf, "lite", 4) == 0, "ul: a datagram to it gave %zd (%s)", got,
             strerror(errno));
  }
  if (pg >= 0) wl_check(&c, ping(pg, 2), "pg: no echo reply after the restore");
  if (pu >= 0) {
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in no;
    socklen_t nol = sizeof no;
    wl_check(&c, getpeername(pu, (struct sockaddr*)&no, &nol) != 0 && errno == ENOTCONN,
             "pu: connected after the restore");
    wl_check(&c, connect(pu, (struct sockaddr*)&lo, sizeof lo) == 0 && ping(pu, 3),
             "pu: no echo reply after the restore");
  }
  return wl_check_result("main", &c);
}
