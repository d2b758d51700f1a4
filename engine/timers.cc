// Timers of a task: the three interval timers (setitimer) and POSIX timers.
//
// Dump: /proc/PID/timers lists each POSIX timer's id, clock, signal, sigev_value and
// target; the time left and the period come from the task itself (getitimer,
// timer_gettime), asked in its own ABI. Restore re-creates the POSIX timers with
// their ids: through PR_TIMER_CREATE_RESTORE_IDS where the kernel has it (6.16 on),
// otherwise by creating timers in order and deleting the ids that were free, which the
// sequential allocator of older kernels allows (refused with the ids when it doesn't).
// Then each timer is armed with its time left less the time the tree was down,
// measured on the timer's clock when that clock ran on (CPU-time clocks didn't); a
// timer that expired meanwhile fires at once, once.
//
// Not carried: the overrun count of the last expiry (no interface sets it), and
// whether a timer was armed with TIMER_ABSTIME (it comes back relative).
#include "engine/timers.h"

#include <signal.h>
#include <sys/time.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <sstream>

#include "engine/base/clock.h"
#include "engine/remote_mem.h"

namespace kleap {
namespace {

constexpr int kPrTimerCreateRestoreIds = 77;  // PR_TIMER_CREATE_RESTORE_IDS (6.16)
constexpr uint32_t kSigevThreadId = 4;        // SIGEV_THREAD_ID

// CPU-time clocks as the kernel keeps them (and /proc shows them): negative, the pid in
// the upper bits (0: the caller), bit 2 for a thread's clock, the low two bits the kind
// (0 prof, 1 virt, 2 sched). CLOCK_PROCESS_CPUTIME_ID comes back as pid 0's sched one.
int CpuClockPid(int clk) {
  return ~(clk >> 3);
}
bool CpuClockOfThread(int clk) {
  return clk < 0 && (clk & 4);
}

bool CpuClock(int clk) {
  return clk < 0 || clk == CLOCK_PROCESS_CPUTIME_ID || clk == CLOCK_THREAD_CPUTIME_ID;
}

bool TimerClock(int clk) {
  if (clk < 0) return (clk & 3) <= 2;
  switch (clk) {
    case CLOCK_REALTIME:
    case CLOCK_MONOTONIC:
    case CLOCK_PROCESS_CPUTIME_ID:
    case CLOCK_THREAD_CPUTIME_ID:
    case CLOCK_BOOTTIME:
    case CLOCK_REALTIME_ALARM:
    case CLOCK_BOOTTIME_ALARM:
    case CLOCK_TAI:
      return true;
    default:
      return false;
  }
}

// The layouts the kernel uses for one ABI: struct itimerval and struct itimerspec
// are four longs (ia32: the old 32-bit time ones, four 32-bit words).
template <class A>
struct TimeLayout {
  using word = typename A::sword;
  struct Four {
    word v[4];
  };
  static uint64_t Ns(word sec, word sub, int64_t sub_ns) {
    return uint64_t(sec) * kNsPerSec + uint64_t(sub) * uint64_t(sub_ns);
  }
};

// How long ago the values were read, on clock `clk`, for a tree that may have crossed
// a kexec (then monotonic and boottime started over: realtime measures the gap).
int64_t Elapsed(int clk, const img::TaskTimers& t, bool same_boot) {
  if (CpuClock(clk)) return 0;
  int64_t rt = NowNs(CLOCK_REALTIME) - t.dumped_realtime_ns();
  if (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_ALARM || clk == CLOCK_TAI || !same_boot)
    return rt;
  if (clk == CLOCK_MONOTONIC) return NowNs(CLOCK_MONOTONIC) - t.dumped_monotonic_ns();
  return NowNs(CLOCK_BOOTTIME) - t.dumped_boottime_ns();
}

// The time left once `elapsed` has passed: at least 1 ns for an armed timer, so that
// one that expired meanwhile fires at once.
uint64_t Left(uint64_t value, int64_t elapsed) {
  if (!value) return 0;
  if (elapsed <= 0) return value;
  return uint64_t(elapsed) >= value ? 1 : value - uint64_t(elapsed);
}

struct Four64 {
  int64_t v[4];
};
Four64 Split(uint64_t interval_ns, uint64_t value_ns, int64_t sub_div) {
  return {{int64_t(interval_ns / kNsPerSec), int64_t(interval_ns % kNsPerSec / sub_div),
           int64_t(value_ns / kNsPerSec), int64_t(value_ns % kNsPerSec / sub_div)}};
}

// A 64-bit struct sigevent: value, signo, notify, then the thread id.
struct Sigevent64 {
  uint64_t value;
  int32_t signo;
  int32_t notify;
  int32_t tid;
  int32_t pad[11];
};
static_assert(sizeof(Sigevent64) == 64);

}  // namespace

Result<std::vector<ProcTimer>> ParseProcTimers(const std::string& text) {
  std::vector<ProcTimer> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    std::string v = std::string(Trim(std::string_view(line).substr(colon + 1)));
    if (key == "ID") {
      out.emplace_back();
      out.back().id = std::atoi(v.c_str());
      continue;
    }
    if (out.empty()) return Err(EINVAL) << "/proc/PID/timers: '" << line << "' before an ID";
    ProcTimer& t = out.back();
    if (key == "signal") {  // "14/00000000deadbeef"
      auto slash = v.find('/');
      if (slash == std::string::npos)
        return Err(EINVAL) << "/proc/PID/timers: bad '" << line << "'";
      t.signo = std::atoi(v.c_str());
      t.sigev_value = std::strtoull(v.c_str() + slash + 1, nullptr, 16);
    } else if (key == "notify") {  // "signal/pid.123", "none/pid.123", "signal/tid.124"
      auto slash = v.find('/'), dot = v.find('.');
      if (slash == std::string::npos || dot == std::string::npos)
        return Err(EINVAL) << "/proc/PID/timers: bad '" << line << "'";
      std::string how = v.substr(0, slash), who = v.substr(slash + 1, dot - slash - 1);
      t.notify = how == "signal" ? SIGEV_SIGNAL : how == "none" ? SIGEV_NONE : SIGEV_THREAD;
      if (who == "tid") t.notify |= kSigevThreadId;
      t.notify_pid = std::atoi(v.c_str() + dot + 1);
    } else if (key == "ClockID") {
      t.clockid = std::atoi(v.c_str());
    }
  }
  return out;
}

