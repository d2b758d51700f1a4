/* unix00: unix sockets of every type with data queued, names, backlogs and options.
 *   sp: a stream socketpair, one end in the root, the other in the child; 3000 bytes
 *       queued towards the child and 1500 towards the root, nobody reads before the dump;
 *   dp: a datagram socketpair in the root, messages of 10, 0 and 700 bytes one way and
 *       of 5 and 2000 the other; dp[1] has SO_PEEK_OFF 0;
 *   qp: a seqpacket socketpair, messages of 64 and 1 bytes one way and 300 the other;
 *       qp[0] has SO_PASSCRED, SO_RCVTIMEO 1.5 s, SO_SNDTIMEO 2.25 s and SO_SNDBUF
 *       64 KiB, qp[1] is O_NONBLOCK; the child holds qp[0] too (one open file, two tasks);
 *   ls: a stream listener on STATEDIR/listen.sock (mode 0640), backlog 8; one connection
 *       accepted (client bound to an abstract name, 400 bytes queued each way) and two
 *       more waiting in the backlog, from clients bound to abstract names;
 *   ad: a datagram socket on an abstract name, unconnected, holding a message from an
 *       unnamed sender (closed since) and one from a named datagram socket
 *       (STATEDIR/dsender.sock) that is still open;
 *   lg: a datagram socket on STATEDIR/log.sock that others connect(2) to, as syslog's
 *       clients do to /dev/log (since Linux 5.15 that marks it connected, with no peer
 *       of its own): lc, unnamed, connected to it with 33 bytes sent, and another client
 *       that connected and closed;
 *   gn: a datagram socket connected to STATEDIR/gone.sock, which closed since;
 *   dq: a datagram socketpair whose one end sent 2 messages to dq[0] and closed;
 *   me: a datagram socket on STATEDIR/me.sock connected to itself, a message to itself
 *       queued;
 *   sh: a stream pair, sh[0] shut down for writing after 100 bytes;
 *   pc: a stream pair whose other end was closed after sending 50 bytes;
 *   uq: a seqpacket socket bound to an abstract name, neither connected nor listening;
 *   rl: a stream listener bound by the relative path "rel.sock" from STATEDIR (the
 *       task's working directory), with rc connected and accepted as ra; rd: a datagram
 *       socket bound to "reld.sock" the same way, holding a message from rc2, unnamed.
 * After the restore: types, names, peer names, options, FIONREAD, every queued byte and
 * message boundary, the backlog accepted in its order, the shutdown states, and data
 * flowing both ways on every connection; lg gets lc's message and a new one; gn's next
 * send fails with ECONNREFUSED, and the one after with ENOTCONN; dq[0] reads its 2
 * messages, then its send fails with ECONNREFUSED; me reads its message, its peer is its
 * own name, and it still talks to itself. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "workload.h"

#define SP_TO_CHILD 3000
#define SP_TO_ROOT 1500
#define ACC_LEN 400

static int sp[2], dp[2], qp[2], ls = -1, acc = -1, c1 = -1, c2 = -1, c3 = -1, ad = -1, ds = -1,
                                sh[2], pc[2], lg = -1, lc = -1, gn = -1, dq[2], self_sk = -1,
                                uq = -1, rl = -1, rc = -1, ra = -1, rd = -1;
static char ls_path[200], ds_path[200], lg_path[200], gone_path[200], me_path[200];
static char c1_name[64], c2_name[64], c3_name[64], ad_name[64], uq_name[64];
static unsigned char buf[1 << 16];

static socklen_t set_addr(struct sockaddr_un* a, const char* name, int abstract) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  if (abstract) {
    a->sun_path[0] = '\0';
    memcpy(a->sun_path + 1, name, strlen(name));
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
  }
  snprintf(a->sun_path, sizeof a->sun_path, "%s", name);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1);
}

static int make(int type, const char* name, int abstract) {
  int fd = socket(AF_UNIX, type, 0);
  if (fd < 0) wl_die("root", "socket: %s", strerror(errno));
  if (name) {
    struct sockaddr_un a;
    socklen_t l = set_addr(&a, name, abstract);
    if (bind(fd, (struct sockaddr*)&a, l) != 0)
      wl_die("root", "bind %s: %s", name, strerror(errno));
  }
  return fd;
}

static void do_connect(int fd, const char* name, int abstract) {
  struct sockaddr_un a;
  socklen_t l = set_addr(&a, name, abstract);
  if (connect(fd, (struct sockaddr*)&a, l) != 0)
    wl_die("root", "connect %s: %s", name, strerror(errno));
}

static void send_pattern(int fd, size_t len, uint32_t seed, const char* what) {
  wl_pattern(buf, len, seed);
  if (send(fd, buf, len, MSG_NOSIGNAL) != (ssize_t)len)
    wl_die("root", "send %s: %s", what, strerror(errno));
}

static void check_stream(struct wl_check* c, const char* what, int fd, size_t len, uint32_t seed) {
  int n = wl_fionread(fd);
  for (int t = 0; t < 300 && n >= 0 && n < (int)len; t++, n = wl_fionread(fd)) wl_sleep_ms(10);
  /* The peer may have sent more meanwhile: check_empty() proves nothing else was queued. */
  wl_check(c, n >= (int)len, "%s: FIONREAD %d, want %zu", what, n, len);
  size_t got = wl_read_full(fd, buf, len);
  if (!wl_check(c, got == len, "%s: read %zu of %zu queued bytes", what, got, len)) return;
  long d = wl_pattern_diff(buf, len, seed);
  wl_check(c, d < 0, "%s: queued bytes differ at byte %ld", what, d);
}

