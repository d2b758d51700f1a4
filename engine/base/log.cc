#include "engine/base/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "engine/base/result.h"

namespace kleap {
namespace {

struct LogState {
  std::mutex mu;
  std::atomic<LogLevel> level{LogLevel::kInfo};
  std::map<int, LogSink> sinks{{0, StderrLogSink}};
  int next_id = 1;
};

LogState& State() {
  static LogState* s = new LogState;
  return *s;
}

}  // namespace

const char* LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "?";
}

void SetLogLevel(LogLevel level) {
  State().level = level;
}
LogLevel GetLogLevel() {
  return State().level;
}
bool LogEnabled(LogLevel level) {
  return level >= State().level;
}

int AddLogSink(LogSink sink) {
  auto& s = State();
  std::lock_guard lock(s.mu);
  s.sinks[s.next_id] = std::move(sink);
  return s.next_id++;
}

void RemoveLogSink(int id) {
  auto& s = State();
  std::lock_guard lock(s.mu);
  s.sinks.erase(id);
}

void ClearLogSinks() {
  auto& s = State();
  std::lock_guard lock(s.mu);
  s.sinks.clear();
}

void StderrLogSink(LogLevel level, std::string_view msg) {
  if (level == LogLevel::kInfo)
    std::fprintf(stderr, "kleap: %.*s\n", int(msg.size()), msg.data());
  else
    std::fprintf(stderr, "kleap: %s: %.*s\n", LogLevelName(level), int(msg.size()), msg.data());
}

LogMessage::~LogMessage() {
  auto& s = State();
  std::string msg = os_.str();
  // Call the sinks outside the lock, so that a sink may log or change the sinks.
  std::vector<LogSink> sinks;
  {
    std::lock_guard lock(s.mu);
    for (auto& [id, sink] : s.sinks) sinks.push_back(sink);
  }
  for (auto& sink : sinks) sink(level_, msg);
}

void CheckFailed(const char* file, int line, const char* cond) {
  std::fprintf(stderr, "kleap: internal error: %s:%d: check failed: %s\n", file, line, cond);
  std::abort();
}

}  // namespace kleap
