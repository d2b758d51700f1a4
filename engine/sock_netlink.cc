// Netlink sockets: a task's channel to the kernel (rtnetlink, audit, uevents, generic
// netlink, ...). What the socket itself holds is read back exactly: the protocol, the
// port id it is bound to, its multicast groups, the port or group it is connected to,
// its options and a classic BPF filter. A message queued on it, or a dump the kernel
// is in the middle of, can't be carried: a request whose answer is still coming is
// refused. Protocols whose kernel side keeps state keyed by the port id (netfilter
// queues and logs, the proc connector's listener count) are refused too.
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "engine/context.h"
#include "engine/files.h"
#include "engine/sock.h"

namespace kleap {
namespace {

// The protocols whose whole state is in the socket. Others keep state keyed by the port
// id on the kernel side, which a new socket would not have.
constexpr struct {
  int protocol;
  const char* name;
} kCarried[] = {
    {NETLINK_ROUTE, "route"},           {NETLINK_USERSOCK, "usersock"},
    {NETLINK_SOCK_DIAG, "sock_diag"},   {NETLINK_XFRM, "xfrm"},
    {NETLINK_SELINUX, "selinux"},       {NETLINK_AUDIT, "audit"},
    {NETLINK_FIB_LOOKUP, "fib_lookup"}, {NETLINK_KOBJECT_UEVENT, "uevent"},
    {NETLINK_GENERIC, "generic"},       {NETLINK_CRYPTO, "crypto"},
};

// Options that hold a flag; carried when set.
constexpr struct {
  int level, name;
  const char* label;
} kFlagOpts[] = {
    {SOL_NETLINK, NETLINK_PKTINFO, "NETLINK_PKTINFO"},
    {SOL_NETLINK, NETLINK_BROADCAST_ERROR, "NETLINK_BROADCAST_ERROR"},
    {SOL_NETLINK, NETLINK_NO_ENOBUFS, "NETLINK_NO_ENOBUFS"},
    {SOL_NETLINK, NETLINK_LISTEN_ALL_NSID, "NETLINK_LISTEN_ALL_NSID"},
    {SOL_NETLINK, NETLINK_CAP_ACK, "NETLINK_CAP_ACK"},
    {SOL_NETLINK, NETLINK_EXT_ACK, "NETLINK_EXT_ACK"},
    {SOL_NETLINK, NETLINK_GET_STRICT_CHK, "NETLINK_GET_STRICT_CHK"},
    {SOL_SOCKET, SO_PASSCRED, "SO_PASSCRED"},
};

const char* ProtocolName(int protocol) {
  for (auto& c : kCarried)
    if (c.protocol == protocol) return c.name;
  return nullptr;
}

std::string Describe(const img::FileObject& fo) {
  const char* name = ProtocolName(int(fo.netlink_sock().protocol()));
  std::ostringstream o;
  o << "netlink socket " << fo.id() << " (";
  if (name)
    o << name;
  else
    o << "protocol " << fo.netlink_sock().protocol();
  o << ", port " << fo.netlink_sock().portid() << ")";
  return o.str();
}

// The "Dump" column of /proc/net/netlink for the socket with this inode: 1 while the
// kernel is answering a dump request on it. Unbound sockets aren't listed (nor can they
// have asked for anything yet).
Result<bool> DumpRunning(ino_t inode) {
  std::ifstream in("/proc/net/netlink");
  if (!in) return ErrnoError() << "open /proc/net/netlink";
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string sk;
    unsigned long long eth, pid, groups, rmem, wmem, dump, locks, drops, ino;
    if (!(f >> sk >> eth >> pid >> std::hex >> groups >> std::dec >> rmem >> wmem >> dump >>
          locks >> drops >> ino))
      continue;
    if (ino == inode) return dump != 0;
  }
  return false;
}

}  // namespace

std::string RefuseNetlinkSock(const FdDesc& d) {
  auto grabbed = GrabFd(d.pid, d.fd);
  if (!grabbed) return grabbed.error().ToString();
  int fd = grabbed->get();
  auto protocol = GetInt(fd, SOL_SOCKET, SO_PROTOCOL, "SO_PROTOCOL");
  if (!protocol) return protocol.error().ToString();
  if (!ProtocolName(*protocol)) {
    if (*protocol == NETLINK_NETFILTER)
      return "netfilter netlink sockets are not carried: queue, log and conntrack bindings are "
             "kernel state keyed by the port id";
    if (*protocol == NETLINK_CONNECTOR)
      return "connector netlink sockets are not carried: a listener's registration is kernel "
             "state";
    return "netlink protocol " + std::to_string(*protocol) + " is not carried";
  }
  // Peeking copies the first message without taking it.
  char b;
  ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC);
  if (n >= 0)
    return "a message of " + std::to_string(n) +
           " bytes is queued on it (a kernel answer or event not yet read)";
  auto running = DumpRunning(d.st.st_ino);
  if (!running) return running.error().ToString();
  if (*running) return "the kernel is in the middle of a dump for it";
  auto filter = ReadFilter(fd);
  if (!filter) return filter.error().ToString();
  return "";
}

