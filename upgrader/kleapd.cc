// kleapd: the system service behind org.kleap.Upgrader1 (sd-bus and sd-event).
//
// The Manager interface answers Check() for anyone and starts upgrade jobs for those
// polkit allows; each job is an object of its own (/org/kleap/Upgrader1/job/N) whose
// phases run on a worker thread (upgrader/job.h) while this loop keeps serving the
// bus. One upgrade at a time; a job belongs to no client, so a caller that goes away
// mid-job changes nothing.
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/utsname.h>
#include <syslog.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/log.h"
#include "engine/base/unique_fd.h"
#include "engine/engine.h"
#include "memstore/store_cli.h"
#include "upgrader/errors.h"
#include "upgrader/job.h"
#include "upgrader/journal.h"
#include "upgrader/polkit.h"
#include "upgrader/sd_ptr.h"

namespace kleap::upgrader {
namespace {

constexpr char kBusName[] = "org.kleap.Upgrader1";
constexpr char kObjectPath[] = "/org/kleap/Upgrader1";
constexpr char kManagerInterface[] = "org.kleap.Upgrader1.Manager";
constexpr char kJobInterface[] = "org.kleap.Upgrader1.Job";
constexpr char kDefaultEntry[] = "init=/usr/lib/kleap/kleap-init";
constexpr uint64_t kIdleExitUsec = 60ull * 1000000;
// Finished jobs stay on the bus for late readers; the oldest go beyond this many.
constexpr size_t kKeptJobs = 16;

struct Context;

// A job and its place on the bus.
struct JobSlot {
  Context* ctx = nullptr;
  std::unique_ptr<Job> job;
  SdSlot slot;
  JobState shown;  // what the bus has been told
  bool completed = false;
};

// The daemon's state. Members go in reverse order: the jobs (their workers joined, their
// slots dropped) before the bus is flushed and closed, the bus before the event sources
// and the loop, and the job eventfd last.
struct Context {
  UniqueFd wake;
  SdEvent event;
  SdEventSource idle_timer;
  SdEventSource wake_source;
  SdBus bus;
  std::string memstore = memstore::kDefaultStore;
  std::string entry = kDefaultEntry;
  std::string running_kernel;
  unsigned phase_delay_ms = 0;
  bool exiting = false;
  uint32_t next_job = 1;
  std::map<uint32_t, std::unique_ptr<JobSlot>> jobs;
  JobSlot* current = nullptr;  // the running job, if any
  // The last finished job: its path and report (LastUpgrade).
  std::string last_path;
  JobReport last;
  bool have_last = false;
};

// Logs an error and gives the exit status for it.
int Fatal(const std::string& what, int r) {
  KLOG(kError) << what << ": " << strerror(-r);
  return 1;
}

int Fail(sd_bus_error* err, const Error& e) {
  return sd_bus_error_set(err, ErrorNameFor(e.code()), e.ToString().c_str());
}

// Re-arms the idle exit: the service is bus-activated and goes away when unused.
void TouchIdle(Context* c) {
  if (!c->idle_timer.get()) return;
  uint64_t now;
  sd_event_now(c->event.get(), CLOCK_MONOTONIC, &now);
  sd_event_source_set_time(c->idle_timer.get(), now + kIdleExitUsec);
  sd_event_source_set_enabled(c->idle_timer.get(), SD_EVENT_ONESHOT);
}

// Reads an a{sv} of options; `each(key)` reads the value of a key it knows and
// returns > 0, or returns 0 for an unknown key (refused, naming it), or < 0.
template <class F>
int ReadOptions(sd_bus_message* m, sd_bus_error* err, F each) {
  int r = sd_bus_message_enter_container(m, 'a', "{sv}");
  if (r < 0) return r;
  while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
    const char* key;
    if ((r = sd_bus_message_read(m, "s", &key)) < 0) return r;
    r = each(std::string(key));
    if (r == 0)
      return sd_bus_error_setf(err, SD_BUS_ERROR_INVALID_ARGS, "Unknown option '%s'", key);
    if (r < 0) return r;
    if ((r = sd_bus_message_exit_container(m)) < 0) return r;
  }
  if (r < 0) return r;
  return sd_bus_message_exit_container(m);
}

// The value of option `key` as type `t`, or InvalidArgs naming the key and the type.
template <class T>
int ReadOption(sd_bus_message* m, sd_bus_error* err, const std::string& key, const char* t,
               const char* what, T* out) {
  int r = sd_bus_message_read(m, "v", t, out);
  if (r < 0)
    return sd_bus_error_setf(err, SD_BUS_ERROR_INVALID_ARGS, "Option '%s' must be %s (%s)",
                             key.c_str(), what, t);
  return 1;
}

int MethodCheck(sd_bus_message* m, void* userdata, sd_bus_error* err) {
  auto* c = static_cast<Context*>(userdata);
  TouchIdle(c);
  uint32_t tree = 1;
  std::string kernel;
  int r = ReadOptions(m, err, [&](const std::string& key) -> int {
    if (key == "tree") {
      int rr = ReadOption(m, err, key, "u", "a PID", &tree);
      if (rr > 0 && tree == 0)
        return sd_bus_error_setf(err, SD_BUS_ERROR_INVALID_ARGS, "Option 'tree': 0 is not a PID");
      return rr;
    }
    if (key == "kernel") {
      const char* k;
      int rr = ReadOption(m, err, key, "s", "a path", &k);
      if (rr > 0) kernel = k;
      return rr;
    }
    return 0;
  });
  if (r < 0) return r;

  if (kill(pid_t(tree), 0) < 0 && errno == ESRCH)
    return sd_bus_error_setf(err, kErrTaskGone, "No process %u to check", tree);
  if (kernel.empty()) kernel = NewestKernel(c->running_kernel);
  auto rep = CheckTree(pid_t(tree), /*leave_out=*/0);  // kleapd is carried too
  if (!rep) return Fail(err, rep.error());

  SdMessage holder;
  if ((r = sd_bus_message_new_method_return(m, holder.put())) < 0) return r;
  sd_bus_message* reply = holder.get();
  if ((r = sd_bus_message_open_container(reply, 'a', "{sv}")) < 0) return r;
  bool kernel_ok = !kernel.empty() && access(kernel.c_str(), R_OK) == 0;
  r = sd_bus_message_append(reply, "{sv}{sv}{sv}{sv}{sv}{sv}", "dumpable", "b",
                            int(rep->problems.empty()), "tasks", "u", uint32_t(rep->pids.size()),
                            "threads", "u", uint32_t(rep->threads), "target-kernel", "s",
                            kernel.c_str(), "target-kernel-found", "b", int(kernel_ok),
                            "upgradable", "b", int(rep->problems.empty() && kernel_ok));
  if (r < 0) return r;
  if ((r = sd_bus_message_open_container(reply, 'e', "sv")) < 0 ||
      (r = sd_bus_message_append(reply, "s", "problems")) < 0 ||
      (r = sd_bus_message_open_container(reply, 'v', "a(isss)")) < 0 ||
      (r = sd_bus_message_open_container(reply, 'a', "(isss)")) < 0)
    return r;
  for (auto& p : rep->problems)
    if ((r = sd_bus_message_append(reply, "(isss)", int32_t(p.pid), p.object.c_str(),
                                   p.what.c_str(), p.reason.c_str())) < 0)
      return r;
  if ((r = sd_bus_message_close_container(reply)) < 0 ||
      (r = sd_bus_message_close_container(reply)) < 0 ||
      (r = sd_bus_message_close_container(reply)) < 0 ||
      (r = sd_bus_message_close_container(reply)) < 0)
    return r;
  return sd_bus_send(nullptr, reply, nullptr);
}

// ---------------------------------------------------------------------------
// Jobs on the bus.

// Appends a report as a{sv}: what Completed carries and LastUpgrade shows.
int AppendReport(sd_bus_message* m, const JobReport& rep, const std::string& path) {
  int r = sd_bus_message_open_container(m, 'a', "{sv}");
  if (r >= 0)
    r = sd_bus_message_append(m, "{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}{sv}", "job", "o",
                              path.c_str(), "success", "b", int(rep.success), "message", "s",
                              rep.message.c_str(), "error", "s", rep.error_name.c_str(), "phase",
                              "s", PhaseName(rep.failed_in), "dry-run", "b", int(rep.dry_run),
                              "kernel", "s", rep.kernel.c_str(), "initrd", "s", rep.initrd.c_str(),
                              "cmdline", "s", rep.cmdline.c_str(), "tasks", "u", rep.tasks,
                              "threads", "u", rep.threads, "memory-bytes", "t", rep.memory_bytes);
  if (r >= 0) r = sd_bus_message_append(m, "{sv}", "seconds", "d", rep.seconds);
  if (r >= 0 && !rep.new_release.empty())
    r = sd_bus_message_append(m, "{sv}{sv}{sv}", "downtime-seconds", "d", rep.downtime_seconds,
                              "old-release", "s", rep.old_release.c_str(), "new-release", "s",
                              rep.new_release.c_str());
  if (r >= 0) r = sd_bus_message_close_container(m);
  return r;
}

int JobProperty(sd_bus*, const char*, const char*, const char* property, sd_bus_message* reply,
                void* userdata, sd_bus_error*) {
  auto* s = static_cast<JobSlot*>(userdata);
  const JobState& st = s->shown;
  if (!strcmp(property, "Phase")) return sd_bus_message_append(reply, "s", PhaseName(st.phase));
  if (!strcmp(property, "Progress")) return sd_bus_message_append(reply, "u", st.progress);
  if (!strcmp(property, "Cancelable")) return sd_bus_message_append(reply, "b", int(st.cancelable));
  if (!strcmp(property, "DryRun"))
    return sd_bus_message_append(reply, "b", int(s->job->request().dry_run));
  if (!strcmp(property, "Kernel"))
    return sd_bus_message_append(reply, "s", s->job->request().kernel.c_str());
  return -ENOENT;
}

int MethodCancel(sd_bus_message* m, void* userdata, sd_bus_error* err) {
  auto* s = static_cast<JobSlot*>(userdata);
  TouchIdle(s->ctx);
  // The call is answered once polkit has: hold it until then.
  auto held = std::make_shared<SdMessage>(RefMessage(m));
  int r = Authorize(m, kActionUpgrade, false, [held, s](bool allowed, const sd_bus_error* e) {
    sd_bus_message* m = held->get();
    if (!allowed) {
      sd_bus_reply_method_error(m, e);
    } else {
      uid_t uid = 0;
      (void)SenderUid(m, &uid);
      JobState st = s->job->state();
      if (s->job->Cancel(uid)) {
        LogJob(LOG_NOTICE, s->job->id(), PhaseName(st.phase), nullptr,
               "cancel requested by uid " + std::to_string(uid));
        sd_bus_reply_method_return(m, "");
      } else {
        sd_bus_reply_method_errorf(m, kErrNotCancelable, "Job %u is %s (phase %s)", s->job->id(),
                                   st.finished ? "over" : "past the point of no return",
                                   PhaseName(st.phase));
      }
    }
  });
  if (r < 0)
    return sd_bus_error_set_errnof(err, -r, "Cannot authorize the caller: %s", strerror(-r));
  return 1;
}

const sd_bus_vtable kJobVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("Phase", "s", JobProperty, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("Progress", "u", JobProperty, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("Cancelable", "b", JobProperty, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("DryRun", "b", JobProperty, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("Kernel", "s", JobProperty, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_METHOD_WITH_ARGS("Cancel", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, MethodCancel,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_SIGNAL_WITH_ARGS("Completed", SD_BUS_ARGS("b", success, "s", message, "a{sv}", details),
                            0),
    SD_BUS_VTABLE_END};

void EmitManagerChanged(Context* c) {
  sd_bus_emit_properties_changed(c->bus.get(), kObjectPath, kManagerInterface, "State",
                                 "CurrentJob", "LastUpgrade", nullptr);
}

// Tells the bus what the workers did since the last wake-up.
void PublishJobs(Context* c) {
  for (auto& [id, s] : c->jobs) {
    if (s->completed) continue;
    for (JobState& st : s->job->TakeChanges()) {
      bool phase_changed = st.phase != s->shown.phase;
      s->shown = st;
      sd_bus_emit_properties_changed(c->bus.get(), s->job->path().c_str(), kJobInterface, "Phase",
                                     "Progress", "Cancelable", nullptr);
      if (phase_changed && !st.finished)
        LogJob(LOG_INFO, id, PhaseName(st.phase), nullptr,
               std::string("phase ") + PhaseName(st.phase));
      if (!st.finished) continue;
      s->job->Join();
      s->completed = true;
      const JobReport& rep = st.report;
      LogJob(rep.success ? LOG_NOTICE : LOG_ERR, id, PhaseName(rep.failed_in),
             rep.success ? kMessageUpgradeSucceeded : kMessageUpgradeFailed,
             (rep.success ? "succeeded: "
                          : "failed in phase " + std::string(PhaseName(rep.failed_in)) + ": ") +
                 rep.message);
      SdMessage sig;
      int r = sd_bus_message_new_signal(c->bus.get(), sig.put(), s->job->path().c_str(),
                                        kJobInterface, "Completed");
      if (r >= 0) r = sd_bus_message_append(sig.get(), "bs", int(rep.success), rep.message.c_str());
      if (r >= 0) r = AppendReport(sig.get(), rep, s->job->path());
      if (r >= 0) r = sd_bus_send(c->bus.get(), sig.get(), nullptr);
      if (r < 0) KLOG(kWarning) << "job " << id << ": cannot send Completed: " << strerror(-r);
      c->last = rep;
      c->last_path = s->job->path();
      c->have_last = true;
      if (c->current == s.get()) c->current = nullptr;
      EmitManagerChanged(c);
      sd_notify(0, "STATUS=Idle");
      TouchIdle(c);
    }
  }
  // Forget the oldest finished jobs beyond kKeptJobs.
  while (c->jobs.size() > kKeptJobs && c->jobs.begin()->second->completed)
    c->jobs.erase(c->jobs.begin());
  if (c->exiting && !c->current) sd_event_exit(c->event.get(), 0);
}

int OnWake(sd_event_source*, int fd, uint32_t, void* userdata) {
  uint64_t n;
  (void)!read(fd, &n, sizeof n);
  PublishJobs(static_cast<Context*>(userdata));
  return 0;
}

struct UpgradeArgs {
  JobRequest req;
  bool interactive = false;
};

// After polkit said yes: one upgrade at a time, then a new job.
void StartJob(Context* c, sd_bus_message* m, UpgradeArgs a) {
  if (c->current) {
    JobState st = c->current->job->state();
    sd_bus_reply_method_errorf(m, kErrUpgradeInProgress, "Job %s is running (phase %s)",
                               c->current->job->path().c_str(), PhaseName(st.phase));
    return;
  }
  if (c->exiting) {
    sd_bus_reply_method_errorf(m, kErrFailed, "kleapd is shutting down");
    return;
  }
  (void)SenderUid(m, &a.req.uid);
  uint32_t id = c->next_job++;
  auto s = std::make_unique<JobSlot>();
  s->ctx = c;
  s->job = std::make_unique<Job>(id, a.req, c->wake.get());
  int r = sd_bus_add_object_vtable(c->bus.get(), s->slot.put(), s->job->path().c_str(),
                                   kJobInterface, kJobVtable, s.get());
  if (r < 0) {
    sd_bus_reply_method_errorf(m, kErrFailed, "Cannot publish job %u: %s", id, strerror(-r));
    return;
  }
  JobSlot* slot = s.get();
  c->jobs[id] = std::move(s);
  c->current = slot;
  const JobRequest& q = slot->job->request();
  LogJob(LOG_NOTICE, id, "check", kMessageUpgradeStarted,
         std::string(q.dry_run ? "dry run" : "upgrade") + " started by uid " +
             std::to_string(q.uid) + ": kernel " +
             (q.kernel.empty() ? "(newest under /boot)" : q.kernel) + ", tree " +
             std::to_string(q.tree));
  sd_bus_reply_method_return(m, "o", slot->job->path().c_str());
  slot->job->Start();
  EmitManagerChanged(c);
  sd_notify(0, ("STATUS=Upgrade job " + std::to_string(id) + " running").c_str());
}

int MethodUpgrade(sd_bus_message* m, void* userdata, sd_bus_error* err) {
  auto* c = static_cast<Context*>(userdata);
  TouchIdle(c);
  const char *kernel, *initrd, *cmdline;
  int r = sd_bus_message_read(m, "sss", &kernel, &initrd, &cmdline);
  if (r < 0) return r;
  UpgradeArgs a;
  a.req.kernel = kernel;
  a.req.initrd = initrd;
  a.req.cmdline = cmdline;
  a.req.memstore = c->memstore;
  a.req.entry = c->entry;
  a.req.running = c->running_kernel;
  a.req.phase_delay_ms = c->phase_delay_ms;
  uint32_t tree = 1;
  r = ReadOptions(m, err, [&](const std::string& key) -> int {
    int b = 0, rr;
    if (key == "dry-run") {
      if ((rr = ReadOption(m, err, key, "b", "a boolean", &b)) > 0) a.req.dry_run = b;
      return rr;
    }
    if (key == "interactive") {
      if ((rr = ReadOption(m, err, key, "b", "a boolean", &b)) > 0) a.interactive = b;
      return rr;
    }
    if (key == "tree") {
      rr = ReadOption(m, err, key, "u", "a PID", &tree);
      if (rr > 0 && tree == 0)
        return sd_bus_error_setf(err, SD_BUS_ERROR_INVALID_ARGS, "Option 'tree': 0 is not a PID");
      return rr;
    }
    return 0;
  });
  if (r < 0) return r;
  a.req.tree = pid_t(tree);
  // Arguments first, as the caller wrote them: nothing here touches state.
  for (auto [what, path] : {std::pair{"kernel", &a.req.kernel}, {"initrd", &a.req.initrd}}) {
    if (path->empty()) continue;
    if ((*path)[0] != '/')
      return sd_bus_error_setf(err, SD_BUS_ERROR_INVALID_ARGS,
                               "The %s must be an absolute path: %s", what, path->c_str());
    if (access(path->c_str(), R_OK) < 0)
      return sd_bus_error_setf(err, kErrKernelNotFound, "The %s %s: %s", what, path->c_str(),
                               strerror(errno));
  }
  if (!a.req.initrd.empty() && a.req.kernel.empty())
    return sd_bus_error_setf(err, SD_BUS_ERROR_INVALID_ARGS,
                             "An initrd needs its kernel: the kernel argument is empty");
  if (a.req.kernel.empty() && NewestKernel(c->running_kernel).empty())
    return sd_bus_error_setf(err, kErrKernelNotFound,
                             "No kernel under /boot other than the running %s",
                             c->running_kernel.c_str());
  if (kill(a.req.tree, 0) < 0 && errno == ESRCH)
    return sd_bus_error_setf(err, kErrTaskGone, "No process %u to carry", tree);

  auto held = std::make_shared<SdMessage>(RefMessage(m));
  bool interactive = a.interactive;
  r = Authorize(m, kActionUpgrade, interactive,
                [c, held, a = std::move(a)](bool allowed, const sd_bus_error* e) {
                  if (allowed)
                    StartJob(c, held->get(), a);
                  else
                    sd_bus_reply_method_error(held->get(), e);
                });
  if (r < 0)
    return sd_bus_error_set_errnof(err, -r, "Cannot authorize the caller: %s", strerror(-r));
  return 1;
}

int ManagerProperty(sd_bus*, const char*, const char*, const char* property, sd_bus_message* reply,
                    void* userdata, sd_bus_error*) {
  auto* c = static_cast<Context*>(userdata);
  if (!strcmp(property, "State"))
    return sd_bus_message_append(reply, "s", c->current ? "upgrading" : "idle");
  if (!strcmp(property, "RunningKernel"))
    return sd_bus_message_append(reply, "s", c->running_kernel.c_str());
  if (!strcmp(property, "DefaultTarget"))
    return sd_bus_message_append(reply, "s", NewestKernel(c->running_kernel).c_str());
  if (!strcmp(property, "MemstoreBackend"))
    return sd_bus_message_append(reply, "s", c->memstore.c_str());
  if (!strcmp(property, "CurrentJob"))
    return sd_bus_message_append(reply, "o", c->current ? c->current->job->path().c_str() : "/");
  if (!strcmp(property, "LastUpgrade")) {
    if (!c->have_last) {
      int r = sd_bus_message_open_container(reply, 'a', "{sv}");
      return r < 0 ? r : sd_bus_message_close_container(reply);
    }
    return AppendReport(reply, c->last, c->last_path);
  }
  return -ENOENT;
}

const sd_bus_vtable kManagerVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("State", "s", ManagerProperty, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("RunningKernel", "s", ManagerProperty, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("DefaultTarget", "s", ManagerProperty, 0, 0),
    SD_BUS_PROPERTY("MemstoreBackend", "s", ManagerProperty, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("CurrentJob", "o", ManagerProperty, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("LastUpgrade", "a{sv}", ManagerProperty, 0,
                    SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_METHOD_WITH_ARGS("Check", SD_BUS_ARGS("a{sv}", options), SD_BUS_RESULT("a{sv}", report),
                            MethodCheck, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Upgrade",
                            SD_BUS_ARGS("s", kernel, "s", initrd, "s", cmdline, "a{sv}", options),
                            SD_BUS_RESULT("o", job), MethodUpgrade, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END};

int OnIdle(sd_event_source*, uint64_t, void* userdata) {
  auto* c = static_cast<Context*>(userdata);
  if (c->current) {
    TouchIdle(c);
    return 0;
  }
  KLOG(kInfo) << "idle for " << kIdleExitUsec / 1000000 << " s, exiting";
  return sd_event_exit(c->event.get(), 0);
}

// SIGTERM/SIGINT: exit now when idle; otherwise cancel the job and exit once it ends
// (a job past the point of no return runs to its end).
int OnSignal(sd_event_source*, const signalfd_siginfo* si, void* userdata) {
  auto* c = static_cast<Context*>(userdata);
  c->exiting = true;
  if (!c->current) return sd_event_exit(c->event.get(), 0);
  KLOG(kInfo) << "signal " << si->ssi_signo << ": canceling job " << c->current->job->id()
              << " before exiting";
  c->current->job->Cancel(0);
  return 0;
}

struct Options {
  bool user_bus = false, exit_on_idle = true;
  std::string memstore = memstore::kDefaultStore, entry = kDefaultEntry;
};

int Run(const Options& o) {
  Context c;
  c.memstore = o.memstore;
  c.entry = o.entry;
  if (const char* d = getenv("KLEAP_TEST_PHASE_DELAY_MS")) c.phase_delay_ms = unsigned(atoi(d));
  utsname u;
  uname(&u);
  c.running_kernel = u.release;
  int r = sd_event_default(c.event.put());
  if (r < 0) return Fatal("sd_event", r);
  sigset_t ss;
  sigemptyset(&ss);
  sigaddset(&ss, SIGTERM);
  sigaddset(&ss, SIGINT);
  sigprocmask(SIG_BLOCK, &ss, nullptr);
  sd_event_add_signal(c.event.get(), nullptr, SIGTERM, OnSignal, &c);
  sd_event_add_signal(c.event.get(), nullptr, SIGINT, OnSignal, &c);
  c.wake.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!c.wake) return Fatal("eventfd", -errno);
  if ((r = sd_event_add_io(c.event.get(), c.wake_source.put(), c.wake.get(), EPOLLIN, OnWake, &c)) <
      0)
    return Fatal("watch the job eventfd", r);
  r = o.user_bus ? sd_bus_open_user(c.bus.put()) : sd_bus_open_system(c.bus.put());
  if (r < 0)
    return Fatal(std::string("connect to the ") + (o.user_bus ? "session" : "system") + " bus", r);
  if ((r = sd_bus_add_object_vtable(c.bus.get(), nullptr, kObjectPath, kManagerInterface,
                                    kManagerVtable, &c)) < 0)
    return Fatal(std::string("register ") + kObjectPath, r);
  if ((r = sd_bus_request_name(c.bus.get(), kBusName, 0)) < 0)
    return Fatal(std::string("take the name ") + kBusName, r);
  if ((r = sd_bus_attach_event(c.bus.get(), c.event.get(), 0)) < 0)
    return Fatal("attach the bus", r);
  sd_event_set_watchdog(c.event.get(), 1);
  if (o.exit_on_idle) {
    uint64_t now;
    sd_event_now(c.event.get(), CLOCK_MONOTONIC, &now);
    sd_event_add_time(c.event.get(), c.idle_timer.put(), CLOCK_MONOTONIC, now + kIdleExitUsec, 0,
                      OnIdle, &c);
  }
  sd_notify(0, "READY=1\nSTATUS=Idle");
  KLOG(kInfo) << "serving " << kBusName << " on the " << (o.user_bus ? "session" : "system")
              << " bus; memstore " << c.memstore << ", entry " << c.entry;
  r = sd_event_loop(c.event.get());
  sd_notify(0, "STOPPING=1");
  c.jobs.clear();  // joins any worker (none runs past a cancel); the rest goes with c
  return r < 0 ? 1 : 0;
}

}  // namespace
}  // namespace kleap::upgrader

int main(int argc, char** argv) {
  kleap::upgrader::Options o;
  // The dump of an upgrade, started by the job itself (job.cc).
  if (argc == 6 && !strcmp(argv[1], "--upgrade-dump") && !strcmp(argv[2], "--store") &&
      !strcmp(argv[4], "--tree"))
    return kleap::upgrader::RunUpgradeDump(argv[3], pid_t(atoi(argv[5])));
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--user") {
      o.user_bus = true;  // tests: a session bus from dbus-run-session
    } else if (a == "--no-exit-on-idle") {
      o.exit_on_idle = false;
    } else if (a == "--memstore" && i + 1 < argc) {
      o.memstore = argv[++i];
    } else if (a == "--entry" && i + 1 < argc) {
      o.entry = argv[++i];
    } else if (a == "-h" || a == "--help") {
      std::printf(
          "Usage: kleapd [--user] [--no-exit-on-idle] [--memstore SPEC] [--entry "
          "init=PATH|rdinit=PATH]\n"
          "The org.kleap.Upgrader1 service. See kleapd(8).\n");
      return 0;
    } else {
      std::fprintf(stderr, "kleapd: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  return kleap::upgrader::Run(o);
}
