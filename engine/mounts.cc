// The mounts of a whole system, for an upgrade: what the old system had mounted beside
// its root filesystem, and the files of each tmpfs, which live only in memory.
//
// Dump (with the tree frozen): /proc/self/mountinfo, parents before children. A kernel
// filesystem (proc, sysfs, devtmpfs, devpts, cgroup2, ...) is recorded as type, source,
// flags and options: the new kernel fills it. A tmpfs or ramfs also gets its files,
// walked through a detached copy of the mount (open_tree OPEN_TREE_CLONE), so that
// whatever is mounted over its directories doesn't hide them: directories, regular
// files with their bytes, symlinks, hard links, fifos and device nodes, with owner,
// mode and times. Sockets are left out: a unix socket's bind makes its file again.
// A bind mount (a root other than "/", or a second mount of one filesystem) is recorded
// as such.
//
// Restore (kleap-init, before any task): each mount is made again where it is missing,
// and each tmpfs is filled. A mount of the same type already at its place (the /proc,
// /sys and /dev kleap-init made) is kept.
#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <set>

#include "engine/base/log.h"
#include "engine/base/page.h"
#include "engine/base/proc.h"
#include "engine/context.h"
#include "engine/engine.h"
#include "engine/images/mounts.pb.h"

namespace kleap {
namespace {

constexpr char kMountsImage[] = "mounts.img";
constexpr unsigned kOpenTreeClone = 1;  // OPEN_TREE_CLONE
constexpr uint64_t kMaxTmpfsBytes = 1ull << 40;

struct FlagName {
  const char* name;
  unsigned long flag;
};
constexpr FlagName kFlags[] = {{"ro", MS_RDONLY},        {"nosuid", MS_NOSUID},
                               {"nodev", MS_NODEV},      {"noexec", MS_NOEXEC},
                               {"noatime", MS_NOATIME},  {"nodiratime", MS_NODIRATIME},
                               {"relatime", MS_RELATIME}};
constexpr unsigned long kAllFlags =
    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME;

uint64_t ParseFlags(const std::string& opts) {
  uint64_t f = 0;
  for (auto& o : SplitString(opts, ','))
    for (auto& k : kFlags)
      if (o == k.name) f |= k.flag;
  return f;
}

// The filesystem's own options, without the read-only state (a mount flag).
std::string FsData(const std::string& super) {
  std::string out;
  for (auto& o : SplitString(super, ',')) {
    if (o == "rw" || o == "ro" || o.empty()) continue;
    out += (out.empty() ? "" : ",") + o;
  }
  return out;
}

bool IsMemoryFs(const std::string& t) {
  return t == "tmpfs" || t == "ramfs";
}

int64_t Ns(const timespec& t) {
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}
timespec Ts(int64_t ns) {
  return {time_t(ns / 1000000000), long(ns % 1000000000)};
}

struct TmpfsWalk {
  BlobWriter* blob;
  img::TmpfsImage* image;
  std::string where;
  uint64_t offset = 0;
  std::map<std::pair<dev_t, ino_t>, std::string> seen;  // inodes with several links

  Result<void> Walk(int dir, const std::string& rel) {
    // (A readable descriptor of its own: `dir` may be open_tree's O_PATH one.)
    int own = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR* d = own < 0 ? nullptr : fdopendir(own);
    if (!d) return ErrnoError() << where << "/" << rel << ": opendir";
    std::vector<std::string> names;
    errno = 0;
    while (dirent* e = readdir(d)) {
      if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) names.push_back(e->d_name);
      errno = 0;
    }
    int err = errno;
    closedir(d);
    if (err) {
      errno = err;
      return ErrnoError() << where << "/" << rel << ": readdir";
    }
    std::sort(names.begin(), names.end());
    for (auto& n : names) KLEAP_TRY(Entry(dir, n, rel.empty() ? n : rel + "/" + n));
    return Ok();
  }

