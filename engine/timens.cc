// Time namespaces.
//
// A task has two: the one its clocks read (ns/time) and the one its children will be
// born in (ns/time_for_children); unshare(CLONE_NEWTIME) changes only the second.
// /proc/PID/timens_offsets shows (and, until a task is in it, sets) the offsets of the
// second. A namespace of the tree is made again at restore exactly the way it came to
// be: the task whose children go in it unshares a new one and writes its offsets, then
// creates them; the root's own namespace is made so by the restorer. The offsets stay as
// dumped: the clocks of the namespace run on through the downtime, as they did outside.
//
// Refused: a namespace a task outside the tree is in (or makes children in), one a task
// entered with setns (it is neither its parent's nor the one its parent made), and a
// root's namespace whose offsets no task shows any more (the root unshared another one
// and no task in the tree makes children in the first).
#include "engine/timens.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <set>
#include <sstream>

#include "engine/base/clock.h"

namespace kleap {
namespace {

constexpr int64_t kNs = 1000000000;

// The nsfs inode of a time namespace link, 0 when it can't be read (a zombie).
uint64_t NsIno(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 ? uint64_t(st.st_ino) : 0;
}

struct TaskNs {
  uint64_t own = 0, children = 0;  // 0: kleap's own
};

std::map<pid_t, TaskNs> ReadTaskNs(const std::vector<TaskInfo>& tasks) {
  uint64_t mine = NsIno("/proc/self/ns/time");
  std::map<pid_t, TaskNs> out;
  for (auto& t : tasks) {
    if (t.zombie) continue;
    TaskNs n;
    n.own = NsIno(ProcPath(t.pid, "ns/time"));
    n.children = NsIno(ProcPath(t.pid, "ns/time_for_children"));
    if (n.own == mine) n.own = 0;
    if (n.children == mine) n.children = 0;
    out[t.pid] = n;
  }
  return out;
}

// The task that shows the offsets of namespace `id` in its timens_offsets.
pid_t OffsetsHolder(const std::map<pid_t, TaskNs>& ns, uint64_t id) {
  for (auto& [pid, n] : ns)
    if (n.children == id) return pid;
  return 0;
}

Result<img::TimeNs> ReadOffsets(pid_t pid, uint64_t id) {
  std::string path = ProcPath(pid, "timens_offsets");
  std::string text = KLEAP_TRY(ReadFileToString(path));
  img::TimeNs out;
  out.set_id(id);
  std::istringstream in(text);
  std::string clock;
  int64_t sec, nsec;
  int seen = 0;
  while (in >> clock >> sec >> nsec) {
    int64_t v = sec * kNs + nsec;
    if (clock == "monotonic" || clock == "1") {
      out.set_monotonic_ns(v);
      seen |= 1;
    } else if (clock == "boottime" || clock == "7") {
      out.set_boottime_ns(v);
      seen |= 2;
    }
  }
  if (seen != 3)
    return Err(EINVAL) << path << ": no monotonic and boottime offsets in '" << text << "'";
  return out;
}

}  // namespace

std::vector<Problem> CheckTimeNamespaces(const std::vector<TaskInfo>& tasks) {
  std::vector<Problem> out;
  auto ns = ReadTaskNs(tasks);
  std::map<uint64_t, pid_t> member;  // a namespace of the tree -> one task in or under it
  for (auto& [pid, n] : ns) {
    if (n.own) member.emplace(n.own, pid);
    if (n.children) member.emplace(n.children, pid);
  }
  if (member.empty()) return out;
  std::map<pid_t, const TaskInfo*> by_pid;
  for (auto& t : tasks) by_pid[t.pid] = &t;
  std::map<uint64_t, int> makers;
  for (auto& t : tasks) {
    auto it = ns.find(t.pid);
    if (it == ns.end()) continue;
    const TaskNs& n = it->second;
    if (n.children != n.own) makers[n.children]++;
    if (n.own && !n.children)
      out.push_back({t.pid, "task", "time namespace",
                     "the task makes children in kleap's own time namespace (setns), not in its "
                     "own"});
    auto parent = ns.find(t.ppid);
    if (t.pid == tasks[0].pid) {
      if (n.own) makers[n.own]++;  // the restorer makes it
      if (n.own && n.children != n.own && !OffsetsHolder(ns, n.own))
        out.push_back({t.pid, "task", "time namespace",
                       "the root unshared another time namespace since it was in this one, and no "
                       "task shows this one's offsets any more"});
    } else if (parent != ns.end() && n.own != parent->second.own &&
               n.own != parent->second.children) {
      out.push_back({t.pid, "task", "time namespace",
                     "the task entered a time namespace (setns) that is neither its parent's "
                     "nor the one its parent makes children in"});
    }
  }
  for (auto& [id, count] : makers)
    if (id && count > 1)
      out.push_back({member[id], "task", "time namespace",
                     "the time namespace was entered with setns by " + std::to_string(count) +
                         " tasks that each make children in it; kleap makes it once"});
  // Namespaces go whole: nobody outside the tree may be in one.
  std::set<pid_t> in_tree;
  for (auto& t : tasks) in_tree.insert(t.pid);
  auto pids = ListPids();
  if (!pids) return out;
  for (pid_t pid : *pids) {
    if (in_tree.count(pid)) continue;
    for (const char* link : {"ns/time", "ns/time_for_children"}) {
      uint64_t id = NsIno(ProcPath(pid, link));
      auto m = member.find(id);
      if (!id || m == member.end()) continue;
      out.push_back({m->second, "task", "time namespace",
                     DescribePid(pid) +
                         ", outside the tree, is in the tree's time namespace or makes children "
                         "in it"});
      member.erase(m);  // one name is enough
      break;
    }
  }
  return out;
}

Result<void> DumpTimeNamespaces(const std::vector<TaskInfo>& tasks, img::PsTree* tree) {
  auto ns = ReadTaskNs(tasks);
  std::map<uint64_t, img::TimeNs> offsets;
  auto get = [&](uint64_t id) -> Result<img::TimeNs> {
    auto it = offsets.find(id);
    if (it != offsets.end()) return it->second;
    pid_t holder = OffsetsHolder(ns, id);
    if (!holder)
      return Err(ENOTSUP) << "time namespace " << id << ": no task of the tree shows its offsets";
    auto o = KLEAP_TRY_CTX(ReadOffsets(holder, id), "task " << holder);
    offsets[id] = o;
    return o;
  };
  for (auto& ps : *tree->mutable_tasks()) {
    auto it = ns.find(ps.pid());
    if (it == ns.end()) continue;
    if (it->second.own) *ps.mutable_time_ns() = KLEAP_TRY(get(it->second.own));
    if (it->second.children)
      *ps.mutable_time_ns_for_children() = KLEAP_TRY(get(it->second.children));
  }
  return Ok();
}

Result<void> ValidateTimeNamespaces(const img::PsTree& tree) {
  std::map<uint64_t, img::TimeNs> seen;
  std::map<uint64_t, int> makers;
  std::map<int32_t, const img::PsTask*> by_pid;
  for (auto& t : tree.tasks()) by_pid[t.pid()] = &t;
  for (auto& t : tree.tasks()) {
    for (const img::TimeNs* n : {&t.time_ns(), &t.time_ns_for_children()}) {
      if (!n->id()) continue;
      // The kernel takes offsets within about ±146 years (KTIME_SEC_MAX / 2).
      constexpr int64_t kMax = int64_t(1) << 62;
      if (n->monotonic_ns() > kMax || n->monotonic_ns() < -kMax || n->boottime_ns() > kMax ||
          n->boottime_ns() < -kMax)
        return Err(EINVAL) << "pstree.img: task " << t.pid() << ": time namespace " << n->id()
                           << " has offsets out of range";
      auto [it, added] = seen.emplace(n->id(), *n);
      if (!added && (it->second.monotonic_ns() != n->monotonic_ns() ||
                     it->second.boottime_ns() != n->boottime_ns()))
        return Err(EINVAL) << "pstree.img: time namespace " << n->id()
                           << " has two sets of offsets";
    }
    if (t.zombie()) continue;
    uint64_t own = t.time_ns().id(), children = t.time_ns_for_children().id();
    if (children != own) makers[children]++;
    if (own && !children)
      return Err(EINVAL) << "pstree.img: task " << t.pid() << " makes children in kleap's own "
                         << "time namespace";
    if (t.ppid() == 0) {
      makers[own]++;
      continue;
    }
    auto p = by_pid.find(t.ppid());
    if (p != by_pid.end() && own != p->second->time_ns().id() &&
        own != p->second->time_ns_for_children().id())
      return Err(EINVAL) << "pstree.img: task " << t.pid() << " is in time namespace " << own
                         << ", which its parent neither is in nor makes children in";
  }
  for (auto& [id, n] : makers)
    if (id && n != 1)
      return Err(EINVAL) << "pstree.img: time namespace " << id << " is made " << n << " times";
  return Ok();
}

Result<void> MakeTimeNamespace(const img::TimeNs& ns) {
  if (unshare(CLONE_NEWTIME) < 0) return ErrnoError() << "unshare(CLONE_NEWTIME)";
  char text[128];
  auto split = [](int64_t v, int64_t* sec, int64_t* nsec) {
    *sec = v / kNs;
    *nsec = v % kNs;
    if (*nsec < 0) {
      *nsec += kNs;
      *sec -= 1;
    }
  };
  int64_t ms, mn, bs, bn;
  split(ns.monotonic_ns(), &ms, &mn);
  split(ns.boottime_ns(), &bs, &bn);
  int len = snprintf(text, sizeof text, "monotonic %lld %lld\nboottime %lld %lld\n", (long long)ms,
                     (long long)mn, (long long)bs, (long long)bn);
  int fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError() << "open /proc/self/timens_offsets";
  ssize_t n = write(fd, text, size_t(len));
  int err = errno;
  close(fd);
  if (n != len) {
    errno = err;
    return ErrnoError() << "time namespace " << ns.id() << ": write offsets (monotonic "
                        << ns.monotonic_ns() << " ns, boottime " << ns.boottime_ns()
                        << " ns) to /proc/self/timens_offsets";
  }
  return Ok();
}

}  // namespace kleap
