// Per-task and per-thread core state: registers (general, FPU/SSE/AVX xstate, fs/gs
// base), GDT TLS slots, rseq registration, clear_child_tid, comm, and the task's
// personality, umask, cwd, root and rlimits.
#include <linux/prctl.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "engine/base/log.h"
#include "engine/base/page.h"
#include "engine/context.h"
#include "engine/core.h"
#include "engine/creds.h"
#include "engine/files.h"
#include "engine/locks.h"
#include "engine/remote_mem.h"
#include "engine/seccomp.h"
#include "engine/signal.h"
#include "engine/timers.h"
#include "engine/tty.h"

namespace kleap {
namespace {

constexpr int kRseqFlagUnregister = 1;
constexpr int kIoprioWhoProcess = 1;

void RegsToImage(const Regs& r, img::GpRegs* g) {
  g->set_r15(r.r15);
  g->set_r14(r.r14);
  g->set_r13(r.r13);
  g->set_r12(r.r12);
  g->set_rbp(r.rbp);
  g->set_rbx(r.rbx);
  g->set_r11(r.r11);
  g->set_r10(r.r10);
  g->set_r9(r.r9);
  g->set_r8(r.r8);
  g->set_rax(r.rax);
  g->set_rcx(r.rcx);
  g->set_rdx(r.rdx);
  g->set_rsi(r.rsi);
  g->set_rdi(r.rdi);
  g->set_orig_rax(r.orig_rax);
  g->set_rip(r.rip);
  g->set_cs(r.cs);
  g->set_eflags(r.eflags);
  g->set_rsp(r.rsp);
  g->set_ss(r.ss);
  g->set_fs_base(r.fs_base);
  g->set_gs_base(r.gs_base);
  g->set_ds(r.ds);
  g->set_es(r.es);
  g->set_fs(r.fs);
  g->set_gs(r.gs);
}

// The robust list is kept per ABI: an ia32 thread's is the compat one, which only the
// compat get_robust_list returns.
Result<void> DumpRobustList(pid_t tid, ArchKind arch, img::ThreadCore* th) {
  if (arch == ArchKind::kX86_64) {
    uint64_t head = 0;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, tid, &head, &len) < 0)
      return ErrnoError() << "thread " << tid << ": get_robust_list";
    th->set_robust_list(head);
    th->set_robust_list_len(len);
    return Ok();
  }
  char* low = LowPage();
  if (!low) return Err(ENOMEM) << "no memory below 4 GiB for compat get_robust_list";
  long r = LocalCompatSyscall(X86Arch::kGetRobustList, uint32_t(tid), uint32_t(uintptr_t(low)),
                              uint32_t(uintptr_t(low + 4)));
  if (r < 0) return Err(int(-r)) << "thread " << tid << ": compat get_robust_list";
  uint32_t v[2];
  memcpy(v, low, sizeof v);
  th->set_robust_list(v[0]);
  th->set_robust_list_len(v[1]);
  return Ok();
}

Result<void> DumpScheduling(pid_t tid, img::ThreadCore* th) {
  errno = 0;
  int nice = getpriority(PRIO_PROCESS, id_t(tid));
  if (nice == -1 && errno) return ErrnoError() << "thread " << tid << ": getpriority";
  th->set_nice(nice);
  int policy = sched_getscheduler(tid);
  if (policy < 0) return ErrnoError() << "thread " << tid << ": sched_getscheduler";
  th->set_sched_policy(uint32_t(policy));
  sched_param sp{};
  if (sched_getparam(tid, &sp) < 0) return ErrnoError() << "thread " << tid << ": sched_getparam";
  th->set_sched_priority(uint32_t(sp.sched_priority));
  cpu_set_t set;
  if (sched_getaffinity(tid, sizeof set, &set) < 0)
    return ErrnoError() << "thread " << tid << ": sched_getaffinity";
  th->set_affinity(std::string(reinterpret_cast<const char*>(&set), sizeof set));
  long io = syscall(SYS_ioprio_get, kIoprioWhoProcess, tid);
  if (io < 0) return ErrnoError() << "thread " << tid << ": ioprio_get";
  th->set_ioprio(uint32_t(io));
  return Ok();
}

}  // namespace

