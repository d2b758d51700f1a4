// Memory-backed files: memfds (memfd_create) and tmpfs files unlinked while open or
// mapped (a shm_unlink()ed POSIX shm object). Each is a shmem inode, carried once as a
// ShmemObject of shmem.img with its name, exact size, content (holes stay holes), seals,
// mode and owner; its fds (the Memfd fd kind) and its mappings (Vma.shmem_id) point at it,
// so they share one file again after the restore. A tmpfs file that still has a name is
// an ordinary file (files.cc). Hugetlbfs memfds and memfd_secret memory are refused.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>

#include "engine/base/log.h"
#include "engine/base/page.h"
#include "engine/files.h"
#include "engine/mm.h"

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif
#ifndef SECRETMEM_MAGIC
#define SECRETMEM_MAGIC 0x5345434d
#endif

namespace kleap {
namespace {

constexpr char kMemfdPrefix[] = "/memfd:";
constexpr char kDeleted[] = " (deleted)";
constexpr uint32_t kKnownSeals =
    F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE | F_SEAL_EXEC;
constexpr size_t kMemfdNameMax = 249;  // MFD_NAME_MAX_LEN
constexpr uint64_t kMaxSize = 1ull << 40;

bool StartsWith(const std::string& s, const char* p) {
  return s.rfind(p, 0) == 0;
}
bool EndsWith(const std::string& s, const char* suf) {
  size_t n = strlen(suf);
  return s.size() >= n && s.compare(s.size() - n, n, suf) == 0;
}

// Whether the file a /proc link points at is a memory-backed file kleap carries: "" when
// it is, else why not. Not one at all (an ordinary file): *is_mem stays false.
std::string MemFileReason(const std::string& proc_path, const std::string& link, bool regular,
                          nlink_t nlink, bool* is_mem) {
  *is_mem = false;
  bool memfd = StartsWith(link, kMemfdPrefix), deleted = EndsWith(link, kDeleted);
  bool secret = StartsWith(link, "/secretmem");
  if (!memfd && !secret && !(deleted && regular && nlink == 0)) return "";
  struct statfs sf;
  if (statfs(proc_path.c_str(), &sf) < 0) {
    if (!memfd && !secret) return "";  // an ordinary deleted file: files.cc decides
    *is_mem = true;
    return "statfs " + proc_path + ": " + strerror(errno);
  }
  uint64_t type = uint64_t(sf.f_type);
  if (secret || type == SECRETMEM_MAGIC) {
    *is_mem = true;
    return "memfd_secret memory is not supported (no one but its task may read it)";
  }
  if (type == HUGETLBFS_MAGIC) {
    *is_mem = true;
    return memfd ? "a hugetlbfs memfd (MFD_HUGETLB) is not supported"
                 : "an unlinked hugetlbfs file is not supported";
  }
  if (type != TMPFS_MAGIC) {
    if (!memfd) return "";
    *is_mem = true;
    return "a memfd on an unknown filesystem (magic " + Hex(type) + ")";
  }
  if (!regular) {
    *is_mem = true;
    return "a memory-backed file that is not a regular file";
  }
  *is_mem = true;
  return "";
}

}  // namespace

bool ClassifyMemFile(FdDesc* d) {
  bool is_mem = false;
  std::string path = ProcPath(d->pid, "fd/" + std::to_string(d->fd));
  std::string reason =
      MemFileReason(path, d->link, S_ISREG(d->st.st_mode), d->st.st_nlink, &is_mem);
  if (!is_mem) return false;
  d->reason = reason;
  d->type = reason.empty() ? FdType::kMemfd : FdType::kUnsupported;
  d->deleted = true;
  return true;
}

bool ClassifyMemMapping(pid_t pid, const MapsEntry& m, VmaClass* c) {
  std::string path = MapFilesPath(pid, m.start, m.end);
  bool candidate = StartsWith(m.path, kMemfdPrefix) || StartsWith(m.path, "/secretmem") ||
                   EndsWith(m.path, kDeleted);
  if (!candidate) return false;
  struct stat st;
  bool regular = false;
  nlink_t nlink = 1;
  if (stat(path.c_str(), &st) == 0) {
    regular = S_ISREG(st.st_mode);
    nlink = st.st_nlink;
  }
  bool is_mem = false;
  std::string reason = MemFileReason(path, m.path, regular, nlink, &is_mem);
  if (!is_mem) return false;
  if (reason.empty() && m.shared && m.write) {
    // Sealed against writes after this mapping was made: no writable mapping of it can
    // be made again.
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    int seals = fd ? fcntl(fd.get(), F_GET_SEALS) : -1;
    if (seals > 0 && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)))
      reason =
          "a writable shared mapping of a memfd sealed against writes since "
          "(F_SEAL_FUTURE_WRITE) can't be made again";
  }
  c->reason = reason;
  c->kind = m.shared ? img::Vma::FILE_SHARED : img::Vma::FILE_PRIVATE;
  c->mem_file = reason.empty();
  return true;
}

