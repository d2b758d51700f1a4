// upgrade-kernel: the admin CLI, a client of org.kleap.Upgrader1 like any other.
#include <signal.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "engine/base/json.h"
#include "upgrader/sd_ptr.h"

namespace {

using kleap::JsonString;
using kleap::SdBus;
using kleap::SdError;
using kleap::SdMessage;
using kleap::SdSlot;

constexpr int kExitDone = 0, kExitFailed = 1, kExitNothing = 2, kExitNotPermitted = 77;
constexpr char kBusName[] = "org.kleap.Upgrader1";
constexpr char kPath[] = "/org/kleap/Upgrader1";
constexpr char kManager[] = "org.kleap.Upgrader1.Manager";
constexpr char kJobInterface[] = "org.kleap.Upgrader1.Job";
constexpr char kJobPrefix[] = "/org/kleap/Upgrader1/job/";
constexpr uint64_t kCallTimeoutUsec = 10ull * 60 * 1000000;

const char kUsage[] =
    "Usage: upgrade-kernel [OPTIONS] status\n"
    "       upgrade-kernel [OPTIONS] check [--tree PID] [--kernel PATH]\n"
    "       upgrade-kernel [OPTIONS] upgrade [KERNEL] [--initrd PATH] [--cmdline STRING]\n"
    "                      [--tree PID] [--dry-run] [--yes] [--no-block]\n"
    "       upgrade-kernel [OPTIONS] cancel [JOB]\n"
    "       upgrade-kernel [OPTIONS] log [JOB]\n"
    "\n"
    "Options: --json (one JSON document on stdout), --no-ask-password (never ask polkit's\n"
    "agent for a password), -h/--help.\n"
    "upgrade: KERNEL defaults to the newest /boot/vmlinuz-* that isn't running, with its\n"
    "initrd and the current command line. --dry-run stages the kernel and unloads it again,\n"
    "freezing nothing; --yes skips the question before the point of no return; --no-block\n"
    "prints the job's object path and returns.\n"
    "\n"
    "Exit status: 0 done (check: the upgrade can go ahead), 1 failed (check: something\n"
    "blocks it), 2 nothing to do (no kernel to upgrade to, no job to cancel, nothing\n"
    "logged), 77 not permitted. See upgrade-kernel(8).\n";

struct Args {
  bool json = false, user = false, dry_run = false, yes = false, no_block = false, no_ask = false;
  uint32_t tree = 0;
  std::string verb, target, kernel, initrd, cmdline;
};

struct Problem {
  int pid;
  std::string object, what, reason;
};

bool IsDenied(const sd_bus_error* e) {
  return e && e->name &&
         (!strcmp(e->name, SD_BUS_ERROR_ACCESS_DENIED) ||
          !strcmp(e->name, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED));
}

int BusError(const char* what, const sd_bus_error* e, int r, bool json) {
  std::string msg = e && e->message ? e->message : strerror(-r);
  std::fprintf(stderr, "upgrade-kernel: %s: %s\n", what, msg.c_str());
  if (json)
    std::printf("{\"error\":%s,\"message\":%s}\n", JsonString(e && e->name ? e->name : "").c_str(),
                JsonString(msg).c_str());
  if (IsDenied(e)) return kExitNotPermitted;
  return kExitFailed;
}

// Reads one variant of a basic type (or an array of them) as JSON.
int VariantToJson(sd_bus_message* m, std::string* out) {
  char type;
  const char* contents;
  int r = sd_bus_message_peek_type(m, &type, &contents);
  if (r <= 0) return r < 0 ? r : -EBADMSG;
  r = sd_bus_message_enter_container(m, 'v', contents);
  if (r < 0) return r;
  char t = contents[0];
  char buf[64];
  switch (t) {
    case 'b': {
      int v;
      r = sd_bus_message_read_basic(m, t, &v);
      *out += v ? "true" : "false";
      break;
    }
    case 's':
    case 'o': {
      const char* v;
      r = sd_bus_message_read_basic(m, t, &v);
      if (r >= 0) *out += JsonString(v);
      break;
    }
    case 'u':
    case 'i': {
      uint32_t v;
      r = sd_bus_message_read_basic(m, t, &v);
      std::snprintf(buf, sizeof buf, t == 'u' ? "%" PRIu32 : "%" PRId32, v);
      *out += buf;
      break;
    }
    case 't':
    case 'x': {
      uint64_t v;
      r = sd_bus_message_read_basic(m, t, &v);
      std::snprintf(buf, sizeof buf, t == 't' ? "%" PRIu64 : "%" PRId64, v);
      *out += buf;
      break;
    }
    case 'd': {
      double v;
      r = sd_bus_message_read_basic(m, t, &v);
      std::snprintf(buf, sizeof buf, "%.6g", v);
      *out += buf;
      break;
    }
    default:
      *out += "null";  // a type this client doesn't know: skipped
      r = sd_bus_message_skip(m, contents);
  }
  if (r < 0) return r;
  return sd_bus_message_exit_container(m);
}

// Reads an a{sv} of basic types as a JSON object; `keep` sees each key and value.
int DictToJson(sd_bus_message* m, std::string* out) {
  int r = sd_bus_message_enter_container(m, 'a', "{sv}");
  if (r < 0) return r;
  *out += "{";
  bool first = true;
  while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
    const char* key;
    if ((r = sd_bus_message_read(m, "s", &key)) < 0) return r;
    *out += (first ? "" : ",") + JsonString(key) + ":";
    first = false;
    if ((r = VariantToJson(m, out)) < 0) return r;
    if ((r = sd_bus_message_exit_container(m)) < 0) return r;
  }
  if (r < 0) return r;
  *out += "}";
  return sd_bus_message_exit_container(m);
}

