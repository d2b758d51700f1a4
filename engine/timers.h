// Interval timers and POSIX timers: found through /proc/PID/timers and the task's own
// getitimer()/timer_gettime(), re-created with their ids on restore.
#pragma once

#include <vector>

#include "engine/context.h"
#include "engine/images/timers.pb.h"

namespace kleap {

// What /proc/PID/timers says about one POSIX timer.
struct ProcTimer {
  int id = 0;
  int signo = 0;
  uint64_t sigev_value = 0;
  uint32_t notify = 0;  // SIGEV_* with SIGEV_THREAD_ID
  int notify_pid = 0;
  int clockid = 0;
};
Result<std::vector<ProcTimer>> ParseProcTimers(const std::string& text);

// The timers of a task that can't be carried (check and dump refuse them).
std::vector<Problem> CheckTimers(pid_t pid);

Result<void> DumpTimers(DumpContext& ctx, const TaskInfo& task, img::TaskTimers* out);
Result<void> ValidateTimers(pid_t pid, const img::TaskTimers& t);
// Re-creates the timers with their ids and arms them, the downtime counted. Runs in
// the task through 64-bit syscalls from its scratch page.
Result<void> RestoreTimers(RemoteSyscalls& rs, pid_t pid, RemotePtr<> scratch,
                           const img::TaskTimers& t, bool same_boot);

}  // namespace kleap