Result<void> RestoreScheduling(pid_t tid, const img::ThreadCore& th) {
  std::string who = "thread " + std::to_string(tid);
  sched_param sp{};
  sp.sched_priority = int(th.sched_priority());
  if (sched_setscheduler(tid, int(th.sched_policy()), &sp) < 0)
    return ErrnoError() << who << ": set scheduling policy " << th.sched_policy() << " priority "
                        << th.sched_priority();
  if (setpriority(PRIO_PROCESS, id_t(tid), th.nice()) < 0)
    return ErrnoError() << who << ": set nice " << th.nice();
  if (th.affinity().size() == sizeof(cpu_set_t)) {
    cpu_set_t set;
    memcpy(&set, th.affinity().data(), sizeof set);
    if (sched_setaffinity(tid, sizeof set, &set) < 0)
      return ErrnoError() << who << ": set CPU affinity";
  }
  if (syscall(SYS_ioprio_set, kIoprioWhoProcess, tid, th.ioprio()) < 0)
    return ErrnoError() << who << ": set I/O priority " << Hex(th.ioprio());
  return Ok();
}

Regs RegsFromImage(const img::GpRegs& g) {
  Regs r{};
  r.r15 = g.r15();
  r.r14 = g.r14();
  r.r13 = g.r13();
  r.r12 = g.r12();
  r.rbp = g.rbp();
  r.rbx = g.rbx();
  r.r11 = g.r11();
  r.r10 = g.r10();
  r.r9 = g.r9();
  r.r8 = g.r8();
  r.rax = g.rax();
  r.rcx = g.rcx();
  r.rdx = g.rdx();
  r.rsi = g.rsi();
  r.rdi = g.rdi();
  r.orig_rax = g.orig_rax();
  r.rip = g.rip();
  r.cs = g.cs();
  r.eflags = g.eflags();
  r.rsp = g.rsp();
  r.ss = g.ss();
  r.fs_base = g.fs_base();
  r.gs_base = g.gs_base();
  r.ds = g.ds();
  r.es = g.es();
  r.fs = g.fs();
  r.gs = g.gs();
  return r;
}

// A prctl that writes an int through its pointer argument (PR_GET_PDEATHSIG, ...).
static Result<int> GetPrctlInt(RemoteSyscalls& rs, ArchKind arch, pid_t tid, RemotePtr<int32_t> at,
                               int option) {
  KLEAP_TRY_CTX(
      WithArch(arch, [&](auto a) { return rs.Call(a.kKind, decltype(a)::kPrctl, option, at); }),
      "thread " << tid << ": prctl " << option);
  return ReadRemoteValue(tid, at);
}

