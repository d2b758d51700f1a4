#include "engine/ptrace/remote_syscalls.h"

#include <sys/ptrace.h>
#include <sys/wait.h>

#include <cstring>
#include <vector>

#include "engine/base/log.h"
#include "engine/base/page.h"

namespace kleap {
namespace {

constexpr long kErestartSys = 512, kErestartNoIntr = 513, kErestartNoHand = 514,
               kErestartRestartBlock = 516;

Result<void> ResumeSyscall(pid_t tid) {
  if (ptrace(PTRACE_SYSCALL, tid, nullptr, nullptr) < 0)
    return ErrnoError() << "resume thread " << tid;
  return Ok();
}

// Resumes to the next syscall stop, resuming through any other stop on the way.
Result<Regs> NextSyscallStop(pid_t tid) {
  for (int i = 0; i < 64; ++i) {
    KLEAP_TRY(ResumeSyscall(tid));
    int st = KLEAP_TRY(pt::WaitStop(tid));
    if (WIFSTOPPED(st) && WSTOPSIG(st) == (SIGTRAP | 0x80)) return pt::GetRegs(tid);
    KLOG(kDebug) << "thread " << tid << ": stop 0x" << std::hex << st
                 << " during an injected syscall";
  }
  return Err(EIO) << "thread " << tid << " never reached the injected syscall";
}

}  // namespace

Result<RemoteSyscalls> RemoteSyscalls::Create(pid_t tid) {
  Regs regs = KLEAP_TRY(pt::GetRegs(tid));
  uint64_t mask = KLEAP_TRY(pt::GetSigmask(tid));
  return RemoteSyscalls(tid, regs, mask);
}

RemoteSyscalls::RemoteSyscalls(RemoteSyscalls&& o) noexcept
    : tid_(o.tid_),
      saved_(o.saved_),
      saved_mask_(o.saved_mask_),
      gadget_(o.gadget_),
      final_regs_(o.final_regs_),
      final_mask_(o.final_mask_),
      armed_(o.armed_),
      mask_blocked_(o.mask_blocked_) {
  o.armed_ = false;
}

RemoteSyscalls::~RemoteSyscalls() {
  if (!armed_) return;
  const Regs& regs = final_regs_ ? *final_regs_ : saved_;
  uint64_t mask = final_regs_ ? final_mask_ : saved_mask_;
  auto r = pt::SetRegs(tid_, regs);
  if (!r) KLOG(kWarning) << "put back registers: " << r.error().ToString() << ", ignoring";
  if (mask_blocked_ || final_regs_) {
    auto m = pt::SetSigmask(tid_, mask);
    if (!m) KLOG(kWarning) << "put back signal mask: " << m.error().ToString() << ", ignoring";
  }
}

Result<uint64_t> RemoteSyscalls::Call(ArchKind arch, long nr, SyscallArg a1, SyscallArg a2,
                                      SyscallArg a3, SyscallArg a4, SyscallArg a5, SyscallArg a6) {
  return Run(arch, nr, {a1.value(), a2.value(), a3.value(), a4.value(), a5.value(), a6.value()},
             /*exec=*/false);
}

Result<void> RemoteSyscalls::Execve(RemotePtr<const char> path, RemotePtr<const uint64_t> argv,
                                    RemotePtr<const uint64_t> envp) {
  KLEAP_TRY(Run(ArchKind::kX86_64, X64Arch::kExecve,
                {path.addr(), argv.addr(), envp.addr(), 0, 0, 0},
                /*exec=*/true));
  return Ok();
}

Result<uint64_t> RemoteSyscalls::Run(ArchKind arch, long nr, const std::array<uint64_t, 6>& a,
                                     bool exec) {
  auto [a1, a2, a3, a4, a5, a6] = a;
  RemotePtr<> gadget = gadget_[size_t(arch)];
  if (gadget.null())
    return Err(EINVAL) << "thread " << tid_ << ": no " << ArchName(arch)
                       << " syscall instruction to run syscall " << nr;
  if (!mask_blocked_) {
    KLEAP_TRY(pt::SetSigmask(tid_, ~uint64_t(0)));
    mask_blocked_ = true;
  }
  Regs r = saved_;
  r.rip = gadget.addr();
  r.rax = uint64_t(nr);
  r.orig_rax = ~uint64_t(0);
  if (arch == ArchKind::kX86_64) {
    r.cs = kUserCs64;
    r.rdi = a1;
    r.rsi = a2;
    r.rdx = a3;
    r.r10 = a4;
    r.r8 = a5;
    r.r9 = a6;
  } else {
    r.cs = kUserCs32;
    r.rbx = uint32_t(a1);
    r.rcx = uint32_t(a2);
    r.rdx = uint32_t(a3);
    r.rsi = uint32_t(a4);
    r.rdi = uint32_t(a5);
    r.rbp = uint32_t(a6);
  }
  r.ss = kUserDs;
  KLEAP_TRY(pt::SetRegs(tid_, r));
  Regs entry = KLEAP_TRY(NextSyscallStop(tid_));
  if (long(entry.orig_rax) != nr)
    return Err(EIO) << "thread " << tid_ << ": injected syscall " << nr << " entered as "
                    << long(entry.orig_rax);
  Regs exit = KLEAP_TRY(NextSyscallStop(tid_));
  if (exec && exit.rax == 0) {
    // The thread runs another program now: its registers are that program's, and its
    // mask (which execve keeps) is emptied, as a new process starts.
    armed_ = false;
    KLEAP_TRY(pt::SetSigmask(tid_, 0));
    return 0;
  }
  // Between calls the thread holds its own registers and mask again, so that if kleap
  // dies now the kernel resumes a thread that runs on as before.
  KLEAP_TRY(pt::SetRegs(tid_, final_regs_ ? *final_regs_ : saved_));
  KLEAP_TRY(pt::SetSigmask(tid_, final_regs_ ? final_mask_ : saved_mask_));
  mask_blocked_ = false;
  int64_t ret =
      arch == ArchKind::kX86_64 ? int64_t(exit.rax) : int64_t(int32_t(uint32_t(exit.rax)));
  if (ret < 0 && ret > -4096) return Err(int(-ret)) << "syscall " << nr << " in thread " << tid_;
  return uint64_t(arch == ArchKind::kX86_64 ? exit.rax : uint32_t(exit.rax));
}

Regs NormalizeInterruptedSyscall(const Regs& regs, ArchKind arch, bool same_task) {
  Regs r = regs;
  int64_t orig =
      arch == ArchKind::kX86_64 ? int64_t(r.orig_rax) : int64_t(int32_t(uint32_t(r.orig_rax)));
  int64_t ax = arch == ArchKind::kX86_64 ? int64_t(r.rax) : int64_t(int32_t(uint32_t(r.rax)));
  if (orig >= 0) {
    switch (-ax) {
      case kErestartSys:
      case kErestartNoIntr:
      case kErestartNoHand:
        r.rax = r.orig_rax;
        r.rip -= 2;
        break;
      case kErestartRestartBlock:
        if (same_task) {
          r.rax = uint64_t(arch == ArchKind::kX86_64 ? long(X64Arch::kRestartSyscall)
                                                     : long(X86Arch::kRestartSyscall));
          r.rip -= 2;
        } else {
          r.rax = uint64_t(int64_t(-EINTR));
          if (arch == ArchKind::kX86) r.rax = uint32_t(-EINTR);
        }
        break;
      default:
        break;
    }
  }
  r.orig_rax = ~uint64_t(0);
  return r;
}

Result<RemotePtr<>> FindGadget(pid_t pid, RemotePtr<> start, RemotePtr<> end, ArchKind arch) {
  std::vector<uint8_t> buf(end.addr() - start.addr());
  KLEAP_TRY(ReadRemote(pid, start, buf.data(), buf.size()));
  const uint8_t* insn = arch == ArchKind::kX86_64 ? X64Arch::kSyscallInsn : X86Arch::kSyscallInsn;
  for (size_t i = 0; i + 1 < buf.size(); ++i)
    if (buf[i] == insn[0] && buf[i + 1] == insn[1]) return start + i;
  return Err(ENOENT) << "pid " << pid << ": no " << ArchName(arch) << " syscall instruction in "
                     << Hex(start.addr()) << "-" << Hex(end.addr());
}

}  // namespace kleap
