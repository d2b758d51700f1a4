#include "upgrader/kexec.h"

#include <fcntl.h>
#include <linux/reboot.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "engine/base/proc.h"
#include "engine/base/unique_fd.h"

namespace kleap::upgrader {
namespace {

constexpr unsigned long kKexecFileUnload = 1, kKexecFileNoInitramfs = 4;

std::string Key(const std::string& param) {
  return param.substr(0, param.find('='));
}

}  // namespace

std::vector<std::string> SplitCmdline(const std::string& cmdline) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false, have = false;
  for (char c : cmdline) {
    if (c == '"') {
      quoted = !quoted;
      cur += c;
      have = true;
    } else if ((c == ' ' || c == '\n' || c == '\t') && !quoted) {
      if (have) out.push_back(cur);
      cur.clear();
      have = false;
    } else {
      cur += c;
      have = true;
    }
  }
  if (have) out.push_back(cur);
  return out;
}

Result<std::string> BuildCmdline(const CmdlineOptions& o) {
  std::vector<std::string> keep, memmaps, init_args;
  std::string real_init;
  auto params = SplitCmdline(o.current);
  // Everything after "--" belongs to init and stays last.
  auto dashdash = std::find(params.begin(), params.end(), "--");
  if (dashdash != params.end()) {
    init_args.assign(dashdash, params.end());
    params.erase(dashdash, params.end());
  }
  std::string entry_key = o.entry.empty() ? "" : Key(o.entry);
  std::string entry_path = o.entry.empty() ? "" : o.entry.substr(o.entry.find('=') + 1);
  for (auto& p : params) {
    std::string k = Key(p);
    std::string v = p.find('=') == std::string::npos ? "" : p.substr(p.find('=') + 1);
    // The real init of an earlier upgrade is carried forward, never kleap-init itself.
    if (k == "kleap.init") {
      if (v != entry_path) real_init = v;
      continue;
    }
    if (k.rfind("kleap.", 0) == 0) continue;
    // Only the parameter the entry takes over moves to kleap.init=; the other stays.
    if (!entry_key.empty() && k == entry_key) {
      if (v != entry_path && real_init.empty()) real_init = v;
      continue;
    }
    if (k == "memmap") memmaps.push_back(p);
    keep.push_back(p);
  }
  if (o.store.rfind("pmem:", 0) == 0 && memmaps.empty())
    return Err(ENOENT)
           << "store " << o.store
           << " needs a memmap= region on the kernel command line, and the running "
           << "kernel has none (add e.g. memmap=256M!768M to both kernels' command lines)";
  std::string out;
  for (auto& p : keep) out += (out.empty() ? "" : " ") + p;
  if (!o.store.empty()) out += " kleap.resume=" + o.store;
  if (!real_init.empty()) out += " kleap.init=" + real_init;
  if (!o.entry.empty()) {
    if (Key(o.entry) != "init" && Key(o.entry) != "rdinit")
      return Err(EINVAL) << "entry '" << o.entry << "': expected init=PATH or rdinit=PATH";
    out += " " + o.entry;
  }
  if (!o.append.empty()) out += " " + o.append;
  for (auto& a : init_args) out += " " + a;
  while (!out.empty() && out[0] == ' ') out.erase(0, 1);
  if (out.size() >= 2048)
    return Err(E2BIG) << "the new command line is " << out.size()
                      << " bytes, more than the kernel takes";
  return out;
}

Result<void> Load(const LoadOptions& o) {
  UniqueFd kernel(open(o.kernel.c_str(), O_RDONLY | O_CLOEXEC));
  if (!kernel) return ErrnoError() << "kernel image " << o.kernel;
  UniqueFd initrd;
  unsigned long flags = 0;
  if (o.initrd.empty()) {
    flags |= kKexecFileNoInitramfs;
  } else {
    initrd.reset(open(o.initrd.c_str(), O_RDONLY | O_CLOEXEC));
    if (!initrd) return ErrnoError() << "initrd " << o.initrd;
  }
  long r = syscall(SYS_kexec_file_load, kernel.get(), initrd.get(), o.cmdline.size() + 1,
                   o.cmdline.c_str(), flags);
  if (r == 0) return Ok();
  int e = errno;
  switch (e) {
    case ENOSYS:
      return Err(e) << "the running kernel has no kexec_file_load (CONFIG_KEXEC_FILE)";
    case EKEYREJECTED:
    case EBADMSG:
    case ENOKEY:
      return Err(e) << "the running kernel rejected " << o.kernel
                    << ": its signature is not trusted";
    case EPERM:
      return Err(e) << "the running kernel refused to load " << o.kernel
                    << " (kernel lockdown, or missing CAP_SYS_BOOT)";
    case ENOEXEC:
      return Err(e) << o.kernel << " is not a kernel image the running kernel can load";
    case EBUSY:
      return Err(e) << "a kexec is already in progress";
    default:
      return Err(e) << "load " << o.kernel << (o.initrd.empty() ? "" : " with " + o.initrd);
  }
}

Result<void> Unload() {
  if (syscall(SYS_kexec_file_load, -1, -1, 0, nullptr, kKexecFileUnload) < 0)
    return ErrnoError() << "unload the staged kernel";
  return Ok();
}

Result<bool> IsLoaded() {
  auto s = KLEAP_TRY(ReadFileToString("/sys/kernel/kexec_loaded"));
  return !s.empty() && s[0] == '1';
}

Result<void> Execute() {
  if (!KLEAP_TRY(IsLoaded())) return Err(ENOENT) << "no kernel is staged for kexec";
  reboot(LINUX_REBOOT_CMD_KEXEC);
  return ErrnoError() << "kexec into the staged kernel";
}

}  // namespace kleap::upgrader
