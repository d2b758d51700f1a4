// The upgrade pipeline, phase by phase, on the job's worker thread.
#include "upgrader/job.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <sstream>
#include <utility>

#include "engine/base/proc.h"
#include "engine/base/unique_fd.h"
#include "engine/engine.h"
#include "engine/images/image_set.h"
#include "engine/net/netconf.h"
#include "imagestore/store_image_set.h"
#include "memstore/store.h"
#include "upgrader/errors.h"
#include "upgrader/kexec.h"

namespace kleap::upgrader {

const char* PhaseName(Phase p) {
  switch (p) {
    case Phase::kCheck:
      return "check";
    case Phase::kStage:
      return "stage";
    case Phase::kFreeze:
      return "freeze";
    case Phase::kDump:
      return "dump";
    case Phase::kKexec:
      return "kexec";
    case Phase::kRestore:
      return "restore";
    case Phase::kDone:
      return "done";
    case Phase::kFailed:
      return "failed";
  }
  return "?";
}

std::string NewestKernel(const std::string& running, const std::string& boot) {
  DIR* d = opendir(boot.c_str());
  if (!d) return "";
  std::string best;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.rfind("vmlinuz-", 0) != 0 || name.substr(8) == running) continue;
    if (best.empty() || strverscmp(name.c_str(), best.c_str()) > 0) best = name;
  }
  closedir(d);
  return best.empty() ? "" : boot + "/" + best;
}

std::string InitrdFor(const std::string& kernel) {
  auto slash = kernel.rfind('/');
  std::string dir = slash == std::string::npos ? "." : kernel.substr(0, slash);
  std::string base = slash == std::string::npos ? kernel : kernel.substr(slash + 1);
  if (base.rfind("vmlinuz-", 0) != 0) return "";
  std::string initrd = dir + "/initrd.img-" + base.substr(8);
  return access(initrd.c_str(), R_OK) == 0 ? initrd : "";
}

