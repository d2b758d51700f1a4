// Dump and restore of a namespace's network configuration: the order of the steps,
// the check before anything is applied, and the undo when a step fails.
#include "engine/net/netconf.h"

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>
#include <time.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "engine/base/clock.h"
#include "engine/base/fault.h"
#include "engine/base/log.h"
#include "engine/net/netconf_impl.h"

namespace kleap::net {

void UndoLog::Add(std::string what, std::function<Result<void>()> undo) {
  steps_.emplace_back(std::move(what), std::move(undo));
}

void UndoLog::Run() {
  for (auto it = steps_.rbegin(); it != steps_.rend(); ++it) {
    auto r = it->second();
    if (!r) KLOG(kWarning) << "undo " << it->first << ": " << r.error().ToString() << ", ignoring";
  }
  steps_.clear();
}

Result<int> RestoreCtx::Map(int image_ifindex, const std::string& what) const {
  auto it = ifmap.find(image_ifindex);
  if (it == ifmap.end())
    return Err(EINVAL) << what << ": link " << image_ifindex << " is not in the image";
  return it->second;
}

std::string RestoreCtx::Name(int image_ifindex) const {
  auto it = links.find(image_ifindex);
  return it == links.end() ? "ifindex " + std::to_string(image_ifindex) : it->second->name();
}

namespace {

Result<img::NetNs> ReadConfig(const std::string& label) {
  auto nl = KLEAP_TRY(Netlink::Open());
  img::NetNs ns;
  ns.set_label(label);
  ns.set_dumped_unix_ns(uint64_t(NowNs()));
  KLEAP_TRY(DumpLinks(*nl, DumpMode::kStrict, &ns));
  KLEAP_TRY(DumpAddresses(*nl, DumpMode::kStrict, &ns));
  KLEAP_TRY(DumpRoutes(*nl, DumpMode::kStrict, &ns));
  KLEAP_TRY(DumpRules(*nl, DumpMode::kStrict, &ns));
  KLEAP_TRY(DumpNeighbours(*nl, DumpMode::kStrict, &ns));
  KLEAP_TRY(DumpSysctls(&ns));
  ns.set_nft_json(KLEAP_TRY(DumpNftRuleset()));
  return ns;
}

// The steps in the order they must happen; every one adds its undo to the context.
Result<void> Apply(RestoreCtx& ctx) {
  KLEAP_TRY(ApplySysctls(ctx, false));
  KLEAP_TRY(ApplyLinks(ctx));
  KLEAP_TRY(ApplySysctls(ctx, true));
  KLEAP_TRY(SetLinksUp(ctx));
  KLEAP_TRY(ApplyAddresses(ctx));
  KLEAP_TRY(ApplyRoutes(ctx));
  KLEAP_TRY(ApplyRules(ctx));
  KLEAP_TRY(ApplyNeighbours(ctx));
  // The test hook of the failure rule: everything but the ruleset is applied by now.
  KLEAP_TRY(FaultPoint("net-restore"));
  KLEAP_TRY(ApplyNft(ctx));
  return Ok();
}

Result<void> WriteConfig(const img::NetNs& image) {
  auto nl = KLEAP_TRY(Netlink::Open());
  RestoreCtx ctx{*nl, image, {}, {}, {}, {}};
  KLEAP_TRY(DumpLinks(*nl, DumpMode::kSnapshot, &ctx.target));
  KLEAP_TRY(DumpAddresses(*nl, DumpMode::kSnapshot, &ctx.target));
  KLEAP_TRY(DumpRoutes(*nl, DumpMode::kSnapshot, &ctx.target));
  KLEAP_TRY(DumpRules(*nl, DumpMode::kSnapshot, &ctx.target));
  KLEAP_TRY(DumpNeighbours(*nl, DumpMode::kSnapshot, &ctx.target));
  KLEAP_TRY(CheckLinks(ctx));
  KLEAP_TRY(CheckAddresses(ctx));
  KLEAP_TRY(CheckRoutes(ctx));
  KLEAP_TRY(CheckSysctls(ctx));
  KLEAP_TRY(CheckNft(ctx));
  auto applied = Apply(ctx);
  if (!applied) {
    ctx.undo.Run();
    return std::move(applied).error();
  }
  return Ok();
}

}  // namespace

Result<void> WriteNetnsImage(const NetnsRef& ns, ImageWriter& images) {
  UniqueFd fd = KLEAP_TRY(OpenNetns(ns));
  img::NetNs conf = KLEAP_TRY_CTX(RunInNetns(fd, [&] { return ReadConfig(ns.label); }), ns.label);
  return images.WriteMessage(kNetNsImage, conf);
}

Result<void> DumpNetns(const NetnsRef& ns, ImageWriter& images) {
  KLEAP_TRY(WriteNetnsImage(ns, images));
  return images.Commit(NewInventory());
}

Result<void> RestoreNetns(const NetnsRef& ns, ImageReader& images) {
  if (!images.Has(kNetNsImage))
    return Err(ENOENT) << images.Describe() << ": no " << kNetNsImage << " (not a network image)";
  img::NetNs conf;
  KLEAP_TRY(images.ReadMessage(kNetNsImage, &conf));
  UniqueFd fd = KLEAP_TRY(OpenNetns(ns));
  KLEAP_TRY_CTX(RunInNetns(fd, [&] { return WriteConfig(conf); }), ns.label);
  return Ok();
}

Result<void> ValidateNetImage(ImageReader& images) {
  for (auto& e : images.inventory().images())
    if (e.name() != kNetNsImage)
      return Err(EINVAL) << "image " << e.name() << ": not part of a network image set";
  KLEAP_TRY(images.VerifyImage(kNetNsImage));
  img::NetNs conf;
  KLEAP_TRY(images.ReadMessage(kNetNsImage, &conf));
  return Ok();
}

Result<std::string> ShowNetImage(ImageReader& images, bool json) {
  img::NetNs conf;
  KLEAP_TRY(images.ReadMessage(kNetNsImage, &conf));
  std::string out;
  if (json) {
    google::protobuf::util::JsonPrintOptions o;
    o.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(conf, &out, o);
    return out + "\n";
  }
  google::protobuf::TextFormat::PrintToString(conf, &out);
  return "network configuration of " + conf.label() + ", from " + images.Describe() + "\n" + out;
}

}  // namespace kleap::net