  Result<void> Entry(int dir, const std::string& name, const std::string& rel) {
    struct stat st;
    if (fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0)
      return ErrnoError() << where << "/" << rel << ": stat";
    if (S_ISSOCK(st.st_mode)) return Ok();  // a bind makes it again
    img::TmpfsEntry* e = image->add_entries();
    e->set_path(rel);
    e->set_mode(st.st_mode);
    e->set_uid(st.st_uid);
    e->set_gid(st.st_gid);
    e->set_atime_ns(Ns(st.st_atim));
    e->set_mtime_ns(Ns(st.st_mtim));
    if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
      auto [it, first] = seen.emplace(std::make_pair(st.st_dev, st.st_ino), rel);
      if (!first) {
        e->set_hardlink(true);
        e->set_link(it->second);
        return Ok();
      }
    }
    if (S_ISDIR(st.st_mode)) {
      int sub = openat(dir, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) return ErrnoError() << where << "/" << rel << ": open";
      auto r = Walk(sub, rel);
      close(sub);
      return r;
    }
    if (S_ISLNK(st.st_mode)) {
      std::string target(size_t(st.st_size) + 1, '\0');
      ssize_t n = readlinkat(dir, name.c_str(), target.data(), target.size());
      if (n < 0) return ErrnoError() << where << "/" << rel << ": readlink";
      target.resize(size_t(n));
      e->set_link(target);
      return Ok();
    }
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) e->set_rdev(st.st_rdev);
    if (!S_ISREG(st.st_mode)) return Ok();
    int fd = openat(dir, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
    if (fd < 0) fd = openat(dir, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return ErrnoError() << where << "/" << rel << ": open";
    std::vector<char> buf(1 << 20);
    uint64_t size = 0;
    for (;;) {
      ssize_t n = read(fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        close(fd);
        return ErrnoError() << where << "/" << rel << ": read";
      }
      if (n == 0) break;
      if (auto w = blob->Write(buf.data(), size_t(n)); !w) {
        close(fd);
        return std::move(w).error();
      }
      size += uint64_t(n);
    }
    close(fd);
    e->set_offset(offset);
    e->set_size(size);
    offset += size;
    return Ok();
  }
};

}  // namespace

Result<void> DumpMounts(ImageWriter& images, const std::string& under) {
  auto mounts = KLEAP_TRY(ReadMountInfo(getpid()));
  auto inside = [&](const std::string& p) {
    return under == "/" || p == under || p.rfind(under + "/", 0) == 0;
  };
  img::MountTable table;
  std::set<uint64_t> filled;  // filesystems whose files are in the set
  int n = 0;
  for (auto& m : mounts) {
    if (m.mount_point == "/" || !inside(m.mount_point)) continue;  // the boot mounts the root
    img::Mount* out = table.add_mounts();
    uint64_t dev = makedev(m.dev_major, m.dev_minor);
    out->set_target(m.mount_point);
    out->set_fstype(m.fstype);
    out->set_source(m.source);
    out->set_root(m.root);
    out->set_flags(ParseFlags(m.mount_options));
    out->set_data(FsData(m.super_options));
    out->set_dev(dev);
    if (!IsMemoryFs(m.fstype) || !filled.insert(dev).second) continue;
    // The files, through a copy of the mount without what is mounted over it.
    int tree = int(syscall(SYS_open_tree, AT_FDCWD, m.mount_point.c_str(), kOpenTreeClone));
    if (tree < 0) return ErrnoError() << "mount " << m.mount_point << ": open_tree";
    std::string name = "tmpfs-" + std::to_string(n++);
    auto blob = KLEAP_TRY(images.CreateBlob(name + ".data"));
    img::TmpfsImage image;
    TmpfsWalk walk{blob.get(), &image, m.mount_point};
    struct stat st;
    if (fstat(tree, &st) == 0) {
      img::TmpfsEntry* root = image.add_entries();
      root->set_mode(st.st_mode);
      root->set_uid(st.st_uid);
      root->set_gid(st.st_gid);
      root->set_atime_ns(Ns(st.st_atim));
      root->set_mtime_ns(Ns(st.st_mtim));
    }
    auto r = walk.Walk(tree, "");
    close(tree);
    KLEAP_TRY(std::move(r));
    KLEAP_TRY(blob->Close());
    KLEAP_TRY(images.WriteMessage(name + ".img", image));
    out->set_content(name + ".img");
    out->set_blob(name + ".data");
  }
  return images.WriteMessage(kMountsImage, table);
}

