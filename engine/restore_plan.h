// Restore, phase 1 (plan). Pure layers over a set's images, before anything is created:
//
//   LoadPlan     every image read into a RestorePlan, and checked (ValidatePlan, then
//                the blobs, checksums, free pids and file identities);
//   PlanTasks    the tasks to create, in pstree order: who creates each one, and the
//                fd tables, fs and address spaces they share, as objects they point at
//                (a CLONE_FILES child points at its parent's table, as the kernel's
//                files_struct is one object for both).
//
// restore_fork.cc creates the tasks from a ForkPlan; restore.cc drives the session.
#pragma once

#include <map>
#include <memory>
#include <vector>

#include "engine/context.h"
#include "engine/mm.h"

namespace kleap {

// ---- collect ----

// Reads every image of the set and checks them (CheckPlan).
Result<RestorePlan> LoadPlan(ImageReader& images);
// Everything the restore side asks of a set's images before it creates anything, with
// no system call and nothing of the target system (free pids, file identities): the
// plan's structure (ValidatePlan), who creates whom, sharing and IPC. The dump runs it
// on the set it wrote before it commits, so that a set the restore would refuse is
// never made.
Result<void> CheckPlan(const RestorePlan& plan);
// The plan's structure, with no system call: pids and tids, the tree's order, sessions and
// groups, threads, zombies, mappings and page runs, and every kind's own fields. LoadPlan
// runs it; the images are untrusted.
Result<void> ValidatePlan(const RestorePlan& plan);
// LoadPlan has bounded every page run by its mapping; this checks the blobs hold them.
Result<void> CheckPageBlobSizes(ImageReader& images, const RestorePlan& plan);
Result<void> VerifyBlobs(ImageReader& images, const RestorePlan& plan);
// as_init: pid 1 is the restorer itself, which becomes the root.
Result<void> CheckPidsFree(const RestorePlan& plan, bool as_init = false);
// Every mapped file and executable is the one dumped: same size, mtime and ELF build-id,
// and the same inode and device where those are kept (InodeKept).
Result<void> CheckFileIdentities(const RestorePlan& plan, ImageReader& images);

// ---- what tasks share ----
// Tasks are named by their index in ForkPlan::tasks.

// One fd table (CLONE_FILES). Its holder, the first of its tasks created, installs it
// once every other placer is quiet; then each placer in turn opens its helper fds above
// the one before it (open takes the lowest free number), and the last one closes every
// helper left. A task in its parent's address space uses the table but places nothing.
struct SharedFdTable {
  size_t holder = 0;
  std::vector<size_t> placers;  // the holder first, then in creation order
};

// One fs (cwd, root, umask; CLONE_FS). Its holder sets it up, after the members, which
// open their helpers by path first: a chroot would move them.
struct SharedFs {
  size_t holder = 0;
  std::vector<size_t> members;  // created with CLONE_FS from the holder's fs
};

// One address space (CLONE_VM). Its owner is rebuilt from the image; the others are
// set up by injected syscalls. The scratch page goes with the last of them rebuilt.
struct SharedMm {
  const img::MmImage* image = nullptr;
  ScratchPage scratch;
  size_t owner = 0;
  size_t last = 0;
};

// ---- the tasks ----

struct TaskPlan {
  size_t index = 0;  // in ForkPlan::tasks
  const img::PsTask* ps = nullptr;
  // A zombie has none of these.
  const img::TaskCore* core = nullptr;
  const img::FdTable* fds = nullptr;
  std::shared_ptr<SharedFdTable> table;
  std::shared_ptr<SharedFs> fs;
  std::shared_ptr<SharedMm> mm;
  int keep_from = 0;  // first fd number above the task's own
  // Helper fds: [helper_from, helper_end), in the table above keep_from, after the
  // previous placer's (AssignHelperFds). A task in its parent's address space has none.
  int helper_from = 0, helper_end = 0;
  MmHelpers helpers;
  // Private anonymous mappings kept whole from before a fork, so that the pages a child
  // shares with its parent (Pagemap.parent_runs) stay one copy (PlanCow).
  struct CowVma {
    int vma = 0;                // in the task's MmImage
    size_t flag = 0;            // in ForkContext::cow_kept: set once the task holds it whole
    long parent_flag = -1;      // the parent's copy, inherited at the fork, when it has one
    bool for_children = false;  // a child of the task shares pages of it
  };
  std::vector<CowVma> cow;             // by vma
  std::vector<size_t> children;        // tasks it creates, its own time namespace's first
  std::vector<size_t> leader_helpers;  // helpers of gone leaders it creates (LeaderHelper)
  bool by_helper = false;              // created by a session helper, which exits

  bool files_shared() const { return table && table->holder != index; }
  bool fs_shared() const { return fs && fs->holder != index; }
  bool vm_shared() const { return mm && mm->owner != index; }
  // The placer before this one in its table (files_shared, own address space).
  size_t table_prev() const;
  // Closes every helper of its table when it is rebuilt.
  bool table_last() const { return table && table->placers.back() == index; }
  bool unmaps_scratch() const { return mm && mm->last == index; }
};

// A stand-in for a gone session or group leader (leaders.h), alive during the fork.
struct LeaderHelper {
  pid_t pid;
  bool session;
  std::vector<size_t> children;  // tasks it creates (TaskPlan indices)
  std::vector<size_t> helpers;   // helpers it creates (group helpers of its session)
};

struct ForkPlan {
  std::vector<TaskPlan> tasks;  // pstree order: each after the one that creates it
  std::vector<LeaderHelper> leaders;
  size_t cow_flags = 0;  // TaskPlan::CowVma::flag below this
};

// Plans the fork of a validated plan. A scratch page is picked for each address space
// (PickScratch: free in the dumped layout and in this process's).
Result<ForkPlan> PlanTasks(const RestorePlan& plan);

// Gives t its helper fds (mm helpers, then the exe), from helper_from.
void AssignHelperFds(TaskPlan& t);

}  // namespace kleap
