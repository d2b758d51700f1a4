// Open files: the fd tables, the table of fd kinds that dump and restore dispatch on
// (kFdKinds), and the kinds that are files by path: regular files (also deleted ones,
// with their content), directories and the character devices kleap carries. The other
// kinds live in a file of their own (files.h lists them).
#include <elf.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/kcmp.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <set>

#include "engine/base/log.h"
#include "engine/base/page.h"
#include "engine/files.h"
#include "engine/fown.h"
#include "engine/pidfd.h"
#include "engine/sock_inet.h"
#include "engine/sock_unix.h"
#include "engine/tty.h"

namespace kleap {

Result<UniqueFd> GrabFd(pid_t pid, int fd) {
  UniqueFd pidfd(int(syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) return ErrnoError() << "pidfd_open " << pid;
  UniqueFd copy(int(syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)));
  if (!copy) return ErrnoError() << "pidfd_getfd " << pid << " fd " << fd;
  return copy;
}

Result<uint64_t> FdInfoNumber(const FdInfo& info, const char* key, int base) {
  auto it = info.extra.find(key);
  if (it == info.extra.end()) return Err(ENOTSUP) << "fdinfo has no '" << key << "'";
  uint64_t v = 0;
  const std::string& s = it->second;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (ec != std::errc() || end != s.data() + s.size())
    return Err(EINVAL) << "fdinfo: bad " << key << " '" << s << "'";
  return v;
}

Result<void> ValidateAnonFlags(const img::FileObject& fo, const char* kind, uint32_t flags,
                               uint32_t accmode) {
  if ((flags & O_ACCMODE) != accmode || (flags & ~uint32_t(O_ACCMODE | O_NONBLOCK)))
    return Err(EINVAL) << "files.img: " << kind << " " << fo.id() << ": bad flags 0" << std::oct
                       << flags;
  return Ok();
}

namespace {

constexpr const char* kDeletedSuffix = " (deleted)";

// The data an unlinked file may hold to be carried in the set (its holes are free).
// (Binaries and libraries that daemons still map after a package upgrade replaced them
// are the common case: a few MiB each.)
constexpr uint64_t kGhostLimit = 64 << 20;

// The data runs of a file [offset, length), holes left out (SEEK_DATA/SEEK_HOLE; a
// file system without them is one run).
Result<std::vector<std::pair<uint64_t, uint64_t>>> DataRuns(int fd, uint64_t size) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (uint64_t at = 0; at < size;) {
    off_t data = lseek(fd, off_t(at), SEEK_DATA);
    if (data < 0 && errno == ENXIO) break;  // only a hole is left
    if (data < 0 && errno == EINVAL) return std::vector<std::pair<uint64_t, uint64_t>>{{0, size}};
    if (data < 0) return ErrnoError() << "SEEK_DATA";
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return ErrnoError() << "SEEK_HOLE";
    uint64_t end = std::min<uint64_t>(uint64_t(hole), size);
    if (end > uint64_t(data)) out.push_back({uint64_t(data), end - uint64_t(data)});
    at = uint64_t(hole);
  }
  return out;
}

bool EndsWith(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// The devices a task can reopen by path with nothing lost.
bool CarriedCharDevice(dev_t rdev) {
  return major(rdev) == 1 &&
         (minor(rdev) == 3 || minor(rdev) == 5 || minor(rdev) == 8 || minor(rdev) == 9);
}

std::string SocketWhat(pid_t pid, int fd, const std::string& link) {
  auto grabbed = GrabFd(pid, fd);
  if (!grabbed) return link;
  UniqueFd sock = std::move(*grabbed);
  int domain = 0, type = 0;
  socklen_t len = sizeof domain;
  getsockopt(sock.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len);
  len = sizeof type;
  getsockopt(sock.get(), SOL_SOCKET, SO_TYPE, &type, &len);
  const char* d = domain == AF_UNIX      ? "unix"
                  : domain == AF_INET    ? "inet"
                  : domain == AF_INET6   ? "inet6"
                  : domain == AF_NETLINK ? "netlink"
                  : domain == AF_PACKET  ? "packet"
                                         : "other";
  const char* t = type == SOCK_STREAM      ? "stream"
                  : type == SOCK_DGRAM     ? "dgram"
                  : type == SOCK_SEQPACKET ? "seqpacket"
                  : type == SOCK_RAW       ? "raw"
                                           : "other";
  return link + " (" + d + ", " + t + ")";
}

// The anon_inode: files by their name in /proc/PID/fd; a reason when refused.
constexpr struct {
  const char* name;
  FdType type;
  const char* reason;
} kAnonInodes[] = {
    {"[eventfd]", FdType::kEventfd, nullptr},
    {"[timerfd]", FdType::kTimerfd, nullptr},
    {"[signalfd]", FdType::kSignalfd, nullptr},
    {"[eventpoll]", FdType::kEpoll, nullptr},
    {"inotify", FdType::kInotify, nullptr},
    {"[pidfd]", FdType::kPidfd, nullptr},
    {"[fanotify]", FdType::kUnsupported, "fanotify is not supported"},
    {"[io_uring]", FdType::kUnsupported, "io_uring is not supported"},
};

// How each kind of fd is carried. Dump dispatches on the type DescribeFd found, restore
// on the kind of the FileObject; several types can share one image kind.
struct FdKind {
  FdType type;
  img::FileObject::KindCase image_kind;
  // Why this particular fd can't be carried (check and dump both ask), or "".
  std::string (*refuse)(const FdDesc&);
  Result<void> (*dump)(DumpContext&, const FdDesc&, img::FileObject*);
  // Restore side: the image is untrusted; checked before anything is created.
  Result<void> (*validate)(const img::FileObject&);
  Result<UniqueFd> (*open)(const img::FileObject&, ImageReader&, OpenFiles&);
  // Dump side, once every fd of the task has its file id (objects that name others).
  Result<void> (*resolve)(img::FileObject*, const img::FdTable&);
};

constexpr FdKind kFdKinds[] = {
    {FdType::kRegular, img::FileObject::kReg, nullptr, DumpRegFile, ValidateRegFile, OpenRegFile},
    {FdType::kDirectory, img::FileObject::kReg, nullptr, DumpRegFile, ValidateRegFile, OpenRegFile},
    {FdType::kCharDevice, img::FileObject::kReg, nullptr, DumpRegFile, ValidateRegFile,
     OpenRegFile},
    {FdType::kPipe, img::FileObject::kPipe, nullptr, DumpPipeEnd, ValidatePipeEnd, OpenPipeEnd},
    {FdType::kFifo, img::FileObject::kPipe, nullptr, DumpPipeEnd, ValidatePipeEnd, OpenPipeEnd},
    {FdType::kEventfd, img::FileObject::kEventfd, nullptr, DumpEventfd, ValidateEventfd,
     OpenEventfd},
    {FdType::kTimerfd, img::FileObject::kTimerfd, nullptr, DumpTimerfd, ValidateTimerfd,
     OpenTimerfd},
    {FdType::kSignalfd, img::FileObject::kSignalfd, nullptr, DumpSignalfd, ValidateSignalfd,
     OpenSignalfd},
    {FdType::kEpoll, img::FileObject::kEpoll, RefuseEpoll, DumpEpoll, ValidateEpoll, OpenEpoll,
     ResolveEpoll},
    {FdType::kInetSocket, img::FileObject::kInetSock, RefuseInetSock, DumpInetSock,
     ValidateInetSock, OpenInetSock},
    {FdType::kInotify, img::FileObject::kInotify, RefuseInotify, DumpInotify, ValidateInotify,
     OpenInotify},
    {FdType::kUnixSocket, img::FileObject::kUnixSock, RefuseUnixSock, DumpUnixSock,
     ValidateUnixSock, OpenUnixSock},
    {FdType::kTty, img::FileObject::kTty, nullptr, DumpTty, ValidateTty, OpenTty},
    {FdType::kMemfd, img::FileObject::kMemfd, nullptr, DumpMemfd, ValidateMemfd, OpenMemfd},
    {FdType::kNetlinkSocket, img::FileObject::kNetlinkSock, RefuseNetlinkSock, DumpNetlinkSock,
     ValidateNetlinkSock, OpenNetlinkSock},
    {FdType::kPidfd, img::FileObject::kPidfd, nullptr, DumpPidfd, ValidatePidfd, OpenPidfd},
};

const FdKind* KindOf(FdType t) {
  for (auto& k : kFdKinds)
    if (k.type == t) return &k;
  return nullptr;
}
const FdKind* KindOf(img::FileObject::KindCase c) {
  for (auto& k : kFdKinds)
    if (k.image_kind == c) return &k;
  return nullptr;
}

// A file of procfs is reopened by its path at restore, where it is another inode (of
// another proc instance, and under /proc/PID of a new process): the restore would refuse
// it after the dump. Refused here instead, until such files are carried.
constexpr char kProcfsReason[] =
    "a procfs file: reopened by its path after the restore it would be another file (its "
    "inode belongs to one proc instance and one process), which is not carried yet";

bool OnProcfs(const std::string& fd_path) {
  struct statfs fs;
  return statfs(fd_path.c_str(), &fs) == 0 && uint64_t(fs.f_type) == PROC_SUPER_MAGIC;
}

}  // namespace

// Describes an fd without changing the task.
Result<FdDesc> DescribeFd(pid_t pid, int fd, pid_t numbers_of) {
  FdDesc d;
  d.pid = pid;
  d.fd = fd;
  d.numbers_of = numbers_of;
  std::string path = ProcPath(pid, "fd/" + std::to_string(fd));
  d.link = KLEAP_TRY(ReadLink(path));
  if (stat(path.c_str(), &d.st) < 0) return ErrnoError() << "stat " << path;
  d.info = KLEAP_TRY(ReadFdInfo(pid, fd));
  d.what = d.link;
  if (d.info.flags & O_PATH) {
    // A place in the tree of files, not an open file: reopened by its path, whatever
    // the inode (a symlink with O_NOFOLLOW, a FIFO, a device, a socket file).
    if (d.link.empty() || d.link[0] != '/')
      d.reason = "an O_PATH fd on something without a path";
    else if (OnProcfs(path))
      d.reason = kProcfsReason;
    else if (EndsWith(d.link, kDeletedSuffix))
      d.reason = "an O_PATH fd on a deleted file";
    else
      d.type = FdType::kRegular;
  } else if (d.link.rfind("socket:", 0) == 0 && IsUnixSocket(pid, fd)) {
    d.what = SocketWhat(pid, fd, d.link);
    d.type = FdType::kUnixSocket;
  } else if (d.link.rfind("socket:", 0) == 0) {
    d.what = SocketWhat(pid, fd, d.link);
    d.reason = ClassifySocket(&d);
  } else if (d.link.rfind("anon_inode:", 0) == 0) {
    std::string name = d.link.substr(11);
    d.reason = name + " is not supported yet";
    for (auto& a : kAnonInodes)
      if (name == a.name) {
        d.type = a.type;
        d.reason = a.reason ? a.reason : "";
      }
  } else if (d.link.rfind("pipe:", 0) == 0) {
    d.type = FdType::kPipe;
  } else if (S_ISFIFO(d.st.st_mode)) {
    d.type = FdType::kFifo;
    d.deleted = d.st.st_nlink == 0 && EndsWith(d.link, kDeletedSuffix);
    // An unlinked one is made again beside its path: its directory must still be there.
    std::string dir = d.link.substr(0, d.link.rfind('/'));
    struct stat ds;
    if (d.deleted && !dir.empty() && (stat(dir.c_str(), &ds) != 0 || !S_ISDIR(ds.st_mode)))
      d.reason = "an unlinked FIFO whose directory " + dir + " is gone";
  } else if (ClassifyMemFile(&d)) {
    // a memfd or an unlinked tmpfs file: d says how it is carried, or why not
  } else if ((S_ISREG(d.st.st_mode) || S_ISDIR(d.st.st_mode)) && OnProcfs(path)) {
    d.reason = kProcfsReason;
  } else if (S_ISREG(d.st.st_mode)) {
    d.type = FdType::kRegular;
    d.deleted = d.st.st_nlink == 0 && EndsWith(d.link, kDeletedSuffix);
    if (d.st.st_nlink == 0 && !d.deleted) d.reason = "an unlinked file without a path";
    if (d.deleted) {
      UniqueFd in(open(path.c_str(), O_RDONLY | O_CLOEXEC));
      auto runs = in ? DataRuns(in.get(), uint64_t(d.st.st_size))
                     : Result<std::vector<std::pair<uint64_t, uint64_t>>>(ErrnoError() << "open");
      uint64_t data = 0;
      if (runs)
        for (auto& r : *runs) data += r.second;
      if (!runs)
        d.reason = "an unlinked file that can't be read: " + runs.error().ToString();
      else if (data > kGhostLimit)
        d.reason = "an unlinked file with " + std::to_string(data) + " bytes of data, above the " +
                   std::to_string(kGhostLimit) + " that the set carries of one";
    }
  } else if (S_ISDIR(d.st.st_mode)) {
    d.type = FdType::kDirectory;
    if (EndsWith(d.link, kDeletedSuffix) && d.st.st_nlink == 0) {
      // Removed while open (empty, then): made again at its path and removed again, so
      // its path must be free and its parent there.
      d.deleted = true;
      std::string path = d.link.substr(0, d.link.size() - strlen(kDeletedSuffix));
      std::string parent = path.substr(0, path.rfind('/'));
      struct stat pst;
      if (path.empty() || path[0] != '/')
        d.reason = "a deleted directory without a path";
      else if (lstat(path.c_str(), &pst) == 0)
        d.reason =
            "a deleted directory whose path names another file now: it can't be made "
            "again there";
      else if (stat(parent.empty() ? "/" : parent.c_str(), &pst) != 0 || !S_ISDIR(pst.st_mode))
        d.reason = "a deleted directory whose parent is gone too: it can't be made again";
    }
  } else if (S_ISCHR(d.st.st_mode)) {
    if (CarriedCharDevice(d.st.st_rdev)) {
      d.type = FdType::kCharDevice;
    } else if (IsTerminal(d.st.st_rdev)) {
      d.reason = ClassifyTty(&d);
    } else {
      d.what = d.link + " (char " + std::to_string(major(d.st.st_rdev)) + ":" +
               std::to_string(minor(d.st.st_rdev)) + ")";
      d.reason = "this character device is not supported";
    }
  } else {
    d.reason = "this kind of file is not supported";
  }
  if (d.type != FdType::kUnsupported && d.reason.empty() && d.type != FdType::kPipe &&
      EndsWith(d.link, kDeletedSuffix) && !d.deleted) {
    d.type = FdType::kUnsupported;
    d.reason = "the file was replaced since it was opened";
  }
  if (d.reason.empty())
    if (const FdKind* k = KindOf(d.type); k && k->refuse) d.reason = k->refuse(d);
  if (!d.reason.empty()) d.type = FdType::kUnsupported;
  return d;
}

std::vector<Problem> CheckFds(pid_t pid) {
  std::vector<Problem> out;
  auto fds = ListFds(pid);
  if (!fds) {
    out.push_back({pid, "task", "", "list fds: " + fds.error().ToString()});
    return out;
  }
  for (int fd : *fds) {
    auto d = DescribeFd(pid, fd);
    if (!d) {
      if (d.error().code() == ENOENT) continue;  // closed meanwhile
      out.push_back({pid, "fd " + std::to_string(fd), "", d.error().ToString()});
    } else if (d->type == FdType::kUnsupported) {
      out.push_back({pid, "fd " + std::to_string(fd), d->what, d->reason});
    }
  }
  return out;
}

Result<img::FileIdentity> IdentifyFile(const std::string& path, const struct stat& st) {
  img::FileIdentity id;
  id.set_dev(st.st_dev);
  id.set_ino(st.st_ino);
  id.set_size(uint64_t(st.st_size));
  id.set_mtime_ns(int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec);
  if (!S_ISREG(st.st_mode)) return id;
  // The content cookie: the ELF build-id note, when there is one.
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return id;
  unsigned char ident[EI_NIDENT];
  if (pread(fd.get(), ident, sizeof ident, 0) != EI_NIDENT || memcmp(ident, ELFMAG, SELFMAG) != 0)
    return id;
  auto scan_notes = [&](uint64_t off, uint64_t size) {
    if (size > (1u << 20)) return;
    std::string buf(size, '\0');
    if (pread(fd.get(), buf.data(), size, off_t(off)) != ssize_t(size)) return;
    size_t p = 0;
    while (p + 12 <= size) {
      uint32_t namesz, descsz, type;
      memcpy(&namesz, &buf[p], 4);
      memcpy(&descsz, &buf[p + 4], 4);
      memcpy(&type, &buf[p + 8], 4);
      size_t name_off = p + 12, desc_off = name_off + ((namesz + 3) & ~3u);
      if (desc_off + descsz > size) return;
      if (type == NT_GNU_BUILD_ID && namesz == 4 && memcmp(&buf[name_off], "GNU", 4) == 0) {
        id.set_build_id(buf.substr(desc_off, descsz));
        return;
      }
      p = desc_off + ((descsz + 3) & ~3u);
    }
  };
  if (ident[EI_CLASS] == ELFCLASS64) {
    Elf64_Ehdr eh;
    if (pread(fd.get(), &eh, sizeof eh, 0) != sizeof eh || eh.e_phentsize != sizeof(Elf64_Phdr) ||
        eh.e_phnum > 256)
      return id;
    std::vector<Elf64_Phdr> ph(eh.e_phnum);
    if (pread(fd.get(), ph.data(), ph.size() * sizeof(Elf64_Phdr), off_t(eh.e_phoff)) !=
        ssize_t(ph.size() * sizeof(Elf64_Phdr)))
      return id;
    for (auto& p : ph)
      if (p.p_type == PT_NOTE && id.build_id().empty()) scan_notes(p.p_offset, p.p_filesz);
  } else if (ident[EI_CLASS] == ELFCLASS32) {
    Elf32_Ehdr eh;
    if (pread(fd.get(), &eh, sizeof eh, 0) != sizeof eh || eh.e_phentsize != sizeof(Elf32_Phdr) ||
        eh.e_phnum > 256)
      return id;
    std::vector<Elf32_Phdr> ph(eh.e_phnum);
    if (pread(fd.get(), ph.data(), ph.size() * sizeof(Elf32_Phdr), off_t(eh.e_phoff)) !=
        ssize_t(ph.size() * sizeof(Elf32_Phdr)))
      return id;
    for (auto& p : ph)
      if (p.p_type == PT_NOTE && id.build_id().empty()) scan_notes(p.p_offset, p.p_filesz);
  }
  return id;
}

namespace {

// Finds an open file description already dumped that this fd shares.
uint64_t FindShared(DumpContext& ctx, pid_t pid, int fd, const struct stat& st) {
  for (auto& s : ctx.seen_files) {
    if (s.dev != st.st_dev || s.ino != st.st_ino) continue;
    if (syscall(SYS_kcmp, s.pid, pid, KCMP_FILE, s.fd, fd) == 0) return s.id;
  }
  return 0;
}

Result<void> DumpGhostContent(DumpContext& ctx, const FdDesc& d, uint64_t id, img::RegFile* reg) {
  UniqueFd in(open(ProcPath(d.pid, "fd/" + std::to_string(d.fd)).c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return ErrnoError() << "open deleted file " << reg->path();
  uint64_t size = uint64_t(d.st.st_size);
  auto runs = KLEAP_TRY_CTX(DataRuns(in.get(), size), "deleted file " << reg->path());
  auto blob = KLEAP_TRY(ctx.images->CreateBlob(GhostImage(id)));
  std::vector<char> buf(1 << 20);
  for (auto [off, len] : runs) {
    img::DataRun* r = reg->add_ghost_runs();
    r->set_offset(off);
    r->set_length(len);
    for (uint64_t done = 0; done < len;) {
      size_t want = size_t(std::min<uint64_t>(buf.size(), len - done));
      ssize_t n = pread(in.get(), buf.data(), want, off_t(off + done));
      if (n <= 0)
        return ErrnoError() << "read deleted file " << reg->path() << " at " << off + done;
      KLEAP_TRY(blob->Write(buf.data(), size_t(n)));
      done += uint64_t(n);
    }
  }
  KLEAP_TRY(blob->Close());
  reg->set_ghost_blob(GhostImage(id));
  reg->set_ghost_size(size);
  reg->set_uid(d.st.st_uid);
  reg->set_gid(d.st.st_gid);
  reg->set_atime_ns(int64_t(d.st.st_atim.tv_sec) * 1000000000 + d.st.st_atim.tv_nsec);
  return Ok();
}

}  // namespace

Result<void> DumpRegFile(DumpContext& ctx, const FdDesc& d, img::FileObject* fo) {
  img::RegFile* reg = fo->mutable_reg();
  reg->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  reg->set_pos(d.info.pos);
  reg->set_mode(d.st.st_mode);
  std::string path = d.deleted ? d.link.substr(0, d.link.size() - strlen(kDeletedSuffix)) : d.link;
  reg->set_path(path);
  img::FileIdentity ident;
  ident.set_dev(d.st.st_dev);
  ident.set_ino(d.st.st_ino);
  ident.set_size(uint64_t(d.st.st_size));
  ident.set_mtime_ns(int64_t(d.st.st_mtim.tv_sec) * 1000000000 + d.st.st_mtim.tv_nsec);
  *reg->mutable_identity() = ident;
  if (d.deleted) {
    reg->set_deleted(true);
    // Another description of an inode carried already (two opens, or one in each of two
    // processes): made once at restore, and reopened.
    auto [it, first] = ctx.ghost_ids.emplace(
        std::make_pair(uint64_t(d.st.st_dev), uint64_t(d.st.st_ino)), fo->id());
    if (!first) {
      reg->set_ghost_of(it->second);
    } else if (S_ISDIR(d.st.st_mode)) {
      reg->set_uid(d.st.st_uid);  // empty: its owner and times are all it holds
      reg->set_gid(d.st.st_gid);
      reg->set_atime_ns(int64_t(d.st.st_atim.tv_sec) * 1000000000 + d.st.st_atim.tv_nsec);
    } else {
      KLEAP_TRY(DumpGhostContent(ctx, d, fo->id(), reg));
    }
  }
  return Ok();
}

namespace {

// The open file description behind fd d.fd of d.pid, dumped once: its id.
Result<uint64_t> DumpFileObject(DumpContext& ctx, FdDesc d) {
  if (uint64_t shared = FindShared(ctx, d.pid, d.fd, d.st)) return shared;
  uint64_t id = ctx.next_file_id++;
  ctx.seen_files.push_back({d.pid, d.fd, id, d.st.st_dev, d.st.st_ino});
  img::FileObject* fo = ctx.files.add_files();
  fo->set_id(id);
  // O_ASYNC is every kind's, with the owner (fown.h): the kind's flags go without it.
  bool async = d.info.flags & O_ASYNC;
  d.info.flags &= ~uint32_t(O_ASYNC);
  KLEAP_TRY(KindOf(d.type)->dump(ctx, d, fo));
  // (An O_PATH file has no owner: fcntl refuses it.)
  if (!(d.info.flags & O_PATH)) {
    UniqueFd copy = KLEAP_TRY(GrabFd(d.pid, d.fd));
    KLEAP_TRY(DumpFileOwner(copy.get(), async, fo));
  }
  return id;
}

}  // namespace

std::string RefuseInflightFile(int fd, pid_t receiver) {
  auto d = DescribeFd(getpid(), fd, receiver);
  if (!d) return d.error().ToString();
  if (d->type != FdType::kUnsupported) return "";
  return d->what + ": " + d->reason;
}

Result<uint64_t> DumpInflightFile(DumpContext& ctx, UniqueFd fd, const std::string& where,
                                  pid_t receiver) {
  FdDesc d =
      KLEAP_TRY_CTX(DescribeFd(getpid(), fd.get(), receiver), "a file in flight to " << where);
  if (d.type == FdType::kUnsupported)
    return Err(ENOTSUP) << "a file in flight to " << where << " (SCM_RIGHTS): " << d.what << ": "
                        << d.reason;
  // (An in-flight file carries no close-on-exec flag: the receiver picks it.)
  ctx.held_fds.push_back(std::move(fd));
  return KLEAP_TRY_CTX(DumpFileObject(ctx, std::move(d)), "a file in flight to " << where);
}

std::string RefuseMappedGhost(const std::string& proc_path) {
  UniqueFd fd(open(proc_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return "open " + proc_path + ": " + strerror(errno);
  auto d = DescribeFd(getpid(), fd.get());
  if (!d) return d.error().ToString();
  if ((d->type == FdType::kRegular || d->type == FdType::kDirectory) && d->deleted) return "";
  return d->reason.empty() ? "deleted since, but not a regular file or directory without a name"
                           : d->reason;
}

Result<uint64_t> DumpMappedGhost(DumpContext& ctx, const std::string& proc_path,
                                 const std::string& where) {
  UniqueFd fd(open(proc_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError() << where << ": open " << proc_path;
  FdDesc d = KLEAP_TRY_CTX(DescribeFd(getpid(), fd.get()), where);
  if ((d.type != FdType::kRegular && d.type != FdType::kDirectory) || !d.deleted)
    return Err(ENOTSUP) << where << ": " << d.what << ": "
                        << (d.reason.empty() ? "not a regular file or directory without a name"
                                             : d.reason);
  ctx.held_fds.push_back(std::move(fd));  // held until the dump ends, for kcmp
  return KLEAP_TRY_CTX(DumpFileObject(ctx, std::move(d)), where);
}

Result<void> DumpFds(DumpContext& ctx, const TaskInfo& task, img::FdTable* table) {
  pid_t pid = task.pid;
  table->set_pid(pid);
  int first_new = ctx.files.files_size();
  for (int fd : KLEAP_TRY_CTX(ListFds(pid), "task " << pid)) {
    FdDesc d = KLEAP_TRY_CTX(DescribeFd(pid, fd), "task " << pid << " fd " << fd);
    if (d.type == FdType::kUnsupported)
      return Err(ENOTSUP) << "task " << pid << " fd " << fd << ": " << d.what << ": " << d.reason;
    img::FdEntry* e = table->add_fds();
    e->set_fd(fd);
    e->set_cloexec(d.info.flags & O_CLOEXEC);
    e->set_file_id(
        KLEAP_TRY_CTX(DumpFileObject(ctx, std::move(d)), "task " << pid << " fd " << fd));
  }
  for (int i = first_new; i < ctx.files.files_size(); ++i) {
    img::FileObject* fo = ctx.files.mutable_files(i);
    if (const FdKind* k = KindOf(fo->kind_case()); k->resolve)
      KLEAP_TRY_CTX(k->resolve(fo, *table), "task " << pid << " file " << fo->id());
  }
  return Ok();
}

// 64-bit open() always adds O_LARGEFILE; an ia32 task's files may lack it, and only an
// open through the compat entry (int $0x80, even from 64-bit code) leaves it out.
UniqueFd OpenLikeTask(const std::string& path, int flags, mode_t mode) {
  char* low = LowPage();
  // (Opening with O_PATH drops O_LARGEFILE whatever the width.)
  if ((flags & (kKernelOLargefile | O_PATH)) || path.size() >= 4096 || !low)
    return UniqueFd(open(path.c_str(), flags, mode));
  memcpy(low, path.c_str(), path.size() + 1);
  long ret = LocalCompatSyscall(X86Arch::kOpenat, uint32_t(AT_FDCWD), uint32_t(uintptr_t(low)),
                                uint32_t(flags), mode);
  if (ret == -ENOSYS) return UniqueFd(open(path.c_str(), flags, mode));  // no ia32 task here
  if (ret < 0) {
    errno = int(-ret);
    return UniqueFd();
  }
  return UniqueFd(int(ret));
}

// The open flags a file description keeps (fdinfo's `flags`: f_flags, less what open()
// drops), O_ASYNC aside (fown.h).
constexpr uint32_t kKeptOpenFlags = O_ACCMODE | O_APPEND | O_NONBLOCK | O_DSYNC | O_DIRECT |
                                    kKernelOLargefile | O_DIRECTORY | O_NOFOLLOW | O_NOATIME |
                                    O_SYNC | O_PATH | O_TMPFILE;

Result<void> ValidateRegFile(const img::FileObject& fo) {
  const img::RegFile& reg = fo.reg();
  auto bad = [&]() {
    Error e(EINVAL);
    e << "files.img: file " << fo.id() << " (" << reg.path() << "): ";
    return e;
  };
  if (reg.path().empty() || reg.path()[0] != '/' || reg.path().find('\0') != std::string::npos)
    return bad() << "path is not absolute";
  if ((reg.flags() & ~kKeptOpenFlags) || (reg.flags() & O_ACCMODE) == O_ACCMODE)
    return bad() << "bad flags " << Oct(reg.flags());
  if (!S_ISREG(reg.mode()) && !S_ISDIR(reg.mode()) && !S_ISCHR(reg.mode()) &&
      !(reg.flags() & O_PATH))
    return bad() << "mode " << Oct(reg.mode()) << " is no regular file, directory or device";
  if (reg.ghost_of() && (!reg.deleted() || !reg.ghost_blob().empty() || reg.ghost_of() >= fo.id()))
    return bad() << "ghost_of " << reg.ghost_of() << " on a file that holds its own content, "
                 << "or not an earlier file";
  if (reg.deleted() && S_ISDIR(reg.mode()) && (!reg.ghost_blob().empty() || reg.ghost_runs_size()))
    return bad() << "a deleted directory with content";
  if (reg.deleted() && !S_ISDIR(reg.mode()) &&
      (!S_ISREG(reg.mode()) || (reg.ghost_blob().empty() && !reg.ghost_of())))
    return bad() << "deleted, but no regular file with its content";
  uint64_t end = 0, data = 0;
  for (auto& r : reg.ghost_runs()) {
    if (r.offset() < end || r.length() == 0 || r.offset() + r.length() < r.offset() ||
        r.offset() + r.length() > reg.ghost_size())
      return bad() << "a data run at " << r.offset() << " out of order or of the file";
    end = r.offset() + r.length();
    data += r.length();
  }
  if (data > kGhostLimit) return bad() << data << " bytes of data, above the limit";
  if (reg.ghost_size() > (uint64_t(1) << 50) || reg.atime_ns() < 0 || reg.identity().mtime_ns() < 0)
    return bad() << "size or times";
  if (reg.pos() > uint64_t(INT64_MAX)) return bad() << "offset " << reg.pos();
  return Ok();
}

Result<UniqueFd> OpenRegFile(const img::FileObject& fo, ImageReader& images, OpenFiles& files) {
  const img::RegFile& reg = fo.reg();
  int flags = int(reg.flags()) & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_CLOEXEC);
  UniqueFd fd;
  if (reg.ghost_of()) {
    auto it = files.ghosts.find(reg.ghost_of());
    if (it == files.ghosts.end())
      return Err(EINVAL) << "files.img: file " << fo.id() << " (" << reg.path() << "): ghost_of "
                         << reg.ghost_of() << " is no unlinked file";
    fd = OpenLikeTask("/proc/self/fd/" + std::to_string(it->second.get()), flags | O_CLOEXEC, 0);
    if (!fd) return ErrnoError() << "reopen deleted file " << reg.path();
  } else if (reg.deleted() && S_ISDIR(reg.mode())) {
    // A directory removed while open: made at its path, opened, removed again.
    if (mkdir(reg.path().c_str(), 0700) < 0)
      return ErrnoError() << "make deleted directory " << reg.path() << " again";
    fd = OpenLikeTask(reg.path(), flags | O_CLOEXEC, 0);
    int saved = errno;
    UniqueFd keep(open(reg.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (rmdir(reg.path().c_str()) < 0 || !fd || !keep) {
      if (!fd || !keep) errno = saved;
      return ErrnoError() << "make deleted directory " << reg.path() << " again";
    }
    timespec times[2] = {{time_t(reg.atime_ns() / 1000000000), long(reg.atime_ns() % 1000000000)},
                         {time_t(reg.identity().mtime_ns() / 1000000000),
                          long(reg.identity().mtime_ns() % 1000000000)}};
    if (fchown(keep.get(), reg.uid(), reg.gid()) < 0 ||
        fchmod(keep.get(), reg.mode() & 07777) < 0 || futimens(keep.get(), times) < 0)
      return ErrnoError() << "set the owner, mode and times of deleted directory " << reg.path();
    files.ghosts[fo.id()] = std::move(keep);
  } else if (reg.deleted()) {
    std::string dir = reg.path().substr(0, reg.path().rfind('/'));
    if (dir.empty()) dir = "/";
    // A file made by open(O_TMPFILE) is made so again, with its own flags; any other is
    // reopened below.
    bool tmpfile = (reg.flags() & O_TMPFILE) == O_TMPFILE;
    UniqueFd tmp =
        tmpfile ? OpenLikeTask(dir, flags | O_CLOEXEC, reg.mode() & 07777)
                : UniqueFd(open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, reg.mode() & 07777));
    if (!tmp) return ErrnoError() << "recreate deleted file " << reg.path() << " in " << dir;
    auto blob = KLEAP_TRY(images.OpenBlob(reg.ghost_blob()));
    KLEAP_TRY(images.VerifyImage(reg.ghost_blob()));
    std::vector<char> buf(1 << 20);
    uint64_t from = 0;  // in the blob
    for (auto& r : reg.ghost_runs())
      for (uint64_t done = 0; done < r.length();) {
        size_t n = size_t(std::min<uint64_t>(buf.size(), r.length() - done));
        if (from + n > blob->size())
          return Err(EINVAL) << reg.ghost_blob() << ": shorter than the runs of " << reg.path();
        KLEAP_TRY(blob->ReadAt(from, buf.data(), n));
        if (pwrite(tmp.get(), buf.data(), n, off_t(r.offset() + done)) != ssize_t(n))
          return ErrnoError() << "write deleted file " << reg.path();
        from += n;
        done += n;
      }
    // Its holes, owner, mode and times, the times last.
    timespec times[2] = {{time_t(reg.atime_ns() / 1000000000), long(reg.atime_ns() % 1000000000)},
                         {time_t(reg.identity().mtime_ns() / 1000000000),
                          long(reg.identity().mtime_ns() % 1000000000)}};
    if (ftruncate(tmp.get(), off_t(reg.ghost_size())) < 0 ||
        fchown(tmp.get(), reg.uid(), reg.gid()) < 0 || fchmod(tmp.get(), reg.mode() & 07777) < 0 ||
        futimens(tmp.get(), times) < 0)
      return ErrnoError() << "set the size, owner, mode and times of deleted file " << reg.path();
    // Give it its old name for a moment, so the reopened fd reads "PATH (deleted)".
    std::string link = "/proc/self/fd/" + std::to_string(tmp.get());
    // Held for the descriptions and mappings that name it (ghost_of, ghost_file), read-only:
    // a writer would keep it from becoming an executable again (PR_SET_MM_MAP refuses a
    // file open for writing), and a reopen through /proc may still write.
    UniqueFd keep;
    if (tmpfile) {
      fd = std::move(tmp);
      keep = UniqueFd(
          open(("/proc/self/fd/" + std::to_string(fd.get())).c_str(), O_RDONLY | O_CLOEXEC));
    } else if (linkat(AT_FDCWD, link.c_str(), AT_FDCWD, reg.path().c_str(), AT_SYMLINK_FOLLOW) ==
               0) {
      fd = OpenLikeTask(reg.path(), flags | O_CLOEXEC, 0);
      int saved = errno;
      keep = UniqueFd(open(reg.path().c_str(), O_RDONLY | O_CLOEXEC));
      unlink(reg.path().c_str());
      errno = saved;
      if (!fd) return ErrnoError() << "reopen deleted file " << reg.path();
    } else {
      fd = OpenLikeTask(link, flags | O_CLOEXEC, 0);
      if (!fd) return ErrnoError() << "reopen deleted file " << reg.path();
      keep = UniqueFd(open(link.c_str(), O_RDONLY | O_CLOEXEC));
    }
    if (!keep) return ErrnoError() << "hold deleted file " << reg.path();
    files.ghosts[fo.id()] = std::move(keep);
  } else {
    fd = OpenLikeTask(reg.path(), flags | O_CLOEXEC, 0);
    if (!fd) return ErrnoError() << "open " << reg.path();
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return ErrnoError() << "stat " << reg.path();
    if (InodeKept(reg.path(), images)) {
      if (st.st_ino != reg.identity().ino() || st.st_dev != reg.identity().dev())
        return Err(ESTALE) << "file " << reg.path() << " has changed since the dump (inode "
                           << reg.identity().ino() << " became " << st.st_ino << ")";
    } else if (S_ISREG(st.st_mode) &&
               (uint64_t(st.st_size) != reg.identity().size() ||
                int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec !=
                    reg.identity().mtime_ns())) {
      // Its inode number says nothing (InodeKept): the size and the modification time
      // must be the dump's.
      return Err(ESTALE) << "file " << reg.path() << " has changed since the dump (size "
                         << reg.identity().size() << " became " << st.st_size
                         << ", or its modification time)";
    }
  }
  // (An O_PATH fd has no offset: lseek refuses it.)
  if (!S_ISCHR(reg.mode()) && !(reg.flags() & O_PATH) &&
      lseek(fd.get(), off_t(reg.pos()), SEEK_SET) < 0 && errno != ESPIPE)
    return ErrnoError() << "seek " << reg.path() << " to " << reg.pos();
  return fd;
}

Result<void> ValidateFileObjects(const img::FileTable& files) {
  std::set<uint64_t> ids, pipes;
  for (auto& p : files.pipes()) {
    pipes.insert(p.id());
    if (p.fifo() && (p.fifo_path().empty() || p.fifo_path()[0] != '/' ||
                     p.fifo_path().find('\0') != std::string::npos))
      return Err(EINVAL) << "files.img: FIFO " << p.id() << ": path is not absolute";
    if (p.mode() & ~07777u) return Err(EINVAL) << "files.img: FIFO " << p.id() << ": mode";
  }
  for (auto& fo : files.files()) {
    if (!ids.insert(fo.id()).second)
      return Err(EINVAL) << "files.img: two files with id " << fo.id();
    const FdKind* k = KindOf(fo.kind_case());
    if (!k) return Err(EINVAL) << "files.img: file " << fo.id() << " has no known kind";
    if (k->validate) KLEAP_TRY(k->validate(fo));
    if (fo.has_pipe() && !pipes.count(fo.pipe().pipe_id()))
      return Err(EINVAL) << "files.img: file " << fo.id() << ": pipe end of unknown pipe "
                         << fo.pipe().pipe_id();
  }
  return ValidateUnixQueues(files);
}

Result<void> OpenFileObjects(const RestorePlan& plan, ImageReader& images, OpenFiles* out) {
  KLEAP_TRY(CreateMemFiles(plan, images, out));
  KLEAP_TRY(OpenPipes(plan, out));
  KLEAP_TRY(OpenUnixSockets(plan.files, out));
  PlanReusePort(plan.files, out);
  for (auto& fo : plan.files.files()) {
    const FdKind* k = KindOf(fo.kind_case());
    if (!k) return Err(EINVAL) << "files.img: file " << fo.id() << " has no known kind";
    auto fd = k->open(fo, images, *out);
    if (!fd) {
      ReapPidfdChildren(*out);
      return std::move(fd).error();
    }
    out->by_id[fo.id()] = std::move(*fd);
  }
  ReapPidfdChildren(*out);
  KLEAP_TRY(RegisterEpollTargets(plan.files, *out));
  KLEAP_TRY(FinishPtys(plan.files, *out));
  KLEAP_TRY(FillUnixSockets(out));
  return Ok();
}

void ForEachTreeFd(const std::vector<TaskInfo>& tasks,
                   const std::function<void(const TaskInfo&, int fd)>& fn) {
  for (auto& t : tasks) {
    if (t.zombie) continue;
    auto fds = ListFds(t.pid);
    if (!fds) continue;
    for (int fd : *fds) fn(t, fd);
  }
}

long LocalFdSyscall(long nr, long a1, long a2, long a3) {
  long r = syscall(nr, a1, a2, a3);
  return r < 0 ? -errno : r;
}

Result<void> InstallFds(const img::FdTable& table, const OpenFiles& files, int keep_from,
                        const FdSyscall& sys) {
  auto call = [&](long nr, long a1, long a2, long a3) -> Result<long> {
    long r = sys(nr, a1, a2, a3);
    if (r < 0) {
      errno = int(-r);
      return ErrnoError();
    }
    return r;
  };
  // Move every source above the highest target first, so no dup2 clobbers a source.
  int top = keep_from;
  std::vector<std::pair<int, const img::FdEntry*>> staged;
  for (auto& e : table.fds()) {
    auto it = files.by_id.find(e.file_id());
    if (it == files.by_id.end())
      return Err(EINVAL) << "fd " << e.fd() << ": file " << e.file_id() << " was not opened";
    int from = it->second.get(), taken = -1;
    if (files.live_pidfds.count(e.file_id())) {
      // A pidfd the controller opened after this task's fork: taken from it, the same
      // open file description (OpenLivePidfds).
      long ctl = KLEAP_TRY_CTX(call(SYS_pidfd_open, files.mem_files_pid, 0, 0),
                               "fd " << e.fd() << ": pidfd_open the controller");
      auto got = call(SYS_pidfd_getfd, ctl, from, 0);
      sys(SYS_close, ctl, 0, 0);
      taken = from = int(KLEAP_TRY_CTX(std::move(got), "fd " << e.fd() << ": take its pidfd"));
    }
    auto staged_at = call(SYS_fcntl, from, F_DUPFD_CLOEXEC, top);
    if (taken >= 0) sys(SYS_close, taken, 0, 0);
    int s = int(KLEAP_TRY_CTX(std::move(staged_at), "stage fd " << e.fd()));
    top = s + 1;
    staged.push_back({s, &e});
  }
  for (auto& [s, e] : staged) {
    KLEAP_TRY_CTX(call(SYS_dup3, s, e->fd(), e->cloexec() ? O_CLOEXEC : 0),
                  "install fd " << e->fd());
    sys(SYS_close, s, 0, 0);
  }
  // Close everything below keep_from that the table doesn't name.
  std::vector<bool> wanted(size_t(keep_from), false);
  for (auto& e : table.fds())
    if (e.fd() < keep_from) wanted[size_t(e.fd())] = true;
  for (int fd = 0; fd < keep_from; ++fd)
    if (!wanted[size_t(fd)]) sys(SYS_close, fd, 0, 0);
  return Ok();
}

}  // namespace kleap