namespace {

// A failure with the D-Bus error name the caller gets.
struct Failure {
  const char* name;
  std::string message;
};

Failure FromError(const Error& e) {
  return {ErrorNameFor(e.code()), e.ToString()};
}

// The private memory a tree would put into the store: anonymous and shmem pages, as
// /proc/PID/smaps_rollup counts them. An estimate: the dump also writes metadata.
uint64_t EstimateMemory(const std::vector<pid_t>& pids) {
  uint64_t kib = 0;
  for (pid_t pid : pids) {
    auto text = ReadFileToString("/proc/" + std::to_string(pid) + "/smaps_rollup");
    if (!text) continue;  // gone meanwhile: the freeze will notice
    std::istringstream in(*text);
    std::string key;
    uint64_t v;
    while (in >> key) {
      if ((key == "Anonymous:" || key == "Pss_Shmem:") && in >> v) kib += v;
    }
  }
  return kib * 1024;
}

// check: the tree can be carried and the target kernel (and initrd) is there. Fills the
// report's kernel, initrd, tasks, threads and memory estimate.
std::optional<Failure> CheckPhase(const JobRequest& req, JobReport* rep) {
  if (kill(req.tree, 0) < 0 && errno == ESRCH)
    return Failure{kErrTaskGone, "no process " + std::to_string(req.tree) + " to carry"};
  rep->kernel = req.kernel;
  if (rep->kernel.empty()) {
    rep->kernel = NewestKernel(req.running);
    if (rep->kernel.empty())
      return Failure{kErrKernelNotFound,
                     "no kernel under /boot other than the running " + req.running};
  }
  if (access(rep->kernel.c_str(), R_OK) < 0)
    return Failure{kErrKernelNotFound, "kernel " + rep->kernel + ": " + strerror(errno)};
  rep->initrd = req.kernel.empty() && req.initrd.empty() ? InitrdFor(rep->kernel) : req.initrd;
  if (!rep->initrd.empty() && access(rep->initrd.c_str(), R_OK) < 0)
    return Failure{kErrKernelNotFound, "initrd " + rep->initrd + ": " + strerror(errno)};
  auto check = CheckTree(req.tree, /*leave_out=*/0);  // kleapd is carried too
  if (!check) return FromError(check.error());
  rep->tasks = uint32_t(check->pids.size());
  rep->threads = uint32_t(check->threads);
  if (!check->problems.empty()) {
    std::string msg = std::to_string(check->problems.size()) +
                      " thing(s) can't be carried: " + check->problems[0].ToString();
    if (check->problems.size() > 1) msg += " (and more: run upgrade-kernel check)";
    return Failure{kErrNotDumpable, msg};
  }
  rep->memory_bytes = EstimateMemory(check->pids);
  return std::nullopt;
}

// stage, before the kernel is loaded: the store can hold the tree, nobody else's kernel
// is staged, and the new kernel's command line. Fills the report's cmdline.
std::optional<Failure> PrepareStage(const JobRequest& req, JobReport* rep) {
  auto region = memstore::Region::Open(req.memstore);
  if (!region) return FromError(Error(region.error()).Context("memstore"));
  // The images carry some metadata beside the pages: keep an eighth free.
  if ((*region)->size() - (*region)->size() / 8 < rep->memory_bytes)
    return Failure{kErrMemstoreTooSmall, "memstore " + req.memstore + " holds " +
                                             std::to_string((*region)->size() >> 20) +
                                             " MiB; the tree needs about " +
                                             std::to_string(rep->memory_bytes >> 20) +
                                             " MiB plus an eighth for metadata"};
  region->reset();  // closed: an fd on the store would be carried with kleapd
  auto loaded = IsLoaded();
  if (!loaded)
    return Failure{kErrKexecUnavailable,
                   "the running kernel can't kexec (" + loaded.error().ToString() + ")"};
  if (*loaded)
    return Failure{kErrUpgradeInProgress,
                   "a kexec kernel is already loaded by someone else; kleap leaves it alone "
                   "(kleap-kexec unload removes it)"};
  CmdlineOptions co;
  co.current = req.cmdline;
  if (co.current.empty()) {
    auto cur = ReadFileToString("/proc/cmdline");
    if (!cur) return FromError(cur.error());
    co.current = std::string(Trim(*cur));
  }
  co.store = req.memstore;
  co.entry = req.entry;
  auto cmdline = BuildCmdline(co);
  if (!cmdline) return FromError(cmdline.error());
  rep->cmdline = *cmdline;
  return std::nullopt;
}

}  // namespace

Job::Job(uint32_t id, JobRequest req, int wake_fd)
    : id_(id),
      path_("/org/kleap/Upgrader1/job/" + std::to_string(id)),
      req_(std::move(req)),
      wake_fd_(wake_fd) {}

Job::~Job() {
  cancel_ = true;
  if (worker_.joinable()) worker_.join();
}

void Job::Start() {
  worker_ = std::thread([this] { Run(); });
}

void Job::Join() {
  if (worker_.joinable()) worker_.join();
}

bool Job::Cancel(uid_t by) {
  std::lock_guard lock(mu_);
  if (state_.finished || !state_.cancelable) return false;
  canceled_by_ = by;
  cancel_ = true;
  return true;
}

JobState Job::state() const {
  std::lock_guard lock(mu_);
  return state_;
}

std::vector<JobState> Job::TakeChanges() {
  std::lock_guard lock(mu_);
  return std::exchange(changes_, {});
}

void Job::Set(Phase p, uint32_t progress, bool cancelable) {
  {
    std::lock_guard lock(mu_);
    state_.phase = p;
    state_.progress = progress;
    state_.cancelable = cancelable;
    changes_.push_back(state_);
  }
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
}

bool Job::Pause() {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(req_.phase_delay_ms);
  while (!cancel_ && std::chrono::steady_clock::now() < end) usleep(10000);
  return !cancel_;
}

