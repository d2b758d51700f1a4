// Unix sockets: stream, datagram and seqpacket.
//
// Dump asks the kernel's UNIX_DIAG (NETLINK_SOCK_DIAG) for what it knows of a socket
// without touching it: its name and the socket file bound to it, its peer, the clients
// waiting in a listener's backlog, its queue lengths and shutdown state. Sockets name
// each other by inode. The receive queue is read through a copy of the task's fd
// (pidfd_getfd) with MSG_PEEK from SO_PEEK_OFF 0, so nothing is consumed and a failed
// dump loses nothing; the task's own SO_PEEK_OFF is put back.
//
// Restore makes every socket of the set at once, in the controller (OpenUnixSockets):
// listeners bound and listening, pairs remade by socketpair() or, when the server end
// carries a listener's name, by connect() and accept() on that listener (a temporary one
// when the task had closed it), then the clients waiting in each backlog connect in
// their order. Queues are refilled by their peers (or, for datagrams, by their senders),
// then options, shutdown state and flags are set. A socket file left by the dumped
// socket is unlinked only when it is still the inode that was dumped.
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <set>

#include "engine/base/log.h"
#include "engine/base/lookup.h"
#include "engine/base/run_child.h"
#include "engine/sock.h"
#include "engine/sock_unix.h"

namespace kleap {
namespace {

// The kernel's socket states for unix sockets.
constexpr uint32_t kConnected = 1;    // TCP_ESTABLISHED
constexpr uint32_t kUnconnected = 7;  // TCP_CLOSE
constexpr uint32_t kListening = 10;   // TCP_LISTEN

constexpr uint32_t kRcvShutdown = 1, kSendShutdown = 2;
// Images are untrusted: what a queue may hold at most.
constexpr uint64_t kMaxQueueBytes = 256u << 20;
constexpr int kMaxMessages = 1 << 20;
constexpr size_t kScmMaxFd = 253;  // SCM_MAX_FD: the most files one message carries
constexpr const char* kStreamInflight =
    "files in flight on a stream socket (SCM_RIGHTS): where they sit among its bytes can't "
    "be read back (a peek shows them early); they are carried on datagram and seqpacket "
    "sockets";
constexpr size_t kMaxName = sizeof(sockaddr_un::sun_path);

// What UNIX_DIAG says of one socket.
struct Diag {
  uint32_t ino = 0;
  uint32_t type = 0, state = 0;
  std::string name;  // as bound; a filesystem name without its trailing NUL
  bool vfs = false;
  uint32_t vfs_ino = 0, vfs_dev = 0;  // the kernel's dev encoding (major << 20 | minor)
  uint32_t peer = 0;
  bool has_peer = false;  // UNIX_DIAG_PEER came: it has a peer, 0 when that has closed
  std::vector<uint32_t> icons;
  uint32_t rqueue = 0, wqueue = 0;
  uint32_t shutdown = 0;
};

// sun_path bytes as the kernel keeps them, minus the NUL a filesystem name ends with.
std::string NormalName(const char* p, size_t n) {
  std::string s(p, n);
  if (!s.empty() && s[0] != '\0') s.resize(strnlen(s.data(), s.size()));
  return s;
}

// "@name" for an abstract name, the path for a filesystem one.
std::string ShowName(const std::string& name) {
  if (name.empty()) return "unnamed";
  if (name[0] != '\0') return name;
  std::string out = "@";
  for (size_t i = 1; i < name.size(); ++i) out += isprint(uint8_t(name[i])) ? name[i] : '?';
  return out;
}

// The filesystem path of a socket's name (a relative one in its bind_dir), or its name.
std::string PathOf(const img::UnixSock& s) {
  if (s.bind_dir().empty()) return s.name();
  return (s.bind_dir() == "/" ? "" : s.bind_dir()) + "/" + s.name();
}

const char* TypeName(uint32_t t) {
  return t == SOCK_STREAM ? "stream" : t == SOCK_DGRAM ? "dgram" : "seqpacket";
}

// One UNIX_DIAG request: every unix socket (ino 0) or one.
Result<std::vector<Diag>> QueryDiag(uint32_t ino) {
  struct {
    nlmsghdr h;
    unix_diag_req r;
  } req{};
  req.r.sdiag_family = AF_UNIX;
  req.r.udiag_states = ~0u;
  req.r.udiag_ino = ino;
  req.r.udiag_cookie[0] = req.r.udiag_cookie[1] = ~0u;
  req.r.udiag_show =
      UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
  std::vector<Diag> out;
  std::string what = "UNIX_DIAG" + (ino ? " of socket " + std::to_string(ino) : std::string());
  KLEAP_TRY(SockDiag(&req, sizeof req, ino == 0, what, [&](const nlmsghdr& h) {
    if (h.nlmsg_len < NLMSG_LENGTH(sizeof(unix_diag_msg))) return;
    auto* m = static_cast<const unix_diag_msg*>(NLMSG_DATA(&h));
    Diag d;
    d.ino = m->udiag_ino;
    d.type = m->udiag_type;
    d.state = m->udiag_state;
    size_t off = NLMSG_ALIGN(sizeof *m);
    size_t len = h.nlmsg_len - NLMSG_LENGTH(0);
    auto* base = static_cast<char*>(NLMSG_DATA(&h));
    while (off + sizeof(nlattr) <= len) {
      auto* a = reinterpret_cast<nlattr*>(base + off);
      if (a->nla_len < sizeof(nlattr) || off + a->nla_len > len) break;
      const char* p = base + off + NLA_HDRLEN;
      size_t plen = a->nla_len - NLA_HDRLEN;
      switch (a->nla_type) {
        case UNIX_DIAG_NAME:
          d.name = NormalName(p, plen);
          break;
        case UNIX_DIAG_VFS:
          if (plen >= sizeof(unix_diag_vfs)) {
            unix_diag_vfs v;
            memcpy(&v, p, sizeof v);
            d.vfs = true;
            d.vfs_ino = v.udiag_vfs_ino;
            d.vfs_dev = v.udiag_vfs_dev;
          }
          break;
        case UNIX_DIAG_PEER:
          if (plen >= 4) memcpy(&d.peer, p, 4);
          d.has_peer = plen >= 4;
          break;
        case UNIX_DIAG_ICONS:
          for (size_t i = 0; i + 4 <= plen; i += 4) {
            uint32_t c;
            memcpy(&c, p + i, 4);
            d.icons.push_back(c);
          }
          break;
        case UNIX_DIAG_RQLEN:
          if (plen >= sizeof(unix_diag_rqlen)) {
            unix_diag_rqlen q;
            memcpy(&q, p, sizeof q);
            d.rqueue = q.udiag_rqueue;
            d.wqueue = q.udiag_wqueue;
          }
          break;
        case UNIX_DIAG_SHUTDOWN:
          if (plen >= 1) d.shutdown = uint8_t(*p);
          break;
      }
      off += NLA_ALIGN(a->nla_len);
    }
    out.push_back(std::move(d));
  }));
  return out;
}

Result<Diag> DiagOf(uint32_t ino) {
  auto all = KLEAP_TRY(QueryDiag(ino));
  if (all.empty() || all[0].ino != ino) return Err(ENOENT) << "UNIX_DIAG knows no socket " << ino;
  return all[0];
}

dev_t UserDev(uint32_t kdev) {
  return makedev(kdev >> 20, kdev & 0xfffff);
}

// The task holding a socket outside the tree, for messages: "pid 12 (dbus-daemon)".
std::string Holder(uint32_t ino) {
  std::string want = "socket:[" + std::to_string(ino) + "]";
  auto pids = ListPids();
  if (!pids) return "no task";
  for (pid_t pid : *pids) {
    auto fds = ListFds(pid);
    if (!fds) continue;
    for (int fd : *fds) {
      auto link = ReadLink(ProcPath(pid, "fd/" + std::to_string(fd)));
      if (link && *link == want) return DescribePid(pid);
    }
  }
  return "no task";
}

// Puts the socket's SO_PEEK_OFF back however the peeking ends.
class PeekOffGuard {
 public:
  PeekOffGuard(int fd, int saved) : fd_(fd), saved_(saved) {}
  ~PeekOffGuard() {
    if (setsockopt(fd_, SOL_SOCKET, SO_PEEK_OFF, &saved_, sizeof saved_) < 0)
      KLOG(kWarning) << "put SO_PEEK_OFF back to " << saved_ << ": " << strerror(errno)
                     << ", ignoring";
  }

