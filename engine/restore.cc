// Restore: rebuild a dumped tree with the same PIDs and TIDs.
//
// 1. collect: read every image into a RestorePlan, check checksums, that every PID is
//    free and that every mapped or opened file is the one that was dumped.
// 2. open: the controller (this process) opens every file object and fills the shared
//    memory objects, so that tasks inherit them by fork.
// 3. fork: each task is created by its parent with clone3(set_tid), makes its session,
//    process group, threads and fds itself, then parks.
// 4. rebuild: the controller seizes every thread and, through injected syscalls from a
//    scratch page, replaces the address space, signals, TLS, rseq and credentials, and
//    sets the final registers.
// 5. resume: every thread is detached at once.
// A failure at any step kills every task created (PTRACE_O_EXITKILL covers the
// controller's own death), so no half-restored process is ever left running.
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "engine/aio.h"
#include "engine/base/fault.h"
#include "engine/base/log.h"
#include "engine/base/lookup.h"
#include "engine/base/page.h"
#include "engine/context.h"
#include "engine/core.h"
#include "engine/creds.h"
#include "engine/ipc.h"
#include "engine/leaders.h"
#include "engine/locks.h"
#include "engine/mm.h"
#include "engine/seccomp.h"
#include "engine/share.h"
#include "engine/signal.h"
#include "engine/timens.h"
#include "engine/timers.h"
#include "engine/tty.h"

extern "C" void kleap_park(void);
extern "C" char kleap_park_gadget[];
extern "C" long kleap_clone_thread(struct clone_args* args, size_t size);
extern "C" long kleap_clone_process(struct clone_args* args, size_t size);