Result<void> DumpCore(DumpContext& ctx, const TaskInfo& task, img::TaskCore* core) {
  pid_t pid = task.pid;
  core->set_pid(pid);
  core->set_arch(uint32_t(task.arch));
  core->set_comm(task.comm);
  std::string pers_path = ProcPath(pid, "personality");
  auto pers = KLEAP_TRY(ReadFileToString(pers_path));
  core->set_personality(uint32_t(KLEAP_TRY(ParseNumber(pers, 16, pers_path))));
  auto status = KLEAP_TRY_CTX(ReadStatus(pid), "task " << pid);
  auto umask = KLEAP_TRY(status.Get("Umask"));
  core->set_umask(
      uint32_t(KLEAP_TRY(ParseNumber(umask, 8, "Umask of task " + std::to_string(pid)))));
  core->set_cwd(KLEAP_TRY(ReadLink(ProcPath(pid, "cwd"))));
  if (core->cwd().size() > 10 &&
      core->cwd().compare(core->cwd().size() - 10, 10, " (deleted)") == 0)
    core->set_cwd_ghost(KLEAP_TRY(
        DumpMappedGhost(ctx, ProcPath(pid, "cwd"), "task " + std::to_string(pid) + " cwd")));
  core->set_root(KLEAP_TRY(ReadLink(ProcPath(pid, "root"))));
  // /proc/PID/limits, not prlimit(): reading another uid's limits needs CAP_SYS_RESOURCE.
  auto limits = KLEAP_TRY(ParseLimits(KLEAP_TRY(ReadFileToString(ProcPath(pid, "limits")))));
  for (size_t res = 0; res < limits.size(); ++res) {
    img::Rlimit* l = core->add_rlimits();
    l->set_resource(uint32_t(res));
    l->set_cur(limits[res].first);
    l->set_max(limits[res].second);
  }
  KLEAP_TRY(DumpCredsOf(ctx.tree->Thread(pid), task, core->mutable_creds()));

  for (pid_t tid : task.tids) {
    RemoteSyscalls& rs = ctx.tree->Thread(tid);
    img::ThreadCore* th = core->add_threads();
    th->set_tid(tid);
    ArchKind arch = ArchFromCs(rs.saved_regs().cs);
    th->set_arch(uint32_t(arch));
    RegsToImage(rs.saved_regs(), th->mutable_regs());
    th->set_xstate(KLEAP_TRY(pt::GetXstate(tid)));
    for (int e = kGdtTlsMin; e < kGdtTlsMin + kGdtTlsEntries; ++e) {
      UserDesc d = KLEAP_TRY(pt::GetThreadArea(tid, e));
      img::TlsEntry* t = th->add_tls();
      t->set_entry_number(uint32_t(e));
      t->set_base_addr(d.base_addr);
      t->set_limit(d.limit);
      t->set_flags(d.flags);
    }
    RseqConfig rseq = KLEAP_TRY(pt::GetRseq(tid));
    if (rseq.rseq_abi_pointer) {
      th->mutable_rseq()->set_abi_pointer(rseq.rseq_abi_pointer);
      th->mutable_rseq()->set_abi_size(rseq.rseq_abi_size);
      th->mutable_rseq()->set_flags(rseq.flags);
      th->mutable_rseq()->set_signature(rseq.signature);
    }
    // Only the thread knows where it asked the kernel to clear its tid on exit.
    auto mem = KLEAP_TRY(StackScratch::Borrow(tid, rs.saved_regs(), 16));
    KLEAP_TRY_CTX(WithArch(arch,
                           [&](auto a) {
                             return rs.Call(a.kKind, decltype(a)::kPrctl, PR_GET_TID_ADDRESS,
                                            mem.at());
                           }),
                  "thread " << tid << ": PR_GET_TID_ADDRESS");
    uint64_t tid_addr = KLEAP_TRY(ReadRemoteValue(tid, mem.at<uint64_t>()));
    th->set_clear_child_tid(arch == ArchKind::kX86 ? uint32_t(tid_addr) : tid_addr);
    auto comm = ReadFileToString(ProcPath(pid, "task/" + std::to_string(tid) + "/comm"));
    th->set_comm(comm ? std::string(Trim(*comm)) : task.comm);
    KLEAP_TRY(DumpRobustList(tid, arch, th));
    KLEAP_TRY(DumpScheduling(tid, th));
    th->set_timerslack_ns(KLEAP_TRY_CTX(
        WithArch(arch,
                 [&](auto a) { return rs.Call(a.kKind, decltype(a)::kPrctl, PR_GET_TIMERSLACK); }),
        "thread " << tid << ": PR_GET_TIMERSLACK"));
    th->set_pdeath_signal(
        KLEAP_TRY(GetPrctlInt(rs, arch, tid, mem.at<int32_t>(), PR_GET_PDEATHSIG)));
    if (SeccompMode(pid, tid) == 2) KLEAP_TRY(DumpSeccomp(tid, th));
  }
  RemoteSyscalls& leader = ctx.tree->Thread(pid);
  core->set_dumpable(uint32_t(KLEAP_TRY_CTX(
      WithArch(task.arch,
               [&](auto a) { return leader.Call(a.kKind, decltype(a)::kPrctl, PR_GET_DUMPABLE); }),
      "task " << pid << ": PR_GET_DUMPABLE")));
  auto oom = ReadFileToString(ProcPath(pid, "oom_score_adj"));
  if (oom) core->set_oom_score_adj(std::atoi(oom->c_str()));
  {
    auto mem = KLEAP_TRY(StackScratch::Borrow(pid, leader.saved_regs(), 16));
    core->set_child_subreaper(KLEAP_TRY(GetPrctlInt(leader, task.arch, pid, mem.at<int32_t>(),
                                                    PR_GET_CHILD_SUBREAPER)) != 0);
  }
  KLEAP_TRY(DumpTimers(ctx, task, core->mutable_timers()));
  KLEAP_TRY(DumpLocks(task, core));
  KLEAP_TRY(DumpCtty(task, core));
  return Ok();
}

Result<void> UnregisterRseq(RemoteSyscalls& rs, pid_t tid) {
  RseqConfig c = KLEAP_TRY(pt::GetRseq(tid));
  if (!c.rseq_abi_pointer) return Ok();
  KLEAP_TRY_CTX(rs.Call(ArchKind::kX86_64, X64Arch::kRseq, c.rseq_abi_pointer, c.rseq_abi_size,
                        kRseqFlagUnregister, c.signature),
                "thread " << tid << ": unregister the restorer's rseq");
  return Ok();
}

