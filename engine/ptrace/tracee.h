// Thin, checked wrappers over ptrace and remote memory access. A tracee's addresses are
// RemotePtr, never local pointers.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "engine/base/result.h"

namespace kleap {

class RemotePtr {
 public:
  constexpr RemotePtr() = default;
  constexpr explicit RemotePtr(uint64_t addr) : addr_(addr) {}
  constexpr uint64_t addr() const { return addr_; }
  constexpr RemotePtr operator+(uint64_t off) const { return RemotePtr(addr_ + off); }
  constexpr bool operator==(const RemotePtr&) const = default;

 private:
  uint64_t addr_ = 0;
};

using Regs = user_regs_struct;

// struct user_desc for PTRACE_{GET,SET}_THREAD_AREA.
struct UserDesc {
  uint32_t entry_number;
  uint32_t base_addr;
  uint32_t limit;
  uint32_t flags;
};
inline constexpr int kGdtTlsMin = 12, kGdtTlsEntries = 3;

struct RseqConfig {
  uint64_t rseq_abi_pointer;
  uint32_t rseq_abi_size;
  uint32_t signature;
  uint32_t flags;
  uint32_t pad;
};

namespace pt {

// Seizes a thread with the options kleap needs for syscall injection.
Result<void> Seize(pid_t tid, bool exit_kill);
Result<void> Interrupt(pid_t tid);
// Waits for the next stop of a seized thread; an exit is an error naming the thread.
Result<int> WaitStop(pid_t tid);
// Seize + interrupt + wait: the thread ends in a ptrace stop.
Result<void> SeizeAndStop(pid_t tid, bool exit_kill);
Result<void> Detach(pid_t tid);
// After SIGKILL: collects the exit of every traced thread so the tasks can go away.
// A leader's exit is reported only after its other threads', so those come first.
void ReapKilled(const std::vector<pid_t>& leaders_first);
// The same, but the threads in `spared` (an init that ignored the SIGKILL) are detached.
void ReapKilledExcept(const std::vector<pid_t>& leaders_first, const std::set<pid_t>& spared);

Result<Regs> GetRegs(pid_t tid);
Result<void> SetRegs(pid_t tid, const Regs& regs);
Result<std::string> GetXstate(pid_t tid);
Result<void> SetXstate(pid_t tid, const std::string& xstate);
Result<uint64_t> GetSigmask(pid_t tid);
Result<void> SetSigmask(pid_t tid, uint64_t mask);
Result<std::vector<siginfo_t>> PeekSiginfo(pid_t tid, bool shared);
// Returns rseq_abi_pointer == 0 when the thread has no rseq registered.
Result<RseqConfig> GetRseq(pid_t tid);
Result<UserDesc> GetThreadArea(pid_t tid, int entry);
Result<void> SetThreadArea(pid_t tid, const UserDesc& desc);

}  // namespace pt

// Remote memory of a process, through process_vm_{read,write}v, or /proc/PID/mem for
// pages the task itself can't access (PROT_NONE, read-only).
Result<void> ReadRemote(pid_t pid, RemotePtr addr, void* buf, size_t len);
Result<void> WriteRemote(pid_t pid, RemotePtr addr, const void* buf, size_t len);
Result<void> ReadRemoteForce(pid_t pid, RemotePtr addr, void* buf, size_t len);
Result<void> WriteRemoteForce(pid_t pid, RemotePtr addr, const void* buf, size_t len);

}  // namespace kleap
