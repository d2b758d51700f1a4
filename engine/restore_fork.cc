// Restore, phases 2 and 3: the shared memory objects the controller makes before the
// fork, and the code every created task runs (Forker): clone3 at its pid, its session
// and group, its children and threads, its fds, then a park until the controller seizes
// it. No C++ exceptions and no return: a failure goes into the task's slot.
#include "engine/restore_fork.h"

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

#include "engine/base/log.h"
#include "engine/base/lookup.h"
#include "engine/base/page.h"
#include "engine/core.h"
#include "engine/files.h"
#include "engine/ipc.h"
#include "engine/leaders.h"
#include "engine/share.h"
#include "engine/timens.h"
#include "engine/tty.h"

extern "C" void kleap_park(void);
extern "C" char kleap_park_gadget[];
extern "C" long kleap_clone_thread(struct clone_args* args, size_t size);
extern "C" long kleap_clone_process(struct clone_args* args, size_t size);

namespace kleap {

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

namespace {

// The code of a task being created, over what it knows (ForkContext).
struct Forker : ForkContext {
  // Mappings this process holds whole for its children (PrepareCow); a child gets the
  // list with its copy of the memory.
  struct KeptVma {
    uint64_t start, end;
    size_t flag;
  };
  std::vector<KeptVma> kept_vmas;

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
    shared->slots[i].state.store(SlotState::kFailed);
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

  // A new fd (close-on-exec) of the file a mapping maps.
  Result<UniqueFd> OpenVmaFile(const img::Vma& v) {
    std::string path;
    int mode = O_RDONLY | O_CLOEXEC;
    if (v.kind() == img::Vma::ANON_SHARED) {
      auto it = shmem.find(v.shmem_id());
      if (it == shmem.end())
        return Err(EINVAL) << "mapping " << Hex(v.start()) << ": unknown shared memory "
                           << v.shmem_id();
      path = MapFilesPath(0, it->second.addr, it->second.addr + it->second.size);
      mode = O_RDWR | O_CLOEXEC;
    } else {
      // Read-only unless the mapping may write (a write-sealed memfd refuses writable ones).
      if (v.kind() == img::Vma::FILE_SHARED && HasVmFlag(v, "mw")) mode = O_RDWR | O_CLOEXEC;
      auto created = files.memfd_created.find(v.shmem_id());
      if (mode & O_RDWR && created != files.memfd_created.end()) {
        // A memfd's writable shared mapping: of the description memfd_create made, as
        // it was (files.memfd_created), taken from the controller.
        return KLEAP_TRY_CTX(GrabFd(files.mem_files_pid, created->second.get()),
                             "take memfd " << v.shmem_id() << " from the controller");
      }
      if (v.shmem_id()) {
        // A memfd or unlinked tmpfs file the controller made, a description of its own
        // through the controller's /proc: the task closes its copies of the controller's fds.
        auto it = files.mem_files.find(v.shmem_id());
        if (it == files.mem_files.end())
          return Err(EINVAL) << "mapping " << Hex(v.start()) << ": unknown memory file "
                             << v.shmem_id();
        path = "/proc/" + std::to_string(files.mem_files_pid) + "/fd/" +
               std::to_string(it->second.get());
      } else {
        path = v.ghost_file() ? KLEAP_TRY(GhostPath(plan, files, v.ghost_file())) : v.path();
      }
    }
    UniqueFd fd(open(path.c_str(), mode));
    if (!fd) return ErrnoError() << "open " << (v.path().empty() ? path : v.path());
    return fd;
  }

  // Opens the files the task's mappings need, at the numbers AssignHelperFds chose.
  Result<void> OpenHelpers(const TaskPlan& t) {
    // Nothing of the controller's stays above the task's own fds (a shared table's holder
    // did that for the whole table).
    if (!t.files_shared()) syscall(X64Arch::kCloseRange, t.keep_from, ~0u, 0);
    auto place = [&](int fd, int want, const std::string& what) -> Result<void> {
      if (fd < 0) return ErrnoError() << "open " << what;
      if (fd != want) {
        if (dup3(fd, want, O_CLOEXEC) < 0) return ErrnoError() << "place " << what;
        close(fd);
      }
      return Ok();
    };
    for (auto& [i, want] : t.helpers.vma_fd) {
      const img::Vma& v = t.mm->image->vmas(int(i));
      UniqueFd fd = KLEAP_TRY(OpenVmaFile(v));
      KLEAP_TRY(place(fd.release(), want, v.path()));
    }
    const img::MmImage& mm = *t.mm->image;
    std::string exe = mm.exe_path();
    if (mm.exe_ghost()) exe = KLEAP_TRY(GhostPath(plan, files, mm.exe_ghost()));
    if (mm.exe_shmem()) {
      auto it = files.mem_files.find(mm.exe_shmem());
      if (it == files.mem_files.end())
        return Err(EINVAL) << "executable: unknown memory file " << mm.exe_shmem();
      exe = "/proc/" + std::to_string(files.mem_files_pid) + "/fd/" +
            std::to_string(it->second.get());
    }
    return place(open(exe.c_str(), O_RDONLY | O_CLOEXEC), t.helpers.exe_fd, mm.exe_path());
  }

