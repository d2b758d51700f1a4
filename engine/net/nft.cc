// The nftables ruleset through libnftables: listed as JSON (what `nft -j list
// ruleset` prints, sets and their elements included) and loaded back the same way.
// The library opens its netlink socket in the calling thread's namespace.
#include <nftables/libnftables.h>

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

// The tables of a ruleset, as "inet filter", read from its JSON listing. The listing
// is nft's own output: each table object is {"table": {"family": F, "name": N, ...}}.
std::set<std::string> Tables(const std::string& json) {
  std::set<std::string> out;
  size_t at = 0;
  auto field = [&](size_t from, const std::string& key) -> std::string {
    size_t k = json.find("\"" + key + "\": \"", from);
    if (k == std::string::npos) return "";
    size_t b = k + key.size() + 5;
    size_t e = json.find('"', b);
    return e == std::string::npos ? "" : json.substr(b, e - b);
  };
  while ((at = json.find("{\"table\": {", at)) != std::string::npos) {
    size_t end = json.find('}', at);
    std::string fam = field(at, "family"), name = field(at, "name");
    if (end != std::string::npos && json.find("\"name\"", at) < end) out.insert(fam + " " + name);
    at += 10;
  }
  return out;
}

}  // namespace

Result<std::string> DumpNftRuleset() {
  Nft nft;
  std::string json = KLEAP_TRY(nft.Run("list ruleset", "nft list ruleset"));
  // An empty ruleset lists only its metainfo.
  return Tables(json).empty() ? std::string() : json;
}

Result<void> CheckNft(RestoreCtx& ctx) {
  if (ctx.image.nft_json().empty()) return Ok();
  Nft nft;
  std::string now = KLEAP_TRY(nft.Run("list ruleset", "nft list ruleset"));
  auto have = Tables(now);
  for (auto& t : Tables(ctx.image.nft_json()))
    if (have.count(t))
      return Err(EEXIST) << "nftables table " << t << ": exists already in the target namespace";
  return Ok();
}

Result<void> ApplyNft(RestoreCtx& ctx) {
  if (ctx.image.nft_json().empty()) return Ok();
  Nft nft;
  KLEAP_TRY(nft.Run(ctx.image.nft_json(), "load the nftables ruleset"));
  ctx.undo.Add("nftables ruleset", [tables = Tables(ctx.image.nft_json())]() -> Result<void> {
    Nft undo;
    for (auto& t : tables) KLEAP_TRY(undo.Run("delete table " + t, "delete nftables table " + t));
    return Ok();
  });
  return Ok();
}

}  // namespace kleap::net
