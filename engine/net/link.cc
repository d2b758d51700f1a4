// Links: the devices of a namespace. Virtual devices (veth, bridge, vlan, dummy,
// persistent tun/tap) are made again; loopback, physical devices and the tunnel
// drivers' fallback devices are matched by name (and burnt-in address) and their
// configuration is re-applied.
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_arp.h>
#include <linux/if_bridge.h>
#include <linux/if_link.h>
#include <linux/if_tun.h>
#include <linux/if_vlan.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "engine/base/log.h"
#include "engine/base/lookup.h"
#include "engine/base/unique_fd.h"
#include "engine/net/netconf_impl.h"

namespace kleap::net {
namespace {

// The flags a user sets; the rest (RUNNING, LOWER_UP, ...) are state.
constexpr uint32_t kUserFlags =
    IFF_UP | IFF_NOARP | IFF_PROMISC | IFF_ALLMULTI | IFF_MULTICAST | IFF_DEBUG | IFF_DYNAMIC;

struct AttrSpec {
  int type;
  size_t size;
  // When the value is this default, the option is left out: a kernel built without
  // the feature (bridge vlan filtering) refuses even its default value.
  const char* dflt = nullptr;
};

// Bridge options that can be set when a bridge is made, with their sizes
// (the kernel's br_policy). Timers, ids and counters are state and are not listed.
constexpr AttrSpec kBridgeOptions[] = {
    {IFLA_BR_FORWARD_DELAY, 4},
    {IFLA_BR_HELLO_TIME, 4},
    {IFLA_BR_MAX_AGE, 4},
    {IFLA_BR_AGEING_TIME, 4},
    {IFLA_BR_STP_STATE, 4},
    {IFLA_BR_PRIORITY, 2},
    {IFLA_BR_VLAN_FILTERING, 1, "\x00"},
    {IFLA_BR_VLAN_PROTOCOL, 2, "\x81\x00"},
    {IFLA_BR_GROUP_FWD_MASK, 2},
    {IFLA_BR_GROUP_ADDR, 6},
    {IFLA_BR_MCAST_ROUTER, 1},
    {IFLA_BR_MCAST_SNOOPING, 1},
    {IFLA_BR_MCAST_QUERY_USE_IFADDR, 1},
    {IFLA_BR_MCAST_QUERIER, 1},
    {IFLA_BR_MCAST_HASH_MAX, 4},
    {IFLA_BR_MCAST_LAST_MEMBER_CNT, 4},
    {IFLA_BR_MCAST_STARTUP_QUERY_CNT, 4},
    {IFLA_BR_MCAST_LAST_MEMBER_INTVL, 8},
    {IFLA_BR_MCAST_MEMBERSHIP_INTVL, 8},
    {IFLA_BR_MCAST_QUERIER_INTVL, 8},
    {IFLA_BR_MCAST_QUERY_INTVL, 8},
    {IFLA_BR_MCAST_QUERY_RESPONSE_INTVL, 8},
    {IFLA_BR_MCAST_STARTUP_QUERY_INTVL, 8},
    {IFLA_BR_NF_CALL_IPTABLES, 1},
    {IFLA_BR_NF_CALL_IP6TABLES, 1},
    {IFLA_BR_NF_CALL_ARPTABLES, 1},
    {IFLA_BR_VLAN_DEFAULT_PVID, 2, "\x01\x00"},
    {IFLA_BR_VLAN_STATS_ENABLED, 1, "\x00"},
    {IFLA_BR_MCAST_STATS_ENABLED, 1},
    {IFLA_BR_MCAST_IGMP_VERSION, 1},
    {IFLA_BR_MCAST_MLD_VERSION, 1},
    {IFLA_BR_VLAN_STATS_PER_PORT, 1, "\x00"},
    {IFLA_BR_MULTI_BOOLOPT, 8},
};

// Bridge port options (br_port_policy). The port state is STP's, not the user's.
constexpr AttrSpec kBridgePortOptions[] = {
    {IFLA_BRPORT_PRIORITY, 2},
    {IFLA_BRPORT_COST, 4},
    {IFLA_BRPORT_MODE, 1},
    {IFLA_BRPORT_GUARD, 1},
    {IFLA_BRPORT_PROTECT, 1},
    {IFLA_BRPORT_FAST_LEAVE, 1},
    {IFLA_BRPORT_LEARNING, 1},
    {IFLA_BRPORT_UNICAST_FLOOD, 1},
    {IFLA_BRPORT_PROXYARP, 1},
    {IFLA_BRPORT_PROXYARP_WIFI, 1},
    {IFLA_BRPORT_MULTICAST_ROUTER, 1},
    {IFLA_BRPORT_MCAST_TO_UCAST, 1},
    {IFLA_BRPORT_MCAST_FLOOD, 1},
    {IFLA_BRPORT_BCAST_FLOOD, 1},
    {IFLA_BRPORT_VLAN_TUNNEL, 1},
    {IFLA_BRPORT_GROUP_FWD_MASK, 2},
    {IFLA_BRPORT_NEIGH_SUPPRESS, 1},
    {IFLA_BRPORT_ISOLATED, 1},
    {IFLA_BRPORT_LOCKED, 1},
};

// The devices a tunnel driver makes in every namespace: matched, never made.
constexpr std::pair<const char*, const char*> kFallbackTunnels[] = {
    {"ipip", "tunl0"},     {"gre", "gre0"},    {"gretap", "gretap0"},
    {"erspan", "erspan0"}, {"sit", "sit0"},    {"ip6tnl", "ip6tnl0"},
    {"ip6gre", "ip6gre0"}, {"vti", "ip_vti0"}, {"vti6", "ip6_vti0"},
};

bool IsFallbackTunnel(const img::Link& l) {
  for (auto& [kind, name] : kFallbackTunnels)
    if (l.kind() == kind && l.name() == name) return true;
  return false;
}

// A device that is there already: matched by name, not made.
bool IsAdopted(const img::Link& l) {
  return l.kind().empty() || l.kind() == "loopback" || IsFallbackTunnel(l);
}

bool IsCreatable(const std::string& kind) {
  return kind == "veth" || kind == "bridge" || kind == "vlan" || kind == "dummy" || kind == "tun";
}

std::string KindName(const img::Link& l) {
  return l.kind().empty() ? std::string("physical") : l.kind();
}

void KeepOptions(nlattr* data, const AttrSpec* specs, size_t n,
                 google::protobuf::RepeatedPtrField<img::NlAttr>* out) {
  nlattr* a;
  int rem;
  nla_for_each_nested(a, data, rem) {
    for (size_t i = 0; i < n; ++i) {
      if (nla_type(a) != specs[i].type || size_t(nla_len(a)) != specs[i].size) continue;
      if (specs[i].dflt && std::memcmp(specs[i].dflt, nla_data(a), specs[i].size) == 0) continue;
      auto* o = out->Add();
      o->set_type(uint32_t(specs[i].type));
      o->set_value(nla_data(a), specs[i].size);
      if (specs[i].type == IFLA_BR_MULTI_BOOLOPT && specs == kBridgeOptions) {
        // Every bool option is off by default: name only those that are on, so that
        // restore never touches one this kernel can't change (mst without vlans).
        br_boolopt_multi bm;
        std::memcpy(&bm, nla_data(a), sizeof bm);
        bm.optmask = bm.optval;
        o->set_value(&bm, sizeof bm);
      }
    }
  }
}

Result<void> CheckOptions(const img::Link& l,
                          const google::protobuf::RepeatedPtrField<img::NlAttr>& opts,
                          const AttrSpec* specs, size_t n, const char* what) {
  for (auto& o : opts) {
    bool ok = false;
    for (size_t i = 0; i < n; ++i)
      ok |= o.type() == uint32_t(specs[i].type) && o.value().size() == specs[i].size;
    if (!ok)
      return Err(EINVAL) << "link " << l.name() << ": " << what << " attribute " << o.type()
                         << " of " << o.value().size() << " bytes is not one kleap sets";
  }
  return Ok();
}

void PutOptions(NlRequest& req, const google::protobuf::RepeatedPtrField<img::NlAttr>& opts) {
  for (auto& o : opts) req.Put(int(o.type()), o.value().data(), o.value().size());
}

Result<void> ParseLinkInfo(nlattr* info, DumpMode mode, img::Link* l) {
  auto li = KLEAP_TRY(ParseNested(info, IFLA_INFO_MAX));
  if (li[IFLA_INFO_KIND]) l->set_kind(NlString(li[IFLA_INFO_KIND]));
  nlattr* data = li[IFLA_INFO_DATA];
  if (l->kind() == "bridge" && data) {
    KeepOptions(data, kBridgeOptions, std::size(kBridgeOptions), l->mutable_bridge());
  } else if (l->kind() == "vlan" && data) {
    auto v = KLEAP_TRY(ParseNested(data, IFLA_VLAN_MAX));
    auto* vi = l->mutable_vlan();
    if (v[IFLA_VLAN_ID]) vi->set_id(nla_get_u16(v[IFLA_VLAN_ID]));
    if (v[IFLA_VLAN_PROTOCOL]) vi->set_protocol(ntohs(nla_get_u16(v[IFLA_VLAN_PROTOCOL])));
    if (v[IFLA_VLAN_FLAGS] && size_t(nla_len(v[IFLA_VLAN_FLAGS])) >= sizeof(ifla_vlan_flags)) {
      ifla_vlan_flags f;
      std::memcpy(&f, nla_data(v[IFLA_VLAN_FLAGS]), sizeof f);
      vi->set_flags(f.flags);
    }
    for (int dir : {IFLA_VLAN_INGRESS_QOS, IFLA_VLAN_EGRESS_QOS}) {
      if (!v[dir]) continue;
      nlattr* m;
      int rem;
      nla_for_each_nested(m, v[dir], rem) {
        if (nla_type(m) != IFLA_VLAN_QOS_MAPPING ||
            size_t(nla_len(m)) < sizeof(ifla_vlan_qos_mapping))
          continue;
        ifla_vlan_qos_mapping q;
        std::memcpy(&q, nla_data(m), sizeof q);
        auto* o = dir == IFLA_VLAN_INGRESS_QOS ? vi->add_ingress_qos() : vi->add_egress_qos();
        o->set_from(q.from);
        o->set_to(q.to);
      }
    }
  } else if (l->kind() == "tun") {
    if (!data) return Err(EPROTO) << "link " << l->name() << ": tun without IFLA_INFO_DATA";
    auto t = KLEAP_TRY(ParseNested(data, IFLA_TUN_MAX));
    auto* ti = l->mutable_tun();
    ti->set_tap(t[IFLA_TUN_TYPE] && NlU8(t[IFLA_TUN_TYPE]) == IFF_TAP);
    if (t[IFLA_TUN_OWNER]) {
      ti->set_has_owner(true);
      ti->set_owner(NlU32(t[IFLA_TUN_OWNER]));
    }
    if (t[IFLA_TUN_GROUP]) {
      ti->set_has_group(true);
      ti->set_group(NlU32(t[IFLA_TUN_GROUP]));
    }
    ti->set_pi(t[IFLA_TUN_PI] && NlU8(t[IFLA_TUN_PI]));
    ti->set_vnet_hdr(t[IFLA_TUN_VNET_HDR] && NlU8(t[IFLA_TUN_VNET_HDR]));
    ti->set_multi_queue(t[IFLA_TUN_MULTI_QUEUE] && NlU8(t[IFLA_TUN_MULTI_QUEUE]));
    ti->set_persist(t[IFLA_TUN_PERSIST] && NlU8(t[IFLA_TUN_PERSIST]));
    if (!ti->persist() && mode == DumpMode::kStrict)
      return Err(EOPNOTSUPP) << "link " << l->name()
                             << ": a tun/tap device that is not persistent lives only as long "
                                "as the process holding it open, and that file is not carried";
  }
  if (li[IFLA_INFO_SLAVE_KIND] && NlString(li[IFLA_INFO_SLAVE_KIND]) == "bridge" &&
      li[IFLA_INFO_SLAVE_DATA])
    KeepOptions(li[IFLA_INFO_SLAVE_DATA], kBridgePortOptions, std::size(kBridgePortOptions),
                l->mutable_bridge_port());
  return Ok();
}

Result<img::Link> ParseLink(NlMsg& m, DumpMode mode) {
  auto* ifi = m.body<ifinfomsg>();
  auto tb = KLEAP_TRY(m.Attrs(sizeof(ifinfomsg), IFLA_MAX));
  img::Link l;
  l.set_ifindex(ifi->ifi_index);
  if (!tb[IFLA_IFNAME]) return Err(EPROTO) << "link " << ifi->ifi_index << " has no name";
  l.set_name(NlString(tb[IFLA_IFNAME]));
  l.set_flags(ifi->ifi_flags & kUserFlags);
  if (tb[IFLA_MTU]) l.set_mtu(NlU32(tb[IFLA_MTU]));
  if (tb[IFLA_ADDRESS])
    l.set_address(MacToString(nla_data(tb[IFLA_ADDRESS]), size_t(nla_len(tb[IFLA_ADDRESS]))));
  if (tb[IFLA_PERM_ADDRESS])
    l.set_perm_address(
        MacToString(nla_data(tb[IFLA_PERM_ADDRESS]), size_t(nla_len(tb[IFLA_PERM_ADDRESS]))));
  if (tb[IFLA_TXQLEN]) l.set_txqlen(NlU32(tb[IFLA_TXQLEN]));
  if (tb[IFLA_GROUP]) l.set_group(NlU32(tb[IFLA_GROUP]));
  if (tb[IFLA_IFALIAS]) l.set_alias(NlString(tb[IFLA_IFALIAS]));
  if (tb[IFLA_MASTER]) l.set_master(int32_t(NlU32(tb[IFLA_MASTER])));
  if (tb[IFLA_LINKINFO]) KLEAP_TRY(ParseLinkInfo(tb[IFLA_LINKINFO], mode, &l));
  if (ifi->ifi_type == ARPHRD_LOOPBACK) l.set_kind("loopback");
  bool other_netns = tb[IFLA_LINK_NETNSID] != nullptr;
  int32_t link = tb[IFLA_LINK] ? int32_t(NlU32(tb[IFLA_LINK])) : 0;
  if (l.kind() == "veth") {
    if (other_netns && mode == DumpMode::kStrict)
      return Err(EOPNOTSUPP) << "link " << l.name()
                             << ": the other end of this veth pair is in another network "
                                "namespace; a pair is carried only when both ends are here";
    l.mutable_veth()->set_peer_ifindex(other_netns ? 0 : link);
  } else if (l.kind() == "vlan") {
    if (other_netns && mode == DumpMode::kStrict)
      return Err(EOPNOTSUPP) << "link " << l.name()
                             << ": its lower device is in another network namespace";
    l.set_lower(other_netns ? 0 : link);
  }
  if (mode == DumpMode::kStrict && !IsAdopted(l) && !IsCreatable(l.kind()))
    return Err(EOPNOTSUPP) << "link " << l.name() << ": devices of kind " << l.kind()
                           << " are not carried";
  return l;
}

// Whether restore writes the hardware address back, or leaves it to the kernel:
// a bridge takes a port's address and a vlan its lower device's, unless one was set.
void DecideAddresses(img::NetNs* ns) {
  std::map<int, img::Link*> by_index;
  for (auto& l : *ns->mutable_links()) by_index[l.ifindex()] = &l;
  for (auto& l : *ns->mutable_links()) {
    if (l.address().empty() || l.kind() == "loopback" || l.kind() == "tun") {
      l.set_set_address(l.kind() == "tun" && l.tun().tap() && !l.address().empty());
      continue;
    }
    bool derived = false;
    if (l.kind() == "bridge") {
      for (auto& p : ns->links())
        derived |= p.master() == l.ifindex() && p.address() == l.address();
    } else if (l.kind() == "vlan") {
      auto it = by_index.find(l.lower());
      derived = it != by_index.end() && it->second->address() == l.address();
    }
    l.set_set_address(!derived);
  }
}

std::string Kind(const img::Link& l) {
  return l.kind() == "tun" ? (l.tun().tap() ? "tap" : "tun") : KindName(l);
}

Result<void> DeleteLinkByName(Netlink& nl, const std::string& name) {
  NlRequest req(RTM_DELLINK, 0);
  ifinfomsg ifi{};
  req.Header(ifi);
  req.PutString(IFLA_IFNAME, name);
  return nl.Send(req, "delete link " + name);
}

Result<void> CreateTun(const img::Link& l, int ifindex) {
  UniqueFd fd(open("/dev/net/tun", O_RDWR | O_CLOEXEC));
  if (!fd) return ErrnoError() << "link " << l.name() << ": open /dev/net/tun";
  if (ifindex > 0) {
    unsigned idx = unsigned(ifindex);
    if (ioctl(fd.get(), TUNSETIFINDEX, &idx) < 0)
      return ErrnoError() << "link " << l.name() << ": TUNSETIFINDEX";
  }
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, l.name().c_str(), IFNAMSIZ - 1);
  ifr.ifr_flags = short((l.tun().tap() ? IFF_TAP : IFF_TUN) | (l.tun().pi() ? 0 : IFF_NO_PI) |
                        (l.tun().vnet_hdr() ? IFF_VNET_HDR : 0) |
                        (l.tun().multi_queue() ? IFF_MULTI_QUEUE : 0));
  if (ioctl(fd.get(), TUNSETIFF, &ifr) < 0)
    return ErrnoError() << "link " << l.name() << ": TUNSETIFF";
  if (l.tun().has_owner() && ioctl(fd.get(), TUNSETOWNER, (unsigned long)l.tun().owner()) < 0)
    return ErrnoError() << "link " << l.name() << ": TUNSETOWNER";
  if (l.tun().has_group() && ioctl(fd.get(), TUNSETGROUP, (unsigned long)l.tun().group()) < 0)
    return ErrnoError() << "link " << l.name() << ": TUNSETGROUP";
  if (ioctl(fd.get(), TUNSETPERSIST, 1UL) < 0)
    return ErrnoError() << "link " << l.name() << ": TUNSETPERSIST";
  return Ok();
}

// The attributes a new device of any kind starts with.
Result<void> PutBasics(NlRequest& req, const img::Link& l) {
  req.PutString(IFLA_IFNAME, l.name());
  if (l.mtu()) req.PutU32(IFLA_MTU, l.mtu());
  if (l.set_address()) {
    auto mac = KLEAP_TRY(MacFromString(l.address(), "link " + l.name() + " address"));
    req.Put(IFLA_ADDRESS, mac.data(), mac.size());
  }
  req.PutU32(IFLA_TXQLEN, l.txqlen());
  return Ok();
}

Result<void> CreateLink(RestoreCtx& ctx, const img::Link& l, bool keep_ifindex) {
  if (l.kind() == "tun") return CreateTun(l, keep_ifindex ? l.ifindex() : 0);
  NlRequest req(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
  ifinfomsg ifi{};
  ifi.ifi_index = keep_ifindex ? l.ifindex() : 0;
  req.Header(ifi);
  KLEAP_TRY(PutBasics(req, l));
  if (l.kind() == "vlan")
    req.PutU32(IFLA_LINK,
               uint32_t(KLEAP_TRY(ctx.Map(l.lower(), "link " + l.name() + " lower device"))));
  nlattr* info = req.Begin(IFLA_LINKINFO);
  req.PutString(IFLA_INFO_KIND, l.kind());
  if (l.kind() == "bridge") {
    nlattr* data = req.Begin(IFLA_INFO_DATA);
    PutOptions(req, l.bridge());
    req.End(data);
  } else if (l.kind() == "vlan") {
    nlattr* data = req.Begin(IFLA_INFO_DATA);
    req.PutU16(IFLA_VLAN_ID, uint16_t(l.vlan().id()));
    if (l.vlan().protocol()) req.PutU16(IFLA_VLAN_PROTOCOL, htons(uint16_t(l.vlan().protocol())));
    ifla_vlan_flags f{l.vlan().flags(), VLAN_FLAG_REORDER_HDR | VLAN_FLAG_GVRP |
                                            VLAN_FLAG_LOOSE_BINDING | VLAN_FLAG_MVRP |
                                            VLAN_FLAG_BRIDGE_BINDING};
    req.Put(IFLA_VLAN_FLAGS, &f, sizeof f);
    for (int dir : {IFLA_VLAN_INGRESS_QOS, IFLA_VLAN_EGRESS_QOS}) {
      auto& maps = dir == IFLA_VLAN_INGRESS_QOS ? l.vlan().ingress_qos() : l.vlan().egress_qos();
      if (maps.empty()) continue;
      nlattr* n = req.Begin(dir);
      for (auto& q : maps) {
        ifla_vlan_qos_mapping m{q.from(), q.to()};
        req.Put(IFLA_VLAN_QOS_MAPPING, &m, sizeof m);
      }
      req.End(n);
    }
    req.End(data);
  } else if (l.kind() == "veth") {
    const img::Link& peer = *Lookup(ctx.links, l.veth().peer_ifindex());
    nlattr* data = req.Begin(IFLA_INFO_DATA);
    nlattr* p = req.Begin(VETH_INFO_PEER);
    ifinfomsg pi{};
    pi.ifi_index = keep_ifindex ? peer.ifindex() : 0;
    req.Append(&pi, sizeof pi);
    KLEAP_TRY(PutBasics(req, peer));
    req.End(p);
    req.End(data);
  }
  req.End(info);
  return ctx.nl.Send(req, "create " + Kind(l) + " link " + l.name());
}

Result<void> ValidateLink(const RestoreCtx& ctx, const img::Link& l) {
  std::string what = "link " + l.name();
  if (l.name().empty() || l.name().size() >= IFNAMSIZ || l.name().find('/') != std::string::npos)
    return Err(EINVAL) << "bad link name '" << l.name() << "'";
  if (l.ifindex() <= 0) return Err(EINVAL) << what << ": bad ifindex " << l.ifindex();
  if (!IsAdopted(l) && !IsCreatable(l.kind()))
    return Err(EOPNOTSUPP) << what << ": devices of kind " << l.kind() << " are not carried";
  if (!l.address().empty()) KLEAP_TRY(MacFromString(l.address(), what + " address"));
  if (l.master()) {
    auto it = ctx.links.find(l.master());
    if (it == ctx.links.end() || it->second->kind() != "bridge")
      return Err(EINVAL) << what << ": its master " << l.master()
                         << " is not a bridge in the image";
  }
  if (l.kind() == "veth") {
    auto it = ctx.links.find(l.veth().peer_ifindex());
    if (it == ctx.links.end() || it->second->kind() != "veth" ||
        it->second->veth().peer_ifindex() != l.ifindex() || it->second == &l)
      return Err(EINVAL) << what << ": its veth peer " << l.veth().peer_ifindex()
                         << " is not in the image";
  }
  if (l.kind() == "vlan") {
    if (!ctx.links.count(l.lower()) || l.lower() == l.ifindex())
      return Err(EINVAL) << what << ": its lower device " << l.lower() << " is not in the image";
    if (l.vlan().id() >= 4095) return Err(EINVAL) << what << ": bad vlan id " << l.vlan().id();
  }
  KLEAP_TRY(CheckOptions(l, l.bridge(), kBridgeOptions, std::size(kBridgeOptions), "bridge"));
  KLEAP_TRY(CheckOptions(l, l.bridge_port(), kBridgePortOptions, std::size(kBridgePortOptions),
                         "bridge port"));
  return Ok();
}

const img::Link* FindByName(const img::NetNs& ns, const std::string& name) {
  for (auto& l : ns.links())
    if (l.name() == name) return &l;
  return nullptr;
}

// Keep every ifindex when none of them is taken in the target: a program that
// remembered one (SO_BINDTOIFINDEX, an IPv6 scope id) then finds the same device.
bool KeepIfindexes(const RestoreCtx& ctx) {
  std::set<int> taken;
  for (auto& t : ctx.target.links()) taken.insert(t.ifindex());
  for (auto& l : ctx.image.links())
    if (!IsAdopted(l) && taken.count(l.ifindex())) return false;
  return true;
}

// Sets what differs between the target link and the image's, except UP.
Result<void> Reconcile(RestoreCtx& ctx, const img::Link& want, const img::Link& have,
                       bool adopted) {
  NlRequest req(RTM_NEWLINK, 0);
  ifinfomsg ifi{};
  ifi.ifi_index = have.ifindex();
  uint32_t change = (want.flags() ^ have.flags()) & kUserFlags & ~uint32_t(IFF_UP);
  ifi.ifi_flags = want.flags() & change;
  ifi.ifi_change = change;
  req.Header(ifi);
  bool any = change != 0;
  if (want.mtu() && want.mtu() != have.mtu()) {
    req.PutU32(IFLA_MTU, want.mtu());
    any = true;
  }
  if (want.set_address() && want.address() != have.address()) {
    auto mac = KLEAP_TRY(MacFromString(want.address(), "link " + want.name() + " address"));
    req.Put(IFLA_ADDRESS, mac.data(), mac.size());
    any = true;
  }
  if (want.txqlen() != have.txqlen()) {
    req.PutU32(IFLA_TXQLEN, want.txqlen());
    any = true;
  }
  if (want.group() != have.group()) {
    req.PutU32(IFLA_GROUP, want.group());
    any = true;
  }
  if (want.alias() != have.alias()) {
    req.Put(IFLA_IFALIAS, want.alias().data(), want.alias().size());
    any = true;
  }
  if (!any) return Ok();
  KLEAP_TRY(ctx.nl.Send(req, "configure link " + want.name()));
  if (adopted) {
    img::Link old = have;
    ctx.undo.Add("configure link " + want.name(),
                 [&ctx, old, want]() { return Reconcile(ctx, old, want, false); });
  }
  return Ok();
}

Result<img::NetNs> Snapshot(Netlink& nl) {
  img::NetNs now;
  KLEAP_TRY(DumpLinks(nl, DumpMode::kSnapshot, &now));
  return now;
}

Result<void> SetMaster(RestoreCtx& ctx, const std::string& name, int ifindex, int master) {
  NlRequest req(RTM_NEWLINK, 0);
  ifinfomsg ifi{};
  ifi.ifi_index = ifindex;
  req.Header(ifi);
  req.PutU32(IFLA_MASTER, uint32_t(master));
  return ctx.nl.Send(req, "attach link " + name + " to its bridge");
}

}  // namespace

Result<void> DumpLinks(Netlink& nl, DumpMode mode, img::NetNs* out) {
  ifinfomsg req{};
  req.ifi_family = AF_UNSPEC;
  auto msgs = KLEAP_TRY(nl.Dump(RTM_GETLINK, &req, sizeof req));
  for (auto& m : msgs) {
    if (m.hdr()->nlmsg_type != RTM_NEWLINK) continue;
    *out->add_links() = KLEAP_TRY(ParseLink(m, mode));
  }
  DecideAddresses(out);
  return Ok();
}

Result<void> CheckLinks(RestoreCtx& ctx) {
  for (auto& l : ctx.image.links()) {
    if (!ctx.links.emplace(l.ifindex(), &l).second)
      return Err(EINVAL) << "link " << l.name() << ": ifindex " << l.ifindex()
                         << " twice in the image";
    if (FindByName(ctx.image, l.name()) != &l)
      return Err(EINVAL) << "link " << l.name() << ": the name is in the image twice";
  }
  for (auto& l : ctx.image.links()) {
    KLEAP_TRY(ValidateLink(ctx, l));
    const img::Link* have = FindByName(ctx.target, l.name());
    if (IsAdopted(l)) {
      if (!have)
        return Err(ENODEV) << "link " << l.name() << ": this " << KindName(l)
                           << " device is not in the target namespace";
      if (have->kind() != l.kind())
        return Err(EEXIST) << "link " << l.name() << ": is a " << KindName(*have)
                           << " device in the target namespace, the image has a " << KindName(l)
                           << " device";
      if (!l.perm_address().empty() && have->perm_address() != l.perm_address())
        return Err(ENODEV) << "link " << l.name() << ": burnt-in address " << have->perm_address()
                           << " in the target namespace, " << l.perm_address() << " in the image";
      ctx.ifmap[l.ifindex()] = have->ifindex();
    } else if (have) {
      return Err(EEXIST) << "link " << l.name()
                         << ": the name is taken in the target namespace by a " << Kind(*have)
                         << " device (the image has a " << Kind(l) << ")";
    }
  }
  return Ok();
}

Result<void> ApplyLinks(RestoreCtx& ctx) {
  bool keep = KeepIfindexes(ctx);
  std::set<int> made;
  for (bool progress = true; progress;) {
    progress = false;
    for (auto& l : ctx.image.links()) {
      if (IsAdopted(l) || made.count(l.ifindex())) continue;
      if (l.kind() == "vlan" && !ctx.ifmap.count(l.lower())) continue;
      // A veth pair is made once, from its lower ifindex.
      if (l.kind() == "veth" && l.veth().peer_ifindex() < l.ifindex()) continue;
      KLEAP_TRY(CreateLink(ctx, l, keep));
      std::vector<std::string> names{l.name()};
      made.insert(l.ifindex());
      if (l.kind() == "veth") {
        made.insert(l.veth().peer_ifindex());
        names.push_back(Lookup(ctx.links, l.veth().peer_ifindex())->name());
      }
      ctx.undo.Add("create link " + l.name(),
                   [&ctx, name = l.name()]() { return DeleteLinkByName(ctx.nl, name); });
      // Learn the new ifindexes.
      auto now = KLEAP_TRY(Snapshot(ctx.nl));
      for (auto& n : names) {
        const img::Link* t = FindByName(now, n);
        const img::Link* i = FindByName(ctx.image, n);
        if (!t) return Err(ENODEV) << "link " << n << ": gone right after it was made";
        ctx.ifmap[i->ifindex()] = t->ifindex();
      }
      progress = true;
    }
  }
  for (auto& l : ctx.image.links())
    if (!ctx.ifmap.count(l.ifindex()))
      return Err(EINVAL) << "link " << l.name() << ": its lower devices form a loop";

  // Ports join their bridges, then the port options.
  for (auto& l : ctx.image.links()) {
    if (!l.master()) continue;
    int ifindex = Lookup(ctx.ifmap, l.ifindex());
    KLEAP_TRY(SetMaster(ctx, l.name(), ifindex, Lookup(ctx.ifmap, l.master())));
    if (IsAdopted(l))
      ctx.undo.Add("attach " + l.name(),
                   [&ctx, name = l.name(), ifindex]() { return SetMaster(ctx, name, ifindex, 0); });
    if (l.bridge_port().empty()) continue;
    NlRequest req(RTM_NEWLINK, 0);
    ifinfomsg ifi{};
    ifi.ifi_index = ifindex;
    req.Header(ifi);
    nlattr* info = req.Begin(IFLA_LINKINFO);
    nlattr* data = req.Begin(IFLA_INFO_SLAVE_DATA);
    PutOptions(req, l.bridge_port());
    req.End(data);
    req.End(info);
    KLEAP_TRY(ctx.nl.Send(req, "set bridge port options of " + l.name()));
  }

  // What joining a bridge or the kernel's defaults changed is set back last.
  auto now = KLEAP_TRY(Snapshot(ctx.nl));
  for (auto& l : ctx.image.links()) {
    const img::Link* have = FindByName(now, l.name());
    if (!have) return Err(ENODEV) << "link " << l.name() << ": gone during restore";
    KLEAP_TRY(Reconcile(ctx, l, *have, IsAdopted(l)));
  }
  return Ok();
}

Result<void> SetLinksUp(RestoreCtx& ctx) {
  auto now = KLEAP_TRY(Snapshot(ctx.nl));
  for (auto& l : ctx.image.links()) {
    const img::Link* have = FindByName(now, l.name());
    if (!have) return Err(ENODEV) << "link " << l.name() << ": gone during restore";
    uint32_t want = l.flags() & IFF_UP;
    if ((have->flags() & IFF_UP) == want) continue;
    auto set = [&ctx, ifindex = have->ifindex(), name = l.name()](uint32_t up) {
      NlRequest req(RTM_NEWLINK, 0);
      ifinfomsg ifi{};
      ifi.ifi_index = ifindex;
      ifi.ifi_flags = up;
      ifi.ifi_change = IFF_UP;
      req.Header(ifi);
      return ctx.nl.Send(req, std::string(up ? "bring up " : "bring down ") + name);
    };
    KLEAP_TRY(set(want));
    if (!IsAdopted(l)) continue;
    // Bringing lo up made its addresses; taking it down again leaves them there.
    ctx.undo.Add(
        "up/down " + l.name(),
        [&ctx, set, old = have->flags() & IFF_UP, ifindex = have->ifindex()]() -> Result<void> {
          KLEAP_TRY(set(old));
          img::NetNs now;
          KLEAP_TRY(DumpAddresses(ctx.nl, DumpMode::kSnapshot, &now));
          for (auto& a : now.addresses()) {
            if (a.ifindex() != ifindex) continue;
            bool before = false;
            for (auto& t : ctx.target.addresses())
              before |= t.ifindex() == ifindex && t.local() == a.local();
            if (!before) KLEAP_TRY(RemoveAddress(ctx.nl, a, ifindex));
          }
          return Ok();
        });
  }
  return Ok();
}

}  // namespace kleap::net
