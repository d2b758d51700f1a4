// kleapd: the system service behind org.kleap.Upgrader1 (sd-bus and sd-event).
//
// This version serves the Manager interface's Check() and its properties; Upgrade()
// and jobs join it with the end-to-end upgrade. Check is open to any local user and
// changes nothing: it walks the tree through /proc and reads the target kernel.
#include <dirent.h>
#include <signal.h>
#include <sys/utsname.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/base/log.h"
#include "engine/base/proc.h"
#include "engine/engine.h"
#include "memstore/store_cli.h"
#include "upgrader/errors.h"

namespace kleap::upgrader {
namespace {

constexpr char kBusName[] = "org.kleap.Upgrader1";
constexpr char kObjectPath[] = "/org/kleap/Upgrader1";
constexpr char kManagerInterface[] = "org.kleap.Upgrader1.Manager";
constexpr uint64_t kIdleExitUsec = 60ull * 1000000;

struct Context {
  sd_event* event = nullptr;
  sd_bus* bus = nullptr;
  sd_event_source* idle_timer = nullptr;
  std::string state = "idle";
  std::string memstore = memstore::kDefaultStore;
  std::string running_kernel;
};

// The newest kernel image under /boot other than the running one, or "".
std::string NewestKernel(const std::string& running) {
  DIR* d = opendir("/boot");
  if (!d) return "";
  std::string best;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.rfind("vmlinuz-", 0) != 0 || name.substr(8) == running) continue;
    if (best.empty() || strverscmp(name.c_str(), best.c_str()) > 0) best = name;
  }
  closedir(d);
  return best.empty() ? "" : "/boot/" + best;
}

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
  if (!c->idle_timer) return;
  uint64_t now;
  sd_event_now(c->event, CLOCK_MONOTONIC, &now);
  sd_event_source_set_time(c->idle_timer, now + kIdleExitUsec);
  sd_event_source_set_enabled(c->idle_timer, SD_EVENT_ONESHOT);
}

int MethodCheck(sd_bus_message* m, void* userdata, sd_bus_error* err) {
  auto* c = static_cast<Context*>(userdata);
  TouchIdle(c);
  uint32_t tree = 1;
  std::string kernel;
  int r = sd_bus_message_enter_container(m, 'a', "{sv}");
  if (r < 0) return r;
  while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
    const char* key;
    if ((r = sd_bus_message_read(m, "s", &key)) < 0) return r;
    if (!strcmp(key, "tree")) {
      r = sd_bus_message_read(m, "v", "u", &tree);
      if (r < 0)
        return sd_bus_error_setf(err, SD_BUS_ERROR_INVALID_ARGS, "Option 'tree' must be a PID (u)");
      if (tree == 0)
        return sd_bus_error_setf(err, SD_BUS_ERROR_INVALID_ARGS, "Option 'tree': 0 is not a PID");
    } else if (!strcmp(key, "kernel")) {
      const char* k;
      r = sd_bus_message_read(m, "v", "s", &k);
      if (r < 0)
        return sd_bus_error_setf(err, SD_BUS_ERROR_INVALID_ARGS,
                                 "Option 'kernel' must be a path (s)");
      kernel = k;
    } else {
      return sd_bus_error_setf(err, SD_BUS_ERROR_INVALID_ARGS, "Unknown option '%s'", key);
    }
    if ((r = sd_bus_message_exit_container(m)) < 0) return r;
  }
  if (r < 0 || (r = sd_bus_message_exit_container(m)) < 0) return r;

  if (kill(pid_t(tree), 0) < 0 && errno == ESRCH)
    return sd_bus_error_setf(err, kErrTaskGone, "No process %u to check", tree);
  if (kernel.empty()) kernel = NewestKernel(c->running_kernel);
  auto rep = CheckTree(pid_t(tree));
  if (!rep) return Fail(err, rep.error());

  sd_bus_message* reply = nullptr;
  if ((r = sd_bus_message_new_method_return(m, &reply)) < 0) return r;
  auto done = [&](int rr) {
    sd_bus_message_unref(reply);
    return rr;
  };
  if ((r = sd_bus_message_open_container(reply, 'a', "{sv}")) < 0) return done(r);
  bool kernel_ok = !kernel.empty() && access(kernel.c_str(), R_OK) == 0;
  r = sd_bus_message_append(reply, "{sv}{sv}{sv}{sv}{sv}{sv}", "dumpable", "b",
                            int(rep->problems.empty()), "tasks", "u", uint32_t(rep->pids.size()),
                            "threads", "u", uint32_t(rep->threads), "target-kernel", "s",
                            kernel.c_str(), "target-kernel-found", "b", int(kernel_ok),
                            "upgradable", "b", int(rep->problems.empty() && kernel_ok));
  if (r < 0) return done(r);
  if ((r = sd_bus_message_open_container(reply, 'e', "sv")) < 0 ||
      (r = sd_bus_message_append(reply, "s", "problems")) < 0 ||
      (r = sd_bus_message_open_container(reply, 'v', "a(isss)")) < 0 ||
      (r = sd_bus_message_open_container(reply, 'a', "(isss)")) < 0)
    return done(r);
  for (auto& p : rep->problems)
    if ((r = sd_bus_message_append(reply, "(isss)", int32_t(p.pid), p.object.c_str(),
                                   p.what.c_str(), p.reason.c_str())) < 0)
      return done(r);
  if ((r = sd_bus_message_close_container(reply)) < 0 ||
      (r = sd_bus_message_close_container(reply)) < 0 ||
      (r = sd_bus_message_close_container(reply)) < 0 ||
      (r = sd_bus_message_close_container(reply)) < 0)
    return done(r);
  return done(sd_bus_send(nullptr, reply, nullptr));
}