Result<void> RestoreThreadCore(RemoteSyscalls& rs, pid_t pid, RemotePtr<> scratch,
                               const img::ThreadCore& th) {
  pid_t tid = th.tid();
  constexpr ArchKind k64 = ArchKind::kX86_64;
  if (th.has_rseq())
    KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kRseq, th.rseq().abi_pointer(), th.rseq().abi_size(), 0,
                          th.rseq().signature()),
                  "thread " << tid << ": register rseq at " << Hex(th.rseq().abi_pointer()));
  KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kSetTidAddress, th.clear_child_tid()),
                "thread " << tid << ": set_tid_address");
  // The robust list goes in the thread's own ABI: an ia32 thread's is the compat one.
  KLEAP_TRY_CTX(WithArch(ArchKind(th.arch()),
                         [&](auto a) {
                           return rs.Call(a.kKind, decltype(a)::kSetRobustList, th.robust_list(),
                                          th.robust_list_len());
                         }),
                "thread " << tid << ": set_robust_list");
  if (th.timerslack_ns())
    KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kPrctl, PR_SET_TIMERSLACK, th.timerslack_ns()),
                  "thread " << tid << ": set timer slack " << th.timerslack_ns());
  KLEAP_TRY(RestoreScheduling(tid, th));
  for (auto& t : th.tls()) {
    if (t.entry_number() < kGdtTlsMin || t.entry_number() >= kGdtTlsMin + kGdtTlsEntries)
      return Err(EINVAL) << "core image: thread " << tid << ": bad TLS entry " << t.entry_number();
    KLEAP_TRY(
        pt::SetThreadArea(tid, UserDesc{t.entry_number(), t.base_addr(), t.limit(), t.flags()}));
  }
  // Only a thread may rename itself.
  char comm[16] = {};
  strncpy(comm, th.comm().c_str(), sizeof comm - 1);
  KLEAP_TRY(WriteRemote(tid, scratch, comm, sizeof comm));
  KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kPrctl, PR_SET_NAME, scratch),
                "thread " << tid << ": set comm");
  (void)pid;
  return Ok();
}

Result<void> SetFinalRegisters(RemoteSyscalls& rs, const img::ThreadCore& th) {
  if (!th.has_regs())
    return Err(EINVAL) << "core image: thread " << th.tid() << " has no registers";
  ArchKind arch = ArchKind(th.arch());
  Regs regs = NormalizeInterruptedSyscall(RegsFromImage(th.regs()), arch, /*same_task=*/false);
  if (ArchFromCs(regs.cs) != arch)
    return Err(EINVAL) << "core image: thread " << th.tid() << ": cs " << Hex(regs.cs)
                       << " contradicts its arch";
  KLEAP_TRY(pt::SetXstate(th.tid(), th.xstate()));
  // Written and checked now: a thread whose registers the kernel refuses (a bad selector
  // or base in a damaged image) must fail the restore, not run half-set.
  KLEAP_TRY_CTX(pt::SetRegs(th.tid(), regs), "thread " << th.tid() << ": final registers");
  KLEAP_TRY(pt::SetSigmask(th.tid(), th.blocked()));
  auto back = KLEAP_TRY(pt::GetRegs(th.tid()));
  if (back.rip != regs.rip || back.rsp != regs.rsp || back.fs_base != regs.fs_base ||
      back.gs_base != regs.gs_base)
    return Err(EINVAL) << "thread " << th.tid() << ": the kernel did not take the final registers";
  rs.Disarm();
  return Ok();
}

Result<void> RestoreRlimits(pid_t pid, const img::TaskCore& core) {
  auto oom =
      WriteStringToFile(ProcPath(pid, "oom_score_adj"), std::to_string(core.oom_score_adj()));
  if (!oom) return std::move(oom).error().Context("task " + std::to_string(pid));
  for (auto& l : core.rlimits()) {
    if (l.resource() >= RLIM_NLIMITS)
      return Err(EINVAL) << "core image of task " << pid << ": bad rlimit " << l.resource();
    rlimit lim{l.cur(), l.max()};
    if (prlimit(pid, __rlimit_resource(l.resource()), &lim, nullptr) < 0)
      return ErrnoError() << "task " << pid << ": set rlimit " << l.resource() << " to " << l.cur()
                          << "/" << l.max();
  }
  return Ok();
}

}  // namespace kleap
