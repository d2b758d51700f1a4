// What the parts of the network dump and restore share: the per-kind entry points
// and the restore context with its undo log. Internal to engine/net.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/net/net.pb.h"
#include "engine/net/netlink.h"

namespace kleap::net {

// Steps that restore has applied, undone in reverse order when a later step fails,
// so that a failed restore leaves the namespace as it found it.
class UndoLog {
 public:
  void Add(std::string what, std::function<Result<void>()> undo);
  // Runs every step in reverse; failures are logged and the rest still run.
  void Run();
  void Clear() { steps_.clear(); }

 private:
  std::vector<std::pair<std::string, std::function<Result<void>()>>> steps_;
};

// How a dump treats what it can't carry: refuse (a real dump), or record it as it is
// (a look at a restore target, to check for conflicts).
enum class DumpMode { kStrict, kSnapshot };

struct RestoreCtx {
  Netlink& nl;
  const img::NetNs& image;
  img::NetNs target;                      // the target namespace before anything was applied
  std::map<int, int> ifmap;               // image ifindex -> target ifindex
  std::map<int, const img::Link*> links;  // image ifindex -> link
  UndoLog undo;

  // The target ifindex of an image ifindex, or an error naming `what`.
  Result<int> Map(int image_ifindex, const std::string& what) const;
  // "dummy0" for an image ifindex, for messages.
  std::string Name(int image_ifindex) const;
};

// link.cc
Result<void> DumpLinks(Netlink& nl, DumpMode mode, img::NetNs* out);
Result<void> CheckLinks(RestoreCtx& ctx);
// Creates the virtual links and matches the others, then sets everything but UP.
Result<void> ApplyLinks(RestoreCtx& ctx);
Result<void> SetLinksUp(RestoreCtx& ctx);

// addr.cc
Result<void> DumpAddresses(Netlink& nl, DumpMode mode, img::NetNs* out);
Result<void> CheckAddresses(RestoreCtx& ctx);
Result<void> ApplyAddresses(RestoreCtx& ctx);
Result<void> RemoveAddress(Netlink& nl, const img::Address& a, int ifindex);

// route.cc: routes, rules and neighbours
Result<void> DumpRoutes(Netlink& nl, DumpMode mode, img::NetNs* out);
Result<void> DumpRules(Netlink& nl, DumpMode mode, img::NetNs* out);
Result<void> DumpNeighbours(Netlink& nl, DumpMode mode, img::NetNs* out);
Result<void> CheckRoutes(RestoreCtx& ctx);
Result<void> ApplyRoutes(RestoreCtx& ctx);
Result<void> ApplyRules(RestoreCtx& ctx);
Result<void> ApplyNeighbours(RestoreCtx& ctx);

// sysctl.cc: net.ipv4 and net.ipv6
Result<void> DumpSysctls(img::NetNs* out);
Result<void> CheckSysctls(RestoreCtx& ctx);
// Global, conf/all and conf/default values (before links are made), or the
// per-device ones (after).
Result<void> ApplySysctls(RestoreCtx& ctx, bool per_device);

// nft.cc
Result<std::string> DumpNftRuleset();
// Runs an nft command (nft syntax or JSON) in the calling thread's namespace; returns
// what it printed (JSON).
Result<std::string> NftCommand(const std::string& cmd, const std::string& what);
Result<void> CheckNft(RestoreCtx& ctx);
Result<void> ApplyNft(RestoreCtx& ctx);

}  // namespace kleap::net