std::vector<Problem> CheckTimers(pid_t pid) {
  std::vector<Problem> out;
  auto text = ReadFileToString(ProcPath(pid, "timers"));
  if (!text) {
    out.push_back({pid, "task", "timers",
                   "can't read /proc/" + std::to_string(pid) + "/timers: " +
                       text.error().ToString() + " (needs CONFIG_CHECKPOINT_RESTORE)"});
    return out;
  }
  auto timers = ParseProcTimers(*text);
  if (!timers) {
    out.push_back({pid, "task", "timers", timers.error().ToString()});
    return out;
  }
  auto tids = ListThreads(pid);
  for (auto& t : *timers) {
    std::string what =
        "POSIX timer " + std::to_string(t.id) + " on clock " + std::to_string(t.clockid);
    int of = t.clockid < 0 ? CpuClockPid(t.clockid) : 0;
    if (!TimerClock(t.clockid))
      out.push_back({pid, "task", what, "unknown clock"});
    else if (of != 0 && of != pid)
      // The pid stays the same across a restore, but the task may not be in the tree.
      out.push_back({pid, "task", what,
                     "a timer on the CPU clock of another task (" + std::to_string(of) +
                         ") is not supported"});
    else if ((t.clockid == CLOCK_THREAD_CPUTIME_ID || (CpuClockOfThread(t.clockid) && of == 0)) &&
             tids && tids->size() > 1)
      out.push_back({pid, "task", what,
                     "a thread CPU-time timer in a multithreaded task: /proc doesn't say "
                     "which thread's clock it runs on"});
  }
  return out;
}

