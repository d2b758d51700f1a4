// The nftables ruleset through libnftables: listed as JSON (what `nft -j list
// ruleset` prints, sets and their elements included) and loaded back the same way.
// The library opens its netlink socket in the calling thread's namespace.
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <nftables/libnftables.h>

#include <algorithm>
#include <set>

#include "engine/net/netconf_impl.h"

namespace kleap::net {
namespace {

class Nft {
 public:
  Nft() : ctx_(nft_ctx_new(NFT_CTX_DEFAULT)) {
    if (!ctx_) return;
    nft_ctx_output_set_flags(ctx_, NFT_CTX_OUTPUT_JSON);
    nft_ctx_buffer_output(ctx_);
    nft_ctx_buffer_error(ctx_);
  }
  ~Nft() {
    if (ctx_) nft_ctx_free(ctx_);
  }
  Nft(const Nft&) = delete;
  Nft& operator=(const Nft&) = delete;

  // Runs a command (nft syntax or JSON) and returns what it printed.
  Result<std::string> Run(const std::string& cmd, const std::string& what) {
    if (!ctx_) return Err(ENOMEM) << "nft_ctx_new";
    if (nft_run_cmd_from_buffer(ctx_, cmd.c_str()) != 0) {
      std::string err = nft_ctx_get_error_buffer(ctx_);
      while (!err.empty() && err.back() == '\n') err.pop_back();
      return Err(EINVAL) << what << ": " << err;
    }
    const char* out = nft_ctx_get_output_buffer(ctx_);
    return std::string(out ? out : "");
  }

 private:
  nft_ctx* ctx_;
};

// The objects a listing holds; a ruleset in an image may hold nothing else. A command
// ({"flush": ...}, {"delete": ...}) would change what the target had before restore.
constexpr const char* kListedObjects[] = {
    "metainfo",   "table",          "chain",   "rule",     "set",       "map",
    "element",    "flowtable",      "counter", "quota",    "ct helper", "limit",
    "ct timeout", "ct expectation", "secmark", "synproxy",
};

// The tables of a ruleset listing, as "inet filter". Refuses anything but listed
// objects when `strict`.
Result<std::set<std::string>> Tables(const std::string& json, bool strict) {
  google::protobuf::Struct root;
  if (!google::protobuf::util::JsonStringToMessage(json, &root).ok())
    return Err(EINVAL) << "nftables ruleset: not JSON";
  auto list = root.fields().find("nftables");
  if (list == root.fields().end() || !list->second.has_list_value())
    return Err(EINVAL) << "nftables ruleset: no \"nftables\" array";
  std::set<std::string> out;
  for (auto& v : list->second.list_value().values()) {
    if (!v.has_struct_value() || v.struct_value().fields_size() != 1)
      return Err(EINVAL) << "nftables ruleset: an entry is not one object";
    auto& [kind, body] = *v.struct_value().fields().begin();
    bool listed = false;
    for (const char* k : kListedObjects) listed |= kind == k;
    if (!listed && strict)
      return Err(EINVAL) << "nftables ruleset: '" << kind << "' is not part of a ruleset listing";
    if (kind != "table" || !body.has_struct_value()) continue;
    auto& f = body.struct_value().fields();
    auto fam = f.find("family"), name = f.find("name");
    if (fam == f.end() || name == f.end() || !fam->second.has_string_value() ||
        !name->second.has_string_value())
      return Err(EINVAL) << "nftables ruleset: a table without a family or name";
    std::string t = fam->second.string_value() + " " + name->second.string_value();
    if (t.find_first_of(";\n{}") != std::string::npos)
      return Err(EINVAL) << "nftables ruleset: bad table name '" << t << "'";
    out.insert(t);
  }
  return out;
}

}  // namespace

Result<std::string> NftCommand(const std::string& cmd, const std::string& what) {
  Nft nft;
  return nft.Run(cmd, what);
}

// The listing without kleap's own network lock (netlock.h), which a dump taken while
// it is on must not carry: the restore puts its own on.
Result<std::string> WithoutLockTable(const std::string& json) {
  google::protobuf::Struct root;
  if (!google::protobuf::util::JsonStringToMessage(json, &root).ok())
    return Err(EINVAL) << "nftables ruleset: not JSON";
  auto& list = *(*root.mutable_fields())["nftables"].mutable_list_value()->mutable_values();
  auto is_lock = [](const google::protobuf::Value& v) {
    if (!v.has_struct_value() || v.struct_value().fields_size() != 1) return false;
    auto& [kind, body] = *v.struct_value().fields().begin();
    if (!body.has_struct_value()) return false;
    auto& f = body.struct_value().fields();
    auto fam = f.find("family");
    auto name = f.find(kind == "table" ? "name" : "table");
    return fam != f.end() && name != f.end() && fam->second.string_value() == "inet" &&
           name->second.string_value() == "kleap_lock";
  };
  list.erase(std::remove_if(list.begin(), list.end(), is_lock), list.end());
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(root, &out).ok())
    return Err(EINVAL) << "nftables ruleset: can't write it back";
  return out;
}

Result<std::string> DumpNftRuleset() {
  Nft nft;
  std::string json = KLEAP_TRY(nft.Run("list ruleset", "nft list ruleset"));
  auto tables = KLEAP_TRY(Tables(json, false));
  if (tables.count("inet kleap_lock")) {
    json = KLEAP_TRY(WithoutLockTable(json));
    tables.erase("inet kleap_lock");
  }
  // An empty ruleset lists only its metainfo.
  return tables.empty() ? std::string() : json;
}

Result<void> CheckNft(RestoreCtx& ctx) {
  if (ctx.image.nft_json().empty()) return Ok();
  Nft nft;
  std::string now = KLEAP_TRY(nft.Run("list ruleset", "nft list ruleset"));
  auto have = KLEAP_TRY(Tables(now, false));
  for (auto& t : KLEAP_TRY(Tables(ctx.image.nft_json(), true)))
    if (have.count(t))
      return Err(EEXIST) << "nftables table " << t << ": exists already in the target namespace";
  return Ok();
}

Result<void> ApplyNft(RestoreCtx& ctx) {
  if (ctx.image.nft_json().empty()) return Ok();
  Nft nft;
  auto tables = KLEAP_TRY(Tables(ctx.image.nft_json(), true));
  KLEAP_TRY(nft.Run(ctx.image.nft_json(), "load the nftables ruleset"));
  ctx.undo.Add("nftables ruleset", [tables]() -> Result<void> {
    Nft undo;
    for (auto& t : tables) KLEAP_TRY(undo.Run("delete table " + t, "delete nftables table " + t));
    return Ok();
  });
  return Ok();
}

}  // namespace kleap::net
