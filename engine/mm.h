// Memory dump and restore (mm.cc) and the vDSO (vdso.cc).
#pragma once

#include "engine/context.h"

namespace kleap {

struct VmaClass {
  img::Vma::Kind kind = img::Vma::ANON_PRIVATE;
  bool skip = false;
  std::string reason;  // non-empty: can't be carried
};
VmaClass ClassifyVma(const MapsEntry& m);

// What restoring one task's memory needs. `rs` runs in the task's leader, with gadgets in
// the scratch page at `scratch`, the only mapping left once the old ones are gone.
struct MmRestore {
  pid_t pid = 0;
  RemoteSyscalls* rs = nullptr;
  uint64_t scratch = 0;
  const img::MmImage* mm = nullptr;
  const img::Pagemap* pagemap = nullptr;
  ImageReader* images = nullptr;
  const MmHelpers* helpers = nullptr;
  bool force_vdso_proxy = false;
  uint64_t page_bytes = 0;  // out
};

// Replaces the whole address space of the task with the dumped one.
Result<void> RestoreMm(MmRestore& r);

// Picks a scratch page address that is free in the dumped layout and in ours, below 4 GiB
// so that both syscall instructions can run from it.
Result<uint64_t> PickScratch(const img::MmImage& mm);

// The vDSO block of a dump: [vvar...][vdso].
Result<void> RestoreVdso(MmRestore& r);

// Data area inside the scratch page, after the two gadgets.
inline constexpr uint64_t kScratchGadget64 = 0, kScratchGadget32 = 2, kScratchData = 64;
inline constexpr uint64_t kScratchSize = 4096;

}  // namespace kleap
