// RemoteSyscalls: runs syscalls inside a stopped tracee thread, the way the thread
// itself would make them. RAII: the thread's registers and signal mask are saved on
// creation and put back on destruction, so a failed dump leaves the task as it was.
//
// Each call points the thread at a syscall instruction (a "gadget": `syscall` for
// x86_64, `int $0x80` for ia32) already present in its address space, and runs it with
// PTRACE_SYSCALL between the entry and exit stops. All signals stay blocked while the
// thread runs for us, so nothing is delivered onto the borrowed registers.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <optional>
#include <type_traits>

#include "engine/base/arch.h"
#include "engine/base/result.h"
#include "engine/ptrace/tracee.h"

namespace kleap {

// One argument of an injected syscall: a number, an address in the tracee or one of the
// tracee's fds. (A local pointer is none of these, so it can't be passed by mistake.)
class SyscallArg {
 public:
  template <class I>
  requires(std::is_integral_v<I> || std::is_enum_v<I>) constexpr SyscallArg(I v)
      : v_(uint64_t(v)) {}  // NOLINT: as the ABI widens it
  template <class T>
  constexpr SyscallArg(RemotePtr<T> p) : v_(p.addr()) {}                  // NOLINT
  constexpr SyscallArg(RemoteFd fd) : v_(uint64_t(int64_t(fd.get()))) {}  // NOLINT
  constexpr uint64_t value() const { return v_; }

 private:
  uint64_t v_;
};

class RemoteSyscalls {
 public:
  // The thread must be in a ptrace stop.
  static Result<RemoteSyscalls> Create(pid_t tid);
  RemoteSyscalls(RemoteSyscalls&& o) noexcept;
  RemoteSyscalls& operator=(RemoteSyscalls&&) = delete;
  ~RemoteSyscalls();

  pid_t tid() const { return tid_; }
  const Regs& saved_regs() const { return saved_; }
  uint64_t saved_sigmask() const { return saved_mask_; }

  // Where the syscall instruction for each mode lives in the tracee.
  void SetGadget(ArchKind arch, RemotePtr<> insn) { gadget_[size_t(arch)] = insn; }
  bool HasGadget(ArchKind arch) const { return !gadget_[size_t(arch)].null(); }

  // Runs one syscall in the given mode. A -errno return becomes an Error.
  Result<uint64_t> Call(ArchKind arch, long nr, SyscallArg a1 = 0, SyscallArg a2 = 0,
                        SyscallArg a3 = 0, SyscallArg a4 = 0, SyscallArg a5 = 0, SyscallArg a6 = 0);

  // execve(2) in the thread (64-bit). On success the thread runs the new program from
  // its entry point and nothing is written back on destruction.
  Result<void> Execve(RemotePtr<const char> path, RemotePtr<const uint64_t> argv,
                      RemotePtr<const uint64_t> envp);

  // On destruction, write these registers and this mask instead of the saved ones.
  void SetFinalState(const Regs& regs, uint64_t sigmask) {
    final_regs_ = regs;
    final_mask_ = sigmask;
  }
  // On destruction, leave the registers and mask as they are.
  void Disarm() { armed_ = false; }

 private:
  Result<uint64_t> Run(ArchKind arch, long nr, const std::array<uint64_t, 6>& args, bool exec);
  RemoteSyscalls(pid_t tid, const Regs& saved, uint64_t mask)
      : tid_(tid), saved_(saved), saved_mask_(mask) {}

  pid_t tid_;
  Regs saved_;
  uint64_t saved_mask_;
  std::array<RemotePtr<>, 2> gadget_{};
  std::optional<Regs> final_regs_;
  uint64_t final_mask_ = 0;
  bool armed_ = true;
  bool mask_blocked_ = false;
};

// Undoes what an interrupted syscall left in the registers, as the kernel would have on
// the way back to user space: a restartable syscall is rewound to run again. `same_task`
// is false when the registers go to a new task on restore, where the kernel's
// restart_block is gone and such a syscall returns EINTR instead.
Regs NormalizeInterruptedSyscall(const Regs& regs, ArchKind arch, bool same_task);

// Finds a syscall instruction of the given mode in [start, end) of a task's memory.
Result<RemotePtr<>> FindGadget(pid_t pid, RemotePtr<> start, RemotePtr<> end, ArchKind arch);

}  // namespace kleap
