// Memory dump and restore (mm.cc) and the vDSO (vdso.cc).
#pragma once

#include "engine/context.h"
#include "engine/scratch_page.h"

namespace kleap {

struct VmaClass {
  img::Vma::Kind kind = img::Vma::ANON_PRIVATE;
  bool skip = false;
  bool mem_file = false;  // FILE_*: a memfd or an unlinked tmpfs file, carried as a shmem object
  bool ghost = false;     // FILE_*: a file on disk deleted since it was mapped, carried whole
  std::string reason;     // non-empty: can't be carried
};
// With the task's pid, memfds and unlinked tmpfs files are told apart (their map_files).
VmaClass ClassifyVma(const MapsEntry& m, pid_t pid = 0);

// Memory-backed files (memfd.cc). A mapping of a memfd or an unlinked tmpfs file: true
// when it is one (c says how it is carried, or why it can't be).
bool ClassifyMemMapping(pid_t pid, const MapsEntry& m, VmaClass* c);
// The shmem object of the memory-backed file open at `path` (a /proc fd or map_files
// link), dumped once per inode; returns its id.
Result<uint64_t> DumpMemFile(DumpContext& ctx, const std::string& path);
// The data runs of a shmem file (SEEK_DATA/SEEK_HOLE, whole pages) into o's blob.
Result<void> DumpShmemPages(DumpContext& ctx, int fd, uint64_t size, img::ShmemObject* o);

// What restoring one task's memory needs. `rs` runs in the task's leader, with gadgets in
// the scratch page.
struct MmRestore {
  pid_t pid = 0;
  RemoteSyscalls* rs = nullptr;
  ScratchPage scratch;
  const img::MmImage* mm = nullptr;
  const img::Pagemap* pagemap = nullptr;
  ImageReader* images = nullptr;
  const MmHelpers* helpers = nullptr;
  // Mappings the task already holds whole (FillCowVma), by index: kept as they are.
  std::vector<int> kept;
  bool force_vdso_proxy = false;
  uint64_t page_bytes = 0;  // out
};

Result<void> DumpMm(DumpContext& ctx, const TaskInfo& task, img::MmImage* mm);

// Replaces the whole address space of the task with the dumped one.
Result<void> RestoreMm(MmRestore& r);

// Copy-on-write sharing, in the task itself before it forks its children: makes its
// private mapping `vma` at its place (anonymous, or of `fd`) and fills it with the task's
// own pages, or, `inherited` from the parent's copy, writes only the pages it does not
// share with the parent (Pagemap.parent_runs) and drops the ones it lacks. The children
// it forks then inherit the pages they share with it. RestoreMm keeps the mapping (kept).
Result<void> FillCowVma(const img::MmImage& mm, const img::Pagemap& pm, int vma, BlobReader& blob,
                        bool inherited, int fd = -1);

// A VmFlags name of smaps ("dd", "wf", ...) the mapping had.
bool HasVmFlag(const img::Vma& v, std::string_view f);

// Picks a scratch page address that is free in the dumped layout and in ours, below 4 GiB
// so that both syscall instructions can run from it.
Result<ScratchPage> PickScratch(const img::MmImage& mm);

// The membarrier(2) commands an address space can have made (REGISTER_GLOBAL_EXPEDITED,
// REGISTER_PRIVATE_EXPEDITED, ..._SYNC_CORE, ..._RSEQ).
inline constexpr uint32_t kMembarrierRegisterMask = (1u << 2) | (1u << 4) | (1u << 6) | (1u << 8);

// The vDSO block of a dump: [vvar...][vdso].
Result<void> RestoreVdso(MmRestore& r);

}  // namespace kleap
