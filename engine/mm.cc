// Memory: every VMA of a task with its protections and backing, the pages that only
// the task holds (anonymous memory and copied-on-write file pages) as raw page-aligned
// blobs, shared anonymous memory once per shmem object, and the mm fields that
// prctl(PR_SET_MM_MAP) sets. The vDSO is in vdso.cc.
#include "engine/mm.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/prctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "engine/aio.h"
#include "engine/base/log.h"
#include "engine/base/page.h"
#include "engine/files.h"

namespace kleap {
namespace {

constexpr uint64_t kPmPresent = 1ull << 63, kPmSwapped = 1ull << 62, kPmFileOrShared = 1ull << 61;
constexpr uint64_t kPmExclusive = 1ull << 56, kPmFrame = (1ull << 55) - 1;
constexpr size_t kCopyChunk = 1u << 20;
constexpr size_t kRestoreWindow = 8u << 20;          // mapped blob window: bounds kleap's RSS
constexpr int kMembarrierGetRegistrations = 1 << 9;  // Linux 6.3
constexpr uint64_t kMapDroppable = 0x08;             // Linux 6.11

bool EndsWith(const std::string& s, const char* suf) {
  size_t n = strlen(suf);
  return s.size() >= n && s.compare(s.size() - n, n, suf) == 0;
}

bool IsRegularMapping(pid_t pid, const MapsEntry& m) {
  struct stat st;
  return stat(MapFilesPath(pid, m.start, m.end).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

uint32_t ProtOf(const MapsEntry& m) {
  return (m.read ? PROT_READ : 0) | (m.write ? PROT_WRITE : 0) | (m.exec ? PROT_EXEC : 0);
}

}  // namespace

VmaClass ClassifyVma(const MapsEntry& m, pid_t pid) {
  VmaClass c;
  const std::string& p = m.path;
  if (p == "[vdso]") {
    c.kind = img::Vma::VDSO;
  } else if (p == "[vvar]" || p == "[vvar_vclock]") {
    c.kind = img::Vma::VVAR;
  } else if (p == "[vsyscall]") {
    c.skip = true;  // a fixed kernel page, not a VMA of the task
  } else if (p.empty() || p == "[heap]" || p == "[stack]" || p.rfind("[anon:", 0) == 0) {
    c.kind = img::Vma::ANON_PRIVATE;
    if (m.shared) c.reason = "a shared anonymous mapping without a shmem file";
  } else if (p.rfind("/dev/zero", 0) == 0 && m.shared) {
    c.kind = img::Vma::ANON_SHARED;
  } else if (IsAioRingMapping(m)) {
    c.kind = img::Vma::AIO_RING;
  } else if (p.rfind("/SYSV", 0) == 0) {
    c.kind = img::Vma::SYSV_SHM;  // carried with its IPC namespace, or refused (ipc.cc)
  } else if (pid && ClassifyMemMapping(pid, m, &c)) {
    // a memfd or an unlinked tmpfs file: c says how it is carried, or why not
  } else if (p.rfind("/memfd:", 0) == 0) {
    c.reason = "memfd mappings are only classified with the task's pid";
  } else if (p[0] == '[') {
    c.reason = "special mapping " + p + " is not supported";
  } else if (EndsWith(p, " (deleted)")) {
    // A file deleted or replaced since it was mapped (a library after a package
    // upgrade): carried whole, as an unlinked file (files.cc).
    c.kind = m.shared ? img::Vma::FILE_SHARED : img::Vma::FILE_PRIVATE;
    c.reason = pid ? RefuseMappedGhost(MapFilesPath(pid, m.start, m.end))
                   : "a mapped file deleted since is only classified with the task's pid";
    c.ghost = c.reason.empty();
  } else if (p[0] == '/') {
    c.kind = m.shared ? img::Vma::FILE_SHARED : img::Vma::FILE_PRIVATE;
    // Files under /dev are devices, but for regular files there (POSIX shm in /dev/shm).
    if (m.path.rfind("/dev/", 0) == 0 && !(pid && IsRegularMapping(pid, m)))
      c.reason = "device mappings are not supported";
  } else {
    c.reason = "unknown mapping";
  }
  // Flags no restore can give a mapping back (smaps VmFlags; read with the mapping's own
  // flags, so only when they were read).
  static const struct {
    const char* flag;
    const char* reason;
  } kRefused[] = {{"ss", "a shadow stack is not carried"},
                  {"sl", "a sealed mapping (mseal) is not carried"},
                  {"um", "a range registered with userfaultfd is not carried"},
                  {"uw", "a range registered with userfaultfd is not carried"},
                  {"ui", "a range registered with userfaultfd is not carried"}};
  if (c.reason.empty())
    for (auto& r : kRefused)
      if (m.HasFlag(r.flag)) c.reason = r.reason;
  return c;
}

std::vector<Problem> CheckMappings(pid_t pid) {
  std::vector<Problem> out;
  auto maps = ReadSmaps(pid);  // with each mapping's flags
  if (!maps) {
    out.push_back({pid, "task", "", "read smaps: " + maps.error().ToString()});
    return out;
  }
  for (auto& m : *maps) {
    VmaClass c = ClassifyVma(m, pid);
    if (!c.reason.empty())
      out.push_back({pid, "mapping " + Hex(m.start) + "-" + Hex(m.end),
                     m.path.empty() ? "anonymous" : m.path, c.reason});
  }
  return out;
}

namespace {

// Copies [vaddr, vaddr+len) of a task into a blob, through a buffer that stays in cache:
// with process_vm_readv when `readable`, else through /proc/PID/mem.
Result<void> CopyOut(pid_t pid, uint64_t vaddr, uint64_t len, bool readable, BlobWriter* blob,
                     std::vector<uint8_t>& buf) {
  while (len) {
    size_t n = size_t(std::min<uint64_t>(len, buf.size()));
    if (readable)
      KLEAP_TRY(ReadRemote(pid, RemotePtr(vaddr), buf.data(), n));
    else
      KLEAP_TRY(ReadRemoteForce(pid, RemotePtr(vaddr), buf.data(), n));
    KLEAP_TRY(blob->Write(buf.data(), n));
    vaddr += n;
    len -= n;
  }
  return Ok();
}

// The frame of the kernel's shared zero page, which a read of untouched anonymous memory
// maps; 0 when pagemap shows no frames (no CAP_SYS_ADMIN). Such a page is nothing of
// the task's: it is not dumped, and reads zero after the restore as it did before.
uint64_t ZeroPageFrame() {
  static const uint64_t frame = [] {
    void* p = mmap(nullptr, kPage, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return uint64_t(0);
    (void)*static_cast<volatile const char*>(p);
    uint64_t e = 0, f = 0;
    UniqueFd pm(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    if (pm && pread(pm.get(), &e, 8, off_t(uint64_t(p) / kPage * 8)) == 8 && (e & kPmPresent))
      f = e & kPmFrame;
    munmap(p, kPage);
    return f;
  }();
  return frame;
}

// A private anonymous mapping's pages against the parent's (copy-on-write sharing): the
// frames the parent holds in more than one mapping, and this task's for its children.
struct CowScan {
  const std::vector<std::pair<uint64_t, uint64_t>>* parent = nullptr;
  std::vector<std::pair<uint64_t, uint64_t>>* mine = nullptr;
  size_t at = 0;  // in parent: the first entry not below the address scanned
  bool SharedWithParent(uint64_t addr, uint64_t frame) {
    if (!parent) return false;
    while (at < parent->size() && (*parent)[at].first < addr) ++at;
    return at < parent->size() && (*parent)[at].first == addr && (*parent)[at].second == frame;
  }
};

// Finds the pages of a VMA that only the task holds, from /proc/PID/pagemap.
Result<void> DumpVmaPages(pid_t pid, int pagemap_fd, const MapsEntry& m, bool file_backed,
                          BlobWriter* blob, img::Pagemap* pm, std::vector<uint8_t>& buf,
                          uint64_t* bytes, CowScan* cow = nullptr) {
  constexpr size_t kBatch = 8192;
  std::vector<uint64_t> ents(kBatch);
  const uint64_t zero = ZeroPageFrame();
  uint64_t run_start = 0, run_pages = 0, shared_start = 0, shared_pages = 0;
  // A run with a page that another mapping holds too (or that is swapped out, which
  // pagemap can't tell) is read through /proc/PID/mem: process_vm_readv pins the pages,
  // and a pin of a shared anonymous page copies it (the kernel's unsharing since 5.19),
  // which would break copy-on-write sharing in the tree even if it runs on.
  bool run_via_mem = false;
  auto flush = [&]() -> Result<void> {
    if (!run_pages) return Ok();
    img::PageRun* r = pm->add_runs();
    r->set_vaddr(run_start);
    r->set_nr_pages(run_pages);
    KLEAP_TRY(CopyOut(pid, run_start, run_pages * kPage, m.read && !run_via_mem, blob, buf));
    run_via_mem = false;
    *bytes += run_pages * kPage;
    run_pages = 0;
    return Ok();
  };
  auto flush_shared = [&]() {
    if (!shared_pages) return;
    img::PageRun* r = pm->add_parent_runs();
    r->set_vaddr(shared_start);
    r->set_nr_pages(shared_pages);
    shared_pages = 0;
  };
  for (uint64_t a = m.start; a < m.end;) {
    size_t n = size_t(std::min<uint64_t>(kBatch, (m.end - a) / kPage));
    ssize_t got = pread(pagemap_fd, ents.data(), n * 8, off_t(a / kPage * 8));
    if (got != ssize_t(n * 8))
      return ErrnoError() << "read pagemap of pid " << pid << " at " << Hex(a);
    for (size_t i = 0; i < n; ++i, a += kPage) {
      uint64_t e = ents[i];
      bool want = (e & (kPmPresent | kPmSwapped)) && !(file_backed && (e & kPmFileOrShared)) &&
                  !(zero && (e & kPmPresent) && (e & kPmFrame) == zero);
      if (want && run_pages && run_start + run_pages * kPage == a) {
        ++run_pages;
      } else if (want) {
        KLEAP_TRY(flush());
        run_start = a;
        run_pages = 1;
      } else if (run_pages) {
        KLEAP_TRY(flush());
      }
      if (want && !(e & kPmExclusive)) run_via_mem = true;
      // A frame shows only to CAP_SYS_ADMIN; 0 when it doesn't.
      uint64_t frame = e & kPmFrame;
      bool multi = cow && want && (e & kPmPresent) && !(e & kPmExclusive) && frame;
      if (multi && cow->mine) cow->mine->emplace_back(a, frame);
      if (multi && cow->SharedWithParent(a, frame)) {
        if (!shared_pages || shared_start + shared_pages * kPage != a) {
          flush_shared();
          shared_start = a;
        }
        ++shared_pages;
      } else {
        flush_shared();
      }
    }
  }
  flush_shared();
  return flush();
}

// Dumps a shared anonymous (shmem) object once, through /proc/PID/map_files, so pages
// that other tasks touched are included and nothing is faulted in.
Result<void> DumpShmem(DumpContext& ctx, pid_t pid, const MapsEntry& m, uint64_t id) {
  for (auto& o : ctx.shmem.objects())
    if (o.id() == id) return Ok();
  std::string path = MapFilesPath(pid, m.start, m.end);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError() << "open " << path;
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return ErrnoError() << "stat " << path;
  img::ShmemObject* o = ctx.shmem.add_objects();
  o->set_id(id);
  o->set_size(uint64_t(st.st_size));
  o->set_blob(ShmemImage(id));
  KLEAP_TRY_CTX(DumpShmemPages(ctx, fd.get(), uint64_t(st.st_size), o), path);
  return Ok();
}

}  // namespace

Result<void> DumpShmemPages(DumpContext& ctx, int fd, uint64_t size, img::ShmemObject* o) {
  auto blob = KLEAP_TRY(ctx.images->CreateBlob(o->blob()));
  std::vector<uint8_t> buf(kCopyChunk);
  off_t off = 0, end = off_t(size);
  while (off < end) {
    off_t data = lseek(fd, off, SEEK_DATA);
    if (data < 0) break;  // ENXIO: no more data
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    data &= ~off_t(kPage - 1);
    hole = (hole + off_t(kPage) - 1) & ~off_t(kPage - 1);
    img::PageRun* r = o->add_runs();
    r->set_vaddr(uint64_t(data));
    r->set_nr_pages(uint64_t(hole - data) / kPage);
    for (off_t p = data; p < hole;) {
      size_t n = size_t(std::min<off_t>(off_t(buf.size()), hole - p));
      // The last page of a file whose size is not page-aligned reads short: zeros.
      size_t want = size_t(std::max<off_t>(0, std::min<off_t>(off_t(n), end - p)));
      ssize_t got = pread(fd, buf.data(), want, p);
      if (got != ssize_t(want)) return ErrnoError() << "read shared memory at " << p;
      memset(buf.data() + want, 0, n - want);
      KLEAP_TRY(blob->Write(buf.data(), n));
      p += off_t(n);
      ctx.page_bytes += n;
    }
    off = hole;
  }
  return blob->Close();
}

namespace {

// The address space's own fields: the layout from stat, brk, auxv and the executable.
Result<void> DumpMmLayout(DumpContext& ctx, const TaskInfo& task, img::MmImage* mm) {
  pid_t pid = task.pid;
  RemoteSyscalls& rs = ctx.tree->Thread(pid);
  mm->set_pid(pid);
  mm->set_arch(uint32_t(task.arch));
  auto st = KLEAP_TRY_CTX(ReadStat(pid), "task " << pid);
  mm->set_start_code(st.start_code);
  mm->set_end_code(st.end_code);
  mm->set_start_data(st.start_data);
  mm->set_end_data(st.end_data);
  mm->set_start_brk(st.start_brk);
  mm->set_start_stack(st.start_stack);
  mm->set_arg_start(st.arg_start);
  mm->set_arg_end(st.arg_end);
  mm->set_env_start(st.env_start);
  mm->set_env_end(st.env_end);
  // Only the task knows its current brk: ask it.
  uint64_t brk = KLEAP_TRY_CTX(
      WithArch(task.arch, [&](auto a) { return rs.Call(a.kKind, decltype(a)::kBrk, 0); }),
      "task " << pid << ": brk");
  mm->set_brk(brk);
  mm->set_auxv(KLEAP_TRY(ReadFileToString(ProcPath(pid, "auxv"))));
  std::string exe = KLEAP_TRY(ReadLink(ProcPath(pid, "exe")));
  mm->set_exe_path(exe);
  struct stat est;
  if (stat(ProcPath(pid, "exe").c_str(), &est) < 0)
    return ErrnoError() << "stat exe of task " << pid;
  *mm->mutable_exe() = KLEAP_TRY(IdentifyFile(ProcPath(pid, "exe"), est));
  struct statfs fs;
  bool on_shmem = statfs(ProcPath(pid, "exe").c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC;
  if (est.st_nlink == 0 && on_shmem)
    mm->set_exe_shmem(ctx.ShmemId(est.st_dev, est.st_ino));
  else if (est.st_nlink == 0 && EndsWith(exe, " (deleted)"))
    mm->set_exe_ghost(KLEAP_TRY(
        DumpMappedGhost(ctx, ProcPath(pid, "exe"), "task " + std::to_string(pid) + " executable")));
  // Address-space flags that only the task can be asked about.
  mm->set_thp_disabled(KLEAP_TRY_CTX(WithArch(task.arch,
                                              [&](auto a) {
                                                return rs.Call(a.kKind, decltype(a)::kPrctl,
                                                               PR_GET_THP_DISABLE, 0, 0, 0, 0);
                                              }),
                                     "task " << pid << ": PR_GET_THP_DISABLE") != 0);
  auto regs = WithArch(task.arch, [&](auto a) {
    return rs.Call(a.kKind, decltype(a)::kMembarrier, kMembarrierGetRegistrations, 0, 0);
  });
  if (regs) {
    mm->set_membarrier_known(true);
    mm->set_membarrier(uint32_t(*regs));
  } else if (regs.error().code() != EINVAL) {
    return std::move(regs).error().Context("task " + std::to_string(pid) + ": membarrier");
  }
  return Ok();
}

}  // namespace

Result<void> DumpMm(DumpContext& ctx, const TaskInfo& task, img::MmImage* mm) {
  pid_t pid = task.pid;
  RemoteSyscalls& rs = ctx.tree->Thread(pid);
  // The mappings first, as they were before anything was asked of the task.
  auto maps = KLEAP_TRY_CTX(ReadSmaps(pid), "task " << pid);
  KLEAP_TRY(DumpMmLayout(ctx, task, mm));

  std::string pm_path = ProcPath(pid, "pagemap");
  UniqueFd pagemap(open(pm_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!pagemap) return ErrnoError() << "open " << pm_path;
  img::Pagemap pm;
  pm.set_pid(pid);
  pm.set_blob(PagesImage(pid));
  auto blob = KLEAP_TRY(ctx.images->CreateBlob(PagesImage(pid)));
  std::vector<uint8_t> buf(kCopyChunk);
  std::map<std::pair<uint64_t, uint64_t>, img::FileIdentity> ident_cache;
  struct ShmemTodo {
    MapsEntry m;
    std::string where;
    uint64_t id;
    bool mem_file;
  };
  std::vector<ShmemTodo> shmem_todo;
  // Pages shared with the parent since a fork, found by frame.
  CowScan cow;
  if (auto p = ctx.cow_frames.find(task.ppid); task.ppid && p != ctx.cow_frames.end())
    cow.parent = &p->second;
  cow.mine = &ctx.cow_frames[pid];

  for (auto& m : maps) {
    VmaClass c = ClassifyVma(m, pid);
    if (c.skip) continue;
    std::string where = "task " + std::to_string(pid) + " mapping " + Hex(m.start) + "-" +
                        Hex(m.end) + " " + m.path;
    if (!c.reason.empty()) return Err(ENOTSUP) << where << ": " << c.reason;
    img::Vma* v = mm->add_vmas();
    v->set_start(m.start);
    v->set_end(m.end);
    v->set_prot(ProtOf(m));
    v->set_kind(c.kind);
    v->set_pgoff(m.offset);
    v->set_growsdown(m.HasFlag("gd"));
    for (auto& f : m.vm_flags) v->add_vm_flags(f);
    if (!m.path.empty() && m.path[0] == '[') v->set_name(m.path);
    switch (c.kind) {
      case img::Vma::VDSO: {
        std::string bytes(m.size(), '\0');
        KLEAP_TRY_CTX(ReadRemote(pid, RemotePtr(m.start), bytes.data(), bytes.size()), where);
        mm->set_vdso(bytes);
        break;
      }
      case img::Vma::VVAR:
        break;
      case img::Vma::SYSV_SHM:  // the segment's pages go with its namespace (ipc.cc)
        v->set_shmem_id(m.inode);
        v->set_path(m.path);
        break;
      case img::Vma::AIO_RING:
        KLEAP_TRY(DumpAioRing(rs, task.arch, m, mm->add_aio()));
        break;
      case img::Vma::ANON_SHARED: {
        uint64_t id = ctx.ShmemId(makedev(m.dev_major, m.dev_minor), m.inode);
        v->set_shmem_id(id);
        v->set_path(m.path);
        shmem_todo.push_back({m, where, id, false});  // after the pages blob: one blob at a time
        break;
      }
      case img::Vma::FILE_PRIVATE:
      case img::Vma::FILE_SHARED: {
        v->set_path(m.path);
        if (c.ghost) {
          v->set_ghost_file(
              KLEAP_TRY(DumpMappedGhost(ctx, MapFilesPath(pid, m.start, m.end), where)));
          if (c.kind == img::Vma::FILE_PRIVATE)
            KLEAP_TRY_CTX(DumpVmaPages(pid, pagemap.get(), m, true, blob.get(), &pm, buf,
                                       &ctx.page_bytes, &cow),
                          where);
          break;
        }
        struct stat fst, pst;
        if (stat(MapFilesPath(pid, m.start, m.end).c_str(), &fst) < 0)
          return ErrnoError() << where << ": stat";
        if (c.mem_file) {
          // The file is a shmem object of the set, dumped once with its content; only the
          // copied-on-write pages of a private mapping are the task's own.
          uint64_t id = ctx.ShmemId(fst.st_dev, fst.st_ino);
          v->set_shmem_id(id);
          shmem_todo.push_back({m, where, id, true});
          if (c.kind == img::Vma::FILE_PRIVATE)
            KLEAP_TRY_CTX(DumpVmaPages(pid, pagemap.get(), m, true, blob.get(), &pm, buf,
                                       &ctx.page_bytes, &cow),
                          where);
          break;
        }
        if (stat(m.path.c_str(), &pst) < 0 || pst.st_ino != fst.st_ino || pst.st_dev != fst.st_dev)
          return Err(ESTALE) << where << ": the file at this path is no longer the mapped one";
        auto key = std::make_pair(uint64_t(fst.st_dev), uint64_t(fst.st_ino));
        auto it = ident_cache.find(key);
        if (it == ident_cache.end())
          it = ident_cache.emplace(key, KLEAP_TRY_CTX(IdentifyFile(m.path, fst), where)).first;
        *v->mutable_file() = it->second;
        if (c.kind == img::Vma::FILE_PRIVATE)
          KLEAP_TRY_CTX(DumpVmaPages(pid, pagemap.get(), m, true, blob.get(), &pm, buf,
                                     &ctx.page_bytes, &cow),
                        where);
        break;
      }
      case img::Vma::ANON_PRIVATE:
        // Droppable memory (MAP_DROPPABLE) the kernel may zero at any time: it comes back
        // empty, as if dropped, and costs the set nothing.
        if (m.HasFlag("dp")) break;
        KLEAP_TRY_CTX(
            DumpVmaPages(pid, pagemap.get(), m, false, blob.get(), &pm, buf, &ctx.page_bytes, &cow),
            where);
        break;
      default:
        break;
    }
  }
  KLEAP_TRY(blob->Close());
  for (auto& t : shmem_todo) {
    if (t.mem_file)
      KLEAP_TRY_CTX(DumpMemFile(ctx, MapFilesPath(pid, t.m.start, t.m.end)), t.where);
    else
      KLEAP_TRY_CTX(DumpShmem(ctx, pid, t.m, t.id), t.where);
  }
  KLEAP_TRY(ctx.images->WriteMessage(PagemapImage(pid), pm));
  ctx.written.pagemaps[pid] = std::move(pm);
  return Ok();
}

// ---- restore ----

bool HasVmFlag(const img::Vma& v, std::string_view f) {
  return std::find(v.vm_flags().begin(), v.vm_flags().end(), f) != v.vm_flags().end();
}

static uint64_t AnonMapFlags(const img::Vma& v) {
  return (HasVmFlag(v, "dp") ? kMapDroppable : MAP_PRIVATE) | MAP_ANONYMOUS |
         (v.growsdown() ? MAP_GROWSDOWN : 0) | (HasVmFlag(v, "nr") ? MAP_NORESERVE : 0);
}

Result<void> FillCowVma(const img::MmImage& mm, const img::Pagemap& pm, int vma, BlobReader& blob,
                        bool inherited, int fd) {
  const img::Vma& v = mm.vmas(vma);
  std::string where = "mapping " + Hex(v.start()) + "-" + Hex(v.end());
  if (!inherited) {
    void* want = reinterpret_cast<void*>(v.start());
    uint64_t flags =
        fd < 0 ? AnonMapFlags(v) : MAP_PRIVATE | (HasVmFlag(v, "nr") ? MAP_NORESERVE : 0);
    void* got = mmap(want, v.end() - v.start(), PROT_READ | PROT_WRITE,
                     int(flags | MAP_FIXED_NOREPLACE), fd, off_t(fd < 0 ? 0 : v.pgoff()));
    if (got == MAP_FAILED) return ErrnoError() << where << ": mmap";
    if (got != want) {
      munmap(got, v.end() - v.start());
      return Err(EEXIST) << where << ": mapped at " << Hex(uint64_t(got));
    }
  }
  auto shared = pm.parent_runs().begin();
  uint64_t blob_off = 0, gap = v.start();
  auto zap = [&](uint64_t to) -> Result<void> {
    if (inherited && to > gap && madvise(reinterpret_cast<void*>(gap), to - gap, MADV_DONTNEED) < 0)
      return ErrnoError() << where << ": drop the parent's pages at " << Hex(gap);
    return Ok();
  };
  auto fill = [&](uint64_t from, uint64_t to, uint64_t off) -> Result<void> {
    if (to > from) KLEAP_TRY_CTX(blob.ReadAt(off, reinterpret_cast<void*>(from), to - from), where);
    return Ok();
  };
  for (auto& r : pm.runs()) {
    uint64_t start = r.vaddr(), end = r.vaddr() + r.nr_pages() * kPage;
    if (end <= v.start()) {
      blob_off += end - start;
      continue;
    }
    if (start >= v.end()) break;
    KLEAP_TRY(zap(start));
    gap = end;
    // The run less the pages shared with the parent, which the inherited copy has.
    uint64_t at = start;
    while (inherited && shared != pm.parent_runs().end() && shared->vaddr() < end) {
      uint64_t s0 = shared->vaddr(), s1 = s0 + shared->nr_pages() * kPage;
      if (s1 <= at) {
        ++shared;
        continue;
      }
      KLEAP_TRY(fill(at, s0, blob_off + (at - start)));
      at = s1;
      ++shared;
    }
    KLEAP_TRY(fill(at, end, blob_off + (at - start)));
    blob_off += end - start;
  }
  return zap(v.end());
}

Result<ScratchPage> PickScratch(const img::MmImage& mm) {
  auto ours = KLEAP_TRY(ReadMaps(getpid()));
  constexpr uint64_t kSize = ScratchPage::kSize;
  auto busy = [&](uint64_t a) {
    for (auto& v : mm.vmas())
      if (a < v.end() && a + kSize > v.start()) return true;
    for (auto& m : ours)
      if (a < m.end && a + kSize > m.start) return true;
    return false;
  };
  // Low addresses first: most layouts leave room just above mmap_min_addr.
  for (uint64_t a = 0x100000; a < 0xff000000ull; a += 0x100000)
    if (!busy(a)) return ScratchPage{RemotePtr(a)};
  return Err(ENOMEM) << "no free page below 4 GiB for the restorer in task " << mm.pid();
}

namespace {

struct PrctlMmMap {
  uint64_t start_code, end_code, start_data, end_data, start_brk, brk, start_stack;
  uint64_t arg_start, arg_end, env_start, env_end;
  uint64_t auxv;
  uint32_t auxv_size;
  uint32_t exe_fd;
};
static_assert(sizeof(PrctlMmMap) == 104);

// membarrier(2) registrations of an address space, made again in the task.
Result<void> RestoreMmFlags(RemoteSyscalls& rs, const img::MmImage& mm, const std::string& who) {
  constexpr ArchKind k64 = ArchKind::kX86_64;
  if (mm.thp_disabled())
    KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kPrctl, PR_SET_THP_DISABLE, 1, 0, 0, 0),
                  who << ": PR_SET_THP_DISABLE");
  for (uint32_t bit = 1; bit && bit <= mm.membarrier(); bit <<= 1)
    if (mm.membarrier() & bit)
      KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kMembarrier, bit, 0, 0),
                    who << ": membarrier register " << Hex(bit));
  return Ok();
}

// The advice and locks a mapping had (smaps VmFlags), given again once its pages are in.
// A kernel that lacks one (KSM, THP) leaves the mapping without it: said in the log.
Result<void> ApplyVmFlags(RemoteSyscalls& rs, const img::Vma& v, const std::string& where) {
  static const struct {
    const char* flag;
    int advice;
  } kAdvice[] = {{"dc", MADV_DONTFORK},   {"wf", MADV_WIPEONFORK}, {"hg", MADV_HUGEPAGE},
                 {"nh", MADV_NOHUGEPAGE}, {"dd", MADV_DONTDUMP},   {"sr", MADV_SEQUENTIAL},
                 {"rr", MADV_RANDOM},     {"mg", MADV_MERGEABLE}};
  uint64_t len = v.end() - v.start();
  for (auto& a : kAdvice)
    if (HasVmFlag(v, a.flag)) {
      auto r = rs.Call(ArchKind::kX86_64, X64Arch::kMadvise, v.start(), len, uint64_t(a.advice));
      if (!r)
        KLOG(kWarning) << where << ": madvise " << a.flag << ": " << r.error().ToString()
                       << "; the mapping goes on without it";
    }
  // A locked mapping (mlock, MAP_LOCKED) or one locked on fault (MLOCK_ONFAULT).
  if (HasVmFlag(v, "lo") || HasVmFlag(v, "lf"))
    KLEAP_TRY_CTX(rs.Call(ArchKind::kX86_64, X64Arch::kMlock2, v.start(), len,
                          uint64_t(HasVmFlag(v, "lf") ? MLOCK_ONFAULT : 0)),
                  where << ": mlock2");
  return Ok();
}

// Writes the dumped pages into the task, straight from the blob's mapped windows.
class PageWriter {
 public:
  PageWriter(pid_t pid, BlobReader* blob) : pid_(pid), blob_(blob) {}
  Result<void> Write(uint64_t vaddr, uint64_t blob_off, uint64_t len) {
    while (len) {
      if (blob_off < win_off_ || blob_off >= win_off_ + win_len_) {
        win_off_ = blob_off;
        win_len_ = size_t(std::min<uint64_t>(kRestoreWindow, blob_->size() - blob_off));
        if (win_len_ == 0) return Err(EINVAL) << "page run past the end of the pages image";
        win_ = KLEAP_TRY(blob_->Map(win_off_, win_len_));
      }
      size_t n = size_t(std::min<uint64_t>(len, win_off_ + win_len_ - blob_off));
      KLEAP_TRY(WriteRemote(pid_, RemotePtr(vaddr), win_ + (blob_off - win_off_), n));
      vaddr += n;
      blob_off += n;
      len -= n;
    }
    return Ok();
  }

 private:
  pid_t pid_;
  BlobReader* blob_;
  const uint8_t* win_ = nullptr;
  uint64_t win_off_ = 0;
  size_t win_len_ = 0;
};

}  // namespace

Result<void> RestoreMm(MmRestore& r) {
  const img::MmImage& mm = *r.mm;
  RemoteSyscalls& rs = *r.rs;
  constexpr ArchKind k64 = ArchKind::kX86_64;
  std::string who = "task " + std::to_string(r.pid);

  // Nothing of the restorer's own layout stays but the scratch page and the mappings
  // the task filled before its fork (FillCowVma).
  {
    std::vector<std::pair<uint64_t, uint64_t>> keep{
        {r.scratch.base.addr(), r.scratch.base.addr() + ScratchPage::kSize}};
    for (int k : r.kept) keep.emplace_back(mm.vmas(k).start(), mm.vmas(k).end());
    std::sort(keep.begin(), keep.end());
    uint64_t from = 0;
    for (auto [start, end] : keep) {
      if (start > from)
        KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kMunmap, from, start - from),
                      who << ": unmap the restorer");
      from = std::max(from, end);
    }
    KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kMunmap, from, X64Arch::kTaskSize - from),
                  who << ": unmap the restorer");
  }
  KLEAP_TRY(RestoreVdso(r));

  auto blob = KLEAP_TRY(r.images->OpenBlob(r.pagemap->blob()));
  PageWriter writer(r.pid, blob.get());
  uint64_t blob_off = 0;
  int run = 0;
  const auto& runs = r.pagemap->runs();
  for (int i = 0; i < mm.vmas_size(); ++i) {
    const img::Vma& v = mm.vmas(i);
    if (v.kind() == img::Vma::SYSV_SHM) continue;  // attached again by AttachSysvShm
    // AIO rings come after the memory, from io_setup (RestoreAio).
    if (v.kind() == img::Vma::VDSO || v.kind() == img::Vma::VVAR || v.kind() == img::Vma::AIO_RING)
      continue;
    std::string where = who + " mapping " + Hex(v.start()) + "-" + Hex(v.end());
    uint64_t len = v.end() - v.start();
    // Runs that fall in this VMA (runs are in VMA order).
    int first = run;
    while (run < runs.size() && runs[run].vaddr() >= v.start() && runs[run].vaddr() < v.end())
      ++run;
    bool has_pages = run > first;
    if (std::binary_search(r.kept.begin(), r.kept.end(), i)) {
      // Made and filled before the fork; it shares pages with the parent or a child.
      for (int k = first; k < run; ++k) blob_off += runs[k].nr_pages() * kPage;
      if (v.prot() != (PROT_READ | PROT_WRITE))
        KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kMprotect, v.start(), len, v.prot()),
                      where << ": mprotect");
      KLEAP_TRY(ApplyVmFlags(rs, v, where));
      continue;
    }
    uint32_t prot = v.prot() | (has_pages ? PROT_READ | PROT_WRITE : 0);
    uint64_t flags = MAP_FIXED, off = 0;
    RemoteFd fd(-1);
    switch (v.kind()) {
      case img::Vma::ANON_PRIVATE:
        flags |= AnonMapFlags(v);
        break;
      case img::Vma::ANON_SHARED:
      case img::Vma::FILE_SHARED:
      case img::Vma::FILE_PRIVATE: {
        auto it = r.helpers->vma_fd.find(size_t(i));
        if (it == r.helpers->vma_fd.end()) return Err(EINVAL) << where << ": no file opened for it";
        flags |= v.kind() == img::Vma::FILE_PRIVATE ? MAP_PRIVATE : MAP_SHARED;
        fd = RemoteFd(it->second);
        off = v.pgoff();
        break;
      }
      default:
        return Err(EINVAL) << where << ": unknown kind " << int(v.kind());
    }
    if (HasVmFlag(v, "nr")) flags |= MAP_NORESERVE;
    uint64_t got = KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kMmap, v.start(), len, prot, flags, fd, off),
                                 where << ": mmap");
    if (got != v.start()) return Err(EFAULT) << where << ": mapped at " << Hex(got);
    for (int k = first; k < run; ++k) {
      uint64_t n = runs[k].nr_pages() * kPage;
      if (runs[k].vaddr() + n > v.end())
        return Err(EINVAL) << where << ": page run " << Hex(runs[k].vaddr())
                           << " overflows the mapping";
      KLEAP_TRY_CTX(writer.Write(runs[k].vaddr(), blob_off, n), where);
      blob_off += n;
      r.page_bytes += n;
    }
    if (prot != v.prot())
      KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kMprotect, v.start(), len, v.prot()),
                    where << ": mprotect");
    KLEAP_TRY(ApplyVmFlags(rs, v, where));
  }
  if (run != runs.size())
    return Err(EINVAL) << who << ": page run at " << Hex(runs[run].vaddr())
                       << " lies outside every mapping";
  if (blob_off != blob->size())
    return Err(EINVAL) << who << ": " << r.pagemap->blob() << " holds " << blob->size()
                       << " bytes, the runs " << blob_off;

  KLEAP_TRY(RestoreMmFlags(rs, mm, who));
  // The mm fields: code/data/brk/stack/args/env, auxv and /proc/PID/exe.
  PrctlMmMap map{};
  map.start_code = mm.start_code();
  map.end_code = mm.end_code();
  map.start_data = mm.start_data();
  map.end_data = mm.end_data();
  map.start_brk = mm.start_brk();
  map.brk = mm.brk();
  map.start_stack = mm.start_stack();
  map.arg_start = mm.arg_start();
  map.arg_end = mm.arg_end();
  map.env_start = mm.env_start();
  map.env_end = mm.env_end();
  const RemotePtr<PrctlMmMap> map_at = r.scratch.data().Cast<PrctlMmMap>();
  const RemotePtr<> auxv_at = r.scratch.data() + 128;
  static_assert(sizeof map <= 128);
  if (mm.auxv().size() > ScratchPage::kDataSize - 128)
    return Err(EINVAL) << who << ": auxv of " << mm.auxv().size() << " bytes is too large";
  map.auxv = auxv_at.addr();
  map.auxv_size = uint32_t(mm.auxv().size());
  map.exe_fd = uint32_t(r.helpers->exe_fd);
  KLEAP_TRY(WriteRemote(r.pid, auxv_at, mm.auxv().data(), mm.auxv().size()));
  KLEAP_TRY(WriteRemoteValue(r.pid, map_at, map));
  KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kPrctl, PR_SET_MM, PR_SET_MM_MAP, map_at, sizeof map),
                who << ": prctl(PR_SET_MM_MAP)");
  return Ok();
}

}  // namespace kleap