namespace kleap {
namespace {

// ---- collect ----

Result<void> ValidatePlan(const RestorePlan& plan) {
  std::set<pid_t> pids, tids, helpers;
  for (auto& h : plan.pstree.helpers()) helpers.insert(h.pid());
  for (auto& t : plan.pstree.tasks()) {
    if (t.pid() <= 0 || !pids.insert(t.pid()).second)
      return Err(EINVAL) << "pstree.img: bad or repeated pid " << t.pid();
    if (t.ppid() != 0 && !pids.count(t.ppid()))
      return Err(EINVAL) << "pstree.img: task " << t.pid() << " comes before its parent "
                         << t.ppid();
    if (t.tids_size() == 0 || t.tids(0) != t.pid())
      return Err(EINVAL) << "pstree.img: task " << t.pid() << ": leader is not the first thread";
    for (int tid : t.tids())
      if (tid <= 0 || !tids.insert(tid).second)
        return Err(EINVAL) << "pstree.img: bad or repeated tid " << tid;
    if (t.arch() > uint32_t(ArchKind::kX86))
      return Err(EINVAL) << "pstree.img: task " << t.pid() << ": unknown arch " << t.arch();
    if (t.exit_signal() < 0 || t.exit_signal() > 64)
      return Err(EINVAL) << "pstree.img: task " << t.pid() << ": bad exit signal "
                         << t.exit_signal();
    if (t.zombie()) {
      int st = t.exit_status();
      bool exited = (st & 0x7f) == 0, signaled = (st & 0x7f) > 0 && (st & 0x7f) < 0x7f;
      if (t.ppid() == 0 || t.tids_size() != 1 || (!exited && !signaled) || st < 0 || st > 0xffff)
        return Err(EINVAL) << "pstree.img: zombie " << t.pid() << ": bad place or wait status "
                           << Hex(uint64_t(uint32_t(st)));
      continue;
    }
    auto& core = Lookup(plan.cores, t.pid());
    if (core.threads_size() != t.tids_size())
      return Err(EINVAL) << CoreImage(t.pid()) << ": " << core.threads_size()
                         << " threads, pstree says " << t.tids_size();
    for (int i = 0; i < core.threads_size(); ++i) {
      if (core.threads(i).tid() != t.tids(i))
        return Err(EINVAL) << CoreImage(t.pid()) << ": thread " << i << " is "
                           << core.threads(i).tid() << ", pstree says " << t.tids(i);
      if (core.threads(i).arch() > uint32_t(ArchKind::kX86))
        return Err(EINVAL) << CoreImage(t.pid()) << ": bad arch";
    }
    // Session and group 0 are the kernel's, in a whole system (leaders.cc).
    bool whole = plan.pstree.tasks(0).pid() == 1;
    if (pids.count(t.sid()) == 0 && t.sid() != t.pid() && !helpers.count(t.sid()) &&
        !(whole && t.sid() == 0))
      return Err(EINVAL) << "pstree.img: task " << t.pid() << " is in session " << t.sid()
                         << ", whose leader is not in the set";
    if (pids.count(t.pgid()) == 0 && t.pgid() != t.pid() && !helpers.count(t.pgid()) &&
        !(whole && t.pgid() == 0)) {
      bool later = false;
      for (auto& o : plan.pstree.tasks()) later |= o.pid() == t.pgid();
      if (!later)
        return Err(EINVAL) << "pstree.img: task " << t.pid() << " is in process group " << t.pgid()
                           << ", whose leader is not in the set";
    }
    if (core.arch() > uint32_t(ArchKind::kX86))
      return Err(EINVAL) << CoreImage(t.pid()) << ": unknown arch " << core.arch();
    KLEAP_TRY(ValidateTimers(t.pid(), core.timers()));
    KLEAP_TRY(ValidateCtty(t.pid(), core));
    for (auto& th : core.threads()) KLEAP_TRY(ValidateSeccomp(t.pid(), th));
    KLEAP_TRY(ValidateLocks(t.pid(), core));
    for (auto& th : core.threads())
      if (th.pdeath_signal() < 0 || th.pdeath_signal() > 64)
        return Err(EINVAL) << CoreImage(t.pid()) << ": thread " << th.tid() << ": bad death signal "
                           << th.pdeath_signal();
    if (t.vm_share_with()) continue;  // its parent's address space (ValidateSharing)
    auto& mm = Lookup(plan.mms, t.pid());
    if (mm.arch() > uint32_t(ArchKind::kX86))
      return Err(EINVAL) << MmImage(t.pid()) << ": unknown arch " << mm.arch();
    // Page runs: inside their mappings, in order, and exactly as many bytes as the blob
    // holds (checked when the blob is opened), with no arithmetic that can wrap.
    {
      uint64_t prev = 0;
      int v = 0;
      for (auto& r : Lookup(plan.pagemaps, t.pid()).runs()) {
        while (v < mm.vmas_size() && mm.vmas(v).end() <= r.vaddr()) ++v;
        if (r.vaddr() % 4096 || r.vaddr() < prev || r.nr_pages() == 0 || v == mm.vmas_size() ||
            r.vaddr() < mm.vmas(v).start() || r.nr_pages() > (mm.vmas(v).end() - r.vaddr()) / 4096)
          return Err(EINVAL) << PagemapImage(t.pid()) << ": page run at " << Hex(r.vaddr())
                             << " of " << r.nr_pages() << " pages lies outside its mapping";
        prev = r.vaddr() + r.nr_pages() * 4096;
      }
    }
    uint64_t prev_end = 0;
    for (auto& v : mm.vmas()) {
      if (v.start() >= v.end() || v.start() % 4096 || v.end() % 4096 || v.start() < prev_end ||
          v.end() > X64Arch::kTaskSize)
        return Err(EINVAL) << MmImage(t.pid()) << ": bad mapping " << Hex(v.start()) << "-"
                           << Hex(v.end());
      prev_end = v.end();
    }
    KLEAP_TRY(ValidateAio(t.pid(), mm));
  }
  KLEAP_TRY(ValidateTimeNamespaces(plan.pstree));
  KLEAP_TRY(ValidateFileObjects(plan.files));
  KLEAP_TRY(ValidateShmem(plan));
  std::set<uint64_t> file_ids;
  for (auto& f : plan.files.files()) file_ids.insert(f.id());
  for (auto& [pid, table] : plan.fdtables)
    for (auto& e : table.fds()) {
      if (e.fd() < 0 || e.fd() > (1 << 20))
        return Err(EINVAL) << FdTableImage(pid) << ": bad fd " << e.fd();
      if (!file_ids.count(e.file_id()))
        return Err(EINVAL) << FdTableImage(pid) << ": fd " << e.fd() << " points at unknown file "
                           << e.file_id();
    }
  return Ok();
}

}  // namespace

Result<RestorePlan> LoadPlan(ImageReader& images) {
  RestorePlan plan;
  KLEAP_TRY(images.ReadMessage(kPsTreeImage, &plan.pstree));
  if (plan.pstree.tasks_size() == 0) return Err(EINVAL) << "pstree.img: no tasks";
  for (auto& t : plan.pstree.tasks()) {
    pid_t pid = t.pid();
    if (t.zombie()) continue;  // no images: only its place and its wait status
    KLEAP_TRY(images.ReadMessage(CoreImage(pid), &plan.cores[pid]));
    if (!t.vm_share_with()) {  // else its parent's
      KLEAP_TRY(images.ReadMessage(MmImage(pid), &plan.mms[pid]));
      KLEAP_TRY(images.ReadMessage(PagemapImage(pid), &plan.pagemaps[pid]));
    }
    KLEAP_TRY(images.ReadMessage(FdTableImage(pid), &plan.fdtables[pid]));
  }
  KLEAP_TRY(images.ReadMessage(kFilesImage, &plan.files));
  KLEAP_TRY(images.ReadMessage(kShmemTableImage, &plan.shmem));
  if (images.Has(kIpcImage)) {
    KLEAP_TRY(images.ReadMessage(kIpcImage, &plan.ipc));
    plan.has_ipc = true;
  }
  KLEAP_TRY(ValidatePlan(plan));
  // Who creates whom; a session helper's orphans come back to a subreaper.
  KLEAP_TRY(TaskCreators(plan.pstree));
  // (PID 1 reaps every orphan: a whole system's init needs no subreaper flag.)
  for (auto& h : plan.pstree.helpers())
    if (h.session() && h.parent() != 1 && !Lookup(plan.cores, h.parent()).child_subreaper())
      return Err(EINVAL) << "pstree.img: helper " << h.pid() << ": its parent " << h.parent()
                         << " is not a subreaper, so its children would not come back to it";
  KLEAP_TRY(ValidateSharing(plan));
  KLEAP_TRY(ValidateIpc(plan));
  return plan;
}

Result<void> LockSetConnections(ImageReader& images) {
  img::FileTable files;
  KLEAP_TRY(images.ReadMessage(kFilesImage, &files));
  SockLock lock = KLEAP_TRY(SockLock::ForFiles(files));
  lock.Keep();  // the restore's own lock replaces it, and lifts it
  return Ok();
}

Result<void> CheckFileIdentities(const RestorePlan& plan, ImageReader& images) {
  // Per path: what it is now, and whether its inode must be the dump's.
  std::map<std::string, std::pair<img::FileIdentity, bool>> cache;
  auto check = [&](const std::string& path, const img::FileIdentity& want,
                   const std::string& who) -> Result<void> {
    auto it = cache.find(path);
    if (it == cache.end()) {
      struct stat st;
      if (stat(path.c_str(), &st) < 0) return ErrnoError() << who << ": mapped file " << path;
      it =
          cache.emplace(path, std::pair{KLEAP_TRY(IdentifyFile(path, st)), InodeKept(path, images)})
              .first;
    }
    auto& [have, inode_kept] = it->second;
    bool moved = inode_kept && (have.ino() != want.ino() || have.dev() != want.dev());
    const char* what = moved                                ? "it is another file (inode)"
                       : have.size() != want.size()         ? "its size changed"
                       : have.mtime_ns() != want.mtime_ns() ? "its modification time changed"
                       : have.build_id() != want.build_id() ? "its ELF build-id changed"
                                                            : nullptr;
    if (what)
      return Err(ESTALE) << who << ": file " << path << " has changed since the dump: " << what;
    return Ok();
  };
  for (auto& [pid, mm] : plan.mms) {
    for (auto& v : mm.vmas())
      if ((v.kind() == img::Vma::FILE_PRIVATE || v.kind() == img::Vma::FILE_SHARED) &&
          v.shmem_id() == 0)  // a shmem object of the set is made anew, not found
        KLEAP_TRY(check(v.path(), v.file(),
                        "task " + std::to_string(pid) + " mapping " + Hex(v.start())));
    KLEAP_TRY(check(mm.exe_path(), mm.exe(), "task " + std::to_string(pid) + " executable"));
  }
  return Ok();
}

Result<void> CheckPidsFree(const RestorePlan& plan, bool as_init) {
  auto exists = [&](pid_t pid) {
    return !(as_init && pid == 1) && access(ProcPath(pid, "").c_str(), F_OK) == 0;
  };
  for (auto& h : plan.pstree.helpers())
    if (exists(h.pid()))
      return Err(EEXIST) << DescribePid(h.pid()) << " is taken; the "
                         << (h.session() ? "session" : "process group") << " " << h.pid()
                         << " needs that pid for a moment to be made again";
  for (auto& t : plan.pstree.tasks())
    for (int tid : t.tids())
      if (exists(tid) ||
          (exists(t.pid()) &&
           access(ProcPath(t.pid(), "task/" + std::to_string(tid)).c_str(), F_OK) == 0))
        return Err(EEXIST) << DescribePid(tid) << " is taken; task " << t.pid() << " (" << t.comm()
                           << ") needs it";
  return Ok();
}

Result<void> CheckPageBlobSizes(ImageReader& images, const RestorePlan& plan) {
  for (auto& [pid, pm] : plan.pagemaps) {
    uint64_t bytes = 0;
    for (auto& r : pm.runs()) bytes += r.nr_pages() * 4096;  // each run was bounded by its mapping
    const img::ImageEntry* e = images.Find(pm.blob());
    if (!e)
      return Err(EINVAL) << PagemapImage(pid) << ": its blob " << pm.blob() << " is not in the set";
    if (e->size() != bytes)
      return Err(EINVAL) << "image " << pm.blob() << " is damaged: " << e->size()
                         << " bytes, its page runs need " << bytes;
  }
  return Ok();
}

Result<void> VerifyBlobs(ImageReader& images, const RestorePlan& plan) {
  KLEAP_TRY(CheckPageBlobSizes(images, plan));
  for (auto& [pid, pm] : plan.pagemaps) KLEAP_TRY(images.VerifyImage(pm.blob()));
  for (auto& o : plan.shmem.objects()) KLEAP_TRY(images.VerifyImage(o.blob()));
  return Ok();
}

namespace {

// ---- open ----

struct ShmemMapping {
  uint64_t addr = 0, size = 0;
};

Result<std::map<uint64_t, ShmemMapping>> CreateShmem(ImageReader& images, const RestorePlan& plan) {
  std::map<uint64_t, ShmemMapping> out;
  for (auto& o : plan.shmem.objects()) {
    if (o.kind() != img::ShmemObject::ANON_SHARED) continue;  // memfd.cc: CreateMemFiles
    if (o.size() == 0 || o.size() % 4096 || o.size() > (1ull << 40))
      return Err(EINVAL) << "shmem.img: object " << o.id() << " has bad size " << o.size();
    void* p = mmap(nullptr, o.size(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return ErrnoError() << "create shared memory of " << o.size() << " bytes";
    out[o.id()] = {uint64_t(p), o.size()};
    auto blob = KLEAP_TRY(images.OpenBlob(o.blob()));
    uint64_t off = 0;
    for (auto& r : o.runs()) {
      uint64_t n = r.nr_pages() * 4096;
      if (r.vaddr() > o.size() || n > o.size() - r.vaddr() || off + n > blob->size())
        return Err(EINVAL) << "shmem.img: object " << o.id() << ": run at " << r.vaddr()
                           << " out of range";
      KLEAP_TRY(blob->ReadAt(off, static_cast<char*>(p) + r.vaddr(), n));
      off += n;
    }
  }
  return out;
}

// ---- fork ----

struct Slot {
  std::atomic<int> state;  // 0 nothing, 1 created, 2 parked, -1 failed
  // A shared fd table (share.cc): the task touches its fds no more before InstallFds,
  // and has placed its helper fds.
  std::atomic<int> fd_quiet, helpers_done;
  // In its process group: the helpers of gone leaders may exit (leaders.h).
  std::atomic<int> joined;
  pid_t pid;
  char error[400];
};
struct SharedState {
  std::atomic<int> go_pgid;
  std::atomic<int> go_zombies;  // every group is joined: the zombies may exit
  std::atomic<int> abort;
  std::atomic<int> go_helpers;  // every task joined its group: the leaders' helpers exit
  char abort_reason[512];       // as_init: why, for PID 1's fallback
  Slot slots[1];
};

// A stand-in for a gone session or group leader (leaders.h), alive during the fork.
struct LeaderHelper {
  pid_t pid;
  bool session;
  std::vector<size_t> children;  // tasks it creates (TaskPlan indices)
  std::vector<size_t> helpers;   // helpers it creates (group helpers of its session)
};

struct TaskPlan {
  const img::PsTask* ps;
  const img::TaskCore* core;
  const img::MmImage* mm;
  const img::FdTable* fds;
  int keep_from = 0;  // first fd number above the task's own
  // Helper fds: [helper_from, helper_end). Tasks that share one fd table take disjoint
  // ranges above the same keep_from.
  int helper_from = 0, helper_end = 0;
  // A table shared with the parent (CLONE_FILES): the holder, the first task of the
  // group, installs it; each member places its helpers after the one before it.
  bool files_shared = false, fs_shared = false;
  size_t table_holder = 0, table_prev = 0, fs_holder = 0;
  bool table_last = true;             // closes every helper of the table in Rebuild
  std::vector<size_t> table_members;  // the holder's: the others, in order
  std::vector<size_t> fs_members;     // tasks created with CLONE_FS from this one's fs
  // The task shares its parent's address space (share.cc): `mm` and `scratch` are the
  // parent's, it has no helper fds, and Rebuild sets it up by injected syscalls. The
  // scratch page goes with the last task of the address space rebuilt.
  bool vm_shared = false;
  bool unmap_scratch = true;
  MmHelpers helpers;
  uint64_t scratch = 0;
  std::vector<size_t> children;
  std::vector<size_t> leader_helpers;  // helpers of gone leaders it creates (LeaderHelper)
  bool by_helper = false;              // created by a session helper, which exits
};

// Helper fds take fixed numbers just above the task's own, in mapping order, so the
// task (which opens them) and the controller (which maps them) agree without talking.
void AssignHelperFds(TaskPlan& t) {
  int next = t.helper_from;
  for (int i = 0; i < t.mm->vmas_size(); ++i) {
    auto k = t.mm->vmas(i).kind();
    if (k == img::Vma::ANON_SHARED || k == img::Vma::FILE_PRIVATE || k == img::Vma::FILE_SHARED)
      t.helpers.vma_fd[size_t(i)] = next++;
  }
  t.helpers.exe_fd = next++;
  t.helper_end = next;
}

struct Forker {
  const RestorePlan& plan;
  const OpenFiles& files;
  const std::map<uint64_t, ShmemMapping>& shmem;
  std::vector<TaskPlan>& tasks;
  SharedState* shared;
  std::vector<LeaderHelper>* leaders = nullptr;
  // This process is PID 1 restoring a whole system (RestoreOptions::as_init): it must
  // never exit, and falls back instead.
  bool is_init = false;
  void (*init_fallback)(const char* why) = nullptr;

  [[noreturn]] void Exit1() {
    if (is_init && init_fallback) {
      const char* why = shared->abort_reason[0] ? shared->abort_reason : shared->slots[0].error;
      init_fallback(why[0] ? why : "the restore was aborted");
    }
    _exit(1);
  }

  [[noreturn]] void Fail(size_t i, const Error& e) {
    std::string s = e.ToString();
    snprintf(shared->slots[i].error, sizeof shared->slots[i].error, "%s", s.c_str());
    shared->slots[i].state.store(-1);
    Exit1();
  }

  static pid_t Clone3(pid_t want, int exit_signal, uint64_t flags = 0) {
    clone_args args{};
    pid_t tid = want;
    args.flags = flags;
    args.exit_signal = uint64_t(exit_signal);
    args.set_tid = uint64_t(&tid);
    args.set_tid_size = 1;
    return pid_t(syscall(SYS_clone3, &args, sizeof args));
  }

  // A thread or process in this one's memory, made by `clone` (park.S) on a small stack
  // of its own: it parks at once, running no C code. The id, or -1 with errno set.
  static pid_t CloneParked(long (*clone)(clone_args*, size_t), pid_t want, uint64_t flags,
                           int exit_signal) {
    constexpr size_t kStack = 16384;
    void* stack = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (stack == MAP_FAILED) return -1;
    clone_args args{};
    args.flags = flags;
    args.exit_signal = uint64_t(exit_signal);
    args.stack = uint64_t(stack);
    args.stack_size = kStack;
    args.set_tid = uint64_t(&want);
    args.set_tid_size = 1;
    long r = clone(&args, sizeof args);
    if (r < 0) errno = int(-r);
    return r < 0 ? -1 : pid_t(r);
  }

  Result<void> SpawnThreads(const TaskPlan& t) {
    for (int i = 1; i < t.ps->tids_size(); ++i) {
      pid_t tid = t.ps->tids(i);
      if (CloneParked(
              kleap_clone_thread, tid,
              CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM,
              0) < 0)
        return ErrnoError() << "create thread " << tid << (errno == EEXIST ? " (tid taken)" : "");
    }
    return Ok();
  }

  // Opens the files the task's mappings need, at the numbers AssignHelperFds chose.
  Result<void> OpenHelpers(const TaskPlan& t) {
    // Nothing of the controller's stays above the task's own fds (a shared table's holder
    // did that for the whole table).
    if (!t.files_shared) syscall(X64Arch::kCloseRange, t.keep_from, ~0u, 0);
    auto place = [&](int fd, int want, const std::string& what) -> Result<void> {
      if (fd < 0) return ErrnoError() << "open " << what;
      if (fd != want) {
        if (dup3(fd, want, O_CLOEXEC) < 0) return ErrnoError() << "place " << what;
        close(fd);
      }
      return Ok();
    };
    for (auto& [i, want] : t.helpers.vma_fd) {
      const img::Vma& v = t.mm->vmas(int(i));
      if (v.kind() == img::Vma::ANON_SHARED) {
        auto it = shmem.find(v.shmem_id());
        if (it == shmem.end())
          return Err(EINVAL) << "mapping " << Hex(v.start()) << ": unknown shared memory "
                             << v.shmem_id();
        std::string path = MapFilesPath(0, it->second.addr, it->second.addr + it->second.size);
        KLEAP_TRY(place(open(path.c_str(), O_RDWR | O_CLOEXEC), want, path));
      } else if (v.shmem_id()) {
        // A memfd or unlinked tmpfs file the controller made: a description of its own, read-only
        // unless the mapping may write (a write-sealed memfd refuses writable ones).
        auto it = files.mem_files.find(v.shmem_id());
        if (it == files.mem_files.end())
          return Err(EINVAL) << "mapping " << Hex(v.start()) << ": unknown memory file "
                             << v.shmem_id();
        bool may_write =
            v.kind() == img::Vma::FILE_SHARED &&
            std::find(v.vm_flags().begin(), v.vm_flags().end(), "mw") != v.vm_flags().end();
        // (Through the controller's /proc: the task closed its copies of the controller's fds.)
        std::string path = "/proc/" + std::to_string(files.mem_files_pid) + "/fd/" +
                           std::to_string(it->second.get());
        KLEAP_TRY(
            place(open(path.c_str(), (may_write ? O_RDWR : O_RDONLY) | O_CLOEXEC), want, v.path()));
      } else {
        bool may_write =
            v.kind() == img::Vma::FILE_SHARED &&
            std::find(v.vm_flags().begin(), v.vm_flags().end(), "mw") != v.vm_flags().end();
        KLEAP_TRY(place(open(v.path().c_str(), (may_write ? O_RDWR : O_RDONLY) | O_CLOEXEC), want,
                        v.path()));
      }
    }
    return place(open(t.mm->exe_path().c_str(), O_RDONLY | O_CLOEXEC), t.helpers.exe_fd,
                 t.mm->exe_path());
  }

  // A zombie, once its session and group are in place (others may be joining its
  // group): exits again the way it did, for its parent to wait for.
  [[noreturn]] void BecomeZombie(size_t i) {
    int st = tasks[i].ps->exit_status();
    shared->slots[i].state.store(2);
    while (!shared->go_zombies.load()) {
      if (shared->abort.load()) Exit1();
      usleep(200);
    }
    if ((st & 0x7f) == 0) _exit((st >> 8) & 0xff);
    int sig = st & 0x7f;
    rlimit none{0, 0};
    setrlimit(RLIMIT_CORE, &none);  // a core-dumping signal must not write a core here
    signal(sig, SIG_DFL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    sigprocmask(SIG_UNBLOCK, &set, nullptr);
    prctl(PR_SET_PDEATHSIG, 0);
    kill(getpid(), sig);
    _exit(128 + sig);  // a signal that doesn't kill (SIGCHLD, ...) can't be a wait status
  }

  void WaitFor(const std::atomic<int>& flag) {
    while (!flag.load()) {
      if (shared->abort.load()) Exit1();
      usleep(200);
    }
  }

  // Installs the task's fd table and opens its helpers. A table shared by several tasks
  // is installed once, by its holder, once no other member touches its fds any more;
  // then each member in turn opens its helpers (open picks the lowest free number, so
  // two at once could take each other's places).
  Result<void> SetUpFds(size_t i) {
    TaskPlan& t = tasks[i];
    if (t.files_shared) {
      shared->slots[i].fd_quiet.store(1);
      WaitFor(shared->slots[t.table_prev].helpers_done);
    } else {
      for (size_t m : t.table_members) WaitFor(shared->slots[m].fd_quiet);
      KLEAP_TRY(InstallFds(*t.fds, files, t.keep_from, LocalFdSyscall));
    }
    KLEAP_TRY(OpenHelpers(t));
    shared->slots[i].helpers_done.store(1);
    return Ok();
  }

  // ---- helpers for the sessions and groups whose leader is gone (leaders.h) ----

  // Their exits must not leave a SIGCHLD for the task: it is blocked while they live.
  static void BlockChld(bool block) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGCHLD);
    if (!block) {
      timespec zero{};
      while (sigtimedwait(&s, nullptr, &zero) > 0) {
      }
    }
    sigprocmask(block ? SIG_BLOCK : SIG_UNBLOCK, &s, nullptr);
  }

  void SpawnHelpers(const std::vector<size_t>& hs, size_t owner) {
    if (hs.empty()) return;
    BlockChld(true);
    for (size_t h : hs) {
      pid_t p = Clone3((*leaders)[h].pid, SIGCHLD);
      if (p < 0)
        Fail(owner, ErrnoError() << "create the helper " << (*leaders)[h].pid << " of a "
                                 << ((*leaders)[h].session ? "session" : "process group")
                                 << " whose leader is gone"
                                 << (errno == EEXIST ? " (pid taken)" : ""));
      if (p == 0) {
        is_init = false;
        RunHelper(h, owner);
      }
    }
  }

  void ReapHelpers(const std::vector<size_t>& hs, size_t owner) {
    if (hs.empty()) return;
    for (size_t h : hs) {
      int st = 0;
      pid_t w;
      do w = waitpid((*leaders)[h].pid, &st, __WALL);
      while (w < 0 && errno == EINTR);
      if (w != (*leaders)[h].pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (shared->slots[owner].state.load() < 0) Exit1();  // the helper said why
        Fail(owner, Err(EIO) << "the helper " << (*leaders)[h].pid << " ended with status "
                             << Hex(uint64_t(uint32_t(st))));
      }
    }
    BlockChld(false);
  }

  // Creates task c, with the clone flags of what it shares with its creator; a failure
  // is reported in the owner's slot.
  void CreateTask(size_t c, size_t owner) {
    auto& ps = *tasks[c].ps;
    int exit_signal = ps.exit_signal() ? ps.exit_signal() : SIGCHLD;
    uint64_t flags =
        (tasks[c].files_shared ? CLONE_FILES : 0) | (tasks[c].fs_shared ? CLONE_FS : 0);
    if (tasks[c].vm_shared) return CreateVmMember(c, owner, flags, exit_signal);
    pid_t p = Clone3(ps.pid(), exit_signal, flags);
    if (p < 0)
      Fail(owner,
           ErrnoError() << "create task " << ps.pid() << (errno == EEXIST ? " (pid taken)" : ""));
    if (p == 0) {
      is_init = false;
      RunTask(c);
    }
  }

  // A task in its creator's address space parks at once, in assembly, on a stack of its
  // own; it is set up by injected syscalls in Rebuild. Its own process group is made
  // now, for others to join; another one once its creator is in its own (JoinVmMembers).
  void CreateVmMember(size_t c, size_t owner, uint64_t flags, int exit_signal) {
    auto& ps = *tasks[c].ps;
    pid_t r = CloneParked(kleap_clone_process, ps.pid(), flags | CLONE_VM, exit_signal);
    if (r < 0)
      Fail(owner, ErrnoError() << "create task " << ps.pid() << " in the address space of "
                               << ps.ppid() << (errno == EEXIST ? " (pid taken)" : ""));
    Slot& slot = shared->slots[c];
    slot.pid = r;
    if (ps.pgid() == ps.pid() && setpgid(r, r) < 0)
      Fail(owner, ErrnoError() << "task " << ps.pid() << ": setpgid");
    slot.state.store(2);
  }

  void JoinVmMembers(size_t i) {
    for (size_t c : tasks[i].children) {
      if (!tasks[c].vm_shared) continue;
      pid_t pid = tasks[c].ps->pid(), pgid = tasks[c].ps->pgid();
      if (getpgid(pid) != pgid && setpgid(pid, pgid) < 0)
        Fail(i, ErrnoError() << "task " << pid << ": join process group " << pgid);
      shared->slots[c].joined.store(1);
    }
  }

  // A leader's stand-in: makes the session or group, creates its members, waits until
  // every task is in its group, exits. Errors go to the task that owns it.
  [[noreturn]] void RunHelper(size_t h, size_t owner) {
    const LeaderHelper& lh = (*leaders)[h];
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (lh.session ? setsid() < 0 : setpgid(0, 0) < 0)
      Fail(owner,
           ErrnoError() << "helper " << lh.pid << ": " << (lh.session ? "setsid" : "setpgid"));
    SpawnHelpers(lh.helpers, owner);
    for (size_t c : lh.children) CreateTask(c, owner);
    while (!shared->go_helpers.load()) {
      if (shared->abort.load()) Exit1();
      usleep(200);
    }
    ReapHelpers(lh.helpers, owner);
    _exit(0);
  }

  // Runs in the new task; never returns.
  [[noreturn]] void RunTask(size_t i) {
    TaskPlan& t = tasks[i];
    Slot& slot = shared->slots[i];
    slot.pid = getpid();
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (t.ps->sid() == t.ps->pid() && setsid() < 0) Fail(i, ErrnoError() << "setsid");
    // Before the children exist: they get the controlling terminal from the leader.
    UniqueFd ctty;
    if (t.ps->sid() == t.ps->pid() && !t.ps->zombie() && t.core->has_ctty()) {
      auto r = TakeCtty(t.core->ctty());
      if (!r) Fail(i, r.error());
      ctty = std::move(*r);
    }
    if (t.ps->pgid() == t.ps->pid() && t.ps->sid() != t.ps->pid() && setpgid(0, 0) < 0)
      Fail(i, ErrnoError() << "setpgid");
    // Children in the task's own time namespace come first (Prepare sorts them), then
    // the task makes the one it had unshared, for the others and its later children.
    bool time_ns_made = false;
    auto make_time_ns = [&]() {
      if (time_ns_made || t.ps->zombie() ||
          t.ps->time_ns_for_children().id() == t.ps->time_ns().id())
        return;
      if (auto r = MakeTimeNamespace(t.ps->time_ns_for_children()); !r) Fail(i, r.error());
      time_ns_made = true;
    };
    // A helper's children come back to this task when it exits: it is a subreaper.
    if (!t.leader_helpers.empty() && t.core && t.core->child_subreaper())
      prctl(PR_SET_CHILD_SUBREAPER, 1);
    SpawnHelpers(t.leader_helpers, i);
    for (size_t c : t.children) {
      auto& ps = *tasks[c].ps;
      if (!ps.zombie() && ps.time_ns().id() != t.ps->time_ns().id()) make_time_ns();
      CreateTask(c, i);
    }
    make_time_ns();
    slot.state.store(1);
    while (!shared->go_pgid.load()) {
      if (shared->abort.load()) Exit1();
      usleep(200);
    }
    if (t.ps->pgid() && getpgid(0) != t.ps->pgid() && setpgid(0, t.ps->pgid()) < 0)
      Fail(i, ErrnoError() << "join process group " << t.ps->pgid());
    JoinVmMembers(i);
    // Its creator, a helper, exits now; the restore's own death signal goes with it.
    if (t.by_helper) prctl(PR_SET_PDEATHSIG, 0);
    slot.joined.store(1);
    ReapHelpers(t.leader_helpers, i);
    if (ctty) {
      if (auto r = SetForeground(ctty.get(), t.core->ctty().foreground()); !r) Fail(i, r.error());
      ctty.reset();
    }
    if (t.ps->zombie()) BecomeZombie(i);
    if (auto r = SpawnThreads(t); !r) Fail(i, r.error());
    if (auto r = SetUpFds(i); !r) Fail(i, r.error());
    void* s =
        mmap(reinterpret_cast<void*>(t.scratch), kScratchSize, PROT_READ | PROT_WRITE | PROT_EXEC,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (s != reinterpret_cast<void*>(t.scratch))
      Fail(i, ErrnoError() << "map the scratch page at " << Hex(t.scratch));
    memcpy(static_cast<char*>(s) + kScratchGadget64, X64Arch::kSyscallInsn, 2);
    memcpy(static_cast<char*>(s) + kScratchGadget32, X86Arch::kSyscallInsn, 2);
    if (personality(t.core->personality()) < 0)
      Fail(i, ErrnoError() << "personality " << Hex(t.core->personality()));
    if (!t.fs_shared) {
      // The tasks that share this fs open their helpers by path first: a chroot would
      // move them.
      for (size_t m : t.fs_members) WaitFor(shared->slots[m].helpers_done);
      umask(t.core->umask());
      if (chdir(t.core->cwd().c_str()) < 0) Fail(i, ErrnoError() << "chdir " << t.core->cwd());
      if (t.core->root() != "/" && chroot(t.core->root().c_str()) < 0)
        Fail(i, ErrnoError() << "chroot " << t.core->root());
    }
    slot.state.store(2);
    if (is_init) {
      // PID 1 waits in kleap's code instead of parking: if the restore fails before its
      // memory is replaced, the controller lets it go on here, to fall back.
      while (!shared->abort.load()) usleep(1000);
      Exit1();
    }
    kleap_park();
    _exit(1);
  }
};

class RestoreSession {
 public:
  RestoreSession(const RestoreOptions& opts, ImageReader& images, RestorePlan& plan)
      : opts_(opts), images_(images), plan_(plan) {}
  ~RestoreSession() {
    if (!success_) KillAll();
    if (shared_) munmap(shared_, shared_size_);
  }
  Result<RestoreResult> Run();
  // as_init: whether this is the forked controller (PID 1 never gets here).
  bool in_controller() const { return in_controller_; }
  void SetFailure(const std::string& why) { failure_ = why; }

 private:
  Result<void> Prepare();
  Result<void> ForkAll();
  Result<void> SeizeAll();
  Result<void> Rebuild(TaskPlan& t);
  Result<void> RebuildMm(TaskPlan& t, uint64_t data);
  Result<void> SetUpVmMember(TaskPlan& t, uint64_t data);
  Result<void> FinishTask(TaskPlan& t);
  void KillAll();

  const RestoreOptions& opts_;
  ImageReader& images_;
  RestorePlan& plan_;
  SockLock lock_;  // goes after the sockets: a failed restore closes them in repair mode
  OpenFiles files_;
  std::map<uint64_t, ShmemMapping> shmem_;
  std::unique_ptr<IpcRestore> ipc_;
  std::vector<TaskPlan> tasks_;
  std::vector<LeaderHelper> leaders_;
  SharedState* shared_ = nullptr;
  size_t shared_size_ = 0;
  std::map<pid_t, std::unique_ptr<RemoteSyscalls>> threads_;
  std::vector<pid_t> seized_;
  pid_t root_ = 0;
  bool success_ = false;
  uint64_t page_bytes_ = 0;
  bool in_controller_ = false;
  bool init_replaced_ = false;  // as_init: PID 1's memory is the old init's
  std::string failure_;
  void ExecFallbackInInit();
};

Result<void> RestoreSession::Prepare() {
  std::map<pid_t, size_t> index;
  auto creators = KLEAP_TRY(TaskCreators(plan_.pstree));
  std::map<pid_t, size_t> helper_index;
  for (auto& h : plan_.pstree.helpers()) {
    helper_index[h.pid()] = leaders_.size();
    leaders_.push_back({h.pid(), h.session(), {}, {}});
  }
  for (auto& ps : plan_.pstree.tasks()) {
    TaskPlan t;
    t.ps = &ps;
    if (!ps.zombie()) {
      t.core = &Lookup(plan_.cores, ps.pid());
      t.fds = &Lookup(plan_.fdtables, ps.pid());
      for (auto& e : t.fds->fds()) t.keep_from = std::max(t.keep_from, e.fd() + 1);
      // ValidateSharing made sure a shared table, fs or address space is the live
      // parent's, the same.
      size_t me = tasks_.size();
      t.helper_from = t.keep_from;
      t.table_holder = t.fs_holder = me;
      if (ps.vm_share_with()) {
        const TaskPlan& holder = tasks_[Lookup(index, ps.ppid())];
        if (Lookup(creators, ps.pid()) != ps.ppid())
          return Err(EINVAL) << "pstree.img: task " << ps.pid() << " shares the address space of "
                             << ps.ppid() << ", which does not create it";
        t.vm_shared = true;
        t.mm = holder.mm;
        t.scratch = holder.scratch;
        // Neither in its table's nor in its fs's order: it opens no helpers, by path or
        // otherwise, and its parent installs a shared table after it is made.
        t.files_shared = ps.files_share_with() != 0;
        t.fs_shared = ps.fs_share_with() != 0;
        t.table_last = !t.files_shared;
        t.helper_end = t.helper_from;
        index[ps.pid()] = tasks_.size();
        tasks_[Lookup(index, ps.ppid())].children.push_back(tasks_.size());
        tasks_.push_back(std::move(t));
        continue;
      }
      t.mm = &Lookup(plan_.mms, ps.pid());
      t.scratch = KLEAP_TRY(PickScratch(*t.mm));
      if (ps.files_share_with()) {
        TaskPlan& holder = tasks_[tasks_[Lookup(index, ps.ppid())].table_holder];
        t.files_shared = true;
        t.table_holder = tasks_[Lookup(index, ps.ppid())].table_holder;
        t.table_prev = holder.table_members.empty() ? t.table_holder : holder.table_members.back();
        tasks_[t.table_prev].table_last = false;
        t.helper_from = tasks_[t.table_prev].helper_end;
        holder.table_members.push_back(me);
      }
      if (ps.fs_share_with()) {
        t.fs_shared = true;
        t.fs_holder = tasks_[Lookup(index, ps.ppid())].fs_holder;
        tasks_[t.fs_holder].fs_members.push_back(me);
      }
      AssignHelperFds(t);
    }
    index[ps.pid()] = tasks_.size();
    pid_t creator = Lookup(creators, ps.pid());
    if (auto h = helper_index.find(creator); creator && h != helper_index.end()) {
      leaders_[h->second].children.push_back(tasks_.size());
      t.by_helper = true;
    } else if (creator) {
      tasks_[Lookup(index, creator)].children.push_back(tasks_.size());
    }
    tasks_.push_back(std::move(t));
  }
  // An address space's scratch page goes with the last of its tasks rebuilt.
  std::set<const img::MmImage*> unmapped;
  for (auto it = tasks_.rbegin(); it != tasks_.rend(); ++it)
    if (it->mm) it->unmap_scratch = unmapped.insert(it->mm).second;
  // A parent creates its children in its own time namespace before it makes another.
  for (auto& t : tasks_)
    std::stable_sort(t.children.begin(), t.children.end(), [&](size_t a, size_t b) {
      auto later = [&](size_t c) {
        return !tasks_[c].ps->zombie() && tasks_[c].ps->time_ns().id() != t.ps->time_ns().id();
      };
      return !later(a) && later(b);
    });
  for (auto& h : plan_.pstree.helpers()) {
    size_t me = Lookup(helper_index, h.pid());
    if (auto p = helper_index.find(h.parent()); p != helper_index.end())
      leaders_[p->second].helpers.push_back(me);
    else
      tasks_[Lookup(index, h.parent())].leader_helpers.push_back(me);
  }
  // Helper fds and staging sit above every target fd; make sure we may open them.
  rlimit nofile;
  getrlimit(RLIMIT_NOFILE, &nofile);
  if (nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  // The set's sockets are locked (again, after a kexec) before any of them exists.
  lock_ = KLEAP_TRY(SockLock::ForFiles(plan_.files));
  KLEAP_TRY(OpenFileObjects(plan_, images_, &files_));
  shmem_ = KLEAP_TRY(CreateShmem(images_, plan_));
  // The tasks are forked into it: the controller enters a new IPC namespace now.
  if (plan_.has_ipc) ipc_ = KLEAP_TRY(IpcRestore::Create(plan_, images_));
  return Ok();
}

Result<void> RestoreSession::ForkAll() {
  shared_size_ = (sizeof(SharedState) + tasks_.size() * sizeof(Slot) + 4095) & ~size_t(4095);
  void* p = mmap(nullptr, shared_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return ErrnoError() << "map restore state";
  shared_ = static_cast<SharedState*>(p);
  Forker forker{plan_, files_, shmem_, tasks_, shared_};
  forker.leaders = &leaders_;
  // The root's own time namespace is made here; kleap's later children (helpers) are
  // born in kleap's own again.
  UniqueFd kleap_time;
  if (opts_.as_init && tasks_[0].ps->time_ns().id())
    return Err(ENOTSUP) << "the set's PID 1 is in a time namespace of its own, which PID 1 can't "
                           "enter";
  if (tasks_[0].ps->time_ns().id()) {
    kleap_time = UniqueFd(open("/proc/self/ns/time", O_RDONLY | O_CLOEXEC));
    KLEAP_TRY(MakeTimeNamespace(tasks_[0].ps->time_ns()));
  }
  pid_t root;
  if (opts_.as_init) {
    // PID 1 becomes the root; a child of it, the controller, does the rest. It takes a
    // pid above every pid of the set: the next pid is set past them first.
    int top = 0;
    for (auto& t : plan_.pstree.tasks())
      for (int tid : t.tids()) top = std::max(top, tid);
    for (auto& h : plan_.pstree.helpers()) top = std::max(top, int(h.pid()));
    if (auto w = WriteStringToFile("/proc/sys/kernel/ns_last_pid", std::to_string(top)); !w)
      KLOG(kWarning) << "the controller's pid may be one of the set's: " << w.error().ToString();
    pid_t c = fork();
    if (c < 0) return ErrnoError() << "fork the restore's controller";
    if (c > 0) {
      files_.mem_files_pid = c;  // the controller keeps the memory files open
      forker.is_init = true;
      forker.init_fallback = opts_.init_fallback;
      forker.RunTask(0);
    }
    in_controller_ = true;
    root = 1;
  } else {
    root = Forker::Clone3(tasks_[0].ps->pid(), SIGCHLD);
    if (root < 0)
      return ErrnoError() << "create task " << tasks_[0].ps->pid()
                          << (errno == EEXIST ? ": pid is taken" : "");
    if (root == 0) forker.RunTask(0);
  }
  if (kleap_time && setns(kleap_time.get(), CLONE_NEWTIME) < 0)
    KLOG(kDebug) << "setns back to kleap's time namespace: " << strerror(errno) << ", ignoring";
  root_ = root;
  auto wait_for = [&](int state) -> Result<void> {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
      bool all = true;
      for (size_t i = 0; i < tasks_.size(); ++i) {
        int s = shared_->slots[i].state.load();
        if (s < 0)
          return Err(EIO) << "task " << tasks_[i].ps->pid() << " (" << tasks_[i].ps->comm()
                          << "): " << shared_->slots[i].error;
        if (s < state) all = false;
      }
      if (all) return Ok();
      int st;
      if (!opts_.as_init && waitpid(root_, &st, WNOHANG) == root_) {
        root_ = 0;
        return Err(EIO) << "task " << tasks_[0].ps->pid() << " died while being created";
      }
      if (std::chrono::steady_clock::now() > deadline)
        return Err(ETIMEDOUT) << "tasks were not created within 30 s";
      usleep(200);
    }
  };
  KLEAP_TRY(wait_for(1));
  shared_->go_pgid.store(1);
  if (!leaders_.empty()) {
    // Every task in its group: the leaders' helpers may go, and their children come
    // back to the subreapers that made them.
    for (size_t i = 0; i < tasks_.size(); ++i)
      while (!shared_->slots[i].joined.load()) {
        if (shared_->slots[i].state.load() < 0)
          return Err(EIO) << "task " << tasks_[i].ps->pid() << " (" << tasks_[i].ps->comm()
                          << "): " << shared_->slots[i].error;
        usleep(200);
      }
    shared_->go_helpers.store(1);
  }
  KLEAP_TRY(wait_for(2));
  for (auto& t : tasks_) {
    if (!t.ps->ppid()) continue;
    auto st = KLEAP_TRY(ReadStat(t.ps->pid()));
    if (st.ppid != t.ps->ppid())
      return Err(EIO) << "task " << t.ps->pid() << " came back with parent " << st.ppid << ", not "
                      << t.ps->ppid();
  }
  // Every task is in its group: the zombies exit now; wait until each is one, so the
  // tree resumes as it was.
  shared_->go_zombies.store(1);
  for (auto& t : tasks_) {
    if (!t.ps->zombie()) continue;
    for (int tries = 0;; ++tries) {
      auto st = ReadStat(t.ps->pid());
      if (st && st->state == 'Z') break;
      if (tries > 10000)
        return Err(ETIMEDOUT) << "task " << t.ps->pid() << " did not become a zombie again";
      usleep(200);
    }
  }
  return Ok();
}

Result<void> RestoreSession::SeizeAll() {
  for (auto& t : tasks_)
    for (int tid : t.ps->tids()) {
      if (t.ps->zombie()) break;
      // PID 1 must not be killed if the controller dies: that panics the kernel.
      bool init = opts_.as_init && t.ps->pid() == 1;
      KLEAP_TRY_CTX(pt::SeizeAndStop(tid, /*exit_kill=*/!init), "task " << t.ps->pid());
      seized_.push_back(tid);
      auto rs = KLEAP_TRY(RemoteSyscalls::Create(tid));
      threads_[tid] = std::make_unique<RemoteSyscalls>(std::move(rs));
    }
  return Ok();
}

Result<void> RestoreSession::RebuildMm(TaskPlan& t, uint64_t data) {
  pid_t pid = t.ps->pid();
  RemoteSyscalls& leader = *Lookup(threads_, pid);
  MmRestore mr;
  mr.pid = pid;
  mr.rs = &leader;
  mr.scratch = t.scratch;
  mr.mm = t.mm;
  mr.pagemap = &Lookup(plan_.pagemaps, pid);
  mr.images = &images_;
  mr.helpers = &t.helpers;
  mr.force_vdso_proxy = opts_.force_vdso_proxy;
  if (opts_.as_init && pid == 1) init_replaced_ = true;
  KLEAP_TRY(RestoreMm(mr));
  page_bytes_ += mr.page_bytes;
  KLEAP_TRY(AttachSysvShm(leader, pid, *t.mm));
  return RestoreAio(leader, pid, data, *t.mm);
}

// What a task's own restorer code does before it parks, for a task that shares its
// parent's address space and so ran none (its creator made it with the controller's
// fds, fs and personality).
Result<void> RestoreSession::SetUpVmMember(TaskPlan& t, uint64_t data) {
  pid_t pid = t.ps->pid();
  RemoteSyscalls& rs = *Lookup(threads_, pid);
  constexpr ArchKind k64 = ArchKind::kX86_64;
  if (!t.files_shared) {
    auto inject = [&](long nr, long a1, long a2, long a3) -> long {
      auto r = rs.Call(k64, nr, uint64_t(a1), uint64_t(a2), uint64_t(a3));
      return r ? long(*r) : -long(r.error().code());
    };
    // (The controller's fds above keep_from are closed with everyone's, in Rebuild.)
    KLEAP_TRY_CTX(InstallFds(*t.fds, files_, t.keep_from, inject), "task " << pid);
  }
  if (!t.fs_shared) {
    KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kUmask, t.core->umask()), "task " << pid << ": umask");
    for (auto [nr, path] : {std::pair{long(X64Arch::kChdir), &t.core->cwd()},
                            std::pair{long(X64Arch::kChroot), &t.core->root()}}) {
      if (nr == X64Arch::kChroot && *path == "/") continue;
      if (path->size() >= kScratchSize - kScratchData)
        return Err(ENAMETOOLONG) << "task " << pid << ": path " << *path;
      KLEAP_TRY_CTX(WriteRemote(pid, RemotePtr(data), path->c_str(), path->size() + 1),
                    "task " << pid);
      KLEAP_TRY_CTX(
          rs.Call(k64, nr, data),
          "task " << pid << ": " << (nr == X64Arch::kChdir ? "chdir " : "chroot ") << *path);
    }
  }
  KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kPersonality, t.core->personality()),
                "task " << pid << ": personality " << Hex(t.core->personality()));
  return Ok();
}

Result<void> RestoreSession::Rebuild(TaskPlan& t) {
  if (t.ps->zombie()) return Ok();
  pid_t pid = t.ps->pid();
  RemoteSyscalls& leader = *Lookup(threads_, pid);
  constexpr ArchKind k64 = ArchKind::kX86_64;
  const uint64_t data = t.scratch + kScratchData;
  // The first syscalls run from the restorer's own code, still mapped at the same place.
  // (A task in its parent's address space has no rseq: clone(CLONE_VM) drops it.)
  if (!t.vm_shared) {
    leader.SetGadget(k64, RemotePtr(uint64_t(kleap_park_gadget)));
    KLEAP_TRY(UnregisterRseq(leader, pid));
  }
  for (int tid : t.ps->tids()) {
    Lookup(threads_, tid)->SetGadget(k64, RemotePtr(t.scratch + kScratchGadget64));
    Lookup(threads_, tid)->SetGadget(ArchKind::kX86, RemotePtr(t.scratch + kScratchGadget32));
  }
  if (t.vm_shared)
    KLEAP_TRY(SetUpVmMember(t, data));
  else
    KLEAP_TRY(RebuildMm(t, data));
  KLEAP_TRY(FaultPoint("restore-rebuild"));
  KLEAP_TRY(RestoreSigactions(leader, pid, data, *t.core));
  KLEAP_TRY(RestoreRlimits(pid, *t.core));
  // The restorer asked to die with its parent while it was being built; the task didn't.
  KLEAP_TRY_CTX(leader.Call(k64, X64Arch::kPrctl, PR_SET_PDEATHSIG, 0),
                "task " << pid << ": clear the death signal");
  for (auto& th : t.core->threads()) {
    RemoteSyscalls& rs = *Lookup(threads_, th.tid());
    KLEAP_TRY(RestoreThreadCore(rs, pid, data, th));
    KLEAP_TRY(RestoreAltStack(rs, th.tid(), data, th));
    KLEAP_TRY(RestorePending(rs, pid, th.tid(), data, th.pending(), false));
  }
  KLEAP_TRY(RestorePending(leader, pid, pid, data, t.core->shared_pending(), true));
  KLEAP_TRY(RestoreTimers(leader, pid, data, t.core->timers(),
                          images_.inventory().boot_id() == BootId()));
  KLEAP_TRY(RestoreLocks(leader, pid, data, *t.core));
  KLEAP_TRY(RestoreSemUndo(leader, pid, data, *t.core));
  if (t.core->child_subreaper())
    KLEAP_TRY_CTX(leader.Call(k64, X64Arch::kPrctl, PR_SET_CHILD_SUBREAPER, 1),
                  "task " << pid << ": set child subreaper");
  // A table shared with tasks not rebuilt yet keeps their helpers. (A task in its
  // parent's address space has none of its own.)
  uint64_t close_from = uint64_t(t.table_last ? t.keep_from : t.helper_from);
  uint64_t close_to = t.table_last ? ~0u : uint64_t(t.helper_end - 1);
  if (t.table_last || t.helper_end > t.helper_from)
    KLEAP_TRY_CTX(leader.Call(k64, X64Arch::kCloseRange, close_from, close_to, 0),
                  "task " << pid << ": close the restorer's fds");
  // Filters go in while the threads are still privileged (seccomp(2) needs
  // CAP_SYS_ADMIN or no_new_privs), suspended for the rest of the restore.
  for (auto& th : t.core->threads()) {
    if (th.seccomp_size() == 0) continue;
    KLEAP_TRY_CTX(SuspendSeccomp(th.tid(), /*exit_kill=*/true), "task " << pid);
    KLEAP_TRY(RestoreSeccomp(*Lookup(threads_, th.tid()), pid, th));
  }
  for (auto& th : t.core->threads())
    KLEAP_TRY(RestoreCreds(*Lookup(threads_, th.tid()), th.tid(), data, t.core->creds()));
  // Credentials changes reset dumpable; the task's own comes back after them. (2, the
  // suid_dumpable mode, can't be set by prctl: the uid change gave it already.)
  if (t.core->dumpable() <= 1)
    KLEAP_TRY_CTX(leader.Call(k64, X64Arch::kPrctl, PR_SET_DUMPABLE, t.core->dumpable()),
                  "task " << pid << ": set dumpable " << t.core->dumpable());
  // The death signal too is cleared by credentials changes. A root's parent is outside
  // the tree: after the restore that is the restorer, which exits, so it keeps none.
  if (&t != &tasks_[0])
    for (auto& th : t.core->threads())
      if (th.pdeath_signal())
        KLEAP_TRY_CTX(
            Lookup(threads_, th.tid())
                ->Call(k64, X64Arch::kPrctl, PR_SET_PDEATHSIG, uint64_t(th.pdeath_signal())),
            "thread " << th.tid() << ": set death signal " << th.pdeath_signal());
  // as_init: PID 1 keeps its scratch page until every task is rebuilt, for an exec to
  // fall back to (ExecFallbackInInit); Run finishes it last.
  if (opts_.as_init && pid == 1) return Ok();
  return FinishTask(t);
}

// The scratch page goes last, with the last task of its address space; after this the
// threads only get their final registers.
Result<void> RestoreSession::FinishTask(TaskPlan& t) {
  pid_t pid = t.ps->pid();
  if (t.unmap_scratch)
    KLEAP_TRY_CTX(
        Lookup(threads_, pid)->Call(ArchKind::kX86_64, X64Arch::kMunmap, t.scratch, kScratchSize),
        "task " << pid << ": unmap the scratch page");
  for (auto& th : t.core->threads()) KLEAP_TRY(SetFinalRegisters(*Lookup(threads_, th.tid()), th));
  return Ok();
}

// PID 1's memory is the old init's already: it can't go back to kleap's code, so it
// execs the fallback init, from the scratch page (still mapped: it goes last).
void RestoreSession::ExecFallbackInInit() {
  RemoteSyscalls& rs = *Lookup(threads_, 1);
  const std::string& path = opts_.fallback_init;
  uint64_t data = tasks_[0].scratch + kScratchData, str = data + 16;
  uint64_t argv[2] = {str, 0};
  if (path.size() >= kScratchSize - kScratchData - 16 ||
      !WriteRemote(1, RemotePtr(data), argv, sizeof argv) ||
      !WriteRemote(1, RemotePtr(str), path.c_str(), path.size() + 1)) {
    KLOG(kError) << "PID 1: can't write the fallback init's name";
    return;
  }
  if (auto r = rs.Execve(str, data, 0); !r)
    KLOG(kError) << "PID 1: exec " << path << ": " << r.error().ToString();
}

void RestoreSession::KillAll() {
  if (shared_) {
    snprintf(shared_->abort_reason, sizeof shared_->abort_reason, "%s",
             failure_.empty() ? "the restore failed" : failure_.c_str());
    shared_->abort.store(1);
  }
  // as_init: PID 1 can't be killed. It goes back to its wait in kleap's code, which
  // falls back, or execs the fallback init there if that code is gone.
  std::set<pid_t> init_tids;
  if (opts_.as_init && !tasks_.empty())
    init_tids.insert(tasks_[0].ps->tids().begin(), tasks_[0].ps->tids().end());
  std::vector<pid_t> pids;
  if (shared_)
    for (size_t i = 0; i < tasks_.size(); ++i)
      if (shared_->slots[i].pid > 0 && !init_tids.count(shared_->slots[i].pid))
        pids.push_back(shared_->slots[i].pid);
  for (pid_t p : pids) kill(p, SIGKILL);
  if (init_replaced_ && threads_.count(1)) ExecFallbackInInit();
  for (auto& [tid, rs] : threads_)
    if (!init_tids.count(tid)) rs->Disarm();
  threads_.clear();
  pt::ReapKilledExcept(seized_, init_tids);
  if (root_ > 0 && !opts_.as_init) {
    int st;
    waitpid(root_, &st, 0);
  }
  // The tasks' PIDs are free again only once every one of them is gone.
  for (int i = 0; i < 5000; ++i) {
    bool any = false;
    for (pid_t p : pids) any |= kill(p, 0) == 0;
    if (!any) break;
    usleep(1000);
  }
}

Result<RestoreResult> RestoreSession::Run() {
  auto t0 = std::chrono::steady_clock::now();
  if (opts_.as_init && (getpid() != 1 || plan_.pstree.tasks(0).pid() != 1))
    return Err(EINVAL) << "a restore as init runs as PID 1 and needs a set whose root is pid 1 "
                       << "(a whole system); this set's root is " << plan_.pstree.tasks(0).pid();
  KLEAP_TRY(Prepare());
  KLEAP_TRY(ForkAll());
  KLEAP_TRY(SeizeAll());
  for (auto& t : tasks_) KLEAP_TRY(Rebuild(t));
  if (opts_.as_init) KLEAP_TRY(FinishTask(tasks_[0]));
  KLEAP_TRY(FinishSockets(plan_.files, files_));
  if (ipc_) KLEAP_TRY(ipc_->Finish());
  KLEAP_TRY(lock_.Remove());
  // Resume everything at once: the destructors write the final registers and masks.
  threads_.clear();
  for (pid_t tid : seized_) {
    auto r = pt::Detach(tid);
    if (!r) return std::move(r).error().Context("resume");
  }
  success_ = true;
  // The tasks hold their own references now.
  files_ = OpenFiles();
  for (auto& [id, m] : shmem_) munmap(reinterpret_cast<void*>(m.addr), m.size);
  shmem_.clear();
  RestoreResult res;
  res.root = root_;
  res.tasks = tasks_.size();
  res.page_bytes = page_bytes_;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace

Result<RestoreResult> RestoreTree(const RestoreOptions& opts, ImageReader& images) {
  RestorePlan plan = KLEAP_TRY(LoadPlan(images));
  if (opts.blobs_verified)
    KLEAP_TRY(CheckPageBlobSizes(images, plan));
  else
    KLEAP_TRY(VerifyBlobs(images, plan));
  KLEAP_TRY(CheckPidsFree(plan, opts.as_init));
  KLEAP_TRY(CheckFileIdentities(plan, images));
  std::optional<Result<RestoreResult>> out;
  bool controller = false;
  {
    RestoreSession session(opts, images, plan);
    out.emplace(session.Run());
    controller = session.in_controller();
    if (!*out) {
      session.SetFailure(out->error().ToString());
      // Said now: once PID 1 falls back, the controller may not outlive it for long.
      if (controller) KLOG(kError) << "restore as init: " << out->error().ToString();
    }
    // Leaving this scope, a failure kills every task created.
  }
  // as_init: the forked controller never returns to PID 1's caller.
  if (controller) {
    if (*out) {
      if (opts.init_done) opts.init_done(**out);
      _exit(0);
    }
    _exit(1);
  }
  RestoreResult res = KLEAP_TRY(std::move(*out));
  if (!opts.detach) {
    int st = 0;
    while (waitpid(res.root, &st, 0) < 0 && errno == EINTR) {
    }
    res.exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  return res;
}

}  // namespace kleap
