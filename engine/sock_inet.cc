// Inet sockets: TCP, UDP, UDP-Lite and ping sockets over IPv4 and IPv6.
//
// Dump reads a socket through a copy of the task's fd (pidfd_getfd), never through the
// task. A listening or not yet connected TCP socket and a UDP socket are their
// addresses and options. An established connection is read in TCP repair mode, which
// the tree's network lock makes safe (dump.cc puts it on before any socket is touched):
// sequence numbers, the send and receive queues with their bytes, the options agreed
// with the peer (MSS, window scale, SACK, timestamps) and the window.
//
// Restore makes each socket in the controller, in repair mode for a connection: bound
// to its address, its sequence numbers set, "connected" without a packet, options,
// queues and window set; the connections leave repair mode once every task is rebuilt
// (FinishSockets), and only then does the lock go.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "engine/base/log.h"
#include "engine/context.h"
#include "engine/files.h"
#include "engine/net/netlock.h"
#include "engine/sock.h"
#include "engine/sock_inet.h"

namespace kleap {
namespace {

// UDP-Lite's checksum coverage (linux/udp.h, not in glibc's netinet/udp.h).
constexpr int kUdpliteSendCscov = 10, kUdpliteRecvCscov = 11;

// Ping sockets (SOCK_DGRAM of IPPROTO_ICMP or ICMPV6): their "port" is the echo id.
bool IsPing(int protocol) {
  return protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6;
}
// The datagram inet sockets carried: UDP, UDP-Lite and ping sockets.
bool IsDatagram(int family, int protocol) {
  return protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE ||
         (family == AF_INET && protocol == IPPROTO_ICMP) ||
         (family == AF_INET6 && protocol == IPPROTO_ICMPV6);
}

// Kernel TCP states (include/net/tcp_states.h).
enum TcpState {
  kEstablished = 1,
  kSynSent,
  kSynRecv,
  kFinWait1,
  kFinWait2,
  kTimeWait,
  kClose,
  kCloseWait,
  kLastAck,
  kListen,
  kClosing,
};

// A connection, carried through repair mode: established, or closed by one side or both
// with a FIN not acknowledged yet on ours (TIME_WAIT belongs to the kernel).
bool Connected(uint32_t state) {
  return state == kEstablished || state == kFinWait1 || state == kFinWait2 || state == kCloseWait ||
         state == kLastAck || state == kClosing;
}

constexpr const char* kStateNames[] = {"?",          "ESTABLISHED", "SYN_SENT",  "SYN_RECV",
                                       "FIN_WAIT1",  "FIN_WAIT2",   "TIME_WAIT", "CLOSE",
                                       "CLOSE_WAIT", "LAST_ACK",    "LISTEN",    "CLOSING"};

const char* StateName(uint32_t s) {
  return s < sizeof kStateNames / sizeof *kStateNames ? kStateNames[s] : "?";
}

// A queue can't hold more than this (the kernel's tcp_wmem/tcp_rmem maxima are far
// below); images are untrusted.
constexpr uint32_t kMaxQueue = 64u << 20;
constexpr int kMaxWscale = 14;

// The int options carried when they differ from a new socket's, per level.
struct OptName {
  int level, name;
};
#ifndef SO_BUF_LOCK
#define SO_BUF_LOCK 72
#define SOCK_SNDBUF_LOCK 1
#define SOCK_RCVBUF_LOCK 2
#endif

constexpr OptName kSockOpts[] = {
    {SOL_SOCKET, SO_REUSEADDR},
    {SOL_SOCKET, SO_DONTROUTE},
    {SOL_SOCKET, SO_BUF_LOCK},
    {SOL_SOCKET, SO_REUSEPORT},
    {SOL_SOCKET, SO_KEEPALIVE},
    {SOL_SOCKET, SO_BROADCAST},
    {SOL_SOCKET, SO_OOBINLINE},
    {SOL_SOCKET, SO_PRIORITY},
    {SOL_SOCKET, SO_MARK},
    {SOL_SOCKET, SO_RCVLOWAT},
    {SOL_SOCKET, SO_NO_CHECK},
    {SOL_SOCKET, SO_PASSCRED},
    {SOL_SOCKET, SO_TIMESTAMPNS},
    {SOL_SOCKET, SO_TIMESTAMP},
    {SOL_SOCKET, SO_RXQ_OVFL},
    {SOL_SOCKET, SO_SELECT_ERR_QUEUE},
    {SOL_SOCKET, SO_ZEROCOPY},
    {IPPROTO_UDP, UDP_CORK},
    {IPPROTO_UDPLITE, kUdpliteSendCscov},
    {IPPROTO_UDPLITE, kUdpliteRecvCscov},
    {IPPROTO_TCP, TCP_NODELAY},
    {IPPROTO_TCP, TCP_CORK},
    {IPPROTO_TCP, TCP_KEEPIDLE},
    {IPPROTO_TCP, TCP_KEEPINTVL},
    {IPPROTO_TCP, TCP_KEEPCNT},
    {IPPROTO_TCP, TCP_USER_TIMEOUT},
    {IPPROTO_IP, IP_TOS},
    {IPPROTO_IP, IP_TTL},
    {IPPROTO_IP, IP_FREEBIND},
    {IPPROTO_IP, IP_PKTINFO},
    {IPPROTO_IP, IP_RECVERR},
    {IPPROTO_IP, IP_MTU_DISCOVER},
    {IPPROTO_IP, IP_RECVTOS},
    {IPPROTO_IP, IP_RECVTTL},
    {IPPROTO_IP, IP_MULTICAST_TTL},
    {IPPROTO_IP, IP_MULTICAST_LOOP},
    {IPPROTO_IP, IP_MULTICAST_ALL},
    {IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT},
    {IPPROTO_IP, IP_NODEFRAG},
    {IPPROTO_IP, IP_TRANSPARENT},
    {IPPROTO_IPV6, IPV6_MULTICAST_HOPS},
    {IPPROTO_IPV6, IPV6_MULTICAST_LOOP},
    {IPPROTO_IPV6, IPV6_RECVTCLASS},
    {IPPROTO_IPV6, IPV6_RECVHOPLIMIT},
    {IPPROTO_IPV6, IPV6_TRANSPARENT},
    {IPPROTO_TCP, TCP_LINGER2},
    {IPPROTO_TCP, TCP_SYNCNT},
    {IPPROTO_TCP, TCP_NOTSENT_LOWAT},
    {IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS},
    {IPPROTO_IPV6, IPV6_V6ONLY},
    {IPPROTO_IPV6, IPV6_TCLASS},
    {IPPROTO_IPV6, IPV6_UNICAST_HOPS},
    {IPPROTO_IPV6, IPV6_RECVPKTINFO},
    {IPPROTO_IPV6, IPV6_RECVERR},
};

bool OptApplies(const OptName& o, int family, int protocol) {
  // The multicast options can't be set on a stream socket, which an accepted connection
  // reads back as the TTL of the packet that opened it.
  if ((o.level == IPPROTO_IP &&
       (o.name == IP_MULTICAST_TTL || o.name == IP_MULTICAST_LOOP || o.name == IP_MULTICAST_ALL)) ||
      (o.level == IPPROTO_IPV6 && (o.name == IPV6_MULTICAST_HOPS || o.name == IPV6_MULTICAST_LOOP)))
    return protocol != IPPROTO_TCP;
  if (o.level == IPPROTO_TCP) return protocol == IPPROTO_TCP;
  if (o.level == IPPROTO_UDP) return protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE;
  if (o.level == IPPROTO_UDPLITE) return protocol == IPPROTO_UDPLITE;
  if (o.level == IPPROTO_IPV6) return family == AF_INET6;
  return true;
}

bool Known(int level, int name) {
  return std::any_of(std::begin(kSockOpts), std::end(kSockOpts),
                     [&](auto& o) { return o.level == level && o.name == name; });
}

bool IsTcp(const img::InetSock& s) {
  return s.protocol() == IPPROTO_TCP;
}
// Connections restored through repair mode.
bool Repaired(const img::InetSock& s) {
  return IsTcp(s) && Connected(s.state());
}

std::string Endpoint(int family, const std::string& addr, uint32_t port) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (addr.size() == 4 || addr.size() == 16)
    inet_ntop(addr.size() == 4 ? AF_INET : AF_INET6, addr.data(), buf, sizeof buf);
  (void)family;
  return addr.size() == 16 ? "[" + std::string(buf) + "]:" + std::to_string(port)
                           : std::string(buf) + ":" + std::to_string(port);
}

// "tcp socket 7 (10.0.0.1:80 -> 10.0.0.2:4711, ESTABLISHED)" for messages.
std::string Describe(const img::FileObject& fo) {
  const img::InetSock& s = fo.inet_sock();
  const char* name = IsTcp(s)                          ? "tcp"
                     : s.protocol() == IPPROTO_UDPLITE ? "udplite"
                     : IsPing(int(s.protocol()))       ? "ping"
                                                       : "udp";
  std::string out = std::string(name) + (s.family() == AF_INET6 ? "6" : "") + " socket " +
                    std::to_string(fo.id()) + " (" +
                    Endpoint(int(s.family()), s.local_addr(), s.local_port());
  if (s.peer_port()) out += " -> " + Endpoint(int(s.family()), s.peer_addr(), s.peer_port());
  if (IsTcp(s)) out += std::string(", ") + StateName(s.state());
  return out + ")";
}

struct SockAddr {
  sockaddr_storage ss{};
  socklen_t len = 0;
};

Result<SockAddr> MakeAddr(uint32_t family, const std::string& addr, uint32_t port, uint32_t scope) {
  SockAddr a;
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&a.ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(uint16_t(port));
    memcpy(&sin->sin_addr, addr.data(), 4);
    a.len = sizeof *sin;
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a.ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(uint16_t(port));
    memcpy(&sin6->sin6_addr, addr.data(), 16);
    sin6->sin6_scope_id = scope;
    a.len = sizeof *sin6;
  }
  return a;
}

