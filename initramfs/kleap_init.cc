// kleap-init: the first userspace of the new kernel, run as PID 1 (init= or rdinit=).
//
// It finds the store named by kleap.resume=, validates it, and restores the system in
// it with itself as its PID 1: it becomes the old init (engine.h, RestoreOptions::
// as_init), and the controller it forks wipes the store once everything runs. On
// anything unexpected it logs the reason to /dev/kmsg and execs the real init, so the
// machine always comes up, keeping the store for `kleap inspect`: PID 1 must never exit
// or crash, since either panics the kernel. Fatal signals and std::terminate take the
// same fallback path.
#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "engine/base/proc.h"
#include "engine/engine.h"
#include "engine/images/image_set.h"
#include "engine/net/netconf.h"
#include "imagestore/store_image_set.h"
#include "memstore/store.h"

namespace {

int g_kmsg = -1;
char g_fallback[256] = "";  // the real init, as a C string for the signal path

// Writes one line to /dev/kmsg (and the console when kmsg is not there yet).
// Async-signal-safe when `msg` is a plain C string.
void Log(const char* msg) {
  char line[1024];
  int n = snprintf(line, sizeof line, "<6>kleap-init: %s\n", msg);
  if (n < 0) return;
  if (n >= int(sizeof line)) n = int(sizeof line) - 1;
  if (g_kmsg >= 0 && write(g_kmsg, line, size_t(n)) == n) return;
  (void)!write(STDERR_FILENO, line + 3, size_t(n - 3));
}

// Whether `path` is this very program (async-signal-safe: stat only).
bool SameFileSafe(const char* path) {
  struct stat sa, sb;
  return stat(path, &sa) == 0 && stat("/proc/self/exe", &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// Execs the real init. `fallback` says the boot could not go on as planned.
[[noreturn]] void ExecInit(const char* why, bool fallback) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s: %s",
           fallback ? "falling back to the normal boot" : "handing over to the normal init", why);
  Log(msg);
  const char* candidates[] = {g_fallback,  "/init",     "/sbin/init",
                              "/etc/init", "/bin/init", "/bin/sh"};
  for (const char* path : candidates) {
    if (!path[0] || access(path, X_OK) != 0 || SameFileSafe(path)) continue;
    char* const argv[] = {const_cast<char*>(path), nullptr};
    char* const envp[] = {const_cast<char*>("HOME=/"), const_cast<char*>("TERM=linux"), nullptr};
    execve(path, argv, envp);
  }
  Log("no init could be executed; waiting forever instead of exiting");
  for (;;) pause();
}

[[noreturn]] void ExecFallback(const char* why) {
  ExecInit(why, true);
}

void OnFatalSignal(int sig) {
  char msg[64];
  snprintf(msg, sizeof msg, "crashed with signal %d", sig);
  ExecFallback(msg);
}

void InstallCrashPath() {
  static char altstack[64 * 1024];
  stack_t ss{};
  ss.ss_sp = altstack;
  ss.ss_size = sizeof altstack;
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_handler = OnFatalSignal;
  sa.sa_flags = SA_ONSTACK | SA_NODEFER;
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS, SIGTRAP})
    sigaction(sig, &sa, nullptr);
  std::set_terminate([] { ExecFallback("internal error (std::terminate)"); });
}

