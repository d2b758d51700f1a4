// kleap-kexec: stage, inspect, unload and execute a kexec with kleap's command line.
// A low-level tool for tests and debugging; admins use upgrade-kernel.
#include <cstdio>
#include <cstring>
#include <string>

#include "engine/base/proc.h"
#include "upgrader/kexec.h"

using namespace kleap;
using namespace kleap::upgrader;

namespace {

const char kUsage[] =
    "Usage: kleap-kexec load --kernel PATH [--initrd PATH] [--store SPEC] [--entry "
    "init=PATH|rdinit=PATH]\n"
    "                        [--append PARAMS] [--dry-run]\n"
    "       kleap-kexec exec | unload | status\n"
    "Exit status: 0 success, 1 failure, 2 usage error.\n";

int Fail(const Error& e) {
  std::fprintf(stderr, "kleap-kexec: %s\n", e.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return std::fputs(kUsage, stderr), 2;
  std::string verb = argv[1];
  if (verb == "-h" || verb == "--help") return std::fputs(kUsage, stdout), 0;
  LoadOptions lo;
  CmdlineOptions co;
  bool dry = false;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--dry-run")
      dry = true;
    else if (a == "--kernel" && (v = next()))
      lo.kernel = v;
    else if (a == "--initrd" && (v = next()))
      lo.initrd = v;
    else if (a == "--store" && (v = next()))
      co.store = v;
    else if (a == "--entry" && (v = next()))
      co.entry = v;
    else if (a == "--append" && (v = next()))
      co.append = v;
    else
      return std::fprintf(stderr, "kleap-kexec: bad argument %s\n%s", a.c_str(), kUsage), 2;
  }
  if (verb == "load") {
    if (lo.kernel.empty()) return std::fprintf(stderr, "kleap-kexec: load needs --kernel\n"), 2;
    auto cur = ReadFileToString("/proc/cmdline");
    if (!cur) return Fail(cur.error());
    co.current = std::string(Trim(*cur));
    auto cmdline = BuildCmdline(co);
    if (!cmdline) return Fail(cmdline.error());
    lo.cmdline = *cmdline;
    std::printf("command line: %s\n", lo.cmdline.c_str());
    if (dry) return 0;
    if (auto r = Load(lo); !r) return Fail(r.error());
    auto loaded = IsLoaded();
    if (!loaded || !*loaded)
      return Fail(Err(EIO) << "the kernel says nothing is loaded after kexec_file_load");
    std::printf("staged %s%s\n", lo.kernel.c_str(),
                lo.initrd.empty() ? "" : (" with " + lo.initrd).c_str());
    return 0;
  }
  if (verb == "exec") {
    std::fflush(stdout);
    return Fail(Execute().error());
  }
  if (verb == "unload") {
    if (auto r = Unload(); !r) return Fail(r.error());
    return 0;
  }
  if (verb == "status") {
    auto loaded = IsLoaded();
    if (!loaded) return Fail(loaded.error());
    std::printf("%s\n", *loaded ? "loaded" : "not loaded");
    return 0;
  }
  return std::fprintf(stderr, "kleap-kexec: unknown command %s\n%s", verb.c_str(), kUsage), 2;
}