 private:
  int fd_, saved_;
};

// Takes a file in flight that the peek received (SCM_RIGHTS): its file object id.
using InflightFn = std::function<Result<uint64_t>(UniqueFd)>;

// The receive queue, peeked from offset 0 on: a stream's `bytes`, or every message, each
// with the files in flight with it.
Result<void> PeekQueue(int fd, const Diag& diag, img::UnixSock* s, const InflightFn& inflight) {
  int saved = KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_PEEK_OFF, "SO_PEEK_OFF"));
  s->set_peek_off(saved);
  if (diag.rqueue == 0 && diag.type == SOCK_STREAM) return Ok();
  // An unconnected seqpacket socket can't be read (ENOTCONN), and holds nothing to read.
  if (diag.type == SOCK_SEQPACKET && diag.state != kConnected) {
    if (diag.rqueue) return Err(ENOTSUP) << "an unconnected seqpacket socket with a queue";
    return Ok();
  }
  KLEAP_TRY(SetInt(fd, SOL_SOCKET, SO_PEEK_OFF, 0, "SO_PEEK_OFF"));
  PeekOffGuard guard(fd, saved);
  std::vector<char> buf(1 << 16);
  uint64_t total = 0;
  int peeked = 0;  // SO_PEEK_OFF now
  for (int i = 0; i < kMaxMessages; ++i) {
    if (diag.type == SOCK_STREAM && total >= diag.rqueue) break;
    sockaddr_un from{};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(kScmMaxFd * sizeof(int)) + 256];
    iovec iov{buf.data(), buf.size()};
    msghdr mh{};
    mh.msg_name = &from;
    mh.msg_namelen = sizeof from;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    int flags = MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC;
    if (diag.type != SOCK_STREAM) flags |= MSG_TRUNC;  // the whole message's length
    ssize_t n = recvmsg(fd, &mh, flags);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) return ErrnoError() << "peek the receive queue";
    // The peek gave kleap its own copies of the files in flight (closed if unused).
    std::vector<UniqueFd> files;
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t j = 0; j < k; ++j) {
          int got;
          memcpy(&got, CMSG_DATA(c) + j * sizeof(int), sizeof got);
          files.emplace_back(got);
        }
      }
    if (mh.msg_flags & MSG_CTRUNC)
      return Err(ENOTSUP) << "a message carries more control data than SCM_RIGHTS can";
    if (diag.type != SOCK_STREAM && size_t(n) > buf.size()) {
      // A message longer than the buffer: peek it again, whole.
      buf.resize(size_t(n));
      KLEAP_TRY(SetInt(fd, SOL_SOCKET, SO_PEEK_OFF, peeked, "SO_PEEK_OFF"));
      --i;
      continue;
    }
    if (diag.type == SOCK_STREAM && n == 0) break;
    size_t got = std::min(size_t(n), buf.size());
    // A stream's peek brings the files of the piece after the last byte it touches too,
    // so where files sit among a stream's bytes can't be read back.
    if (diag.type == SOCK_STREAM && !files.empty()) return Err(ENOTSUP) << kStreamInflight;
    img::UnixMsg* m = s->add_queue();
    m->set_data(buf.data(), got);
    for (auto& f : files) m->add_fds(KLEAP_TRY(inflight(std::move(f))));
    if (diag.type == SOCK_DGRAM && mh.msg_namelen > offsetof(sockaddr_un, sun_path))
      m->set_sender(NormalName(from.sun_path, mh.msg_namelen - offsetof(sockaddr_un, sun_path)));
    total += got;
    peeked += int(got);
    if (total > kMaxQueueBytes) return Err(ENOTSUP) << "its receive queue holds over 256 MiB";
  }
  if (diag.type != SOCK_DGRAM && total != diag.rqueue)
    return Err(EIO) << "peeked " << total << " bytes of a receive queue of " << diag.rqueue;
  return Ok();
}

// A name bound by a relative path: the directory it resolves in, the task's working
// directory when the socket file there is this socket's. Empty when not found.
std::string RelativeBindDir(const Diag& d, pid_t pid) {
  auto cwd = ReadLink(ProcPath(pid, "cwd"));
  if (!cwd || cwd->empty() || (*cwd)[0] != '/') return "";
  std::string path = (*cwd == "/" ? "" : *cwd) + "/" + d.name;
  struct stat st;
  if (!d.vfs || lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_ino != d.vfs_ino ||
      st.st_dev != UserDev(d.vfs_dev))
    return "";
  return *cwd;
}

