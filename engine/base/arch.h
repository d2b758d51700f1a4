// The arch layer: x86_64 and ia32 described once each, with word-size types, the
// kernel structs the engine passes to injected syscalls, and syscall numbers.
// Code that differs by width is written once as a template over these structs and
// dispatched with WithArch().
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace kleap {

enum class ArchKind : uint32_t { kX86_64 = 0, kX86 = 1 };

std::string_view ArchName(ArchKind a);

// Code segment selectors of the two user modes on an x86_64 kernel.
inline constexpr uint64_t kUserCs64 = 0x33;
inline constexpr uint64_t kUserCs32 = 0x23;
inline constexpr uint64_t kUserDs = 0x2b;

inline ArchKind ArchFromCs(uint64_t cs) {
  return cs == kUserCs32 ? ArchKind::kX86 : ArchKind::kX86_64;
}

struct X64Arch {
  static constexpr ArchKind kKind = ArchKind::kX86_64;
  using word = uint64_t;
  using sword = int64_t;
  static constexpr uint64_t kTaskSize = 0x00007ffffffff000ull;
  static constexpr uint64_t kCs = kUserCs64;
  // `syscall`
  static constexpr uint8_t kSyscallInsn[2] = {0x0f, 0x05};

  struct k_sigaction {
    word handler;
    word flags;
    word restorer;
    uint64_t mask;
  };
  struct stack_t {
    word sp;
    int32_t flags;
    int32_t pad;
    word size;
  };

  enum : int {
    kRead = 0,
    kWrite = 1,
    kClose = 3,
    kMmap = 9,
    kMprotect = 10,
    kMunmap = 11,
    kBrk = 12,
    kRtSigaction = 13,
    kRtSigprocmask = 14,
    kMadvise = 28,
    kMlock2 = 325,
    kGetpid = 39,
    kChdir = 80,
    kUmask = 95,
    kSetgroups = 116,
    kSetresuid = 117,
    kSetresgid = 119,
    kCapset = 126,
    kRtSigqueueinfo = 129,
    kSigaltstack = 131,
    kPersonality = 135,
    kPrctl = 157,
    kArchPrctl = 158,
    kChroot = 161,
    kSetTidAddress = 218,
    kOpenat = 257,
    kSetRobustList = 273,
    kGetRobustList = 274,
    kRtTgsigqueueinfo = 297,
    kRseq = 334,
    kMembarrier = 324,
    kGetitimer = 36,
    kSetitimer = 38,
    kTimerCreate = 222,
    kTimerSettime = 223,
    kTimerGettime = 224,
    kTimerGetoverrun = 225,
    kTimerDelete = 226,
    kMremap = 25,
    kIoSetup = 206,
    kIoGetevents = 208,
    kIoSubmit = 209,
    kPipe2 = 293,
    kShmat = 30,
    kSemop = 65,
    kExecve = 59,
    kFcntl = 72,
    kFlock = 73,
    kSetfsuid = 122,
    kSetfsgid = 123,
    kRestartSyscall = 219,
    kUnshare = 272,
    kSeccomp = 317,
    kCloseRange = 436,
  };
};
static_assert(sizeof(X64Arch::k_sigaction) == 32);
static_assert(sizeof(X64Arch::stack_t) == 24);

struct X86Arch {
  static constexpr ArchKind kKind = ArchKind::kX86;
  using word = uint32_t;
  using sword = int32_t;
  static constexpr uint64_t kTaskSize = 0xffffe000ull;
  static constexpr uint64_t kCs = kUserCs32;
  // `int $0x80`
  static constexpr uint8_t kSyscallInsn[2] = {0xcd, 0x80};

  struct __attribute__((packed)) k_sigaction {
    word handler;
    word flags;
    word restorer;
    uint32_t mask[2];
  };
  struct stack_t {
    word sp;
    int32_t flags;
    word size;
  };

  enum : int {
    kRead = 3,
    kClose = 6,
    kMmap = 192 /* mmap2: offset in pages */,
    kMprotect = 125,
    kMunmap = 91,
    kBrk = 45,
    kRtSigaction = 174,
    kRtSigprocmask = 175,
    kMadvise = 219,
    kMlock2 = 376,
    kGetpid = 20,
    kUmask = 60,
    kSetgroups = 206 /* 32-bit ids */,
    kSetresuid = 208,
    kSetresgid = 210,
    kCapset = 185,
    kRtSigqueueinfo = 178,
    kSigaltstack = 186,
    kPersonality = 136,
    kPrctl = 172,
    kArchPrctl = 384,
    kChroot = 61,
    kSetTidAddress = 258,
    kOpenat = 295,
    kSetRobustList = 311,
    kGetRobustList = 312,
    kRtTgsigqueueinfo = 335,
    kRseq = 386,
    kMembarrier = 375,
    kGetitimer = 105,
    kSetitimer = 104,
    kTimerCreate = 259,
    kTimerSettime = 260 /* 32-bit time */,
    kTimerGettime = 261 /* 32-bit time */,
    kTimerGetoverrun = 262,
    kTimerDelete = 263,
    kMremap = 163,
    kIoSetup = 245 /* compat: a 32-bit context id */,
    kIoGetevents = 247 /* 32-bit time */,
    kIoSubmit = 248 /* an array of 32-bit pointers */,
    kPipe2 = 331,
    kRestartSyscall = 0,
    kUnshare = 310,
    kSemtimedopTime64 = 420,
  };
};
static_assert(sizeof(X86Arch::k_sigaction) == 20);
static_assert(sizeof(X86Arch::stack_t) == 12);

template <class F>
decltype(auto) WithArch(ArchKind a, F&& f) {
  switch (a) {
    case ArchKind::kX86_64:
      return f(X64Arch{});
    case ArchKind::kX86:
      return f(X86Arch{});
  }
  std::abort();
}

// Runs a syscall of this process through the ia32 entry (int $0x80 works from 64-bit
// code too): the compat flavour of a syscall, for an ia32 task's state. Pointer
// arguments must be below 4 GiB: see LowPage(). -ENOSYS on a kernel without IA-32
// emulation, where int $0x80 would kill the caller (probed once, in a child).
long LocalCompatSyscall(long nr, uint32_t a1 = 0, uint32_t a2 = 0, uint32_t a3 = 0,
                        uint32_t a4 = 0);
// A page of this process below 4 GiB (MAP_32BIT), for compat syscall arguments.
char* LowPage();

// The ELF class of an executable decides the width a task starts in.
enum class ElfClass { kUnknown, k32, k64 };
ElfClass ReadElfClass(const char* path);

}  // namespace kleap
