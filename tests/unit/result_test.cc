// Tests for engine/base/result.h: Result<T>, Result<void>, Error, KLEAP_TRY(_CTX).
#include "engine/base/result.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <iomanip>
#include <memory>
#include <string>
#include <vector>

namespace kleap {
namespace {

Result<int> Half(int v) {
  if (v % 2) return Err(EINVAL) << "odd value " << v;
  return v / 2;
}

Result<void> CheckPositive(int v) {
  if (v <= 0) return Err(ERANGE) << "not positive: " << v;
  return Ok();
}

// Propagation through KLEAP_TRY: the error comes back unchanged.
Result<int> Quarter(int v) {
  int h = KLEAP_TRY(Half(v));
  int q = KLEAP_TRY(Half(h));
  return q;
}

// Propagation through KLEAP_TRY_CTX: context is prepended, "ctx: msg".
Result<int> QuarterCtx(int v, int task) {
  int h = KLEAP_TRY_CTX(Half(v), "task " << task);
  return KLEAP_TRY_CTX(Half(h), "second half of " << h);
}

// KLEAP_TRY on a Result<void> in a function returning Result<void>.
Result<void> CheckBoth(int a, int b) {
  KLEAP_TRY(CheckPositive(a));
  KLEAP_TRY_CTX(CheckPositive(b), "b");
  return Ok();
}

// KLEAP_TRY of a Result<T> inside a function returning Result<void>.
Result<void> HalfInto(int v, int* out) {
  *out = KLEAP_TRY(Half(v));
  return Ok();
}

// Nested KLEAP_TRY: the same internal variable name in two nested statement expressions.
Result<int> Nested(int v) {
  return KLEAP_TRY(Half(KLEAP_TRY(Half(v))));
}

// Move-only values travel through KLEAP_TRY.
Result<std::unique_ptr<int>> MakeBox(int v) {
  if (v < 0) return Err(EDOM) << "negative";
  return std::make_unique<int>(v);
}
Result<int> Unbox(int v) {
  std::unique_ptr<int> p = KLEAP_TRY(MakeBox(v));
  return *p + 1;
}

TEST(Result, ValuePath) {
  Result<int> r = Half(10);
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(static_cast<bool>(r));
  EXPECT_EQ(r.value(), 5);
  EXPECT_EQ(*r, 5);
  EXPECT_EQ(r.value_or(-1), 5);
}

TEST(Result, ErrorPath) {
  Result<int> r = Half(3);
  ASSERT_FALSE(r.has_value());
  EXPECT_FALSE(static_cast<bool>(r));
  EXPECT_EQ(r.error().code(), EINVAL);
  EXPECT_EQ(r.error().message(), "odd value 3");
  EXPECT_EQ(r.value_or(-1), -1);
}

TEST(Result, ValueOfStringAndArrow) {
  Result<std::string> r = std::string("hello");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->size(), 5u);
  // Converting constructor from a type T is constructible from.
  Result<std::string> c = "abc";
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, "abc");
  std::string moved = std::move(c).value();
  EXPECT_EQ(moved, "abc");
}

TEST(Result, ErrorMovedOut) {
  Result<std::vector<int>> r = Err(ENOSPC) << "full";
  ASSERT_FALSE(r);
  Error e = std::move(r).error();
  EXPECT_EQ(e.code(), ENOSPC);
  EXPECT_EQ(e.message(), "full");
}

TEST(Result, VoidValueAndError) {
  Result<void> ok = CheckPositive(1);
  EXPECT_TRUE(ok.has_value());
  EXPECT_TRUE(static_cast<bool>(ok));
  ok.value();  // must be callable
  Result<void> bad = CheckPositive(0);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), ERANGE);
  EXPECT_EQ(bad.error().message(), "not positive: 0");
  EXPECT_TRUE(Ok().has_value());
}

TEST(Result, TryPropagatesValue) {
  auto r = Quarter(12);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, 3);
}

TEST(Result, TryPropagatesErrorUnchanged) {
  auto r = Quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), EINVAL);
  EXPECT_EQ(r.error().message(), "odd value 3");
  auto r2 = Quarter(5);
  ASSERT_FALSE(r2);
  EXPECT_EQ(r2.error().message(), "odd value 5");
}

TEST(Result, TryCtxPrependsContext) {
  auto r = QuarterCtx(7, 42);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), EINVAL);
  EXPECT_EQ(r.error().message(), "task 42: odd value 7");
  auto r2 = QuarterCtx(6, 1);
  ASSERT_FALSE(r2);
  EXPECT_EQ(r2.error().message(), "second half of 3: odd value 3");
  auto ok = QuarterCtx(8, 1);
  ASSERT_TRUE(ok);
  EXPECT_EQ(*ok, 2);
}