Result<void> DumpNetlinkSock(DumpContext&, const FdDesc& d, img::FileObject* fo) {
  // DescribeFd asked RefuseNetlinkSock already, with the tree frozen.
  UniqueFd sock = KLEAP_TRY(GrabFd(d.pid, d.fd));
  int fd = sock.get();
  img::NetlinkSock* s = fo->mutable_netlink_sock();
  s->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  s->set_type(uint32_t(KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_TYPE, "SO_TYPE"))));
  s->set_protocol(uint32_t(KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_PROTOCOL, "SO_PROTOCOL"))));
  sockaddr_nl a{};
  socklen_t len = sizeof a;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) < 0)
    return ErrnoError() << "getsockname";
  s->set_portid(a.nl_pid);
  // Every group, also those past the 32 that nl_groups shows.
  std::vector<uint32_t> groups(64);
  len = socklen_t(groups.size() * 4);
  if (getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups.data(), &len) < 0)
    return ErrnoError() << "getsockopt NETLINK_LIST_MEMBERSHIPS";
  if (len > groups.size() * 4) {
    groups.resize((len + 3) / 4);
    if (getsockopt(fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups.data(), &len) < 0)
      return ErrnoError() << "getsockopt NETLINK_LIST_MEMBERSHIPS";
  }
  groups.resize(std::min<size_t>(groups.size(), (len + 3) / 4));
  while (!groups.empty() && !groups.back()) groups.pop_back();
  for (uint32_t g : groups) s->add_groups(g);
  sockaddr_nl peer{};
  len = sizeof peer;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) == 0) {
    s->set_dst_portid(peer.nl_pid);
    s->set_dst_group(peer.nl_groups);
  }
  for (auto& o : kFlagOpts) {
    auto got = GetInt(fd, o.level, o.name, o.label);
    // Older kernels cannot read some of them back (6.1: NETLINK_LISTEN_ALL_NSID,
    // ENOPROTOOPT); such a flag is taken as off, which is its default.
    if (!got && got.error().code() == ENOPROTOOPT) continue;
    int v = KLEAP_TRY(std::move(got));
    if (v) {
      img::SockOpt* opt = s->add_opts();
      opt->set_level(o.level);
      opt->set_name(o.name);
      opt->set_value(v);
    }
  }
  s->set_filter(KLEAP_TRY(ReadFilter(fd)));
  return Ok();
}

Result<void> ValidateNetlinkSock(const img::FileObject& fo) {
  const img::NetlinkSock& s = fo.netlink_sock();
  std::string what = "files.img: " + Describe(fo);
  KLEAP_TRY(ValidateAnonFlags(fo, "netlink socket", s.flags(), O_RDWR));
  if (s.type() != SOCK_RAW && s.type() != SOCK_DGRAM)
    return Err(EINVAL) << what << ": type " << s.type() << " is not SOCK_RAW or SOCK_DGRAM";
  if (!ProtocolName(int(s.protocol())))
    return Err(EINVAL) << what << ": protocol " << s.protocol() << " is not carried";
  if (s.groups_size() > 64)
    return Err(EINVAL) << what << ": " << s.groups_size() << " words of groups";
  for (auto& o : s.opts()) {
    bool known = std::any_of(std::begin(kFlagOpts), std::end(kFlagOpts),
                             [&](auto& k) { return k.level == o.level() && k.name == o.name(); });
    if (!known) return Err(EINVAL) << what << ": option " << o.level() << "/" << o.name();
  }
  if (s.filter().size() % sizeof(sock_filter) || s.filter().size() > BPF_MAXINSNS * 8)
    return Err(EINVAL) << what << ": a filter of " << s.filter().size() << " bytes";
  return Ok();
}

Result<UniqueFd> OpenNetlinkSock(const img::FileObject& fo, ImageReader&, OpenFiles&) {
  const img::NetlinkSock& s = fo.netlink_sock();
  std::string what = Describe(fo);
  UniqueFd fd(socket(AF_NETLINK, int(s.type()) | SOCK_CLOEXEC, int(s.protocol())));
  if (!fd) return ErrnoError() << what << ": socket";
  for (auto& o : s.opts())
    KLEAP_TRY_CTX(SetInt(fd.get(), o.level(), o.name(), o.value(), "option"), what);
  KLEAP_TRY_CTX(AttachFilter(fd.get(), s.filter()), what);
  if (s.portid()) {
    sockaddr_nl a{};
    a.nl_family = AF_NETLINK;
    a.nl_pid = s.portid();
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
      Error e = ErrnoError();
      e << what << ": bind port " << s.portid();
      if (e.code() == EADDRINUSE) e << ": another socket of this protocol has that port";
      return e;
    }
  }
  for (int w = 0; w < s.groups_size(); ++w)
    for (int b = 0; b < 32; ++b) {
      if (!(s.groups(w) >> b & 1)) continue;
      int group = w * 32 + b + 1;
      KLEAP_TRY_CTX(SetInt(fd.get(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group, "join group"),
                    what << ": group " << group);
    }
  if (s.dst_portid() || s.dst_group()) {
    sockaddr_nl a{};
    a.nl_family = AF_NETLINK;
    a.nl_pid = s.dst_portid();
    a.nl_groups = s.dst_group();
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) < 0)
      return ErrnoError() << what << ": connect to port " << s.dst_portid() << " group "
                          << s.dst_group();
  }
  if ((s.flags() & O_NONBLOCK) && fcntl(fd.get(), F_SETFL, O_NONBLOCK) < 0)
    return ErrnoError() << what << ": O_NONBLOCK";
  return fd;
}

}  // namespace kleap
