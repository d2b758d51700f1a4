// kleap: the engine's command line.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/json.h"
#include "engine/base/log.h"
#include "engine/engine.h"
#include "engine/images/image_set.h"
#include "engine/net/netconf.h"
#include "imagestore/store_image_set.h"
#include "memstore/store.h"
#include "memstore/store_cli.h"

namespace kleap {
namespace {

constexpr int kExitOk = 0, kExitFail = 1, kExitUsage = 2;

const char kUsage[] =
    "Usage: kleap COMMAND [OPTIONS]\n"
    "Checkpoint and restore Linux process trees.\n"
    "\n"
    "Commands:\n"
    "  check --tree PID [--json]             report what in the tree can't be carried\n"
    "  dump --tree PID --images DIR [--leave-running] [--stats] [--mounts PATH]\n"
    "                                         freeze the tree and write its images\n"
    "  restore --images DIR [--detach] [--stats] [--mounts] [--as-init [--fallback-init PATH]]\n"
    "                                         rebuild the tree with the same PIDs and resume it\n"
    "  inspect DIR [--json]                  decode an image set\n"
    "  validate DIR                          check that a set is whole and restorable\n"
    "  net dump|restore (--netns NAME|--pid PID) --images DIR\n"
    "                                         the network configuration of a network namespace\n"
    "  net show --images DIR [--json]        decode a network image\n"
    "  store info|ls|cat NAME|wipe [--backend pmem:/dev/pmemN|dir:PATH] [--json] [--verify] "
    "[--yes]\n"
    "                                         look into, or wipe, a memstore\n"
    "\n"
    "Options:\n"
    "  --tree PID        the root of the tree\n"
    "  --netns NAME      net: the namespace /run/netns/NAME (as `ip netns` names it)\n"
    "  --pid PID         net: the network namespace of task PID\n"
    "  --images DIR      the image set: a directory (dump: an empty or new one), or a\n"
    "                    memstore, pmem:/dev/pmemN or dir:PATH\n"
    "  --leave-running   dump: let the tree run on afterwards instead of killing it\n"
    "  --detach          restore: print the root PID and return once the tree runs\n"
    "  --mounts PATH     dump: also the mounts at or under PATH, with the files of each tmpfs\n"
    "  --mounts          restore: first make those mounts again where they are missing\n"
    "  --as-init         restore: as PID 1 (of a new pid namespace), become the set's PID 1\n"
    "  --fallback-init PATH  restore --as-init: what PID 1 execs when the restore fails\n"
    "                    after its memory was replaced (default /sbin/init)\n"
    "  --vdso-proxy      restore: use vDSO trampolines even when the kernel's vDSO is the same\n"
    "  --stats           dump/restore: print one JSON line of timings on stdout\n"
    "  --json            machine-readable output\n"
    "  -v, --verbose     debug logging\n"
    "  -h, --help        this help\n"
    "      --version     print the version\n"
    "\n"
    "Exit status: 0 success, 1 failure (or problems found by check), 2 usage error.\n"
    "See kleap(1).\n";

struct Args {
  std::string command;
  std::vector<std::string> positional;
  pid_t tree = 0;
  pid_t pid = 0;
  std::string netns;
  std::string images;
  bool json = false, leave_running = false, detach = false, vdso_proxy = false, stats = false;
  bool as_init = false, restore_mounts = false;
  std::string fallback_init, mounts;
};

// restore --as-init: PID 1 of a pid namespace can only end the namespace when it fails.
void InitFallback(const char* why) {
  std::fprintf(stderr, "kleap: restore as init failed: %s\n", why);
  _exit(kExitFail);
}

int Usage(const std::string& msg) {
  std::fprintf(stderr, "kleap: %s\nTry 'kleap --help'.\n", msg.c_str());
  return kExitUsage;
}

long MaxRssKib() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

int Fail(const Error& e, const char* what) {
  KLOG(kError) << what << ": " << e.ToString();
  return kExitFail;
}

// An image set is a directory, or a memstore: "pmem:/dev/pmem0" or "dir:PATH".
bool IsStoreSpec(const std::string& s) {
  return s.rfind("pmem:", 0) == 0 || s.rfind("dir:", 0) == 0;
}

Result<std::unique_ptr<ImageWriter>> OpenWriter(const std::string& images) {
  if (!IsStoreSpec(images)) return CreateDirImageSet(images);
  auto region = KLEAP_TRY(memstore::Region::Create(images));
  return imagestore::CreateStoreImageSet(std::move(region));
}

Result<std::unique_ptr<ImageReader>> OpenReader(const std::string& images) {
  if (!IsStoreSpec(images)) return OpenDirImageSet(images);
  auto region = KLEAP_TRY(memstore::Region::Open(images));
  return imagestore::OpenStoreImageSet(std::move(region));
}

int RunDumpBlocked(const Args& a);

int RunCheck(const Args& a) {
  auto rep = CheckTree(a.tree);
  if (!rep) return Fail(rep.error(), "check failed");
  if (a.json) {
    std::ostringstream os;
    os << "{\"root\":" << a.tree << ",\"tasks\":[";
    for (size_t i = 0; i < rep->pids.size(); ++i) os << (i ? "," : "") << rep->pids[i];
    os << "],\"threads\":" << rep->threads
       << ",\"dumpable\":" << (rep->problems.empty() ? "true" : "false") << ",\"notes\":[";
    for (size_t i = 0; i < rep->notes.size(); ++i)
      os << (i ? "," : "") << JsonString(rep->notes[i]);
    os << "],\"problems\":[";
    for (size_t i = 0; i < rep->problems.size(); ++i) {
      auto& p = rep->problems[i];
      os << (i ? "," : "") << "{\"pid\":" << p.pid << ",\"object\":" << JsonString(p.object)
         << ",\"what\":" << JsonString(p.what) << ",\"reason\":" << JsonString(p.reason) << "}";
    }
    os << "]}\n";
    std::fputs(os.str().c_str(), stdout);
  } else {
    for (auto& p : rep->problems) std::printf("%s\n", p.ToString().c_str());
    for (auto& n : rep->notes) std::printf("note: %s\n", n.c_str());
    std::printf("%zu tasks, %zu threads: %s\n", rep->pids.size(), rep->threads,
                rep->problems.empty()
                    ? "everything can be carried"
                    : (std::to_string(rep->problems.size()) + " problems").c_str());
  }
  return rep->problems.empty() ? kExitOk : kExitFail;
}

int RunDump(const Args& a) {
  // While the tree is seized, Ctrl-C or a TERM waits for the dump to finish or fail:
  // either way the tree is left as the failure rule says.
  sigset_t block, old;
  sigemptyset(&block);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&block, sig);
  sigprocmask(SIG_BLOCK, &block, &old);
  int code = RunDumpBlocked(a);
  sigprocmask(SIG_SETMASK, &old, nullptr);
  return code;
}

int RunDumpBlocked(const Args& a) {
  auto w = OpenWriter(a.images);
  if (!w) return Fail(w.error(), "dump failed");
  DumpOptions o;
  o.root = a.tree;
  o.leave_running = a.leave_running;
  o.mounts = a.mounts;
  auto st = DumpTree(o, **w);
  if (!st) return Fail(st.error(), "dump failed");
  if (a.stats)
    std::printf(
        "{\"op\":\"dump\",\"seconds\":%.6f,\"freeze_seconds\":%.6f,\"bytes\":%llu,\"tasks\":%zu,"
        "\"threads\":%zu,\"max_rss_kib\":%ld}\n",
        st->seconds, st->freeze_seconds, (unsigned long long)st->page_bytes, st->tasks, st->threads,
        MaxRssKib());
  else
    KLOG(kInfo) << "dumped " << st->tasks << " tasks, " << st->threads << " threads, "
                << (st->page_bytes >> 20) << " MiB of memory into " << a.images
                << (a.leave_running ? "; the tree runs on" : "");
  return kExitOk;
}

int RunRestore(const Args& a) {
  auto r = OpenReader(a.images);
  if (!r) return Fail(r.error(), "restore failed");
  RestoreOptions opts;
  opts.detach = a.detach;
  opts.force_vdso_proxy = a.vdso_proxy;
  if (a.restore_mounts)
    if (auto m = RestoreMounts(**r); !m) return Fail(m.error(), "restore failed");
  if (a.as_init) {
    opts.as_init = true;
    opts.init_fallback = InitFallback;
    if (!a.fallback_init.empty()) opts.fallback_init = a.fallback_init;
    opts.init_done = [&](const RestoreResult& res) {
      std::fprintf(stderr, "kleap: restored %zu tasks as init in %.3f s\n", res.tasks, res.seconds);
      if (a.stats)
        std::printf("{\"op\":\"restore\",\"seconds\":%.6f,\"bytes\":%llu,\"max_rss_kib\":%ld}\n",
                    res.seconds, (unsigned long long)res.page_bytes, MaxRssKib());
      std::fflush(stdout);
    };
    auto res = RestoreTree(opts, **r);  // returns only when nothing was created
    return Fail(res.error(), "restore failed");
  }
  if (a.detach) {
    auto res = RestoreTree(opts, **r);
    if (!res) return Fail(res.error(), "restore failed");
    std::printf("%d\n", res->root);
    if (a.stats)
      std::printf("{\"op\":\"restore\",\"seconds\":%.6f,\"bytes\":%llu,\"max_rss_kib\":%ld}\n",
                  res->seconds, (unsigned long long)res->page_bytes, MaxRssKib());
    std::fflush(stdout);
    return kExitOk;
  }
  auto res = RestoreTree(opts, **r);
  if (!res) return Fail(res.error(), "restore failed");
  if (a.stats)
    std::printf("{\"op\":\"restore\",\"seconds\":%.6f,\"bytes\":%llu,\"max_rss_kib\":%ld}\n",
                res->seconds, (unsigned long long)res->page_bytes, MaxRssKib());
  return res->exit_status;
}

int RunInspect(const Args& a) {
  if (a.positional.size() != 1) return Usage("inspect takes one image directory");
  auto r = OpenReader(a.positional[0]);
  if (!r) return Fail(r.error(), "inspect failed");
  // A network image set is decoded by its own code.
  auto text =
      (*r)->Has(net::kNetNsImage) ? net::ShowNetImage(**r, a.json) : InspectImages(**r, a.json);
  if (!text) return Fail(text.error(), "inspect failed");
  std::fputs(text->c_str(), stdout);
  return kExitOk;
}

int RunNet(const Args& a) {
  const std::string sub = a.positional.empty() ? "" : a.positional[0];
  if (a.positional.size() != 1) return Usage("net takes one of dump, restore, show");
  if (a.images.empty()) return Usage("net " + sub + " needs --images DIR");
  if (sub == "show") {
    auto r = OpenReader(a.images);
    if (!r) return Fail(r.error(), "net show failed");
    auto text = net::ShowNetImage(**r, a.json);
    if (!text) return Fail(text.error(), "net show failed");
    std::fputs(text->c_str(), stdout);
    return kExitOk;
  }
  if (sub != "dump" && sub != "restore") return Usage("unknown net command " + sub);
  if (a.netns.empty() == (a.pid == 0))
    return Usage("net " + sub + " needs --netns NAME or --pid PID");
  auto ns = a.netns.empty() ? net::NetnsByPid(a.pid) : net::NetnsByName(a.netns);
  if (!ns) return Usage(ns.error().ToString());
  if (sub == "dump") {
    auto w = OpenWriter(a.images);
    if (!w) return Fail(w.error(), "net dump failed");
    auto st = net::DumpNetns(*ns, **w);
    if (!st) return Fail(st.error(), "net dump failed");
    KLOG(kInfo) << "dumped the network configuration of " << ns->label << " into " << a.images;
    return kExitOk;
  }
  auto r = OpenReader(a.images);
  if (!r) return Fail(r.error(), "net restore failed");
  auto st = net::RestoreNetns(*ns, **r);
  if (!st) return Fail(st.error(), "net restore failed");
  KLOG(kInfo) << "restored the network configuration of " << ns->label << " from " << a.images;
  return kExitOk;
}

int RunValidate(const Args& a) {
  if (a.positional.size() != 1) return Usage("validate takes one image directory");
  auto r = OpenReader(a.positional[0]);
  if (!r) return Fail(r.error(), "invalid image set");
  // A network image set is checked by its own code.
  auto v = (*r)->Has(net::kNetNsImage) ? net::ValidateNetImage(**r) : ValidateImages(**r);
  if (!v) return Fail(v.error(), "invalid image set");
  std::printf("%s: whole, consistent and restorable (%d images)\n", a.positional[0].c_str(),
              (*r)->inventory().images_size());
  return kExitOk;
}

int Main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "store")
    return memstore::RunStoreCommand(std::vector<std::string>(argv + 2, argv + argc));
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto need = [&](const char* opt) -> const char* {
      if (i + 1 >= argc) return nullptr;
      (void)opt;
      return argv[++i];
    };
    if (s == "-h" || s == "--help") {
      std::fputs(kUsage, stdout);
      return kExitOk;
    } else if (s == "--version") {
      std::printf("kleap %s\n", KLEAP_VERSION);
      return kExitOk;
    } else if (s == "--tree" || s == "--pid") {
      const char* v = need(s.c_str());
      if (!v) return Usage(s + " needs a PID");
      char* end;
      long pid = strtol(v, &end, 10);
      if (*end || pid <= 0) return Usage(s + ": not a PID: " + v);
      (s == "--tree" ? a.tree : a.pid) = pid_t(pid);
    } else if (s == "--netns") {
      const char* v = need("--netns");
      if (!v) return Usage("--netns needs a name");
      a.netns = v;
    } else if (s == "--images") {
      const char* v = need("--images");
      if (!v) return Usage("--images needs a directory");
      a.images = v;
    } else if (s == "--json") {
      a.json = true;
    } else if (s == "--leave-running") {
      a.leave_running = true;
    } else if (s == "--detach" || s == "-d") {
      a.detach = true;
    } else if (s == "--mounts" && a.command == "dump") {
      const char* v = need("--mounts");
      if (!v || v[0] != '/') return Usage("dump --mounts needs an absolute PATH");
      a.mounts = v;
    } else if (s == "--mounts") {
      a.restore_mounts = true;
    } else if (s == "--as-init") {
      a.as_init = true;
    } else if (s == "--fallback-init") {
      const char* v = need("--fallback-init");
      if (!v) return Usage(s + " needs a PATH");
      a.fallback_init = v;
    } else if (s == "--vdso-proxy") {
      a.vdso_proxy = true;
    } else if (s == "--stats") {
      a.stats = true;
    } else if (s == "-v" || s == "--verbose") {
      SetLogLevel(LogLevel::kDebug);
    } else if (s.size() > 1 && s[0] == '-') {
      return Usage("unknown option " + s);
    } else if (a.command.empty()) {
      a.command = s;
    } else {
      a.positional.push_back(s);
    }
  }
  if (a.command.empty()) return Usage("no command");
  if (a.command == "check" || a.command == "dump") {
    if (!a.tree) return Usage(a.command + " needs --tree PID");
  }
  if ((a.command == "dump" || a.command == "restore") && a.images.empty())
    return Usage(a.command + " needs --images DIR");
  if (a.command == "check") return RunCheck(a);
  if (a.command == "dump") return RunDump(a);
  if (a.command == "restore") return RunRestore(a);
  if (a.command == "inspect") return RunInspect(a);
  if (a.command == "validate") return RunValidate(a);
  if (a.command == "net") return RunNet(a);
  return Usage("unknown command " + a.command);
}

}  // namespace
}  // namespace kleap

int main(int argc, char** argv) {
  return kleap::Main(argc, argv);
}