// getsockname/getpeername into (address bytes, port, scope id).
Result<void> ReadName(int fd, bool peer, int family, std::string* addr, uint32_t* port,
                      uint32_t* scope) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
               : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (r < 0) return ErrnoError() << (peer ? "getpeername" : "getsockname");
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    addr->assign(reinterpret_cast<const char*>(&sin->sin_addr), 4);
    *port = ntohs(sin->sin_port);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    addr->assign(reinterpret_cast<const char*>(&sin6->sin6_addr), 16);
    *port = ntohs(sin6->sin6_port);
    if (scope && sin6->sin6_scope_id) *scope = sin6->sin6_scope_id;
  }
  return Ok();
}

struct Kind {
  int family = 0, type = 0, protocol = 0;
};

Result<Kind> SocketKind(int fd) {
  Kind k;
  k.family = KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_DOMAIN, "SO_DOMAIN"));
  k.type = KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_TYPE, "SO_TYPE"));
  k.protocol = KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_PROTOCOL, "SO_PROTOCOL"));
  return k;
}

Result<tcp_info> TcpInfo(int fd) {
  tcp_info ti{};
  socklen_t len = sizeof ti;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0) return ErrnoError() << "TCP_INFO";
  return ti;
}

// Whether a socket ever sent or received a segment: tcpi_segs_out and tcpi_segs_in
// (Linux 4.2), past the end of the struct tcp_info glibc knows.
bool SegmentsSeen(int fd) {
  constexpr size_t kSegsOut = 136, kSegsIn = 140;
  uint8_t buf[256] = {};
  socklen_t len = sizeof buf;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, buf, &len) < 0 || len < kSegsIn + 4) return false;
  uint32_t out, in;
  memcpy(&out, buf + kSegsOut, 4);
  memcpy(&in, buf + kSegsIn, 4);
  return out || in;
}

