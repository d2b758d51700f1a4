/* wl-tcp: a TCP echo server for a client outside the machine.
 * `wl-tcp STATEDIR [--port N]` (default 7777) listens on every address and echoes each
 * line it reads. Its client (tests/vm/tcp-echo-client.c, on the host, through QEMU's
 * user networking) sends the lines "kleap N" with N counting up from 1. When a client
 * connects, wl-tcp writes its address to STATEDIR/client; a later client replaces the
 * earlier one (which is counted: a client that comes back has lost its connection).
 * A check (role `tcp`): exactly one client ever connected and it is still connected
 * (no end of file, no error), its lines came numbered one after the other, and a new
 * line arrives within 2 s. STATEDIR/lines counts the lines so far. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wl-vm.h"

#define LINE_WAIT_MS 2000

static struct {
  int listen_fd, conn_fd;
  unsigned accepted;
  unsigned long long lines, last;
  char in[512];
  size_t in_len;
  char error[200];
} srv = {-1, -1, 0, 0, 0, {0}, 0, {0}};

static void server_error(const char* what, const char* detail) {
  if (!srv.error[0]) snprintf(srv.error, sizeof srv.error, "%s%s", what, detail);
  wl_log("%s%s", what, detail);
}

static void take_client(void) {
  struct sockaddr_in peer;
  socklen_t len = sizeof peer;
  int fd = accept4(srv.listen_fd, (struct sockaddr*)&peer, &len, SOCK_CLOEXEC);
  if (fd < 0) return;
  if (srv.conn_fd >= 0) {
    server_error("a second client connected: the first one lost its connection", "");
    close(srv.conn_fd);
  }
  srv.conn_fd = fd;
  srv.accepted++;
  srv.in_len = 0;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  char addr[64];
  snprintf(addr, sizeof addr, "%s:%u\n", inet_ntoa(peer.sin_addr), ntohs(peer.sin_port));
  wlv_write_state("client", addr);
  wl_log("client %u from %.*s", srv.accepted, (int)strcspn(addr, "\n"), addr);
}

/* Echoes every whole line read so far and checks its number. */
static void echo_lines(void) {
  char* nl;
  while ((nl = memchr(srv.in, '\n', srv.in_len)) != NULL) {
    size_t n = (size_t)(nl - srv.in) + 1;
    if (send(srv.conn_fd, srv.in, n, MSG_NOSIGNAL) != (ssize_t)n)
      server_error("echo: ", strerror(errno));
    unsigned long long num = 0;
    if (sscanf(srv.in, "kleap %llu", &num) != 1 || num != srv.last + 1) {
      char got[96];
      snprintf(got, sizeof got, "'%.*s' after line %llu", (int)(n - 1), srv.in, srv.last);
      server_error("out of order: ", got);
    }
    srv.last = num;
    srv.lines++;
    memmove(srv.in, srv.in + n, srv.in_len - n);
    srv.in_len -= n;
  }
  /* How many so far, for whoever waits for the connection to go on (scn_upgrade). */
  char count[32];
  snprintf(count, sizeof count, "%llu\n", srv.lines);
  wlv_write_state("lines", count);
  if (srv.in_len == sizeof srv.in) {
    server_error("a line longer than the buffer", "");
    srv.in_len = 0;
  }
}

static void step(void* arg) {
  (void)arg;
  struct pollfd fds[2] = {{srv.listen_fd, POLLIN, 0}, {srv.conn_fd, POLLIN, 0}};
  if (poll(fds, srv.conn_fd >= 0 ? 2 : 1, 20) <= 0) return;
  if (fds[0].revents & POLLIN) take_client();
  if (srv.conn_fd < 0 || !(fds[1].revents & (POLLIN | POLLHUP | POLLERR))) return;
  ssize_t r = read(srv.conn_fd, srv.in + srv.in_len, sizeof srv.in - srv.in_len);
  if (r > 0) {
    srv.in_len += (size_t)r;
    echo_lines();
    return;
  }
  if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
  char why[96];
  snprintf(why, sizeof why, "after %llu lines (%s)", srv.lines,
           r == 0 ? "end of file" : strerror(errno));
  server_error("the client's connection ended ", why);
  close(srv.conn_fd);
  srv.conn_fd = -1;
}

static void check(void* arg, struct wl_check* c) {
  unsigned long long before = srv.lines;
  for (int waited = 0; waited < LINE_WAIT_MS && srv.lines == before && srv.conn_fd >= 0;
       waited += 20)
    step(arg);
  wl_check(c, srv.accepted > 0, "no client ever connected");
  wl_check(c, !srv.error[0], "%s", srv.error);
  wl_check(c, srv.conn_fd >= 0 || srv.accepted == 0, "the client is not connected");
  if (srv.conn_fd >= 0)
    wl_check(c, srv.lines > before, "no line from the client for %d ms (%llu lines so far)",
             LINE_WAIT_MS, srv.lines);
  wl_log("%u client(s), %llu lines, last %llu", srv.accepted, srv.lines, srv.last);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int port = 7777;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
      port = atoi(argv[++i]);
    else
      wl_die("tcp", "usage: wl-tcp STATEDIR [--port N]");
  }
  srv.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (srv.listen_fd < 0) wl_die("tcp", "socket: %s", strerror(errno));
  int one = 1;
  setsockopt(srv.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(srv.listen_fd, (struct sockaddr*)&a, sizeof a) != 0 || listen(srv.listen_fd, 4) != 0)
    wl_die("tcp", "listen on port %d: %s", port, strerror(errno));
  wl_log("listening on port %d", port);
  /* The step waits in poll. */
  wlv_run_alone("tcp", 0, step, check);
}
