// Tests for engine/base/arch.h: ELF class detection, CS decoding, names, syscall tables.
#include "engine/base/arch.h"

#include <gtest/gtest.h>

#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

namespace kleap {
namespace unit_test {
struct SyscallPair {
  const char* name;
  long kernel;
  long kleap;
};
extern const SyscallPair kIa32Syscalls[];
extern const unsigned kIa32SyscallCount;
}  // namespace unit_test

namespace {

// Why this host can't run 32-bit code, or "" when it can: the tiers' one rule,
// tests/ia32/host-runs-ia32, run on the build's probe.
std::string HostIa32Unavailable() {
  std::string cmd = std::string("'") + KLEAP_IA32_CHECK + "' --probe '" + KLEAP_IA32_PROBE + "'";
  FILE* f = popen(cmd.c_str(), "r");
  if (f == nullptr) return std::string("cannot run ") + KLEAP_IA32_CHECK + ": " + strerror(errno);
  std::string why;
  char buf[512];
  while (fgets(buf, sizeof buf, f) != nullptr) why += buf;
  int st = pclose(f);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return "";
  while (!why.empty() && why.back() == '\n') why.pop_back();
  return why.empty() ? "host-runs-ia32 failed without a reason" : why;
}

class ArchTmp : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = "/tmp/kleap-arch.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (!dir_.empty()) (void)system(("rm -rf '" + dir_ + "'").c_str());
  }
  std::string WriteFile(const std::string& name, const void* data, size_t n) {
    std::string p = dir_ + "/" + name;
    int fd = open(p.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0700);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(write(fd, data, n), ssize_t(n));
    close(fd);
    return p;
  }
  std::string dir_;
};

TEST(ReadElfClass, SelfIs64) {
  EXPECT_EQ(ReadElfClass("/proc/self/exe"), ElfClass::k64);
}

TEST(ReadElfClass, SystemBinaryIs64) {
  // /bin/sh on an x86_64 Debian is a 64-bit ELF.
  EXPECT_EQ(ReadElfClass("/bin/sh"), ElfClass::k64);
}

TEST_F(ArchTmp, SyntheticHeaders) {
  unsigned char h[64] = {};
  std::memcpy(h, ELFMAG, SELFMAG);
  h[EI_CLASS] = ELFCLASS32;
  EXPECT_EQ(ReadElfClass(WriteFile("e32", h, sizeof h).c_str()), ElfClass::k32);
  h[EI_CLASS] = ELFCLASS64;
  EXPECT_EQ(ReadElfClass(WriteFile("e64", h, sizeof h).c_str()), ElfClass::k64);
  h[EI_CLASS] = ELFCLASSNONE;
  EXPECT_EQ(ReadElfClass(WriteFile("enone", h, sizeof h).c_str()), ElfClass::kUnknown);
  h[EI_CLASS] = 7;
  EXPECT_EQ(ReadElfClass(WriteFile("ebad", h, sizeof h).c_str()), ElfClass::kUnknown);
  // Exactly EI_NIDENT bytes is enough.
  h[EI_CLASS] = ELFCLASS32;
  EXPECT_EQ(ReadElfClass(WriteFile("e16", h, EI_NIDENT).c_str()), ElfClass::k32);
  // Shorter than the ident: unknown, not a crash.
  EXPECT_EQ(ReadElfClass(WriteFile("eshort", h, EI_NIDENT - 1).c_str()), ElfClass::kUnknown);
  EXPECT_EQ(ReadElfClass(WriteFile("eempty", h, 0).c_str()), ElfClass::kUnknown);
  // Bad magic.
  h[EI_MAG1] = 'X';
  EXPECT_EQ(ReadElfClass(WriteFile("emagic", h, sizeof h).c_str()), ElfClass::kUnknown);
  const char script[] = "#!/bin/sh\necho hello world\n";
  EXPECT_EQ(ReadElfClass(WriteFile("script", script, sizeof script - 1).c_str()),
            ElfClass::kUnknown);
}

TEST_F(ArchTmp, MissingAndDirectory) {
  EXPECT_EQ(ReadElfClass((dir_ + "/does-not-exist").c_str()), ElfClass::kUnknown);
  EXPECT_EQ(ReadElfClass(dir_.c_str()), ElfClass::kUnknown);
  EXPECT_EQ(ReadElfClass(""), ElfClass::kUnknown);
}

