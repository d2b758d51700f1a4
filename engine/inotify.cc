// inotify: every watch with its mask, from the `inotify wd:` lines of fdinfo. The
// watched inode is named by a file handle there; open_by_handle_at on a mount of its
// filesystem gives its path. Restore adds the watches in wd order and gets each its
// old wd: the kernel hands wds out cyclically, so a number below the wanted one is
// taken and given back until the wanted one comes.
//
// Events still queued are refused, not carried: they can only be read by consuming
// them, and a dump that failed afterwards couldn't give them back.
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "engine/files.h"

namespace kleap {
namespace {

constexpr int kMaxWd = 1 << 20;

struct WatchLine {
  int wd = 0;
  uint64_t ino = 0;
  uint32_t sdev = 0, mask = 0;
  std::string handle;  // struct file_handle, bytes included
};

Result<std::vector<WatchLine>> ParseWatches(const FdInfo& info) {
  std::vector<WatchLine> out;
  auto [lo, hi] = info.extra.equal_range("inotify wd");
  for (auto it = lo; it != hi; ++it) {
    WatchLine w;
    unsigned long ino = 0;
    unsigned wd = 0, ignored = 0, bytes = 0;
    int type = 0;
    char hex[2 * 128 + 1] = "";
    if (sscanf(it->second.c_str(),
               "%x ino:%lx sdev:%x mask:%x ignored_mask:%x fhandle-bytes:%x fhandle-type:%x "
               "f_handle:%256s",
               &wd, &ino, &w.sdev, &w.mask, &ignored, &bytes, &type, hex) != 8 ||
        bytes > 128 || strlen(hex) != 2 * bytes || wd == 0 || wd > kMaxWd)
      return Err(EINVAL) << "fdinfo: bad inotify line '" << it->second << "'";
    w.wd = int(wd);  // the kernel prints it in hex
    w.ino = ino;
    std::string h(sizeof(file_handle) + bytes, '\0');
    auto* fh = reinterpret_cast<file_handle*>(h.data());
    fh->handle_bytes = bytes;
    fh->handle_type = type;
    for (unsigned i = 0; i < bytes; ++i) {
      unsigned b = 0;
      sscanf(hex + 2 * i, "%2x", &b);
      fh->f_handle[i] = static_cast<unsigned char>(b);
    }
    w.handle = std::move(h);
    out.push_back(std::move(w));
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.wd < b.wd; });
  return out;
}

// The path of a watched inode, in this process's mount namespace (the task's: other
// namespaces are refused).
Result<std::string> WatchPath(pid_t pid, const WatchLine& w) {
  // fdinfo shows the kernel's dev_t: major in the top 12 bits, minor in the low 20.
  dev_t dev = makedev(w.sdev >> 20, w.sdev & 0xfffff);
  auto mounts = KLEAP_TRY(ReadMountInfo(pid));
  std::sort(mounts.begin(), mounts.end(), [](auto& a, auto& b) { return a.root < b.root; });
  for (auto& m : mounts) {
    if (makedev(m.dev_major, m.dev_minor) != dev) continue;
    // Not O_PATH: open_by_handle_at refuses such a mount fd (EBADF).
    UniqueFd mnt(open(m.mount_point.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!mnt) continue;
    std::string h = w.handle;
    UniqueFd f(
        open_by_handle_at(mnt.get(), reinterpret_cast<file_handle*>(h.data()), O_PATH | O_CLOEXEC));
    if (!f) continue;
    struct stat st;
    if (fstat(f.get(), &st) < 0 || st.st_ino != w.ino) continue;
    std::string path = KLEAP_TRY(ReadLink("/proc/self/fd/" + std::to_string(f.get())));
    struct stat by_path;
    if (lstat(path.c_str(), &by_path) < 0 || by_path.st_ino != st.st_ino ||
        by_path.st_dev != st.st_dev)
      return Err(ENOTSUP) << "watch " << w.wd << " is on an inode without a path (" << path << ")";
    return path;
  }
  return Err(ENOTSUP) << "watch " << w.wd << ": inode " << w.ino << " on device " << major(dev)
                      << ":" << minor(dev) << " can't be opened by its handle";
}

}  // namespace

std::string RefuseInotify(const FdDesc& d) {
  auto copy = GrabFd(d.pid, d.fd);
  if (!copy) return copy.error().ToString();
  int queued = 0;
  if (ioctl(copy->get(), FIONREAD, &queued) < 0) return "FIONREAD: " + std::string(strerror(errno));
  if (queued > 0)
    return "inotify fd " + std::to_string(d.fd) + " has " + std::to_string(queued) +
           " bytes of events queued";
  auto watches = ParseWatches(d.info);
  if (!watches) return watches.error().ToString();
  for (auto& w : *watches)
    if (auto p = WatchPath(d.pid, w); !p) return p.error().ToString();
  return "";
}

Result<void> DumpInotify(DumpContext&, const FdDesc& d, img::FileObject* fo) {
  img::Inotify* in = fo->mutable_inotify();
  in->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  for (auto& w : KLEAP_TRY(ParseWatches(d.info))) {
    img::InotifyWatch* iw = in->add_watches();
    iw->set_wd(w.wd);
    iw->set_mask(w.mask);
    iw->set_path(KLEAP_TRY(WatchPath(d.pid, w)));
    struct stat st;
    if (lstat(iw->path().c_str(), &st) < 0) return ErrnoError() << "stat " << iw->path();
    iw->set_dev(st.st_dev);
    iw->set_ino(st.st_ino);
  }
  return Ok();
}

Result<void> ValidateInotify(const img::FileObject& fo) {
  int prev = 0;
  for (auto& w : fo.inotify().watches()) {
    if (w.wd() <= prev || w.wd() > kMaxWd || w.path().empty() || w.path()[0] != '/')
      return Err(EINVAL) << "files.img: inotify " << fo.id() << ": bad watch " << w.wd();
    prev = w.wd();
  }
  return ValidateAnonFlags(fo, "inotify", fo.inotify().flags(), O_RDONLY);
}

Result<UniqueFd> OpenInotify(const img::FileObject& fo, ImageReader&, OpenFiles&) {
  const img::Inotify& in = fo.inotify();
  UniqueFd fd(inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!fd) return ErrnoError() << "inotify " << fo.id() << ": create";
  bool gave_back = false;
  for (auto& w : in.watches()) {
    struct stat st;
    if (lstat(w.path().c_str(), &st) < 0)
      return ErrnoError() << "inotify " << fo.id() << ": watched file " << w.path();
    if (st.st_dev != w.dev() || st.st_ino != w.ino())
      return Err(ESTALE) << "inotify " << fo.id() << ": watched file " << w.path()
                         << " has changed since the dump (inode " << w.ino() << " became "
                         << st.st_ino << ")";
    for (;;) {
      int got = inotify_add_watch(fd.get(), w.path().c_str(), w.mask() | IN_DONT_FOLLOW);
      if (got < 0) return ErrnoError() << "inotify " << fo.id() << ": watch " << w.path();
      if (got == w.wd()) break;
      if (got > w.wd())
        return Err(EEXIST) << "inotify " << fo.id() << ": watch " << w.path() << " got wd " << got
                           << ", not " << w.wd();
      inotify_rm_watch(fd.get(), got);
      gave_back = true;
    }
  }
  // Each watch given back queued an IN_IGNORED event: the task never saw those.
  if (gave_back) {
    char buf[4096];
    while (read(fd.get(), buf, sizeof buf) > 0) {
    }
  }
  if (!(in.flags() & O_NONBLOCK) && fcntl(fd.get(), F_SETFL, 0) < 0)
    return ErrnoError() << "inotify " << fo.id() << ": clear O_NONBLOCK";
  return fd;
}

}  // namespace kleap
