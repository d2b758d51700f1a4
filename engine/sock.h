// What every socket kind (inet, unix, netlink) shares: integer options, classic BPF
// filters, and sock_diag queries, which read a socket's kernel state without touching it.
#pragma once

#include <linux/netlink.h>
#include <sys/socket.h>

#include <functional>

#include "engine/base/result.h"

namespace kleap {

inline Result<int> GetInt(int fd, int level, int name, const char* what) {
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(fd, level, name, &v, &len) < 0) return ErrnoError() << "getsockopt " << what;
  return v;
}

inline Result<void> SetInt(int fd, int level, int name, int v, const char* what) {
  if (setsockopt(fd, level, name, &v, sizeof v) < 0)
    return ErrnoError() << "setsockopt " << what << " " << v;
  return Ok();
}

// SO_RCVTIMEO or SO_SNDTIMEO in microseconds (0: none).
Result<int64_t> GetTimeout(int fd, int name, const char* what);
// Sets both again where they are not 0.
Result<void> SetTimeouts(int fd, int64_t rcv_us, int64_t snd_us);

// A classic BPF filter attached with SO_ATTACH_FILTER, as its instructions; empty when
// there is none. An eBPF program can't be read back: an error.
Result<std::string> ReadFilter(int fd);
// Attaches one (the instructions ReadFilter gave).
Result<void> AttachFilter(int fd, const std::string& insns);

// Sends one SOCK_DIAG_BY_FAMILY request (req: an nlmsghdr and the family's request,
// header filled in here) and calls `each` with every answer until the kernel is done.
// `what` names the query in errors.
Result<void> SockDiag(void* req, size_t len, bool dump, const std::string& what,
                      const std::function<void(const nlmsghdr&)>& each);

}  // namespace kleap