Result<void> DumpTimers(DumpContext& ctx, const TaskInfo& task, img::TaskTimers* out) {
  pid_t pid = task.pid;
  RemoteSyscalls& rs = ctx.tree->Thread(pid);
  auto timers = KLEAP_TRY_CTX(ParseProcTimers(KLEAP_TRY(ReadFileToString(ProcPath(pid, "timers")))),
                              "task " << pid);
  auto mem = KLEAP_TRY(StackScratch::Borrow(pid, rs.saved_regs(), 64));
  out->set_dumped_realtime_ns(NowNs(CLOCK_REALTIME));
  out->set_dumped_monotonic_ns(NowNs(CLOCK_MONOTONIC));
  out->set_dumped_boottime_ns(NowNs(CLOCK_BOOTTIME));
  return WithArch(task.arch, [&](auto a) -> Result<void> {
    using A = decltype(a);
    using Four = typename TimeLayout<A>::Four;
    for (int which : {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF}) {
      KLEAP_TRY_CTX(rs.Call(A::kKind, A::kGetitimer, uint64_t(which), mem.at()),
                    "task " << pid << ": getitimer " << which);
      Four v = KLEAP_TRY(ReadRemoteValue(pid, mem.at<Four>()));
      // struct itimerval: it_interval, then it_value; microseconds.
      uint64_t interval = TimeLayout<A>::Ns(v.v[0], v.v[1], 1000);
      uint64_t value = TimeLayout<A>::Ns(v.v[2], v.v[3], 1000);
      if (!value) continue;  // disarmed
      img::ITimer* it = out->add_itimers();
      it->set_which(uint32_t(which));
      it->set_value_ns(value);
      it->set_interval_ns(interval);
    }
    for (auto& t : timers) {
      img::PosixTimer* p = out->add_posix();
      p->set_id(t.id);
      p->set_clockid(t.clockid);
      p->set_notify(t.notify);
      p->set_signo(t.signo);
      p->set_notify_tid(t.notify & kSigevThreadId ? t.notify_pid : 0);
      p->set_sigev_value(t.sigev_value);
      KLEAP_TRY_CTX(rs.Call(A::kKind, A::kTimerGettime, uint64_t(t.id), mem.at()),
                    "task " << pid << ": timer_gettime of timer " << t.id);
      Four v = KLEAP_TRY(ReadRemoteValue(pid, mem.at<Four>()));
      // struct itimerspec: it_interval, then it_value; nanoseconds.
      p->set_interval_ns(TimeLayout<A>::Ns(v.v[0], v.v[1], 1));
      p->set_value_ns(TimeLayout<A>::Ns(v.v[2], v.v[3], 1));
      p->set_overrun(int32_t(KLEAP_TRY_CTX(rs.Call(A::kKind, A::kTimerGetoverrun, uint64_t(t.id)),
                                           "task " << pid << ": timer_getoverrun")));
    }
    return Ok();
  });
}

Result<void> ValidateTimers(pid_t pid, const img::TaskTimers& t) {
  auto bad = [&]() { return Err(EINVAL) << "core image of task " << pid << ": "; };
  constexpr uint64_t kMax = uint64_t(INT32_MAX) * kNsPerSec;  // fits every ABI's time_t
  for (auto& it : t.itimers())
    if (it.which() > ITIMER_PROF || it.value_ns() > kMax || it.interval_ns() > kMax)
      return bad() << "bad interval timer " << it.which();
  std::set<int> ids;
  for (auto& p : t.posix()) {
    if (p.id() < 0 || !ids.insert(p.id()).second)
      return bad() << "POSIX timer id " << p.id() << " is negative or repeated";
    if (!TimerClock(p.clockid())) return bad() << "POSIX timer " << p.id() << ": bad clock";
    uint32_t how = p.notify() & ~kSigevThreadId;
    if (how != SIGEV_SIGNAL && how != SIGEV_NONE && how != SIGEV_THREAD)
      return bad() << "POSIX timer " << p.id() << ": bad notify " << p.notify();
    if (how != SIGEV_NONE && (p.signo() < 1 || p.signo() > 64))
      return bad() << "POSIX timer " << p.id() << ": bad signal " << p.signo();
    if (p.value_ns() > kMax || p.interval_ns() > kMax)
      return bad() << "POSIX timer " << p.id() << ": time out of range";
  }
  return Ok();
}

