/* sock_client: the peer of sock_server, in another network namespace; never dumped.
 *
 *   sock_client OUTDIR FAMILY(4|6) ADDR PORT NCONN
 *
 * Opens NCONN connections and streams the pattern (sock_common.h) on each at a steady
 * rate, also while the server is down, checking every byte that comes back. Writes
 * OUTDIR/ready once connected. When the server has shut down its side of every
 * connection, one new connection must be echoed (the restored listener), then the
 * client shuts down its own sides. Writes OUTDIR/client.counts (client port, bytes sent, bytes
 * received, per connection), OUTDIR/downtime (the longest time, in seconds, that no
 * byte came on a connection, and the bytes sent on it meanwhile) and
 * OUTDIR/result.client: PASS, or FAIL with the first error (a reset, a byte that is not
 * the pattern). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sock_common.h"

#define MAXCONN 64

struct conn {
  int fd;
  uint32_t seed;
  uint64_t sent, recvd, sent_in_gap;
  double last_rx;
  int eof;
};

static const char* outdir;

static void put(const char* name, const char* text) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", outdir, name);
  FILE* f = fopen(path, "w");
  if (!f) return;
  fputs(text, f);
  fclose(f);
}

static void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char* fmt, ...) {
  char msg[512] = "FAIL:";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + 5, sizeof msg - 5, fmt, ap);
  va_end(ap);
  fprintf(stderr, "client: %s\n", msg);
  put("result.client", msg);
  exit(1);
}

static int dial(int family, const struct sockaddr_storage* ss, socklen_t len) {
  int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (const struct sockaddr*)ss, len) < 0) fail("connect: %m");
  return fd;
}

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: sock_client OUTDIR FAMILY ADDR PORT NCONN\n");
    return 2;
  }
  outdir = argv[1];
  int family = atoi(argv[2]), n = atoi(argv[5]);
  struct sockaddr_storage ss;
  socklen_t len = sock_addr(family, argv[3], atoi(argv[4]), &ss);
  if (!len || n < 1 || n > MAXCONN) fail("bad arguments");
  signal(SIGPIPE, SIG_IGN);
  struct conn conns[MAXCONN];
  memset(conns, 0, sizeof conns);
  double t0 = sock_now();
  for (int i = 0; i < n; i++) {
    struct conn* c = &conns[i];
    c->fd = dial(family, &ss, len);
    struct sockaddr_storage me;
    socklen_t ml = sizeof me;
    getsockname(c->fd, (struct sockaddr*)&me, &ml);
    c->seed = (uint32_t)sock_port(&me);
    c->last_rx = t0;
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
  }
  put("ready", "");
  double max_gap = 0, deadline = t0 + 300;
  uint64_t gap_sent = 0;
  uint8_t buf[65536];
  for (;;) {
    struct pollfd p[MAXCONN];
    int live = 0;
    for (int i = 0; i < n; i++) {
      p[i].fd = conns[i].eof ? -1 : conns[i].fd;
      p[i].events = POLLIN;
      live += !conns[i].eof;
    }
    if (!live) break;
    if (sock_now() > deadline) fail("the server did not end the connections within 300 s");
    poll(p, (nfds_t)n, kTickMs);
    for (int i = 0; i < n; i++) {
      struct conn* c = &conns[i];
      if (c->eof) continue;
      for (;;) {
        ssize_t r = read(c->fd, buf, kReadMax);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
        if (r < 0)
          fail("conn %u: read after %llu bytes: %m", c->seed, (unsigned long long)c->recvd);
        if (r == 0) {
          c->eof = 1;
          break;
        }
        long bad = sock_check(buf, (size_t)r, c->recvd, c->seed);
        if (bad >= 0)
          fail("conn %u: byte %llu is not the pattern", c->seed,
               (unsigned long long)(c->recvd + (uint64_t)bad));
        double now = sock_now();
        if (now - c->last_rx > max_gap) {
          max_gap = now - c->last_rx;
          gap_sent = c->sent_in_gap;
        }
        c->last_rx = now;
        c->sent_in_gap = 0;
        c->recvd += (uint64_t)r;
        break;
      }
      if (c->eof) continue;
      sock_fill(buf, kChunk, c->sent, c->seed ^ kToServer);
      ssize_t w = send(c->fd, buf, kChunk, MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN)
        fail("conn %u: write after %llu bytes: %m", c->seed, (unsigned long long)c->sent);
      if (w > 0) {
        c->sent += (uint64_t)w;
        c->sent_in_gap += (uint64_t)w;
      }
    }
  }
  /* The listener, while the server still runs: a new connection is echoed. */
  int fd = dial(family, &ss, len);
  uint8_t out[kEchoBytes], in[kEchoBytes];
  sock_fill(out, sizeof out, 0, 77);
  if (write(fd, out, sizeof out) != (ssize_t)sizeof out) fail("echo: write: %m");
  size_t got = 0;
  while (got < sizeof in) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) != 1) fail("echo: no reply");
    ssize_t r = read(fd, in + got, sizeof in - got);
    if (r <= 0) fail("echo: read: %m");
    got += (size_t)r;
  }
  if (memcmp(in, out, sizeof in) != 0) fail("echo: the reply differs");
  close(fd);
  /* Our side ends too: the server has then read everything we sent. */
  for (int i = 0; i < n; i++) {
    if (shutdown(conns[i].fd, SHUT_WR) < 0) fail("conn %u: shutdown: %m", conns[i].seed);
    close(conns[i].fd);
  }

  char text[4096];
  size_t off = 0;
  for (int i = 0; i < n && off < sizeof text; i++)
    off += (size_t)snprintf(text + off, sizeof text - off, "%u %llu %llu\n", conns[i].seed,
                            (unsigned long long)conns[i].sent, (unsigned long long)conns[i].recvd);
  put("client.counts", text);
  snprintf(text, sizeof text, "%.3f %llu\n", max_gap, (unsigned long long)gap_sent);
  put("downtime", text);
  put("result.client", "PASS");
  return 0;
}