void Job::Finish(JobReport r) {
  {
    std::lock_guard lock(mu_);
    r.failed_in = r.success ? Phase::kDone : state_.phase;
    r.dry_run = req_.dry_run;
    state_.report = std::move(r);
    state_.phase = state_.report.success ? Phase::kDone : Phase::kFailed;
    if (state_.report.success) state_.progress = 100;
    state_.cancelable = false;
    state_.finished = true;
    changes_.push_back(state_);
  }
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
}

void Job::Run() {
  auto t0 = std::chrono::steady_clock::now();
  JobReport rep;
  bool staged = false;
  auto fail = [&](Failure f) {
    if (staged) {
      // Leave the machine as it was: no kernel left loaded by us.
      if (auto r = Unload(); !r)
        f.message += "; and unloading the staged kernel failed: " + r.error().ToString();
    }
    rep.success = false;
    rep.error_name = f.name;
    rep.message = f.message;
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Finish(rep);
  };
  auto canceled = [&] {
    return Failure{kErrCanceled, "canceled by uid " + std::to_string(canceled_by_.load()) +
                                     "; nothing was changed"};
  };

  // check: the tree can be carried and the target kernel is there.
  Set(Phase::kCheck, 0, true);
  if (auto f = CheckPhase(req_, &rep)) return fail(*f);
  Set(Phase::kCheck, 10, true);
  if (!Pause()) return fail(canceled());

  // stage: the store can hold the tree, and the new kernel is loaded.
  Set(Phase::kStage, 15, true);
  if (auto f = PrepareStage(req_, &rep)) return fail(*f);
  if (cancel_) return fail(canceled());
  if (auto r = Load({rep.kernel, rep.initrd, rep.cmdline}); !r) return fail(FromError(r.error()));
  staged = true;
  Set(Phase::kStage, 30, true);
  if (!Pause()) return fail(canceled());

  if (req_.dry_run) {
    staged = false;
    if (auto r = Unload(); !r) return fail(FromError(Error(r.error()).Context("unload")));
    rep.success = true;
    std::ostringstream m;
    m << "dry run: " << rep.tasks << " tasks (" << rep.threads << " threads, about "
      << (rep.memory_bytes >> 20) << " MiB) can be carried into " << rep.kernel
      << "; it was staged and unloaded again";
    rep.message = m.str();
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return Finish(rep);
  }
  // freeze, dump, kexec: a fresh, single-threaded process (this very binary, see
  // RunUpgradeDump) freezes every task, this one included, frozen in the wait below,
  // dumps them into the store and kexecs. Coming back from that wait on another boot
  // means the restore on the new kernel brought this process back.
  Set(Phase::kFreeze, 40, false);
  if (cancel_) return fail(canceled());
  std::string boot = BootId();
  UniqueFd log(memfd_create("kleapd-upgrade-dump", MFD_CLOEXEC));
  if (!log) return fail(FromError(ErrnoError() << "memfd for the dump's messages"));
  std::string tree = std::to_string(req_.tree);
  const char* argv[] = {"kleapd", "--upgrade-dump", "--store", req_.memstore.c_str(),
                        "--tree", tree.c_str(),     nullptr};
  timespec frozen_at;
  clock_gettime(CLOCK_REALTIME, &frozen_at);
  pid_t child = fork();
  if (child == 0) {
    dup2(log.get(), STDOUT_FILENO);
    dup2(log.get(), STDERR_FILENO);
    execv("/proc/self/exe", const_cast<char* const*>(argv));
    _exit(127);
  }
  if (child < 0) return fail(FromError(ErrnoError() << "fork the dump"));
  int st = 0;
  pid_t w;
  do w = waitpid(child, &st, 0);
  while (w < 0 && errno == EINTR);
  if (BootId() != boot) {
    // On the new kernel: the dump's process was left out of the set, and is gone.
    staged = false;
    timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    rep.downtime_seconds =
        double(now.tv_sec - frozen_at.tv_sec) + double(now.tv_nsec - frozen_at.tv_nsec) / 1e9;
    utsname u;
    uname(&u);
    rep.old_release = req_.running;
    rep.new_release = u.release;
    rep.success = true;
    std::ostringstream m;
    m << "upgraded from " << rep.old_release << " to " << rep.new_release << ": " << rep.tasks
      << " tasks (" << rep.threads << " threads, about " << (rep.memory_bytes >> 20)
      << " MiB) carried; downtime " << rep.downtime_seconds << " s";
    rep.message = m.str();
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return Finish(rep);
  }
  // Still here: the dump failed and thawed everything, or the kexec did not happen.
  auto said = ReadFileToString("/proc/self/fd/" + std::to_string(log.get()));
  std::string why(Trim(said ? *said : std::string()));
  if (auto nl = why.rfind('\n'); nl != std::string::npos) why = why.substr(nl + 1);
  if (why.empty())
    why = "the dump process ended with status " + std::to_string(st) + " and said nothing";
  return fail({kErrFailed, why + "; the system was thawed as it was"});
}

