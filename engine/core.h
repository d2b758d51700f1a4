#pragma once

#include "engine/context.h"

namespace kleap {

Result<void> DumpCore(DumpContext& ctx, const TaskInfo& task, img::TaskCore* core);
Regs RegsFromImage(const img::GpRegs& g);
Result<void> UnregisterRseq(RemoteSyscalls& rs, pid_t tid);
Result<void> RestoreThreadCore(RemoteSyscalls& rs, pid_t pid, RemotePtr<> scratch,
                               const img::ThreadCore& th);
// Sets xstate now and arranges the general registers and signal mask for the detach.
Result<void> SetFinalRegisters(RemoteSyscalls& rs, const img::ThreadCore& th);
Result<void> RestoreRlimits(pid_t pid, const img::TaskCore& core);

}  // namespace kleap