Result<uint64_t> DumpMemFile(DumpContext& ctx, const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return ErrnoError() << "stat " << path;
  uint64_t id = ctx.ShmemId(st.st_dev, st.st_ino);
  for (auto& o : ctx.shmem.objects())
    if (o.id() == id) return id;
  std::string link = KLEAP_TRY(ReadLink(path));
  // A new description of the same inode: the task's own offset stays untouched.
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError() << "open " << link;
  img::ShmemObject* o = ctx.shmem.add_objects();
  o->set_id(id);
  std::string name =
      EndsWith(link, kDeleted) ? link.substr(0, link.size() - strlen(kDeleted)) : link;
  if (StartsWith(name, kMemfdPrefix)) {
    o->set_kind(img::ShmemObject::MEMFD);
    o->set_name(name.substr(strlen(kMemfdPrefix)));
  } else {
    o->set_kind(img::ShmemObject::TMPFS_FILE);
    o->set_name(name);
  }
  int seals = fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0) return ErrnoError() << "F_GET_SEALS " << link;
  if (uint32_t(seals) & ~kKnownSeals)
    return Err(ENOTSUP) << link << ": unknown seals " << Hex(uint64_t(seals));
  o->set_seals(uint32_t(seals));
  o->set_size(uint64_t(st.st_size));
  o->set_mode(st.st_mode);
  o->set_uid(st.st_uid);
  o->set_gid(st.st_gid);
  o->set_atime_ns(int64_t(st.st_atim.tv_sec) * 1000000000 + st.st_atim.tv_nsec);
  o->set_mtime_ns(int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec);
  o->set_blob(ShmemImage(id));
  KLEAP_TRY_CTX(DumpShmemPages(ctx, fd.get(), uint64_t(st.st_size), o), link);
  return id;
}

Result<void> DumpMemfd(DumpContext& ctx, const FdDesc& d, img::FileObject* fo) {
  std::string path = ProcPath(d.pid, "fd/" + std::to_string(d.fd));
  img::Memfd* mf = fo->mutable_memfd();
  mf->set_shmem_id(KLEAP_TRY(DumpMemFile(ctx, path)));
  mf->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  mf->set_pos(d.info.pos);
  return Ok();
}

// ---- restore ----

Result<void> ValidateMemfd(const img::FileObject& fo) {
  const img::Memfd& mf = fo.memfd();
  uint32_t bad = O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_DIRECTORY | O_PATH | O_TMPFILE;
  if (mf.shmem_id() == 0 || (mf.flags() & O_ACCMODE) == O_ACCMODE || (mf.flags() & bad))
    return Err(EINVAL) << "files.img: memfd " << fo.id() << ": bad shmem id " << mf.shmem_id()
                       << " or flags 0" << std::oct << mf.flags();
  return Ok();
}