// A string value of a flat JSON object made by DictToJson ("" when absent): enough
// for the few keys this client shows.
std::string JsonField(const std::string& json, const std::string& key) {
  auto at = json.find(JsonString(key) + ":\"");
  if (at == std::string::npos) return "";
  std::string v;
  for (size_t i = at + key.size() + 4; i < json.size() && json[i] != '"'; ++i) {
    if (json[i] == '\\' && i + 1 < json.size()) ++i;
    v += json[i];
  }
  return v;
}

int Status(sd_bus* bus, const Args& a) {
  const char* names[] = {"State", "RunningKernel", "DefaultTarget", "MemstoreBackend",
                         "CurrentJob"};
  std::vector<std::string> values;
  for (const char* n : names) {
    SdError e;
    SdMessage reply;
    int r = sd_bus_get_property(bus, kBusName, kPath, kManager, n, e.get(), reply.put(),
                                !strcmp(n, "CurrentJob") ? "o" : "s");
    const char* v = nullptr;
    if (r >= 0)
      r = sd_bus_message_read_basic(reply.get(), !strcmp(n, "CurrentJob") ? 'o' : 's', &v);
    if (r < 0) return BusError("read the service's state", e.get(), r, a.json);
    values.push_back(v);
  }
  std::string last;
  SdError e;
  SdMessage reply;
  int r = sd_bus_get_property(bus, kBusName, kPath, kManager, "LastUpgrade", e.get(), reply.put(),
                              "a{sv}");
  if (r >= 0) r = DictToJson(reply.get(), &last);
  if (r < 0) return BusError("read the last upgrade", e.get(), r, a.json);
  bool running = values[4] != "/";
  if (a.json) {
    std::printf(
        "{\"state\":%s,\"running_kernel\":%s,\"default_target\":%s,\"memstore\":%s,"
        "\"current_job\":%s,\"last_upgrade\":%s}\n",
        JsonString(values[0]).c_str(), JsonString(values[1]).c_str(), JsonString(values[2]).c_str(),
        JsonString(values[3]).c_str(), running ? JsonString(values[4]).c_str() : "null",
        last == "{}" ? "null" : last.c_str());
  } else {
    std::printf("State:          %s\nRunning kernel: %s\nDefault target: %s\nMemstore:       %s\n",
                values[0].c_str(), values[1].c_str(),
                values[2].empty() ? "(none under /boot)" : values[2].c_str(), values[3].c_str());
    if (running) std::printf("Current job:    %s\n", values[4].c_str());
    if (last != "{}")
      std::printf("Last upgrade:   %s: %s\n", JsonField(last, "job").c_str(),
                  JsonField(last, "message").c_str());
  }
  return kExitDone;
}

