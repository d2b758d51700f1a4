// Tests for engine/base/unique_fd.h.
#include "engine/base/unique_fd.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

namespace kleap {
namespace {

// Checks the raw number, not the object: closed means F_GETFD fails with EBADF.
bool IsOpen(int fd) {
  return fcntl(fd, F_GETFD) != -1;
}
bool IsClosed(int fd) {
  return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

int OpenDevNull() {
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  return fd;
}

TEST(UniqueFd, DefaultIsEmpty) {
  UniqueFd fd;
  EXPECT_FALSE(fd.ok());
  EXPECT_FALSE(static_cast<bool>(fd));
  EXPECT_EQ(fd.get(), -1);
}

TEST(UniqueFd, ClosesOnDestruction) {
  int raw = OpenDevNull();
  {
    UniqueFd fd(raw);
    EXPECT_TRUE(fd.ok());
    EXPECT_EQ(fd.get(), raw);
    EXPECT_TRUE(IsOpen(raw));
  }
  EXPECT_TRUE(IsClosed(raw));
}

TEST(UniqueFd, MoveConstructTransfersOwnership) {
  int raw = OpenDevNull();
  UniqueFd a(raw);
  {
    UniqueFd b(std::move(a));
    EXPECT_FALSE(a.ok());  // NOLINT(bugprone-use-after-move): checking the moved-from state
    EXPECT_EQ(a.get(), -1);
    EXPECT_EQ(b.get(), raw);
    EXPECT_TRUE(IsOpen(raw));
  }
  // b closed it; a must not close anything when it goes away.
  EXPECT_TRUE(IsClosed(raw));
}

TEST(UniqueFd, MoveAssignClosesOldTargetOnce) {
  int raw1 = OpenDevNull();
  int raw2 = OpenDevNull();
  ASSERT_NE(raw1, raw2);
  {
    UniqueFd a(raw1);
    UniqueFd b(raw2);
    b = std::move(a);
    EXPECT_TRUE(IsClosed(raw2));  // b's old fd closed by the assignment
    EXPECT_TRUE(IsOpen(raw1));
    EXPECT_EQ(b.get(), raw1);
    EXPECT_EQ(a.get(), -1);  // NOLINT(bugprone-use-after-move)

    // Reuse raw2's number for a new file: neither a nor b may close it later.
    int again = OpenDevNull();
    EXPECT_EQ(again, raw2);  // lowest free number
    UniqueFd keep(again);
    // Self-move keeps the fd open.
    UniqueFd& bref = b;
    b = std::move(bref);
    EXPECT_EQ(b.get(), raw1);
    EXPECT_TRUE(IsOpen(raw1));
    b.reset();
    EXPECT_TRUE(IsClosed(raw1));
    EXPECT_TRUE(IsOpen(again));
  }
  EXPECT_TRUE(IsClosed(raw2));
}

TEST(UniqueFd, ResetPreservesErrno) {
  int raw = OpenDevNull();
  UniqueFd fd(raw);
  errno = ENOSPC;
  fd.reset();
  EXPECT_EQ(errno, ENOSPC);
  EXPECT_TRUE(IsClosed(raw));
  EXPECT_FALSE(fd.ok());
  // reset() on an empty holder does not touch errno either.
  errno = EAGAIN;
  fd.reset();
  EXPECT_EQ(errno, EAGAIN);
}

TEST(UniqueFd, ResetPreservesErrnoWhenCloseFails) {
  // Close the raw number behind UniqueFd's back, so its close() fails with EBADF.
  int raw = OpenDevNull();
  UniqueFd fd(raw);
  ASSERT_EQ(::close(raw), 0);
  errno = EINTR;
  fd.reset();
  EXPECT_EQ(errno, EINTR);
}

TEST(UniqueFd, ResetToNewFd) {
  int raw1 = OpenDevNull();
  int raw2 = OpenDevNull();
  UniqueFd fd(raw1);
  fd.reset(raw2);
  EXPECT_TRUE(IsClosed(raw1));
  EXPECT_TRUE(IsOpen(raw2));
  EXPECT_EQ(fd.get(), raw2);
}

TEST(UniqueFd, ReleaseGivesUpOwnership) {
  int raw = OpenDevNull();
  {
    UniqueFd fd(raw);
    int got = fd.release();
    EXPECT_EQ(got, raw);
    EXPECT_FALSE(fd.ok());
    EXPECT_EQ(fd.get(), -1);
  }
  EXPECT_TRUE(IsOpen(raw));  // not closed by the destructor
  EXPECT_EQ(::close(raw), 0);
  UniqueFd empty;
  EXPECT_EQ(empty.release(), -1);
}

TEST(UniqueFd, NotCopyableNoImplicitInt) {
  static_assert(!std::is_copy_constructible_v<UniqueFd>);
  static_assert(!std::is_copy_assignable_v<UniqueFd>);
  static_assert(std::is_nothrow_move_constructible_v<UniqueFd>);
  static_assert(std::is_nothrow_move_assignable_v<UniqueFd>);
  static_assert(!std::is_convertible_v<UniqueFd, int>);
  static_assert(!std::is_convertible_v<int, UniqueFd>);  // explicit constructor
}

}  // namespace
}  // namespace kleap
