// seccomp filters of each thread (mode 2). Mode 1 (strict) is refused by check: a task
// in it can't even be asked anything.
//
// Dump: PTRACE_SECCOMP_GET_FILTER gives each filter's BPF program, the oldest at index 0
// (the kernel counts back from the newest: get_nth_filter), and PTRACE_SECCOMP_GET_METADATA the
// flags it was installed with. Threads keep their own chains (a filter installed after a thread was
// created is not its), so each thread's chain is kept whole; chains that threads share are simply
// stored twice. Restore: the filters go in oldest first, with seccomp(2) injected while the threads
// still have the restorer's privileges, suspended from seccomp so the rest of the
// restore isn't filtered. The filters act from the moment the threads are let go.
// The oldest filters that all of a process's threads have in common are taken as one
// set of filter objects, inherited at clone (the kernel shows no sharing): one thread
// installs them with SECCOMP_FILTER_FLAG_TSYNC, so every thread holds the same objects
// again, and a later TSYNC of the task's own finds its threads in step. Each thread
// then installs the rest of its own chain.
//
// Not carried: a filter with a user-notification listener (SECCOMP_FILTER_FLAG_NEW_LISTENER;
// its fd is refused as an anon inode). Threads that installed equal filters each on its
// own come back sharing them.
#include "engine/seccomp.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/ptrace.h>

#include <algorithm>
#include <vector>

#include "engine/base/page.h"

namespace kleap {
namespace {

constexpr uint64_t kKnownFlags = SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW;
constexpr size_t kMaxInsns = 4096;  // BPF_MAXINSNS

}  // namespace

Result<void> SuspendSeccomp(pid_t tid, bool exit_kill) {
  long opts =
      PTRACE_O_TRACESYSGOOD | PTRACE_O_SUSPEND_SECCOMP | (exit_kill ? PTRACE_O_EXITKILL : 0);
  if (ptrace(PTRACE_SETOPTIONS, tid, 0, opts) < 0)
    return ErrnoError() << "thread " << tid << ": suspend its seccomp filters";
  return Ok();
}

int SeccompMode(pid_t pid, pid_t tid) {
  auto st = ReadStatus(pid, tid);
  return st ? int(st->GetInt("Seccomp").value_or(0)) : 0;
}

Result<void> DumpSeccomp(pid_t tid, img::ThreadCore* th) {
  for (unsigned long i = 0;; ++i) {  // oldest first
    long n = ptrace(PTRACE_SECCOMP_GET_FILTER, tid, i, nullptr);
    if (n < 0 && errno == ENOENT) break;  // past the oldest
    if (n < 0) return ErrnoError() << "thread " << tid << ": seccomp filter " << i;
    std::string insns(size_t(n) * sizeof(sock_filter), '\0');
    if (ptrace(PTRACE_SECCOMP_GET_FILTER, tid, i, insns.data()) != n)
      return ErrnoError() << "thread " << tid << ": read seccomp filter " << i;
    __ptrace_seccomp_metadata md{i, 0};
    if (ptrace(PTRACE_SECCOMP_GET_METADATA, tid, sizeof md, &md) < 0)
      return ErrnoError() << "thread " << tid << ": flags of seccomp filter " << i;
    img::SeccompFilter* f = th->add_seccomp();
    f->set_insns(std::move(insns));
    f->set_flags(md.flags);
  }
  return Ok();
}

Result<void> ValidateSeccomp(pid_t pid, const img::ThreadCore& th) {
  for (int i = 0; i < th.seccomp_size(); ++i) {
    const auto& f = th.seccomp(i);
    size_t n = f.insns().size() / sizeof(sock_filter);
    if (f.insns().size() % sizeof(sock_filter) || n == 0 || n > kMaxInsns)
      return Err(EINVAL) << CoreImage(pid) << ": thread " << th.tid() << ": seccomp filter " << i
                         << " has a bad size " << f.insns().size();
    if (f.flags() & ~kKnownFlags)
      return Err(EINVAL) << CoreImage(pid) << ": thread " << th.tid() << ": seccomp filter " << i
                         << " has unknown flags " << Hex(f.flags());
  }
  return Ok();
}

int SharedSeccompPrefix(const img::TaskCore& core) {
  if (core.threads_size() < 2) return 0;
  int n = core.threads(0).seccomp_size();
  for (auto& th : core.threads()) {
    int k = 0;
    while (k < n && k < th.seccomp_size() &&
           th.seccomp(k).insns() == core.threads(0).seccomp(k).insns() &&
           th.seccomp(k).flags() == core.threads(0).seccomp(k).flags())
      ++k;
    n = k;
  }
  return n;
}

Result<void> RestoreSeccomp(RemoteSyscalls& rs, pid_t pid, const img::ThreadCore& th, int from,
                            int to, bool tsync) {
  if (from >= to) return Ok();
  constexpr ArchKind k64 = ArchKind::kX86_64;
  pid_t tid = th.tid();
  size_t most = 0;
  for (auto& f : th.seccomp()) most = std::max(most, f.insns().size());
  // struct sock_fprog (64-bit: the length, padding, the pointer), then the program.
  const uint64_t size = (16 + most + 4095) & ~uint64_t(4095);
  uint64_t at = KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kMmap, 0, size, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS, RemoteFd(-1), 0),
                              "thread " << tid << ": map room for its seccomp filters");
  Result<void> r = [&]() -> Result<void> {
    for (int i = from; i < to; ++i) {
      const auto& f = th.seccomp(i);
      struct {
        uint16_t len;
        uint16_t pad[3];
        uint64_t filter;
      } prog{uint16_t(f.insns().size() / sizeof(sock_filter)), {}, at + 16};
      KLEAP_TRY(WriteRemote(tid, RemotePtr(at), &prog, sizeof prog));
      KLEAP_TRY(WriteRemote(tid, RemotePtr(at + 16), f.insns().data(), f.insns().size()));
      uint64_t flags = f.flags() | (tsync ? SECCOMP_FILTER_FLAG_TSYNC : 0);
      uint64_t r =
          KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kSeccomp, SECCOMP_SET_MODE_FILTER, flags, at),
                        "task " << pid << " thread " << tid << ": install seccomp filter " << i);
      // (TSYNC names a thread it could not bring in step.)
      if (r != 0)
        return Err(EBUSY) << "task " << pid << ": seccomp filter " << i
                          << " could not be synchronized to thread " << r;
    }
    return Ok();
  }();
  auto un = rs.Call(k64, X64Arch::kMunmap, at, size);
  KLEAP_TRY(std::move(r));
  if (!un) return std::move(un).error().Context("thread " + std::to_string(tid));
  return Ok();
}

}  // namespace kleap
