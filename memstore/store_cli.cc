#include "memstore/store_cli.h"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "engine/base/json.h"
#include "engine/base/log.h"
#include "memstore/store.h"

namespace kleap::memstore {
namespace {

int Usage(const std::string& msg) {
  std::fprintf(stderr,
               "kleap store: %s\n"
               "Usage: kleap store info|ls|cat NAME|wipe [--backend pmem:/dev/pmemN|dir:PATH] "
               "[--json] [--verify] [--yes]\n",
               msg.c_str());
  return 2;
}

// kleap store wipe: zeros over the whole region, after asking (or --yes).
int Wipe(Region& region, const std::string& spec, bool yes, bool json) {
  if (!yes && !isatty(STDIN_FILENO)) return Usage("wipe overwrites the whole region; add --yes");
  if (!yes) {
    std::fprintf(stderr, "Overwrite all %" PRIu64 " bytes of %s? [y/N] ", region.size(),
                 spec.c_str());
    std::string answer;
    std::getline(std::cin, answer);
    if (answer != "y" && answer != "Y" && answer != "yes") return 1;
  }
  auto w = region.Wipe();
  if (!w) {
    KLOG(kError) << "wipe: " << w.error().ToString();
    return 1;
  }
  if (json)
    std::printf("{\"store\":%s,\"wiped_bytes\":%" PRIu64 "}\n", JsonString(spec).c_str(),
                region.size());
  else
    std::printf("%s: wiped %" PRIu64 " bytes\n", spec.c_str(), region.size());
  return 0;
}

// kleap store cat NAME: the blob's bytes on stdout, once its checksum held (`bad` says
// why not).
int Cat(Region& region, const StoreInfo& info, const std::string& spec, const std::string& name,
        const std::string& bad) {
  auto it =
      std::find_if(info.blobs.begin(), info.blobs.end(), [&](auto& b) { return b.name == name; });
  if (it == info.blobs.end()) {
    KLOG(kError) << spec << ": no blob " << name;
    return 1;
  }
  if (!bad.empty()) {
    KLOG(kError) << bad;
    return 1;
  }
  std::string buf(1 << 20, '\0');
  for (uint64_t off = 0; off < it->size; off += buf.size()) {
    size_t n = size_t(std::min<uint64_t>(buf.size(), it->size - off));
    if (auto r = region.Read(it->offset + off, buf.data(), n); !r) {
      KLOG(kError) << r.error().ToString();
      return 1;
    }
    if (fwrite(buf.data(), 1, n, stdout) != n) return 1;
  }
  return 0;
}

}  // namespace

int RunStoreCommand(const std::vector<std::string>& args) {
  std::string verb, spec = kDefaultStore, name;
  bool json = false, verify = false, yes = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--backend") {
      if (i + 1 >= args.size()) return Usage("--backend needs a store");
      spec = args[++i];
    } else if (a == "--json") {
      json = true;
    } else if (a == "--verify") {
      verify = true;
    } else if (a == "--yes") {
      yes = true;
    } else if (!a.empty() && a[0] == '-') {
      return Usage("unknown option " + a);
    } else if (verb.empty()) {
      verb = a;
    } else if (verb == "cat" && name.empty()) {
      name = a;
    } else {
      return Usage("unexpected argument " + a);
    }
  }
  if (verb != "info" && verb != "ls" && verb != "cat" && verb != "wipe")
    return Usage(verb.empty() ? "no command" : "unknown command " + verb);
  if (verb == "cat" && name.empty()) return Usage("cat needs a blob name");
  auto region = Region::Open(spec);
  if (!region) {
    KLOG(kError) << region.error().ToString();
    return 1;
  }
  if (verb == "wipe") return Wipe(**region, spec, yes, json);
  auto info = ReadInfo(**region);
  if (!info) {
    if (json)
      std::printf("{\"store\":%s,\"whole\":false,\"reason\":%s}\n", JsonString(spec).c_str(),
                  JsonString(info.error().ToString()).c_str());
    else
      std::printf("%s: not a whole store: %s\n", spec.c_str(), info.error().ToString().c_str());
    return 1;
  }
  std::string bad;
  if (verify || verb == "cat")
    for (auto& b : info->blobs)
      if (verb != "cat" || b.name == name)
        if (auto v = VerifyBlob(**region, b); !v && bad.empty()) bad = v.error().ToString();
  if (verb == "cat") return Cat(**region, *info, spec, name, bad);
  if (json) {
    std::ostringstream os;
    os << "{\"store\":" << JsonString(spec) << ",\"whole\":" << (bad.empty() ? "true" : "false")
       << ",\"verified\":" << (verify ? "true" : "false");
    if (!bad.empty()) os << ",\"reason\":" << JsonString(bad);
    os << ",\"capacity\":" << info->capacity << ",\"used\":" << info->used
       << ",\"generation\":" << info->generation
       << ",\"writer_release\":" << JsonString(info->writer_release)
       << ",\"writer_boot_id\":" << JsonString(info->writer_boot_id)
       << ",\"created_ns\":" << info->created_ns << ",\"committed_ns\":" << info->committed_ns
       << ",\"blobs\":[";
    for (size_t i = 0; i < info->blobs.size(); ++i) {
      auto& b = info->blobs[i];
      os << (i ? "," : "") << "{\"name\":" << JsonString(b.name) << ",\"offset\":" << b.offset
         << ",\"size\":" << b.size << ",\"xxh3\":\"" << std::hex << b.xxh3 << std::dec << "\"}";
    }
    os << "]}\n";
    std::fputs(os.str().c_str(), stdout);
  } else if (verb == "ls") {
    for (auto& b : info->blobs)
      std::printf("%12" PRIu64 "  %016" PRIx64 "  %s\n", b.size, b.xxh3, b.name.c_str());
  } else {
    if (bad.empty())
      std::printf("store %s: %s\n", spec.c_str(), verify ? "whole, every blob verified" : "whole");
    else
      std::printf("%s\n", bad.c_str());
    std::printf("  capacity %" PRIu64 " bytes, used %" PRIu64 ", generation %" PRIu64
                ", %zu blobs\n",
                info->capacity, info->used, info->generation, info->blobs.size());
    std::printf("  written by kernel %s, boot %s\n", info->writer_release.c_str(),
                info->writer_boot_id.c_str());
  }
  return bad.empty() ? 0 : 1;
}

}  // namespace kleap::memstore
