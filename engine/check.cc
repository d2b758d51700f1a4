// check: what in a tree can't be carried, found through /proc without stopping a task.
#include <algorithm>
#include <map>
#include <set>

#include "engine/context.h"
#include "engine/fown.h"
#include "engine/ipc.h"
#include "engine/leaders.h"
#include "engine/locks.h"
#include "engine/pidfd.h"
#include "engine/share.h"
#include "engine/sock_unix.h"
#include "engine/timens.h"
#include "engine/timers.h"
#include "engine/tty.h"

namespace kleap {

std::vector<Problem> CheckTaskState(pid_t pid) {
  std::vector<Problem> out;
  auto st = ReadStatus(pid);
  if (!st) {
    out.push_back({pid, "task", "", st.error().ToString()});
    return out;
  }
  if (st->GetInt("Seccomp").value_or(0) == 1)
    out.push_back(
        {pid, "task", "seccomp", "strict seccomp mode: the task can't be asked anything"});
  auto tids = ListThreads(pid);
  if (tids)
    for (pid_t tid : *tids) {
      auto ts = ReadStatus(pid, tid);
      if (!ts) continue;
      int64_t tracer = ts->GetInt("TracerPid").value_or(0);
      if (tracer != 0 && tracer != getpid())
        out.push_back({pid, "thread " + std::to_string(tid),
                       "traced by pid " + std::to_string(tracer),
                       "a task under ptrace can't be seized"});
    }
  auto cwd = ReadLink(ProcPath(pid, "cwd"));
  if (cwd && cwd->size() > 10 && cwd->compare(cwd->size() - 10, 10, " (deleted)") == 0)
    if (std::string why = RefuseMappedGhost(ProcPath(pid, "cwd")); !why.empty())
      out.push_back({pid, "cwd", *cwd, "the working directory was deleted: " + why});
  auto ns = CheckNamespaces(pid);
  out.insert(out.end(), ns.begin(), ns.end());
  auto timers = CheckTimers(pid);
  out.insert(out.end(), timers.begin(), timers.end());
  auto locks = CheckLocks(pid);
  out.insert(out.end(), locks.begin(), locks.end());
  return out;
}

// Sessions and process groups must have their leaders inside the tree, or gone
// (leaders.h).
std::vector<Problem> CheckTreeShape(const std::vector<TaskInfo>& tasks) {
  return PlanLeaders(tasks).problems;
}

std::vector<Problem> CheckTasks(const std::vector<TaskInfo>& tasks) {
  std::vector<Problem> out = CheckTreeShape(tasks);
  for (auto&& p : CheckUnixPeers(tasks)) out.push_back(std::move(p));
  for (auto&& p : FindSharing(tasks).problems) out.push_back(std::move(p));
  for (auto&& p : CheckTimeNamespaces(tasks)) out.push_back(std::move(p));
  auto ttys = CheckCttys(tasks);
  out.insert(out.end(), ttys.begin(), ttys.end());
  for (auto&& p : CheckIpc(tasks)) out.push_back(std::move(p));
  for (auto&& p : CheckFileOwners(tasks)) out.push_back(std::move(p));
  for (auto&& p : CheckPidfds(tasks)) out.push_back(std::move(p));
  for (auto& t : tasks)
    if (!t.zombie)
      for (auto&& part : {CheckTaskState(t.pid), CheckFds(t.pid), CheckMappings(t.pid)})
        out.insert(out.end(), part.begin(), part.end());
  return out;
}

Result<CheckReport> CheckTree(pid_t root, pid_t leave_out) {
  CheckReport rep;
  auto tasks = KLEAP_TRY(WalkTree(root, leave_out));
  for (auto& t : tasks) {
    rep.pids.push_back(t.pid);
    rep.threads += t.tids.size();
  }
  rep.problems = CheckTasks(tasks);
  rep.notes = SocketNotes(tasks);
  return rep;
}

}  // namespace kleap