namespace {

Result<void> MakeDirs(const std::string& path) {
  std::string at;
  for (auto& part : SplitString(path, '/')) {
    if (part.empty()) continue;
    at += "/" + part;
    if (mkdir(at.c_str(), 0755) < 0 && errno != EEXIST) return ErrnoError() << "mkdir " << at;
  }
  return Ok();
}

// A path inside the image: relative, no "..", no empty parts.
bool SafeRel(const std::string& p) {
  if (p.empty() || p[0] == '/') return false;
  for (auto& part : SplitString(p, '/'))
    if (part.empty() || part == "." || part == "..") return false;
  return true;
}

Result<void> FillTmpfs(ImageReader& images, const img::Mount& m) {
  img::TmpfsImage image;
  KLEAP_TRY(images.ReadMessage(m.content(), &image));
  auto blob = KLEAP_TRY(images.OpenBlob(m.blob()));
  int root = open(m.target().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return ErrnoError() << "open " << m.target();
  UniqueFd root_fd(root);
  std::vector<const img::TmpfsEntry*> dirs;
  std::vector<char> buf(1 << 20);
  for (auto& e : image.entries()) {
    std::string where = m.target() + "/" + e.path();
    bool is_root = e.path().empty();
    if (!is_root && !SafeRel(e.path())) return Err(EINVAL) << m.content() << ": bad path " << where;
    const char* p = is_root ? "." : e.path().c_str();
    mode_t mode = mode_t(e.mode());
    if (e.hardlink()) {
      if (!SafeRel(e.link())) return Err(EINVAL) << m.content() << ": bad link of " << where;
      if (linkat(root, e.link().c_str(), root, p, 0) < 0) return ErrnoError() << "link " << where;
      continue;
    }
    if (S_ISDIR(mode)) {
      if (!is_root && mkdirat(root, p, 0700) < 0 && errno != EEXIST)
        return ErrnoError() << "mkdir " << where;
      dirs.push_back(&e);
    } else if (S_ISLNK(mode)) {
      if (symlinkat(e.link().c_str(), root, p) < 0) return ErrnoError() << "symlink " << where;
    } else if (S_ISREG(mode)) {
      if (e.size() > kMaxTmpfsBytes || e.offset() > blob->size() ||
          e.size() > blob->size() - e.offset())
        return Err(EINVAL) << m.content() << ": " << where << ": bytes outside " << m.blob();
      int fd = openat(root, p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
      if (fd < 0) return ErrnoError() << "create " << where;
      UniqueFd f(fd);
      for (uint64_t done = 0; done < e.size();) {
        size_t n = size_t(std::min<uint64_t>(buf.size(), e.size() - done));
        KLEAP_TRY(blob->ReadAt(e.offset() + done, buf.data(), n));
        if (write(fd, buf.data(), n) != ssize_t(n)) return ErrnoError() << "write " << where;
        done += n;
      }
    } else if (S_ISFIFO(mode) || S_ISCHR(mode) || S_ISBLK(mode)) {
      if (mknodat(root, p, mode & S_IFMT, dev_t(e.rdev())) < 0)
        return ErrnoError() << "mknod " << where;
    } else {
      return Err(EINVAL) << m.content() << ": " << where << ": unknown type " << Hex(mode);
    }
    if (fchownat(root, p, uid_t(e.uid()), gid_t(e.gid()), AT_SYMLINK_NOFOLLOW) < 0)
      return ErrnoError() << "chown " << where;
    if (!S_ISLNK(mode) && fchmodat(root, p, mode & 07777, 0) < 0)
      return ErrnoError() << "chmod " << where;
    if (!S_ISDIR(mode)) {
      timespec t[2] = {Ts(e.atime_ns()), Ts(e.mtime_ns())};
      if (utimensat(root, p, t, AT_SYMLINK_NOFOLLOW) < 0) return ErrnoError() << "times " << where;
    }
  }
  // Directories last, deepest first: filling them changed their times.
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    timespec t[2] = {Ts((*it)->atime_ns()), Ts((*it)->mtime_ns())};
    const char* p = (*it)->path().empty() ? "." : (*it)->path().c_str();
    if (utimensat(root, p, t, AT_SYMLINK_NOFOLLOW) < 0)
      return ErrnoError() << "times " << m.target() << "/" << (*it)->path();
  }
  return Ok();
}

}  // namespace

bool InodeKept(const std::string& path, ImageReader& images) {
  if (images.inventory().boot_id() != BootId()) return false;
  struct statfs fs;
  return !(images.Has(kMountsImage) && statfs(path.c_str(), &fs) == 0 &&
           (fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC));
}

Result<void> RestoreMounts(ImageReader& images) {
  if (!images.Has(kMountsImage)) return Ok();
  img::MountTable table;
  KLEAP_TRY(images.ReadMessage(kMountsImage, &table));
  std::map<uint64_t, const img::Mount*> first;          // per filesystem: its first mount
  std::set<std::pair<std::string, std::string>> there;  // (target, type) mounted already
  for (auto& m : KLEAP_TRY(ReadMountInfo(getpid()))) there.insert({m.mount_point, m.fstype});
  for (auto& m : table.mounts()) {
    if (m.target().empty() || m.target()[0] != '/' ||
        (m.target() != "/" && !SafeRel(m.target().substr(1))) || m.fstype().empty())
      return Err(EINVAL) << kMountsImage << ": bad mount at '" << m.target() << "'";
    if ((m.flags() & ~uint64_t(kAllFlags)) != 0)
      return Err(EINVAL) << kMountsImage << ": " << m.target() << ": bad flags";
    auto [it, is_first] = first.emplace(m.dev(), &m);
    if (there.count({m.target(), m.fstype()})) {
      KLOG(kDebug) << "mount " << m.target() << " (" << m.fstype() << ") is there already";
      continue;  // and so are its files
    }
    KLEAP_TRY(MakeDirs(m.target()));
    unsigned long flags = (unsigned long)m.flags();
    if (!is_first || m.root() != "/") {
      // A bind: of the first mount of its filesystem, at the same directory.
      if (is_first)
        return Err(ENOTSUP) << kMountsImage << ": " << m.target()
                            << " binds a directory of a filesystem that is mounted nowhere else";
      std::string from = it->second->target() + (m.root() == "/" ? "" : m.root());
      if (mount(from.c_str(), m.target().c_str(), nullptr, MS_BIND, nullptr) < 0)
        return ErrnoError() << "bind " << from << " at " << m.target();
      if (flags &&
          mount(nullptr, m.target().c_str(), nullptr, MS_REMOUNT | MS_BIND | flags, nullptr) < 0)
        return ErrnoError() << "remount " << m.target();
      continue;
    }
    const char* data = m.data().empty() ? nullptr : m.data().c_str();
    if (mount(m.source().c_str(), m.target().c_str(), m.fstype().c_str(), flags, data) < 0) {
      // Another kernel may take other options: try with the type's defaults.
      int err = errno;
      if (IsMemoryFs(m.fstype()) ||
          mount(m.source().c_str(), m.target().c_str(), m.fstype().c_str(), flags, nullptr) < 0) {
        errno = err;
        return ErrnoError() << "mount " << m.fstype() << " at " << m.target() << " (" << m.data()
                            << ")";
      }
    }
    if (!m.content().empty()) KLEAP_TRY(FillTmpfs(images, m));
  }
  return Ok();
}

}  // namespace kleap
