// pidfds: see pidfd.h.
#include "engine/pidfd.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <set>

#include "engine/files.h"

namespace kleap {
namespace {

constexpr char kPidfdLink[] = "anon_inode:[pidfd]";
constexpr uint32_t kPidfdThread = O_EXCL;  // PIDFD_THREAD, Linux 6.9
constexpr uint32_t kPidfdNonblock = O_NONBLOCK;

// fdinfo's "Pid:": the process in the reader's pid namespace, -1 when it has died,
// 0 when it is in no namespace the reader sees.
Result<int> PidOf(const FdInfo& info) {
  auto it = info.extra.find("Pid");
  if (it == info.extra.end()) return Err(EINVAL) << "fdinfo shows no Pid";
  char* end = nullptr;
  long v = strtol(it->second.c_str(), &end, 10);
  if (end == it->second.c_str() || v < -1 || v > INT32_MAX)
    return Err(EINVAL) << "bad Pid '" << it->second << "' in fdinfo";
  return int(v);
}

// The tree's processes and threads, by id.
struct TreeIds {
  std::set<pid_t> leaders, threads;
  explicit TreeIds(const std::vector<TaskInfo>& tasks) {
    for (auto& t : tasks) {
      leaders.insert(t.pid);
      threads.insert(t.tids.begin(), t.tids.end());
    }
  }
};

// Why the pidfd of `pid` can't be carried in the tree, or "".
std::string Refusal(int pid, const TreeIds& tree) {
  const std::set<pid_t>& leaders = tree.leaders;
  const std::set<pid_t>& threads = tree.threads;
  if (pid == -1 || leaders.count(pid)) return "";
  if (pid == 0) return "a pidfd of a process in another pid namespace";
  if (threads.count(pid))
    return "a pidfd of thread " + std::to_string(pid) + ", which leads no process of the tree";
  return "a pidfd of " + DescribePid(pid) +
         ", which is not in the tree (after the restore another process could have its pid)";
}

}  // namespace

std::vector<Problem> CheckPidfds(const std::vector<TaskInfo>& tasks) {
  TreeIds tree(tasks);
  std::vector<Problem> out;
  ForEachTreeFd(tasks, [&](const TaskInfo& t, int fd) {
    auto link = ReadLink(ProcPath(t.pid, "fd/" + std::to_string(fd)));
    if (!link || *link != kPidfdLink) return;
    auto info = ReadFdInfo(t.pid, fd);
    if (!info) return;  // closed meanwhile
    auto pid = PidOf(*info);
    std::string why = pid ? Refusal(*pid, tree) : pid.error().ToString();
    if (!why.empty()) out.push_back({t.pid, "fd " + std::to_string(fd), *link, why});
  });
  return out;
}

Result<void> DumpPidfd(DumpContext& ctx, const FdDesc& d, img::FileObject* fo) {
  int pid = KLEAP_TRY_CTX(PidOf(d.info), "pidfd fd " << d.fd << " of task " << d.pid);
  if (std::string why = Refusal(pid, TreeIds(ctx.tree->tasks())); !why.empty())
    return Err(ENOTSUP) << "pidfd fd " << d.fd << " of task " << d.pid << ": " << why;
  img::Pidfd* p = fo->mutable_pidfd();
  p->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  p->set_pid(pid == -1 ? 0 : pid);
  if (pid == -1) p->set_dead_id(uint64_t(d.st.st_ino));
  return Ok();
}

Result<void> ValidatePidfd(const img::FileObject& fo) {
  const img::Pidfd& p = fo.pidfd();
  if ((p.flags() & O_ACCMODE) != O_RDWR ||
      (p.flags() & ~uint32_t(O_ACCMODE | kPidfdNonblock | kPidfdThread)) || p.pid() < 0)
    return Err(EINVAL) << "files.img: pidfd " << fo.id() << ": bad flags 0" << std::oct << p.flags()
                       << std::dec << " or pid " << p.pid();
  return Ok();
}

Result<void> ValidatePidfds(const RestorePlan& plan) {
  std::set<pid_t> tasks;
  for (auto& t : plan.pstree.tasks()) tasks.insert(t.pid());
  for (auto& fo : plan.files.files())
    if (fo.has_pidfd() && fo.pidfd().pid() && !tasks.count(fo.pidfd().pid()))
      return Err(EINVAL) << "files.img: pidfd " << fo.id() << " names pid " << fo.pidfd().pid()
                         << ", which is no task of the set";
  return Ok();
}

Result<UniqueFd> OpenPidfd(const img::FileObject& fo, ImageReader&, OpenFiles& files) {
  const img::Pidfd& p = fo.pidfd();
  if (p.pid()) {
    // The task doesn't exist yet: a placeholder keeps the fd number (OpenLivePidfds).
    UniqueFd hold(open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!hold) return ErrnoError() << "pidfd " << fo.id() << ": open a placeholder";
    files.live_pidfds[fo.id()] = {p.pid(), p.flags()};
    return hold;
  }
  // A dead process's: of a child that exits at once, taken before it is reaped; one
  // child for all the pidfds of one dead process.
  auto [it, added] = files.pidfd_dead.emplace(p.dead_id(), 0);
  if (added) {
    pid_t child = fork();
    if (child < 0) return ErrnoError() << "pidfd " << fo.id() << ": fork a process to die";
    if (child == 0) _exit(0);
    it->second = child;
  }
  UniqueFd fd(
      int(syscall(SYS_pidfd_open, it->second, p.flags() & (kPidfdNonblock | kPidfdThread))));
  if (!fd) return ErrnoError() << "pidfd " << fo.id() << ": pidfd_open";
  return fd;
}

void ReapPidfdChildren(OpenFiles& files) {
  for (auto& [id, pid] : files.pidfd_dead)
    if (pid > 0) waitpid(pid, nullptr, 0);
  files.pidfd_dead.clear();
}

Result<void> OpenLivePidfds(OpenFiles& files) {
  for (auto& [id, want] : files.live_pidfds) {
    auto [pid, flags] = want;
    UniqueFd fd(int(syscall(SYS_pidfd_open, pid, flags & (kPidfdNonblock | kPidfdThread))));
    if (!fd) return ErrnoError() << "pidfd " << id << ": pidfd_open " << pid;
    int at = files.by_id.at(id).get();
    if (dup3(fd.get(), at, O_CLOEXEC) < 0) return ErrnoError() << "pidfd " << id << ": place it";
  }
  return Ok();
}

}  // namespace kleap
