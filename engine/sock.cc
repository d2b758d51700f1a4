#include "engine/sock.h"

#include <linux/filter.h>
#include <linux/sock_diag.h>
#include <sys/time.h>
#include <unistd.h>

#include <tuple>
#include <vector>

#include "engine/base/unique_fd.h"

namespace kleap {

Result<std::string> ReadFilter(int fd) {
  socklen_t n = 0;
  if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, nullptr, &n) < 0)
    return ErrnoError() << "getsockopt SO_GET_FILTER (an eBPF program can't be read back)";
  if (n == 0) return std::string();
  std::string out(size_t(n) * sizeof(sock_filter), '\0');
  if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, out.data(), &n) < 0)
    return ErrnoError() << "getsockopt SO_GET_FILTER";
  out.resize(size_t(n) * sizeof(sock_filter));
  return out;
}

Result<void> AttachFilter(int fd, const std::string& insns) {
  if (insns.empty()) return Ok();
  if (insns.size() % sizeof(sock_filter) || insns.size() / sizeof(sock_filter) > BPF_MAXINSNS)
    return Err(EINVAL) << "a filter of " << insns.size() << " bytes";
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(insns.size() / sizeof(sock_filter));
  prog.filter = reinterpret_cast<sock_filter*>(const_cast<char*>(insns.data()));
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0)
    return ErrnoError() << "attach its filter (" << prog.len << " instructions)";
  return Ok();
}

Result<void> SockDiag(void* req, size_t len, bool dump, const std::string& what,
                      const std::function<void(const nlmsghdr&)>& each) {
  UniqueFd nl(socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) return ErrnoError() << what << ": netlink sock_diag socket";
  auto* h = static_cast<nlmsghdr*>(req);
  h->nlmsg_len = uint32_t(len);
  h->nlmsg_type = SOCK_DIAG_BY_FAMILY;
  h->nlmsg_flags = NLM_F_REQUEST | (dump ? NLM_F_DUMP : 0);
  if (send(nl.get(), req, len, 0) != ssize_t(len)) return ErrnoError() << what << ": send";
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t n = recv(nl.get(), buf.data(), buf.size(), 0);
    if (n < 0) return ErrnoError() << what << ": read the answer";
    if (n == 0) return Err(EPROTO) << what << ": the kernel closed the query";
    for (auto* m = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(m, size_t(n));
         m = NLMSG_NEXT(m, n)) {
      if (m->nlmsg_type == NLMSG_DONE) return Ok();
      if (m->nlmsg_type == NLMSG_ERROR) {
        int err = m->nlmsg_len >= NLMSG_LENGTH(sizeof(nlmsgerr))
                      ? -static_cast<nlmsgerr*>(NLMSG_DATA(m))->error
                      : EPROTO;
        if (err == 0) return Ok();
        errno = err;
        return ErrnoError() << what;
      }
      if (m->nlmsg_type == SOCK_DIAG_BY_FAMILY) each(*m);
    }
    if (!dump) return Ok();
  }
}

Result<int64_t> GetTimeout(int fd, int name, const char* what) {
  timeval tv{};
  socklen_t len = sizeof tv;
  if (getsockopt(fd, SOL_SOCKET, name, &tv, &len) < 0) return ErrnoError() << "getsockopt " << what;
  return int64_t(tv.tv_sec) * 1000000 + tv.tv_usec;
}

Result<void> SetTimeouts(int fd, int64_t rcv_us, int64_t snd_us) {
  for (auto [name, us, label] : {std::tuple{SO_RCVTIMEO, rcv_us, "SO_RCVTIMEO"},
                                 std::tuple{SO_SNDTIMEO, snd_us, "SO_SNDTIMEO"}}) {
    if (!us) continue;
    timeval tv{time_t(us / 1000000), suseconds_t(us % 1000000)};
    if (setsockopt(fd, SOL_SOCKET, name, &tv, sizeof tv) < 0)
      return ErrnoError() << "setsockopt " << label;
  }
  return Ok();
}

}  // namespace kleap
