// IPv4 and IPv6 addresses, with their flags, scope, label and remaining lifetimes.
// Addresses the kernel makes by itself are left to it: loopback's, the IPv6
// link-local ones (made again when the link comes up, from the same hardware address
// and addr_gen_mode), and those autoconfigured from router advertisements.
#include <arpa/inet.h>
#include <linux/if_addr.h>
#include <linux/rtnetlink.h>
#include <time.h>

#include <cstring>

#include "engine/base/log.h"
#include "engine/net/netconf_impl.h"

namespace kleap::net {
namespace {

constexpr uint32_t kSettableFlags = IFA_F_NODAD | IFA_F_OPTIMISTIC | IFA_F_HOMEADDRESS |
                                    IFA_F_MANAGETEMPADDR | IFA_F_NOPREFIXROUTE | IFA_F_MCAUTOJOIN;
constexpr uint32_t kForever = 0xffffffffu;

std::string Describe(const img::Address& a, const std::string& dev) {
  return "address " + a.local() + "/" + std::to_string(a.prefixlen()) + " on " + dev;
}

// Why the kernel, not restore, brings this address back; empty when restore does.
std::string KernelMade(const img::Address& a, const img::NetNs& ns) {
  if (a.proto() == IFAPROT_KERNEL_LO) return "loopback address, made when lo comes up";
  if (a.proto() == IFAPROT_KERNEL_LL) return "IPv6 link-local, made again when the link comes up";
  // IFA_F_TEMPORARY is IFA_F_SECONDARY's bit: it means a privacy address only in IPv6.
  if (a.proto() == IFAPROT_KERNEL_RA || (a.family() == AF_INET6 && (a.flags() & IFA_F_TEMPORARY)))
    return "autoconfigured from router advertisements, made again by the next one";
  if (a.proto() != IFAPROT_UNSPEC) return "";
  // Kernels before IFA_PROTO: recognise them by their shape.
  if (a.local() == "127.0.0.1" || a.local() == "::1")
    return "loopback address, made when lo comes up";
  if (a.family() == AF_INET6 && a.prefixlen() == 64 && a.local().rfind("fe80::", 0) == 0) {
    for (auto& l : ns.links()) {
      if (l.ifindex() != a.ifindex() || l.address().size() != 17) continue;
      auto mac = MacFromString(l.address(), "");
      if (!mac) continue;
      const auto& m = *mac;
      char eui[64];
      std::snprintf(eui, sizeof eui, "fe80::%x:%x:%x:%x", ((m[0] ^ 2) << 8) | m[1],
                    (m[2] << 8) | 0xff, 0xfe00 | m[3], (m[4] << 8) | m[5]);
      uint8_t x[16], y[16];
      if (inet_pton(AF_INET6, eui, x) == 1 && inet_pton(AF_INET6, a.local().c_str(), y) == 1 &&
          std::memcmp(x, y, 16) == 0)
        return "IPv6 link-local from the hardware address, made again when the link comes up";
    }
  }
  return "";
}

std::string LinkName(const img::NetNs& ns, int ifindex) {
  for (auto& l : ns.links())
    if (l.ifindex() == ifindex) return l.name();
  return "ifindex " + std::to_string(ifindex);
}

Result<void> PutAddress(NlRequest& req, const img::Address& a, int ifindex,
                        const std::string& what) {
  ifaddrmsg ifa{};
  ifa.ifa_family = uint8_t(a.family());
  ifa.ifa_prefixlen = uint8_t(a.prefixlen());
  ifa.ifa_scope = uint8_t(a.scope());
  ifa.ifa_index = uint32_t(ifindex);
  ifa.ifa_flags = uint8_t(a.flags() & 0xff);
  req.Header(ifa);
  auto local = KLEAP_TRY(AddrFromString(a.family(), a.local(), what));
  req.Put(IFA_LOCAL, local.data(), local.size());
  if (!a.peer().empty()) {
    auto peer = KLEAP_TRY(AddrFromString(a.family(), a.peer(), what + " peer"));
    req.Put(IFA_ADDRESS, peer.data(), peer.size());
  } else {
    req.Put(IFA_ADDRESS, local.data(), local.size());
  }
  return Ok();
}

}  // namespace

Result<void> DumpAddresses(Netlink& nl, DumpMode mode, img::NetNs* out) {
  ifaddrmsg req{};
  auto msgs = KLEAP_TRY(nl.Dump(RTM_GETADDR, &req, sizeof req));
  for (auto& m : msgs) {
    if (m.hdr()->nlmsg_type != RTM_NEWADDR) continue;
    auto* ifa = m.body<ifaddrmsg>();
    if (ifa->ifa_family != AF_INET && ifa->ifa_family != AF_INET6) continue;
    auto tb = KLEAP_TRY(m.Attrs(sizeof(ifaddrmsg), IFA_MAX));
    img::Address a;
    int fam = ifa->ifa_family;
    a.set_family(fam);
    a.set_ifindex(int32_t(ifa->ifa_index));
    a.set_prefixlen(ifa->ifa_prefixlen);
    a.set_scope(ifa->ifa_scope);
    nlattr* local = tb[IFA_LOCAL] ? tb[IFA_LOCAL] : tb[IFA_ADDRESS];
    if (!local) continue;
    a.set_local(NlAddr(fam, local));
    if (tb[IFA_LOCAL] && tb[IFA_ADDRESS] && NlAddr(fam, tb[IFA_ADDRESS]) != a.local())
      a.set_peer(NlAddr(fam, tb[IFA_ADDRESS]));
    if (tb[IFA_BROADCAST]) a.set_broadcast(NlAddr(fam, tb[IFA_BROADCAST]));
    if (tb[IFA_LABEL]) a.set_label(NlString(tb[IFA_LABEL]));
    uint32_t flags =
        tb[IFA_FLAGS] && nla_len(tb[IFA_FLAGS]) >= 4 ? nla_get_u32(tb[IFA_FLAGS]) : ifa->ifa_flags;
    a.set_flags(flags & (kSettableFlags | IFA_F_TEMPORARY));
    if (tb[IFA_PROTO] && nla_len(tb[IFA_PROTO]) >= 1) a.set_proto(nla_get_u8(tb[IFA_PROTO]));
    a.set_valid_lft(kForever);
    a.set_preferred_lft(kForever);
    if (tb[IFA_CACHEINFO] && size_t(nla_len(tb[IFA_CACHEINFO])) >= sizeof(ifa_cacheinfo)) {
      ifa_cacheinfo ci;
      std::memcpy(&ci, nla_data(tb[IFA_CACHEINFO]), sizeof ci);
      a.set_valid_lft(ci.ifa_valid);
      a.set_preferred_lft(ci.ifa_prefered);
    }
    if (mode == DumpMode::kStrict) {
      std::string why = KernelMade(a, *out);
      if (!why.empty()) {
        out->add_skipped(Describe(a, LinkName(*out, a.ifindex())) + ": " + why);
        continue;
      }
      a.set_flags(a.flags() & kSettableFlags);
    }
    *out->add_addresses() = std::move(a);
  }
  return Ok();
}

Result<void> RemoveAddress(Netlink& nl, const img::Address& a, int ifindex) {
  std::string what = "address " + a.local() + "/" + std::to_string(a.prefixlen());
  NlRequest del(RTM_DELADDR, 0);
  KLEAP_TRY(PutAddress(del, a, ifindex, what));
  return nl.Send(del, "remove " + what);
}

Result<void> CheckAddresses(RestoreCtx& ctx) {
  for (auto& a : ctx.image.addresses()) {
    std::string dev = ctx.Name(a.ifindex());
    std::string what = Describe(a, dev);
    if (a.family() != AF_INET && a.family() != AF_INET6)
      return Err(EINVAL) << what << ": bad family " << a.family();
    if (a.prefixlen() > (a.family() == AF_INET ? 32u : 128u) || a.scope() > 255)
      return Err(EINVAL) << what << ": bad prefix length or scope";
    if (a.label().size() >= 16) return Err(EINVAL) << what << ": label too long";
    if (a.preferred_lft() > a.valid_lft()) return Err(EINVAL) << what << ": preferred beyond valid";
    KLEAP_TRY(AddrFromString(a.family(), a.local(), what));
    if (!ctx.links.count(a.ifindex())) return Err(EINVAL) << what << ": no such link in the image";
    for (auto& t : ctx.target.addresses()) {
      if (t.family() != a.family() || t.local() != a.local()) continue;
      auto mapped = ctx.ifmap.find(a.ifindex());
      if (mapped != ctx.ifmap.end() && mapped->second == t.ifindex() &&
          t.prefixlen() == a.prefixlen())
        continue;  // already there, on the matched device
      return Err(EADDRINUSE) << what << ": the address is taken in the target namespace (on "
                             << LinkName(ctx.target, t.ifindex()) << ")";
    }
  }
  return Ok();
}

Result<void> ApplyAddresses(RestoreCtx& ctx) {
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  uint64_t now_ns = uint64_t(now.tv_sec) * 1000000000ull + uint64_t(now.tv_nsec);
  uint64_t elapsed = now_ns > ctx.image.dumped_unix_ns()
                         ? (now_ns - ctx.image.dumped_unix_ns()) / 1000000000ull
                         : 0;
  for (auto& a : ctx.image.addresses()) {
    int ifindex = KLEAP_TRY(ctx.Map(a.ifindex(), "address " + a.local()));
    std::string what = Describe(a, ctx.Name(a.ifindex()));
    bool present = false;
    for (auto& t : ctx.target.addresses())
      present |= t.family() == a.family() && t.local() == a.local() && t.ifindex() == ifindex;
    if (present) continue;
    uint32_t valid = a.valid_lft(), preferred = a.preferred_lft();
    if (valid != kForever) {
      if (valid <= elapsed) {
        KLOG(kInfo) << what << ": its lifetime ran out while it was dumped, not restored";
        continue;
      }
      valid -= uint32_t(elapsed);
    }
    if (preferred != kForever) preferred = preferred > elapsed ? preferred - uint32_t(elapsed) : 0;
    NlRequest req(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
    KLEAP_TRY(PutAddress(req, a, ifindex, what));
    if (!a.broadcast().empty()) {
      auto b = KLEAP_TRY(AddrFromString(a.family(), a.broadcast(), what + " broadcast"));
      req.Put(IFA_BROADCAST, b.data(), b.size());
    }
    if (!a.label().empty()) req.PutString(IFA_LABEL, a.label());
    req.PutU32(IFA_FLAGS, a.flags() & kSettableFlags);
    if (valid != kForever || preferred != kForever) {
      ifa_cacheinfo ci{};
      ci.ifa_valid = valid;
      ci.ifa_prefered = preferred;
      req.Put(IFA_CACHEINFO, &ci, sizeof ci);
    }
    if (a.proto()) req.PutU8(IFA_PROTO, uint8_t(a.proto()));
    KLEAP_TRY(ctx.nl.Send(req, "add " + what));
    ctx.undo.Add("add " + what, [&ctx, a, ifindex]() { return RemoveAddress(ctx.nl, a, ifindex); });
  }
  return Ok();
}

}  // namespace kleap::net
