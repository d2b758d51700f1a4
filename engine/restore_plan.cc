// Restore, phase 1 (plan): every image of a set read into a RestorePlan and checked
// before anything is created: the plan's structure (ValidatePlan, pure), the page blobs,
// checksums, that every pid is free and that every mapped or opened file is the one
// that was dumped. The same checks serve `kleap validate`. Then the tasks to create and
// what they share (PlanTasks).
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "engine/aio.h"
#include "engine/base/log.h"
#include "engine/base/lookup.h"
#include "engine/base/page.h"
#include "engine/fown.h"
#include "engine/ipc.h"
#include "engine/leaders.h"
#include "engine/locks.h"
#include "engine/mm.h"
#include "engine/pidfd.h"
#include "engine/restore_plan.h"
#include "engine/seccomp.h"
#include "engine/share.h"
#include "engine/sock.h"
#include "engine/timens.h"
#include "engine/timers.h"
#include "engine/tty.h"

namespace kleap {

Result<void> ValidatePlan(const RestorePlan& plan) {
  std::set<pid_t> pids, tids, helpers;
  for (auto& h : plan.pstree.helpers()) helpers.insert(h.pid());
  for (auto& t : plan.pstree.tasks()) {
    if (t.pid() <= 0 || pids.count(t.pid()))
      return Err(EINVAL) << "pstree.img: bad or repeated pid " << t.pid();
    // The parent first, so that a task can't be its own parent; only the root has none
    // in the set (its ppid is 0), and every other task is made by one.
    if (!pids.empty() && t.ppid() == 0)
      return Err(EINVAL) << "pstree.img: task " << t.pid() << " has no parent, and only the "
                         << "first task, the root, may have none";
    if (t.ppid() != 0 && !pids.count(t.ppid()))
      return Err(EINVAL) << "pstree.img: task " << t.pid() << " comes before its parent "
                         << t.ppid();
    pids.insert(t.pid());
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
    if (t.stop_signal() &&
        (!t.stopped() ||
         (t.stop_signal() != SIGTSTP && t.stop_signal() != SIGTTIN && t.stop_signal() != SIGTTOU)))
      return Err(EINVAL) << "pstree.img: task " << t.pid() << ": bad stop signal "
                         << t.stop_signal();
    if (t.zombie()) {
      int st = t.exit_status();
      bool exited = (st & 0x7f) == 0, signaled = (st & 0x7f) > 0 && (st & 0x7f) < 0x7f;
      if (t.ppid() == 0 || t.tids_size() != 1 || (!exited && !signaled) || st < 0 || st > 0xffff ||
          t.stopped())
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
      // Pages shared with the parent: ascending, each inside one run.
      auto& pm = Lookup(plan.pagemaps, t.pid());
      prev = 0;
      int k = 0;
      for (auto& r : pm.parent_runs()) {
        while (k < pm.runs_size() && pm.runs(k).vaddr() + pm.runs(k).nr_pages() * 4096 <= r.vaddr())
          ++k;
        if (r.vaddr() % 4096 || r.vaddr() < prev || r.nr_pages() == 0 || k == pm.runs_size() ||
            r.vaddr() < pm.runs(k).vaddr() ||
            r.nr_pages() > pm.runs(k).nr_pages() - (r.vaddr() - pm.runs(k).vaddr()) / 4096)
          return Err(EINVAL) << PagemapImage(t.pid()) << ": page run at " << Hex(r.vaddr())
                             << " of " << r.nr_pages()
                             << " pages shared with the parent lies outside the task's pages";
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
    if (mm.membarrier() & ~kMembarrierRegisterMask)
      return Err(EINVAL) << MmImage(t.pid()) << ": membarrier registrations "
                         << Hex(mm.membarrier());
    KLEAP_TRY(ValidateAio(t.pid(), mm));
  }
  KLEAP_TRY(ValidateTimeNamespaces(plan.pstree));
  KLEAP_TRY(ValidateFileObjects(plan.files));
  KLEAP_TRY(ValidateShmem(plan));
  std::set<uint64_t> file_ids, unlinked;
  for (auto& f : plan.files.files()) {
    file_ids.insert(f.id());
    if (f.has_reg() && f.reg().deleted() && S_ISREG(f.reg().mode())) unlinked.insert(f.id());
  }
  // A mapping or executable carried as an unlinked file names one of files.img.
  for (auto& [pid, mm] : plan.mms) {
    for (auto& v : mm.vmas())
      if (v.ghost_file() &&
          (!unlinked.count(v.ghost_file()) ||
           (v.kind() != img::Vma::FILE_PRIVATE && v.kind() != img::Vma::FILE_SHARED) ||
           v.shmem_id()))
        return Err(EINVAL) << MmImage(pid) << ": mapping " << Hex(v.start()) << ": ghost_file "
                           << v.ghost_file() << " is no unlinked file of the set";
    bool exe_shmem_known = false;
    for (auto& o : plan.shmem.objects())
      if (o.id() == mm.exe_shmem() && o.kind() != img::ShmemObject::ANON_SHARED)
        exe_shmem_known = true;
    if (mm.exe_shmem() && (!exe_shmem_known || mm.exe_ghost()))
      return Err(EINVAL) << MmImage(pid) << ": exe_shmem " << mm.exe_shmem()
                         << " is no memory file of the set";
    if (mm.exe_ghost() && !unlinked.count(mm.exe_ghost()))
      return Err(EINVAL) << MmImage(pid) << ": exe_ghost " << mm.exe_ghost()
                         << " is no unlinked file of the set";
  }
  for (auto& [pid, table] : plan.fdtables)
    for (auto& e : table.fds()) {
      if (e.fd() < 0 || e.fd() > (1 << 20))
        return Err(EINVAL) << FdTableImage(pid) << ": bad fd " << e.fd();
      if (!file_ids.count(e.file_id()))
        return Err(EINVAL) << FdTableImage(pid) << ": fd " << e.fd() << " points at unknown file "
                           << e.file_id();
    }
  KLEAP_TRY(ValidateFileOwners(plan));
  KLEAP_TRY(ValidatePidfds(plan));
  return Ok();
}

Result<void> CheckPlan(const RestorePlan& plan) {
  if (plan.pstree.tasks_size() == 0) return Err(EINVAL) << "pstree.img: no tasks";
  KLEAP_TRY(ValidatePlan(plan));
  // Who creates whom; a session helper's orphans come back to a subreaper.
  KLEAP_TRY(TaskCreators(plan.pstree));
  // (PID 1 reaps every orphan: a whole system's init needs no subreaper flag.)
  for (auto& h : plan.pstree.helpers())
    if (h.session() && h.parent() != 1 && !Lookup(plan.cores, h.parent()).child_subreaper())
      return Err(EINVAL) << "pstree.img: helper " << h.pid() << ": its parent " << h.parent()
                         << " is not a subreaper, so its children would not come back to it";
  KLEAP_TRY(ValidateSharing(plan));
  return ValidateIpc(plan);
}

Result<RestorePlan> LoadPlan(ImageReader& images) {
  RestorePlan plan;
  KLEAP_TRY(images.ReadMessage(kPsTreeImage, &plan.pstree));
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
  KLEAP_TRY(CheckPlan(plan));
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
    // (A shmem object of the set, or an unlinked file of it, is made anew, not found.)
    for (auto& v : mm.vmas())
      if ((v.kind() == img::Vma::FILE_PRIVATE || v.kind() == img::Vma::FILE_SHARED) &&
          v.shmem_id() == 0 && v.ghost_file() == 0)
        KLEAP_TRY(check(v.path(), v.file(),
                        "task " + std::to_string(pid) + " mapping " + Hex(v.start())));
    if (!mm.exe_ghost() && !mm.exe_shmem())
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

// ---- the tasks and what they share ----

size_t TaskPlan::table_prev() const {
  auto me = std::find(table->placers.begin(), table->placers.end(), index);
  KLEAP_CHECK(me != table->placers.begin() && me != table->placers.end());
  return *(me - 1);
}

// Helper fds take fixed numbers just above the task's own, in mapping order, so the
// task (which opens them) and the controller (which maps them) agree without talking.
void AssignHelperFds(TaskPlan& t) {
  int next = t.helper_from;
  const img::MmImage& mm = *t.mm->image;
  for (int i = 0; i < mm.vmas_size(); ++i) {
    auto k = mm.vmas(i).kind();
    if (k == img::Vma::ANON_SHARED || k == img::Vma::FILE_PRIVATE || k == img::Vma::FILE_SHARED)
      t.helpers.vma_fd[size_t(i)] = next++;
  }
  t.helpers.exe_fd = next++;
  t.helper_end = next;
}

namespace {

// A live task's table, fs and address space: its own, or its parent's where it shares
// them (ValidateSharing made sure the parent is in the tree, alive, and that the images
// agree).
Result<void> PlanSharing(const RestorePlan& plan, const std::map<pid_t, pid_t>& creators,
                         const std::vector<TaskPlan>& tasks, const TaskPlan* parent, TaskPlan& t) {
  const img::PsTask& ps = *t.ps;
  size_t me = t.index;
  if (!parent && (ps.files_share_with() || ps.fs_share_with() || ps.vm_share_with()))
    return Err(EINVAL) << "pstree.img: task " << ps.pid()
                       << " shares with a parent outside the tree";
  t.table = ps.files_share_with() ? parent->table
                                  : std::make_shared<SharedFdTable>(SharedFdTable{me, {me}});
  t.fs = ps.fs_share_with() ? parent->fs : std::make_shared<SharedFs>(SharedFs{me, {}});
  if (ps.vm_share_with()) {
    if (Lookup(creators, ps.pid()) != ps.ppid())
      return Err(EINVAL) << "pstree.img: task " << ps.pid() << " shares the address space of "
                         << ps.ppid() << ", which does not create it";
    // It runs none of the restorer's code: it places no helpers in a shared table, and
    // opens nothing by path in a shared fs.
    t.mm = parent->mm;
    t.helper_end = t.helper_from;
    return Ok();
  }
  const img::MmImage& image = Lookup(plan.mms, ps.pid());
  t.mm = std::make_shared<SharedMm>(SharedMm{&image, KLEAP_TRY(PickScratch(image)), me, me});
  if (t.files_shared()) {
    t.table->placers.push_back(me);
    t.helper_from = tasks[t.table_prev()].helper_end;
  }
  if (t.fs_shared()) t.fs->members.push_back(me);
  AssignHelperFds(t);
  return Ok();
}

// Copy-on-write sharing: a child's mapping whose pages it still shares with its parent
// is inherited whole when the parent fills its own copy of it before the fork. Both
// must be the same private mapping (anonymous, or of the same file at the same offset)
// that a fork copies (not MADV_DONTFORK, MADV_WIPEONFORK or droppable).
bool Forkable(const img::Vma& v) {
  return (v.kind() == img::Vma::ANON_PRIVATE || v.kind() == img::Vma::FILE_PRIVATE) &&
         !HasVmFlag(v, "dd") && !HasVmFlag(v, "wf") && !HasVmFlag(v, "dp");
}
bool SameMapping(const img::Vma& a, const img::Vma& b) {
  return a.start() == b.start() && a.end() == b.end() && a.kind() == b.kind() &&
         a.path() == b.path() && a.pgoff() == b.pgoff() && a.ghost_file() == b.ghost_file() &&
         a.shmem_id() == b.shmem_id() && Forkable(a) && Forkable(b);
}

size_t PlanCow(const RestorePlan& plan, std::vector<TaskPlan>& tasks,
               const std::map<pid_t, size_t>& index) {
  std::map<std::pair<size_t, int>, size_t> flags;
  auto entry = [&](size_t task, int vma) -> TaskPlan::CowVma& {
    auto [it, added] = flags.emplace(std::make_pair(task, vma), flags.size());
    auto& cow = tasks[task].cow;
    for (auto& c : cow)
      if (c.vma == vma) return c;
    cow.push_back({vma, it->second, -1, false});
    return cow.back();
  };
  auto own_mm = [&](const TaskPlan& t) {
    return !t.ps->zombie() && t.mm && t.mm->owner == t.index;
  };
  for (auto& t : tasks) {
    if (!own_mm(t)) continue;
    auto pm = plan.pagemaps.find(t.ps->pid());
    auto p = index.find(t.ps->ppid());
    if (pm == plan.pagemaps.end() || pm->second.parent_runs().empty() || p == index.end() ||
        !own_mm(tasks[p->second]))
      continue;
    const TaskPlan& parent = tasks[p->second];
    const img::MmImage& mine = *t.mm->image;
    const img::MmImage& theirs = *parent.mm->image;
    int v = 0, w = 0;
    for (auto& r : pm->second.parent_runs()) {
      while (v < mine.vmas_size() && mine.vmas(v).end() <= r.vaddr()) ++v;
      if (v == mine.vmas_size()) break;
      const img::Vma& vma = mine.vmas(v);
      if (r.vaddr() < vma.start() || !Forkable(vma)) continue;
      while (w < theirs.vmas_size() && theirs.vmas(w).end() <= vma.start()) ++w;
      if (w == theirs.vmas_size()) break;
      const img::Vma& pv = theirs.vmas(w);
      if (!SameMapping(vma, pv)) continue;
      entry(p->second, w).for_children = true;
      size_t parent_flag = flags.at({p->second, w});
      entry(t.index, v).parent_flag = long(parent_flag);
    }
  }
  for (auto& t : tasks)
    std::sort(t.cow.begin(), t.cow.end(), [](auto& a, auto& b) { return a.vma < b.vma; });
  return flags.size();
}

}  // namespace

Result<ForkPlan> PlanTasks(const RestorePlan& plan) {
  ForkPlan out;
  std::vector<TaskPlan>& tasks = out.tasks;
  std::map<pid_t, size_t> index;
  auto creators = KLEAP_TRY(TaskCreators(plan.pstree));
  std::map<pid_t, size_t> helper_index;
  for (auto& h : plan.pstree.helpers()) {
    helper_index[h.pid()] = out.leaders.size();
    out.leaders.push_back({h.pid(), h.session(), {}, {}});
  }
  for (auto& ps : plan.pstree.tasks()) {
    TaskPlan t;
    t.index = tasks.size();
    t.ps = &ps;
    if (!ps.zombie()) {
      t.core = &Lookup(plan.cores, ps.pid());
      t.fds = &Lookup(plan.fdtables, ps.pid());
      for (auto& e : t.fds->fds()) t.keep_from = std::max(t.keep_from, e.fd() + 1);
      t.helper_from = t.keep_from;
      auto parent = index.find(ps.ppid());
      KLEAP_TRY(PlanSharing(plan, creators, tasks,
                            parent == index.end() ? nullptr : &tasks[parent->second], t));
    }
    index[ps.pid()] = t.index;
    pid_t creator = Lookup(creators, ps.pid());
    if (auto h = helper_index.find(creator); creator && h != helper_index.end()) {
      out.leaders[h->second].children.push_back(t.index);
      t.by_helper = true;
    } else if (creator) {
      tasks[Lookup(index, creator)].children.push_back(t.index);
    }
    tasks.push_back(std::move(t));
  }
  // An address space's scratch page goes with the last of its tasks rebuilt.
  for (auto& t : tasks)
    if (t.mm) t.mm->last = t.index;
  out.cow_flags = PlanCow(plan, tasks, index);
  // A parent creates its children in its own time namespace before it makes another.
  for (auto& t : tasks)
    std::stable_sort(t.children.begin(), t.children.end(), [&](size_t a, size_t b) {
      auto later = [&](size_t c) {
        return !tasks[c].ps->zombie() && tasks[c].ps->time_ns().id() != t.ps->time_ns().id();
      };
      return !later(a) && later(b);
    });
  for (auto& h : plan.pstree.helpers()) {
    size_t me = Lookup(helper_index, h.pid());
    if (auto p = helper_index.find(h.parent()); p != helper_index.end())
      out.leaders[p->second].helpers.push_back(me);
    else
      tasks[Lookup(index, h.parent())].leader_helpers.push_back(me);
  }
  return out;
}

}  // namespace kleap
