// The engine's public API: what the kleap CLI, and later kleapd and kleap-init, call.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/base/result.h"

namespace kleap {

class ImageWriter;
class ImageReader;

// A resource the engine can't carry, named so an admin can act on it.
struct Problem {
  pid_t pid = 0;
  std::string object;  // "task", "fd 5", "mapping 7f00-7f10 /x", "thread 12"
  std::string what;    // what the object is: "socket:[123] (netlink)"
  std::string reason;  // why it can't be carried
  std::string ToString() const;
};

struct CheckReport {
  std::vector<pid_t> pids;
  size_t threads = 0;
  std::vector<Problem> problems;
  // What is left out on purpose and does not stop a dump, for the admin to know.
  std::vector<std::string> notes;
};

// Walks the tree rooted at `root` through /proc only: no task is stopped or changed.
// The walk leaves out `leave_out` and everything it started: by default the calling
// process (kleap itself, when it is in the tree it checks: `--tree 1`); 0 for none (kleapd,
// which is dumped with the system by a process of its own). A dump always leaves out
// the process that dumps.
Result<CheckReport> CheckTree(pid_t root, pid_t leave_out = getpid());

struct DumpStats {
  double seconds = 0;
  double freeze_seconds = 0;
  uint64_t page_bytes = 0;
  size_t tasks = 0, threads = 0;
};

struct DumpOptions {
  pid_t root = 0;
  bool leave_running = false;
  // Runs once the set is committed, with the tree still frozen and its TCP connections
  // quiet (in repair mode, packets dropped): an upgrade kexecs here. If it returns, the
  // tree runs on as with leave_running, and its error (if any) is the dump's.
  // It gets the dump's numbers so far.
  std::function<Result<void>(const DumpStats&)> while_frozen;
  // Writes images of its own into the set just before the commit, with the tree frozen
  // (an upgrade: the network configuration, the loaded modules).
  std::function<Result<void>(ImageWriter&)> before_commit;
  // The mounts at or under this path ("/" for a whole system's upgrade; empty: none)
  // go in too, with the files of every tmpfs among them.
  std::string mounts;
};

// Freezes and seizes the tree, writes its images and commits the set, then kills the
// tree or lets it run on. On failure the tree runs on exactly as before.
Result<DumpStats> DumpTree(const DumpOptions& opts, ImageWriter& images);

struct RestoreResult {
  pid_t root = 0;
  double seconds = 0;
  uint64_t page_bytes = 0;
  size_t tasks = 0;
  int exit_status = 0;  // of the root, when not detached
};

struct RestoreOptions {
  bool detach = false;
  bool force_vdso_proxy = false;
  // Every blob's bytes were checked already (kleap-init verified the whole store): the
  // images' own checksums are not read through again, only their sizes.
  bool blobs_verified = false;
  // A whole system, restored by PID 1 (kleap-init; or `kleap restore --as-init` as PID 1
  // of a new pid namespace): the caller becomes the set's root, which must be pid 1,
  // and a controller it forks does the rest.
  // - RestoreTree returns only for failures before any task was created.
  // - Afterwards the caller never returns: it becomes the old PID 1, or, when the
  //   restore fails, every restored task is killed and it calls init_fallback (which
  //   must not return) with the reason. If its memory was the old init's already, the
  //   controller execs fallback_init in it instead.
  // - The controller calls init_done after a success, then exits.
  bool as_init = false;
  void (*init_fallback)(const char* why) = nullptr;
  std::function<void(const RestoreResult&)> init_done;
  std::string fallback_init = "/sbin/init";
};

// Rebuilds the tree with the same PIDs and resumes it. On failure no restored task
// is left behind.
Result<RestoreResult> RestoreTree(const RestoreOptions& opts, ImageReader& images);

// Drops the packets of the set's TCP connections, in kleap's network namespace, until a
// restore of the set takes the lock over and lifts it: kleap-init takes it before it
// configures the network again, so that no peer gets a RST from a kernel that doesn't
// know the connection yet.
Result<void> LockSetConnections(ImageReader& images);

// An upgrade's copy of /proc/modules: kleap-init loads them again before anything else.
inline constexpr char kModulesImage[] = "modules.txt";

// Whole systems (mounts.cc): the mounts beside the root filesystem, with the files of
// every tmpfs, dumped with the tree frozen and made again before its tasks.
Result<void> DumpMounts(ImageWriter& images, const std::string& under);
Result<void> RestoreMounts(ImageReader& images);

// Decodes a set to text or JSON.
Result<std::string> InspectImages(ImageReader& images, bool json);
// Checks that a set is whole, consistent and restorable; names the first problem.
Result<void> ValidateImages(ImageReader& images);

}  // namespace kleap
