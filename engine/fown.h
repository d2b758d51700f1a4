// Signal-driven I/O, on any kind of file: O_ASYNC (FIOASYNC) and the owner that SIGIO
// (or the signal of F_SETSIG) and SIGURG go to (F_SETOWN_EX), with the credentials of
// whoever set it (F_GETOWNER_UIDS), which the kernel checks before each signal. They
// belong to the open file description, so they are carried once per FileObject.
#pragma once

#include <vector>

#include "engine/context.h"
#include "engine/images/files.pb.h"

namespace kleap {

// Reads the owner of `fd` (a copy of a task's fd, GrabFd) into fo; O_ASYNC comes from
// fdinfo's flags, `async`.
Result<void> DumpFileOwner(int fd, bool async, img::FileObject* fo);

// An owner that is no task, thread or process group of the tree can't be set again:
// named with the task and fd (check and dump).
std::vector<Problem> CheckFileOwners(const std::vector<TaskInfo>& tasks);

// Every owner names a task, thread or group of the set, with a valid type and signal.
Result<void> ValidateFileOwners(const RestorePlan& plan);

// Restore, in a helper of the controller, last before the tasks resume (every task and
// group exists): each owner, set with the credentials it was set with, then O_ASYNC
// through the fd number of the first task that holds the file.
Result<void> SetFileOwners(const RestorePlan& plan, const OpenFiles& open);

}  // namespace kleap