// Peeks `len` bytes of a queue in repair mode.
Result<std::string> PeekQueue(int fd, int queue, uint32_t len, const char* what) {
  KLEAP_TRY(SetInt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE"));
  std::string data(len, '\0');
  if (len == 0) return data;
  ssize_t n = recv(fd, data.data(), len, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0) return ErrnoError() << "read the " << what << " queue";
  if (uint32_t(n) != len)
    return Err(EIO) << "the " << what << " queue holds " << n << " bytes, " << len << " expected";
  return data;
}

Result<uint32_t> QueueSeq(int fd, int queue) {
  KLEAP_TRY(SetInt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE"));
  return uint32_t(KLEAP_TRY(GetInt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ")));
}

// Reads a connection in repair mode; the caller has put it there.
Result<void> DumpConnection(int fd, uint32_t state, img::TcpConn* c) {
  int outq = 0, notsent = 0, inq = 0;
  if (ioctl(fd, SIOCOUTQ, &outq) < 0) return ErrnoError() << "SIOCOUTQ";
  if (ioctl(fd, SIOCOUTQNSD, &notsent) < 0) return ErrnoError() << "SIOCOUTQNSD";
  if (ioctl(fd, SIOCINQ, &inq) < 0) return ErrnoError() << "SIOCINQ";
  uint32_t write_seq = KLEAP_TRY(QueueSeq(fd, TCP_SEND_QUEUE));
  // The FIN of a shut-down connection takes a sequence number and sits in the send
  // queue until acknowledged; restore sends it again by shutdown().
  bool fin = state == kFinWait1 || state == kFinWait2 || state == kLastAck || state == kClosing;
  if (fin) {
    write_seq--;
    if (outq > 0) outq--;
    if (notsent > 0) notsent--;
  }
  // The peer's FIN took a sequence number too: restore sends it in again.
  bool fin_in = state == kCloseWait || state == kLastAck || state == kClosing;
  if (outq < 0 || notsent < 0 || notsent > outq || inq < 0 || uint32_t(outq) > kMaxQueue ||
      uint32_t(inq) > kMaxQueue)
    return Err(EIO) << "queue sizes out of range (out " << outq << ", not sent " << notsent
                    << ", in " << inq << ")";
  c->set_fin_sent(fin);
  c->set_snd_una(write_seq - uint32_t(outq));
  c->set_unsent(uint32_t(notsent));
  c->set_send_queue(KLEAP_TRY(PeekQueue(fd, TCP_SEND_QUEUE, uint32_t(outq), "send")));
  uint32_t rcv_nxt = KLEAP_TRY(QueueSeq(fd, TCP_RECV_QUEUE)) - (fin_in ? 1 : 0);
  c->set_fin_received(fin_in);
  c->set_rcv_seq(rcv_nxt - uint32_t(inq));
  c->set_recv_queue(KLEAP_TRY(PeekQueue(fd, TCP_RECV_QUEUE, uint32_t(inq), "receive")));
  KLEAP_TRY(SetInt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE"));

  tcp_info ti = KLEAP_TRY(TcpInfo(fd));
  c->set_timestamps(ti.tcpi_options & TCPI_OPT_TIMESTAMPS);
  c->set_sack(ti.tcpi_options & TCPI_OPT_SACK);
  c->set_wscale(ti.tcpi_options & TCPI_OPT_WSCALE);
  c->set_snd_wscale(ti.tcpi_snd_wscale);
  c->set_rcv_wscale(ti.tcpi_rcv_wscale);
  // In repair mode TCP_MAXSEG is the clamp agreed with the peer.
  c->set_mss_clamp(uint32_t(KLEAP_TRY(GetInt(fd, IPPROTO_TCP, TCP_MAXSEG, "TCP_MAXSEG"))));
  if (c->timestamps())
    c->set_timestamp(uint32_t(KLEAP_TRY(GetInt(fd, IPPROTO_TCP, TCP_TIMESTAMP, "TCP_TIMESTAMP"))));
  tcp_repair_window w{};
  socklen_t len = sizeof w;
  if (getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &len) < 0)
    return ErrnoError() << "TCP_REPAIR_WINDOW";
  c->set_snd_wl1(w.snd_wl1);
  c->set_snd_wnd(w.snd_wnd);
  c->set_max_window(w.max_window);
  c->set_rcv_wnd(w.rcv_wnd);
  // The window last advertised may count the peer's FIN, which the restored connection
  // has not received yet: the kernel takes no rcv_wup after rcv_nxt.
  if (fin_in && int32_t(w.rcv_wup - rcv_nxt) > 0) w.rcv_wup = rcv_nxt;
  c->set_rcv_wup(w.rcv_wup);
  return Ok();
}

// Writes a queue's bytes in repair mode (or, for `queue` < 0, as a task would).
Result<void> WriteQueue(int fd, int queue, const std::string& data, size_t from, size_t to,
                        const char* what) {
  if (queue >= 0) KLEAP_TRY(SetInt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, queue, "TCP_REPAIR_QUEUE"));
  for (size_t off = from; off < to;) {
    ssize_t n = send(fd, data.data() + off, std::min<size_t>(to - off, 1 << 16),
                     MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) return ErrnoError() << "write the " << what << " queue at byte " << off;
    off += size_t(n);
  }
  return Ok();
}

// Makes room for `need` bytes of queue when the default buffer is smaller.
Result<void> MakeRoom(int fd, int get, int force, uint32_t dumped, size_t need, const char* what) {
  int have = KLEAP_TRY(GetInt(fd, SOL_SOCKET, get, what));
  // The kernel doubles what is set; what it reports is already doubled.
  if (need == 0 || size_t(have) >= 2 * need) return Ok();
  int want = int(std::max<size_t>(dumped / 2, 2 * need));
  return SetInt(fd, SOL_SOCKET, force, want, what);
}

Result<void> RestoreConnection(int fd, const img::InetSock& s) {
  const img::TcpConn& c = s.tcp();
  KLEAP_TRY(
      MakeRoom(fd, SO_SNDBUF, SO_SNDBUFFORCE, s.sndbuf(), c.send_queue().size(), "SO_SNDBUF"));
  KLEAP_TRY(
      MakeRoom(fd, SO_RCVBUF, SO_RCVBUFFORCE, s.rcvbuf(), c.recv_queue().size(), "SO_RCVBUF"));
  KLEAP_TRY(SetInt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE"));
  KLEAP_TRY(SetInt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, int(c.snd_una()), "TCP_QUEUE_SEQ (send)"));
  KLEAP_TRY(SetInt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE"));
  KLEAP_TRY(SetInt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, int(c.rcv_seq()), "TCP_QUEUE_SEQ (receive)"));
  if (c.timestamps())
    KLEAP_TRY(SetInt(fd, IPPROTO_TCP, TCP_TIMESTAMP, int(c.timestamp()), "TCP_TIMESTAMP"));
  // In repair mode connect() sends nothing: the socket is established at once.
  SockAddr peer = KLEAP_TRY(MakeAddr(s.family(), s.peer_addr(), s.peer_port(), s.scope_id()));
  if (connect(fd, reinterpret_cast<sockaddr*>(&peer.ss), peer.len) < 0)
    return ErrnoError() << "connect in repair mode";
  std::vector<tcp_repair_opt> opts;
  opts.push_back({TCPOPT_MAXSEG, c.mss_clamp()});
  if (c.wscale()) opts.push_back({TCPOPT_WINDOW, c.snd_wscale() | (c.rcv_wscale() << 16)});
  if (c.sack()) opts.push_back({TCPOPT_SACK_PERMITTED, 0});
  if (c.timestamps()) opts.push_back({TCPOPT_TIMESTAMP, 0});
  if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts.data(),
                 socklen_t(opts.size() * sizeof opts[0])) < 0)
    return ErrnoError() << "TCP_REPAIR_OPTIONS";
  KLEAP_TRY(WriteQueue(fd, TCP_RECV_QUEUE, c.recv_queue(), 0, c.recv_queue().size(), "receive"));
  // What was sent goes back as sent (the kernel sends it again if the peer lacks it);
  // the rest is written once the connection is out of repair mode (FinishSockets).
  KLEAP_TRY(WriteQueue(fd, TCP_SEND_QUEUE, c.send_queue(), 0, c.send_queue().size() - c.unsent(),
                       "send"));
  tcp_repair_window w{c.snd_wl1(), c.snd_wnd(), c.max_window(), c.rcv_wnd(), c.rcv_wup()};
  if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, sizeof w) < 0)
    return ErrnoError() << "TCP_REPAIR_WINDOW";
  return SetInt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE");
}