Result<void> ValidateShmem(const RestorePlan& plan) {
  std::map<uint64_t, const img::ShmemObject*> by_id;
  for (auto& o : plan.shmem.objects()) {
    std::string what = "shmem.img: object " + std::to_string(o.id());
    if (o.id() == 0 || !by_id.emplace(o.id(), &o).second)
      return Err(EINVAL) << what << ": zero or repeated id";
    if (!img::ShmemObject::Kind_IsValid(o.kind()))
      return Err(EINVAL) << what << ": unknown kind " << int(o.kind());
    if (o.kind() == img::ShmemObject::ANON_SHARED) continue;  // restore.cc checks its size
    if (o.size() > kMaxSize) return Err(EINVAL) << what << ": bad size " << o.size();
    const std::string& n = o.name();
    if (n.find('\0') != std::string::npos ||
        (o.kind() == img::ShmemObject::MEMFD && n.size() > kMemfdNameMax) ||
        (o.kind() == img::ShmemObject::TMPFS_FILE &&
         (n.size() < 2 || n[0] != '/' || n.size() >= 4096 || n.back() == '/' ||
          n.find("/../") != std::string::npos || EndsWith(n, "/.."))))
      return Err(EINVAL) << what << ": bad name '" << n << "'";
    if (o.seals() & ~kKnownSeals) return Err(EINVAL) << what << ": bad seals " << Hex(o.seals());
    if (!S_ISREG(o.mode())) return Err(EINVAL) << what << ": not a regular file mode";
    uint64_t end = RoundPage(o.size()), prev = 0;
    for (auto& r : o.runs())
      if (r.vaddr() % kPage || r.vaddr() < prev || r.nr_pages() == 0 || r.vaddr() > end ||
          r.nr_pages() > (end - r.vaddr()) / kPage)
        return Err(EINVAL) << what << ": page run at " << r.vaddr() << " out of range";
      else
        prev = r.vaddr() + r.nr_pages() * kPage;
  }
  auto want_file = [&](uint64_t id, const std::string& who) -> Result<void> {
    auto it = by_id.find(id);
    if (it == by_id.end() || it->second->kind() == img::ShmemObject::ANON_SHARED)
      return Err(EINVAL) << who << " names memory file " << id << ", which shmem.img lacks";
    return Ok();
  };
  for (auto& [pid, mm] : plan.mms)
    for (auto& v : mm.vmas()) {
      std::string who = MmImage(pid) + ": mapping " + Hex(v.start());
      if (v.kind() == img::Vma::ANON_SHARED) {
        auto it = by_id.find(v.shmem_id());
        if (it == by_id.end() || it->second->kind() != img::ShmemObject::ANON_SHARED)
          return Err(EINVAL) << who << " names shared memory " << v.shmem_id()
                             << ", which shmem.img lacks";
      } else if ((v.kind() == img::Vma::FILE_SHARED || v.kind() == img::Vma::FILE_PRIVATE) &&
                 v.shmem_id()) {
        KLEAP_TRY(want_file(v.shmem_id(), who));
      }
    }
  for (auto& fo : plan.files.files())
    if (fo.kind_case() == img::FileObject::kMemfd)
      KLEAP_TRY(want_file(fo.memfd().shmem_id(), "files.img: memfd " + std::to_string(fo.id())));
  return Ok();
}

