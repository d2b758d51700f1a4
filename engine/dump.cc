// dump: freeze and seize a tree, write its images, commit the set, then kill the tree
// or let it run on. Until the commit nothing about the tree has changed: a failure
// resumes every task with its registers and signal mask as they were.
#include <signal.h>
#include <sys/utsname.h>
#include <time.h>

#include <chrono>

#include "engine/base/fault.h"
#include "engine/base/log.h"
#include "engine/context.h"
#include "engine/core.h"
#include "engine/files.h"
#include "engine/ipc.h"
#include "engine/leaders.h"
#include "engine/mm.h"
#include "engine/restore_plan.h"
#include "engine/share.h"
#include "engine/signal.h"
#include "engine/timens.h"

namespace kleap {

std::string CoreImage(pid_t pid) {
  return "core-" + std::to_string(pid) + ".img";
}
std::string MmImage(pid_t pid) {
  return "mm-" + std::to_string(pid) + ".img";
}
std::string PagemapImage(pid_t pid) {
  return "pagemap-" + std::to_string(pid) + ".img";
}
std::string PagesImage(pid_t pid) {
  return "pages-" + std::to_string(pid) + ".img";
}
std::string FdTableImage(pid_t pid) {
  return "fdtable-" + std::to_string(pid) + ".img";
}
std::string ShmemImage(uint64_t id) {
  return "shmem-" + std::to_string(id) + ".img";
}
std::string GhostImage(uint64_t id) {
  return "ghost-" + std::to_string(id) + ".img";
}

namespace {

// Every thread gets a syscall instruction of its own mode, from its task's vDSO.
Result<void> FindGadgets(SeizedTree& tree, const TaskInfo& t) {
  auto maps = KLEAP_TRY_CTX(ReadMaps(t.pid), "task " << t.pid);
  auto vdso = std::find_if(maps.begin(), maps.end(), [](auto& m) { return m.path == "[vdso]"; });
  if (vdso == maps.end())
    return Err(ENOTSUP) << "task " << t.pid << ": no vDSO to run syscalls from";
  std::map<ArchKind, RemotePtr<>> found;
  for (pid_t tid : t.tids) {
    RemoteSyscalls& rs = tree.Thread(tid);
    ArchKind a = ArchFromCs(rs.saved_regs().cs);
    if (!found.count(a))
      found[a] = KLEAP_TRY(FindGadget(t.pid, RemotePtr(vdso->start), RemotePtr(vdso->end), a));
    rs.SetGadget(a, found[a]);
    // Whatever happens next, the thread goes back with its interrupted syscall restarted
    // as the kernel would have done.
    rs.SetFinalState(NormalizeInterruptedSyscall(rs.saved_regs(), a, /*same_task=*/true),
                     rs.saved_sigmask());
  }
  return Ok();
}

Result<void> Refuse(const std::vector<Problem>& problems) {
  if (problems.empty()) return Ok();
  Error e(ENOTSUP);
  e << problems[0].ToString();
  if (problems.size() > 1)
    e << " (and " << problems.size() - 1 << " more problems; see kleap check)";
  return e;
}

}  // namespace

Result<DumpStats> DumpTree(const DumpOptions& opts, ImageWriter& images) {
  auto t0 = std::chrono::steady_clock::now();
  DumpStats stats;
  auto tree = KLEAP_TRY(SeizedTree::Seize(opts.root));
  stats.freeze_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // The same checks as `kleap check`, now on the frozen tree.
  std::vector<Problem> problems = CheckTasks(tree->tasks());
  KLEAP_TRY(Refuse(problems));
  for (auto& t : tree->tasks())
    if (!t.zombie) KLEAP_TRY(FindGadgets(*tree, t));
  // From now until the sockets are restored, packets to and from them are dropped, so
  // no peer gets a RST while nothing holds them. On failure it goes after the
  // connections have left repair mode (ctx goes first).
  SockLock lock = KLEAP_TRY(SockLock::ForTasks(tree->tasks()));

  SharingReport sharing = FindSharing(tree->tasks());  // no problems: CheckTasks asked

  DumpContext ctx;
  ctx.images = &images;
  ctx.tree = tree.get();
  // The IPC namespace, when the tree has one of its own, and each task's semadj.
  IpcDump ipc = KLEAP_TRY(DumpIpc(ctx));
  img::PsTree pstree;
  pstree.set_root_pid(opts.root);
  for (auto& t : tree->tasks()) {
    img::PsTask* ps = pstree.add_tasks();
    ps->set_pid(t.pid);
    ps->set_ppid(t.ppid);
    ps->set_pgid(t.pgid);
    ps->set_sid(t.sid);
    for (pid_t tid : t.tids) ps->add_tids(tid);
    ps->set_arch(uint32_t(t.arch));
    ps->set_comm(t.comm);
    ps->set_exit_signal(t.exit_signal);
    ps->set_stopped(t.stopped);
    if (t.stopped && t.stop_signal != SIGSTOP) ps->set_stop_signal(uint32_t(t.stop_signal));
    if (auto s = sharing.by_pid.find(t.pid); s != sharing.by_pid.end()) {
      ps->set_files_share_with(uint32_t(s->second.files_with));
      ps->set_fs_share_with(uint32_t(s->second.fs_with));
      ps->set_vm_share_with(uint32_t(s->second.vm_with));
    }
    if (t.zombie) {
      ps->set_zombie(true);
      ps->set_exit_status(t.exit_status);
      stats.tasks++;
      continue;
    }

    img::TaskCore core;
    KLEAP_TRY(DumpCore(ctx, t, &core));
    for (auto& u : ipc.undo[t.pid]) *core.add_sem_undo() = u;
    KLEAP_TRY(DumpSignals(ctx, t, &core));
    // An address space shared with the parent is the parent's image (pstree order).
    bool own_mm = ps->vm_share_with() == 0;
    img::MmImage mm;
    if (own_mm) KLEAP_TRY(DumpMm(ctx, t, &mm));
    img::FdTable fds;
    KLEAP_TRY(DumpFds(ctx, t, &fds));
    KLEAP_TRY(FaultPoint("dump-write"));
    KLEAP_TRY(images.WriteMessage(CoreImage(t.pid), core));
    if (own_mm) KLEAP_TRY(images.WriteMessage(MmImage(t.pid), mm));
    KLEAP_TRY(images.WriteMessage(FdTableImage(t.pid), fds));
    ctx.written.cores[t.pid] = std::move(core);
    if (own_mm) ctx.written.mms[t.pid] = std::move(mm);
    ctx.written.fdtables[t.pid] = std::move(fds);
    stats.tasks++;
    stats.threads += t.tids.size();
  }
  KLEAP_TRY(images.WriteMessage(kFilesImage, ctx.files));
  KLEAP_TRY(images.WriteMessage(kShmemTableImage, ctx.shmem));
  KLEAP_TRY(DumpTimeNamespaces(tree->tasks(), &pstree));
  // Sessions and groups whose leader is gone (CheckTasks refused the shapes it can't make).
  for (auto& h : PlanLeaders(tree->tasks()).helpers) *pstree.add_helpers() = h;
  if (!opts.mounts.empty()) KLEAP_TRY(DumpMounts(images, opts.mounts));
  if (opts.before_commit) KLEAP_TRY(opts.before_commit(images));
  KLEAP_TRY(images.WriteMessage(kPsTreeImage, pstree));
  // A set the restore would refuse is never made: the tree runs on instead.
  ctx.written.pstree = std::move(pstree);
  ctx.written.files = ctx.files;
  ctx.written.shmem = ctx.shmem;
  if (FaultWanted("dump-bad-set")) {  // the test of this check: a repeated pid
    *ctx.written.pstree.add_tasks() = ctx.written.pstree.tasks(0);
    KLOG(kWarning) << "KLEAP_FAULT=dump-bad-set: task " << opts.root << " listed twice";
  }
  KLEAP_TRY_CTX(CheckPlan(ctx.written), "the set would be refused at restore");

  img::Inventory inv = NewInventory();
  inv.set_root_pid(opts.root);
  KLEAP_TRY(images.Commit(inv));

  if (opts.while_frozen) {
    stats.page_bytes = ctx.page_bytes;
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto r = opts.while_frozen(stats);
    ctx.repaired_socks.Undo();
    tree->ResumeAll();
    if (!r) return std::move(r).error();
  } else if (opts.leave_running) {
    ctx.repaired_socks.Undo();
    tree->ResumeAll();
  } else {
    // The connections close in repair mode, sending nothing; the lock stays for restore.
    tree->KillAll();
    ctx.repaired_socks.Keep();
    lock.Keep();
  }
  stats.page_bytes = ctx.page_bytes;
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace kleap