// Every inet socket of a task: the local endpoint of each. (A ping socket has no port
// to lock: an echo reply during the freeze is lost, as the network could have lost it.)
void AddEndpoint(std::vector<net::LockedEndpoint>* out, const img::InetSock& s) {
  if (s.local_port() == 0 || IsPing(int(s.protocol()))) return;  // nothing can reach it
  out->push_back({int(s.family()), int(s.protocol()), s.local_addr(), uint16_t(s.local_port())});
}

}  // namespace

// ---- check ----

std::string ClassifySocket(FdDesc* d) {
  auto grabbed = GrabFd(d->pid, d->fd);
  if (!grabbed) return grabbed.error().ToString();
  auto k = SocketKind(grabbed->get());
  if (!k) return k.error().ToString();
  bool inet = k->family == AF_INET || k->family == AF_INET6;
  if (inet && k->type == SOCK_STREAM && k->protocol == IPPROTO_TCP) {
    d->type = FdType::kInetSocket;
    return "";
  }
  if (inet && k->type == SOCK_DGRAM && IsDatagram(k->family, k->protocol)) {
    d->type = FdType::kInetSocket;
    return "";
  }
  if (inet && k->type == SOCK_RAW)
    return "raw IP sockets are not carried: what they filter and have queued can't be read "
           "back, and they see packets of other sockets";
  if (k->family == AF_PACKET)
    return "packet sockets are not carried: their rings, filters and fanout groups can't be read "
           "back";
  if (inet) return "only TCP, UDP, UDP-Lite and ping inet sockets are carried";
  if (k->family == AF_NETLINK) {
    d->type = FdType::kNetlinkSocket;
    return "";
  }
  return "sockets of this family are not supported yet";
}

std::string RefuseInetSock(const FdDesc& d) {
  auto grabbed = GrabFd(d.pid, d.fd);
  if (!grabbed) return grabbed.error().ToString();
  int fd = grabbed->get();
  auto k = SocketKind(fd);
  if (!k) return k.error().ToString();
  if (k->protocol != IPPROTO_TCP) {
    // Data held back by UDP_CORK (or MSG_MORE) is in the kernel's pending frame, which
    // nothing can read back.
    int outq = 0;
    if (ioctl(fd, SIOCOUTQ, &outq) == 0 && outq > 0)
      return "data waits in its send queue (UDP_CORK or MSG_MORE; " + std::to_string(outq) +
             " bytes of buffers) and can't be read back";
    return "";
  }
  if (k->protocol != IPPROTO_TCP) return "";
  auto ti = TcpInfo(fd);
  if (!ti) return ti.error().ToString();
  switch (ti->tcpi_state) {
    case kEstablished:
    case kFinWait1:
    case kFinWait2:
    case kCloseWait:
    case kLastAck:
    case kClosing:
    case kListen:
      return "";
    case kClose:
      // One that sent or received segments was a connection: it reads end-of-file (or its
      // reset), and whether it still holds its port depends on how it was bound; a new
      // socket can be made neither way.
      if (SegmentsSeen(fd))
        return "a TCP connection that is over (CLOSE after it was connected) can't be made "
               "again; close it, or retry once the task has";
      return "";
    case kSynSent:
    case kSynRecv:
      return std::string("a connection being set up (") + StateName(ti->tcpi_state) +
             ") can't be carried; retry when it is established";
    default:
      return std::string("a connection in state ") + StateName(ti->tcpi_state) +
             " can't be carried";
  }
}

namespace {

// Lists the namespace's inet sockets of a family and protocol in the given states, on
// local port sport (0: any) (sock_diag: nothing is touched).
Result<void> InetDiag(int family, int protocol, uint32_t states, uint16_t sport,
                      const std::function<void(const inet_diag_msg&, int attr_len)>& each) {
  struct {
    nlmsghdr h;
    inet_diag_req_v2 r;
  } req{};
  req.r.sdiag_family = uint8_t(family);
  req.r.sdiag_protocol = uint8_t(protocol);
  req.r.idiag_states = states;
  req.r.id.idiag_sport = htons(sport);  // 0: every port
  return SockDiag(&req, sizeof req, true, "INET_DIAG", [&](const nlmsghdr& h) {
    if (h.nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) return;
    each(*static_cast<const inet_diag_msg*>(NLMSG_DATA(&h)),
         int(h.nlmsg_len - NLMSG_LENGTH(sizeof(inet_diag_msg))));
  });
}

// TIME_WAIT connections of this namespace by local port.
std::map<uint16_t, int> TimeWaitPorts() {
  std::map<uint16_t, int> out;
  for (int family : {AF_INET, AF_INET6})
    // Only notes come of this: a failed query leaves them out.
    (void)InetDiag(family, IPPROTO_TCP, 1u << kTimeWait, 0,
                   [&](const inet_diag_msg& m, int) { out[ntohs(m.id.idiag_sport)]++; });
  return out;
}

// The peer a ping socket is connected to, which getpeername doesn't tell (it has no
// port): its line in /proc/net/icmp or icmp6, found by inode (only bound ones are
// listed). Empty when it has none.
Result<std::string> PingPeer(int family, ino_t ino) {
  const char* path = family == AF_INET6 ? "/proc/net/icmp6" : "/proc/net/icmp";
  std::string text = KLEAP_TRY(ReadFileToString(path));
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);  // the header
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::vector<std::string> tok;
    for (std::string t; f >> t;) tok.push_back(t);
    if (tok.size() < 10 || tok[9] != std::to_string(ino)) continue;
    if (tok[3] != "01") return std::string();  // not TCP_ESTABLISHED: not connected
    std::string hex = tok[2].substr(0, tok[2].find(':'));
    size_t words = family == AF_INET6 ? 4 : 1;
    if (hex.size() != 8 * words) break;
    std::string addr;
    for (size_t w = 0; w < words; ++w) {
      // Each 32-bit word as the kernel holds it, printed as a number: its bytes in memory
      // order again here.
      uint32_t v = uint32_t(strtoul(hex.substr(8 * w, 8).c_str(), nullptr, 16));
      addr.append(reinterpret_cast<const char*>(&v), 4);
    }
    return addr;
  }
  // Not listed: never bound, so never connected either (connect() binds it first).
  return std::string();
}

