// File locks of a task (see locks.h).
//
// fdinfo shows a lock on every fd whose open file took it: an flock or OFD lock on
// each fd sharing that open file (in every task holding it: each takes it again,
// which for the same open file changes nothing), a POSIX lock on the fd it was set
// through, with the pid that owns it. A POSIX lock owned by another process than the
// one whose fdinfo shows it (a file shared across fork) is taken by its owner only.
#include "engine/locks.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>

#include <cstring>
#include <sstream>

namespace kleap {
namespace {

Result<std::vector<std::pair<int, std::vector<FdLock>>>> LocksOf(pid_t pid) {
  std::vector<std::pair<int, std::vector<FdLock>>> out;
  std::string dir = ProcPath(pid, "fdinfo");
  DIR* d = opendir(dir.c_str());
  if (!d) return ErrnoError() << "open " << dir;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    auto text = ReadFileToString(dir + "/" + e->d_name);
    if (!text) continue;  // closed meanwhile
    auto locks = ParseFdLocks(*text);
    if (!locks) {
      closedir(d);
      return std::move(locks).error().Context("task " + std::to_string(pid) + " fd " + e->d_name);
    }
    if (!locks->empty()) out.push_back({std::atoi(e->d_name), std::move(*locks)});
  }
  closedir(d);
  return out;
}

}  // namespace

Result<std::vector<FdLock>> ParseFdLocks(const std::string& fdinfo) {
  std::vector<FdLock> out;
  std::istringstream in(fdinfo);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("lock:", 0) != 0) continue;
    // "lock:\t1: POSIX  ADVISORY  WRITE 1234 00:1b:5678 0 EOF"; waiters have "->".
    std::istringstream f(line.substr(5));
    std::string id, kind, mode, rw, pid, dev, start, end;
    f >> id;
    if (id == "->") continue;
    if (!(f >> kind)) return Err(EINVAL) << "fdinfo: bad lock line '" << line << "'";
    if (kind == "->") continue;
    FdLock l;
    l.kind = kind;
    if (kind == "DELEG" || kind == "LEASE") {  // no range, other words
      out.push_back(l);
      continue;
    }
    if (!(f >> mode >> rw >> pid >> dev >> start >> end))
      return Err(EINVAL) << "fdinfo: bad lock line '" << line << "'";
    l.mandatory = mode == "MANDATORY";
    l.write = rw == "WRITE";
    l.pid = std::atoi(pid.c_str());
    l.start = std::strtoull(start.c_str(), nullptr, 10);
    l.end = end == "EOF" ? UINT64_MAX : std::strtoull(end.c_str(), nullptr, 10);
    out.push_back(l);
  }
  return out;
}

std::vector<Problem> CheckLocks(pid_t pid) {
  std::vector<Problem> out;
  auto all = LocksOf(pid);
  if (!all) {
    out.push_back({pid, "task", "file locks", all.error().ToString()});
    return out;
  }
  for (auto& [fd, locks] : *all)
    for (auto& l : locks) {
      std::string obj = "fd " + std::to_string(fd);
      if (l.kind == "LEASE" || l.kind == "DELEG" || l.kind == "BREAKING")
        out.push_back({pid, obj, "a file lease", "file leases are not carried"});
      else if (l.kind != "FLOCK" && l.kind != "POSIX" && l.kind != "OFDLCK")
        out.push_back({pid, obj, l.kind + " lock", "this kind of lock is not carried"});
      else if (l.mandatory)
        out.push_back({pid, obj, "a mandatory lock", "mandatory locks are not carried"});
    }
  return out;
}

Result<void> DumpLocks(const TaskInfo& task, img::TaskCore* core) {
  auto all = KLEAP_TRY(LocksOf(task.pid));
  for (auto& [fd, locks] : all)
    for (auto& l : locks) {
      // A POSIX lock belongs to the process that set it, whatever fd shows it.
      if (l.kind == "POSIX" && l.pid != task.pid) continue;
      img::FileLock* f = core->add_locks();
      f->set_kind(l.kind == "FLOCK"   ? img::FileLock::FLOCK
                  : l.kind == "POSIX" ? img::FileLock::POSIX
                                      : img::FileLock::OFD);
      f->set_fd(fd);
      f->set_write(l.write);
      if (l.kind != "FLOCK") {
        f->set_start(l.start);
        f->set_length(l.end == UINT64_MAX ? 0 : l.end - l.start + 1);
      }
    }
  return Ok();
}

Result<void> ValidateLocks(pid_t pid, const img::TaskCore& core) {
  for (auto& l : core.locks())
    if (l.fd() < 0 || l.start() > uint64_t(INT64_MAX) || l.length() > uint64_t(INT64_MAX))
      return Err(EINVAL) << CoreImage(pid) << ": bad lock on fd " << l.fd();
  return Ok();
}

Result<void> RestoreLocks(RemoteSyscalls& rs, pid_t pid, RemotePtr<> scratch,
                          const img::TaskCore& core) {
  constexpr ArchKind k64 = ArchKind::kX86_64;
  for (auto& l : core.locks()) {
    const char* what = l.kind() == img::FileLock::FLOCK   ? "flock"
                       : l.kind() == img::FileLock::POSIX ? "POSIX lock"
                                                          : "OFD lock";
    auto take = [&]() -> Result<uint64_t> {
      if (l.kind() == img::FileLock::FLOCK)
        return rs.Call(k64, X64Arch::kFlock, RemoteFd(l.fd()),
                       (l.write() ? LOCK_EX : LOCK_SH) | LOCK_NB);
      struct flock fl {};  // the 64-bit layout: the restorer injects 64-bit syscalls
      fl.l_type = l.write() ? F_WRLCK : F_RDLCK;
      fl.l_whence = SEEK_SET;
      fl.l_start = off_t(l.start());
      fl.l_len = off_t(l.length());
      KLEAP_TRY(WriteRemote(pid, scratch, &fl, sizeof fl));
      return rs.Call(k64, X64Arch::kFcntl, RemoteFd(l.fd()),
                     l.kind() == img::FileLock::POSIX ? F_SETLK : F_OFD_SETLK, scratch);
    };
    auto r = take();
    if (!r)
      return std::move(r).error().Context("task " + std::to_string(pid) + " fd " +
                                          std::to_string(l.fd()) + ": take its " + what +
                                          " again (held by someone else now?)");
  }
  return Ok();
}

}  // namespace kleap
