// net.ipv4 and net.ipv6 sysctls of the namespace. Every readable, writable value is
// recorded with what a new namespace has on the dumping kernel; restore writes only
// the values that differ from what the target has, and puts the old ones back if a
// later step fails.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>

#include "engine/base/unique_fd.h"
#include "engine/net/netconf_impl.h"
#include "engine/net/netns.h"

namespace kleap::net {
namespace {

constexpr char kRoot[] = "/proc/sys/net/";
constexpr size_t kMaxValue = 4096;

// Values that can be read but not written back as read, or that make no sense to.
bool Ignored(const std::string& path) {
  auto ends = [&](const char* s) {
    std::string e = s;
    return path.size() >= e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0;
  };
  return ends("/flush") || ends("/stable_secret") || ends("base_reachable_time") ||
         ends("retrans_time");  // the _ms twins carry the same value at full precision
}

Result<std::string> ReadValue(const std::string& path) {
  UniqueFd fd(open((kRoot + path).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError() << "open " << kRoot << path;
  std::string out(kMaxValue, '\0');
  ssize_t n = read(fd.get(), out.data(), out.size());
  if (n < 0) return ErrnoError() << "read " << kRoot << path;
  out.resize(size_t(n));
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

Result<void> WriteValue(const std::string& path, const std::string& value) {
  UniqueFd fd(open((kRoot + path).c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoError() << "sysctl net." << path << ": open";
  std::string v = value + "\n";
  if (write(fd.get(), v.data(), v.size()) != ssize_t(v.size()))
    return ErrnoError() << "sysctl net." << path << " = " << value;
  return Ok();
}

// Every readable and writable file under ipv4/ and ipv6/, as "ipv4/conf/all/forwarding".
void Walk(const std::string& rel, std::map<std::string, std::string>* out) {
  DIR* d = opendir((kRoot + rel).c_str());
  if (!d) return;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string path = rel + "/" + name;
    struct stat st;
    if (stat((kRoot + path).c_str(), &st) < 0) continue;
    if (S_ISDIR(st.st_mode)) {
      Walk(path, out);
    } else if ((st.st_mode & 0444) && (st.st_mode & 0200) && !Ignored(path)) {
      auto v = ReadValue(path);
      if (v && v->size() < kMaxValue) (*out)[path] = *v;
    }
  }
  closedir(d);
}

std::map<std::string, std::string> ReadAll() {
  std::map<std::string, std::string> all;
  Walk("ipv4", &all);
  Walk("ipv6", &all);
  return all;
}

// "ipv4/conf/eth0/forwarding" -> "ipv4/conf/default/forwarding": where a device's
// value comes from in a new namespace. Empty for a value that is not per device.
std::string DefaultOf(const std::string& path) {
  for (const char* dir : {"ipv4/conf/", "ipv6/conf/", "ipv4/neigh/", "ipv6/neigh/"}) {
    std::string p = dir;
    if (path.rfind(p, 0) != 0) continue;
    size_t slash = path.find('/', p.size());
    if (slash == std::string::npos) return "";
    return p + "default" + path.substr(slash);
  }
  return "";
}

// The device a per-device path names, or "" for global, all and default.
std::string DeviceOf(const std::string& path) {
  for (const char* dir : {"ipv4/conf/", "ipv6/conf/", "ipv4/neigh/", "ipv6/neigh/"}) {
    std::string p = dir;
    if (path.rfind(p, 0) != 0) continue;
    size_t slash = path.find('/', p.size());
    std::string dev = path.substr(p.size(), slash - p.size());
    return dev == "all" || dev == "default" ? "" : dev;
  }
  return "";
}

bool ValidPath(const std::string& p) {
  return (p.rfind("ipv4/", 0) == 0 || p.rfind("ipv6/", 0) == 0) &&
         p.find("..") == std::string::npos && p.find("//") == std::string::npos && p.back() != '/';
}

}  // namespace

Result<void> DumpSysctls(img::NetNs* out) {
  auto all = ReadAll();
  auto fresh = KLEAP_TRY(
      RunInFreshNetns([]() -> Result<std::map<std::string, std::string>> { return ReadAll(); }));
  for (auto& [path, value] : all) {
    auto* s = out->add_sysctls();
    s->set_path(path);
    s->set_value(value);
    std::string def = DefaultOf(path);
    auto it = fresh.find(fresh.count(path) || def.empty() ? path : def);
    if (it != fresh.end()) {
      s->set_has_fresh(true);
      s->set_fresh(it->second);
    }
  }
  return Ok();
}

Result<void> CheckSysctls(RestoreCtx& ctx) {
  std::set<std::string> devices;
  for (auto& l : ctx.image.links()) devices.insert(l.name());
  for (auto& s : ctx.image.sysctls()) {
    if (!ValidPath(s.path()) || s.value().size() >= kMaxValue ||
        s.value().find('\n') != std::string::npos)
      return Err(EINVAL) << "sysctl net." << s.path() << ": bad path or value in the image";
    std::string dev = DeviceOf(s.path());
    if (!dev.empty() && !devices.count(dev))
      return Err(EINVAL) << "sysctl net." << s.path() << ": device " << dev
                         << " is not in the image";
    if (!dev.empty()) continue;  // checked once the device exists
    if (access((kRoot + s.path()).c_str(), W_OK) == 0) continue;
    // A value nobody changed may be missing on the target kernel; a changed one may not.
    if (s.has_fresh() && s.fresh() == s.value()) continue;
    return Err(ENOENT) << "sysctl net." << s.path() << " = " << s.value()
                       << ": not settable in the target namespace";
  }
  return Ok();
}

Result<void> ApplySysctls(RestoreCtx& ctx, bool per_device) {
  // all before default before the rest: writing conf/all changes every device.
  std::vector<const img::Sysctl*> order;
  for (auto& s : ctx.image.sysctls())
    if (DeviceOf(s.path()).empty() != per_device) order.push_back(&s);
  auto rank = [](const img::Sysctl* s) {
    return s->path().find("/all/") != std::string::npos       ? 0
           : s->path().find("/default/") != std::string::npos ? 1
                                                              : 2;
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](const img::Sysctl* a, const img::Sysctl* b) { return rank(a) < rank(b); });
  for (const img::Sysctl* s : order) {
    auto now = ReadValue(s->path());
    if (!now) {
      if (s->has_fresh() && s->fresh() == s->value()) continue;
      return Err(now.error().code()) << "sysctl net." << s->path() << " = " << s->value()
                                     << ": not in the target namespace";
    }
    if (*now == s->value()) continue;
    KLEAP_TRY(WriteValue(s->path(), s->value()));
    ctx.undo.Add("sysctl net." + s->path(),
                 [path = s->path(), old = *now]() { return WriteValue(path, old); });
  }
  return Ok();
}

}  // namespace kleap::net