TEST(Result, TryVoid) {
  EXPECT_TRUE(CheckBoth(1, 2));
  auto a = CheckBoth(0, 2);
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().message(), "not positive: 0");
  auto b = CheckBoth(1, -3);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code(), ERANGE);
  EXPECT_EQ(b.error().message(), "b: not positive: -3");
}

TEST(Result, TryValueIntoVoidFunction) {
  int out = 0;
  EXPECT_TRUE(HalfInto(8, &out));
  EXPECT_EQ(out, 4);
  out = 99;
  auto r = HalfInto(9, &out);
  ASSERT_FALSE(r);
  EXPECT_EQ(out, 99);  // not assigned on error
  EXPECT_EQ(r.error().message(), "odd value 9");
}

TEST(Result, NestedTry) {
  auto r = Nested(8);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 2);        // 8 -> 4 -> 2
  auto inner = Nested(6);  // 6 -> 3 -> odd: the inner TRY returns
  ASSERT_FALSE(inner);
  EXPECT_EQ(inner.error().message(), "odd value 3");
  auto outer = Nested(2);  // 2 -> 1 -> odd: the outer TRY returns
  ASSERT_FALSE(outer);
  EXPECT_EQ(outer.error().message(), "odd value 1");
  EXPECT_FALSE(Nested(5));
}

TEST(Result, TryMoveOnly) {
  auto r = Unbox(41);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 42);
  auto e = Unbox(-1);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code(), EDOM);
}

TEST(Error, ErrnoErrorCapturesErrno) {
  errno = EACCES;
  Error e = ErrnoError() << "open "
                         << "/x";
  EXPECT_EQ(e.code(), EACCES);
  EXPECT_EQ(e.message(), "open /x");
  // errno from a real failing call.
  ASSERT_EQ(::close(-1), -1);
  Error e2 = ErrnoError();
  EXPECT_EQ(e2.code(), EBADF);
}

TEST(Error, ToStringIncludesStrerror) {
  Error e = Error(ENOENT) << "open /x";
  EXPECT_EQ(e.ToString(), std::string("open /x: ") + std::strerror(ENOENT));
  // Without an errno, only the message.
  Error plain(0, "just text");
  EXPECT_EQ(plain.ToString(), "just text");
  EXPECT_EQ(Error().code(), 0);
  EXPECT_EQ(Error().ToString(), "");
}

TEST(Error, ContextPrepends) {
  Error e = Error(ENOENT, "open /x").Context("task 12");
  EXPECT_EQ(e.message(), "task 12: open /x");
  EXPECT_EQ(e.code(), ENOENT);
  Error e2 = Error(ENOENT, "open /x").Context("a").Context("b");
  EXPECT_EQ(e2.message(), "b: a: open /x");
  // Empty message: the context alone, without a dangling ": ".
  Error e3 = Error(EIO).Context("ctx");
  EXPECT_EQ(e3.message(), "ctx");
}

TEST(Error, StreamAppendsOnLvalueAndRvalue) {
  Error e(EINVAL);
  e << "a" << 1 << ' ' << 2.5;
  EXPECT_EQ(e.message(), "a1 2.5");
  Error r = Err() << "x=" << 0x10;
  EXPECT_EQ(r.code(), EINVAL);
  EXPECT_EQ(r.message(), "x=16");
  EXPECT_EQ(Err(EPERM).code(), EPERM);
}

// Manipulators act on the values after them, as on a std::ostream (they were dropped when
// every value had a stream of its own).
TEST(Error, StreamKeepsManipulators) {
  // O_RDWR|O_NONBLOCK|FASYNC, which a message once printed as "010242".
  Error flags = Err() << "bad flags 0" << std::oct << 10242;
  EXPECT_EQ(flags.message(), "bad flags 024002");
  Error addr = Err() << "read " << 16384 << " bytes at 0x" << std::hex << 0x7fdbc0a3e000ULL
                     << std::dec << ": " << 12;
  EXPECT_EQ(addr.message(), "read 16384 bytes at 0x7fdbc0a3e000: 12");
  Error lv(EIO);
  lv << std::showbase << std::hex << 255 << ' ' << std::noshowbase << std::dec << 255;
  EXPECT_EQ(lv.message(), "0xff 255");
  Error padded = Err() << '[' << std::setfill('0') << std::setw(4) << 7 << ']' << 8;
  EXPECT_EQ(padded.message(), "[0007]8");  // the width goes with the next value only
  Error copy = lv;
  copy << std::hex << 16;
  EXPECT_EQ(copy.message(), "0xff 25510");
}

}  // namespace
}  // namespace kleap