// Problems of one socket that the socket alone shows (check and dump); task pid holds it.
// A relative name's directory goes to *bind_dir.
std::string RefuseDiag(const Diag& d, pid_t pid, std::string* bind_dir = nullptr) {
  std::string path = d.name;
  if (!d.name.empty() && d.name[0] != '\0' && d.name[0] != '/') {
    std::string dir = RelativeBindDir(d, pid);
    if (dir.empty())
      return "it is bound to the relative path '" + d.name +
             "', and its socket file is not in the task's working directory: the directory "
             "it was bound in can't be found";
    path = (dir == "/" ? "" : dir) + "/" + d.name;
    if (path.size() >= kMaxName)
      return "it is bound to the relative path '" + d.name + "' in " + dir +
             ", too long a path to reach it from another directory";
    if (bind_dir) *bind_dir = dir;
  }
  if (!path.empty() && path[0] == '/' && d.vfs) {
    // The restore binds the name again: the path must be its own socket file, or free
    // in a directory that still exists.
    struct stat st;
    if (lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode) || st.st_ino != d.vfs_ino || st.st_dev != UserDev(d.vfs_dev))
        return "its bound path " + path +
               " names another file now (its own was unlinked): the name can't be bound again "
               "while that file is there";
    } else {
      std::string dir = path.substr(0, path.rfind('/'));
      if (!dir.empty() && stat(dir.c_str(), &st) != 0)
        return "the directory of its bound path " + path +
               " is gone: the name can't be bound again";
    }
  }
  return "";
}

}  // namespace

// ---- check ----

bool IsUnixSocket(pid_t pid, int fd) {
  auto grabbed = GrabFd(pid, fd);
  if (!grabbed) return false;
  auto domain = GetInt(grabbed->get(), SOL_SOCKET, SO_DOMAIN, "SO_DOMAIN");
  return domain && *domain == AF_UNIX;
}

std::string RefuseUnixSock(const FdDesc& d) {
  auto diag = DiagOf(uint32_t(d.st.st_ino));
  if (!diag) return diag.error().ToString();
  // (Where fdinfo lacks scm_fds, older kernels, a queue is peeked whenever it holds data.)
  auto scm = FdInfoNumber(d.info, "scm_fds", 10);
  if ((scm ? *scm > 0 : diag->rqueue > 0) && diag->state != kListening) {
    // The files in flight, asked what dump asks of each: peeked as dump peeks them.
    auto grabbed = GrabFd(d.pid, d.fd);
    if (!grabbed) return grabbed.error().ToString();
    img::UnixSock scratch;
    std::string why;
    auto peeked = PeekQueue(grabbed->get(), *diag, &scratch, [&](UniqueFd f) -> Result<uint64_t> {
      if (why.empty()) why = RefuseInflightFile(f.get(), d.pid);
      return 0;
    });
    if (!peeked) return peeked.error().ToString();
    if (!why.empty()) return "a file in flight to it (SCM_RIGHTS): " + why;
  }
  if (diag->type == SOCK_STREAM && diag->state == kConnected) {
    // A pending out-of-band byte is kept apart from the queue; MSG_PEEK leaves it there.
    auto grabbed = GrabFd(d.pid, d.fd);
    if (!grabbed) return grabbed.error().ToString();
    char c;
    if (recv(grabbed->get(), &c, 1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT) == 1)
      return "an out-of-band byte (MSG_OOB) is pending; it is not carried";
  }
  return RefuseDiag(*diag, d.pid);
}

std::vector<Problem> CheckUnixPeers(const std::vector<TaskInfo>& tasks) {
  std::vector<Problem> out;
  std::map<uint32_t, std::pair<pid_t, int>> mine;  // every socket the tree holds
  ForEachTreeFd(tasks, [&](const TaskInfo& t, int fd) {
    auto link = ReadLink(ProcPath(t.pid, "fd/" + std::to_string(fd)));
    if (link && link->rfind("socket:[", 0) == 0)
      mine.emplace(uint32_t(strtoul(link->c_str() + 8, nullptr, 10)), std::make_pair(t.pid, fd));
  });
  // Sockets in flight to those (SCM_RIGHTS), and in flight to those in turn, are the
  // tree's too: the dump carries them. Peeked as dump peeks (kleap gets copies).
  std::vector<UniqueFd> held;                  // kleap's copies, open until the check ends
  std::vector<std::pair<uint32_t, int>> todo;  // (inode, an fd of kleap's or -1)
  for (auto& [ino, where] : mine) todo.push_back({ino, -1});
  while (!todo.empty()) {
    auto [ino, own] = todo.back();
    todo.pop_back();
    auto where = mine[ino];
    UniqueFd grabbed;
    if (own < 0) {
      auto g = GrabFd(where.first, where.second);
      if (!g) continue;
      grabbed = std::move(*g);
      own = grabbed.get();
    }
    auto info = ReadFdInfo(getpid(), own);
    if (!info) continue;
    auto n = FdInfoNumber(*info, "scm_fds", 10);
    auto diag = DiagOf(ino);
    if (!diag || diag->state == kListening || (n ? *n == 0 : diag->rqueue == 0)) continue;
    img::UnixSock scratch;
    (void)PeekQueue(own, *diag, &scratch, [&](UniqueFd f) -> Result<uint64_t> {
      struct stat st;
      if (fstat(f.get(), &st) == 0 && S_ISSOCK(st.st_mode) &&
          mine.emplace(uint32_t(st.st_ino), where).second) {
        todo.push_back({uint32_t(st.st_ino), f.get()});
        held.push_back(std::move(f));
      }
      return 0;
    });
  }
  if (mine.empty()) return out;
  auto all = QueryDiag(0);
  if (!all) {
    out.push_back({tasks[0].pid, "task", "unix sockets", all.error().ToString()});
    return out;
  }
  std::map<uint32_t, const Diag*> by_ino;
  std::map<uint32_t, const Diag*> waiting_in;  // client -> the listener it waits in
  for (auto& d : *all) {
    by_ino[d.ino] = &d;
    for (uint32_t c : d.icons) waiting_in[c] = &d;
  }
  auto other = [&](uint32_t ino) {
    auto it = by_ino.find(ino);
    std::string name = it == by_ino.end() ? "unnamed" : ShowName(it->second->name);
    return "socket " + std::to_string(ino) + " (" + name + ", " + Holder(ino) + ")";
  };
  for (auto& [ino, where] : mine) {
    auto it = by_ino.find(ino);
    if (it == by_ino.end()) continue;  // not a unix socket
    const Diag& d = *it->second;
    Problem p{where.first, "fd " + std::to_string(where.second),
              "socket:[" + std::to_string(ino) + "] (unix " + TypeName(d.type) + " " +
                  ShowName(d.name) + ")",
              ""};
    if (d.state == kListening) {
      for (uint32_t c : d.icons) {
        if (c == 0)
          p.reason = "a connection waits in its backlog whose client has closed";
        else if (!mine.count(c))
          p.reason = "a connection waits in its backlog from " + other(c) + ", outside the tree";
        if (!p.reason.empty()) break;
      }
    } else if (auto l = waiting_in.find(ino); l != waiting_in.end()) {
      // A client in a backlog: its peer is the listener's embryo socket, which has no
      // inode (UNIX_DIAG shows peer 0).
      if (!mine.count(l->second->ino))
        p.reason = "it waits in the backlog of " + other(l->second->ino) + ", outside the tree";
      else if (d.wqueue)
        p.reason = "it sent data on a connection not accepted yet; that data can't be read back";
    } else if (d.peer && !mine.count(d.peer)) {
      p.reason = "it is connected to " + other(d.peer) + ", outside the tree";
    }
    if (!p.reason.empty()) out.push_back(std::move(p));
  }
  return out;
}

