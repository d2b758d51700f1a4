#include "engine/net/netlock.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <set>
#include <sstream>

#include "engine/net/netconf_impl.h"
#include "engine/net/netlink.h"

namespace kleap::net {
namespace {

// "ip daddr 10.0.0.1 " or "" for every address. A v4-mapped IPv6 address is matched
// as the IPv4 packets it receives.
std::string AddrMatch(const LockedEndpoint& e, const char* dir) {
  const auto* b = reinterpret_cast<const uint8_t*>(e.addr.data());
  if (std::all_of(e.addr.begin(), e.addr.end(), [](char c) { return c == 0; })) return "";
  if (e.addr.size() == 4) return std::string("ip ") + dir + " " + AddrToString(AF_INET, b, 4) + " ";
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (e.addr.size() == 16 && std::equal(kMapped, kMapped + 12, b))
    return std::string("ip ") + dir + " " + AddrToString(AF_INET, b + 12, 4) + " ";
  return std::string("ip6 ") + dir + " " + AddrToString(AF_INET6, b, 16) + " ";
}

}  // namespace

Result<void> LockEndpoints(const std::vector<LockedEndpoint>& endpoints) {
  std::set<std::string> in, out;
  for (auto& e : endpoints) {
    if (e.protocol != IPPROTO_TCP && e.protocol != IPPROTO_UDP && e.protocol != IPPROTO_UDPLITE)
      return Err(EINVAL) << "network lock: protocol " << e.protocol;
    if (!e.addr.empty() && e.addr.size() != 4 && e.addr.size() != 16)
      return Err(EINVAL) << "network lock: bad address length " << e.addr.size();
    std::string proto = e.protocol == IPPROTO_TCP   ? "tcp"
                        : e.protocol == IPPROTO_UDP ? "udp"
                                                    : "udplite";
    std::string port = std::to_string(e.port);
    in.insert(AddrMatch(e, "daddr") + proto + " dport " + port + " drop");
    out.insert(AddrMatch(e, "saddr") + proto + " sport " + port + " drop");
  }
  // One transaction: the table, emptied if it was there, and the rules.
  std::ostringstream cmd;
  cmd << "add table " << kLockTable << "\n"
      << "flush table " << kLockTable << "\n"
      << "add chain " << kLockTable
      << " in { type filter hook input priority -400; policy accept; }\n"
      << "add chain " << kLockTable
      << " out { type filter hook output priority -400; policy accept; }\n";
  for (auto& r : in) cmd << "add rule " << kLockTable << " in " << r << "\n";
  for (auto& r : out) cmd << "add rule " << kLockTable << " out " << r << "\n";
  KLEAP_TRY(NftCommand(cmd.str(), "network lock"));
  return Ok();
}

Result<bool> Locked() {
  std::string tables = KLEAP_TRY(NftCommand("list tables", "nft list tables"));
  return tables.find("\"name\": \"kleap_lock\"") != std::string::npos ||
         tables.find("\"name\":\"kleap_lock\"") != std::string::npos;
}

Result<void> Unlock() {
  if (!KLEAP_TRY(Locked())) return Ok();
  KLEAP_TRY(NftCommand(std::string("delete table ") + kLockTable, "remove the network lock"));
  return Ok();
}

}  // namespace kleap::net
