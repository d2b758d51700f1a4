// Sessions and process groups whose leader is gone. A daemon's grandchild, reparented to
// a subreaper after its parent (the session leader) exited, lives on in a session whose
// leader's pid no longer exists; so does a member of a process group whose leader
// exited. No task of the tree can make such a session or group again, so the restore
// makes a short-lived helper with the leader's pid: it calls setsid() or setpgid(0, 0),
// creates the members that must inherit the session from it, waits until every task
// has joined its group, and exits. Its children are reparented to the subreaper that
// created it, which is where they were.
#pragma once

#include <map>
#include <vector>

#include "engine/engine.h"
#include "engine/images/pstree.pb.h"
#include "engine/task.h"

namespace kleap {

struct LeaderPlan {
  std::vector<img::PsHelper> helpers;  // each after its parent, when that is a helper
  std::vector<Problem> problems;       // shapes that can't be made
};

// Dump and check side: the helpers the tree needs, or why it can't be remade. Tasks
// come parents first (WalkTree's order).
LeaderPlan PlanLeaders(const std::vector<TaskInfo>& tasks);

// Restore side: checks pstree.img's helpers (untrusted) against its tasks, and returns
// who creates each task: its parent, or the session helper it must inherit its session
// from.
Result<std::map<pid_t, pid_t>> TaskCreators(const img::PsTree& tree);

}  // namespace kleap
