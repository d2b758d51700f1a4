// The restore's scratch page (mm.h picks it, restore_fork.cc maps it in each new task).
#pragma once

#include <cstdint>

#include "engine/ptrace/tracee.h"

namespace kleap {

// The page a task's restore runs its injected syscalls from: a 64-bit and a 32-bit syscall
// instruction, then a data area for their in and out arguments. It is the only mapping
// left while the task's own are replaced, and it goes last.
struct ScratchPage {
  static constexpr uint64_t kSize = 4096, kGadget64 = 0, kGadget32 = 2, kData = 64;
  static constexpr uint64_t kDataSize = kSize - kData;
  RemotePtr<> base;
  RemotePtr<> gadget64() const { return base + kGadget64; }
  RemotePtr<> gadget32() const { return base + kGadget32; }
  RemotePtr<> data() const { return base + kData; }
};

}  // namespace kleap
