// Clock readings in nanoseconds, one place.
#pragma once

#include <time.h>

#include <cstdint>

namespace kleap {

inline constexpr int64_t kNsPerSec = 1000000000;

inline int64_t NowNs(clockid_t clk = CLOCK_REALTIME) {
  timespec ts{};
  clock_gettime(clk, &ts);
  return int64_t(ts.tv_sec) * kNsPerSec + ts.tv_nsec;
}

}  // namespace kleap
