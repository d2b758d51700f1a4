/* netlink00: netlink sockets, the kind every system daemon holds.
 *   route    NETLINK_ROUTE, autobound by a first request, in RTNLGRP_TC (quiet: an event queued
 * would be refused) and in a group past 32 (so only NETLINK_LIST_MEMBERSHIPS shows it), with
 *            NETLINK_EXT_ACK and NETLINK_NO_ENOBUFS, O_NONBLOCK;
 *   audit    NETLINK_AUDIT, never bound (as dbus-daemon holds one);
 *   uevent   NETLINK_KOBJECT_UEVENT bound to group 1 with a classic BPF filter;
 *   generic  NETLINK_GENERIC bound to a port id chosen here, connected to the kernel.
 * After SIGUSR1 each must be what it was (port ids, groups, options, filter, flags),
 * and the route and generic sockets must still talk to the kernel. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "workload.h"

#ifndef SO_GET_FILTER
#define SO_GET_FILTER SO_ATTACH_FILTER
#endif

struct nl_state {
  unsigned portid;
  unsigned groups[4];
  int ext_ack, no_enobufs, flags;
  unsigned filter_len;
};

static const char* role = "main";

static void snapshot(int fd, struct nl_state* s) {
  memset(s, 0, sizeof *s);
  struct sockaddr_nl a;
  socklen_t len = sizeof a;
  memset(&a, 0, sizeof a);
  getsockname(fd, (struct sockaddr*)&a, &len);
  s->portid = a.nl_pid;
  len = sizeof s->groups;
  getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, s->groups, &len);
  len = sizeof s->ext_ack;
  getsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &s->ext_ack, &len);
  len = sizeof s->no_enobufs;
  getsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &s->no_enobufs, &len);
  s->flags = fcntl(fd, F_GETFL) & (O_NONBLOCK | O_ACCMODE);
  len = 0;
  if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, NULL, &len) == 0) s->filter_len = len;
}

static void compare(struct wl_check* c, const char* name, const struct nl_state* was,
                    const struct nl_state* now) {
  wl_check(c, was->portid == now->portid, "%s: port %u, was %u", name, now->portid, was->portid);
  for (int i = 0; i < 4; i++)
    wl_check(c, was->groups[i] == now->groups[i], "%s: groups word %d is %#x, was %#x", name, i,
             now->groups[i], was->groups[i]);
  wl_check(c, was->ext_ack == now->ext_ack, "%s: NETLINK_EXT_ACK %d, was %d", name, now->ext_ack,
           was->ext_ack);
  wl_check(c, was->no_enobufs == now->no_enobufs, "%s: NETLINK_NO_ENOBUFS %d, was %d", name,
           now->no_enobufs, was->no_enobufs);
  wl_check(c, was->flags == now->flags, "%s: flags %#x, was %#x", name, now->flags, was->flags);
  wl_check(c, was->filter_len == now->filter_len, "%s: a filter of %u instructions, was %u", name,
           now->filter_len, was->filter_len);
}

static int sock(int protocol) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
  if (fd < 0) wl_skip("netlink protocol %d: %s", protocol, strerror(errno));
  return fd;
}

static void set_int(int fd, int level, int name, int v, const char* what) {
  if (setsockopt(fd, level, name, &v, sizeof v) != 0)
    wl_die(role, "setsockopt %s: %s", what, strerror(errno));
}

/* Asks for one link (lo) and reads the answer: 0 when it came, with our sequence. */
static int ask_route(int fd, unsigned seq, char* why, size_t n) {
  struct {
    struct nlmsghdr h;
    struct ifinfomsg i;
  } req;
  memset(&req, 0, sizeof req);
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = RTM_GETLINK;
  req.h.nlmsg_flags = NLM_F_REQUEST;
  req.h.nlmsg_seq = seq;
  req.i.ifi_family = AF_UNSPEC;
  req.i.ifi_index = 1;
  if (send(fd, &req, sizeof req, 0) != (ssize_t)sizeof req) {
    snprintf(why, n, "send RTM_GETLINK: %s", strerror(errno));
    return -1;
  }
  static char buf[16384];
  for (int tries = 0; tries < 100; tries++) {
    ssize_t got = recv(fd, buf, sizeof buf, 0);
    if (got < 0 && errno == EAGAIN) {
      wl_sleep_ms(10);
      continue;
    }
    const struct nlmsghdr* h = (const struct nlmsghdr*)buf;
    if (got < (ssize_t)sizeof *h) {
      snprintf(why, n, "recv: %s", got < 0 ? strerror(errno) : "short");
      return -1;
    }
    if (h->nlmsg_seq != seq) continue; /* a link event of the group */
    if (h->nlmsg_type != RTM_NEWLINK) {
      snprintf(why, n, "answer type %u, want RTM_NEWLINK", h->nlmsg_type);
      return -1;
    }
    return 0;
  }
  snprintf(why, n, "no answer to RTM_GETLINK within a second");
  return -1;
}

