/* unsupported00: holds resources the engine refuses to carry.
 *   an io_uring instance (raw io_uring_setup), and
 *   a NETLINK_ROUTE socket with the answer to a link dump request queued on it
 *   (a netlink socket with nothing queued is carried, see netlink00), and
 *   a fanotify group marking STATEDIR.
 * Used by the `refuse` mode: `kleap check` must name both, `kleap dump` must
 * fail, and the tree must keep running. On SIGUSR1 it checks every fd is
 * still open and what it was. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdio.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425 /* the same on x86_64 and i386 */
#endif

static void link_of(int fd, char* out, size_t n) {
  char p[64];
  snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  ssize_t l = readlink(p, out, n - 1);
  out[l > 0 ? l : 0] = '\0';
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  int fd = open("/proc/sys/kernel/io_uring_disabled", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char v[8] = "";
    ssize_t r = read(fd, v, sizeof v - 1);
    close(fd);
    if (r > 0 && v[0] == '2') wl_skip("io_uring is disabled (kernel.io_uring_disabled = 2)");
  }
  unsigned char params[120]; /* struct io_uring_params */
  memset(params, 0, sizeof params);
  int ring = (int)syscall(__NR_io_uring_setup, 4, params);
  if (ring < 0) wl_skip("io_uring_setup: %s", strerror(errno));
  int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (nl < 0) wl_skip("netlink socket: %s", strerror(errno));
  struct sockaddr_nl sa;
  memset(&sa, 0, sizeof sa);
  sa.nl_family = AF_NETLINK;
  if (bind(nl, (struct sockaddr*)&sa, sizeof sa) != 0)
    wl_die("main", "bind netlink: %s", strerror(errno));
  struct {
    struct nlmsghdr h;
    struct rtgenmsg g;
  } req;
  memset(&req, 0, sizeof req);
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = RTM_GETLINK;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.h.nlmsg_seq = 1;
  req.g.rtgen_family = AF_UNSPEC;
  if (send(nl, &req, sizeof req, 0) != (ssize_t)sizeof req)
    wl_die("main", "send a link dump request: %s", strerror(errno));
  int fan = fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC, O_RDONLY);
  if (fan < 0) wl_skip("fanotify_init: %s", strerror(errno));
  if (fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN, wl_dirfd, NULL) != 0)
    wl_die("main", "fanotify_mark: %s", strerror(errno));
  char ring_link[256], nl_link[256], fan_link[256];
  link_of(ring, ring_link, sizeof ring_link);
  link_of(nl, nl_link, sizeof nl_link);
  link_of(fan, fan_link, sizeof fan_link);
  wl_log("io_uring fd %d -> %s, netlink fd %d -> %s, fanotify fd %d -> %s", ring, ring_link, nl,
         nl_link, fan, fan_link);
  wl_ready("main");
  struct wl_check c;
  wl_check_init(&c);
  if (!wl_check(&c, wl_wait() == 0, "timeout waiting for SIGUSR1"))
    return wl_check_result("main", &c);
  char now[256];
  link_of(ring, now, sizeof now);
  wl_check(&c, strcmp(now, ring_link) == 0, "io_uring fd %d links to '%s', was '%s'", ring, now,
           ring_link);
  link_of(nl, now, sizeof now);
  wl_check(&c, strcmp(now, nl_link) == 0, "netlink fd %d links to '%s', was '%s'", nl, now,
           nl_link);
  link_of(fan, now, sizeof now);
  wl_check(&c, strcmp(now, fan_link) == 0, "fanotify fd %d links to '%s', was '%s'", fan, now,
           fan_link);
  int type = 0;
  socklen_t len = sizeof type;
  wl_check(&c, getsockopt(nl, SOL_SOCKET, SO_PROTOCOL, &type, &len) == 0 && type == NETLINK_ROUTE,
           "netlink fd %d: protocol %d, want NETLINK_ROUTE", nl, type);
  /* check and dump only peeked: the first part of the answer is still there. */
  char answer[8192];
  ssize_t n = recv(nl, answer, sizeof answer, MSG_DONTWAIT);
  const struct nlmsghdr* h = (const struct nlmsghdr*)answer;
  wl_check(&c,
           n >= (ssize_t)sizeof *h && h->nlmsg_seq == 1 &&
               (h->nlmsg_type == RTM_NEWLINK || h->nlmsg_type == NLMSG_DONE),
           "netlink fd %d: the queued answer is gone (recv %zd: %s)", nl, n,
           n < 0 ? strerror(errno) : "not the link dump");
  return wl_check_result("main", &c);
}