// A UDP or UDP-Lite socket's shutdown(2) state (RCV_SHUTDOWN 1, SEND_SHUTDOWN 2), which
// only sock_diag shows: found by inode among the namespace's sockets of its family on its
// port (the kernel filters by port: only that port's sockets answer, not the whole table).
Result<uint32_t> UdpShutdown(int family, int protocol, uint16_t port, ino_t ino) {
  std::optional<uint32_t> found;
  KLEAP_TRY(InetDiag(family, protocol, ~0u, port, [&](const inet_diag_msg& m, int len) {
    if (m.idiag_inode != ino) return;
    found = 0;
    for (auto* a = reinterpret_cast<const rtattr*>(&m + 1); RTA_OK(a, len); a = RTA_NEXT(a, len))
      if (a->rta_type == INET_DIAG_SHUTDOWN && RTA_PAYLOAD(a) >= 1)
        found = *static_cast<const uint8_t*>(RTA_DATA(a));
  }));
  if (!found) return Err(ENOENT) << "UDP socket inode " << ino << " is not in sock_diag's list";
  return *found;
}

}  // namespace

std::vector<std::string> SocketNotes(const std::vector<TaskInfo>& tasks) {
  std::set<uint16_t> ports;
  for (auto& t : tasks) {
    auto fds = ListFds(t.pid);
    if (!fds) continue;
    for (int fd : *fds) {
      auto d = DescribeFd(t.pid, fd);
      if (!d || d->type != FdType::kInetSocket) continue;
      auto sock = GrabFd(t.pid, fd);
      if (!sock) continue;
      auto k = SocketKind(sock->get());
      std::string addr;
      uint32_t port = 0;
      if (k && k->protocol == IPPROTO_TCP &&
          ReadName(sock->get(), false, k->family, &addr, &port, nullptr) && port)
        ports.insert(uint16_t(port));
    }
  }
  std::vector<std::string> out;
  if (ports.empty()) return out;
  for (auto& [port, n] : TimeWaitPorts())
    if (ports.count(port))
      out.push_back(std::to_string(n) + " TCP connection" + (n == 1 ? "" : "s") +
                    " in TIME_WAIT on port " + std::to_string(port) +
                    ": they belong to the kernel, not to a task, and are not carried");
  return out;
}

// ---- dump ----

Result<void> DumpInetSock(DumpContext& ctx, const FdDesc& d, img::FileObject* fo) {
  UniqueFd sock = KLEAP_TRY(GrabFd(d.pid, d.fd));
  int fd = sock.get();
  Kind k = KLEAP_TRY(SocketKind(fd));
  img::InetSock* s = fo->mutable_inet_sock();
  s->set_family(uint32_t(k.family));
  s->set_type(uint32_t(k.type));
  s->set_protocol(uint32_t(k.protocol));
  s->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  std::string addr;
  uint32_t port = 0, scope = 0;
  KLEAP_TRY(ReadName(fd, false, k.family, &addr, &port, &scope));
  s->set_local_addr(addr);
  s->set_local_port(port);
  if (k.protocol == IPPROTO_TCP) {
    tcp_info ti = KLEAP_TRY(TcpInfo(fd));
    s->set_state(ti.tcpi_state);
    if (ti.tcpi_state == kListen) {
      // The tree is frozen and the lock is on: no connection completes meanwhile.
      if (ti.tcpi_unacked)
        return Err(ENOTSUP) << "listening socket " << Endpoint(k.family, addr, port) << ": "
                            << ti.tcpi_unacked
                            << " connections wait in its accept queue; they can't be carried";
      s->set_backlog(ti.tcpi_sacked);
    }
  } else {
    s->set_state(kEstablished);  // connected, unless it has no peer
    if (port && !IsPing(k.protocol)) {
      s->set_shutdown(KLEAP_TRY(UdpShutdown(k.family, k.protocol, uint16_t(port), d.st.st_ino)));
    } else {
      // sock_diag lists bound UDP sockets only (no ping sockets). poll shows a receive
      // shutdown (POLLRDHUP, and POLLHUP for both); a send shutdown alone shows nowhere.
      pollfd p{fd, POLLIN | POLLRDHUP, 0};
      if (poll(&p, 1, 0) == 1 && (p.revents & POLLRDHUP))
        s->set_shutdown((p.revents & POLLHUP) ? 3 : 1);
    }
  }
  if (IsPing(k.protocol)) {
    std::string peer = KLEAP_TRY_CTX(PingPeer(k.family, d.st.st_ino), "ping socket");
    s->set_peer_addr(peer);
    if (peer.empty()) s->set_state(kClose);
  } else if (Connected(s->state())) {
    std::string peer;
    uint32_t pport = 0;
    auto named = ReadName(fd, true, k.family, &peer, &pport, &scope);
    if (named) {
      s->set_peer_addr(peer);
      s->set_peer_port(pport);
    } else if (k.protocol == IPPROTO_TCP || named.error().code() != ENOTCONN) {
      return std::move(named).error();
    } else {
      s->set_state(kClose);
    }
  }
  s->set_scope_id(scope);
  s->set_sndbuf(uint32_t(KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF"))));
  s->set_rcvbuf(uint32_t(KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF"))));
  s->set_rcvtimeo_us(KLEAP_TRY(GetTimeout(fd, SO_RCVTIMEO, "SO_RCVTIMEO")));
  s->set_sndtimeo_us(KLEAP_TRY(GetTimeout(fd, SO_SNDTIMEO, "SO_SNDTIMEO")));
  // Options: those that differ from a new socket's.
  UniqueFd fresh(socket(k.family, k.type | SOCK_CLOEXEC, k.protocol));
  if (!fresh) return ErrnoError() << "make a socket to compare options with";
  for (auto& o : kSockOpts) {
    if (!OptApplies(o, k.family, k.protocol)) continue;
    auto v = GetInt(fd, o.level, o.name, "option");
    auto def = GetInt(fresh.get(), o.level, o.name, "option");
    if (!v || !def || *v == *def) continue;
    img::SockOpt* so = s->add_opts();
    so->set_level(o.level);
    so->set_name(o.name);
    so->set_value(*v);
  }
  linger l{};
  socklen_t llen = sizeof l;
  if (getsockopt(fd, SOL_SOCKET, SO_LINGER, &l, &llen) < 0) return ErrnoError() << "SO_LINGER";
  s->set_linger(l.l_onoff != 0);
  s->set_linger_s(l.l_linger);
  char dev[IFNAMSIZ + 1] = "";
  socklen_t dlen = IFNAMSIZ;
  if (getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, &dlen) < 0)
    return ErrnoError() << "SO_BINDTODEVICE";
  s->set_bind_device(std::string(dev, strnlen(dev, dlen)));
  s->set_filter(KLEAP_TRY(ReadFilter(fd)));
  // Sizes the task set itself stay put (SO_BUF_LOCK shows which): carried as set.
  int lock = KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_BUF_LOCK, "SO_BUF_LOCK"));
  if (lock & SOCK_SNDBUF_LOCK) s->set_sndbuf_set(s->sndbuf());
  if (lock & SOCK_RCVBUF_LOCK) s->set_rcvbuf_set(s->rcvbuf());
  if (Repaired(*s)) {
    int reuse = KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR"));
    KLEAP_TRY_CTX(SetInt(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"),
                  "put " << Describe(*fo) << " in repair mode");
    ctx.repaired_socks.Add(std::move(sock), reuse);
    KLEAP_TRY_CTX(DumpConnection(fd, s->state(), s->mutable_tcp()), Describe(*fo));
  }
  return Ok();
}

void SockRepairSet::Undo() {
  for (auto& [fd, reuse] : fds_) {
    int off = TCP_REPAIR_OFF_NO_WP, none = TCP_NO_QUEUE;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_REPAIR_QUEUE, &none, sizeof none);
    if (setsockopt(fd.get(), IPPROTO_TCP, TCP_REPAIR, &off, sizeof off) < 0 ||
        setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof reuse) < 0)
      KLOG(kWarning) << "take a socket out of repair mode: " << strerror(errno) << ", ignoring";
  }
  fds_.clear();
}

