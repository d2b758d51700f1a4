// Thin, checked wrappers over ptrace and remote memory access. A tracee's addresses are
// RemotePtr<T> and its fds RemoteFd, never local pointers or fds.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/base/result.h"

namespace kleap {

// An address in a tracee's memory. T is what lives there: RemotePtr<T> + n steps by
// elements, RemotePtr<> (of void) is a plain address that steps by bytes. A typed pointer
// becomes a plain one implicitly; the other way is a Cast, said where it happens.
template <class T = void>
class RemotePtr {
 public:
  constexpr RemotePtr() = default;
  constexpr explicit RemotePtr(uint64_t addr) : addr_(addr) {}
  template <class U>
  requires(std::is_void_v<T> && !std::is_void_v<U>) constexpr RemotePtr(RemotePtr<U> p)
      : addr_(p.addr()) {}  // NOLINT: a typed address is one

  constexpr uint64_t addr() const { return addr_; }
  constexpr bool null() const { return addr_ == 0; }
  constexpr RemotePtr operator+(uint64_t n) const { return RemotePtr(addr_ + n * kStride); }
  template <class U>
  constexpr RemotePtr<U> Cast() const {
    return RemotePtr<U>(addr_);
  }
  constexpr bool operator==(const RemotePtr&) const = default;

 private:
  static constexpr uint64_t kStride = [] {
    if constexpr (std::is_void_v<T>)
      return uint64_t(1);
    else
      return uint64_t(sizeof(T));
  }();
  uint64_t addr_ = 0;
};
RemotePtr(uint64_t)->RemotePtr<>;

// An fd number in a tracee's fd table, not in ours: it can't be passed to read(2) here.
class RemoteFd {
 public:
  constexpr explicit RemoteFd(int fd) : fd_(fd) {}
  constexpr int get() const { return fd_; }
  constexpr bool operator==(const RemoteFd&) const = default;

 private:
  int fd_;
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
// Seize + interrupt + wait: the thread ends in a ptrace stop. Returns the stop's signal:
// the one that stopped it when it was in a group stop (SIGSTOP, SIGTSTP, SIGTTIN,
// SIGTTOU), else SIGTRAP.
Result<int> SeizeAndStop(pid_t tid, bool exit_kill);
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
Result<void> ReadRemote(pid_t pid, RemotePtr<> addr, void* buf, size_t len);
Result<void> WriteRemote(pid_t pid, RemotePtr<> addr, const void* buf, size_t len);
Result<void> ReadRemoteForce(pid_t pid, RemotePtr<> addr, void* buf, size_t len);
Result<void> WriteRemoteForce(pid_t pid, RemotePtr<> addr, const void* buf, size_t len);

// One value of type T, read from or written to where `at` points.
template <class T>
Result<T> ReadRemoteValue(pid_t pid, RemotePtr<T> at) {
  T v{};
  KLEAP_TRY(ReadRemote(pid, at, &v, sizeof v));
  return v;
}
template <class T>
Result<void> WriteRemoteValue(pid_t pid, RemotePtr<T> at, const T& v) {
  return WriteRemote(pid, at, &v, sizeof v);
}

}  // namespace kleap
