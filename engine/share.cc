// Sharing between processes that are not threads. kcmp(2) tells whether two tasks hold
// the same fd table (KCMP_FILES), fs_struct (KCMP_FS) or address space (KCMP_VM), and
// orders those objects, so a tree of n tasks is grouped with O(n log n) calls.
//
// The restore creates each task from its parent (restore.cc), so the only sharing it can
// remake is a task sharing with its parent: the parent creates it with CLONE_FILES,
// CLONE_FS or CLONE_VM. Everything else is refused here, for check and dump alike.
//
// A task sharing its parent's address space is created by an assembly clone that runs no
// C code in the shared memory (engine/ptrace/park.S) and is set up by injected syscalls,
// so it may hold no threads, children or session of its own.
#include "engine/share.h"

#include <linux/kcmp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "engine/base/lookup.h"
#include "engine/base/proc.h"

namespace kleap {
namespace {

int Kcmp(pid_t a, pid_t b, int type) {
  return int(syscall(SYS_kcmp, a, b, type, 0, 0));
}

struct ShareKind {
  int type;
  const char* noun;
  const char* flag;
};
constexpr ShareKind kFilesKind{KCMP_FILES, "fd table", "CLONE_FILES"};
constexpr ShareKind kFsKind{KCMP_FS, "cwd, root and umask (fs_struct)", "CLONE_FS"};
constexpr ShareKind kVmKind{KCMP_VM, "address space", "CLONE_VM"};

// A stable merge sort in kcmp's order. Written out because a task that exits meanwhile
// makes kcmp fail, and std::sort must never see an inconsistent order.
void SortByKcmp(std::vector<pid_t>& v, int type) {
  std::vector<pid_t> tmp(v.size());
  for (size_t w = 1; w < v.size(); w *= 2) {
    for (size_t lo = 0; lo < v.size(); lo += 2 * w) {
      size_t mid = std::min(lo + w, v.size()), hi = std::min(lo + 2 * w, v.size());
      size_t i = lo, j = mid, k = lo;
      while (i < mid && j < hi) tmp[k++] = Kcmp(v[j], v[i], type) == 1 ? v[j++] : v[i++];
      while (i < mid) tmp[k++] = v[i++];
      while (j < hi) tmp[k++] = v[j++];
    }
    v.swap(tmp);
  }
}

std::string CommOf(pid_t pid) {
  auto st = ReadStat(pid);
  return st ? " (" + st->comm + ")" : std::string();
}

// Why a task sharing its parent's address space can't be remade, or "".
std::string VmMemberProblem(const TaskInfo& t, const TaskInfo& parent,
                            const std::vector<TaskInfo>& tasks) {
  if (t.tids.size() > 1) return "has threads of its own (thread " + std::to_string(t.tids[1]) + ")";
  for (auto& o : tasks)
    if (o.ppid == t.pid)
      return "has children of its own (pid " + std::to_string(o.pid) + CommOf(o.pid) + ")";
  if (t.sid != parent.sid)
    return "is in session " + std::to_string(t.sid) + ", not its parent's " +
           std::to_string(parent.sid);
  return "";
}

}  // namespace

pid_t InVforkWait(const TaskInfo& t) {
  if (t.zombie) return 0;
  for (pid_t tid : t.tids) {
    auto st = ReadStat(t.pid, tid);
    if (!st || st->state != 'D') continue;
    // The vfork completion is waited for in kernel_clone (wait_for_vfork_done, inlined
    // on most builds).
    auto wchan = ReadFileToString(ProcPath(t.pid, "task/" + std::to_string(tid) + "/wchan"));
    if (!wchan) continue;
    std::string w(Trim(*wchan));
    if (w == "kernel_clone" || w == "wait_for_vfork_done" || w == "_do_fork" || w == "do_fork")
      return tid;
  }
  return 0;
}

Problem VforkProblem(pid_t pid, pid_t tid) {
  return {pid, tid == pid ? "task" : "thread " + std::to_string(tid), "blocked in vfork()",
          "it waits in vfork() (or clone with CLONE_VFORK) until its child execs or exits; that "
          "wait is kernel state kleap can't remake: dump the tree once the child has exec'd"};
}

SharingReport FindSharing(const std::vector<TaskInfo>& tasks) {
  SharingReport rep;
  std::map<pid_t, size_t> order;
  for (size_t i = 0; i < tasks.size(); ++i) order[tasks[i].pid] = i;
  std::set<pid_t> in_vfork;
  for (auto& t : tasks)
    if (pid_t tid = InVforkWait(t)) {
      in_vfork.insert(t.pid);
      rep.problems.push_back(VforkProblem(t.pid, tid));
    }
  for (const ShareKind* k : {&kFilesKind, &kFsKind, &kVmKind}) {
    std::vector<pid_t> heads;  // the tasks that don't share with their parent
    for (auto& t : tasks) {
      if (t.zombie) continue;  // it has none of the three any more
      pid_t parent = t.ppid;
      bool outside = parent == 0;
      if (outside) {
        auto st = ReadStat(t.pid);
        parent = st ? st->ppid : 0;
      } else if (tasks[Lookup(order, parent)].zombie) {
        parent = 0;
      }
      if (parent <= 0 || Kcmp(t.pid, parent, k->type) != 0) {
        heads.push_back(t.pid);
        continue;
      }
      std::string with = std::string(k->noun) + " shared with pid " + std::to_string(parent);
      if (outside) {
        rep.problems.push_back({t.pid, "task", with,
                                "the task shares its " + std::string(k->noun) + " (clone " +
                                    k->flag + ") with its parent " + std::to_string(parent) +
                                    CommOf(parent) +
                                    ", outside the tree: the sharing can't be remade"});
      } else if (k == &kVmKind) {
        // A vfork child: its parent's wait is the problem already named.
        if (in_vfork.count(parent)) continue;
        std::string why = VmMemberProblem(t, tasks[Lookup(order, parent)], tasks);
        if (why.empty())
          rep.by_pid[t.pid].vm_with = parent;
        else
          rep.problems.push_back(
              {t.pid, "task", with,
               "the task shares its address space with its parent " + std::to_string(parent) +
                   " (clone CLONE_VM without CLONE_THREAD) and " + why +
                   "; such a task is rebuilt by injected syscalls alone, which can't make them"});
      } else if (k == &kFilesKind) {
        rep.by_pid[t.pid].files_with = parent;
      } else {
        rep.by_pid[t.pid].fs_with = parent;
      }
    }
    SortByKcmp(heads, k->type);
    for (size_t i = 0; i < heads.size();) {
      size_t j = i + 1;
      while (j < heads.size() && Kcmp(heads[i], heads[j], k->type) == 0) ++j;
      if (j - i > 1) {
        // The first in the tree holds it; every other one got it some other way than
        // from its parent.
        std::vector<pid_t> group(heads.begin() + long(i), heads.begin() + long(j));
        std::sort(group.begin(), group.end(),
                  [&](pid_t a, pid_t b) { return Lookup(order, a) < Lookup(order, b); });
        for (size_t g = 1; g < group.size(); ++g) {
          const TaskInfo& t = tasks[Lookup(order, group[g])];
          rep.problems.push_back(
              {t.pid, "task", std::string(k->noun) + " shared with pid " + std::to_string(group[0]),
               "the task shares its " + std::string(k->noun) + " (clone " + k->flag +
                   ") with pid " + std::to_string(group[0]) + " but not with its parent " +
                   std::to_string(t.ppid) +
                   "; kleap remakes only sharing between a parent "
                   "and the child it created with " +
                   k->flag});
        }
      }
      i = j;
    }
  }
  return rep;
}

Result<void> ValidateSharing(const RestorePlan& plan) {
  std::map<pid_t, const img::PsTask*> by_pid;
  std::map<pid_t, int> children;
  for (auto& t : plan.pstree.tasks()) {
    by_pid[t.pid()] = &t;
    children[t.ppid()]++;
  }
  for (auto& h : plan.pstree.helpers()) children[h.parent()]++;
  for (auto& t : plan.pstree.tasks()) {
    if (pid_t with = pid_t(t.vm_share_with())) {
      auto p = by_pid.find(with);
      if (with != t.ppid() || t.zombie() || p == by_pid.end() || p->second->zombie() ||
          p->second->vm_share_with())
        return Err(EINVAL) << "pstree.img: task " << t.pid() << " shares the address space of "
                           << with << ", which is not its live parent with one of its own";
      if (t.tids_size() != 1 || children.count(t.pid()) || t.sid() != p->second->sid())
        return Err(EINVAL) << "pstree.img: task " << t.pid() << " shares its parent's address "
                           << "space but has threads, children or a session of its own";
      // clone(CLONE_VM) is refused across time namespaces, and so is unsharing one.
      if (t.time_ns().id() != p->second->time_ns().id() ||
          (t.time_ns_for_children().id() && t.time_ns_for_children().id() != t.time_ns().id()))
        return Err(EINVAL) << "pstree.img: task " << t.pid() << " shares its parent's address "
                           << "space but not its time namespace";
    }
    for (int with : {int(t.files_share_with()), int(t.fs_share_with())}) {
      if (!with) continue;
      auto p = by_pid.find(with);
      if (with != t.ppid() || t.zombie() || p == by_pid.end() || p->second->zombie())
        return Err(EINVAL) << "pstree.img: task " << t.pid() << " shares with " << with
                           << ", which is not its live parent";
    }
    if (t.files_share_with()) {
      auto& a = Lookup(plan.fdtables, t.pid()).fds();
      auto& b = Lookup(plan.fdtables, t.ppid()).fds();
      bool same = a.size() == b.size();
      for (int i = 0; same && i < a.size(); ++i)
        same = a[i].fd() == b[i].fd() && a[i].file_id() == b[i].file_id() &&
               a[i].cloexec() == b[i].cloexec();
      if (!same)
        return Err(EINVAL) << FdTableImage(t.pid()) << ": the task shares its parent's fd table, "
                           << "but its fds differ from " << FdTableImage(t.ppid());
    }
    if (t.fs_share_with()) {
      auto& a = Lookup(plan.cores, t.pid());
      auto& b = Lookup(plan.cores, t.ppid());
      if (a.cwd() != b.cwd() || a.root() != b.root() || a.umask() != b.umask())
        return Err(EINVAL) << CoreImage(t.pid()) << ": the task shares its parent's cwd, root and "
                           << "umask, but they differ from " << CoreImage(t.ppid());
    }
  }
  return Ok();
}

}  // namespace kleap
