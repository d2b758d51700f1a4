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
//
// Step 1 is restore_plan.cc, the code of steps 2 and 3 that runs in the created tasks is
// restore_fork.cc; this file plans the tasks (Prepare) and drives the session.
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
#include "engine/fown.h"
#include "engine/ipc.h"
#include "engine/leaders.h"
#include "engine/locks.h"
#include "engine/mm.h"
#include "engine/pidfd.h"
#include "engine/restore_fork.h"
#include "engine/restore_plan.h"
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

// The signal that stops a task again: its own stop signal while that still stops it (its
// default action, not blocked), else SIGSTOP, which always does (said in the log).
int StopSignalFor(const img::TaskCore& core, uint32_t sig) {
  if (sig == 0) return SIGSTOP;
  bool dfl = true;
  for (auto& a : core.sigactions())
    if (a.signo() == sig) dfl = a.handler() == 0;
  bool blocked = core.threads_size() && (core.threads(0).blocked() >> (sig - 1)) & 1;
  if (dfl && !blocked) return int(sig);
  KLOG(kWarning) << "task " << core.pid() << ": stopped by signal " << sig
                 << ", which would not stop it now; stopped with SIGSTOP";
  return SIGSTOP;
}

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
  Result<void> RebuildMm(TaskPlan& t);
  Result<void> SetUpVmMember(TaskPlan& t);
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
  size_t cow_flags_ = 0;
  std::atomic<uint8_t>* cow_kept_ = nullptr;  // in shared_'s mapping
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
  ForkPlan fork = KLEAP_TRY(PlanTasks(plan_));
  tasks_ = std::move(fork.tasks);
  leaders_ = std::move(fork.leaders);
  cow_flags_ = fork.cow_flags;
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
  // The slots, then a flag for each mapping kept from before a fork (TaskPlan::cow).
  size_t slots_end = sizeof(SharedState) + tasks_.size() * sizeof(Slot);
  shared_size_ = (slots_end + cow_flags_ + 4095) & ~size_t(4095);
  void* p = mmap(nullptr, shared_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return ErrnoError() << "map restore state";
  shared_ = static_cast<SharedState*>(p);
  cow_kept_ = reinterpret_cast<std::atomic<uint8_t>*>(static_cast<char*>(p) + slots_end);
  ForkContext fork_ctx{plan_, files_, shmem_, tasks_, shared_};
  fork_ctx.leaders = &leaders_;
  fork_ctx.images = &images_;
  fork_ctx.cow_kept = cow_kept_;
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
      fork_ctx.is_init = true;
      fork_ctx.init_fallback = opts_.init_fallback;
      RunTask(fork_ctx, 0);
    }
    in_controller_ = true;
    files_.mem_files_pid = getpid();  // the controller holds the files (PID 1 gave them)
    root = 1;
  } else {
    root = CloneAt(tasks_[0].ps->pid(), SIGCHLD);
    if (root < 0)
      return ErrnoError() << "create task " << tasks_[0].ps->pid()
                          << (errno == EEXIST ? ": pid is taken" : "");
    if (root == 0) RunTask(fork_ctx, 0);
  }
  if (kleap_time && setns(kleap_time.get(), CLONE_NEWTIME) < 0)
    KLOG(kDebug) << "setns back to kleap's time namespace: " << strerror(errno) << ", ignoring";
  root_ = root;
  auto wait_for = [&](SlotState want) -> Result<void> {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
      bool all = true;
      for (size_t i = 0; i < tasks_.size(); ++i) {
        SlotState s = shared_->slots[i].state.load();
        if (s == SlotState::kFailed)
          return Err(EIO) << "task " << tasks_[i].ps->pid() << " (" << tasks_[i].ps->comm()
                          << "): " << shared_->slots[i].error;
        if (int(s) < int(want)) all = false;
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
  KLEAP_TRY(wait_for(SlotState::kCreated));
  // Every task exists: the pidfds of tasks can be opened, before any task installs its fds.
  KLEAP_TRY(OpenLivePidfds(files_));
  shared_->phase.store(ForkPhase::kJoinGroups);
  if (!leaders_.empty()) {
    // Every task in its group: the leaders' helpers may go, and their children come
    // back to the subreapers that made them.
    for (size_t i = 0; i < tasks_.size(); ++i)
      while (!shared_->slots[i].joined.load()) {
        if (shared_->slots[i].state.load() == SlotState::kFailed)
          return Err(EIO) << "task " << tasks_[i].ps->pid() << " (" << tasks_[i].ps->comm()
                          << "): " << shared_->slots[i].error;
        usleep(200);
      }
  }
  shared_->phase.store(ForkPhase::kHelpersExit);
  KLEAP_TRY(wait_for(SlotState::kParked));
  for (auto& t : tasks_) {
    if (!t.ps->ppid()) continue;
    auto st = KLEAP_TRY(ReadStat(t.ps->pid()));
    if (st.ppid != t.ps->ppid())
      return Err(EIO) << "task " << t.ps->pid() << " came back with parent " << st.ppid << ", not "
                      << t.ps->ppid();
  }
  // Every task is in its group: the zombies exit now; wait until each is one, so the
  // tree resumes as it was.
  shared_->phase.store(ForkPhase::kZombiesExit);
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

Result<void> RestoreSession::RebuildMm(TaskPlan& t) {
  pid_t pid = t.ps->pid();
  RemoteSyscalls& leader = *Lookup(threads_, pid);
  MmRestore mr;
  mr.pid = pid;
  mr.rs = &leader;
  mr.scratch = t.mm->scratch;
  mr.mm = t.mm->image;
  mr.pagemap = &Lookup(plan_.pagemaps, pid);
  mr.images = &images_;
  mr.helpers = &t.helpers;
  for (auto& c : t.cow)
    if (cow_kept_[c.flag].load()) mr.kept.push_back(c.vma);
  mr.force_vdso_proxy = opts_.force_vdso_proxy;
  if (opts_.as_init && pid == 1) init_replaced_ = true;
  KLEAP_TRY(RestoreMm(mr));
  page_bytes_ += mr.page_bytes;
  KLEAP_TRY(AttachSysvShm(leader, pid, *t.mm->image));
  return RestoreAio(leader, pid, t.mm->scratch.data(), *t.mm->image);
}

// What a task's own restorer code does before it parks, for a task that shares its
// parent's address space and so ran none (its creator made it with the controller's
// fds, fs and personality).
Result<void> RestoreSession::SetUpVmMember(TaskPlan& t) {
  pid_t pid = t.ps->pid();
  RemoteSyscalls& rs = *Lookup(threads_, pid);
  constexpr ArchKind k64 = ArchKind::kX86_64;
  const RemotePtr<> data = t.mm->scratch.data();
  if (!t.files_shared()) {
    auto inject = [&](long nr, long a1, long a2, long a3) -> long {
      auto r = rs.Call(k64, nr, a1, a2, a3);
      return r ? long(*r) : -long(r.error().code());
    };
    // (The controller's fds above keep_from are closed with everyone's, in Rebuild.)
    KLEAP_TRY_CTX(InstallFds(*t.fds, files_, t.keep_from, inject), "task " << pid);
  }
  if (!t.fs_shared()) {
    KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kUmask, t.core->umask()), "task " << pid << ": umask");
    const std::string cwd = t.core->cwd_ghost()
                                ? KLEAP_TRY(GhostPath(plan_, files_, t.core->cwd_ghost()))
                                : t.core->cwd();
    for (auto [nr, path] : {std::pair{long(X64Arch::kChdir), &cwd},
                            std::pair{long(X64Arch::kChroot), &t.core->root()}}) {
      if (nr == X64Arch::kChroot && *path == "/") continue;
      if (path->size() >= ScratchPage::kDataSize)
        return Err(ENAMETOOLONG) << "task " << pid << ": path " << *path;
      KLEAP_TRY_CTX(WriteRemote(pid, data, path->c_str(), path->size() + 1), "task " << pid);
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
  const RemotePtr<> data = t.mm->scratch.data();
  // The first syscalls run from the restorer's own code, still mapped at the same place.
  // (A task in its parent's address space has no rseq: clone(CLONE_VM) drops it.)
  if (!t.vm_shared()) {
    leader.SetGadget(k64, RemotePtr(uint64_t(kleap_park_gadget)));
    KLEAP_TRY(UnregisterRseq(leader, pid));
  }
  for (int tid : t.ps->tids()) {
    Lookup(threads_, tid)->SetGadget(k64, t.mm->scratch.gadget64());
    Lookup(threads_, tid)->SetGadget(ArchKind::kX86, t.mm->scratch.gadget32());
  }
  if (t.vm_shared())
    KLEAP_TRY(SetUpVmMember(t));
  else
    KLEAP_TRY(RebuildMm(t));
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
  const bool last = t.table_last();
  uint64_t close_from = uint64_t(last ? t.keep_from : t.helper_from);
  uint64_t close_to = last ? ~0u : uint64_t(t.helper_end - 1);
  if (last || t.helper_end > t.helper_from)
    KLEAP_TRY_CTX(leader.Call(k64, X64Arch::kCloseRange, close_from, close_to, 0),
                  "task " << pid << ": close the restorer's fds");
  // Filters go in while the threads are still privileged (seccomp(2) needs
  // CAP_SYS_ADMIN or no_new_privs), suspended for the rest of the restore.
  for (auto& th : t.core->threads())
    if (th.seccomp_size())
      KLEAP_TRY_CTX(SuspendSeccomp(th.tid(), /*exit_kill=*/true), "task " << pid);
  const int shared_filters = SharedSeccompPrefix(*t.core);
  if (shared_filters) {
    const img::ThreadCore& first = t.core->threads(0);
    KLEAP_TRY(RestoreSeccomp(*Lookup(threads_, first.tid()), pid, first, 0, shared_filters,
                             /*tsync=*/true));
  }
  for (auto& th : t.core->threads())
    KLEAP_TRY(RestoreSeccomp(*Lookup(threads_, th.tid()), pid, th, shared_filters,
                             th.seccomp_size(), /*tsync=*/false));
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
  if (t.unmaps_scratch())
    KLEAP_TRY_CTX(
        Lookup(threads_, pid)
            ->Call(ArchKind::kX86_64, X64Arch::kMunmap, t.mm->scratch.base, ScratchPage::kSize),
        "task " << pid << ": unmap the scratch page");
  for (auto& th : t.core->threads()) KLEAP_TRY(SetFinalRegisters(*Lookup(threads_, th.tid()), th));
  return Ok();
}

// PID 1's memory is the old init's already: it can't go back to kleap's code, so it
// execs the fallback init, from the scratch page (still mapped: it goes last).
void RestoreSession::ExecFallbackInInit() {
  RemoteSyscalls& rs = *Lookup(threads_, 1);
  const std::string& path = opts_.fallback_init;
  const RemotePtr<const uint64_t> argv_at = tasks_[0].mm->scratch.data().Cast<const uint64_t>();
  const RemotePtr<const char> str = (tasks_[0].mm->scratch.data() + 16).Cast<const char>();
  uint64_t argv[2] = {str.addr(), 0};
  if (path.size() >= ScratchPage::kDataSize - 16 || !WriteRemote(1, argv_at, argv, sizeof argv) ||
      !WriteRemote(1, str, path.c_str(), path.size() + 1)) {
    KLOG(kError) << "PID 1: can't write the fallback init's name";
    return;
  }
  if (auto r = rs.Execve(str, argv_at, RemotePtr<const uint64_t>()); !r)
    KLOG(kError) << "PID 1: exec " << path << ": " << r.error().ToString();
}

void RestoreSession::KillAll() {
  // as_init: PID 1 can't be killed. It goes back to its wait in kleap's code, which
  // falls back once the abort flag is up, or execs the fallback init there if that code
  // is gone.
  std::set<pid_t> init_tids;
  if (opts_.as_init && !tasks_.empty())
    init_tids.insert(tasks_[0].ps->tids().begin(), tasks_[0].ps->tids().end());
  std::vector<pid_t> pids;
  if (shared_)
    for (size_t i = 0; i < tasks_.size(); ++i)
      if (shared_->slots[i].pid > 0 && !init_tids.count(shared_->slots[i].pid))
        pids.push_back(shared_->slots[i].pid);
  for (pid_t p : pids) kill(p, SIGKILL);
  // The fallback starts only once no task of the set runs any more: each is gone, or a
  // zombie for PID 1 (or the restorer) to reap.
  for (int i = 0; i < 2000; ++i) {
    bool running = false;
    for (pid_t p : pids) {
      auto st = ReadStat(p);
      running |= st && st->state != 'Z' && st->state != 'X';
    }
    if (!running) break;
    usleep(1000);
  }
  if (shared_) {
    snprintf(shared_->abort_reason, sizeof shared_->abort_reason, "%s",
             failure_.empty() ? "the restore failed" : failure_.c_str());
    shared_->abort.store(1);
  }
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
  // Last, so that nothing the restore does sends their signals.
  KLEAP_TRY(SetFileOwners(plan_, files_));
  KLEAP_TRY(lock_.Remove());
  KLEAP_TRY(SendPeerFins(plan_.files, files_));
  // Resume everything at once: the destructors write the final registers and masks.
  threads_.clear();
  // A task that was stopped gets its stop signal while it is still held: it stops again
  // on the way out of the ptrace stop, before it runs any code of its own, and its parent's
  // waitid reports that signal. SIGTSTP, SIGTTIN and SIGTTOU stop it only as they did
  // before the dump: with their default action and not blocked (kept then, checked
  // below), in a process group that is not orphaned (the tree's shape is the dump's).
  for (auto& t : tasks_) {
    if (!t.ps->stopped() || t.ps->zombie()) continue;
    int sig = StopSignalFor(*t.core, t.ps->stop_signal());
    if (kill(t.ps->pid(), sig) < 0)
      return ErrnoError() << "task " << t.ps->pid() << ": stop it again with signal " << sig;
  }
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
