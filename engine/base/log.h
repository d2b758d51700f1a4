// Logging with pluggable sinks. Library code logs at debug only; callers log errors once.
#pragma once

#include <functional>
#include <sstream>
#include <string>
#include <string_view>

namespace kleap {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// A sink receives every message at or above the global level.
using LogSink = std::function<void(LogLevel, std::string_view msg)>;

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Adds a sink beside the others (the stderr sink is there from the start). Returns
// the id usable with RemoveLogSink.
int AddLogSink(LogSink sink);
void RemoveLogSink(int id);
void ClearLogSinks();
// The default sink: "kleap: warning: ..." on stderr.
void StderrLogSink(LogLevel level, std::string_view msg);
const char* LogLevelName(LogLevel level);

class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage();
  template <class V>
  LogMessage& operator<<(const V& v) {
    os_ << v;
    return *this;
  }

 private:
  LogLevel level_;
  std::ostringstream os_;
};

bool LogEnabled(LogLevel level);

}  // namespace kleap

// A for statement rather than if/else: safe inside an unbraced if.
#define KLOG(level)                                                                       \
  for (bool kleap_log_on_ = ::kleap::LogEnabled(::kleap::LogLevel::level); kleap_log_on_; \
       kleap_log_on_ = false)                                                             \
  ::kleap::LogMessage(::kleap::LogLevel::level)