/* One message of exactly len bytes, with the pattern of seed. */
static void check_msg(struct wl_check* c, const char* what, int fd, size_t len, uint32_t seed) {
  struct pollfd pfd = {fd, POLLIN, 0};
  poll(&pfd, 1, 3000);
  ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
  if (!wl_check(c, r == (ssize_t)len, "%s: a message of %zd bytes, want %zu (%s)", what, r, len,
                r < 0 ? strerror(errno) : "boundary lost"))
    return;
  long d = wl_pattern_diff(buf, len, seed);
  wl_check(c, d < 0, "%s: message differs at byte %ld", what, d);
}

static void check_empty(struct wl_check* c, const char* what, int fd) {
  ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  wl_check(c, r < 0 && errno == EAGAIN, "%s: more queued than was dumped (%zd)", what, r);
}

static void check_flow(struct wl_check* c, const char* what, int a, int b, int msgs) {
  for (int dir = 0; dir < 2; dir++) {
    int from = dir ? b : a, to = dir ? a : b;
    wl_pattern(buf, 333, 90 + (uint32_t)dir);
    if (!wl_check(c, send(from, buf, 333, MSG_NOSIGNAL) == 333, "%s: send after the restore: %s",
                  what, strerror(errno)))
      return;
    if (msgs)
      check_msg(c, what, to, 333, 90 + (uint32_t)dir);
    else
      check_stream(c, what, to, 333, 90 + (uint32_t)dir);
  }
}

static int sockopt(int fd, int name) {
  int v = -1;
  socklen_t l = sizeof v;
  getsockopt(fd, SOL_SOCKET, name, &v, &l);
  return v;
}

