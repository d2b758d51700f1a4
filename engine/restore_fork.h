// Restore, phases 2 and 3 (open, fork): what the controller and the tasks it creates share
// while they are created. restore_plan.cc plans the tasks (ForkPlan), restore.cc drives
// the session; restore_fork.cc is the code each created task runs, from its clone3 to its
// park.
#pragma once

#include <atomic>
#include <map>
#include <vector>

#include "engine/restore_plan.h"

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
// every task it creates (zeroed by mmap: kNothing, and ForkPhase::kCreate).
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
// How far the controller lets the tasks go. It only moves forward.
enum class ForkPhase : int {
  kCreate = 0,       // each task creates its children, then says kCreated
  kJoinGroups = 1,   // every task exists: each joins its process group, then its fds
  kHelpersExit = 2,  // every task is in its group: the gone leaders' helpers exit
  kZombiesExit = 3,  // every task parked: the zombies exit again
};

struct SharedState {
  std::atomic<ForkPhase> phase;
  std::atomic<int> abort;
  char abort_reason[512];  // as_init: why, for PID 1's fallback
  Slot slots[1];
};

// What every task being created knows: it gets a copy of the controller's memory by fork.
struct ForkContext {
  const RestorePlan& plan;
  const OpenFiles& files;
  const std::map<uint64_t, ShmemMapping>& shmem;
  std::vector<TaskPlan>& tasks;
  SharedState* shared;
  std::vector<LeaderHelper>* leaders = nullptr;
  // The pages of mappings filled before a fork (TaskPlan::cow), and a flag for each in
  // shared memory: set by the task that holds its copy whole, for RestoreMm.
  ImageReader* images = nullptr;
  std::atomic<uint8_t>* cow_kept = nullptr;
  // This process is PID 1 restoring a whole system (RestoreOptions::as_init): it must
  // never exit, and falls back instead.
  bool is_init = false;
  void (*init_fallback)(const char* why) = nullptr;
};

// Task i's part of the fork, in this process: its session, group, children, threads and
// fds, then it parks for the controller. Never returns: a failure is written to its slot.
[[noreturn]] void RunTask(const ForkContext& ctx, size_t i);
// An unlinked file or deleted directory of the set (files.img) that the controller made
// again, as a path any task can open or chdir to: the controller's /proc/PID/fd/N.
Result<std::string> GhostPath(const RestorePlan& plan, const OpenFiles& files, uint64_t file_id);
// clone3 with set_tid = want (0: any pid).
pid_t CloneAt(pid_t want, int exit_signal, uint64_t flags = 0);

}  // namespace kleap