// ---- dump ----

Result<void> DumpUnixSock(DumpContext& ctx, const FdDesc& d, img::FileObject* fo) {
  Diag diag = KLEAP_TRY(DiagOf(uint32_t(d.st.st_ino)));
  std::string bind_dir;
  if (std::string why = RefuseDiag(diag, d.pid, &bind_dir); !why.empty())
    return Err(ENOTSUP) << why;
  img::UnixSock* s = fo->mutable_unix_sock();
  s->set_type(diag.type);
  s->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  s->set_state(diag.state);
  s->set_ino(diag.ino);
  s->set_name(diag.name);
  s->set_bind_dir(bind_dir);
  s->set_peer_ino(diag.peer);
  s->set_peer_gone(diag.type == SOCK_DGRAM && diag.state == kConnected && diag.has_peer &&
                   !diag.peer);
  for (uint32_t c : diag.icons) s->add_icons(c);
  if (diag.state == kListening) s->set_backlog(diag.wqueue);
  s->set_shutdown(diag.shutdown);
  std::string path =
      bind_dir.empty() ? diag.name : (bind_dir == "/" ? "" : bind_dir) + "/" + diag.name;
  if (!path.empty() && path[0] == '/' && diag.vfs) {
    dev_t dev = UserDev(diag.vfs_dev);
    s->set_file_dev(dev);
    s->set_file_ino(diag.vfs_ino);
    struct stat st;
    if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == diag.vfs_ino &&
        st.st_dev == dev) {
      s->set_file_present(true);
      s->set_file_mode(st.st_mode & 07777);
      s->set_file_uid(st.st_uid);
      s->set_file_gid(st.st_gid);
    }
  }
  UniqueFd sock = KLEAP_TRY(GrabFd(d.pid, d.fd));
  int fd = sock.get();
  s->set_passcred(KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_PASSCRED, "SO_PASSCRED")));
  s->set_passsec(GetInt(fd, SOL_SOCKET, SO_PASSSEC, "SO_PASSSEC").value_or(0));
#ifdef SO_PASSPIDFD
  s->set_passpidfd(GetInt(fd, SOL_SOCKET, SO_PASSPIDFD, "SO_PASSPIDFD").value_or(0));
