// Helper for arch_test.cc: the ia32 syscall numbers from the kernel's own header, next to
// the ones kleap hard-codes. Kept in its own translation unit with no other system
// headers, because <asm/unistd_32.h> and <asm/unistd_64.h> define the same __NR_ macros.
#include <asm/unistd_32.h>

#include "engine/base/arch.h"

namespace kleap::unit_test {

struct SyscallPair {
  const char* name;
  long kernel;
  long kleap;
};

#define KLEAP_PAIR(kname, member) \
  { #kname, __NR_##kname, X86Arch::member }

extern const SyscallPair kIa32Syscalls[] = {
    KLEAP_PAIR(read, kRead),
    KLEAP_PAIR(close, kClose),
    KLEAP_PAIR(mmap2, kMmap),
    KLEAP_PAIR(mprotect, kMprotect),
    KLEAP_PAIR(munmap, kMunmap),
    KLEAP_PAIR(brk, kBrk),
    KLEAP_PAIR(rt_sigaction, kRtSigaction),
    KLEAP_PAIR(rt_sigprocmask, kRtSigprocmask),
    KLEAP_PAIR(madvise, kMadvise),
    KLEAP_PAIR(getpid, kGetpid),
    KLEAP_PAIR(umask, kUmask),
    KLEAP_PAIR(setgroups32, kSetgroups),
    KLEAP_PAIR(setresuid32, kSetresuid),
    KLEAP_PAIR(setresgid32, kSetresgid),
    KLEAP_PAIR(capset, kCapset),
    KLEAP_PAIR(rt_sigqueueinfo, kRtSigqueueinfo),
    KLEAP_PAIR(sigaltstack, kSigaltstack),
    KLEAP_PAIR(personality, kPersonality),
    KLEAP_PAIR(prctl, kPrctl),
    KLEAP_PAIR(arch_prctl, kArchPrctl),
    KLEAP_PAIR(chroot, kChroot),
    KLEAP_PAIR(set_tid_address, kSetTidAddress),
    KLEAP_PAIR(openat, kOpenat),
    KLEAP_PAIR(set_robust_list, kSetRobustList),
    KLEAP_PAIR(rt_tgsigqueueinfo, kRtTgsigqueueinfo),
    KLEAP_PAIR(rseq, kRseq),
    KLEAP_PAIR(membarrier, kMembarrier),
    KLEAP_PAIR(get_robust_list, kGetRobustList),
    KLEAP_PAIR(getitimer, kGetitimer),
    KLEAP_PAIR(setitimer, kSetitimer),
    KLEAP_PAIR(timer_create, kTimerCreate),
    KLEAP_PAIR(timer_settime, kTimerSettime),
    KLEAP_PAIR(timer_gettime, kTimerGettime),
    KLEAP_PAIR(timer_getoverrun, kTimerGetoverrun),
    KLEAP_PAIR(timer_delete, kTimerDelete),
    KLEAP_PAIR(mremap, kMremap),
    KLEAP_PAIR(io_setup, kIoSetup),
    KLEAP_PAIR(io_getevents, kIoGetevents),
    KLEAP_PAIR(io_submit, kIoSubmit),
    KLEAP_PAIR(pipe2, kPipe2),
    KLEAP_PAIR(restart_syscall, kRestartSyscall),
    KLEAP_PAIR(unshare, kUnshare),
    KLEAP_PAIR(semtimedop_time64, kSemtimedopTime64),
};
extern const unsigned kIa32SyscallCount = sizeof kIa32Syscalls / sizeof kIa32Syscalls[0];

#undef KLEAP_PAIR

}  // namespace kleap::unit_test
