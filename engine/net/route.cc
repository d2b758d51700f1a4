// Routes in every table, routing rules and hand-made neighbour entries. What the
// kernel makes by itself is left to it: the local and connected routes that come
// back with the addresses (protocol kernel), the default rules, and neighbour
// entries it makes on demand.
#include <linux/fib_rules.h>
#include <linux/if.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>

#include <algorithm>
#include <cstring>

#include "engine/net/netconf_impl.h"

namespace kleap::net {
namespace {

// RTA_VIA: a gateway of another family.
void ParseVia(const nlattr* a, std::string* gw, int32_t* family) {
  if (size_t(nla_len(a)) < sizeof(rtvia)) return;
  auto* v = static_cast<const rtvia*>(nla_data(a));
  *family = v->rtvia_family;
  *gw = AddrToString(v->rtvia_family, v->rtvia_addr, size_t(nla_len(a)) - sizeof(rtvia));
}

Result<void> PutGateway(NlRequest& req, int route_family, int gw_family, const std::string& gw,
                        const std::string& what) {
  if (gw.empty()) return Ok();
  int fam = gw_family ? gw_family : route_family;
  auto bytes = KLEAP_TRY(AddrFromString(fam, gw, what + " gateway"));
  if (fam == route_family) {
    req.Put(RTA_GATEWAY, bytes.data(), bytes.size());
  } else {
    std::vector<uint8_t> via(sizeof(rtvia) + bytes.size());
    reinterpret_cast<rtvia*>(via.data())->rtvia_family = uint16_t(fam);
    std::memcpy(via.data() + sizeof(rtvia), bytes.data(), bytes.size());
    req.Put(RTA_VIA, via.data(), via.size());
  }
  return Ok();
}

std::string Prefix(const std::string& a, uint32_t len, int family) {
  if (a.empty()) return len ? "?/" + std::to_string(len) : "default";
  return a + (len == (family == AF_INET ? 32u : 128u) ? "" : "/" + std::to_string(len));
}

std::string DescribeRoute(const img::Route& r) {
  std::string s =
      "route " + Prefix(r.dst(), r.dst_len(), r.family()) + " table " + std::to_string(r.table());
  if (r.has_priority()) s += " metric " + std::to_string(r.priority());
  return s;
}

bool SameKey(const img::Route& a, const img::Route& b) {
  return a.family() == b.family() && a.table() == b.table() && a.dst() == b.dst() &&
         a.dst_len() == b.dst_len() && a.tos() == b.tos() && a.src() == b.src() &&
         a.src_len() == b.src_len() && a.priority() == b.priority() && a.type() == b.type();
}

Result<void> ParseRoute(NlMsg& m, DumpMode mode, img::NetNs* out, int* kernel_made) {
  auto* rtm = m.body<rtmsg>();
  if (rtm->rtm_flags & RTM_F_CLONED) return Ok();
  auto tb = KLEAP_TRY(m.Attrs(sizeof(rtmsg), RTA_MAX));
  img::Route r;
  int fam = rtm->rtm_family;
  r.set_family(fam);
  r.set_table(tb[RTA_TABLE] ? NlU32(tb[RTA_TABLE]) : rtm->rtm_table);
  r.set_protocol(rtm->rtm_protocol);
  r.set_scope(rtm->rtm_scope);
  r.set_type(rtm->rtm_type);
  r.set_tos(rtm->rtm_tos);
  r.set_flags(rtm->rtm_flags & RTNH_F_ONLINK);
  r.set_dst_len(rtm->rtm_dst_len);
  r.set_src_len(rtm->rtm_src_len);
  if (tb[RTA_DST]) r.set_dst(NlAddr(fam, tb[RTA_DST]));
  if (tb[RTA_SRC]) r.set_src(NlAddr(fam, tb[RTA_SRC]));
  if (tb[RTA_OIF]) r.set_oif(int32_t(NlU32(tb[RTA_OIF])));
  if (tb[RTA_GATEWAY]) r.set_gateway(NlAddr(fam, tb[RTA_GATEWAY]));
  if (tb[RTA_VIA]) {
    std::string gw;
    int32_t gf = 0;
    ParseVia(tb[RTA_VIA], &gw, &gf);
    r.set_gateway(gw);
    r.set_gateway_family(gf);
  }
  if (tb[RTA_PRIORITY]) {
    r.set_has_priority(true);
    r.set_priority(NlU32(tb[RTA_PRIORITY]));
  }
  if (tb[RTA_PREFSRC]) r.set_prefsrc(NlAddr(fam, tb[RTA_PREFSRC]));
  if (tb[RTA_PREF] && nla_len(tb[RTA_PREF]) >= 1) {
    r.set_has_pref(true);
    r.set_pref(nla_get_u8(tb[RTA_PREF]));
  }
  if (tb[RTA_FLOW]) r.set_realm(NlU32(tb[RTA_FLOW]));
  if (tb[RTA_METRICS]) {
    nlattr* a;
    int rem;
    nla_for_each_nested(a, tb[RTA_METRICS], rem) {
      auto* o = r.add_metrics();
      o->set_type(uint32_t(nla_type(a)));
      o->set_value(nla_data(a), size_t(nla_len(a)));
    }
  }
  if (tb[RTA_MULTIPATH]) {
    auto* nh = static_cast<rtnexthop*>(nla_data(tb[RTA_MULTIPATH]));
    int left = nla_len(tb[RTA_MULTIPATH]);
    while (left >= int(sizeof(rtnexthop)) && nh->rtnh_len >= sizeof(rtnexthop) &&
           nh->rtnh_len <= left) {
      auto* h = r.add_multipath();
      h->set_ifindex(nh->rtnh_ifindex);
      h->set_hops(nh->rtnh_hops);
      h->set_flags(nh->rtnh_flags & RTNH_F_ONLINK);
      auto* a =
          reinterpret_cast<nlattr*>(reinterpret_cast<char*>(nh) + RTNH_ALIGN(sizeof(rtnexthop)));
      int rem = nh->rtnh_len - int(RTNH_ALIGN(sizeof(rtnexthop)));
      nla_for_each_attr(a, a, rem, rem) {
        if (nla_type(a) == RTA_GATEWAY) h->set_gateway(NlAddr(fam, a));
        if (nla_type(a) == RTA_VIA) {
          std::string gw;
          int32_t gf = 0;
          ParseVia(a, &gw, &gf);
          h->set_gateway(gw);
          h->set_gateway_family(gf);
        }
      }
      left -= int(RTNH_ALIGN(nh->rtnh_len));
      nh = reinterpret_cast<rtnexthop*>(reinterpret_cast<char*>(nh) + RTNH_ALIGN(nh->rtnh_len));
    }
  }
  if (mode == DumpMode::kStrict) {
    if (r.protocol() == RTPROT_KERNEL) {
      ++*kernel_made;
      return Ok();
    }
    if (r.protocol() == RTPROT_RA) {
      out->add_skipped(DescribeRoute(r) +
                       ": learned from a router advertisement, learned again from the next one");
      return Ok();
    }
    if (tb[RTA_ENCAP] || tb[RTA_NH_ID])
      return Err(EOPNOTSUPP)
             << DescribeRoute(r)
             << ": routes with an encapsulation or a nexthop object are not carried";
  }
  *out->add_routes() = std::move(r);
  return Ok();
}

Result<void> PutRoute(RestoreCtx& ctx, NlRequest& req, const img::Route& r,
                      const std::string& what) {
  rtmsg rtm{};
  rtm.rtm_family = uint8_t(r.family());
  rtm.rtm_dst_len = uint8_t(r.dst_len());
  rtm.rtm_src_len = uint8_t(r.src_len());
  rtm.rtm_tos = uint8_t(r.tos());
  rtm.rtm_table = r.table() < 256 ? uint8_t(r.table()) : uint8_t(RT_TABLE_UNSPEC);
  rtm.rtm_protocol = uint8_t(r.protocol());
  rtm.rtm_scope = uint8_t(r.scope());
  rtm.rtm_type = uint8_t(r.type());
  rtm.rtm_flags = r.flags() & RTNH_F_ONLINK;
  req.Header(rtm);
  req.PutU32(RTA_TABLE, r.table());
  if (!r.dst().empty()) {
    auto b = KLEAP_TRY(AddrFromString(r.family(), r.dst(), what));
    req.Put(RTA_DST, b.data(), b.size());
  }
  if (!r.src().empty()) {
    auto b = KLEAP_TRY(AddrFromString(r.family(), r.src(), what + " source"));
    req.Put(RTA_SRC, b.data(), b.size());
  }
  if (r.oif()) req.PutU32(RTA_OIF, uint32_t(KLEAP_TRY(ctx.Map(r.oif(), what))));
  KLEAP_TRY(PutGateway(req, r.family(), r.gateway_family(), r.gateway(), what));
  if (r.has_priority()) req.PutU32(RTA_PRIORITY, r.priority());
  if (!r.prefsrc().empty()) {
    auto b = KLEAP_TRY(AddrFromString(r.family(), r.prefsrc(), what + " preferred source"));
    req.Put(RTA_PREFSRC, b.data(), b.size());
  }
  if (r.has_pref()) req.PutU8(RTA_PREF, uint8_t(r.pref()));
  if (r.realm()) req.PutU32(RTA_FLOW, r.realm());
  if (!r.metrics().empty()) {
    nlattr* n = req.Begin(RTA_METRICS);
    for (auto& m : r.metrics()) {
      bool text = m.type() == RTAX_CC_ALGO;
      if (m.type() == 0 || m.type() > RTAX_MAX || (!text && m.value().size() != 4) ||
          (text && (m.value().empty() || m.value().size() > 16)))
        return Err(EINVAL) << what << ": bad metric " << m.type();
      req.Put(int(m.type()), m.value().data(), m.value().size());
    }
    req.End(n);
  }
  if (!r.multipath().empty()) {
    // rtnexthop records, each followed by its gateway attribute.
    std::vector<uint8_t> buf;
    for (auto& h : r.multipath()) {
      NlRequest gw(0, 0);
      KLEAP_TRY(PutGateway(gw, r.family(), h.gateway_family(), h.gateway(), what));
      nlmsghdr* gh = nlmsg_hdr(gw.msg());
      size_t attrs = gh->nlmsg_len - NLMSG_HDRLEN;
      rtnexthop nh{};
      nh.rtnh_len = uint16_t(RTNH_ALIGN(sizeof nh) + attrs);
      nh.rtnh_flags = uint8_t(h.flags() & RTNH_F_ONLINK);
      nh.rtnh_hops = uint8_t(h.hops());
      nh.rtnh_ifindex = h.ifindex() ? KLEAP_TRY(ctx.Map(h.ifindex(), what)) : 0;
      size_t at = buf.size();
      buf.resize(at + RTNH_ALIGN(nh.rtnh_len));
      std::memcpy(buf.data() + at, &nh, sizeof nh);
      std::memcpy(buf.data() + at + RTNH_ALIGN(sizeof nh), nlmsg_data(gh), attrs);
    }
    req.Put(RTA_MULTIPATH, buf.data(), buf.size());
  }
  return Ok();
}

bool IsDefaultRule(const img::Rule& r) {
  if (r.protocol() == RTPROT_KERNEL) return true;
  bool plain = r.src().empty() && r.dst().empty() && r.iifname().empty() && r.oifname().empty() &&
               !r.has_fwmark() && r.action() == FR_ACT_TO_TBL && r.ranges().empty();
  return plain &&
         ((r.priority() == 0 && r.table() == RT_TABLE_LOCAL) ||
          (r.priority() == 32766 && r.table() == RT_TABLE_MAIN) ||
          (r.priority() == 32767 && r.table() == RT_TABLE_DEFAULT && r.family() == AF_INET));
}

std::string DescribeRule(const img::Rule& r) {
  return "rule " + std::to_string(r.priority()) + " (" + (r.family() == AF_INET ? "IPv4" : "IPv6") +
         ", table " + std::to_string(r.table()) + ")";
}

Result<void> PutRule(NlRequest& req, const img::Rule& r) {
  std::string what = DescribeRule(r);
  fib_rule_hdr h{};
  h.family = uint8_t(r.family());
  h.dst_len = uint8_t(r.dst_len());
  h.src_len = uint8_t(r.src_len());
  h.tos = uint8_t(r.tos());
  h.table = r.table() < 256 ? uint8_t(r.table()) : uint8_t(RT_TABLE_UNSPEC);
  h.action = uint8_t(r.action());
  h.flags = r.flags() & FIB_RULE_INVERT;
  req.Header(h);
  req.PutU32(FRA_TABLE, r.table());
  if (r.has_priority()) req.PutU32(FRA_PRIORITY, r.priority());
  if (!r.src().empty()) {
    auto b = KLEAP_TRY(AddrFromString(r.family(), r.src(), what + " from"));
    req.Put(FRA_SRC, b.data(), b.size());
  }
  if (!r.dst().empty()) {
    auto b = KLEAP_TRY(AddrFromString(r.family(), r.dst(), what + " to"));
    req.Put(FRA_DST, b.data(), b.size());
  }
  if (r.iifname().size() >= IFNAMSIZ || r.oifname().size() >= IFNAMSIZ)
    return Err(EINVAL) << what << ": interface name too long";
  if (!r.iifname().empty()) req.PutString(FRA_IIFNAME, r.iifname());
  if (!r.oifname().empty()) req.PutString(FRA_OIFNAME, r.oifname());
  if (r.has_fwmark()) req.PutU32(FRA_FWMARK, r.fwmark());
  if (r.has_fwmask()) req.PutU32(FRA_FWMASK, r.fwmask());
  if (r.goto_target()) req.PutU32(FRA_GOTO, r.goto_target());
  if (r.has_suppress_prefixlen()) req.PutU32(FRA_SUPPRESS_PREFIXLEN, r.suppress_prefixlen());
  if (r.has_suppress_ifgroup()) req.PutU32(FRA_SUPPRESS_IFGROUP, r.suppress_ifgroup());
  if (r.realm()) req.PutU32(FRA_FLOW, r.realm());
  if (r.l3mdev()) req.PutU8(FRA_L3MDEV, 1);
  if (r.protocol()) req.PutU8(FRA_PROTOCOL, uint8_t(r.protocol()));
  if (r.ip_proto()) req.PutU8(FRA_IP_PROTO, uint8_t(r.ip_proto()));
  for (auto& a : r.ranges()) {
    bool ok = (a.type() == FRA_UID_RANGE && a.value().size() == sizeof(fib_rule_uid_range)) ||
              ((a.type() == FRA_SPORT_RANGE || a.type() == FRA_DPORT_RANGE) &&
               a.value().size() == sizeof(fib_rule_port_range));
    if (!ok) return Err(EINVAL) << what << ": bad range attribute " << a.type();
    req.Put(int(a.type()), a.value().data(), a.value().size());
  }
  return Ok();
}

}  // namespace

Result<void> DumpRoutes(Netlink& nl, DumpMode mode, img::NetNs* out) {
  int kernel_made = 0;
  for (int fam : {AF_INET, AF_INET6}) {
    rtmsg req{};
    req.rtm_family = uint8_t(fam);
    auto msgs = KLEAP_TRY(nl.Dump(RTM_GETROUTE, &req, sizeof req));
    for (auto& m : msgs)
      if (m.hdr()->nlmsg_type == RTM_NEWROUTE) KLEAP_TRY(ParseRoute(m, mode, out, &kernel_made));
  }
  if (kernel_made)
    out->add_skipped(std::to_string(kernel_made) +
                     " routes the kernel made (protocol kernel): local, broadcast and connected "
                     "routes, made again with their addresses and links");
  return Ok();
}

Result<void> CheckRoutes(RestoreCtx& ctx) {
  for (auto& r : ctx.image.routes()) {
    std::string what = DescribeRoute(r);
    if (r.family() != AF_INET && r.family() != AF_INET6)
      return Err(EINVAL) << what << ": bad family";
    if (r.dst_len() > (r.family() == AF_INET ? 32u : 128u) || r.src_len() > 128 ||
        r.scope() > 255 || r.type() > 255 || r.protocol() > 255 || r.tos() > 255)
      return Err(EINVAL) << what << ": bad field";
    if (r.oif() && !ctx.links.count(r.oif()))
      return Err(EINVAL) << what << ": no such link in the image";
    for (auto& h : r.multipath())
      if (h.ifindex() && !ctx.links.count(h.ifindex()))
        return Err(EINVAL) << what << ": a nexthop's link is not in the image";
    for (auto& t : ctx.target.routes())
      if (SameKey(r, t)) return Err(EEXIST) << what << ": exists already in the target namespace";
  }
  for (auto& r : ctx.image.rules()) {
    if (r.family() != AF_INET && r.family() != AF_INET6)
      return Err(EINVAL) << DescribeRule(r) << ": bad family";
    for (auto& t : ctx.target.rules())
      if (t.SerializeAsString() == r.SerializeAsString())
        return Err(EEXIST) << DescribeRule(r) << ": exists already in the target namespace";
  }
  for (auto& n : ctx.image.neighbours()) {
    if (!ctx.links.count(n.ifindex()))
      return Err(EINVAL) << "neighbour " << n.dst() << ": no such link in the image";
    auto mapped = ctx.ifmap.find(n.ifindex());
    for (auto& t : ctx.target.neighbours())
      if (mapped != ctx.ifmap.end() && t.ifindex() == mapped->second && t.dst() == n.dst() &&
          t.lladdr() != n.lladdr())
        return Err(EEXIST) << "neighbour " << n.dst() << " on " << ctx.Name(n.ifindex())
                           << ": the target namespace has it as " << t.lladdr();
  }
  return Ok();
}

Result<void> ApplyRoutes(RestoreCtx& ctx) {
  // Routes through a gateway need the route to the gateway first; host and link
  // scope routes come before universe ones.
  std::vector<const img::Route*> order;
  for (auto& r : ctx.image.routes()) order.push_back(&r);
  std::stable_sort(order.begin(), order.end(), [](const img::Route* a, const img::Route* b) {
    bool ga = !a->gateway().empty() || !a->multipath().empty();
    bool gb = !b->gateway().empty() || !b->multipath().empty();
    if (ga != gb) return gb;
    return a->scope() > b->scope();
  });
  for (const img::Route* r : order) {
    std::string what = DescribeRoute(*r);
    NlRequest req(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
    KLEAP_TRY(PutRoute(ctx, req, *r, what));
    KLEAP_TRY(ctx.nl.Send(req, "add " + what));
    ctx.undo.Add("add " + what, [&ctx, r, what]() -> Result<void> {
      NlRequest del(RTM_DELROUTE, 0);
      KLEAP_TRY(PutRoute(ctx, del, *r, what));
      return ctx.nl.Send(del, "remove " + what);
    });
  }
  return Ok();
}

Result<void> DumpRules(Netlink& nl, DumpMode mode, img::NetNs* out) {
  for (int fam : {AF_INET, AF_INET6}) {
    fib_rule_hdr req{};
    req.family = uint8_t(fam);
    auto msgs = KLEAP_TRY(nl.Dump(RTM_GETRULE, &req, sizeof req));
    for (auto& m : msgs) {
      if (m.hdr()->nlmsg_type != RTM_NEWRULE) continue;
      auto* h = m.body<fib_rule_hdr>();
      auto tb = KLEAP_TRY(m.Attrs(sizeof(fib_rule_hdr), FRA_MAX));
      img::Rule r;
      r.set_family(h->family);
      r.set_action(h->action);
      r.set_table(tb[FRA_TABLE] ? NlU32(tb[FRA_TABLE]) : h->table);
      r.set_tos(h->tos);
      r.set_flags(h->flags & FIB_RULE_INVERT);
      r.set_src_len(h->src_len);
      r.set_dst_len(h->dst_len);
      if (tb[FRA_PRIORITY]) {
        r.set_has_priority(true);
        r.set_priority(NlU32(tb[FRA_PRIORITY]));
      }
      if (tb[FRA_SRC]) r.set_src(NlAddr(h->family, tb[FRA_SRC]));
      if (tb[FRA_DST]) r.set_dst(NlAddr(h->family, tb[FRA_DST]));
      if (tb[FRA_IIFNAME]) r.set_iifname(NlString(tb[FRA_IIFNAME]));
      if (tb[FRA_OIFNAME]) r.set_oifname(NlString(tb[FRA_OIFNAME]));
      if (tb[FRA_FWMARK]) {
        r.set_has_fwmark(true);
        r.set_fwmark(NlU32(tb[FRA_FWMARK]));
      }
      if (tb[FRA_FWMASK]) {
        r.set_has_fwmask(true);
        r.set_fwmask(NlU32(tb[FRA_FWMASK]));
      }
      if (tb[FRA_GOTO]) r.set_goto_target(NlU32(tb[FRA_GOTO]));
      if (tb[FRA_SUPPRESS_PREFIXLEN] && NlU32(tb[FRA_SUPPRESS_PREFIXLEN]) != 0xffffffffu) {
        r.set_has_suppress_prefixlen(true);
        r.set_suppress_prefixlen(NlU32(tb[FRA_SUPPRESS_PREFIXLEN]));
      }
      if (tb[FRA_SUPPRESS_IFGROUP] && NlU32(tb[FRA_SUPPRESS_IFGROUP]) != 0xffffffffu) {
        r.set_has_suppress_ifgroup(true);
        r.set_suppress_ifgroup(NlU32(tb[FRA_SUPPRESS_IFGROUP]));
      }
      if (tb[FRA_FLOW]) r.set_realm(NlU32(tb[FRA_FLOW]));
      if (tb[FRA_L3MDEV]) r.set_l3mdev(nla_get_u8(tb[FRA_L3MDEV]) != 0);
      if (tb[FRA_PROTOCOL]) r.set_protocol(nla_get_u8(tb[FRA_PROTOCOL]));
      if (tb[FRA_IP_PROTO]) r.set_ip_proto(nla_get_u8(tb[FRA_IP_PROTO]));
      for (int t : {FRA_UID_RANGE, FRA_SPORT_RANGE, FRA_DPORT_RANGE}) {
        if (!tb[t]) continue;
        auto* o = r.add_ranges();
        o->set_type(uint32_t(t));
        o->set_value(nla_data(tb[t]), size_t(nla_len(tb[t])));
      }
      if (mode == DumpMode::kStrict) {
        if (IsDefaultRule(r)) continue;
        if (tb[FRA_TUN_ID])
          return Err(EOPNOTSUPP) << DescribeRule(r) << ": rules on a tunnel id are not carried";
      }
      *out->add_rules() = std::move(r);
    }
  }
  return Ok();
}

Result<void> ApplyRules(RestoreCtx& ctx) {
  for (auto& r : ctx.image.rules()) {
    NlRequest req(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL);
    KLEAP_TRY(PutRule(req, r));
    KLEAP_TRY(ctx.nl.Send(req, "add " + DescribeRule(r)));
    ctx.undo.Add("add " + DescribeRule(r), [&ctx, &r]() -> Result<void> {
      NlRequest del(RTM_DELRULE, 0);
      KLEAP_TRY(PutRule(del, r));
      return ctx.nl.Send(del, "remove " + DescribeRule(r));
    });
  }
  return Ok();
}

Result<void> DumpNeighbours(Netlink& nl, DumpMode mode, img::NetNs* out) {
  std::map<int, const img::Link*> links;
  for (auto& l : out->links()) links[l.ifindex()] = &l;
  for (int fam : {AF_INET, AF_INET6}) {
    ndmsg req{};
    req.ndm_family = uint8_t(fam);
    auto msgs = KLEAP_TRY(nl.Dump(RTM_GETNEIGH, &req, sizeof req));
    for (auto& m : msgs) {
      if (m.hdr()->nlmsg_type != RTM_NEWNEIGH) continue;
      auto* nd = m.body<ndmsg>();
      auto tb = KLEAP_TRY(m.Attrs(sizeof(ndmsg), NDA_MAX));
      if (!tb[NDA_DST]) continue;
      img::Neighbour n;
      n.set_family(nd->ndm_family);
      n.set_ifindex(nd->ndm_ifindex);
      n.set_dst(NlAddr(nd->ndm_family, tb[NDA_DST]));
      if (tb[NDA_LLADDR])
        n.set_lladdr(MacToString(nla_data(tb[NDA_LLADDR]), size_t(nla_len(tb[NDA_LLADDR]))));
      n.set_state(nd->ndm_state);
      n.set_flags(nd->ndm_flags & NTF_ROUTER);
      if (mode == DumpMode::kStrict) {
        if (!(nd->ndm_state & (NUD_PERMANENT | NUD_NOARP))) continue;
        // The kernel makes NOARP entries itself, on demand, on loopback and NOARP
        // devices and for multicast and broadcast destinations.
        if (nd->ndm_state & NUD_NOARP) {
          auto it = links.find(n.ifindex());
          bool on_demand = nd->ndm_type == RTN_MULTICAST || nd->ndm_type == RTN_BROADCAST ||
                           it == links.end() || it->second->kind() == "loopback" ||
                           (it->second->flags() & IFF_NOARP) ||
                           (fam == AF_INET6 && n.dst().rfind("ff", 0) == 0);
          if (on_demand) continue;
        }
        n.set_state(nd->ndm_state & (NUD_PERMANENT | NUD_NOARP));
      }
      *out->add_neighbours() = std::move(n);
    }
  }
  return Ok();
}

Result<void> ApplyNeighbours(RestoreCtx& ctx) {
  for (auto& n : ctx.image.neighbours()) {
    std::string what = "neighbour " + n.dst() + " on " + ctx.Name(n.ifindex());
    int ifindex = KLEAP_TRY(ctx.Map(n.ifindex(), what));
    auto put = [&n, ifindex, what](NlRequest& req) -> Result<void> {
      ndmsg nd{};
      nd.ndm_family = uint8_t(n.family());
      nd.ndm_ifindex = ifindex;
      nd.ndm_state = uint16_t(n.state() & (NUD_PERMANENT | NUD_NOARP));
      nd.ndm_flags = uint8_t(n.flags() & NTF_ROUTER);
      req.Header(nd);
      auto dst = KLEAP_TRY(AddrFromString(n.family(), n.dst(), what));
      req.Put(NDA_DST, dst.data(), dst.size());
      if (!n.lladdr().empty()) {
        auto ll = KLEAP_TRY(MacFromString(n.lladdr(), what));
        req.Put(NDA_LLADDR, ll.data(), ll.size());
      }
      return Ok();
    };
    NlRequest req(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE);
    KLEAP_TRY(put(req));
    KLEAP_TRY(ctx.nl.Send(req, "add " + what));
    ctx.undo.Add("add " + what, [&ctx, put, what]() -> Result<void> {
      NlRequest del(RTM_DELNEIGH, 0);
      KLEAP_TRY(put(del));
      return ctx.nl.Send(del, "remove " + what);
    });
  }
  return Ok();
}

}  // namespace kleap::net