#endif
  s->set_sndbuf(uint32_t(KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF"))));
  s->set_rcvbuf(uint32_t(KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF"))));
  s->set_rcvtimeo_us(KLEAP_TRY(GetTimeout(fd, SO_RCVTIMEO, "SO_RCVTIMEO")));
  s->set_sndtimeo_us(KLEAP_TRY(GetTimeout(fd, SO_SNDTIMEO, "SO_SNDTIMEO")));
  if (diag.state == kListening) {
    s->set_peek_off(KLEAP_TRY(GetInt(fd, SOL_SOCKET, SO_PEEK_OFF, "SO_PEEK_OFF")));
    return Ok();
  }
  std::string where = "unix socket " + std::to_string(diag.ino);
  return PeekQueue(fd, diag, s, [&](UniqueFd f) -> Result<uint64_t> {
    return DumpInflightFile(ctx, std::move(f), where, d.pid);
  });
}

// ---- restore ----

Result<void> ValidateUnixSock(const img::FileObject& fo) {
  const img::UnixSock& s = fo.unix_sock();
  auto bad = [&]() {
    Error e(EINVAL);
    e << "files.img: unix socket " << fo.id() << ": ";
    return e;
  };
  if (s.type() != SOCK_STREAM && s.type() != SOCK_DGRAM && s.type() != SOCK_SEQPACKET)
    return bad() << "type " << s.type();
  if (s.state() != kConnected && s.state() != kUnconnected && s.state() != kListening)
    return bad() << "state " << s.state();
  if (s.state() == kListening && (s.type() == SOCK_DGRAM || s.name().empty()))
    return bad() << "a listener must be a named stream or seqpacket socket";
  if (s.name().size() > kMaxName) return bad() << "name of " << s.name().size() << " bytes";
  if (!s.name().empty() && s.name()[0] != '\0' &&
      ((s.name()[0] != '/' && (s.bind_dir().empty() || s.bind_dir()[0] != '/')) ||
       s.name().find('\0') != std::string::npos))
    return bad() << "name '" << s.name() << "'";
  if (!s.bind_dir().empty() &&
      (s.name().empty() || s.name()[0] == '/' || s.name()[0] == '\0' ||
       s.bind_dir().find('\0') != std::string::npos || PathOf(s).size() >= kMaxName))
    return bad() << "bind_dir '" << s.bind_dir() << "' for name '" << s.name() << "'";
  if (s.state() != kListening && (s.icons_size() || s.backlog()))
    return bad() << "a backlog on a socket that doesn't listen";
  if (s.backlog() > (1u << 20) || s.icons_size() > kMaxMessages) return bad() << "backlog";
  if (s.shutdown() > 3) return bad() << "shutdown " << s.shutdown();
  if (s.peek_off() < -1) return bad() << "SO_PEEK_OFF " << s.peek_off();
  if (s.rcvtimeo_us() < 0 || s.sndtimeo_us() < 0) return bad() << "timeouts";
  if (s.sndbuf() > (1u << 30) || s.rcvbuf() > (1u << 30)) return bad() << "buffer sizes";
  if (s.queue_size() > kMaxMessages) return bad() << s.queue_size() << " messages";
  uint64_t total = 0;
  for (auto& m : s.queue()) {
    total += m.data().size();
    if (m.sender().size() > kMaxName) return bad() << "a sender's name";
  }
  if (total > kMaxQueueBytes) return bad() << "a queue of " << total << " bytes";
  if (s.queue_size() && s.state() == kListening) return bad() << "a listener's queue";
  if (s.peer_gone() && (s.type() != SOCK_DGRAM || s.state() != kConnected || s.peer_ino()))
    return bad() << "a closed peer on a socket that is not a connected datagram socket";
  if (s.type() == SOCK_DGRAM && s.state() == kConnected && !s.peer_ino() && !s.peer_gone() &&
      s.name().empty())
    return bad() << "an unnamed datagram socket that others connected to";
  return ValidateAnonFlags(fo, "unix socket", s.flags(), O_RDWR);
}

Result<void> ValidateUnixQueues(const img::FileTable& files) {
  std::map<uint32_t, const img::UnixSock*> by_ino;
  std::set<std::string> dgram_names;
  std::set<uint64_t> ids;
  for (auto& fo : files.files()) ids.insert(fo.id());
  for (auto& fo : files.files())
    if (fo.has_unix_sock())
      for (auto& m : fo.unix_sock().queue()) {
        if (size_t(m.fds_size()) > kScmMaxFd)
          return Err(EINVAL) << "files.img: unix socket " << fo.id() << ": a message with "
                             << m.fds_size() << " files in flight";
        for (uint64_t id : m.fds())
          if (!ids.count(id))
            return Err(EINVAL) << "files.img: unix socket " << fo.id() << ": file " << id
                               << " in flight is not in the set";
      }
  for (auto& fo : files.files())
    if (fo.has_unix_sock()) {
      by_ino[fo.unix_sock().ino()] = &fo.unix_sock();
      if (fo.unix_sock().type() == SOCK_DGRAM && !fo.unix_sock().name().empty())
        dgram_names.insert(fo.unix_sock().name());
    }
  for (auto& fo : files.files()) {
    if (!fo.has_unix_sock() || fo.unix_sock().type() != SOCK_DGRAM) continue;
    const img::UnixSock& k = fo.unix_sock();
    auto peer = by_ino.find(k.peer_ino());
    std::string peer_name = k.peer_ino() && peer != by_ino.end() ? peer->second->name() : "";
    for (auto& m : k.queue()) {
      if (m.sender().empty() || (k.peer_ino() && m.sender() == peer_name)) continue;
      std::string what = "files.img: unix socket " + std::to_string(fo.id()) + ": a message from " +
                         ShowName(m.sender());
      // Sent again at restore by that socket, to this one's name.
      if (k.peer_gone()) return Err(ENOTSUP) << what << " to a socket whose peer closed";
      if (!dgram_names.count(m.sender()))
        return Err(ENOTSUP) << what << ", which is not a socket of the set";
      if (k.name().empty()) return Err(ENOTSUP) << what << " to an unnamed socket, not its peer";
    }
  }
  return Ok();
}

namespace {

struct Addr {
  sockaddr_un sun{};
  socklen_t len = 0;
};

Addr MakeAddr(const std::string& name) {
  Addr a;
  a.sun.sun_family = AF_UNIX;
  memcpy(a.sun.sun_path, name.data(), name.size());
  a.len = socklen_t(offsetof(sockaddr_un, sun_path) + name.size() + (name[0] == '\0' ? 0 : 1));
  return a;
}

// The restore of every unix socket of a set, in the controller.
class UnixRestore {
 public:
  explicit UnixRestore(OpenFiles* open) : open_(open) {}
  ~UnixRestore() {
    // Names bound only for the restore go again, also after a failure.
    for (auto& p : unlink_) unlink(p.c_str());
  }
  // Makes every socket, bound, listening and connected, into open->by_id.
  Result<void> Run(const img::FileTable& files);
  // Once every other file is open: the queues, with the files in flight, then options.
  Result<void> Fill();

 private:
  struct Sock {
    const img::FileObject* fo;
    const img::UnixSock* s;
    UniqueFd fd;
    UniqueFd temp_peer;  // the other end of a connection whose peer had closed
    int peer = -1;       // index of the peer in socks_
  };

  std::string What(const Sock& k) const {
    return "unix " + std::string(TypeName(k.s->type())) + " socket " + std::to_string(k.fo->id()) +
           " (" + ShowName(k.s->name()) + ")";
  }
  Result<UniqueFd> NewSocket(uint32_t type);
  Result<void> Bind(int fd, const img::UnixSock& s, const std::string& what);
  Result<UniqueFd> Listener(const Sock& server, bool* temp);
  Result<void> MakePair(Sock& a, Sock* b);
  Result<void> Refill(Sock& k);
  Result<ssize_t> SendWithFiles(int from, const char* p, size_t len, const img::UnixMsg* m,
                                const sockaddr_un* to, socklen_t to_len, const std::string& what);
  Result<void> Finish(Sock& k);
  // A datagram socket of our own connects to `name` and closes.
  Result<void> ConnectAndClose(const img::UnixSock& s, const std::string& what);

  OpenFiles* open_;
  std::vector<Sock> socks_;
  std::map<uint32_t, size_t> by_ino_;
  std::map<std::string, size_t> listeners_;  // name -> index
  std::map<std::pair<std::string, uint32_t>, UniqueFd> temp_listeners_;
  std::set<std::string> unlink_;
};

Result<UniqueFd> UnixRestore::NewSocket(uint32_t type) {
  UniqueFd fd(socket(AF_UNIX, int(type) | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoError() << "socket";
  return fd;
}

// Binds a name again. A socket file still at the path is unlinked only when it is the
// one the dumped socket was bound to.
// The address that reaches a socket from the controller.
Addr TargetAddr(const img::UnixSock& s) {
  return MakeAddr(PathOf(s));
}

Result<void> UnixRestore::Bind(int fd, const img::UnixSock& s, const std::string& what) {
  const std::string name = PathOf(s);
  bool path = name[0] != '\0';
  if (path) {
    struct stat st;
    if (lstat(name.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode) || st.st_ino != s.file_ino() || st.st_dev != s.file_dev())
        return Err(EEXIST) << what << ": " << name
                           << " exists and is not the socket file that was dumped (inode "
                           << s.file_ino() << ", found " << st.st_ino << ")";
      if (unlink(name.c_str()) < 0) return ErrnoError() << what << ": unlink the stale " << name;
    }
  }
  auto bind_name = [&](const std::string& n) -> Result<void> {
    Addr a = MakeAddr(n);
    if (bind(fd, reinterpret_cast<sockaddr*>(&a.sun), a.len) < 0) {
      Error e = ErrnoError();
      e << what << ": bind " << ShowName(name);
      if (e.code() == EADDRINUSE) e << ": the name is taken";
      return e;
    }
    return Ok();
  };
  if (s.bind_dir().empty()) {
    KLEAP_TRY(bind_name(name));
  } else {
    // Bound again by its relative name, from its directory: a child of ours goes there
    // and binds our socket (the same one: fork shares it), so the name stays relative.
    KLEAP_TRY(RunInChild(what + ": bind in " + s.bind_dir(), [&]() -> Result<void> {
      if (chdir(s.bind_dir().c_str()) < 0) return ErrnoError() << "chdir " << s.bind_dir();
      return bind_name(s.name());
    }));
  }
  if (path) {
    if (!s.file_present()) unlink_.insert(name);
    if (s.file_present() && (chmod(name.c_str(), s.file_mode()) < 0 ||
                             lchown(name.c_str(), s.file_uid(), s.file_gid()) < 0))
      return ErrnoError() << what << ": set the owner and mode of " << name;
  }
  return Ok();
}

// The listener a server end is accepted from: the set's own, or a temporary one bound
// to the same name when the task had closed it.
Result<UniqueFd> UnixRestore::Listener(const Sock& server, bool* temp) {
  auto it = listeners_.find(server.s->name());
  *temp = it == listeners_.end() || socks_[it->second].s->type() != server.s->type();
  if (!*temp) {
    UniqueFd dup(fcntl(socks_[it->second].fd.get(), F_DUPFD_CLOEXEC, 0));
    if (!dup) return ErrnoError() << "dup a listener";
    return dup;
  }
  // One per name: every connection accepted from that listener comes from it.
  UniqueFd& l = temp_listeners_[{server.s->name(), server.s->type()}];
  if (!l) {
    l = KLEAP_TRY(NewSocket(server.s->type()));
    KLEAP_TRY(Bind(l.get(), *server.s, What(server) + ": its listener"));
    if (listen(l.get(), 1) < 0) return ErrnoError() << What(server) << ": listen";
  }
  UniqueFd dup(fcntl(l.get(), F_DUPFD_CLOEXEC, 0));
  if (!dup) return ErrnoError() << "dup a listener";
  return dup;
}

// A connected stream or seqpacket pair: a (with b, or with a temporary end when b is
// null). The end that carries a name is the one accepted from its listener.
Result<void> UnixRestore::MakePair(Sock& a, Sock* b) {
  Sock* server = &a;
  Sock* client = b;
  if (b && b->s->name().size() &&
      (a.s->name().empty() || (!listeners_.count(a.s->name()) && listeners_.count(b->s->name())))) {
    server = b;
    client = &a;
  }
  UniqueFd* server_fd = &server->fd;
  UniqueFd* client_fd = client ? &client->fd : &a.temp_peer;
  if (server->s->name().empty()) {
    int sv[2];
    if (socketpair(AF_UNIX, int(a.s->type()) | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
      return ErrnoError() << What(a) << ": socketpair";
    server_fd->reset(sv[0]);
    client_fd->reset(sv[1]);
    return Ok();
  }
  bool temp = false;
  UniqueFd l = KLEAP_TRY(Listener(*server, &temp));
  *client_fd = KLEAP_TRY(NewSocket(a.s->type()));
  if (client && !client->s->name().empty())
    KLEAP_TRY(Bind(client_fd->get(), *client->s, What(*client)));
  Addr to = TargetAddr(*server->s);
  if (connect(client_fd->get(), reinterpret_cast<sockaddr*>(&to.sun), to.len) < 0)
    return ErrnoError() << What(*server) << ": connect to its listener";
  server_fd->reset(accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!*server_fd) return ErrnoError() << What(*server) << ": accept";
  return Ok();
}

Result<void> UnixRestore::ConnectAndClose(const img::UnixSock& s, const std::string& what) {
  UniqueFd c = KLEAP_TRY(NewSocket(SOCK_DGRAM));
  Addr to = TargetAddr(s);
  if (connect(c.get(), reinterpret_cast<sockaddr*>(&to.sun), to.len) < 0)
    return ErrnoError() << what << ": connect a socket of ours to it";
  return Ok();
}

// One sendmsg of a queue's piece, with the files in flight of message m (when given)
// as SCM_RIGHTS: the set's files, opened already. The bytes sent, or -1 with errno.
Result<ssize_t> UnixRestore::SendWithFiles(int from, const char* p, size_t len,
                                           const img::UnixMsg* m, const sockaddr_un* to,
                                           socklen_t to_len, const std::string& what) {
  iovec iov{const_cast<char*>(p), len};
  msghdr mh{};
  mh.msg_name = const_cast<sockaddr_un*>(to);
  mh.msg_namelen = to ? to_len : 0;
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> cbuf;
  if (m && m->fds_size()) {
    cbuf.resize(CMSG_SPACE(size_t(m->fds_size()) * sizeof(int)));
    mh.msg_control = cbuf.data();
    mh.msg_controllen = cbuf.size();
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(size_t(m->fds_size()) * sizeof(int));
    for (int j = 0; j < m->fds_size(); ++j) {
      auto it = open_->by_id.find(m->fds(j));
      if (it == open_->by_id.end() || !it->second)
        return Err(EINVAL) << what << ": file " << m->fds(j) << " in flight was not opened";
      int fd = it->second.get();
      memcpy(CMSG_DATA(c) + size_t(j) * sizeof(int), &fd, sizeof fd);
    }
  }
  return sendmsg(from, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
}

// Sends a socket's queue again, from its peer or its senders.
Result<void> UnixRestore::Refill(Sock& k) {
  if (k.s->queue_size() == 0) return Ok();
  std::string what = What(k);
  int from = k.peer >= 0 ? socks_[size_t(k.peer)].fd.get() : k.temp_peer.get();
  if (k.s->type() == SOCK_STREAM) {
    if (from < 0) return Err(EINVAL) << what << ": queued bytes without a peer";
    size_t all = 0;
    for (auto& m : k.s->queue()) all += m.data().size();
    KLEAP_TRY(SetInt(from, SOL_SOCKET, SO_SNDBUFFORCE,
                     int(std::max<size_t>(1 << 20, 2 * all + (1 << 16))), "SO_SNDBUFFORCE"));
    // Piece by piece: the files in flight go with the bytes they were sent with.
    size_t done = 0;
    for (auto& m : k.s->queue())
      for (size_t off = 0; off < m.data().size();) {
        ssize_t n = KLEAP_TRY(SendWithFiles(from, m.data().data() + off,
                                            std::min<size_t>(m.data().size() - off, 1 << 16),
                                            off == 0 ? &m : nullptr, nullptr, 0, what));
        if (n <= 0) return ErrnoError() << what << ": refill its queue at byte " << done + off;
        off += size_t(n);
      }
    return Ok();
  }
  Addr to;
  if (!k.s->name().empty()) to = TargetAddr(*k.s);
  uint64_t queue_room = 1 << 16;
  for (auto& m : k.s->queue()) queue_room += m.data().size() + 2048;
  for (auto& m : k.s->queue()) {
    int sender = from;
    UniqueFd anon;
    if (k.s->type() == SOCK_DGRAM) {
      // The message's sender: the peer it is connected to, a socket of the set with that
      // name, or (unnamed) a socket of our own.
      const std::string& peer_name = k.peer >= 0 ? socks_[size_t(k.peer)].s->name() : "";
      if (k.s->peer_gone()) {
        // From the peer that closed (the dump took nothing else): the pair's other end.
        if (!m.sender().empty())
          return Err(ENOTSUP) << what << ": a message from " << ShowName(m.sender())
                              << " to a socket whose peer closed";
      } else if (k.peer < 0 || m.sender() != peer_name) {
        sender = -1;
        if (!m.sender().empty()) {
          for (auto& o : socks_)
            if (o.s->type() == SOCK_DGRAM && o.s->name() == m.sender()) sender = o.fd.get();
          if (sender < 0)
            return Err(ENOTSUP) << what << ": a message from " << ShowName(m.sender())
                                << ", which is not a socket of the set";
        } else {
          anon = KLEAP_TRY(NewSocket(SOCK_DGRAM));
          sender = anon.get();
        }
        if (k.s->name().empty())
          return Err(ENOTSUP) << what
                              << ": a message from another socket than its peer, to "
                                 "an unnamed socket";
      }
    }
    if (sender < 0) return Err(EINVAL) << what << ": queued messages without a peer";
    // Room for the whole queue in the sender's buffer (each message costs its skb too).
    KLEAP_TRY(SetInt(sender, SOL_SOCKET, SO_SNDBUFFORCE,
                     int(std::min<uint64_t>(std::max<uint64_t>(1 << 20, 2 * queue_room), 1 << 30)),
                     "SO_SNDBUFFORCE"));
    // A datagram goes to the socket's name, unless the sender is its connected pair.
    bool named_to = k.s->type() == SOCK_DGRAM && !k.s->peer_gone() &&
                    (sender != from || socks_[size_t(k.peer)].peer != int(&k - socks_.data()));
    if (named_to && k.s->name().empty())
      return Err(ENOTSUP) << what << ": a message to an unnamed socket from one not its pair";
    ssize_t n = KLEAP_TRY(SendWithFiles(sender, m.data().data(), m.data().size(), &m,
                                        named_to ? &to.sun : nullptr, named_to ? to.len : 0, what));
    if (n != ssize_t(m.data().size()))
      return ErrnoError() << what << ": refill a message of " << m.data().size() << " bytes";
  }
  return Ok();
}

// Options, buffer sizes, shutdown and flags, once every queue is full again.
Result<void> UnixRestore::Finish(Sock& k) {
  const img::UnixSock& s = *k.s;
  int fd = k.fd.get();
  std::string what = What(k);
  KLEAP_TRY_CTX(SetInt(fd, SOL_SOCKET, SO_PASSCRED, s.passcred(), "SO_PASSCRED"), what);
  if (s.passsec()) KLEAP_TRY_CTX(SetInt(fd, SOL_SOCKET, SO_PASSSEC, 1, "SO_PASSSEC"), what);
#ifdef SO_PASSPIDFD
  if (s.passpidfd()) KLEAP_TRY_CTX(SetInt(fd, SOL_SOCKET, SO_PASSPIDFD, 1, "SO_PASSPIDFD"), what);
#endif
  for (auto [get, force, want, name] :
       {std::tuple{SO_SNDBUF, SO_SNDBUFFORCE, s.sndbuf(), "SO_SNDBUF"},
        std::tuple{SO_RCVBUF, SO_RCVBUFFORCE, s.rcvbuf(), "SO_RCVBUF"}}) {
    // The kernel doubles what is set; what it reports is already doubled.
    if (want && uint32_t(KLEAP_TRY(GetInt(fd, SOL_SOCKET, get, name))) != want)
      KLEAP_TRY_CTX(SetInt(fd, SOL_SOCKET, force, int(want / 2), name), what);
  }
  KLEAP_TRY_CTX(SetTimeouts(fd, s.rcvtimeo_us(), s.sndtimeo_us()), what);
  if (s.peek_off() != -1)
    KLEAP_TRY_CTX(SetInt(fd, SOL_SOCKET, SO_PEEK_OFF, s.peek_off(), "SO_PEEK_OFF"), what);
  if ((s.shutdown() & kRcvShutdown) && shutdown(fd, SHUT_RD) < 0)
    return ErrnoError() << what << ": shutdown SHUT_RD";
  if ((s.shutdown() & kSendShutdown) && shutdown(fd, SHUT_WR) < 0)
    return ErrnoError() << what << ": shutdown SHUT_WR";
  if (fcntl(fd, F_SETFL, int(s.flags() & O_NONBLOCK)) < 0)
    return ErrnoError() << what << ": set its flags";
  return Ok();
}

Result<void> UnixRestore::Run(const img::FileTable& files) {
  for (auto& fo : files.files()) {
    if (!fo.has_unix_sock()) continue;
    if (!by_ino_.emplace(fo.unix_sock().ino(), socks_.size()).second)
      return Err(EINVAL) << "files.img: two unix sockets with inode " << fo.unix_sock().ino();
    socks_.push_back({&fo, &fo.unix_sock(), {}, {}, -1});
  }
  std::map<uint32_t, size_t> waiting;  // client ino -> listener index
  for (size_t i = 0; i < socks_.size(); ++i) {
    Sock& k = socks_[i];
    if (k.s->state() == kListening) {
      listeners_.emplace(k.s->name(), i);
      for (uint32_t c : k.s->icons()) {
        auto it = by_ino_.find(c);
        if (it == by_ino_.end() || socks_[it->second].s->type() != k.s->type() ||
            !waiting.emplace(c, i).second)
          return Err(EINVAL) << "files.img: " << What(k) << ": bad client " << c << " waiting";
      }
    }
    if (k.s->peer_ino()) {
      auto it = by_ino_.find(k.s->peer_ino());
      if (it != by_ino_.end()) {
        // (A datagram socket may be connected to its own name.)
        if (socks_[it->second].s->type() != k.s->type() ||
            (it->second == i && (k.s->type() != SOCK_DGRAM || k.s->name().empty())))
          return Err(EINVAL) << "files.img: " << What(k) << ": bad peer " << k.s->peer_ino();
        k.peer = int(it->second);
      }
    }
  }
  // Listeners first, then everything that stands alone.
  for (auto& k : socks_) {
    bool alone = k.s->state() != kConnected || k.s->type() == SOCK_DGRAM;
    if (!alone) continue;
    if (k.s->type() == SOCK_DGRAM && k.peer >= 0 && k.s->name().empty() &&
        socks_[size_t(k.peer)].s->name().empty()) {
      // An unnamed pair: socketpair(), made once for both.
      Sock& o = socks_[size_t(k.peer)];
      if (o.peer < 0 || &socks_[size_t(o.peer)] != &k)
        return Err(ENOTSUP) << What(k) << ": connected to an unnamed socket that is not its pair";
      if (k.fd) continue;
      int sv[2];
      if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
        return ErrnoError() << What(k) << ": socketpair";
      k.fd.reset(sv[0]);
      o.fd.reset(sv[1]);
      continue;
    }
    if (k.s->peer_gone()) {
      // Connected to a socket that closed: one end of a pair, whose other end sends the
      // queue (messages from the peer) and then closes, as the peer did.
      int sv[2];
      if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
        return ErrnoError() << What(k) << ": socketpair";
      k.fd.reset(sv[0]);
      k.temp_peer.reset(sv[1]);
    } else {
      k.fd = KLEAP_TRY(NewSocket(k.s->type()));
    }
    if (!k.s->name().empty()) KLEAP_TRY(Bind(k.fd.get(), *k.s, What(k)));
    if (k.s->state() == kListening && listen(k.fd.get(), int(k.s->backlog())) < 0)
      return ErrnoError() << What(k) << ": listen";
  }
  // Datagram sockets connect to their peers' names.
  for (auto& k : socks_) {
    if (k.s->type() != SOCK_DGRAM || k.s->state() != kConnected) continue;
    if (!k.s->peer_ino()) {
      // Its peer has closed: it was made as one end of a pair whose other end sends its
      // queue and closes (temp_peer).
      if (k.s->peer_gone()) continue;
      // No peer of its own, marked connected because others connected to it: so it is
      // again.
      KLEAP_TRY(ConnectAndClose(*k.s, What(k)));
      continue;
    }
    if (k.peer < 0) return Err(ENOTSUP) << What(k) << ": its peer is not in the set";
    const Sock& p = socks_[size_t(k.peer)];
    if (p.s->name().empty()) continue;  // the socketpair above
    Addr to = TargetAddr(*p.s);
    if (connect(k.fd.get(), reinterpret_cast<sockaddr*>(&to.sun), to.len) < 0)
      return ErrnoError() << What(k) << ": connect to " << ShowName(p.s->name());
  }
  // Connected pairs: accepted ones before the backlogs fill.
  for (auto& k : socks_) {
    if (k.fd || k.s->type() == SOCK_DGRAM || k.s->state() != kConnected) continue;
    if (waiting.count(k.s->ino())) continue;
    if (k.peer >= 0 && waiting.count(socks_[size_t(k.peer)].s->ino()))
      return Err(EINVAL) << "files.img: " << What(k) << ": its peer waits in a backlog";
    KLEAP_TRY(MakePair(k, k.peer >= 0 ? &socks_[size_t(k.peer)] : nullptr));
  }
  // The clients waiting in each backlog, in its order.
  for (auto& l : socks_) {
    if (l.s->state() != kListening) continue;
    Addr to = TargetAddr(*l.s);
    for (uint32_t c : l.s->icons()) {
      Sock& k = socks_[Lookup(by_ino_, c)];
      if (k.fd) return Err(EINVAL) << "files.img: " << What(k) << " waits in two places";
      k.fd = KLEAP_TRY(NewSocket(k.s->type()));
      k.peer = -1;
      if (!k.s->name().empty()) KLEAP_TRY(Bind(k.fd.get(), *k.s, What(k)));
      if (connect(k.fd.get(), reinterpret_cast<sockaddr*>(&to.sun), to.len) < 0)
        return ErrnoError() << What(k) << ": connect to " << What(l);
    }
  }
  // Each goes into by_id now; its queue waits for the files in flight (Fill).
  for (auto& k : socks_) {
    UniqueFd copy(fcntl(k.fd.get(), F_DUPFD_CLOEXEC, 0));
    if (!copy) return ErrnoError() << What(k) << ": dup";
    open_->by_id[k.fo->id()] = std::move(copy);
  }
  return Ok();
}

Result<void> UnixRestore::Fill() {
  for (auto& k : socks_) KLEAP_TRY(Refill(k));
  for (auto& k : socks_) {
    // A connection whose peer had closed: its end goes now, as the peer's did.
    k.temp_peer.reset();
  }
  for (auto& k : socks_) KLEAP_TRY(Finish(k));
  socks_.clear();
  return Ok();
}

}  // namespace

Result<void> OpenUnixSockets(const img::FileTable& files, OpenFiles* open) {
  auto r = std::make_shared<UnixRestore>(open);
  KLEAP_TRY(r->Run(files));
  open->unix_restore = r;
  return Ok();
}

Result<void> FillUnixSockets(OpenFiles* open) {
  auto r = std::static_pointer_cast<UnixRestore>(std::move(open->unix_restore));
  return r ? r->Fill() : Ok();
}

Result<UniqueFd> OpenUnixSock(const img::FileObject& fo, ImageReader&, OpenFiles& files) {
  auto it = files.by_id.find(fo.id());
  if (it == files.by_id.end() || !it->second)
    return Err(EINVAL) << "unix socket " << fo.id() << " was not made";
  UniqueFd fd(fcntl(it->second.get(), F_DUPFD_CLOEXEC, 0));
  if (!fd) return ErrnoError() << "unix socket " << fo.id() << ": dup";
  return fd;
}

}  // namespace kleap