struct CheckResult {
  int dumpable = 0, found = 0, upgradable = 0;
  uint32_t tasks = 0, threads = 0;
  std::string target;
  std::vector<Problem> problems;
};

// Calls Check; < 0 on a transport error (e filled in).
int CallCheck(sd_bus* bus, uint32_t tree, const std::string& kernel, CheckResult* out,
              sd_bus_error* e) {
  SdMessage call, reply_holder;
  int r = sd_bus_message_new_method_call(bus, call.put(), kBusName, kPath, kManager, "Check");
  sd_bus_message* m = call.get();
  if (r >= 0) r = sd_bus_message_open_container(m, 'a', "{sv}");
  if (r >= 0 && tree) r = sd_bus_message_append(m, "{sv}", "tree", "u", tree);
  if (r >= 0 && !kernel.empty())
    r = sd_bus_message_append(m, "{sv}", "kernel", "s", kernel.c_str());
  if (r >= 0) r = sd_bus_message_close_container(m);
  if (r >= 0) r = sd_bus_call(bus, m, kCallTimeoutUsec, e, reply_holder.put());
  if (r < 0) return r;
  sd_bus_message* reply = reply_holder.get();
  r = sd_bus_message_enter_container(reply, 'a', "{sv}");
  while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
    const char* key;
    sd_bus_message_read(reply, "s", &key);
    if (!strcmp(key, "dumpable"))
      r = sd_bus_message_read(reply, "v", "b", &out->dumpable);
    else if (!strcmp(key, "target-kernel-found"))
      r = sd_bus_message_read(reply, "v", "b", &out->found);
    else if (!strcmp(key, "upgradable"))
      r = sd_bus_message_read(reply, "v", "b", &out->upgradable);
    else if (!strcmp(key, "tasks"))
      r = sd_bus_message_read(reply, "v", "u", &out->tasks);
    else if (!strcmp(key, "threads"))
      r = sd_bus_message_read(reply, "v", "u", &out->threads);
    else if (!strcmp(key, "target-kernel")) {
      const char* s;
      r = sd_bus_message_read(reply, "v", "s", &s);
      if (r >= 0) out->target = s;
    } else if (!strcmp(key, "problems")) {
      r = sd_bus_message_enter_container(reply, 'v', "a(isss)");
      if (r >= 0) r = sd_bus_message_enter_container(reply, 'a', "(isss)");
      int pid;
      const char *obj, *what, *reason;
      while (r >= 0 && (r = sd_bus_message_read(reply, "(isss)", &pid, &obj, &what, &reason)) > 0)
        out->problems.push_back({pid, obj, what, reason});
      if (r >= 0) r = sd_bus_message_exit_container(reply);
      if (r >= 0) r = sd_bus_message_exit_container(reply);
    } else {
      r = sd_bus_message_skip(reply, "v");  // keys a newer kleapd adds
    }
    if (r >= 0) r = sd_bus_message_exit_container(reply);
  }
  if (r < 0) sd_bus_error_setf(e, SD_BUS_ERROR_INVALID_ARGS, "bad reply: %s", strerror(-r));
  return r;
}

void PrintProblems(const CheckResult& c) {
  for (auto& p : c.problems)
    std::printf("pid %d %s%s%s: %s\n", p.pid, p.object.c_str(), p.what.empty() ? "" : ": ",
                p.what.c_str(), p.reason.c_str());
}

