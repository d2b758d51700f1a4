// File locks: found in /proc/PID/fdinfo/FD ("lock:" lines), which lists the locks taken
// through that open file, without taking or testing any lock (the old trick of taking
// a lock again to see whether it is held changes what it looks at). Restored by taking
// each lock again through the same fd, in the task.
#pragma once

#include <vector>

#include "engine/context.h"
#include "engine/images/locks.pb.h"

namespace kleap {

struct FdLock {
  std::string kind;  // FLOCK, POSIX, OFDLCK, LEASE, DELEG, ...
  bool mandatory = false, write = false;
  pid_t pid = 0;
  uint64_t start = 0, end = 0;  // end: UINT64_MAX for EOF
};
// The "lock:" lines of one fdinfo text (waiters, the " ->" lines, are left out).
Result<std::vector<FdLock>> ParseFdLocks(const std::string& fdinfo);

// What of a task's locks can't be carried (leases, mandatory locks).
std::vector<Problem> CheckLocks(pid_t pid);
Result<void> DumpLocks(const TaskInfo& task, img::TaskCore* core);
Result<void> ValidateLocks(pid_t pid, const img::TaskCore& core);
// Takes the task's locks again, through its own fds (installed already).
Result<void> RestoreLocks(RemoteSyscalls& rs, pid_t pid, RemotePtr<> scratch,
                          const img::TaskCore& core);

}  // namespace kleap