int RunUpgradeDump(const std::string& store, pid_t tree) {
  auto region = memstore::Region::Create(store);
  if (!region) {
    std::fprintf(stderr, "memstore %s: %s\n", store.c_str(), region.error().ToString().c_str());
    return 1;
  }
  auto images = imagestore::CreateStoreImageSet(std::move(*region));
  if (!images) {
    std::fprintf(stderr, "memstore %s: %s\n", store.c_str(), images.error().ToString().c_str());
    return 1;
  }
  DumpOptions o;
  o.root = tree;
  o.mounts = "/";
  o.before_commit = [](ImageWriter& images) -> Result<void> {
    // The network configuration (links, addresses, routes, rules, nftables) and the
    // modules the old kernel had loaded, for kleap-init to load again first.
    KLEAP_TRY(net::WriteNetnsImage(KLEAP_TRY(net::NetnsByPid(getpid())), images));
    std::string modules = KLEAP_TRY(ReadFileToString("/proc/modules"));
    auto blob = KLEAP_TRY(images.CreateBlob(kModulesImage));
    KLEAP_TRY(blob->Write(modules.data(), modules.size()));
    return blob->Close();
  };
  o.while_frozen = [&store](const DumpStats& st) -> Result<void> {
    // For the benchmark and the admin: the dump's share of the pause, in the kernel
    // log (the console keeps it across the kexec).
    if (FILE* k = fopen("/dev/kmsg", "w")) {
      fprintf(k,
              "<6>kleapd: upgrade dump: %zu tasks, %zu threads, %llu MiB of memory; freeze %.3f s, "
              "freeze and dump %.3f s; kexec now\n",
              st.tasks, st.threads, (unsigned long long)(st.page_bytes >> 20), st.freeze_seconds,
              st.seconds);
      fclose(k);
    }
    // Test hook (vm.upgrade-damaged): the store damaged after the commit, which
    // kleap-init must find, booting normally instead.
    if (const char* d = getenv("KLEAP_TEST_DAMAGE_STORE"); d && !strcmp(d, "1")) {
      auto region = KLEAP_TRY(memstore::Region::Open(store));
      auto where = KLEAP_TRY(memstore::DamageOneBlob(*region));
      std::fprintf(stderr, "test hook: damaged %s at %llu\n", where.first.c_str(),
                   (unsigned long long)where.second);
    }
    sync();  // the store's pages, and every file system, before the kernel goes
    KLEAP_TRY(Execute());
    return Err(EIO) << "kexec returned";
  };
  auto st = DumpTree(o, **images);
  if (!st) {
    std::fprintf(stderr, "%s\n", st.error().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "the dump returned without a kexec\n");
  return 1;
}

}  // namespace kleap::upgrader
