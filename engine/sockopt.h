// Integer socket options, for every socket kind (inet, unix, netlink).
#pragma once

#include <sys/socket.h>

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

}  // namespace kleap
