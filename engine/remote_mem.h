// Scratch memory in a tracee for the in/out arguments of injected syscalls.
#pragma once

#include <string>

#include "engine/ptrace/remote_syscalls.h"

namespace kleap {

// During a dump: borrows stack below the thread's stack pointer (past the red zone) and
// puts the old bytes back when done.
class StackScratch {
 public:
  static Result<StackScratch> Borrow(pid_t tid, const Regs& regs, size_t size) {
    uint64_t at = ((regs.rsp & ~uint64_t(0xf)) - 1024 - size) & ~uint64_t(0xf);
    std::string saved(size, '\0');
    KLEAP_TRY_CTX(ReadRemote(tid, RemotePtr(at), saved.data(), size),
                  "thread " << tid << ": borrow stack");
    return StackScratch(tid, at, std::move(saved));
  }
  StackScratch(StackScratch&& o) noexcept : tid_(o.tid_), at_(o.at_), saved_(std::move(o.saved_)) {
    o.tid_ = 0;
  }
  ~StackScratch() {
    if (tid_) (void)WriteRemote(tid_, RemotePtr(at_), saved_.data(), saved_.size());
  }
  template <class T = void>
  RemotePtr<T> at() const {
    return RemotePtr<T>(at_);
  }

 private:
  StackScratch(pid_t tid, uint64_t at, std::string saved)
      : tid_(tid), at_(at), saved_(std::move(saved)) {}
  pid_t tid_;
  uint64_t at_;
  std::string saved_;
};

}  // namespace kleap
