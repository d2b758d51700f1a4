// Tests for engine/base/log.h: levels, sinks, KLOG.
#include "engine/base/log.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace kleap {
namespace {

struct Captured {
  std::vector<std::pair<LogLevel, std::string>> msgs;
  LogSink Sink() {
    return [this](LogLevel l, std::string_view m) { msgs.emplace_back(l, std::string(m)); };
  }
};

// Each test starts with no sinks (so nothing reaches stderr) and restores the level.
class LogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_level_ = GetLogLevel();
    ClearLogSinks();
  }
  void TearDown() override {
    ClearLogSinks();
    AddLogSink(StderrLogSink);
    SetLogLevel(saved_level_);
  }
  LogLevel saved_level_ = LogLevel::kInfo;
};

TEST_F(LogTest, SinkReceivesAtAndAboveLevelOnly) {
  Captured c;
  int id = AddLogSink(c.Sink());
  SetLogLevel(LogLevel::kWarning);
  EXPECT_EQ(GetLogLevel(), LogLevel::kWarning);
  KLOG(kDebug) << "debug " << 1;
  KLOG(kInfo) << "info " << 2;
  KLOG(kWarning) << "warn " << 3;
  KLOG(kError) << "error " << 4;
  ASSERT_EQ(c.msgs.size(), 2u);
  EXPECT_EQ(c.msgs[0].first, LogLevel::kWarning);
  EXPECT_EQ(c.msgs[0].second, "warn 3");
  EXPECT_EQ(c.msgs[1].first, LogLevel::kError);
  EXPECT_EQ(c.msgs[1].second, "error 4");
  RemoveLogSink(id);
}

TEST_F(LogTest, DebugLevelPassesEverything) {
  Captured c;
  AddLogSink(c.Sink());
  SetLogLevel(LogLevel::kDebug);
  KLOG(kDebug) << "d";
  KLOG(kInfo) << "i";
  KLOG(kWarning) << "w";
  KLOG(kError) << "e";
  ASSERT_EQ(c.msgs.size(), 4u);
  EXPECT_EQ(c.msgs[0].first, LogLevel::kDebug);
  EXPECT_EQ(c.msgs[3].first, LogLevel::kError);
}

TEST_F(LogTest, DisabledMessageIsNotEvaluated) {
  Captured c;
  AddLogSink(c.Sink());
  SetLogLevel(LogLevel::kError);
  int evaluated = 0;
  auto side = [&] { return ++evaluated; };
  KLOG(kInfo) << side();
  EXPECT_EQ(evaluated, 0);
  KLOG(kError) << side();
  EXPECT_EQ(evaluated, 1);
  ASSERT_EQ(c.msgs.size(), 1u);
  EXPECT_EQ(c.msgs[0].second, "1");
}

TEST_F(LogTest, KlogIsSafeInIfElse) {
  Captured c;
  AddLogSink(c.Sink());
  SetLogLevel(LogLevel::kInfo);
  bool took_else = false;
  // The macro's internal if/else must not capture the user's else.
  if (false)
    KLOG(kInfo) << "never";
  else
    took_else = true;
  EXPECT_TRUE(took_else);
  EXPECT_TRUE(c.msgs.empty());
}

TEST_F(LogTest, RemoveLogSinkStopsDelivery) {
  Captured a, b;
  SetLogLevel(LogLevel::kInfo);
  int ida = AddLogSink(a.Sink());
  int idb = AddLogSink(b.Sink());
  EXPECT_NE(ida, idb);
  KLOG(kInfo) << "one";
  RemoveLogSink(ida);
  KLOG(kInfo) << "two";
  ASSERT_EQ(a.msgs.size(), 1u);
  EXPECT_EQ(a.msgs[0].second, "one");
  ASSERT_EQ(b.msgs.size(), 2u);
  EXPECT_EQ(b.msgs[1].second, "two");
  // Removing an unknown or already removed id is harmless.
  RemoveLogSink(ida);
  RemoveLogSink(123456);
  KLOG(kInfo) << "three";
  EXPECT_EQ(a.msgs.size(), 1u);
  EXPECT_EQ(b.msgs.size(), 3u);
  RemoveLogSink(idb);
  KLOG(kError) << "four";
  EXPECT_EQ(b.msgs.size(), 3u);
}

TEST_F(LogTest, ClearLogSinksRemovesAll) {
  Captured a;
  AddLogSink(a.Sink());
  ClearLogSinks();
  KLOG(kError) << "gone";
  EXPECT_TRUE(a.msgs.empty());
}

TEST_F(LogTest, LogEnabledFollowsLevel) {
  SetLogLevel(LogLevel::kInfo);
  EXPECT_FALSE(LogEnabled(LogLevel::kDebug));
  EXPECT_TRUE(LogEnabled(LogLevel::kInfo));
  EXPECT_TRUE(LogEnabled(LogLevel::kError));
  SetLogLevel(LogLevel::kError);
  EXPECT_FALSE(LogEnabled(LogLevel::kWarning));
  EXPECT_TRUE(LogEnabled(LogLevel::kError));
}

TEST_F(LogTest, LevelNames) {
  EXPECT_STREQ(LogLevelName(LogLevel::kDebug), "debug");
  EXPECT_STREQ(LogLevelName(LogLevel::kInfo), "info");
  EXPECT_STREQ(LogLevelName(LogLevel::kWarning), "warning");
  EXPECT_STREQ(LogLevelName(LogLevel::kError), "error");
}

TEST_F(LogTest, StderrSinkFormat) {
  ::testing::internal::CaptureStderr();
  StderrLogSink(LogLevel::kWarning, "disk almost full");
  StderrLogSink(LogLevel::kInfo, "dumped 3 tasks");
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(err, "kleap: warning: disk almost full\nkleap: dumped 3 tasks\n");
}

}  // namespace
}  // namespace kleap
