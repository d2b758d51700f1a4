// timerfd: clock, mode (TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET), time left, period
// and expirations not yet read.
//
// Dump asks timerfd_gettime() through a copy of the fd: fdinfo alone shows 0 left for
// a periodic timer that expired and wasn't read, while gettime forwards it to its next
// period exactly as a gettime by the task would (the count of expirations is kept).
// Restore arms the timer so that it fires when it would have: the time the tree was
// down counts, measured on the timer's own clock when that clock ran on (the same
// boot, or a realtime clock) and on CLOCK_REALTIME across a kexec. Periods missed
// meanwhile are added to the expirations not yet read.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "engine/base/clock.h"
#include "engine/files.h"

#ifndef TFD_IOC_SET_TICKS
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)
#endif

namespace kleap {
namespace {

// The value field of an itimerspec holds at most this many ns (time_t seconds).
constexpr uint64_t kMaxNs = uint64_t(INT64_MAX);

bool IsRealtime(int clk) {
  return clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_ALARM;
}

// The clock to read "now" from: alarm clocks tick with their twins.
clockid_t ReadableClock(int clk) {
  return clk == CLOCK_REALTIME_ALARM   ? CLOCK_REALTIME
         : clk == CLOCK_BOOTTIME_ALARM ? CLOCK_BOOTTIME
                                       : clockid_t(clk);
}

uint64_t ToNs(const timespec& ts) {
  return uint64_t(ts.tv_sec) * kNsPerSec + uint64_t(ts.tv_nsec);
}
timespec ToTimespec(uint64_t ns) {
  return {time_t(ns / kNsPerSec), long(ns % kNsPerSec)};
}

}  // namespace

Result<void> DumpTimerfd(DumpContext&, const FdDesc& d, img::FileObject* fo) {
  img::Timerfd* t = fo->mutable_timerfd();
  t->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  UniqueFd copy = KLEAP_TRY(GrabFd(d.pid, d.fd));
  // Time left, the clock and the count of expirations must belong together: retry
  // when the timer expired in between.
  for (int attempt = 0;; ++attempt) {
    itimerspec before{}, after{};
    if (timerfd_gettime(copy.get(), &before) < 0) return ErrnoError() << "timerfd_gettime";
    FdInfo info = KLEAP_TRY(ReadFdInfo(d.pid, d.fd));
    int clk = int(KLEAP_TRY(FdInfoNumber(info, "clockid", 10)));
    int64_t clock_ns = NowNs(ReadableClock(clk));
    int64_t realtime_ns = NowNs(CLOCK_REALTIME);
    if (timerfd_gettime(copy.get(), &after) < 0) return ErrnoError() << "timerfd_gettime";
    uint64_t b = ToNs(before.it_value), a = ToNs(after.it_value);
    bool stable = (a == 0 && b == 0) || (a > 0 && a <= b);
    if (!stable && attempt < 10) continue;
    if (!stable) return Err(EAGAIN) << "timerfd: expires too often to be read consistently";
    t->set_clockid(clk);
    t->set_settime_flags(uint32_t(KLEAP_TRY(FdInfoNumber(info, "settime flags", 8))));
    t->set_ticks(KLEAP_TRY(FdInfoNumber(info, "ticks", 10)));
    t->set_value_ns(b);
    t->set_interval_ns(ToNs(before.it_interval));
    t->set_dumped_clock_ns(clock_ns);
    t->set_dumped_realtime_ns(realtime_ns);
    return Ok();
  }
}

Result<void> ValidateTimerfd(const img::FileObject& fo) {
  const img::Timerfd& t = fo.timerfd();
  int clk = t.clockid();
  if (clk != CLOCK_REALTIME && clk != CLOCK_MONOTONIC && clk != CLOCK_BOOTTIME &&
      clk != CLOCK_REALTIME_ALARM && clk != CLOCK_BOOTTIME_ALARM)
    return Err(EINVAL) << "files.img: timerfd " << fo.id() << ": bad clock " << clk;
  if (t.settime_flags() & ~uint32_t(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET))
    return Err(EINVAL) << "files.img: timerfd " << fo.id() << ": bad settime flags "
                       << t.settime_flags();
  if (t.value_ns() > kMaxNs || t.interval_ns() > kMaxNs)
    return Err(EINVAL) << "files.img: timerfd " << fo.id() << ": time out of range";
  return ValidateAnonFlags(fo, "timerfd", t.flags(), O_RDWR);
}

Result<UniqueFd> OpenTimerfd(const img::FileObject& fo, ImageReader& images, OpenFiles&) {
  const img::Timerfd& t = fo.timerfd();
  UniqueFd fd(
      timerfd_create(t.clockid(), TFD_CLOEXEC | (t.flags() & O_NONBLOCK ? TFD_NONBLOCK : 0)));
  if (!fd) return ErrnoError() << "timerfd " << fo.id() << ": create on clock " << t.clockid();
  clockid_t clk = ReadableClock(t.clockid());
  uint64_t ticks = t.ticks();
  uint64_t left = t.value_ns();
  int64_t now = NowNs(clk);
  if (left) {
    bool ran_on = IsRealtime(t.clockid()) || images.inventory().boot_id() == BootId();
    int64_t elapsed =
        ran_on ? now - t.dumped_clock_ns() : NowNs(CLOCK_REALTIME) - t.dumped_realtime_ns();
    if (elapsed > 0 && uint64_t(elapsed) >= left) {
      // It expired while the tree was down: count the periods that passed.
      uint64_t over = uint64_t(elapsed) - left;
      if (t.interval_ns()) {
        ticks += 1 + over / t.interval_ns();
        left = t.interval_ns() - over % t.interval_ns();
      } else {
        ticks += 1;
        left = 0;
      }
    } else if (elapsed > 0) {
      left -= uint64_t(elapsed);
    }
  }
  itimerspec its{};
  its.it_interval = ToTimespec(t.interval_ns());
  bool abs = t.settime_flags() & TFD_TIMER_ABSTIME;
  if (left) its.it_value = ToTimespec(abs ? uint64_t(now) + left : left);
  if (timerfd_settime(fd.get(), int(t.settime_flags()), &its, nullptr) < 0)
    return ErrnoError() << "timerfd " << fo.id() << ": arm";
  // After the arming, which clears the count.
  if (ticks && ioctl(fd.get(), TFD_IOC_SET_TICKS, &ticks) < 0)
    return ErrnoError() << "timerfd " << fo.id() << ": set " << ticks << " expirations";
  return fd;
}

}  // namespace kleap
