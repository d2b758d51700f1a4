// upgrade-kernel: the admin CLI, a client of org.kleap.Upgrader1 like any other.
// This version has `status` and `check`; `upgrade`, `cancel` and `log` follow Upgrade().
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/base/json.h"

namespace {

using kleap::JsonString;

constexpr int kExitDone = 0, kExitFailed = 1, kExitNothing = 2, kExitNotPermitted = 77;
constexpr char kBusName[] = "org.kleap.Upgrader1";
constexpr char kPath[] = "/org/kleap/Upgrader1";
constexpr char kManager[] = "org.kleap.Upgrader1.Manager";

const char kUsage[] =
    "Usage: upgrade-kernel [--json] status\n"
    "       upgrade-kernel [--json] check [--tree PID] [--kernel PATH]\n"
    "\n"
    "Exit status: 0 done (check: the upgrade can go ahead), 1 failed (check: something\n"
    "blocks it), 2 nothing to do (check: no kernel to upgrade to), 77 not permitted.\n"
    "See upgrade-kernel(8).\n";

struct Problem {
  int pid;
  std::string object, what, reason;
};

int BusError(const char* what, const sd_bus_error* e, int r) {
  std::fprintf(stderr, "upgrade-kernel: %s: %s\n", what,
               e && e->message ? e->message : strerror(-r));
  if (e && e->name &&
      (!strcmp(e->name, SD_BUS_ERROR_ACCESS_DENIED) ||
       !strcmp(e->name, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED)))
    return kExitNotPermitted;
  return kExitFailed;
}

int Status(sd_bus* bus, bool json) {
  const char* names[] = {"State", "RunningKernel", "DefaultTarget", "MemstoreBackend"};
  std::vector<std::string> values;
  for (const char* n : names) {
    sd_bus_error e = SD_BUS_ERROR_NULL;
    char* v = nullptr;
    int r = sd_bus_get_property_string(bus, kBusName, kPath, kManager, n, &e, &v);
    if (r < 0) {
      int code = BusError("read the service's state", &e, r);
      sd_bus_error_free(&e);
      return code;
    }
    values.push_back(v);
    free(v);
  }
  if (json) {
    std::printf("{\"state\":%s,\"running_kernel\":%s,\"default_target\":%s,\"memstore\":%s}\n",
                JsonString(values[0]).c_str(), JsonString(values[1]).c_str(),
                JsonString(values[2]).c_str(), JsonString(values[3]).c_str());
  } else {
    std::printf("State:          %s\nRunning kernel: %s\nDefault target: %s\nMemstore:       %s\n",
                values[0].c_str(), values[1].c_str(),
                values[2].empty() ? "(none under /boot)" : values[2].c_str(), values[3].c_str());
  }
  return kExitDone;
}

int Check(sd_bus* bus, bool json, uint32_t tree, const std::string& kernel) {
  sd_bus_message* m = nullptr;
  sd_bus_message* reply = nullptr;
  sd_bus_error e = SD_BUS_ERROR_NULL;
  int r = sd_bus_message_new_method_call(bus, &m, kBusName, kPath, kManager, "Check");
  if (r >= 0) r = sd_bus_message_open_container(m, 'a', "{sv}");
  if (r >= 0 && tree) r = sd_bus_message_append(m, "{sv}", "tree", "u", tree);
  if (r >= 0 && !kernel.empty())
    r = sd_bus_message_append(m, "{sv}", "kernel", "s", kernel.c_str());
  if (r >= 0) r = sd_bus_message_close_container(m);
  if (r >= 0) r = sd_bus_call(bus, m, 10 * 60 * 1000000ull, &e, &reply);
  sd_bus_message_unref(m);
  if (r < 0) {
    int code = BusError("check", &e, r);
    sd_bus_error_free(&e);
    return code;
  }
  int dumpable = 0, found = 0, upgradable = 0;
  uint32_t tasks = 0, threads = 0;
  std::string target;
  std::vector<Problem> problems;
  r = sd_bus_message_enter_container(reply, 'a', "{sv}");
  while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
    const char* key;
    sd_bus_message_read(reply, "s", &key);
    if (!strcmp(key, "dumpable"))
      r = sd_bus_message_read(reply, "v", "b", &dumpable);
    else if (!strcmp(key, "target-kernel-found"))
      r = sd_bus_message_read(reply, "v", "b", &found);
    else if (!strcmp(key, "upgradable"))
      r = sd_bus_message_read(reply, "v", "b", &upgradable);
    else if (!strcmp(key, "tasks"))
      r = sd_bus_message_read(reply, "v", "u", &tasks);
    else if (!strcmp(key, "threads"))
      r = sd_bus_message_read(reply, "v", "u", &threads);
    else if (!strcmp(key, "target-kernel")) {
      const char* s;
      r = sd_bus_message_read(reply, "v", "s", &s);
      if (r >= 0) target = s;
    } else if (!strcmp(key, "problems")) {
      r = sd_bus_message_enter_container(reply, 'v', "a(isss)");
      if (r >= 0) r = sd_bus_message_enter_container(reply, 'a', "(isss)");
      int pid;
      const char *obj, *what, *reason;
      while (r >= 0 && (r = sd_bus_message_read(reply, "(isss)", &pid, &obj, &what, &reason)) > 0)
        problems.push_back({pid, obj, what, reason});
      if (r >= 0) r = sd_bus_message_exit_container(reply);
      if (r >= 0) r = sd_bus_message_exit_container(reply);
    } else {
      r = sd_bus_message_skip(reply, "v");  // keys a newer kleapd adds
    }
    if (r >= 0) r = sd_bus_message_exit_container(reply);
  }
  sd_bus_message_unref(reply);
  if (r < 0) {
    std::fprintf(stderr, "upgrade-kernel: check: bad reply: %s\n", strerror(-r));
    return kExitFailed;
  }
  if (json) {
    std::printf(
        "{\"upgradable\":%s,\"dumpable\":%s,\"tasks\":%u,\"threads\":%u,\"target_kernel\":%s,"
        "\"target_kernel_found\":%s,\"problems\":[",
        upgradable ? "true" : "false", dumpable ? "true" : "false", tasks, threads,
        JsonString(target).c_str(), found ? "true" : "false");
    for (size_t i = 0; i < problems.size(); ++i)
      std::printf("%s{\"pid\":%d,\"object\":%s,\"what\":%s,\"reason\":%s}", i ? "," : "",
                  problems[i].pid, JsonString(problems[i].object).c_str(),
                  JsonString(problems[i].what).c_str(), JsonString(problems[i].reason).c_str());
    std::printf("]}\n");
  } else {
    for (auto& p : problems)
      std::printf("pid %d %s%s%s: %s\n", p.pid, p.object.c_str(), p.what.empty() ? "" : ": ",
                  p.what.c_str(), p.reason.c_str());
    std::printf("%u tasks, %u threads: %s\n", tasks, threads,
                dumpable ? "every task can be carried"
                         : (std::to_string(problems.size()) + " problems").c_str());
    std::printf("target kernel: %s\n", found ? target.c_str() : "none found");
  }
  if (!found) return kExitNothing;
  return upgradable ? kExitDone : kExitFailed;
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false, user = false;
  uint32_t tree = 0;
  std::string verb, kernel;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json")
      json = true;
    else if (a == "--user")
      user = true;  // tests: the session bus
    else if (a == "-h" || a == "--help")
      return std::fputs(kUsage, stdout), 0;
    else if (a == "--tree" && i + 1 < argc)
      tree = uint32_t(strtoul(argv[++i], nullptr, 10));
    else if (a == "--kernel" && i + 1 < argc)
      kernel = argv[++i];
    else if (a[0] != '-' && verb.empty())
      verb = a;
    else
      return std::fprintf(stderr, "upgrade-kernel: bad argument %s\n%s", a.c_str(), kUsage),
             kExitFailed;
  }
  if (verb != "status" && verb != "check") return std::fprintf(stderr, "%s", kUsage), kExitFailed;
  sd_bus* bus = nullptr;
  int r = user ? sd_bus_open_user(&bus) : sd_bus_open_system(&bus);
  if (r < 0) {
    std::fprintf(stderr, "upgrade-kernel: connect to the %s bus: %s\n", user ? "session" : "system",
                 strerror(-r));
    return kExitFailed;
  }
  int code = verb == "status" ? Status(bus, json) : Check(bus, json, tree, kernel);
  sd_bus_flush_close_unref(bus);
  return code;
}