// ---- restore ----

Result<void> ValidateInetSock(const img::FileObject& fo) {
  const img::InetSock& s = fo.inet_sock();
  auto bad = [&]() {
    Error e(EINVAL);
    e << "files.img: inet socket " << fo.id() << ": ";
    return e;
  };
  size_t alen = s.family() == AF_INET ? 4 : s.family() == AF_INET6 ? 16 : 0;
  if (!alen) return bad() << "family " << s.family();
  bool tcp = s.type() == SOCK_STREAM && s.protocol() == IPPROTO_TCP;
  bool udp = s.type() == SOCK_DGRAM && IsDatagram(int(s.family()), int(s.protocol()));
  if (!tcp && !udp) return bad() << "type " << s.type() << " protocol " << s.protocol();
  if (s.local_addr().size() != alen || s.local_port() > 65535 || s.peer_port() > 65535)
    return bad() << "local address";
  bool connected = Connected(s.state());
  bool state_ok = connected || s.state() == kClose || (tcp && s.state() == kListen);
  if (!state_ok || (udp && s.state() != kEstablished && s.state() != kClose))
    return bad() << "state " << s.state();
  // (A ping socket has no ports: its local one is the echo id, maybe none yet.)
  if (connected && (s.peer_addr().size() != alen ||
                    (!IsPing(int(s.protocol())) && (s.peer_port() == 0 || s.local_port() == 0))))
    return bad() << "a connection needs both endpoints";
  if (s.rcvtimeo_us() < 0 || s.sndtimeo_us() < 0) return bad() << "timeouts";
  if (s.backlog() > (1u << 20)) return bad() << "backlog " << s.backlog();
  for (auto& o : s.opts())
    if (!Known(o.level(), o.name())) return bad() << "option " << o.level() << "/" << o.name();
  if (s.linger_s() < 0) return bad() << "SO_LINGER " << s.linger_s();
  if (s.bind_device().size() >= IFNAMSIZ || s.bind_device().find('\0') != std::string::npos)
    return bad() << "SO_BINDTODEVICE '" << s.bind_device() << "'";
  if (s.filter().size() % sizeof(sock_filter) ||
      s.filter().size() / sizeof(sock_filter) > BPF_MAXINSNS)
    return bad() << "a filter of " << s.filter().size() << " bytes";
  if (s.sndbuf_set() > (1u << 30) || s.rcvbuf_set() > (1u << 30)) return bad() << "buffer sizes";
  const img::TcpConn& c = s.tcp();
  if (c.send_queue().size() > kMaxQueue || c.recv_queue().size() > kMaxQueue ||
      c.unsent() > c.send_queue().size())
    return bad() << "queue sizes";
  if (c.snd_wscale() > kMaxWscale || c.rcv_wscale() > kMaxWscale) return bad() << "window scale";
  if (c.mss_clamp() > 65535) return bad() << "mss " << c.mss_clamp();
  if (c.fin_sent() && s.state() == kEstablished) return bad() << "a FIN in ESTABLISHED";
  if (c.fin_received() !=
      (tcp && (s.state() == kCloseWait || s.state() == kLastAck || s.state() == kClosing)))
    return bad() << "the peer's FIN in state " << s.state();
  if (s.shutdown() > 3 || (s.shutdown() && IsTcp(s))) return bad() << "shutdown " << s.shutdown();
  return ValidateAnonFlags(fo, "inet socket", s.flags(), O_RDWR);
}

namespace {

// The buffer sizes the task set itself (the kernel doubles what is set), once nothing
// more has to be queued: smaller ones would refuse the rest of a connection's send queue.
Result<void> SetBufferSizes(int fd, const img::InetSock& s) {
  if (s.sndbuf_set())
    KLEAP_TRY(SetInt(fd, SOL_SOCKET, SO_SNDBUFFORCE, int(s.sndbuf_set() / 2), "SO_SNDBUF"));
  if (s.rcvbuf_set())
    KLEAP_TRY(SetInt(fd, SOL_SOCKET, SO_RCVBUFFORCE, int(s.rcvbuf_set() / 2), "SO_RCVBUF"));
  return Ok();
}

}  // namespace

