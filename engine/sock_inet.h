// Inet sockets (TCP and UDP, IPv4 and IPv6): what dump, restore and the fd kind
// table need beyond the per-kind steps in files.h. The two sides live in sock_inet.cc.
#pragma once

#include <utility>
#include <vector>

#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
#include "engine/images/files.pb.h"
#include "engine/task.h"

namespace kleap {

struct OpenFiles;

// The TCP connections dump put in repair mode, as copies (pidfd_getfd) of the tasks'
// fds. Unless Keep() is called (the set is committed and the tree killed: the sockets
// then close in repair mode, silently), they leave repair mode again without a window
// probe, so the tree runs on exactly as before.
class SockRepairSet {
 public:
  SockRepairSet() = default;
  ~SockRepairSet() { Undo(); }
  SockRepairSet(const SockRepairSet&) = delete;
  SockRepairSet& operator=(const SockRepairSet&) = delete;

  // `reuse` is its SO_REUSEADDR, which leaving repair mode clears.
  void Add(UniqueFd fd, int reuse) { fds_.push_back({std::move(fd), reuse}); }
  // Takes every socket out of repair mode now.
  void Undo();
  // Closes the copies and leaves the sockets in repair mode.
  void Keep() { fds_.clear(); }

 private:
  std::vector<std::pair<UniqueFd, int>> fds_;
};

// The network lock (engine/net/netlock.h) over the inet sockets of a tree or of a
// set, in kleap's own network namespace. It goes when this goes, unless kept.
class SockLock {
 public:
  SockLock() = default;
  ~SockLock();
  SockLock(SockLock&& o) noexcept : on_(o.on_) { o.on_ = false; }
  SockLock& operator=(SockLock&& o) noexcept {
    std::swap(on_, o.on_);
    return *this;
  }

  // Locks the local endpoints of every inet socket the tasks hold; no lock when none.
  static Result<SockLock> ForTasks(const std::vector<TaskInfo>& tasks);
  // Locks the endpoints of every inet socket in files.img; no lock when none.
  static Result<SockLock> ForFiles(const img::FileTable& files);
  // Leaves the lock on for whoever restores the set.
  void Keep() { on_ = false; }
  Result<void> Remove();

 private:
  bool on_ = false;
};

// What check says of the tree's sockets without refusing them: the connections in
// TIME_WAIT on the tree's ports (sock_diag), which belong to the kernel and stay behind.
std::vector<std::string> SocketNotes(const std::vector<TaskInfo>& tasks);

// Restore: every TCP connection the open phase made in repair mode leaves it, then gets
// the data it had not sent yet and, when the task had shut it down, its FIN. Runs once
// every task is rebuilt, before the lock is removed.
// Before any is opened: the sockets that share a port with one that has SO_REUSEPORT
// (a task may clear it once bound; binding again needs it on, for a moment).
void PlanReusePort(const img::FileTable& files, OpenFiles* open);
Result<void> FinishSockets(const img::FileTable& files, const OpenFiles& open);
// Restore, once the lock is removed: a connection whose peer had closed it (CLOSE_WAIT,
// LAST_ACK, CLOSING) gets the peer's FIN again, as a segment from the peer's address
// made on a raw socket (repair mode can't queue a FIN), and reaches its state; one in
// LAST_ACK then sends its own FIN.
Result<void> SendPeerFins(const img::FileTable& files, const OpenFiles& open);

}  // namespace kleap
