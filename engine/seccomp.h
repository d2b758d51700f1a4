// seccomp filters: read with PTRACE_SECCOMP_GET_FILTER, installed again in each thread.
// While kleap works on a task its filters are suspended (PTRACE_O_SUSPEND_SECCOMP), so
// a filter that forbids what kleap injects (prctl, setresuid, ...) doesn't get in the way.
#pragma once

#include <sys/types.h>

#include "engine/context.h"

namespace kleap {

// Suspends the filters of a seized thread until it is let go (needs CAP_SYS_ADMIN).
Result<void> SuspendSeccomp(pid_t tid, bool exit_kill);
// The thread's filter mode from /proc (0 none, 1 strict, 2 filters).
int SeccompMode(pid_t pid, pid_t tid);

Result<void> DumpSeccomp(pid_t tid, img::ThreadCore* th);
Result<void> ValidateSeccomp(pid_t pid, const img::ThreadCore& th);
// How many of the oldest filters every thread of the task has alike (0 for one thread):
// taken as shared objects.
int SharedSeccompPrefix(const img::TaskCore& core);
// Installs filters [from, to) of the thread's chain, oldest first, through a temporary
// mapping in the task; with tsync, in every thread of the task (SECCOMP_FILTER_FLAG_TSYNC).
// The threads must be suspended from seccomp already and still privileged.
Result<void> RestoreSeccomp(RemoteSyscalls& rs, pid_t pid, const img::ThreadCore& th, int from,
                            int to, bool tsync);

}  // namespace kleap
