// The engine's public API: what the kleap CLI, and later kleapd and kleap-init, call.
#pragma once

#include <sys/types.h>

#include <cstdint>
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
Result<CheckReport> CheckTree(pid_t root);

struct DumpOptions {
  pid_t root = 0;
  bool leave_running = false;
};

struct DumpStats {
  double seconds = 0;
  double freeze_seconds = 0;
  uint64_t page_bytes = 0;
  size_t tasks = 0, threads = 0;
};

// Freezes and seizes the tree, writes its images and commits the set, then kills the
// tree or lets it run on. On failure the tree runs on exactly as before.
Result<DumpStats> DumpTree(const DumpOptions& opts, ImageWriter& images);

struct RestoreOptions {
  bool detach = false;
  bool force_vdso_proxy = false;
};

struct RestoreResult {
  pid_t root = 0;
  double seconds = 0;
  uint64_t page_bytes = 0;
  int exit_status = 0;  // of the root, when not detached
};

// Rebuilds the tree with the same PIDs and resumes it. On failure no restored task
// is left behind.
Result<RestoreResult> RestoreTree(const RestoreOptions& opts, ImageReader& images);

// Decodes a set to text or JSON.
Result<std::string> InspectImages(ImageReader& images, bool json);
// Checks that a set is whole, consistent and restorable; names the first problem.
Result<void> ValidateImages(ImageReader& images);

}  // namespace kleap
