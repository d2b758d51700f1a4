// Kernel AIO contexts (io_setup(2), not POSIX aio): found by their ring mappings and
// remade with io_setup in the task, moved to the old address, with the completions
// that were not reaped yet put back.
#pragma once

#include "engine/context.h"

namespace kleap {

// Is this mapping the ring of an AIO context ("/[aio] (deleted)", shared)?
bool IsAioRingMapping(const MapsEntry& m);

// Reads one ring through the task's memory; `rs` asks the task whether the ring is
// a live context of its own.
Result<void> DumpAioRing(RemoteSyscalls& rs, ArchKind arch, const MapsEntry& m, img::AioRing* out);
// Every AIO ring of the image is one AIO_RING mapping and its fields fit together.
Result<void> ValidateAio(pid_t pid, const img::MmImage& mm);
// After RestoreMm: remakes every context of the task at its id, in the task's own
// ABI, through syscalls from the scratch page (data area at `data`).
Result<void> RestoreAio(RemoteSyscalls& rs, pid_t pid, RemotePtr<> data, const img::MmImage& mm);

}  // namespace kleap
