// Signal-driven I/O (fown.h). The owner is read from a copy of the fd (the same open
// file description): F_GETOWN_EX, F_GETSIG, and F_GETOWNER_UIDS for the credentials
// the kernel checks before it sends (sigio_perm: root, or the setter's uid or euid
// matching the target's uid or saved uid). At restore a helper of the controller sets
// them last, before the tasks resume: each owner with the setter's uid and euid, so the
// same signals reach the same tasks, then O_ASYNC through the task's fd number, which
// the kernel puts in si_fd (a tty's fasync takes an owner when there is none: it is
// cleared again).
#include "engine/fown.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "engine/base/log.h"
#include "engine/base/lookup.h"
#include "engine/base/run_child.h"
#include "engine/files.h"

#ifndef F_GETOWNER_UIDS
#define F_GETOWNER_UIDS 17
#endif

namespace kleap {
namespace {

std::string OwnerName(int type, int pid) {
  return std::string(type == F_OWNER_PGRP  ? "process group "
                     : type == F_OWNER_TID ? "thread "
                                           : "pid ") +
         std::to_string(pid);
}

// The threads, processes and groups an owner may name.
struct OwnerTargets {
  std::set<pid_t> pids, tids, groups;
  void Add(pid_t pid, pid_t pgid, const std::vector<pid_t>& task_tids) {
    pids.insert(pid);
    tids.insert(task_tids.begin(), task_tids.end());
    groups.insert(pgid);
  }
  bool Has(int type, pid_t pid) const {
    return (type == F_OWNER_PGRP ? groups : type == F_OWNER_TID ? tids : pids).count(pid) != 0;
  }
};

}  // namespace

Result<void> DumpFileOwner(int fd, bool async, img::FileObject* fo) {
  f_owner_ex o{};
  if (fcntl(fd, F_GETOWN_EX, &o) < 0) return ErrnoError() << "F_GETOWN_EX";
  int sig = fcntl(fd, F_GETSIG);
  if (sig < 0) return ErrnoError() << "F_GETSIG";
  fo->set_async(async);
  if (!o.pid && !sig) return Ok();
  img::FileOwner* w = fo->mutable_owner();
  w->set_type(o.type);
  w->set_pid(o.pid);
  w->set_signum(sig);
  uid_t uids[2] = {0, 0};
  if (o.pid && fcntl(fd, F_GETOWNER_UIDS, uids) < 0) return ErrnoError() << "F_GETOWNER_UIDS";
  w->set_uid(uids[0]);
  w->set_euid(uids[1]);
  return Ok();
}

std::vector<Problem> CheckFileOwners(const std::vector<TaskInfo>& tasks) {
  OwnerTargets known;
  for (auto& t : tasks)
    if (!t.zombie) known.Add(t.pid, t.pgid, t.tids);
  std::vector<Problem> out;
  ForEachTreeFd(tasks, [&](const TaskInfo& t, int fd) {
    auto copy = GrabFd(t.pid, fd);
    if (!copy) return;  // gone meanwhile
    f_owner_ex o{};
    if (fcntl(copy->get(), F_GETOWN_EX, &o) < 0 || !o.pid) return;
    if (known.Has(o.type, o.pid)) return;
    auto link = ReadLink(ProcPath(t.pid, "fd/" + std::to_string(fd)));
    out.push_back({t.pid, "fd " + std::to_string(fd), link ? *link : "?",
                   "its signals (O_ASYNC, F_SETOWN) go to " + OwnerName(o.type, o.pid) +
                       ", which is not in the tree"});
  });
  return out;
}

Result<void> ValidateFileOwners(const RestorePlan& plan) {
  OwnerTargets known;
  for (auto& t : plan.pstree.tasks())
    if (!t.zombie()) known.Add(t.pid(), t.pgid(), {t.tids().begin(), t.tids().end()});
  for (auto& fo : plan.files.files()) {
    if (!fo.has_owner()) continue;
    const img::FileOwner& o = fo.owner();
    auto bad = [&]() {
      Error e(EINVAL);
      e << "files.img: file " << fo.id() << ": owner ";
      return e;
    };
    if (o.type() != F_OWNER_TID && o.type() != F_OWNER_PID && o.type() != F_OWNER_PGRP)
      return bad() << "type " << o.type();
    if (o.signum() < 0 || o.signum() > SIGRTMAX) return bad() << "signal " << o.signum();
    if (o.pid() < 0 || (o.pid() && !known.Has(o.type(), o.pid())))
      return bad() << OwnerName(o.type(), o.pid()) << " is not in the set";
  }
  return Ok();
}

Result<void> SetFileOwners(const RestorePlan& plan, const OpenFiles& open) {
  // The fd number the kernel names in a signal's si_fd is the one O_ASYNC was set
  // through, which nothing shows: the lowest of the first task that holds the file.
  std::map<uint64_t, int> number;
  for (auto& t : plan.pstree.tasks()) {
    auto table = plan.fdtables.find(t.pid());
    if (table == plan.fdtables.end()) continue;
    std::map<uint64_t, int> mine;
    for (auto& e : table->second.fds()) {
      auto [it, added] = mine.emplace(e.file_id(), e.fd());
      if (!added) it->second = std::min(it->second, e.fd());
    }
    for (auto& [id, fd] : mine) number.emplace(id, fd);
  }
  std::vector<std::pair<const img::FileObject*, int>> todo;  // with the controller's fd
  int top = 0;
  for (auto& fo : plan.files.files()) {
    if (!fo.async() && !fo.has_owner()) continue;
    todo.push_back({&fo, Lookup(open.by_id, fo.id()).get()});
    if (auto n = number.find(fo.id()); n != number.end()) top = std::max(top, n->second + 1);
  }
  if (todo.empty()) return Ok();
  return RunInChild("set the owners of files", [&]() -> Result<void> {
    // A table of our own: every fd involved above the numbers first.
    for (auto& [fo, fd] : todo)
      if ((fd = fcntl(fd, F_DUPFD_CLOEXEC, top)) < 0) return ErrnoError() << "move an fd up";
    for (auto& [fo, moved] : todo) {
      const img::FileOwner& o = fo->owner();  // none: clears what a tty's fasync takes
      std::string who = "file " + std::to_string(fo->id()) + ": ";
      int fd = moved;
      if (auto n = number.find(fo->id()); fo->async() && n != number.end()) {
        if (dup2(moved, n->second) < 0) return ErrnoError() << who << "place as fd " << n->second;
        fd = n->second;
      }
      auto set_owner = [&](int type, pid_t pid) -> Result<void> {
        // The kernel keeps the uid and euid of whoever sets the owner; the saved uid stays
        // root to come back.
        if (setresuid(o.uid(), o.euid(), 0) < 0)
          return ErrnoError() << who << "take uid " << o.uid() << " and euid " << o.euid();
        f_owner_ex ex{__pid_type(type), pid};
        if (fcntl(fd, F_SETOWN_EX, &ex) < 0)
          return ErrnoError() << who << "set its owner to " << OwnerName(type, pid);
        if (setresuid(0, 0, 0) < 0) return ErrnoError() << who << "back to root";
        return Ok();
      };
      int type = o.pid() ? o.type() : F_OWNER_PID;
      KLEAP_TRY(set_owner(type, o.pid()));
      if (fo->async()) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_ASYNC) < 0)
          return ErrnoError() << who << "set O_ASYNC";
        if (!o.pid()) KLEAP_TRY(set_owner(type, 0));
      }
      if (fcntl(fd, F_SETSIG, o.signum()) < 0)
        return ErrnoError() << who << "F_SETSIG " << o.signum();
      if (fd != moved) close(fd);
    }
    return Ok();
  });
}

}  // namespace kleap