int Check(sd_bus* bus, const Args& a) {
  SdError e;
  CheckResult c;
  int r = CallCheck(bus, a.tree, a.kernel, &c, e.get());
  if (r < 0) return BusError("check", e.get(), r, a.json);
  if (a.json) {
    std::printf(
        "{\"upgradable\":%s,\"dumpable\":%s,\"tasks\":%u,\"threads\":%u,\"target_kernel\":%s,"
        "\"target_kernel_found\":%s,\"problems\":[",
        c.upgradable ? "true" : "false", c.dumpable ? "true" : "false", c.tasks, c.threads,
        JsonString(c.target).c_str(), c.found ? "true" : "false");
    for (size_t i = 0; i < c.problems.size(); ++i)
      std::printf("%s{\"pid\":%d,\"object\":%s,\"what\":%s,\"reason\":%s}", i ? "," : "",
                  c.problems[i].pid, JsonString(c.problems[i].object).c_str(),
                  JsonString(c.problems[i].what).c_str(), JsonString(c.problems[i].reason).c_str());
    std::printf("]}\n");
  } else {
    PrintProblems(c);
    std::printf("%u tasks, %u threads: %s\n", c.tasks, c.threads,
                c.dumpable ? "every task can be carried"
                           : (std::to_string(c.problems.size()) + " problems").c_str());
    std::printf("target kernel: %s\n", c.found ? c.target.c_str() : "none found");
  }
  if (!c.found) return kExitNothing;
  return c.upgradable ? kExitDone : kExitFailed;
}

// ---------------------------------------------------------------------------
// upgrade: start a job and follow it to its Completed signal.

volatile sig_atomic_t g_interrupted = 0;
void OnInterrupt(int) {
  g_interrupted = 1;
}

struct Follow {
  const Args* args;
  std::string job;  // our job's path, once known
  bool tty = false;
  std::string phase;
  uint32_t progress = 0;
  bool completed = false, success = false;
  std::string message, details;  // details as JSON
};

void ShowProgress(Follow& f) {
  if (f.args->json) return;
  if (f.tty) {
    int filled = int(f.progress * 30 / 100);
    std::fprintf(stderr, "\r[%.*s%*s] %3u%% %-8s", filled, "##############################",
                 30 - filled, "", f.progress, f.phase.c_str());
    std::fflush(stderr);
  } else {
    std::printf("phase: %s (%u%%)\n", f.phase.c_str(), f.progress);
    std::fflush(stdout);
  }
}

int OnPropertiesChanged(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* f = static_cast<Follow*>(userdata);
  const char* path = sd_bus_message_get_path(m);
  const char* iface;
  if (!path || f->job != path || sd_bus_message_read(m, "s", &iface) < 0 ||
      strcmp(iface, kJobInterface))
    return 0;
  std::string phase = f->phase;
  uint32_t progress = f->progress;
  int r = sd_bus_message_enter_container(m, 'a', "{sv}");
  while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
    const char* key;
    if (sd_bus_message_read(m, "s", &key) < 0) return 0;
    if (!strcmp(key, "Phase")) {
      const char* v;
      if (sd_bus_message_read(m, "v", "s", &v) >= 0) phase = v;
    } else if (!strcmp(key, "Progress")) {
      sd_bus_message_read(m, "v", "u", &progress);
    } else {
      sd_bus_message_skip(m, "v");
    }
    r = sd_bus_message_exit_container(m);
  }
  if (phase == "done" || phase == "failed") return 0;  // Completed says it
  bool changed = f->tty ? (phase != f->phase || progress != f->progress) : phase != f->phase;
  f->phase = phase;
  f->progress = progress;
  if (changed) ShowProgress(*f);
  return 0;
}

int OnCompleted(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* f = static_cast<Follow*>(userdata);
  const char* path = sd_bus_message_get_path(m);
  if (!path || f->job != path) return 0;
  int ok = 0;
  const char* msg = "";
  if (sd_bus_message_read(m, "bs", &ok, &msg) < 0) return 0;
  f->success = ok;
  f->message = msg;
  f->details.clear();
  if (DictToJson(m, &f->details) < 0) f->details = "{}";
  f->completed = true;
  return 0;
}

int CallJobCancel(sd_bus* bus, const std::string& job, sd_bus_error* e) {
  return sd_bus_call_method(bus, kBusName, job.c_str(), kJobInterface, "Cancel", e, nullptr, "");
}