int GetString(sd_bus*, const char*, const char*, const char* property, sd_bus_message* reply,
              void* userdata, sd_bus_error*) {
  auto* c = static_cast<Context*>(userdata);
  if (!strcmp(property, "State")) return sd_bus_message_append(reply, "s", c->state.c_str());
  if (!strcmp(property, "RunningKernel"))
    return sd_bus_message_append(reply, "s", c->running_kernel.c_str());
  if (!strcmp(property, "DefaultTarget"))
    return sd_bus_message_append(reply, "s", NewestKernel(c->running_kernel).c_str());
  if (!strcmp(property, "MemstoreBackend"))
    return sd_bus_message_append(reply, "s", c->memstore.c_str());
  return -ENOENT;
}

int GetLastUpgrade(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply, void*,
                   sd_bus_error*) {
  // No upgrade has run under this kleapd yet: an empty dictionary.
  int r = sd_bus_message_open_container(reply, 'a', "{sv}");
  if (r < 0) return r;
  return sd_bus_message_close_container(reply);
}

const sd_bus_vtable kManagerVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("State", "s", GetString, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("RunningKernel", "s", GetString, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("DefaultTarget", "s", GetString, 0, 0),
    SD_BUS_PROPERTY("MemstoreBackend", "s", GetString, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("LastUpgrade", "a{sv}", GetLastUpgrade, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_METHOD_WITH_ARGS("Check", SD_BUS_ARGS("a{sv}", options), SD_BUS_RESULT("a{sv}", report),
                            MethodCheck, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END};

int OnIdle(sd_event_source*, uint64_t, void* userdata) {
  auto* c = static_cast<Context*>(userdata);
  KLOG(kInfo) << "idle for " << kIdleExitUsec / 1000000 << " s, exiting";
  return sd_event_exit(c->event, 0);
}

int Run(bool user_bus, bool exit_on_idle) {
  Context c;
  utsname u;
  uname(&u);
  c.running_kernel = u.release;
  int r = sd_event_default(&c.event);
  if (r < 0) return Fatal("sd_event", r);
  r = user_bus ? sd_bus_open_user(&c.bus) : sd_bus_open_system(&c.bus);
  if (r < 0)
    return Fatal(std::string("connect to the ") + (user_bus ? "session" : "system") + " bus", r);
  if ((r = sd_bus_add_object_vtable(c.bus, nullptr, kObjectPath, kManagerInterface, kManagerVtable,
                                    &c)) < 0)
    return Fatal(std::string("register ") + kObjectPath, r);
  if ((r = sd_bus_request_name(c.bus, kBusName, 0)) < 0)
    return Fatal(std::string("take the name ") + kBusName, r);
  if ((r = sd_bus_attach_event(c.bus, c.event, 0)) < 0) return Fatal("attach the bus", r);
  sd_event_set_watchdog(c.event, 1);
  if (exit_on_idle) {
    uint64_t now;
    sd_event_now(c.event, CLOCK_MONOTONIC, &now);
    sd_event_add_time(c.event, &c.idle_timer, CLOCK_MONOTONIC, now + kIdleExitUsec, 0, OnIdle, &c);
  }
  sd_notify(0, "READY=1\nSTATUS=Idle");
  KLOG(kInfo) << "serving " << kBusName << " on the " << (user_bus ? "session" : "system")
              << " bus";
  r = sd_event_loop(c.event);
  sd_notify(0, "STOPPING=1");
  sd_bus_flush_close_unref(c.bus);
  sd_event_source_unref(c.idle_timer);
  sd_event_unref(c.event);
  return r < 0 ? 1 : 0;
}

}  // namespace
}  // namespace kleap::upgrader

int main(int argc, char** argv) {
  bool user_bus = false, exit_on_idle = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--user") {
      user_bus = true;  // tests: a session bus from dbus-run-session
    } else if (a == "--no-exit-on-idle") {
      exit_on_idle = false;
    } else if (a == "-h" || a == "--help") {
      std::printf(
          "Usage: kleapd [--user] [--no-exit-on-idle]\nThe org.kleap.Upgrader1 service. See "
          "kleapd(8).\n");
      return 0;
    } else {
      std::fprintf(stderr, "kleapd: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  return kleap::upgrader::Run(user_bus, exit_on_idle);
}