Result<UniqueFd> OpenInetSock(const img::FileObject& fo, ImageReader&, OpenFiles& files) {
  const img::InetSock& s = fo.inet_sock();
  std::string what = Describe(fo);
  UniqueFd fd(socket(int(s.family()), int(s.type()) | SOCK_CLOEXEC, int(s.protocol())));
  if (!fd && errno == EACCES && IsPing(int(s.protocol())))
    return ErrnoError() << what << ": socket: the restorer's group is outside "
                        << "net.ipv4.ping_group_range";
  if (!fd) return ErrnoError() << what << ": socket";
  int reuse = 0, freebind = 0;
  for (auto& o : s.opts()) {
    if (o.level() == SOL_SOCKET && o.name() == SO_REUSEADDR) reuse = o.value();
    if (o.level() == IPPROTO_IP && o.name() == IP_FREEBIND) freebind = o.value();
    KLEAP_TRY_CTX(SetInt(fd.get(), o.level(), o.name(), o.value(), "option"),
                  what << ": option " << o.level() << "/" << o.name());
  }
  linger l{s.linger() ? 1 : 0, s.linger_s()};
  if (setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l) < 0)
    return ErrnoError() << what << ": SO_LINGER";
  KLEAP_TRY_CTX(SetTimeouts(fd.get(), s.rcvtimeo_us(), s.sndtimeo_us()), what);
  if (!s.bind_device().empty() && setsockopt(fd.get(), SOL_SOCKET, SO_BINDTODEVICE,
                                             s.bind_device().data(), s.bind_device().size()) < 0)
    return ErrnoError() << what << ": SO_BINDTODEVICE " << s.bind_device();
  KLEAP_TRY_CTX(AttachFilter(fd.get(), s.filter()), what);
  // Repair mode lets the connection share its port with the listener (and the options
  // above must not undo that); FinishSockets puts SO_REUSEADDR back.
  if (Repaired(s))
    KLEAP_TRY_CTX(SetInt(fd.get(), IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON, "TCP_REPAIR"), what);
  bool any = std::all_of(s.local_addr().begin(), s.local_addr().end(), [](char c) { return !c; });
  if (s.local_port() || !any) {
    // The address may not be usable yet (IPv6 duplicate address detection), and a
    // connection restored before its listener holds the port: bind as the kernel would
    // have let the task, then put the options back.
    KLEAP_TRY_CTX(SetInt(fd.get(), IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND"), what);
    if (IsTcp(s) && s.state() == kListen)
      KLEAP_TRY_CTX(SetInt(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"), what);
    if (files.bind_reuseport.count(fo.id()))
      KLEAP_TRY_CTX(SetInt(fd.get(), SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT"), what);
    SockAddr a = KLEAP_TRY(MakeAddr(s.family(), s.local_addr(), s.local_port(), s.scope_id()));
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&a.ss), a.len) < 0) {
      Error e = ErrnoError();
      e << what << ": bind " << Endpoint(int(s.family()), s.local_addr(), s.local_port());
      if (e.code() == EADDRINUSE) e << ": the address is taken in this network namespace";
      return e;
    }
    KLEAP_TRY_CTX(SetInt(fd.get(), IPPROTO_IP, IP_FREEBIND, freebind, "IP_FREEBIND"), what);
    if (IsTcp(s) && s.state() == kListen)
      KLEAP_TRY_CTX(SetInt(fd.get(), SOL_SOCKET, SO_REUSEADDR, reuse, "SO_REUSEADDR"), what);
  }
  if (IsTcp(s) && s.state() == kListen) {
    if (listen(fd.get(), int(s.backlog())) < 0) {
      Error e = ErrnoError();
      e << what << ": listen";
      if (e.code() == EADDRINUSE) e << ": the address is taken in this network namespace";
      return e;
    }
  } else if (Repaired(s)) {
    KLEAP_TRY_CTX(RestoreConnection(fd.get(), s), what);
  } else if (!IsTcp(s) && s.state() == kEstablished) {
    SockAddr peer = KLEAP_TRY(MakeAddr(s.family(), s.peer_addr(), s.peer_port(), s.scope_id()));
    if (connect(fd.get(), reinterpret_cast<sockaddr*>(&peer.ss), peer.len) < 0)
      return ErrnoError() << what << ": connect";
  }
  // shutdown(2) sets a UDP socket's flags whether connected or not (ENOTCONN then).
  if (!IsTcp(s) && s.shutdown() && shutdown(fd.get(), int(s.shutdown()) - 1) < 0 &&
      errno != ENOTCONN)
    return ErrnoError() << what << ": shutdown " << s.shutdown();
  // A connection's come once its queues are in (FinishSockets).
  if (!Repaired(s)) KLEAP_TRY_CTX(SetBufferSizes(fd.get(), s), what);
  if ((s.flags() & O_NONBLOCK) && fcntl(fd.get(), F_SETFL, O_NONBLOCK) < 0)
    return ErrnoError() << what << ": set O_NONBLOCK";
  return fd;
}

namespace {

int OptValue(const img::InetSock& s, int level, int name) {
  for (auto& o : s.opts())
    if (int(o.level()) == level && int(o.name()) == name) return o.value();
  return 0;
}

}  // namespace

void PlanReusePort(const img::FileTable& files, OpenFiles* open) {
  // (protocol, port) of the bound sockets restored by bind, not by repair.
  std::map<std::pair<uint32_t, uint32_t>, std::vector<const img::FileObject*>> by_port;
  for (auto& fo : files.files())
    if (fo.has_inet_sock() && fo.inet_sock().local_port() && !Repaired(fo.inet_sock()))
      by_port[{fo.inet_sock().protocol(), fo.inet_sock().local_port()}].push_back(&fo);
  for (auto& [key, socks] : by_port) {
    bool any = std::any_of(socks.begin(), socks.end(), [](const img::FileObject* fo) {
      return OptValue(fo->inet_sock(), SOL_SOCKET, SO_REUSEPORT) != 0;
    });
    if (any && socks.size() > 1)
      for (auto* fo : socks) open->bind_reuseport.insert(fo->id());
  }
}

Result<void> FinishSockets(const img::FileTable& files, const OpenFiles& open) {
  for (auto& fo : files.files())
    if (open.bind_reuseport.count(fo.id()) && !OptValue(fo.inet_sock(), SOL_SOCKET, SO_REUSEPORT)) {
      auto it = open.by_id.find(fo.id());
      if (it == open.by_id.end()) return Err(EINVAL) << Describe(fo) << " was not opened";
      KLEAP_TRY_CTX(SetInt(it->second.get(), SOL_SOCKET, SO_REUSEPORT, 0, "SO_REUSEPORT"),
                    Describe(fo));
    }
  for (auto& fo : files.files()) {
    if (!fo.has_inet_sock() || !Repaired(fo.inet_sock())) continue;
    const img::InetSock& s = fo.inet_sock();
    auto it = open.by_id.find(fo.id());
    if (it == open.by_id.end()) return Err(EINVAL) << Describe(fo) << " was not opened";
    int fd = it->second.get();
    KLEAP_TRY_CTX(SetInt(fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF, "TCP_REPAIR"),
                  Describe(fo) << ": leave repair mode");
    KLEAP_TRY_CTX(
        SetInt(fd, SOL_SOCKET, SO_REUSEADDR, OptValue(s, SOL_SOCKET, SO_REUSEADDR), "SO_REUSEADDR"),
        Describe(fo));
    const std::string& q = s.tcp().send_queue();
    KLEAP_TRY_CTX(WriteQueue(fd, -1, q, q.size() - s.tcp().unsent(), q.size(), "send"),
                  Describe(fo));
    // (In LAST_ACK the peer's FIN came first: SendPeerFins shuts it down after it.)
    if (s.tcp().fin_sent() && s.state() != kLastAck && shutdown(fd, SHUT_WR) < 0)
      return ErrnoError() << Describe(fo) << ": shutdown";
    KLEAP_TRY_CTX(SetBufferSizes(fd, s), Describe(fo));
  }
  return Ok();
}

namespace {

uint16_t Checksum(const void* data, size_t len, uint32_t sum = 0) {
  auto* p = static_cast<const uint8_t*>(data);
  for (; len > 1; p += 2, len -= 2) sum += uint32_t(p[0] << 8 | p[1]);
  if (len) sum += uint32_t(p[0] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(~sum);
}

bool V4Mapped(const std::string& a) {
  static const char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, char(0xff), char(0xff)};
  return a.size() == 16 && std::equal(kMapped, kMapped + 12, a.data());
}

// The peer's FIN (and ACK of what it had received): from peer to local, at the sequence
// number after the receive queue, acknowledging snd_una, with the peer's window.
Result<void> SendPeerFin(const img::InetSock& s) {
  const img::TcpConn& c = s.tcp();
  tcphdr th{};
  th.source = htons(uint16_t(s.peer_port()));
  th.dest = htons(uint16_t(s.local_port()));
  th.seq = htonl(c.rcv_seq() + uint32_t(c.recv_queue().size()));
  th.ack_seq = htonl(c.snd_una());
  th.doff = sizeof th / 4;
  th.fin = 1;
  th.ack = 1;
  th.window = htons(uint16_t(std::min<uint32_t>(0xffff, c.snd_wnd() >> c.snd_wscale())));
  bool v4 = s.family() == AF_INET || (V4Mapped(s.local_addr()) && V4Mapped(s.peer_addr()));
  std::string src = s.peer_addr(), dst = s.local_addr();
  if (v4 && src.size() == 16) src = src.substr(12), dst = dst.substr(12);
  // The checksum over the pseudo-header: addresses, protocol, length.
  std::string pseudo = src + dst;
  uint8_t tail[8] = {0};
  if (v4) {
    tail[1] = IPPROTO_TCP;
    tail[3] = sizeof th;
    pseudo.append(reinterpret_cast<char*>(tail), 4);
  } else {
    tail[3] = sizeof th;
    tail[7] = IPPROTO_TCP;
    pseudo.append(reinterpret_cast<char*>(tail), 8);
  }
  pseudo.append(reinterpret_cast<const char*>(&th), sizeof th);
  th.check = htons(Checksum(pseudo.data(), pseudo.size()));
  std::string pkt;
  SockAddr to{};
  if (v4) {
    iphdr ih{};
    ih.version = 4;
    ih.ihl = sizeof ih / 4;
    ih.ttl = 64;
    ih.protocol = IPPROTO_TCP;
    ih.tot_len = htons(uint16_t(sizeof ih + sizeof th));
    memcpy(&ih.saddr, src.data(), 4);
    memcpy(&ih.daddr, dst.data(), 4);
    pkt.assign(reinterpret_cast<const char*>(&ih), sizeof ih);
    to = KLEAP_TRY(MakeAddr(AF_INET, dst, 0, 0));
  } else {
    ip6_hdr ih{};
    ih.ip6_flow = htonl(6u << 28);
    ih.ip6_plen = htons(sizeof th);
    ih.ip6_nxt = IPPROTO_TCP;
    ih.ip6_hops = 64;
    memcpy(&ih.ip6_src, src.data(), 16);
    memcpy(&ih.ip6_dst, dst.data(), 16);
    pkt.assign(reinterpret_cast<const char*>(&ih), sizeof ih);
    to = KLEAP_TRY(MakeAddr(AF_INET6, dst, 0, s.scope_id()));
  }
  pkt.append(reinterpret_cast<const char*>(&th), sizeof th);
  // IPPROTO_RAW: the header is ours (IP_HDRINCL, and IPV6_HDRINCL on IPv6).
  UniqueFd raw(socket(v4 ? AF_INET : AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (!raw) return ErrnoError() << "raw socket for the peer's FIN";
  if (sendto(raw.get(), pkt.data(), pkt.size(), 0, reinterpret_cast<sockaddr*>(&to.ss), to.len) !=
      ssize_t(pkt.size()))
    return ErrnoError() << "send the peer's FIN";
  return Ok();
}

}  // namespace

Result<void> SendPeerFins(const img::FileTable& files, const OpenFiles& open) {
  for (auto& fo : files.files()) {
    if (!fo.has_inet_sock() || !Repaired(fo.inet_sock()) || !fo.inet_sock().tcp().fin_received())
      continue;
    const img::InetSock& s = fo.inet_sock();
    auto it = open.by_id.find(fo.id());
    if (it == open.by_id.end()) return Err(EINVAL) << Describe(fo) << " was not opened";
    int fd = it->second.get();
    uint32_t want = s.state() == kClosing ? kClosing : kCloseWait;
    KLEAP_TRY_CTX(SendPeerFin(s), Describe(fo));
    // The segment goes through loopback at once; its softirq may still be running.
    uint32_t now = 0;
    for (int i = 0; i < 500; ++i) {
      now = KLEAP_TRY_CTX(TcpInfo(fd), Describe(fo)).tcpi_state;
      if (now == want) break;
      usleep(1000);
    }
    if (now != want)
      return Err(EIO) << Describe(fo) << ": the peer's FIN was not taken (state " << StateName(now)
                      << "; a firewall rule may drop it)";
    if (s.state() == kLastAck && shutdown(fd, SHUT_WR) < 0)
      return ErrnoError() << Describe(fo) << ": shutdown";
  }
  return Ok();
}

// ---- the network lock ----

Result<SockLock> SockLock::ForTasks(const std::vector<TaskInfo>& tasks) {
  std::vector<net::LockedEndpoint> eps;
  for (auto& t : tasks) {
    auto fds = ListFds(t.pid);
    if (!fds) continue;  // the refusal names it
    for (int fd : *fds) {
      auto d = DescribeFd(t.pid, fd);
      if (!d || d->type != FdType::kInetSocket) continue;
      UniqueFd sock = KLEAP_TRY(GrabFd(t.pid, fd));
      Kind k = KLEAP_TRY(SocketKind(sock.get()));
      img::InetSock s;
      std::string addr;
      uint32_t port = 0;
      KLEAP_TRY(ReadName(sock.get(), false, k.family, &addr, &port, nullptr));
      s.set_family(uint32_t(k.family));
      s.set_protocol(uint32_t(k.protocol));
      s.set_local_addr(addr);
      s.set_local_port(port);
      AddEndpoint(&eps, s);
    }
  }
  SockLock lock;
  if (eps.empty()) return lock;
  KLEAP_TRY(net::LockEndpoints(eps));
  lock.on_ = true;
  return lock;
}

Result<SockLock> SockLock::ForFiles(const img::FileTable& files) {
  std::vector<net::LockedEndpoint> eps;
  for (auto& fo : files.files())
    if (fo.has_inet_sock()) AddEndpoint(&eps, fo.inet_sock());
  SockLock lock;
  if (eps.empty()) return lock;
  KLEAP_TRY(net::LockEndpoints(eps));
  lock.on_ = true;
  return lock;
}

Result<void> SockLock::Remove() {
  if (!on_) return Ok();
  on_ = false;
  return net::Unlock();
}

SockLock::~SockLock() {
  if (auto r = Remove(); !r) KLOG(kWarning) << "remove the network lock: " << r.error().ToString();
}

}  // namespace kleap
