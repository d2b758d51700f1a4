#pragma once

#include "engine/context.h"

namespace kleap {

Result<void> RestoreSigactions(RemoteSyscalls& rs, pid_t pid, RemotePtr<> scratch,
                               const img::TaskCore& core);
Result<void> RestorePending(RemoteSyscalls& rs, pid_t pid, pid_t tid, RemotePtr<> scratch,
                            const google::protobuf::RepeatedPtrField<img::PendingSignal>& pending,
                            bool shared);
Result<void> RestoreAltStack(RemoteSyscalls& rs, pid_t tid, RemotePtr<> scratch,
                             const img::ThreadCore& th);
Result<void> DumpSignals(DumpContext& ctx, const TaskInfo& task, img::TaskCore* core);

}  // namespace kleap