  // Copy-on-write sharing (TaskPlan::cow), before the task forks anything: of the
  // mappings its creator kept, it fills the ones it inherits as its own and drops the
  // others; then it makes and fills the ones its children share with it. A mapping that
  // can't be made here (the restorer's own memory is in the way) is left to RestoreMm,
  // as if nothing were shared.
  void PrepareCow(size_t i) {
    TaskPlan& t = tasks[i];
    std::vector<KeptVma> mine;
    std::unique_ptr<BlobReader> blob;
    auto fill = [&](const TaskPlan::CowVma& c, bool inherited) -> Result<void> {
      const img::Vma& v = t.mm->image->vmas(c.vma);
      const img::Pagemap& pm = Lookup(plan.pagemaps, t.ps->pid());
      if (!blob) blob = KLEAP_TRY(images->OpenBlob(pm.blob()));
      UniqueFd file;
      if (!inherited && v.kind() == img::Vma::FILE_PRIVATE) file = KLEAP_TRY(OpenVmaFile(v));
      KLEAP_TRY(FillCowVma(*t.mm->image, pm, c.vma, *blob, inherited, file ? file.get() : -1));
      mine.push_back({v.start(), v.end(), c.flag});
      cow_kept[c.flag].store(1);
      return Ok();
    };
    for (auto& k : kept_vmas) {
      auto c = std::find_if(t.cow.begin(), t.cow.end(),
                            [&](auto& c) { return c.parent_flag == long(k.flag); });
      if (c != t.cow.end()) {
        if (auto r = fill(*c, true); !r) Fail(i, r.error());
      } else {
        munmap(reinterpret_cast<void*>(k.start), k.end - k.start);
      }
    }
    for (auto& c : t.cow) {
      if (!c.for_children || cow_kept[c.flag].load()) continue;
      if (auto r = fill(c, false); !r)
        KLOG(kDebug) << "task " << t.ps->pid()
                     << ": not shared with its children: " << r.error().ToString();
    }
    kept_vmas = std::move(mine);
  }

  // A zombie, once its session and group are in place (others may be joining its
  // group): exits again the way it did, for its parent to wait for.
  [[noreturn]] void BecomeZombie(size_t i) {
    int st = tasks[i].ps->exit_status();
    shared->slots[i].state.store(SlotState::kParked);
    WaitForPhase(ForkPhase::kZombiesExit);
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
  void WaitForPhase(ForkPhase p) {
    while (shared->phase.load() < p) {
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
    if (t.files_shared()) {
      shared->slots[i].fd_quiet.store(1);
      WaitFor(shared->slots[t.table_prev()].helpers_done);
    } else {
      for (size_t m : t.table->placers)
        if (m != i) WaitFor(shared->slots[m].fd_quiet);
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
        if (shared->slots[owner].state.load() == SlotState::kFailed)
          Exit1();  // the helper said why
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
        (tasks[c].files_shared() ? CLONE_FILES : 0) | (tasks[c].fs_shared() ? CLONE_FS : 0);
    if (tasks[c].vm_shared()) return CreateVmMember(c, owner, flags, exit_signal);
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
    slot.state.store(SlotState::kParked);
  }

  void JoinVmMembers(size_t i) {
    for (size_t c : tasks[i].children) {
      if (!tasks[c].vm_shared()) continue;
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
    WaitForPhase(ForkPhase::kHelpersExit);
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
    if (!t.ps->zombie() && !t.vm_shared()) PrepareCow(i);
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
    slot.state.store(SlotState::kCreated);
    WaitForPhase(ForkPhase::kJoinGroups);
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
    // (In its own memory: the remote address of the page is a local one here.)
    void* at = reinterpret_cast<void*>(t.mm->scratch.base.addr());
    void* s = mmap(at, ScratchPage::kSize, PROT_READ | PROT_WRITE | PROT_EXEC,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (s != at)
      Fail(i, ErrnoError() << "map the scratch page at " << Hex(t.mm->scratch.base.addr()));
    memcpy(static_cast<char*>(s) + ScratchPage::kGadget64, X64Arch::kSyscallInsn, 2);
    memcpy(static_cast<char*>(s) + ScratchPage::kGadget32, X86Arch::kSyscallInsn, 2);
    if (personality(t.core->personality()) < 0)
      Fail(i, ErrnoError() << "personality " << Hex(t.core->personality()));
    if (!t.fs_shared()) {
      // The tasks that share this fs open their helpers by path first: a chroot would
      // move them.
      for (size_t m : t.fs->members) WaitFor(shared->slots[m].helpers_done);
      umask(t.core->umask());
      auto cwd = t.core->cwd_ghost() ? GhostPath(plan, files, t.core->cwd_ghost())
                                     : Result<std::string>(t.core->cwd());
      if (!cwd) Fail(i, std::move(cwd).error());
      if (chdir(cwd->c_str()) < 0) Fail(i, ErrnoError() << "chdir " << t.core->cwd());
      if (t.core->root() != "/" && chroot(t.core->root().c_str()) < 0)
        Fail(i, ErrnoError() << "chroot " << t.core->root());
    }
    slot.state.store(SlotState::kParked);
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

}  // namespace

Result<std::string> GhostPath(const RestorePlan& plan, const OpenFiles& files, uint64_t file_id) {
  const img::FileObject* fo = nullptr;
  for (auto& f : plan.files.files())
    if (f.id() == file_id) fo = &f;
  if (!fo || !fo->has_reg() || !fo->reg().deleted())
    return Err(EINVAL) << "file " << file_id << " is no unlinked file of the set";
  auto it = files.ghosts.find(fo->reg().ghost_of() ? fo->reg().ghost_of() : fo->id());
  if (it == files.ghosts.end())
    return Err(EINVAL) << "unlinked file " << file_id << " was not made";
  return "/proc/" + std::to_string(files.mem_files_pid) + "/fd/" + std::to_string(it->second.get());
}

void RunTask(const ForkContext& ctx, size_t i) {
  Forker f{ctx};
  f.RunTask(i);
}

pid_t CloneAt(pid_t want, int exit_signal, uint64_t flags) {
  return Forker::Clone3(want, exit_signal, flags);
}

}  // namespace kleap
