// Open files: regular files (also deleted ones, with their content), directories, the
// character devices kleap carries, and the fd tables that point at them. Pipes and
// FIFOs are in pipe.cc.
#include <elf.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/kcmp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "engine/base/log.h"
#include "engine/context.h"

namespace kleap {
namespace {

constexpr const char* kDeletedSuffix = " (deleted)";

bool EndsWith(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

int PidfdOpen(pid_t pid) {
  return int(syscall(SYS_pidfd_open, pid, 0));
}
int PidfdGetfd(int pidfd, int fd) {
  return int(syscall(SYS_pidfd_getfd, pidfd, fd, 0));
}

// The devices a task can reopen by path with nothing lost.
bool CarriedCharDevice(dev_t rdev) {
  return major(rdev) == 1 &&
         (minor(rdev) == 3 || minor(rdev) == 5 || minor(rdev) == 8 || minor(rdev) == 9);
}

std::string SocketWhat(pid_t pid, int fd, const std::string& link) {
  UniqueFd pidfd(PidfdOpen(pid));
  if (!pidfd) return link;
  UniqueFd sock(PidfdGetfd(pidfd.get(), fd));
  if (!sock) return link;
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

}  // namespace

enum class FdType { kRegular, kDirectory, kCharDevice, kPipe, kFifo, kUnsupported };

struct FdDesc {
  int fd = -1;
  FdType type = FdType::kUnsupported;
  std::string link;
  struct stat st {};
  FdInfo info;
  bool deleted = false;
  std::string what, reason;  // for kUnsupported
};

// Describes an fd without changing the task.
Result<FdDesc> DescribeFd(pid_t pid, int fd) {
  FdDesc d;
  d.fd = fd;
  std::string path = ProcPath(pid, "fd/" + std::to_string(fd));
  d.link = KLEAP_TRY(ReadLink(path));
  if (stat(path.c_str(), &d.st) < 0) return ErrnoError() << "stat " << path;
  d.info = KLEAP_TRY(ReadFdInfo(pid, fd));
  d.what = d.link;
  if (d.link.rfind("socket:", 0) == 0) {
    d.what = SocketWhat(pid, fd, d.link);
    d.reason = "sockets are not supported yet";
  } else if (d.link.rfind("anon_inode:", 0) == 0) {
    d.reason = d.link.substr(11) + " is not supported yet";
    if (d.link.find("io_uring") != std::string::npos) d.reason = "io_uring is not supported";
  } else if (d.link.rfind("pipe:", 0) == 0) {
    d.type = FdType::kPipe;
  } else if (S_ISFIFO(d.st.st_mode)) {
    d.type = FdType::kFifo;
  } else if (d.link.rfind("/memfd:", 0) == 0) {
    d.reason = "memfd is not supported yet";
  } else if (S_ISREG(d.st.st_mode)) {
    d.type = FdType::kRegular;
    d.deleted = d.st.st_nlink == 0 && EndsWith(d.link, kDeletedSuffix);
    if (d.st.st_nlink == 0 && !d.deleted) d.reason = "an unlinked file without a path";
  } else if (S_ISDIR(d.st.st_mode)) {
    d.type = FdType::kDirectory;
    if (EndsWith(d.link, kDeletedSuffix)) {
      d.type = FdType::kUnsupported;
      d.reason = "a deleted directory can't be reopened";
    }
  } else if (S_ISCHR(d.st.st_mode)) {
    if (CarriedCharDevice(d.st.st_rdev)) {
      d.type = FdType::kCharDevice;
    } else {
      d.what = d.link + " (char " + std::to_string(major(d.st.st_rdev)) + ":" +
               std::to_string(minor(d.st.st_rdev)) + ")";
      d.reason = major(d.st.st_rdev) == 136 || major(d.st.st_rdev) == 5 || major(d.st.st_rdev) == 4
                     ? "terminals are not supported yet"
                     : "this character device is not supported";
    }
  } else {
    d.reason = "this kind of file is not supported";
  }
  if (d.type != FdType::kUnsupported && d.reason.empty() && d.type != FdType::kPipe &&
      EndsWith(d.link, kDeletedSuffix) && !d.deleted) {
    d.type = FdType::kUnsupported;
    d.reason = "the file was replaced since it was opened";
  }
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

Result<void> DumpGhostContent(DumpContext& ctx, pid_t pid, int fd, uint64_t id, img::RegFile* reg) {
  std::string path = ProcPath(pid, "fd/" + std::to_string(fd));
  UniqueFd in(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return ErrnoError() << "open deleted file " << reg->path();
  auto blob = KLEAP_TRY(ctx.images->CreateBlob(GhostImage(id)));
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = read(in.get(), buf.data(), buf.size());
    if (n < 0) return ErrnoError() << "read deleted file " << reg->path();
    if (n == 0) break;
    KLEAP_TRY(blob->Write(buf.data(), size_t(n)));
  }
  KLEAP_TRY(blob->Close());
  reg->set_ghost_blob(GhostImage(id));
  return Ok();
}

}  // namespace

Result<void> DumpFds(DumpContext& ctx, const TaskInfo& task, img::FdTable* table) {
  pid_t pid = task.pid;
  table->set_pid(pid);
  for (int fd : KLEAP_TRY_CTX(ListFds(pid), "task " << pid)) {
    FdDesc d = KLEAP_TRY_CTX(DescribeFd(pid, fd), "task " << pid << " fd " << fd);
    if (d.type == FdType::kUnsupported)
      return Err(ENOTSUP) << "task " << pid << " fd " << fd << ": " << d.what << ": " << d.reason;
    img::FdEntry* e = table->add_fds();
    e->set_fd(fd);
    e->set_cloexec(d.info.flags & O_CLOEXEC);
    uint64_t shared = FindShared(ctx, pid, fd, d.st);
    if (shared) {
      e->set_file_id(shared);
      continue;
    }
    uint64_t id = ctx.next_file_id++;
    e->set_file_id(id);
    ctx.seen_files.push_back({pid, fd, id, d.st.st_dev, d.st.st_ino});
    img::FileObject* fo = ctx.files.add_files();
    fo->set_id(id);
    uint32_t flags = d.info.flags & ~uint32_t(O_CLOEXEC);
    if (d.type == FdType::kPipe || d.type == FdType::kFifo) {
      img::PipeEnd* pe = fo->mutable_pipe();
      uint64_t pipe_id = ctx.PipeId(d.st.st_dev, d.st.st_ino);
      pe->set_pipe_id(pipe_id);
      pe->set_flags(flags);
      pe->set_fifo(d.type == FdType::kFifo);
      if (d.type == FdType::kFifo) pe->set_fifo_path(d.link);
      KLEAP_TRY_CTX(DumpPipeData(ctx, pid, fd, pipe_id, d.type == FdType::kFifo, d.link),
                    "task " << pid << " fd " << fd);
      continue;
    }
    img::RegFile* reg = fo->mutable_reg();
    reg->set_flags(flags);
    reg->set_pos(d.info.pos);
    reg->set_mode(d.st.st_mode);
    std::string path =
        d.deleted ? d.link.substr(0, d.link.size() - strlen(kDeletedSuffix)) : d.link;
    reg->set_path(path);
    img::FileIdentity ident;
    ident.set_dev(d.st.st_dev);
    ident.set_ino(d.st.st_ino);
    ident.set_size(uint64_t(d.st.st_size));
    *reg->mutable_identity() = ident;
    if (d.deleted) {
      reg->set_deleted(true);
      KLEAP_TRY_CTX(DumpGhostContent(ctx, pid, fd, id, reg), "task " << pid << " fd " << fd);
    }
  }
  return Ok();
}

// 64-bit open() always adds O_LARGEFILE; an ia32 task's files may lack it, and only an
// open through the compat entry (int $0x80, even from 64-bit code) leaves it out.
int OpenLikeTask(const std::string& path, int flags, mode_t mode) {
  char* low = LowPage();
  if ((flags & kKernelOLargefile) || path.size() >= 4096 || !low)
    return open(path.c_str(), flags, mode);
  memcpy(low, path.c_str(), path.size() + 1);
  long ret = LocalCompatSyscall(X86Arch::kOpenat, uint32_t(AT_FDCWD), uint32_t(uintptr_t(low)),
                                uint32_t(flags), mode);
  if (ret < 0) {
    errno = int(-ret);
    return -1;
  }
  return int(ret);
}

Result<UniqueFd> OpenRegFile(const img::RegFile& reg, ImageReader& images) {
  int flags = int(reg.flags()) & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_CLOEXEC);
  UniqueFd fd;
  if (reg.deleted()) {
    std::string dir = reg.path().substr(0, reg.path().rfind('/'));
    if (dir.empty()) dir = "/";
    UniqueFd tmp(open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, reg.mode() & 07777));
    if (!tmp) return ErrnoError() << "recreate deleted file " << reg.path() << " in " << dir;
    auto blob = KLEAP_TRY(images.OpenBlob(reg.ghost_blob()));
    KLEAP_TRY(images.VerifyImage(reg.ghost_blob()));
    std::vector<char> buf(1 << 20);
    for (uint64_t off = 0; off < blob->size(); off += buf.size()) {
      size_t n = size_t(std::min<uint64_t>(buf.size(), blob->size() - off));
      KLEAP_TRY(blob->ReadAt(off, buf.data(), n));
      if (pwrite(tmp.get(), buf.data(), n, off_t(off)) != ssize_t(n))
        return ErrnoError() << "write deleted file " << reg.path();
    }
    // Give it its old name for a moment, so the reopened fd reads "PATH (deleted)".
    std::string link = "/proc/self/fd/" + std::to_string(tmp.get());
    if (linkat(AT_FDCWD, link.c_str(), AT_FDCWD, reg.path().c_str(), AT_SYMLINK_FOLLOW) == 0) {
      fd.reset(OpenLikeTask(reg.path(), flags | O_CLOEXEC, 0));
      int saved = errno;
      unlink(reg.path().c_str());
      errno = saved;
      if (!fd) return ErrnoError() << "reopen deleted file " << reg.path();
    } else {
      fd.reset(OpenLikeTask(link, flags | O_CLOEXEC, 0));
      if (!fd) return ErrnoError() << "reopen deleted file " << reg.path();
    }
  } else {
    fd.reset(OpenLikeTask(reg.path(), flags | O_CLOEXEC, 0));
    if (!fd) return ErrnoError() << "open " << reg.path();
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return ErrnoError() << "stat " << reg.path();
    if (st.st_ino != reg.identity().ino() || st.st_dev != reg.identity().dev())
      return Err(ESTALE) << "file " << reg.path() << " has changed since the dump (inode "
                         << reg.identity().ino() << " became " << st.st_ino << ")";
  }
  if (!S_ISCHR(reg.mode()) && lseek(fd.get(), off_t(reg.pos()), SEEK_SET) < 0 && errno != ESPIPE)
    return ErrnoError() << "seek " << reg.path() << " to " << reg.pos();
  return fd;
}

Result<void> OpenFileObjects(const RestorePlan& plan, ImageReader& images, OpenFiles* out) {
  KLEAP_TRY(OpenPipes(plan, out));
  for (auto& fo : plan.files.files()) {
    UniqueFd fd;
    if (fo.has_pipe()) {
      fd = KLEAP_TRY_CTX(OpenPipeEnd(fo.pipe(), *out), "file " << fo.id());
    } else if (fo.has_reg()) {
      fd = KLEAP_TRY(OpenRegFile(fo.reg(), images));
    } else {
      return Err(EINVAL) << "files.img: file " << fo.id() << " has no known kind";
    }
    out->by_id[fo.id()] = std::move(fd);
  }
  return Ok();
}

Result<void> InstallFds(const img::FdTable& table, const OpenFiles& files, int keep_from) {
  // Move every source above the highest target first, so no dup2 clobbers a source.
  int top = keep_from;
  std::vector<std::pair<int, const img::FdEntry*>> staged;
  for (auto& e : table.fds()) {
    auto it = files.by_id.find(e.file_id());
    if (it == files.by_id.end())
      return Err(EINVAL) << "fd " << e.fd() << ": file " << e.file_id() << " was not opened";
    int s = fcntl(it->second.get(), F_DUPFD_CLOEXEC, top);
    if (s < 0) return ErrnoError() << "stage fd " << e.fd();
    top = s + 1;
    staged.push_back({s, &e});
  }
  for (auto& [s, e] : staged) {
    if (dup3(s, e->fd(), e->cloexec() ? O_CLOEXEC : 0) < 0)
      return ErrnoError() << "install fd " << e->fd();
    close(s);
  }
  // Close everything below keep_from that the table doesn't name.
  std::vector<bool> wanted(size_t(keep_from), false);
  for (auto& e : table.fds())
    if (e.fd() < keep_from) wanted[size_t(e.fd())] = true;
  for (int fd = 0; fd < keep_from; ++fd)
    if (!wanted[size_t(fd)]) close(fd);
  return Ok();
}

}  // namespace kleap