TEST_F(ArchTmp, RealM32Binary) {
  const char src[] = "#include <unistd.h>\nint main(void){char c; return read(0,&c,1) < 0;}\n";
  std::string c = WriteFile("m32.c", src, sizeof src - 1);
  std::string out = dir_ + "/m32";
  std::string log = dir_ + "/cc.log";
  std::string cmd = "gcc -m32 -o '" + out + "' '" + c + "' >'" + log + "' 2>&1";
  int rc = system(cmd.c_str());
  if (rc != 0) {
    std::string why = "gcc -m32 does not work here (exit " + std::to_string(rc) + ")";
    GTEST_SKIP() << why << "; install gcc-multilib to run this test";
  }
  EXPECT_EQ(ReadElfClass(out.c_str()), ElfClass::k32);
  std::string no_ia32 = HostIa32Unavailable();
  if (!no_ia32.empty()) {
    GTEST_SKIP() << "the ELF class of the -m32 binary was checked; running it is left out: "
                 << no_ia32;
  }

  // Run it and check the class through /proc/PID/exe too (it waits on stdin).
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(p[0], 0);
    execl(out.c_str(), out.c_str(), (char*)nullptr);
    _exit(127);
  }
  close(p[0]);
  // Wait until exec has happened: /proc/PID/exe points at the new binary.
  ElfClass seen = ElfClass::kUnknown;
  std::string exe = "/proc/" + std::to_string(pid) + "/exe";
  for (int i = 0; i < 500 && seen != ElfClass::k32; ++i) {
    seen = ReadElfClass(exe.c_str());
    if (seen != ElfClass::k32) usleep(2000);
  }
  close(p[1]);  // EOF: the child exits
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  EXPECT_EQ(seen, ElfClass::k32);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 127) ADD_FAILURE() << "could not exec the -m32 binary";
}

TEST(ArchFromCs, Selectors) {
  EXPECT_EQ(ArchFromCs(0x23), ArchKind::kX86);
  EXPECT_EQ(ArchFromCs(kUserCs32), ArchKind::kX86);
  EXPECT_EQ(ArchFromCs(0x33), ArchKind::kX86_64);
  EXPECT_EQ(ArchFromCs(kUserCs64), ArchKind::kX86_64);
  // Anything else is treated as 64-bit.
  EXPECT_EQ(ArchFromCs(0), ArchKind::kX86_64);
  EXPECT_EQ(ArchFromCs(0x2b), ArchKind::kX86_64);
  EXPECT_EQ(kUserCs64, 0x33u);
  EXPECT_EQ(kUserCs32, 0x23u);
  EXPECT_EQ(kUserDs, 0x2bu);
}

TEST(ArchFromCs, OwnCodeSegment) {
  uint16_t cs;
  asm volatile("mov %%cs, %0" : "=r"(cs));
  EXPECT_EQ(ArchFromCs(cs), ArchKind::kX86_64);
  EXPECT_EQ(cs, kUserCs64);
}

TEST(ArchName, Names) {
  EXPECT_EQ(ArchName(ArchKind::kX86_64), "x86_64");
  EXPECT_EQ(ArchName(ArchKind::kX86), "ia32");
  EXPECT_EQ(ArchName(static_cast<ArchKind>(99)), "unknown");
}

TEST(WithArch, DispatchesToTheRightStruct) {
  auto word_size = [](auto arch) { return sizeof(typename decltype(arch)::word); };
  EXPECT_EQ(WithArch(ArchKind::kX86_64, word_size), 8u);
  EXPECT_EQ(WithArch(ArchKind::kX86, word_size), 4u);
  auto kind = [](auto arch) { return decltype(arch)::kKind; };
  EXPECT_EQ(WithArch(ArchKind::kX86_64, kind), ArchKind::kX86_64);
  EXPECT_EQ(WithArch(ArchKind::kX86, kind), ArchKind::kX86);
  auto cs = [](auto arch) { return decltype(arch)::kCs; };
  EXPECT_EQ(WithArch(ArchKind::kX86, cs), kUserCs32);
  EXPECT_EQ(ArchFromCs(WithArch(ArchKind::kX86_64, cs)), ArchKind::kX86_64);
}

