// Signals: dispositions (read and set in the task's own ABI, so an ia32 task keeps
// ia32 signal frames), blocked masks, pending signals per thread and shared, and
// alternate signal stacks.
#include <signal.h>

#include <cstring>

#include "engine/base/log.h"
#include "engine/context.h"
#include "engine/remote_mem.h"
#include "engine/signal.h"

namespace kleap {
namespace {

constexpr int kMaxSig = 64;

bool Settable(int sig) {
  return sig != SIGKILL && sig != SIGSTOP;
}

void AddPending(const std::vector<siginfo_t>& infos,
                google::protobuf::RepeatedPtrField<img::PendingSignal>* out) {
  for (auto& si : infos) {
    img::PendingSignal* p = out->Add();
    p->set_signo(uint32_t(si.si_signo));
    p->set_siginfo(std::string(reinterpret_cast<const char*>(&si), sizeof si));
  }
}

}  // namespace

Result<void> DumpSignals(DumpContext& ctx, const TaskInfo& task, img::TaskCore* core) {
  RemoteSyscalls& leader = ctx.tree->Thread(task.pid);
  auto scratch = KLEAP_TRY(StackScratch::Borrow(task.pid, leader.saved_regs(), 64));
  KLEAP_TRY(WithArch(task.arch, [&](auto a) -> Result<void> {
    using A = decltype(a);
    for (int sig = 1; sig <= kMaxSig; ++sig) {
      if (!Settable(sig)) continue;
      KLEAP_TRY_CTX(leader.Call(A::kKind, A::kRtSigaction, uint64_t(sig), 0, scratch.at(), 8),
                    "task " << task.pid << ": read the action of signal " << sig);
      auto ka = KLEAP_TRY(ReadRemoteValue(task.pid, scratch.at<typename A::k_sigaction>()));
      uint64_t mask;
      memcpy(&mask, &ka.mask, sizeof mask);
      if (!ka.handler && !ka.flags && !mask) continue;
      img::SigAction* s = core->add_sigactions();
      s->set_signo(uint32_t(sig));
      s->set_handler(ka.handler);
      s->set_flags(ka.flags);
      s->set_restorer(ka.restorer);
      s->set_mask(mask);
    }
    return Ok();
  }));
  AddPending(KLEAP_TRY(pt::PeekSiginfo(task.pid, true)), core->mutable_shared_pending());
  for (auto& th : *core->mutable_threads()) {
    RemoteSyscalls& rs = ctx.tree->Thread(th.tid());
    th.set_blocked(rs.saved_sigmask());
    AddPending(KLEAP_TRY(pt::PeekSiginfo(th.tid(), false)), th.mutable_pending());
    auto ss_mem = KLEAP_TRY(StackScratch::Borrow(th.tid(), rs.saved_regs(), 64));
    KLEAP_TRY(WithArch(ArchKind(th.arch()), [&](auto a) -> Result<void> {
      using A = decltype(a);
      KLEAP_TRY_CTX(rs.Call(A::kKind, A::kSigaltstack, 0, ss_mem.at()),
                    "thread " << th.tid() << ": sigaltstack");
      auto ss = KLEAP_TRY(ReadRemoteValue(th.tid(), ss_mem.at<typename A::stack_t>()));
      if (ss.flags & SS_DISABLE) return Ok();
      img::SigAltStack* alt = th.mutable_altstack();
      alt->set_sp(ss.sp);
      alt->set_size(ss.size);
      alt->set_flags(ss.flags & ~SS_ONSTACK);
      return Ok();
    }));
  }
  return Ok();
}

Result<void> RestoreSigactions(RemoteSyscalls& rs, pid_t pid, RemotePtr<> scratch,
                               const img::TaskCore& core) {
  return WithArch(ArchKind(core.arch()), [&](auto a) -> Result<void> {
    using A = decltype(a);
    std::map<int, const img::SigAction*> by_sig;
    for (auto& s : core.sigactions()) {
      if (s.signo() < 1 || s.signo() > kMaxSig || !Settable(int(s.signo())))
        return Err(EINVAL) << "core image of task " << pid << ": bad signal number " << s.signo();
      by_sig[int(s.signo())] = &s;
    }
    for (int sig = 1; sig <= kMaxSig; ++sig) {
      if (!Settable(sig)) continue;
      typename A::k_sigaction ka{};
      if (auto it = by_sig.find(sig); it != by_sig.end()) {
        ka.handler = typename A::word(it->second->handler());
        ka.flags = typename A::word(it->second->flags());
        ka.restorer = typename A::word(it->second->restorer());
        uint64_t mask = it->second->mask();
        memcpy(&ka.mask, &mask, sizeof mask);
      }
      KLEAP_TRY(WriteRemote(pid, scratch, &ka, sizeof ka));
      KLEAP_TRY_CTX(rs.Call(A::kKind, A::kRtSigaction, uint64_t(sig), scratch, 0, 8),
                    "task " << pid << ": set the action of signal " << sig);
    }
    return Ok();
  });
}

Result<void> RestorePending(RemoteSyscalls& rs, pid_t pid, pid_t tid, RemotePtr<> scratch,
                            const google::protobuf::RepeatedPtrField<img::PendingSignal>& pending,
                            bool shared) {
  for (auto& p : pending) {
    if (p.siginfo().size() != sizeof(siginfo_t) || p.signo() < 1 || p.signo() > kMaxSig)
      return Err(EINVAL) << "core image of task " << pid << ": bad pending signal " << p.signo();
    KLEAP_TRY(WriteRemote(pid, scratch, p.siginfo().data(), p.siginfo().size()));
    if (shared)
      KLEAP_TRY_CTX(
          rs.Call(ArchKind::kX86_64, X64Arch::kRtSigqueueinfo, uint64_t(pid), p.signo(), scratch),
          "task " << pid << ": queue signal " << p.signo());
    else
      KLEAP_TRY_CTX(rs.Call(ArchKind::kX86_64, X64Arch::kRtTgsigqueueinfo, uint64_t(pid),
                            uint64_t(tid), p.signo(), scratch),
                    "thread " << tid << ": queue signal " << p.signo());
  }
  return Ok();
}

Result<void> RestoreAltStack(RemoteSyscalls& rs, pid_t tid, RemotePtr<> scratch,
                             const img::ThreadCore& th) {
  // Always set: a thread without one must not keep the restorer's.
  X64Arch::stack_t ss{};
  ss.flags = SS_DISABLE;
  if (th.has_altstack()) {
    ss.sp = th.altstack().sp();
    ss.size = th.altstack().size();
    ss.flags = th.altstack().flags();
  }
  KLEAP_TRY(WriteRemote(tid, scratch, &ss, sizeof ss));
  KLEAP_TRY_CTX(rs.Call(ArchKind::kX86_64, X64Arch::kSigaltstack, scratch, 0),
                "thread " << tid << ": sigaltstack");
  return Ok();
}

}  // namespace kleap