uint64_t BoottimeNs() {
  timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// What kleap-init mounted, to undo before handing over.
std::vector<std::string> g_mounted;

void MountIfMissing(const char* fstype, const char* target) {
  mkdir(target, 0755);
  struct stat a, b;
  std::string parent = std::string(target) + "/..";
  if (stat(target, &a) == 0 && stat(parent.c_str(), &b) == 0 && a.st_dev != b.st_dev)
    return;  // already a mount
  if (mount(fstype, target, fstype, MS_NOSUID | MS_NOEXEC, nullptr) == 0)
    g_mounted.push_back(target);
}

std::string Param(const std::string& cmdline, const std::string& key) {
  std::string found;
  for (auto& p : kleap::SplitString(std::string(kleap::Trim(cmdline)), ' ')) {
    if (p == "--") break;
    if (p.rfind(key + "=", 0) == 0) found = p.substr(key.size() + 1);  // the last one wins
  }
  return found;
}

bool Exists(const std::string& path) {
  return access(path.c_str(), F_OK) == 0;
}

bool SameFile(const std::string& a, const char* b) {
  struct stat sa, sb;
  return stat(a.c_str(), &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// Started as rdinit= from an initramfs, whose own /init is the normal boot.
bool InInitramfs() {
  struct statfs fs;
  return statfs("/", &fs) == 0 && (fs.f_type == RAMFS_MAGIC || fs.f_type == TMPFS_MAGIC);
}

// Loads modules by name: modprobe when the initrd has one, else finit_module on the
// paths modules.dep gives (dependencies first). Failures are left to what needs them.
void LoadModules(const std::vector<std::string>& mods) {
  const char* modprobes[] = {"/sbin/modprobe", "/usr/sbin/modprobe", "/bin/modprobe"};
  for (const char* mp : modprobes) {
    if (access(mp, X_OK) != 0) continue;
    // One modprobe for all of them (-a): it goes on past one that fails.
    std::vector<const char*> argv{mp, "-q", "-a"};
    for (auto& mod : mods) argv.push_back(mod.c_str());
    argv.push_back(nullptr);
    pid_t pid = fork();
    if (pid == 0) {
      execv(mp, const_cast<char* const*>(argv.data()));
      _exit(127);
    }
    int st;
    if (pid > 0) waitpid(pid, &st, 0);
    return;
  }
  utsname u;
  uname(&u);
  std::string dir = std::string("/lib/modules/") + u.release;
  auto dep = kleap::ReadFileToString(dir + "/modules.dep");
  if (!dep) {
    Log("no modprobe and no modules.dep: can't load modules");
    return;
  }
  // "kernel/drivers/nvdimm/nd_pmem.ko: kernel/drivers/nvdimm/libnvdimm.ko ..."
  for (auto& mod : mods) {
    for (auto& line : kleap::SplitString(*dep, '\n')) {
      auto colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string path = line.substr(0, colon);
      std::string base = path.substr(path.rfind('/') + 1);
      if (base.rfind(mod + ".ko", 0) != 0) continue;
      std::vector<std::string> order =
          kleap::SplitString(std::string(kleap::Trim(line.substr(colon + 1))), ' ');
      order.insert(order.begin(), path);
      for (auto it = order.rbegin(); it != order.rend(); ++it) {  // dependencies first
        if (it->empty()) continue;
        int fd = open((dir + "/" + *it).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        bool compressed = it->size() > 3 && it->compare(it->size() - 3, 3, ".ko") != 0;
        syscall(SYS_finit_module, fd, "", compressed ? 4 /* MODULE_INIT_COMPRESSED_FILE */ : 0);
        close(fd);
      }
      break;
    }
  }
}

// The legacy pmem modules, when /dev/pmemN is not there.
void LoadPmemModules() {
  LoadModules({"nd_e820", "nd_pmem"});
}

// Checks the store; returns the reason it can't be used, or "" when it is whole.
// `image_set`: it holds an image set (an inventory), not only blobs.
std::string CheckStore(const std::string& spec, bool* image_set = nullptr) {
  using namespace kleap::memstore;
  auto parsed = ParseSpec(spec);
  if (!parsed) return parsed.error().ToString();
  if (parsed->first == "pmem" && !Exists(parsed->second)) {
    LoadPmemModules();
    for (int i = 0; i < 500 && !Exists(parsed->second); ++i)
      usleep(10000);  // 5 s for udev-less device nodes
    if (!Exists(parsed->second))
      return "no store: " + parsed->second + " did not appear (is memmap= on the command line?)";
  }
  auto region = Region::Open(spec);
  if (!region) return "no store: " + region.error().ToString();
  uint64_t t0 = BoottimeNs();
  auto info = ReadInfo(**region);
  if (!info) return info.error().ToString();
  uint64_t bytes = 0;
  for (auto& b : info->blobs) {
    auto v = VerifyBlob(**region, b);
    if (!v) return v.error().ToString();
    bytes += b.size;
    if (image_set && b.name == kleap::kInventoryName) *image_set = true;
  }
  char msg[512];
  snprintf(
      msg, sizeof msg,
      "store whole: %s, %zu blobs, %llu bytes, generation %llu, written by kernel %s (boot %s); "
      "verified in %.3f s",
      spec.c_str(), info->blobs.size(), (unsigned long long)bytes,
      (unsigned long long)info->generation, info->writer_release.c_str(),
      info->writer_boot_id.c_str(), double(BoottimeNs() - t0) / 1e9);
  Log(msg);
  return "";
}

// Restores the system in the store with this process as its PID 1. Returns the reason
// only when nothing was created; otherwise this process becomes the old init, or falls
// back (ExecFallback, or the controller execs the real init in it).
std::string RestoreSystem(const std::string& spec) {
  using namespace kleap;
  auto region = memstore::Region::Open(spec);
  if (!region) return "no store: " + region.error().ToString();
  auto images = imagestore::OpenStoreImageSet(std::move(*region));
  if (!images) return "the store: " + images.error().ToString();
  uint64_t t0 = BoottimeNs();
  // The modules the old kernel had loaded (its NIC's driver among them), oldest first
  // (/proc/modules lists the newest first).
  if ((*images)->Has(kModulesImage)) {
    auto blob = (*images)->OpenBlob(kModulesImage);
    std::string text(blob ? (*blob)->size() : 0, '\0');
    if (blob && (*blob)->ReadAt(0, text.data(), text.size())) {
      std::vector<std::string> mods;
      for (auto& line : SplitString(text, '\n'))
        if (auto sp = line.find(' '); sp != std::string::npos) mods.push_back(line.substr(0, sp));
      LoadModules(std::vector<std::string>(mods.rbegin(), mods.rend()));
    }
  }
  // The old system's mounts, and the files of its tmpfs mounts, before its tasks.
  if (auto m = RestoreMounts(**images); !m)
    return "the old system's mounts: " + m.error().ToString();
  // Its network configuration: links, addresses, routes, rules, nftables; its TCP
  // connections locked first, so that no packet for them meets a kernel that would
  // answer with a RST.
  if (auto l = LockSetConnections(**images); !l)
    return "lock the old system's connections: " + l.error().ToString();
  if ((*images)->Has(net::kNetNsImage)) {
    auto ns = net::NetnsByPid(getpid());
    auto r = ns ? net::RestoreNetns(*ns, **images) : Result<void>(ns.error());
    if (!r) return "the old system's network configuration: " + r.error().ToString();
  }
  char msg[160];
  snprintf(msg, sizeof msg, "modules, mounts and network of the old system in %.3f s",
           double(BoottimeNs() - t0) / 1e9);
  Log(msg);
  RestoreOptions o;
  o.as_init = true;
  o.detach = true;
  o.blobs_verified = true;  // CheckStore read every blob against its checksum
  o.init_fallback = ExecFallback;
  o.fallback_init = g_fallback;
  o.init_done = [spec](const RestoreResult& r) {
    char msg[256];
    snprintf(msg, sizeof msg,
             "restored %zu tasks (%llu MiB of memory) in %.3f s as PID 1; wiping the store",
             r.tasks, (unsigned long long)(r.page_bytes >> 20), r.seconds);
    Log(msg);
    auto region = memstore::Region::Open(spec);
    auto w = region ? (*region)->Wipe() : Result<void>(region.error());
    if (!w) Log(("wiping the store failed: " + w.error().ToString()).c_str());
  };
  auto r = RestoreTree(o, **images);
  return "the restore failed before any task was made: " +
         (r ? std::string("it returned") : r.error().ToString());
}

[[noreturn]] void Run() {
  MountIfMissing("devtmpfs", "/dev");
  g_kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
  char start[96];
  snprintf(start, sizeof start, "start %llu (CLOCK_BOOTTIME ns), pid %d",
           (unsigned long long)BoottimeNs(), getpid());
  Log(start);
  MountIfMissing("proc", "/proc");
  MountIfMissing("sysfs", "/sys");
  auto cmdline = kleap::ReadFileToString("/proc/cmdline");
  std::string cl = cmdline ? *cmdline : "";
  std::string real_init = Param(cl, "kleap.init");
  if (real_init.empty()) real_init = InInitramfs() && Exists("/init") ? "/init" : "/sbin/init";
  if (SameFile(real_init, "/proc/self/exe")) {
    Log("kleap.init= names kleap-init itself; using /sbin/init");
    real_init = InInitramfs() && Exists("/init") ? "/init" : "/sbin/init";
  }
  snprintf(g_fallback, sizeof g_fallback, "%s", real_init.c_str());
  std::string spec = Param(cl, "kleap.resume");
  std::string why;
  bool normal = spec.empty();  // nothing was to be restored: no fallback
  if (spec.empty()) {
    why = "no kleap.resume= on the command line";
  } else {
    bool image_set = false;
    why = CheckStore(spec, &image_set);
    if (why.empty() && !image_set) {
      normal = true;
      why = "the store is whole but holds no image set: nothing to restore";
    } else if (why.empty()) {
      why = RestoreSystem(spec);  // returns only when it could not start
    }
  }
  // Hand over a system as the normal boot expects it.
  for (auto it = g_mounted.rbegin(); it != g_mounted.rend(); ++it)
    if (*it != "/dev") umount2(it->c_str(), MNT_DETACH);
  ExecInit(why.c_str(), !normal);
}

// Not PID 1 (an admin or a test): check what a boot with this command line would find,
// print it, and exit 0 when the store is whole, 1 otherwise. Nothing is mounted or exec'd.
int CheckOnly(int argc, char** argv) {
  std::string cl;
  for (int i = 1; i + 1 < argc; ++i)
    if (!strcmp(argv[i], "--cmdline")) cl = argv[i + 1];
  if (cl.empty()) {
    auto c = kleap::ReadFileToString("/proc/cmdline");
    cl = c ? *c : "";
  }
  std::string spec = Param(cl, "kleap.resume");
  std::string why = spec.empty() ? "no kleap.resume= on the command line" : CheckStore(spec);
  if (why.empty()) return 0;
  std::fprintf(stderr, "kleap-init: a boot would fall back to the normal init: %s\n", why.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (getpid() != 1) return CheckOnly(argc, argv);
  InstallCrashPath();
  Run();  // never returns
  ExecFallback("internal error: Run returned");
}