Result<void> RestoreTimers(RemoteSyscalls& rs, pid_t pid, RemotePtr<> scratch,
                           const img::TaskTimers& t, bool same_boot) {
  constexpr ArchKind k64 = ArchKind::kX86_64;
  KLEAP_TRY(ValidateTimers(pid, t));
  std::vector<img::PosixTimer> posix(t.posix().begin(), t.posix().end());
  std::sort(posix.begin(), posix.end(), [](auto& a, auto& b) { return a.id() < b.id(); });
  // scratch: [0] the timer id in and out, [64] the sigevent, [128] the itimerspec.
  const RemotePtr<int32_t> id_at = scratch.Cast<int32_t>();
  const RemotePtr<Sigevent64> ev_at = (scratch + 64).Cast<Sigevent64>();
  const RemotePtr<Four64> its_at = (scratch + 128).Cast<Four64>();
  bool explicit_ids = rs.Call(k64, X64Arch::kPrctl, kPrTimerCreateRestoreIds, 1).has_value();
  auto create = [&](const img::PosixTimer& p, int want) -> Result<int> {
    Sigevent64 ev{};
    ev.value = p.sigev_value();
    ev.signo = p.signo();
    ev.notify = int32_t(p.notify());
    ev.tid = p.notify_tid();
    KLEAP_TRY(WriteRemoteValue(pid, ev_at, ev));
    KLEAP_TRY(WriteRemoteValue(pid, id_at, int32_t(want)));
    KLEAP_TRY_CTX(
        rs.Call(k64, X64Arch::kTimerCreate, uint64_t(p.clockid()), ev_at, id_at),
        "task " << pid << ": timer_create for timer " << p.id() << " on clock " << p.clockid());
    return KLEAP_TRY(ReadRemoteValue(pid, id_at));
  };
  Result<void> made = [&]() -> Result<void> {
    for (auto& p : posix) {
      for (;;) {
        int got = KLEAP_TRY(create(p, p.id()));
        if (got == p.id()) break;
        if (explicit_ids || got > p.id())
          return Err(EEXIST) << "task " << pid << ": timer " << p.id()
                             << " can't be re-created with its id (the kernel gave " << got << ")";
        // An id that was free in the task: taken and given back, so the next is ours.
        KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kTimerDelete, uint64_t(got)),
                      "task " << pid << ": timer_delete " << got);
      }
    }
    return Ok();
  }();
  if (explicit_ids) (void)rs.Call(k64, X64Arch::kPrctl, kPrTimerCreateRestoreIds, 0);
  KLEAP_TRY(std::move(made));
  for (auto& p : posix) {
    if (!p.value_ns()) continue;
    Four64 its = Split(p.interval_ns(), Left(p.value_ns(), Elapsed(p.clockid(), t, same_boot)), 1);
    KLEAP_TRY(WriteRemoteValue(pid, its_at, its));
    KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kTimerSettime, uint64_t(p.id()), 0, its_at, 0),
                  "task " << pid << ": arm timer " << p.id());
  }
  for (auto& it : t.itimers()) {
    int clk = it.which() == ITIMER_REAL ? CLOCK_MONOTONIC : CLOCK_PROCESS_CPUTIME_ID;
    // setitimer counts in microseconds: 1 ns left would disarm it.
    uint64_t left = std::max<uint64_t>(Left(it.value_ns(), Elapsed(clk, t, same_boot)), 1000);
    Four64 v = Split(it.interval_ns(), left, 1000);
    KLEAP_TRY(WriteRemoteValue(pid, its_at, v));
    KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kSetitimer, it.which(), its_at, 0),
                  "task " << pid << ": setitimer " << it.which());
  }
  return Ok();
}

}  // namespace kleap
