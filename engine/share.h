// What processes (not threads) of a tree share: fd tables (clone CLONE_FILES), fs_struct
// (cwd, root, umask: CLONE_FS) and address spaces (CLONE_VM), found with kcmp.
#pragma once

#include <map>
#include <vector>

#include "engine/context.h"

namespace kleap {

// The task whose table (or fs) a task shares, 0 for its own. Only the task's parent can
// be named: the restore remakes sharing by creating the task with the clone flag.
struct TaskSharing {
  pid_t files_with = 0;
  pid_t fs_with = 0;
  pid_t vm_with = 0;  // the address space: no mm image of its own
};

struct SharingReport {
  std::map<pid_t, TaskSharing> by_pid;
  // Shapes that can't be remade: sharing with a task other than the parent, or with a
  // task outside the tree; an address space shared with a task that has threads,
  // children or a session of its own; a vfork() wait.
  std::vector<Problem> problems;
};

// kcmp of every task with its parent, and an ordering (kcmp's) of the tasks that don't
// share with their parent to find the ones that share with each other: O(n log n).
SharingReport FindSharing(const std::vector<TaskInfo>& tasks);

// The thread of the task blocked in vfork() (or clone(CLONE_VFORK)) until its child
// execs or exits, or 0: that wait is kernel state, and the thread never stops for ptrace
// until it ends.
pid_t InVforkWait(const TaskInfo& t);
Problem VforkProblem(pid_t pid, pid_t tid);

// Restore side (pstree.img is untrusted): a shared table, fs or address space names the
// task's parent, and the two images agree on what they share.
Result<void> ValidateSharing(const RestorePlan& plan);

}  // namespace kleap