/* CTRL_CMD_GETFAMILY for "nlctrl" on the generic socket. */
static int ask_generic(int fd, unsigned seq, char* why, size_t n) {
  struct {
    struct nlmsghdr h;
    struct genlmsghdr g;
    struct nlattr a;
    char name[8];
  } req;
  memset(&req, 0, sizeof req);
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = GENL_ID_CTRL;
  req.h.nlmsg_flags = NLM_F_REQUEST;
  req.h.nlmsg_seq = seq;
  req.g.cmd = CTRL_CMD_GETFAMILY;
  req.g.version = 1;
  req.a.nla_type = CTRL_ATTR_FAMILY_NAME;
  req.a.nla_len = sizeof req.a + sizeof "nlctrl";
  memcpy(req.name, "nlctrl", sizeof "nlctrl");
  if (send(fd, &req, sizeof req, 0) != (ssize_t)sizeof req) {
    snprintf(why, n, "send CTRL_CMD_GETFAMILY: %s", strerror(errno));
    return -1;
  }
  static char buf[8192];
  ssize_t got = recv(fd, buf, sizeof buf, 0);
  const struct nlmsghdr* h = (const struct nlmsghdr*)buf;
  if (got < (ssize_t)sizeof *h || h->nlmsg_seq != seq || h->nlmsg_type != GENL_ID_CTRL) {
    snprintf(why, n, "CTRL_CMD_GETFAMILY: no answer (%zd, %s)", got,
             got < 0 ? strerror(errno) : "wrong message");
    return -1;
  }
  return 0;
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  char why[256];

  int route = sock(NETLINK_ROUTE);
  set_int(route, SOL_NETLINK, NETLINK_EXT_ACK, 1, "NETLINK_EXT_ACK");
  set_int(route, SOL_NETLINK, NETLINK_NO_ENOBUFS, 1, "NETLINK_NO_ENOBUFS");
  set_int(route, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_TC, "join RTNLGRP_TC");
  set_int(route, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 33, "join group 33");
  if (fcntl(route, F_SETFL, O_NONBLOCK) != 0) wl_die(role, "O_NONBLOCK: %s", strerror(errno));
  if (ask_route(route, 1, why, sizeof why) != 0) wl_die(role, "route: %s", why);

  int audit = sock(NETLINK_AUDIT);

  int uevent = sock(NETLINK_KOBJECT_UEVENT);
  struct sockaddr_nl a;
  memset(&a, 0, sizeof a);
  a.nl_family = AF_NETLINK;
  a.nl_groups = 1;
  if (bind(uevent, (struct sockaddr*)&a, sizeof a) != 0)
    wl_die(role, "bind uevent: %s", strerror(errno));
  /* Accept everything, in two instructions: the count is what is compared. */
  struct sock_filter insns[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
      BPF_STMT(BPF_RET | BPF_K, 0xffffffff),
  };
  struct sock_fprog prog = {2, insns};
  if (setsockopt(uevent, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) != 0)
    wl_die(role, "attach a filter: %s", strerror(errno));

  int generic = sock(NETLINK_GENERIC);
  memset(&a, 0, sizeof a);
  a.nl_family = AF_NETLINK;
  a.nl_pid = 0x40000000u | (unsigned)getpid();
  if (bind(generic, (struct sockaddr*)&a, sizeof a) != 0)
    wl_die(role, "bind generic to port %#x: %s", a.nl_pid, strerror(errno));
  memset(&a, 0, sizeof a);
  a.nl_family = AF_NETLINK; /* the kernel: port 0 */
  if (connect(generic, (struct sockaddr*)&a, sizeof a) != 0)
    wl_die(role, "connect generic: %s", strerror(errno));
  if (ask_generic(generic, 1, why, sizeof why) != 0) wl_die(role, "generic: %s", why);

  struct nl_state was[4], now[4];
  int fds[4] = {route, audit, uevent, generic};
  const char* names[4] = {"route", "audit", "uevent", "generic"};
  for (int i = 0; i < 4; i++) snapshot(fds[i], &was[i]);
  wl_log("ports: route %u, audit %u, uevent %u, generic %#x", was[0].portid, was[1].portid,
         was[2].portid, was[3].portid);
  wl_ready(role);

  struct wl_check c;
  if (wl_await(role, &c) < 0) return 1;
  for (int i = 0; i < 4; i++) {
    snapshot(fds[i], &now[i]);
    compare(&c, names[i], &was[i], &now[i]);
  }
  wl_check(&c, was[1].portid == 0, "audit: bound to %u before the dump", was[1].portid);
  wl_check(&c, was[0].groups[1] & 1, "route: group 33 was not joined (%#x)", was[0].groups[1]);
  if (ask_route(route, 2, why, sizeof why) != 0) wl_check(&c, 0, "route after: %s", why);
  if (ask_generic(generic, 2, why, sizeof why) != 0) wl_check(&c, 0, "generic after: %s", why);
  return wl_check_result(role, &c);
}