namespace {

// memfd_create as the dumped one was: MFD_EXEC keeps the exec bits the mode may need
// (kernels before 6.3 don't know it; a vm.memfd_noexec=2 namespace refuses it).
Result<UniqueFd> MakeMemfd(const std::string& name, uint32_t seals) {
  unsigned base = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  UniqueFd fd(memfd_create(name.c_str(), base | MFD_EXEC));
  if (!fd && errno == EINVAL) fd.reset(memfd_create(name.c_str(), base));
  if (!fd && errno == EACCES && (seals & F_SEAL_EXEC))
    fd.reset(memfd_create(name.c_str(), base | MFD_NOEXEC_SEAL));
  if (!fd) return ErrnoError() << "memfd_create " << name;
  return fd;
}

// An unlinked tmpfs file in its old directory, named there for a moment so that its
// fds and mappings read "PATH (deleted)" again; a memfd when the directory is gone.
Result<UniqueFd> MakeTmpfsFile(const img::ShmemObject& o,
                               const std::function<Result<void>(int)>& fill) {
  const std::string& path = o.name();
  std::string dir = path.substr(0, path.rfind('/'));
  if (dir.empty()) dir = "/";
  UniqueFd tmp(open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, o.mode() & 07777));
  struct statfs sf;
  if (tmp && (fstatfs(tmp.get(), &sf) < 0 || uint64_t(sf.f_type) != TMPFS_MAGIC)) {
    tmp.reset();  // not a tmpfs (any more): the file must not land on a disk
    errno = EOPNOTSUPP;
  }
  if (!tmp) {
    if (errno != ENOENT && errno != EOPNOTSUPP && errno != EISDIR)
      return ErrnoError() << "recreate unlinked file " << path << " in " << dir;
    KLOG(kDebug) << "no tmpfs directory " << dir << " for " << path << ", a memfd instead";
    UniqueFd fd = KLEAP_TRY(MakeMemfd(path.substr(path.rfind('/') + 1), o.seals()));
    KLEAP_TRY(fill(fd.get()));
    return fd;
  }
  KLEAP_TRY(fill(tmp.get()));
  std::string link = "/proc/self/fd/" + std::to_string(tmp.get());
  if (linkat(AT_FDCWD, link.c_str(), AT_FDCWD, path.c_str(), AT_SYMLINK_FOLLOW) < 0) {
    KLOG(kDebug) << "link " << path << ": " << strerror(errno) << ", keeping it nameless";
    return tmp;
  }
  UniqueFd named(open(path.c_str(), O_RDWR | O_CLOEXEC));
  int saved = errno;
  unlink(path.c_str());
  if (!named) {
    errno = saved;
    return ErrnoError() << "reopen unlinked file " << path;
  }
  return named;
}

}  // namespace

Result<void> CreateMemFiles(const RestorePlan& plan, ImageReader& images, OpenFiles* out) {
  out->mem_files_pid = getpid();
  std::vector<char> buf(1 << 20);
  for (auto& o : plan.shmem.objects()) {
    if (o.kind() == img::ShmemObject::ANON_SHARED) continue;
    std::string what = (o.kind() == img::ShmemObject::MEMFD ? "memfd:" : "") + o.name();
    // Owner, mode, content, exact size and times, before any seal.
    auto fill = [&](int fd) -> Result<void> {
      if (fchown(fd, o.uid(), o.gid()) < 0) return ErrnoError() << "chown " << what;
      if (fchmod(fd, o.mode() & 07777) < 0) return ErrnoError() << "chmod " << what;
      auto blob = KLEAP_TRY(images.OpenBlob(o.blob()));
      uint64_t off = 0;
      for (auto& r : o.runs()) {
        uint64_t n = r.nr_pages() * kPage;
        if (off + n > blob->size())
          return Err(EINVAL) << "shmem.img: object " << o.id() << ": runs past its blob";
        for (uint64_t done = 0; done < n;) {
          size_t k = size_t(std::min<uint64_t>(buf.size(), n - done));
          KLEAP_TRY(blob->ReadAt(off + done, buf.data(), k));
          if (pwrite(fd, buf.data(), k, off_t(r.vaddr() + done)) != ssize_t(k))
            return ErrnoError() << "write " << what;
          done += k;
        }
        off += n;
      }
      if (off != blob->size())
        return Err(EINVAL) << "image " << o.blob() << " holds " << blob->size()
                           << " bytes, its runs " << off;
      if (ftruncate(fd, off_t(o.size())) < 0) return ErrnoError() << "truncate " << what;
      // The times last: the writes above moved them.
      timespec times[2] = {{time_t(o.atime_ns() / 1000000000), long(o.atime_ns() % 1000000000)},
                           {time_t(o.mtime_ns() / 1000000000), long(o.mtime_ns() % 1000000000)}};
      if (futimens(fd, times) < 0) return ErrnoError() << "set the times of " << what;
      return Ok();
    };
    UniqueFd fd;
    if (o.kind() == img::ShmemObject::MEMFD) {
      fd = KLEAP_TRY(MakeMemfd(o.name(), o.seals()));
      KLEAP_TRY(fill(fd.get()));
    } else {
      fd = KLEAP_TRY(MakeTmpfsFile(o, fill));
    }
    // The seals last, once the content is in and before any task has the file.
    int have = fcntl(fd.get(), F_GET_SEALS);
    if (have < 0) have = 0;
    uint32_t add = o.seals() & ~uint32_t(have);
    if (add && fcntl(fd.get(), F_ADD_SEALS, add) < 0)
      return ErrnoError() << "seal " << what << " with " << Hex(add);
    // Held read-only from now on (a reopen through /proc may still write): a writer
    // would keep a task from having it as its executable again (PR_SET_MM_MAP).
    UniqueFd ro(open(("/proc/self/fd/" + std::to_string(fd.get())).c_str(), O_RDONLY | O_CLOEXEC));
    if (!ro) return ErrnoError() << "hold " << what << " read-only";
    out->mem_files[o.id()] = std::move(ro);
    if (o.kind() == img::ShmemObject::MEMFD) out->memfd_created[o.id()] = std::move(fd);
  }
  return Ok();
}

