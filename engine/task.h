// The engine's model of a process tree, shared by dump, restore and check.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/arch.h"
#include "engine/base/lookup.h"
#include "engine/base/proc.h"
#include "engine/base/result.h"
#include "engine/engine.h"
#include "engine/ptrace/remote_syscalls.h"

namespace kleap {

struct TaskInfo {
  pid_t pid = 0, ppid = 0, pgid = 0, sid = 0;
  std::vector<pid_t> tids;  // the leader first
  std::string comm;
  ArchKind arch = ArchKind::kX86_64;
  int exit_signal = SIGCHLD;  // what the parent gets when it exits
  // A zombie: exited, not yet waited for. Nothing of it is seized or dumped but its
  // place in the tree and its wait status.
  bool zombie = false;
  int exit_status = 0;
  bool stopped = false;  // in a group stop (state T) before kleap seized it
  int stop_signal = 0;   // the signal that stopped it (its leader's seize tells)
};

// Lists the tree through /proc without stopping anything: parents before children.
// `leave_out`: a process left out with what it started (engine.h, CheckTree).
Result<std::vector<TaskInfo>> WalkTree(pid_t root, pid_t leave_out);

// A frozen tree: every thread of every task seized and in a ptrace stop. Destroying it
// resumes every task still attached, with its registers as they were.
class SeizedTree {
 public:
  static Result<std::unique_ptr<SeizedTree>> Seize(pid_t root);
  ~SeizedTree();

  std::vector<TaskInfo>& tasks() { return tasks_; }
  // Per-thread injection contexts, created at seize time.
  RemoteSyscalls& Thread(pid_t tid) { return *Lookup(threads_, tid); }
  // Kills every task (SIGKILL while seized) and forgets them.
  void KillAll();
  // Resumes every task; registers are put back by the RemoteSyscalls destructors.
  void ResumeAll();

 private:
  SeizedTree() = default;
  Result<void> SeizeTask(pid_t pid, pid_t ppid);
  std::vector<TaskInfo> tasks_;
  std::map<pid_t, std::unique_ptr<RemoteSyscalls>> threads_;
  std::vector<pid_t> seized_order_;
  bool done_ = false;
};

// Namespaces the engine carries nothing of yet: a task outside kleap's own is refused.
std::vector<Problem> CheckNamespaces(pid_t pid);

}  // namespace kleap