int Upgrade(sd_bus* bus, const Args& a) {
  bool tty_in = isatty(STDIN_FILENO);
  sd_bus_set_allow_interactive_authorization(bus, !a.no_ask);
  std::string kernel = a.target;
  if (!a.dry_run && !a.yes) {
    // Before the point of no return, ask; first show what would be carried.
    if (!tty_in) {
      std::fprintf(stderr,
                   "upgrade-kernel: stdin is not a terminal, so there is no one to ask before the "
                   "point of no return; pass --yes\n");
      return kExitFailed;
    }
    SdError e;
    CheckResult c;
    int r = CallCheck(bus, a.tree, kernel, &c, e.get());
    if (r < 0) return BusError("check", e.get(), r, false);
    if (!c.found) {
      std::fprintf(stderr, "upgrade-kernel: no kernel to upgrade to\n");
      return kExitNothing;
    }
    if (!c.upgradable) {
      PrintProblems(c);
      std::fprintf(stderr, "upgrade-kernel: %zu problems block the upgrade\n", c.problems.size());
      return kExitFailed;
    }
    std::fprintf(stderr,
                 "Upgrade to %s now? %u tasks (%u threads) will be frozen, carried across a "
                 "kexec and resumed. [y/N] ",
                 c.target.c_str(), c.tasks, c.threads);
    char answer[16] = "";
    if (!fgets(answer, sizeof answer, stdin) || (answer[0] != 'y' && answer[0] != 'Y')) {
      std::fprintf(stderr, "upgrade-kernel: not upgrading\n");
      return kExitNothing;
    }
  }

  Follow f;
  f.args = &a;
  f.tty = isatty(STDERR_FILENO) && !a.json;
  // Listen before asking, so that no phase of the new job can be missed.
  SdSlot s1, s2;
  if (!a.no_block) {
    sd_bus_match_signal(bus, s1.put(), kBusName, nullptr, "org.freedesktop.DBus.Properties",
                        "PropertiesChanged", OnPropertiesChanged, &f);
    sd_bus_match_signal(bus, s2.put(), kBusName, nullptr, kJobInterface, "Completed", OnCompleted,
                        &f);
  }
  SdMessage call, reply;
  SdError e;
  int r = sd_bus_message_new_method_call(bus, call.put(), kBusName, kPath, kManager, "Upgrade");
  sd_bus_message* m = call.get();
  if (r >= 0)
    r = sd_bus_message_append(m, "sss", kernel.c_str(), a.initrd.c_str(), a.cmdline.c_str());
  if (r >= 0) r = sd_bus_message_open_container(m, 'a', "{sv}");
  if (r >= 0 && a.dry_run) r = sd_bus_message_append(m, "{sv}", "dry-run", "b", 1);
  if (r >= 0) r = sd_bus_message_append(m, "{sv}", "interactive", "b", int(!a.no_ask));
  if (r >= 0 && a.tree) r = sd_bus_message_append(m, "{sv}", "tree", "u", a.tree);
  if (r >= 0) r = sd_bus_message_close_container(m);
  if (r >= 0) r = sd_bus_call(bus, m, kCallTimeoutUsec, e.get(), reply.put());
  const char* job = nullptr;
  if (r >= 0) r = sd_bus_message_read(reply.get(), "o", &job);
  if (r < 0) {
    int code = BusError(a.dry_run ? "dry run" : "upgrade", e.get(), r, a.json);
    if (e->name && !strcmp(e->name, "org.kleap.Upgrader1.Error.KernelNotFound") && a.target.empty())
      code = kExitNothing;
    return code;
  }
  f.job = job;
  reply.reset();
  if (a.no_block) {
    if (a.json)
      std::printf("{\"job\":%s}\n", JsonString(f.job).c_str());
    else
      std::printf("%s\n", f.job.c_str());
    return kExitDone;
  }
  if (!a.json && !f.tty) std::printf("job: %s\n", f.job.c_str());
  // Ctrl-C asks the job to stop (it can't once past the point of no return).
  struct sigaction sa = {};
  sa.sa_handler = OnInterrupt;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  bool cancel_sent = false;
  while (!f.completed) {
    if (g_interrupted && !cancel_sent) {
      cancel_sent = true;
      SdError ce;
      if (CallJobCancel(bus, f.job, ce.get()) < 0)
        std::fprintf(stderr, "\nupgrade-kernel: cannot cancel %s: %s\n", f.job.c_str(),
                     ce->message ? ce->message : "?");
      else
        std::fprintf(stderr, "\nupgrade-kernel: canceling %s\n", f.job.c_str());
    }
    r = sd_bus_process(bus, nullptr);
    if (r < 0) {
      std::fprintf(stderr, "upgrade-kernel: lost the bus while following %s: %s\n", f.job.c_str(),
                   strerror(-r));
      return kExitFailed;
    }
    if (r == 0) sd_bus_wait(bus, 200000);
  }
  if (f.tty) std::fprintf(stderr, "\n");
  if (a.json) {
    std::printf("{\"job\":%s,\"success\":%s,\"message\":%s,\"details\":%s}\n",
                JsonString(f.job).c_str(), f.success ? "true" : "false",
                JsonString(f.message).c_str(), f.details.c_str());
  } else if (f.success) {
    std::printf("%s\n", f.message.c_str());
  } else {
    std::fprintf(stderr, "upgrade-kernel: %s failed in phase %s: %s\n", f.job.c_str(),
                 JsonField(f.details, "phase").c_str(), f.message.c_str());
  }
  if (f.success) return kExitDone;
  std::string err = JsonField(f.details, "error");
  if (err == "org.kleap.Upgrader1.Error.KernelNotFound" && a.target.empty()) return kExitNothing;
  return kExitFailed;
}