static long long timeo_us(int fd, int name) {
  struct timeval tv = {0, 0};
  socklen_t l = sizeof tv;
  getsockopt(fd, SOL_SOCKET, name, &tv, &l);
  return (long long)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* The name of a socket (peer: of its peer) as "path" or "@abstract". */
static void name_of(int fd, int peer, char* out, size_t n) {
  struct sockaddr_un a;
  socklen_t l = sizeof a;
  memset(&a, 0, sizeof a);
  int r =
      peer ? getpeername(fd, (struct sockaddr*)&a, &l) : getsockname(fd, (struct sockaddr*)&a, &l);
  size_t plen =
      l > offsetof(struct sockaddr_un, sun_path) ? l - offsetof(struct sockaddr_un, sun_path) : 0;
  if (r != 0)
    snprintf(out, n, "(error %s)", strerror(errno));
  else if (plen == 0)
    snprintf(out, n, "(unnamed)");
  else if (a.sun_path[0] == '\0')
    snprintf(out, n, "@%.*s", (int)plen - 1, a.sun_path + 1);
  else
    snprintf(out, n, "%s", a.sun_path);
}

static void check_name(struct wl_check* c, const char* what, int fd, int peer, const char* want) {
  char got[256];
  name_of(fd, peer, got, sizeof got);
  wl_check(c, strcmp(got, want) == 0, "%s: %s is '%s', want '%s'", what,
           peer ? "peer name" : "name", got, want);
}

static int child_main(void) {
  close(sp[0]);
  send_pattern(sp[1], SP_TO_ROOT, 2, "sp to the root");
  wl_child_ready();
  struct wl_check c;
  if (wl_await("child", &c) != 0) return 1;
  check_stream(&c, "sp in the child", sp[1], SP_TO_CHILD, 1);
  /* qp[0] is the root's open file too. */
  long same = syscall(SYS_kcmp, getpid(), getppid(), KCMP_FILE, qp[0], qp[0]);
  wl_check(&c, same == 0, "qp[0] is not the root's open file any more (kcmp %ld)", same);
  /* Then 444 bytes to the root, which answers with 333. */
  send_pattern(sp[1], 444, 96, "sp after the restore");
  check_stream(&c, "sp flow in the child", sp[1], 333, 95);
  check_empty(&c, "sp[1]", sp[1]);
  return wl_check_result("child", &c);
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dp) ||
      socketpair(AF_UNIX, SOCK_SEQPACKET, 0, qp) || socketpair(AF_UNIX, SOCK_STREAM, 0, sh) ||
      socketpair(AF_UNIX, SOCK_STREAM, 0, pc))
    wl_die("root", "socketpair: %s", strerror(errno));
  send_pattern(sp[0], SP_TO_CHILD, 1, "sp to the child");

  send_pattern(dp[0], 10, 11, "dp");
  send_pattern(dp[0], 0, 12, "dp");
  send_pattern(dp[0], 700, 13, "dp");
  send_pattern(dp[1], 5, 14, "dp");
  send_pattern(dp[1], 2000, 15, "dp");
  int zero = 0;
  if (setsockopt(dp[1], SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero) != 0)
    wl_die("root", "SO_PEEK_OFF: %s", strerror(errno));

  send_pattern(qp[1], 64, 21, "qp");
  send_pattern(qp[1], 1, 22, "qp");
  send_pattern(qp[0], 300, 23, "qp");
  int one = 1, sndbuf = 65536;
  struct timeval rt = {1, 500000}, st = {2, 250000};
  if (setsockopt(qp[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) ||
      setsockopt(qp[0], SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt) ||
      setsockopt(qp[0], SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st) ||
      setsockopt(qp[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf))
    wl_die("root", "setsockopt: %s", strerror(errno));
  fcntl(qp[1], F_SETFL, O_NONBLOCK);

  snprintf(ls_path, sizeof ls_path, "%s/listen.sock", wl_statedir);
  snprintf(ds_path, sizeof ds_path, "%s/dsender.sock", wl_statedir);
  int me = getpid();
  snprintf(c1_name, sizeof c1_name, "kleap-unix00-%d-c1", me);
  snprintf(c2_name, sizeof c2_name, "kleap-unix00-%d-c2", me);
  snprintf(c3_name, sizeof c3_name, "kleap-unix00-%d-c3", me);
  snprintf(ad_name, sizeof ad_name, "kleap-unix00-%d-ad", me);
  ls = make(SOCK_STREAM, ls_path, 0);
  if (chmod(ls_path, 0640) != 0) wl_die("root", "chmod: %s", strerror(errno));
  if (listen(ls, 8) != 0) wl_die("root", "listen: %s", strerror(errno));
  c1 = make(SOCK_STREAM, c1_name, 1);
  do_connect(c1, ls_path, 0);
  acc = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
  if (acc < 0) wl_die("root", "accept: %s", strerror(errno));
  send_pattern(c1, ACC_LEN, 31, "c1");
  send_pattern(acc, ACC_LEN, 32, "acc");
  c2 = make(SOCK_STREAM, c2_name, 1);
  do_connect(c2, ls_path, 0);
  c3 = make(SOCK_STREAM, c3_name, 1);
  do_connect(c3, ls_path, 0);

  if (fchdir(wl_dirfd) != 0) wl_die("root", "chdir STATEDIR: %s", strerror(errno));
  rl = make(SOCK_STREAM, "rel.sock", 0);
  if (listen(rl, 2) != 0) wl_die("root", "listen rel.sock: %s", strerror(errno));
  rc = make(SOCK_STREAM, NULL, 0);
  do_connect(rc, "rel.sock", 0);
  ra = accept(rl, NULL, NULL);
  rd = make(SOCK_DGRAM, "reld.sock", 0);
  int rc2 = make(SOCK_DGRAM, NULL, 0);
  struct sockaddr_un ra_addr;
  socklen_t ra_len = set_addr(&ra_addr, "reld.sock", 0);
  if (ra < 0 || sendto(rc2, "rel!", 4, 0, (struct sockaddr*)&ra_addr, ra_len) != 4)
    wl_die("root", "rel: %s", strerror(errno));
  close(rc2);
  snprintf(uq_name, sizeof uq_name, "kleap-unix00-uq-%d", (int)getpid());
  uq = make(SOCK_SEQPACKET, uq_name, 1);
  ad = make(SOCK_DGRAM, ad_name, 1);
  int anon = make(SOCK_DGRAM, NULL, 0);
  struct sockaddr_un a;
  socklen_t al = set_addr(&a, ad_name, 1);
  wl_pattern(buf, 77, 41);
  if (sendto(anon, buf, 77, 0, (struct sockaddr*)&a, al) != 77)
    wl_die("root", "sendto ad: %s", strerror(errno));
  close(anon);
  ds = make(SOCK_DGRAM, ds_path, 0);
  wl_pattern(buf, 88, 42);
  if (sendto(ds, buf, 88, 0, (struct sockaddr*)&a, al) != 88)
    wl_die("root", "sendto ad: %s", strerror(errno));

  snprintf(lg_path, sizeof lg_path, "%s/log.sock", wl_statedir);
  snprintf(gone_path, sizeof gone_path, "%s/gone.sock", wl_statedir);
  lg = make(SOCK_DGRAM, lg_path, 0);
  lc = make(SOCK_DGRAM, NULL, 0);
  do_connect(lc, lg_path, 0);
  send_pattern(lc, 33, 71, "lc");
  int lx = make(SOCK_DGRAM, NULL, 0);
  do_connect(lx, lg_path, 0);
  close(lx);
  int gone = make(SOCK_DGRAM, gone_path, 0);
  gn = make(SOCK_DGRAM, NULL, 0);
  do_connect(gn, gone_path, 0);
  close(gone);
  unlink(gone_path);
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dq) != 0)
    wl_die("root", "socketpair dq: %s", strerror(errno));
  send_pattern(dq[1], 21, 81, "dq 1");
  send_pattern(dq[1], 22, 82, "dq 2");
  close(dq[1]);
  snprintf(me_path, sizeof me_path, "%s/me.sock", wl_statedir);
  self_sk = make(SOCK_DGRAM, me_path, 0);
  do_connect(self_sk, me_path, 0);
  send_pattern(self_sk, 31, 91, "me");

  send_pattern(sh[0], 100, 51, "sh");
  if (shutdown(sh[0], SHUT_WR) != 0) wl_die("root", "shutdown: %s", strerror(errno));
  send_pattern(pc[1], 50, 61, "pc");
  close(pc[1]);

  pid_t child = wl_fork();
  if (child < 0) wl_die("root", "fork: %s", strerror(errno));
  if (child == 0) return child_main();
  close(sp[1]);
  char why[256];
  if (wl_wait_children(why, sizeof why) != 0) wl_die("root", "%s", why);
  int qp0_sndbuf = sockopt(qp[0], SO_SNDBUF), qp1_fl = fcntl(qp[1], F_GETFL);
  /* The kernel keeps timeouts in jiffies: compare with what it reports. */
  long long rcvtimeo = timeo_us(qp[0], SO_RCVTIMEO), sndtimeo = timeo_us(qp[0], SO_SNDTIMEO);
  struct stat ls_st;
  if (stat(ls_path, &ls_st) != 0) wl_die("root", "stat: %s", strerror(errno));
  wl_ready("root child");

  struct wl_check c;
  if (wl_await("root", &c) != 0) return 1;
  check_stream(&c, "sp in the root", sp[0], SP_TO_ROOT, 2);

  wl_check(&c, sockopt(dp[1], SO_PEEK_OFF) == 0, "dp[1]: SO_PEEK_OFF %d, want 0",
           sockopt(dp[1], SO_PEEK_OFF));
  zero = -1;
  setsockopt(dp[1], SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero);
  wl_check(&c, wl_fionread(dp[1]) == 10, "dp[1]: FIONREAD %d, want 10", wl_fionread(dp[1]));
  check_msg(&c, "dp[1] 1st", dp[1], 10, 11);
  check_msg(&c, "dp[1] 2nd", dp[1], 0, 12);
  check_msg(&c, "dp[1] 3rd", dp[1], 700, 13);
  check_empty(&c, "dp[1]", dp[1]);
  check_msg(&c, "dp[0] 1st", dp[0], 5, 14);
  check_msg(&c, "dp[0] 2nd", dp[0], 2000, 15);
  check_empty(&c, "dp[0]", dp[0]);
  check_flow(&c, "dp", dp[0], dp[1], 1);

  wl_check(&c, sockopt(qp[0], SO_TYPE) == SOCK_SEQPACKET, "qp[0]: SO_TYPE %d",
           sockopt(qp[0], SO_TYPE));
  char rn[128], rn2[128], rn3[128], rn4[128];
  name_of(rl, 0, rn, sizeof rn);
  name_of(ra, 0, rn2, sizeof rn2);
  name_of(rc, 1, rn3, sizeof rn3);
  name_of(rd, 0, rn4, sizeof rn4);
  wl_check(&c,
           !strcmp(rn, "rel.sock") && !strcmp(rn2, "rel.sock") && !strcmp(rn3, "rel.sock") &&
               !strcmp(rn4, "reld.sock"),
           "relative names: rl %s ra %s rc's peer %s rd %s", rn, rn2, rn3, rn4);
  char rb[8] = {0};
  wl_check(&c, recv(rd, rb, sizeof rb, MSG_DONTWAIT) == 4 && !memcmp(rb, "rel!", 4),
           "rd: its message is gone");
  int rc3 = make(SOCK_STREAM, NULL, 0);
  struct sockaddr_un rl_addr;
  socklen_t rl_len = set_addr(&rl_addr, "rel.sock", 0);
  int ra3 = -1;
  if (connect(rc3, (struct sockaddr*)&rl_addr, rl_len) == 0) ra3 = accept(rl, NULL, NULL);
  wl_check(&c, ra3 >= 0 && write(rc, "1", 1) == 1 && wl_read_full(ra, rb, 1) == 1,
           "rl: a new connection by its relative name or the old one fails: %s", strerror(errno));
  char uq_now[128], uq_want[128];
  name_of(uq, 0, uq_now, sizeof uq_now);
  snprintf(uq_want, sizeof uq_want, "@%s", uq_name);
  wl_check(&c, sockopt(uq, SO_TYPE) == SOCK_SEQPACKET && strcmp(uq_now, uq_want) == 0,
           "uq: SO_TYPE %d name %s, want %s", sockopt(uq, SO_TYPE), uq_now, uq_want);
  wl_check(&c, sockopt(qp[0], SO_PASSCRED) == 1, "qp[0]: SO_PASSCRED %d",
           sockopt(qp[0], SO_PASSCRED));
  wl_check(&c, sockopt(qp[1], SO_PASSCRED) == 0, "qp[1]: SO_PASSCRED %d",
           sockopt(qp[1], SO_PASSCRED));
  wl_check(&c, timeo_us(qp[0], SO_RCVTIMEO) == rcvtimeo && rcvtimeo > 1000000,
           "qp[0]: SO_RCVTIMEO %lld us, was %lld", timeo_us(qp[0], SO_RCVTIMEO), rcvtimeo);
  wl_check(&c, timeo_us(qp[0], SO_SNDTIMEO) == sndtimeo && sndtimeo > 2000000,
           "qp[0]: SO_SNDTIMEO %lld us, was %lld", timeo_us(qp[0], SO_SNDTIMEO), sndtimeo);
  wl_check(&c, sockopt(qp[0], SO_SNDBUF) == qp0_sndbuf, "qp[0]: SO_SNDBUF %d, was %d",
           sockopt(qp[0], SO_SNDBUF), qp0_sndbuf);
  wl_check(&c, fcntl(qp[1], F_GETFL) == qp1_fl, "qp[1]: F_GETFL 0%o, was 0%o",
           fcntl(qp[1], F_GETFL), qp1_fl);
  check_msg(&c, "qp[0] 1st", qp[0], 64, 21);
  check_msg(&c, "qp[0] 2nd", qp[0], 1, 22);
  check_empty(&c, "qp[0]", qp[0]);
  check_msg(&c, "qp[1]", qp[1], 300, 23);
  check_empty(&c, "qp[1]", qp[1]);
  check_flow(&c, "qp", qp[0], qp[1], 1);

  struct stat now;
  wl_check(&c, stat(ls_path, &now) == 0 && S_ISSOCK(now.st_mode) && (now.st_mode & 07777) == 0640,
           "%s: not a socket file of mode 0640 (mode 0%o)", ls_path, (unsigned)now.st_mode);
  wl_check(&c, sockopt(ls, SO_ACCEPTCONN) == 1, "ls: not listening");
  check_name(&c, "ls", ls, 0, ls_path);
  char at[80];
  snprintf(at, sizeof at, "@%s", c1_name);
  check_name(&c, "c1", c1, 0, at);
  check_name(&c, "c1", c1, 1, ls_path);
  check_name(&c, "acc", acc, 0, ls_path);
  check_name(&c, "acc", acc, 1, at);
  check_stream(&c, "acc", acc, ACC_LEN, 31);
  check_stream(&c, "c1", c1, ACC_LEN, 32);
  check_empty(&c, "acc", acc);
  check_empty(&c, "c1", c1);
  check_flow(&c, "c1/acc", c1, acc, 0);
  fcntl(ls, F_SETFL, O_NONBLOCK);
  int a2 = accept4(ls, NULL, NULL, SOCK_NONBLOCK), a3 = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
  int a4 = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
  wl_check(&c, a2 >= 0 && a3 >= 0 && a4 < 0, "ls: accepted %d, %d, %d: want two waiting", a2, a3,
           a4);
  if (a2 >= 0 && a3 >= 0) {
    snprintf(at, sizeof at, "@%s", c2_name);
    check_name(&c, "1st waiting", a2, 1, at);
    snprintf(at, sizeof at, "@%s", c3_name);
    check_name(&c, "2nd waiting", a3, 1, at);
    check_flow(&c, "c2", c2, a2, 0);
    check_flow(&c, "c3", c3, a3, 0);
  }

  snprintf(at, sizeof at, "@%s", ad_name);
  check_name(&c, "ad", ad, 0, at);
  struct sockaddr_un from;
  socklen_t fl = sizeof from;
  ssize_t r = recvfrom(ad, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr*)&from, &fl);
  wl_check(
      &c,
      r == 77 && wl_pattern_diff(buf, 77, 41) < 0 && fl <= offsetof(struct sockaddr_un, sun_path),
      "ad: 1st message %zd bytes from a sender of name length %u, want 77 unnamed", r,
      (unsigned)fl);
  fl = sizeof from;
  r = recvfrom(ad, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr*)&from, &fl);
  wl_check(&c, r == 88 && wl_pattern_diff(buf, 88, 42) < 0 && strcmp(from.sun_path, ds_path) == 0,
           "ad: 2nd message %zd bytes from '%s', want 88 from %s", r,
           fl > offsetof(struct sockaddr_un, sun_path) ? from.sun_path : "", ds_path);
  check_empty(&c, "ad", ad);
  check_name(&c, "ds", ds, 0, ds_path);

  check_name(&c, "lg", lg, 0, lg_path);
  r = recv(lg, buf, sizeof buf, MSG_DONTWAIT);
  wl_check(&c, r == 33 && wl_pattern_diff(buf, 33, 71) < 0,
           "lg: queued message of %zd bytes, want 33", r);
  send_pattern(lc, 44, 72, "lc after the restore");
  r = recv(lg, buf, sizeof buf, MSG_DONTWAIT);
  wl_check(&c, r == 44 && wl_pattern_diff(buf, 44, 72) < 0, "lg: new message of %zd bytes, want 44",
           r);
  errno = 0;
  r = send(gn, "x", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  wl_check(&c, r < 0 && errno == ECONNREFUSED, "gn: 1st send gave %zd (%s), want ECONNREFUSED", r,
           strerror(errno));
  errno = 0;
  r = send(gn, "x", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  wl_check(&c, r < 0 && errno == ENOTCONN, "gn: 2nd send gave %zd (%s), want ENOTCONN", r,
           strerror(errno));

  r = recv(dq[0], buf, sizeof buf, MSG_DONTWAIT);
  wl_check(&c, r == 21 && wl_pattern_diff(buf, 21, 81) < 0, "dq[0]: 1st message %zd bytes", r);
  r = recv(dq[0], buf, sizeof buf, MSG_DONTWAIT);
  wl_check(&c, r == 22 && wl_pattern_diff(buf, 22, 82) < 0, "dq[0]: 2nd message %zd bytes", r);
  errno = 0;
  r = send(dq[0], "x", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  wl_check(&c, r < 0 && errno == ECONNREFUSED, "dq[0]: send gave %zd (%s), want ECONNREFUSED", r,
           strerror(errno));

  check_name(&c, "me", self_sk, 0, me_path);
  check_name(&c, "me's peer", self_sk, 1, me_path);
  r = recv(self_sk, buf, sizeof buf, MSG_DONTWAIT);
  wl_check(&c, r == 31 && wl_pattern_diff(buf, 31, 91) < 0, "me: queued message %zd bytes", r);
  send_pattern(self_sk, 32, 92, "me after the restore");
  r = recv(self_sk, buf, sizeof buf, MSG_DONTWAIT);
  wl_check(&c, r == 32 && wl_pattern_diff(buf, 32, 92) < 0, "me: new message %zd bytes", r);

  check_stream(&c, "sh", sh[1], 100, 51);
  r = recv(sh[1], buf, 1, MSG_DONTWAIT);
  wl_check(&c, r == 0, "sh[1]: no EOF after the queued bytes (%zd)", r);
  r = send(sh[0], buf, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
  wl_check(&c, r < 0 && errno == EPIPE, "sh[0]: send after SHUT_WR gave %zd (%s)", r,
           strerror(errno));
  wl_pattern(buf, 10, 52);
  wl_check(&c, send(sh[1], buf, 10, MSG_NOSIGNAL) == 10, "sh[1]: send: %s", strerror(errno));
  check_stream(&c, "sh back", sh[0], 10, 52);

  check_stream(&c, "pc", pc[0], 50, 61);
  r = recv(pc[0], buf, 1, MSG_DONTWAIT);
  wl_check(&c, r == 0, "pc[0]: no EOF after its peer closed (%zd)", r);

  check_stream(&c, "sp after the restore", sp[0], 444, 96);
  check_empty(&c, "sp[0]", sp[0]); /* before the child can finish and close */
  send_pattern(sp[0], 333, 95, "sp flow");
  if (wl_reap_children(5000, why, sizeof why) != 0) wl_check(&c, 0, "root: %s", why);
  return wl_check_result("root", &c);
}