TEST(ArchTables, X64SyscallNumbersMatchTheKernel) {
  EXPECT_EQ(X64Arch::kRead, SYS_read);
  EXPECT_EQ(X64Arch::kClose, SYS_close);
  EXPECT_EQ(X64Arch::kMmap, SYS_mmap);
  EXPECT_EQ(X64Arch::kMprotect, SYS_mprotect);
  EXPECT_EQ(X64Arch::kMunmap, SYS_munmap);
  EXPECT_EQ(X64Arch::kBrk, SYS_brk);
  EXPECT_EQ(X64Arch::kRtSigaction, SYS_rt_sigaction);
  EXPECT_EQ(X64Arch::kRtSigprocmask, SYS_rt_sigprocmask);
  EXPECT_EQ(X64Arch::kMadvise, SYS_madvise);
  EXPECT_EQ(X64Arch::kWrite, SYS_write);
  EXPECT_EQ(X64Arch::kGetpid, SYS_getpid);
  EXPECT_EQ(X64Arch::kUmask, SYS_umask);
  EXPECT_EQ(X64Arch::kSetgroups, SYS_setgroups);
  EXPECT_EQ(X64Arch::kSetresuid, SYS_setresuid);
  EXPECT_EQ(X64Arch::kSetresgid, SYS_setresgid);
  EXPECT_EQ(X64Arch::kCapset, SYS_capset);
  EXPECT_EQ(X64Arch::kRtSigqueueinfo, SYS_rt_sigqueueinfo);
  EXPECT_EQ(X64Arch::kSigaltstack, SYS_sigaltstack);
  EXPECT_EQ(X64Arch::kPersonality, SYS_personality);
  EXPECT_EQ(X64Arch::kPrctl, SYS_prctl);
  EXPECT_EQ(X64Arch::kArchPrctl, SYS_arch_prctl);
  EXPECT_EQ(X64Arch::kChroot, SYS_chroot);
  EXPECT_EQ(X64Arch::kSetTidAddress, SYS_set_tid_address);
  EXPECT_EQ(X64Arch::kOpenat, SYS_openat);
  EXPECT_EQ(X64Arch::kSetRobustList, SYS_set_robust_list);
  EXPECT_EQ(X64Arch::kRtTgsigqueueinfo, SYS_rt_tgsigqueueinfo);
  EXPECT_EQ(X64Arch::kRseq, SYS_rseq);
  EXPECT_EQ(X64Arch::kMembarrier, SYS_membarrier);
  EXPECT_EQ(X64Arch::kChdir, SYS_chdir);
  EXPECT_EQ(X64Arch::kGetRobustList, SYS_get_robust_list);
  EXPECT_EQ(X64Arch::kGetitimer, SYS_getitimer);
  EXPECT_EQ(X64Arch::kSetitimer, SYS_setitimer);
  EXPECT_EQ(X64Arch::kTimerCreate, SYS_timer_create);
  EXPECT_EQ(X64Arch::kTimerSettime, SYS_timer_settime);
  EXPECT_EQ(X64Arch::kTimerGettime, SYS_timer_gettime);
  EXPECT_EQ(X64Arch::kTimerGetoverrun, SYS_timer_getoverrun);
  EXPECT_EQ(X64Arch::kTimerDelete, SYS_timer_delete);
  EXPECT_EQ(X64Arch::kMremap, SYS_mremap);
  EXPECT_EQ(X64Arch::kIoSetup, SYS_io_setup);
  EXPECT_EQ(X64Arch::kIoGetevents, SYS_io_getevents);
  EXPECT_EQ(X64Arch::kIoSubmit, SYS_io_submit);
  EXPECT_EQ(X64Arch::kPipe2, SYS_pipe2);
  EXPECT_EQ(X64Arch::kShmat, SYS_shmat);
  EXPECT_EQ(X64Arch::kSemop, SYS_semop);
  EXPECT_EQ(X64Arch::kExecve, SYS_execve);
  EXPECT_EQ(X64Arch::kFcntl, SYS_fcntl);
  EXPECT_EQ(X64Arch::kFlock, SYS_flock);
  EXPECT_EQ(X64Arch::kSetfsuid, SYS_setfsuid);
  EXPECT_EQ(X64Arch::kSetfsgid, SYS_setfsgid);
  EXPECT_EQ(X64Arch::kRestartSyscall, SYS_restart_syscall);
  EXPECT_EQ(X64Arch::kUnshare, SYS_unshare);
  EXPECT_EQ(X64Arch::kSeccomp, SYS_seccomp);
  EXPECT_EQ(X64Arch::kCloseRange, SYS_close_range);
}

TEST(ArchTables, Ia32SyscallNumbersMatchTheKernel) {
  ASSERT_GT(unit_test::kIa32SyscallCount, 20u);
  for (unsigned i = 0; i < unit_test::kIa32SyscallCount; ++i) {
    const auto& p = unit_test::kIa32Syscalls[i];
    EXPECT_EQ(p.kleap, p.kernel) << "ia32 __NR_" << p.name;
  }
}

TEST(ArchTables, LayoutsAndConstants) {
  // The 64-bit stack_t matches the C library's (same as the kernel's).
  static_assert(sizeof(X64Arch::stack_t) == sizeof(::stack_t));
  static_assert(offsetof(X64Arch::stack_t, sp) == offsetof(::stack_t, ss_sp));
  static_assert(offsetof(X64Arch::stack_t, flags) == offsetof(::stack_t, ss_flags));
  static_assert(offsetof(X64Arch::stack_t, size) == offsetof(::stack_t, ss_size));
  static_assert(offsetof(X86Arch::stack_t, flags) == 4 && offsetof(X86Arch::stack_t, size) == 8);
  static_assert(offsetof(X64Arch::k_sigaction, mask) == 24);
  static_assert(offsetof(X86Arch::k_sigaction, mask) == 12);
  static_assert(std::is_same_v<X64Arch::word, uint64_t> && std::is_same_v<X86Arch::word, uint32_t>);
  EXPECT_EQ(X64Arch::kSyscallInsn[0], 0x0f);
  EXPECT_EQ(X64Arch::kSyscallInsn[1], 0x05);
  EXPECT_EQ(X86Arch::kSyscallInsn[0], 0xcd);
  EXPECT_EQ(X86Arch::kSyscallInsn[1], 0x80);
  EXPECT_EQ(X64Arch::kKind, ArchKind::kX86_64);
  EXPECT_EQ(X86Arch::kKind, ArchKind::kX86);
  // The highest user address of this process is below the 64-bit task size.
  int local;
  EXPECT_LT(reinterpret_cast<uintptr_t>(&local), X64Arch::kTaskSize);
  EXPECT_LT(X86Arch::kTaskSize, 1ull << 32);
}

}  // namespace
}  // namespace kleap