// "3" or a path: the job's object path.
std::string JobPath(const std::string& arg) {
  if (arg.empty() || arg[0] == '/') return arg;
  return kJobPrefix + arg;
}

int Cancel(sd_bus* bus, const Args& a) {
  std::string job = JobPath(a.target);
  if (job.empty()) {
    SdError e;
    SdMessage reply;
    const char* cur = nullptr;
    int r = sd_bus_get_property(bus, kBusName, kPath, kManager, "CurrentJob", e.get(), reply.put(),
                                "o");
    if (r >= 0) r = sd_bus_message_read(reply.get(), "o", &cur);
    if (r >= 0) job = cur;
    if (r < 0) return BusError("find the running job", e.get(), r, a.json);
    if (job == "/") {
      std::fprintf(stderr, "upgrade-kernel: no upgrade is running\n");
      if (a.json) std::printf("{\"canceled\":null}\n");
      return kExitNothing;
    }
  }
  sd_bus_set_allow_interactive_authorization(bus, !a.no_ask);
  SdError e;
  int r = CallJobCancel(bus, job, e.get());
  if (r < 0) {
    int code = BusError(("cancel " + job).c_str(), e.get(), r, a.json);
    if (sd_bus_error_has_names(e.get(), SD_BUS_ERROR_UNKNOWN_OBJECT, SD_BUS_ERROR_UNKNOWN_METHOD))
      code = kExitNothing;
    return code;
  }
  if (a.json)
    std::printf("{\"canceled\":%s}\n", JsonString(job).c_str());
  else
    std::printf("cancel requested: %s\n", job.c_str());
  return kExitDone;
}

