#include "engine/leaders.h"

#include <unistd.h>

#include <set>
#include <string>

namespace kleap {
namespace {

// Gone: no task has that pid. (A pid that exists outside the tree is a leader kleap
// can't carry.)
bool Gone(pid_t pid) {
  return access(("/proc/" + std::to_string(pid)).c_str(), F_OK) != 0 && errno == ENOENT;
}

}  // namespace

LeaderPlan PlanLeaders(const std::vector<TaskInfo>& tasks) {
  LeaderPlan out;
  std::map<pid_t, const TaskInfo*> by_pid;
  for (auto& t : tasks) by_pid[t.pid] = &t;
  std::map<pid_t, size_t> helper;  // leader pid -> index in out.helpers
  std::map<pid_t, pid_t> creator;  // task -> the task or helper that creates it
  auto problem = [&](const TaskInfo& t, const std::string& what, const std::string& why) {
    out.problems.push_back({t.pid, "task", what, why});
  };
  // A whole system (the root is PID 1): session and group 0 are the kernel's, those of
  // an init that never called setsid(), and of the children that inherit them.
  bool whole = !tasks.empty() && tasks[0].pid == 1;
  for (auto& t : tasks) {
    std::string session = "session " + std::to_string(t.sid);
    std::string group = "process group " + std::to_string(t.pgid);
    auto parent = by_pid.find(t.ppid);
    if (parent == by_pid.end()) {  // the root
      if (whole && t.sid == 0 && t.pgid == 0) {
      } else if (!by_pid.count(t.sid))
        problem(t, session,
                "the session leader is outside the tree; start the tree in a session of its own "
                "(setsid)");
      else if (!by_pid.count(t.pgid))
        problem(t, group, "the process group leader is outside the tree");
      creator[t.pid] = 0;
      continue;
    }
    creator[t.pid] = t.ppid;
    // A task inherits its session from the task that creates it.
    if (t.sid != t.pid && t.sid != parent->second->sid) {
      if (t.sid == 0) {  // no helper can have pid 0
        problem(t, session,
                "the task is in the kernel's session 0 (the kernel started it) and its parent "
                "is not, so nothing can hand that session down to it");
        continue;
      }
      if (by_pid.count(t.sid)) {
        problem(t, session,
                "the task is in another session than its parent, and the session's leader is "
                "alive, so nothing can hand the session down to it again");
        continue;
      }
      if (!Gone(t.sid)) {
        problem(t, session, "the session leader is outside the tree");
        continue;
      }
      auto h = helper.find(t.sid);
      if (h == helper.end()) {
        img::PsHelper ph;
        ph.set_pid(t.sid);
        ph.set_parent(t.ppid);
        ph.set_session(true);
        helper[t.sid] = out.helpers.size();
        out.helpers.push_back(ph);
      } else if (out.helpers[h->second].parent() != t.ppid) {
        problem(t, session,
                "the session's leader is gone and its members have different parents (" +
                    std::to_string(out.helpers[h->second].parent()) + " and " +
                    std::to_string(t.ppid) + "): one helper can't create them all");
        continue;
      }
      creator[t.pid] = t.sid;
    }
    if (t.pgid == t.pid || by_pid.count(t.pgid) || helper.count(t.pgid) || (whole && !t.pgid))
      continue;
    if (t.pgid == 0) {
      problem(t, group,
              "the task is in the kernel's process group 0, which nothing can make again");
      continue;
    }
    if (!Gone(t.pgid)) {
      problem(t, group, "the process group leader is outside the tree");
      continue;
    }
    // A group of the task's session: made by whoever creates the task, which is in it.
    img::PsHelper ph;
    ph.set_pid(t.pgid);
    ph.set_parent(creator[t.pid]);
    ph.set_session(false);
    helper[t.pgid] = out.helpers.size();
    out.helpers.push_back(ph);
  }
  return out;
}

Result<std::map<pid_t, pid_t>> TaskCreators(const img::PsTree& tree) {
  std::map<pid_t, const img::PsTask*> tasks;
  std::set<pid_t> tids;
  for (auto& t : tree.tasks()) {
    tasks[t.pid()] = &t;
    for (int tid : t.tids()) tids.insert(tid);
  }
  std::map<pid_t, const img::PsHelper*> helpers;
  for (auto& h : tree.helpers()) {
    std::string what = "pstree.img: helper " + std::to_string(h.pid());
    if (h.pid() <= 0 || tids.count(h.pid()) || helpers.count(h.pid()))
      return Err(EINVAL) << what << ": its pid is not free in the set";
    auto parent = tasks.find(h.parent());
    auto parent_helper = helpers.find(h.parent());
    if (parent == tasks.end() && parent_helper == helpers.end())
      return Err(EINVAL) << what << ": unknown parent " << h.parent();
    if (parent != tasks.end() && parent->second->zombie())
      return Err(EINVAL) << what << ": its parent " << h.parent() << " is a zombie";
    // A session helper's children come back to its parent, which must be a subreaper;
    // a group helper is made inside a session its parent is in.
    if (h.session() && parent == tasks.end())
      return Err(EINVAL) << what << ": a session helper must be made by a task";
    if (!h.session() && parent_helper != helpers.end() && !parent_helper->second->session())
      return Err(EINVAL) << what << ": a group helper can't make another";
    helpers[h.pid()] = &h;
  }
  std::map<pid_t, pid_t> out;
  for (auto& t : tree.tasks()) {
    out[t.pid()] = t.ppid();
    if (t.ppid() == 0 || t.sid() == t.pid()) continue;
    auto parent = tasks.find(t.ppid());
    if (parent == tasks.end()) continue;  // ValidatePlan says so
    if (t.sid() == parent->second->sid()) continue;
    auto h = helpers.find(t.sid());
    if (h == helpers.end() || !h->second->session())
      return Err(EINVAL) << "pstree.img: task " << t.pid() << " is in session " << t.sid()
                         << ", which neither its parent nor a helper hands down";
    if (h->second->parent() != t.ppid())
      return Err(EINVAL) << "pstree.img: task " << t.pid() << ": the helper of session " << t.sid()
                         << " is made by " << h->second->parent() << ", not by its parent "
                         << t.ppid();
    out[t.pid()] = t.sid();
  }
  return out;
}

}  // namespace kleap