Result<UniqueFd> OpenMemfd(const img::FileObject& fo, ImageReader&, OpenFiles& files) {
  const img::Memfd& mf = fo.memfd();
  auto it = files.mem_files.find(mf.shmem_id());
  if (it == files.mem_files.end())
    return Err(EINVAL) << "files.img: memfd " << fo.id() << ": no memory file " << mf.shmem_id();
  std::string self = "/proc/self/fd/" + std::to_string(it->second.get());
  int flags = int(mf.flags()) & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_CLOEXEC);
  UniqueFd fd;
  // The description memfd_create made is read-write with O_LARGEFILE, and F_SETFL sets
  // the rest.
  constexpr int kSettable = O_APPEND | O_NONBLOCK | O_DIRECT | O_NOATIME;
  auto created = files.memfd_created.find(mf.shmem_id());
  if (created != files.memfd_created.end() &&
      (flags & ~(kSettable | O_ASYNC)) == (O_RDWR | kKernelOLargefile) &&
      files.memfd_created_given.insert(mf.shmem_id()).second) {
    fd.reset(fcntl(created->second.get(), F_DUPFD_CLOEXEC, 0));
    if (!fd) return ErrnoError() << "dup memfd " << mf.shmem_id();
    if (fcntl(fd.get(), F_SETFL, flags & kSettable) < 0)
      return ErrnoError() << "memfd " << mf.shmem_id() << ": set flags " << Hex(flags);
  }
  // O_NOFOLLOW (shm_open's) can't go through the /proc link: an unlinked tmpfs file is
  // named at its path for a moment again and opened there.
  std::string link = KLEAP_TRY(ReadLink(self));
  if (!fd && (flags & O_NOFOLLOW) && !StartsWith(link, kMemfdPrefix) && EndsWith(link, kDeleted)) {
    std::string path = link.substr(0, link.size() - strlen(kDeleted));
    if (linkat(AT_FDCWD, self.c_str(), AT_FDCWD, path.c_str(), AT_SYMLINK_FOLLOW) == 0) {
      fd = OpenLikeTask(path, flags | O_CLOEXEC, 0);
      int saved = errno;
      unlink(path.c_str());
      errno = saved;
      if (!fd) return ErrnoError() << "reopen unlinked file " << path;
    } else {
      KLOG(kDebug) << "link " << path << ": " << strerror(errno) << ", reopened without O_NOFOLLOW";
    }
  }
  if (!fd) fd = OpenLikeTask(self, (flags & ~O_NOFOLLOW) | O_CLOEXEC, 0);
  if (!fd) return ErrnoError() << "reopen memory file " << mf.shmem_id() << " for file " << fo.id();
  if (lseek(fd.get(), off_t(mf.pos()), SEEK_SET) < 0)
    return ErrnoError() << "seek memory file " << mf.shmem_id() << " to " << mf.pos();
  return fd;
}

}  // namespace kleap
