// The tracee's typed handles (engine/ptrace): RemotePtr<T>, RemoteFd and SyscallArg, and
// one real injected syscall that takes all three kinds of argument.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>

#include "engine/base/proc.h"
#include "engine/ptrace/remote_syscalls.h"
#include "engine/ptrace/tracee.h"
#include "engine/remote_mem.h"

namespace kleap {
namespace {

// A typed pointer steps by elements, a plain one by bytes.
static_assert((RemotePtr<uint32_t>(0x1000) + 2).addr() == 0x1008);
static_assert((RemotePtr<>(0x1000) + 2).addr() == 0x1002);
static_assert(RemotePtr(uint64_t(5)) == RemotePtr<>(5));  // deduced as a plain address
// A typed pointer is a plain address; the other way only by Cast.
static_assert(std::is_convertible_v<RemotePtr<uint64_t>, RemotePtr<>>);
static_assert(!std::is_convertible_v<RemotePtr<>, RemotePtr<uint64_t>>);
static_assert(RemotePtr<>(8).Cast<uint64_t>() + 1 == RemotePtr<uint64_t>(16));
// Nothing local passes for the tracee's: a raw pointer is no syscall argument, and an
// int is no tracee fd.
static_assert(!std::is_convertible_v<void*, SyscallArg>);
static_assert(!std::is_convertible_v<const char*, SyscallArg>);
static_assert(!std::is_convertible_v<int, RemoteFd>);
static_assert(std::is_convertible_v<RemoteFd, SyscallArg>);
static_assert(std::is_convertible_v<RemotePtr<const char>, SyscallArg>);

TEST(SyscallArg, WidensAsTheAbiDoes) {
  EXPECT_EQ(SyscallArg(-1).value(), ~uint64_t(0));
  EXPECT_EQ(SyscallArg(RemoteFd(-1)).value(), ~uint64_t(0));
  EXPECT_EQ(SyscallArg(uint32_t(0xffffffff)).value(), 0xffffffffull);
  EXPECT_EQ(SyscallArg(RemotePtr<int>(0x7f00)).value(), 0x7f00u);
}

// A child writes nothing itself: write(2) runs in it, on its own fd, from its own
// memory, and the bytes come out of the pipe here.
TEST(RemoteSyscalls, WriteThroughTheTraceesFdFromItsMemory) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(p[0]);
    for (;;) pause();
  }
  close(p[1]);
  auto stop = [&] {
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    close(p[0]);
  };
  {
    auto seized = pt::SeizeAndStop(child, /*exit_kill=*/true);
    ASSERT_TRUE(seized) << seized.error().ToString();
    auto rs = RemoteSyscalls::Create(child);
    ASSERT_TRUE(rs) << rs.error().ToString();
    auto maps = ReadMaps(child);
    ASSERT_TRUE(maps);
    auto vdso =
        std::find_if(maps->begin(), maps->end(), [](auto& m) { return m.path == "[vdso]"; });
    ASSERT_NE(vdso, maps->end());
    auto gadget =
        FindGadget(child, RemotePtr(vdso->start), RemotePtr(vdso->end), ArchKind::kX86_64);
    ASSERT_TRUE(gadget) << gadget.error().ToString();
    rs->SetGadget(ArchKind::kX86_64, *gadget);

    auto pid = rs->Call(ArchKind::kX86_64, X64Arch::kGetpid);
    ASSERT_TRUE(pid) << pid.error().ToString();
    EXPECT_EQ(pid_t(*pid), child);

    const std::string msg = "written by the tracee";
    auto mem = StackScratch::Borrow(child, rs->saved_regs(), 64);
    ASSERT_TRUE(mem) << mem.error().ToString();
    RemotePtr<char> at = mem->at<char>();
    ASSERT_TRUE(WriteRemote(child, at, msg.data(), msg.size()));
    auto n = rs->Call(ArchKind::kX86_64, X64Arch::kWrite, RemoteFd(p[1]), at, msg.size());
    ASSERT_TRUE(n) << n.error().ToString();
    EXPECT_EQ(*n, msg.size());
    char got[64] = {};
    EXPECT_EQ(read(p[0], got, sizeof got), ssize_t(msg.size()));
    EXPECT_EQ(std::string(got), msg);
    // A -errno comes back as an Error naming the syscall and the thread.
    auto bad = rs->Call(ArchKind::kX86_64, X64Arch::kWrite, RemoteFd(999), at, 1);
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().code(), EBADF);
  }
  stop();
}

}  // namespace
}  // namespace kleap
