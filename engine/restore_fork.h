// Restore, phases 2 and 3 (open, fork): what the controller and the tasks it creates share
// while they are created. restore.cc plans the tasks (TaskPlan) and drives the session;
// restore_fork.cc is the code each created task runs, from its clone3 to its park.
#pragma once

#include <atomic>
#include <map>
#include <vector>

#include "engine/context.h"
#include "engine/mm.h"

namespace kleap {

// ---- open ----

// An anonymous shared mapping, made and filled by the controller before the fork so
// that every task that maps it inherits it.
struct ShmemMapping {
  uint64_t addr = 0, size = 0;
};
Result<std::map<uint64_t, ShmemMapping>> CreateShmem(ImageReader& images, const RestorePlan& plan);

// ---- fork ----

// Where a task is in its creation. The slots live in memory shared by the controller and
// every task it creates (zeroed by mmap: kNothing).
enum class SlotState : int { kFailed = -1, kNothing = 0, kCreated = 1, kParked = 2 };

struct Slot {
  std::atomic<SlotState> state;
  // A shared fd table (share.cc): the task touches its fds no more before InstallFds,
  // and has placed its helper fds.
  std::atomic<int> fd_quiet, helpers_done;
  // In its process group: the helpers of gone leaders may exit (leaders.h).
  std::atomic<int> joined;
  pid_t pid;
  char error[400];
};
struct SharedState {
  std::atomic<int> go_pgid;
  std::atomic<int> go_zombies;  // every group is joined: the zombies may exit
  std::atomic<int> abort;
  std::atomic<int> go_helpers;  // every task joined its group: the leaders' helpers exit
  char abort_reason[512];       // as_init: why, for PID 1's fallback
  Slot slots[1];
};

// A stand-in for a gone session or group leader (leaders.h), alive during the fork.
struct LeaderHelper {
  pid_t pid;
  bool session;
  std::vector<size_t> children;  // tasks it creates (TaskPlan indices)
  std::vector<size_t> helpers;   // helpers it creates (group helpers of its session)
};

struct TaskPlan {
  const img::PsTask* ps;
  const img::TaskCore* core;
  const img::MmImage* mm;
  const img::FdTable* fds;
  int keep_from = 0;  // first fd number above the task's own
  // Helper fds: [helper_from, helper_end). Tasks that share one fd table take disjoint
  // ranges above the same keep_from.
  int helper_from = 0, helper_end = 0;
  // A table shared with the parent (CLONE_FILES): the holder, the first task of the
  // group, installs it; each member places its helpers after the one before it.
  bool files_shared = false, fs_shared = false;
  size_t table_holder = 0, table_prev = 0, fs_holder = 0;
  bool table_last = true;             // closes every helper of the table in Rebuild
  std::vector<size_t> table_members;  // the holder's: the others, in order
  std::vector<size_t> fs_members;     // tasks created with CLONE_FS from this one's fs
  // The task shares its parent's address space (share.cc): `mm` and `scratch` are the
  // parent's, it has no helper fds, and Rebuild sets it up by injected syscalls. The
  // scratch page goes with the last task of the address space rebuilt.
  bool vm_shared = false;
  bool unmap_scratch = true;
  MmHelpers helpers;
  uint64_t scratch = 0;
  std::vector<size_t> children;
  std::vector<size_t> leader_helpers;  // helpers of gone leaders it creates (LeaderHelper)
  bool by_helper = false;              // created by a session helper, which exits
};

// Gives t its helper fds (AssignHelperFds: mm helpers, then the exe), from helper_from.
void AssignHelperFds(TaskPlan& t);

// What every task being created knows: it gets a copy of the controller's memory by fork.
struct ForkContext {
  const RestorePlan& plan;
  const OpenFiles& files;
  const std::map<uint64_t, ShmemMapping>& shmem;
  std::vector<TaskPlan>& tasks;
  SharedState* shared;
  std::vector<LeaderHelper>* leaders = nullptr;
  // This process is PID 1 restoring a whole system (RestoreOptions::as_init): it must
  // never exit, and falls back instead.
  bool is_init = false;
  void (*init_fallback)(const char* why) = nullptr;
};

// Task i's part of the fork, in this process: its session, group, children, threads and
// fds, then it parks for the controller. Never returns: a failure is written to its slot.
[[noreturn]] void RunTask(const ForkContext& ctx, size_t i);
// clone3 with set_tid = want (0: any pid).
pid_t CloneAt(pid_t want, int exit_signal, uint64_t flags = 0);

}  // namespace kleap
