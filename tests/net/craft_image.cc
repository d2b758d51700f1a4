// Writes a network image that a dump would never make, for the tests of restore's
// checks on untrusted images: craft_image DIR nft-command
#include <cstdio>
#include <string>

#include "engine/images/image_set.h"
#include "engine/net/net.pb.h"
#include "engine/net/netconf.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: craft_image DIR nft-command\n");
    return 2;
  }
  kleap::img::NetNs ns;
  ns.set_label("crafted");
  if (std::string(argv[2]) == "nft-command") {
    // A command, not a listing: it would flush what the target had.
    ns.set_nft_json(
        "{\"nftables\": [{\"flush\": {\"ruleset\": null}}, "
        "{\"table\": {\"family\": \"inet\", \"name\": \"crafted\"}}]}");
  } else {
    std::fprintf(stderr, "craft_image: unknown kind %s\n", argv[2]);
    return 2;
  }
  auto w = kleap::CreateDirImageSet(argv[1]);
  if (!w) return std::fprintf(stderr, "%s\n", w.error().ToString().c_str()), 1;
  auto r = (*w)->WriteMessage(kleap::net::kNetNsImage, ns);
  if (!r) return std::fprintf(stderr, "%s\n", r.error().ToString().c_str()), 1;
  kleap::img::Inventory inv;
  inv.set_format_version(kleap::kImageFormatVersion);
  auto c = (*w)->Commit(inv);
  if (!c) return std::fprintf(stderr, "%s\n", c.error().ToString().c_str()), 1;
  return 0;
}
