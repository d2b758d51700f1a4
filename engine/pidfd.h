// pidfds (pidfd_open(2), clone(CLONE_PIDFD)). A pidfd refers to one process: it is
// carried when that process is a task of the tree, which has the same pid after the
// restore, or has died. The restore opens a live one once every task exists
// (OpenLivePidfds, in the controller); each task takes it from the controller while it
// installs its fds (InstallFds), so tasks that shared the description still do.
#pragma once

#include <vector>

#include "engine/context.h"
#include "engine/images/files.pb.h"

namespace kleap {

struct FdDesc;

// A pidfd of a live process outside the tree (after a kexec it is gone, or another
// process has its pid), of a thread that leads no process (PIDFD_THREAD), or of a
// process in another pid namespace can't be made again: named with the task and fd.
std::vector<Problem> CheckPidfds(const std::vector<TaskInfo>& tasks);

Result<void> DumpPidfd(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ValidatePidfd(const img::FileObject& fo);
// Every pidfd names a task of the set, or none (a dead process).
Result<void> ValidatePidfds(const RestorePlan& plan);
// A dead process's pidfd is made at once (a child that exits); a live one is a
// placeholder until OpenLivePidfds.
Result<UniqueFd> OpenPidfd(const img::FileObject& fo, ImageReader& images, OpenFiles& files);
// Reaps the children whose pidfds stand for dead processes, once all are open.
void ReapPidfdChildren(OpenFiles& files);
// In the controller, once every task of the set exists: each live pidfd in place of its
// placeholder, at the same fd number.
Result<void> OpenLivePidfds(OpenFiles& files);

}  // namespace kleap
