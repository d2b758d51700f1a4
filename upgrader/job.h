// An upgrade job: the pipeline check -> stage -> freeze -> dump -> kexec -> restore,
// run on a worker thread so that kleapd's event loop keeps answering the bus (and
// pinging the watchdog) while a long phase runs. The worker never touches sd-bus: it
// publishes its state under a mutex and wakes the loop through an eventfd; the loop
// turns changes into PropertiesChanged and, at the end, the Completed signal.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/unique_fd.h"

namespace kleap::upgrader {

enum class Phase { kCheck, kStage, kFreeze, kDump, kKexec, kRestore, kDone, kFailed };
const char* PhaseName(Phase p);

// The newest kernel image under `boot` whose release is not `running`, or "".
std::string NewestKernel(const std::string& running, const std::string& boot = "/boot");
// The initrd that goes with a kernel image: /boot/vmlinuz-R -> /boot/initrd.img-R when
// it exists, else "".
std::string InitrdFor(const std::string& kernel);

struct JobRequest {
  std::string kernel, initrd, cmdline;  // empty: the newest kernel, its initrd, /proc/cmdline
  bool dry_run = false;
  pid_t tree = 1;               // the tree to carry (the whole of userspace: PID 1)
  std::string memstore;         // region spec, e.g. "pmem:/dev/pmem0"
  std::string entry;            // how the new kernel enters kleap-init: "init=..." / "rdinit=..."
  std::string running;          // the running kernel release
  uid_t uid = 0;                // who asked
  unsigned phase_delay_ms = 0;  // test hook (KLEAP_TEST_PHASE_DELAY_MS): a pause per phase
};

// What a job found out on the way; becomes Completed's details and LastUpgrade.
struct JobReport {
  bool success = false;
  std::string message;     // one line for a human
  std::string error_name;  // a D-Bus error name on failure
  bool dry_run = false;
  Phase failed_in = Phase::kCheck;  // the phase it failed in; kDone on success
  std::string kernel, initrd, cmdline;
  uint32_t tasks = 0, threads = 0;
  uint64_t memory_bytes = 0;  // estimated state to carry
  double seconds = 0;
  // After an upgrade: the pause as this process saw it (CLOCK_REALTIME, from just
  // before the freeze to its first instruction on the new kernel), and the releases.
  double downtime_seconds = 0;
  std::string old_release, new_release;
};

struct JobState {
  Phase phase = Phase::kCheck;
  uint32_t progress = 0;
  bool cancelable = true;
  bool finished = false;
  JobReport report;
};

// kleapd --upgrade-dump: dumps the tree into the store and, with it still frozen,
// kexecs into the staged kernel. Returns (1) only when that failed; the tree runs on.
int RunUpgradeDump(const std::string& store, pid_t tree);

class Job {
 public:
  // `wake` is written (an eventfd) whenever the state changes.
  Job(uint32_t id, JobRequest req, int wake_fd);
  ~Job();
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  void Start();
  // Asks the job to stop. False when it is past the point of no return (or over).
  bool Cancel(uid_t by);
  JobState state() const;
  // The states the worker went through since the last call, oldest first: the loop
  // emits one PropertiesChanged per phase, so no client misses one.
  std::vector<JobState> TakeChanges();
  uint32_t id() const { return id_; }
  const std::string& path() const { return path_; }
  const JobRequest& request() const { return req_; }
  // Joins the worker once the state says finished.
  void Join();

 private:
  void Run();
  void Set(Phase p, uint32_t progress, bool cancelable);
  // Sleeps the test hook's pause; false when canceled meanwhile.
  bool Pause();
  void Finish(JobReport r);

  const uint32_t id_;
  const std::string path_;
  const JobRequest req_;
  const int wake_fd_;
  mutable std::mutex mu_;
  JobState state_;
  std::vector<JobState> changes_;
  std::atomic<bool> cancel_{false};
  std::atomic<uid_t> canceled_by_{0};
  std::thread worker_;
};

}  // namespace kleap::upgrader