// log: kleapd's job entries from the journal (SYSLOG_IDENTIFIER=kleapd and KLEAP_JOB=).
int Log(const Args& a) {
  sd_journal* j = nullptr;
  int r = sd_journal_open(&j, SD_JOURNAL_LOCAL_ONLY);
  if (r < 0) {
    std::fprintf(stderr, "upgrade-kernel: open the journal: %s\n", strerror(-r));
    return kExitFailed;
  }
  sd_journal_add_match(j, "SYSLOG_IDENTIFIER=kleapd", 0);
  std::string job_id;
  if (!a.target.empty()) {
    std::string p = JobPath(a.target);
    job_id = p.substr(p.rfind('/') + 1);
    std::string match = "KLEAP_JOB=" + job_id;
    sd_journal_add_match(j, match.c_str(), 0);
  }
  size_t n = 0;
  if (a.json) std::printf("[");
  SD_JOURNAL_FOREACH(j) {
    auto field = [&](const char* name) -> std::string {
      const void* d;
      size_t len;
      if (sd_journal_get_data(j, name, &d, &len) < 0) return "";
      std::string s(static_cast<const char*>(d), len);
      return s.substr(strlen(name) + 1);
    };
    std::string job = field("KLEAP_JOB");
    if (job.empty()) continue;  // the daemon's own lines: journalctl -u kleapd has them
    uint64_t usec = 0;
    sd_journal_get_realtime_usec(j, &usec);
    std::string phase = field("KLEAP_PHASE"), msg = field("MESSAGE"), id = field("MESSAGE_ID");
    if (a.json) {
      std::printf("%s{\"realtime_usec\":%" PRIu64
                  ",\"job\":%s,\"phase\":%s,\"message_id\":%s,"
                  "\"priority\":%s,\"message\":%s}",
                  n ? "," : "", usec, job.c_str(), JsonString(phase).c_str(),
                  id.empty() ? "null" : JsonString(id).c_str(),
                  field("PRIORITY").empty() ? "null" : field("PRIORITY").c_str(),
                  JsonString(msg).c_str());
    } else {
      time_t t = time_t(usec / 1000000);
      char when[32];
      strftime(when, sizeof when, "%F %T", localtime(&t));
      std::printf("%s job %s [%s] %s\n", when, job.c_str(), phase.c_str(), msg.c_str());
    }
    ++n;
  }
  if (a.json) std::printf("]\n");
  sd_journal_close(j);
  if (n == 0) {
    std::fprintf(stderr, "upgrade-kernel: the journal holds no kleapd job entries%s\n",
                 job_id.empty() ? "" : (" for job " + job_id).c_str());
    return kExitNothing;
  }
  return kExitDone;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string v;
    if (s == "--json") {
      a.json = true;
    } else if (s == "--user") {
      a.user = true;  // tests: the session bus
    } else if (s == "-h" || s == "--help") {
      return std::fputs(kUsage, stdout), 0;
    } else if (s == "--dry-run") {
      a.dry_run = true;
    } else if (s == "--yes" || s == "-y") {
      a.yes = true;
    } else if (s == "--no-block") {
      a.no_block = true;
    } else if (s == "--no-ask-password") {
      a.no_ask = true;
    } else if (s == "--tree" && value(&v)) {
      a.tree = uint32_t(strtoul(v.c_str(), nullptr, 10));
    } else if (s == "--kernel" && value(&a.kernel)) {
    } else if (s == "--initrd" && value(&a.initrd)) {
    } else if (s == "--cmdline" && value(&a.cmdline)) {
    } else if (s[0] != '-' && a.verb.empty()) {
      a.verb = s;
    } else if (s[0] != '-' && a.target.empty() &&
               (a.verb == "upgrade" || a.verb == "cancel" || a.verb == "log")) {
      a.target = s;
    } else {
      return std::fprintf(stderr, "upgrade-kernel: bad argument %s\n%s", s.c_str(), kUsage),
             kExitFailed;
    }
  }
  if (a.verb == "upgrade" && a.target.empty()) a.target = a.kernel;
  if (a.verb == "log") return Log(a);
  if (a.verb != "status" && a.verb != "check" && a.verb != "upgrade" && a.verb != "cancel")
    return std::fprintf(stderr, "%s", kUsage), kExitFailed;
  SdBus bus_holder;
  int r = a.user ? sd_bus_open_user(bus_holder.put()) : sd_bus_open_system(bus_holder.put());
  sd_bus* bus = bus_holder.get();
  if (r < 0) {
    std::fprintf(stderr, "upgrade-kernel: connect to the %s bus: %s\n",
                 a.user ? "session" : "system", strerror(-r));
    return kExitFailed;
  }
  return a.verb == "status"    ? Status(bus, a)
         : a.verb == "check"   ? Check(bus, a)
         : a.verb == "upgrade" ? Upgrade(bus, a)
                               : Cancel(bus, a);
}
