// The network lock: while a tree's sockets are frozen, dumped and not yet restored,
// packets to and from them are dropped, so that no peer gets a RST (nothing listens)
// or an ICMP error, and peers only see lost packets, which they send again.
// One nftables table of the calling thread's network namespace, replaced as a whole.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/result.h"

namespace kleap::net {

inline constexpr char kLockTable[] = "inet kleap_lock";

// A local endpoint of a carried socket.
struct LockedEndpoint {
  int family = 0;    // AF_INET, AF_INET6
  int protocol = 0;  // IPPROTO_TCP, IPPROTO_UDP
  std::string addr;  // 4 or 16 bytes; empty or all zeros: every address
  uint16_t port = 0;
};

// Drops packets to these endpoints (input) and from them (output). Replaces the
// rules of an earlier lock.
Result<void> LockEndpoints(const std::vector<LockedEndpoint>& endpoints);
// Removes the lock; nothing to do when there is none.
Result<void> Unlock();
// Whether a lock table exists.
Result<bool> Locked();

}  // namespace kleap::net
