#include "engine/ptrace/tracee.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/base/proc.h"
#include "engine/base/unique_fd.h"

namespace kleap {
namespace pt {
namespace {

long Ptrace(int req, pid_t tid, uint64_t addr, uint64_t data) {
  return ptrace(static_cast<__ptrace_request>(req), tid, reinterpret_cast<void*>(addr),
                reinterpret_cast<void*>(data));
}

constexpr int kGetRseqConfiguration = 0x420f;

}  // namespace

Result<void> Seize(pid_t tid, bool exit_kill) {
  long opts = PTRACE_O_TRACESYSGOOD | (exit_kill ? PTRACE_O_EXITKILL : 0);
  if (Ptrace(PTRACE_SEIZE, tid, 0, uint64_t(opts)) < 0)
    return ErrnoError() << "seize thread " << tid;
  return Ok();
}

Result<void> Interrupt(pid_t tid) {
  if (Ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0) return ErrnoError() << "interrupt thread " << tid;
  return Ok();
}

Result<int> WaitStop(pid_t tid) {
  int status;
  for (;;) {
    pid_t r = waitpid(tid, &status, __WALL);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError() << "wait for thread " << tid;
    }
    break;
  }
  if (WIFEXITED(status))
    return Err(ESRCH) << "thread " << tid << " exited with status " << WEXITSTATUS(status);
  if (WIFSIGNALED(status))
    return Err(ESRCH) << "thread " << tid << " was killed by signal " << WTERMSIG(status);
  return status;
}

Result<int> SeizeAndStop(pid_t tid, bool exit_kill) {
  KLEAP_TRY(Seize(tid, exit_kill));
  KLEAP_TRY(Interrupt(tid));
  // A thread in uninterruptible sleep (a FUSE request, a dead NFS server) never stops:
  // give up after a deadline and name it, instead of hanging with half the tree frozen.
  constexpr int kDeadlineMs = 10000;
  for (int waited_us = 0;;) {
    int st;
    pid_t r = waitpid(tid, &st, __WALL | WNOHANG);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError() << "wait for thread " << tid;
    }
    if (r == 0) {
      if (waited_us >= kDeadlineMs * 1000) {
        auto stat = ReadFileToString(ProcPath(tid, "stat"));
        std::string state = "?";
        if (stat) {
          auto close = stat->rfind(')');
          if (close != std::string::npos && close + 2 < stat->size())
            state = stat->substr(close + 2, 1);
        }
        return Err(ETIMEDOUT) << "thread " << tid << " did not stop within " << kDeadlineMs / 1000
                              << " s (state " << state << "; uninterruptible sleep?)";
      }
      usleep(1000);
      waited_us += 1000;
      continue;
    }
    if (WIFEXITED(st) || WIFSIGNALED(st))
      return Err(ESRCH) << "thread " << tid << " exited while being stopped";
    // (A thread in a group stop reports the signal that stopped it; else SIGTRAP.)
    if (WIFSTOPPED(st) && (st >> 16) == PTRACE_EVENT_STOP) return WSTOPSIG(st);
    if (WIFSTOPPED(st)) {
      // A signal-delivery stop: let the signal through; the interrupt stop follows.
      if (Ptrace(PTRACE_CONT, tid, 0, uint64_t(WSTOPSIG(st))) < 0)
        return ErrnoError() << "resume thread " << tid;
    }
  }
}

Result<void> Detach(pid_t tid) {
  if (Ptrace(PTRACE_DETACH, tid, 0, 0) < 0) return ErrnoError() << "detach thread " << tid;
  return Ok();
}

void ReapKilledExcept(const std::vector<pid_t>& leaders_first, const std::set<pid_t>& spared) {
  std::vector<pid_t> killed;
  for (pid_t tid : leaders_first)
    if (spared.count(tid))
      (void)Detach(tid);
    else
      killed.push_back(tid);
  ReapKilled(killed);
}

void ReapKilled(const std::vector<pid_t>& leaders_first) {
  for (auto it = leaders_first.rbegin(); it != leaders_first.rend(); ++it) {
    for (int i = 0; i < 10000; ++i) {  // 10 s at most per thread
      int st;
      pid_t r = waitpid(*it, &st, __WALL | WNOHANG);
      if (r < 0) break;  // already gone, or not ours to wait for
      if (r == *it && (WIFEXITED(st) || WIFSIGNALED(st))) break;
      if (r == 0) usleep(1000);
    }
  }
}

Result<Regs> GetRegs(pid_t tid) {
  Regs r;
  if (Ptrace(PTRACE_GETREGS, tid, 0, uint64_t(&r)) < 0)
    return ErrnoError() << "get registers of thread " << tid;
  return r;
}

Result<void> SetRegs(pid_t tid, const Regs& regs) {
  if (Ptrace(PTRACE_SETREGS, tid, 0, uint64_t(&regs)) < 0)
    return ErrnoError() << "set registers of thread " << tid;
  return Ok();
}

// A CPU without XSAVE (QEMU's default model, old hardware) has no NT_X86_XSTATE
// regset (ENODEV): its FPU/SSE state is the 512-byte FXSAVE area, which is also the
// first 512 bytes of any XSAVE area. That is what is kept then. A 64-bit tracee shows
// it as NT_PRFPREG; an ia32 one as NT_PRXFPREG (its NT_PRFPREG is the old FSAVE one).
constexpr size_t kFxsaveSize = 512;
constexpr unsigned kNtPrxfpreg = 0x46e62b7f;

// The FXSAVE area through whichever regset holds it in the tracee's view.
long FxsaveRegset(int request, pid_t tid, void* buf) {
  for (unsigned type : {unsigned(NT_PRFPREG), kNtPrxfpreg}) {
    iovec iov{buf, kFxsaveSize};
    if (Ptrace(request, tid, type, uint64_t(&iov)) == 0 && iov.iov_len == kFxsaveSize) return 0;
  }
  return -1;
}

Result<std::string> GetXstate(pid_t tid) {
  std::string buf(64 * 1024, '\0');
  iovec iov{buf.data(), buf.size()};
  if (Ptrace(PTRACE_GETREGSET, tid, NT_X86_XSTATE, uint64_t(&iov)) < 0) {
    if (errno != ENODEV) return ErrnoError() << "get xstate of thread " << tid;
    if (FxsaveRegset(PTRACE_GETREGSET, tid, buf.data()) < 0)
      return ErrnoError() << "get the FPU registers (no XSAVE) of thread " << tid;
    iov.iov_len = kFxsaveSize;
  }
  buf.resize(iov.iov_len);
  return buf;
}

Result<void> SetXstate(pid_t tid, const std::string& xstate) {
  std::string copy = xstate;
  iovec iov{copy.data(), copy.size()};
  if (copy.size() > kFxsaveSize &&
      Ptrace(PTRACE_SETREGSET, tid, NT_X86_XSTATE, uint64_t(&iov)) == 0)
    return Ok();
  if (copy.size() > kFxsaveSize && errno != ENODEV)
    return ErrnoError() << "set xstate of thread " << tid;
  // FXSAVE only, kept or here: the legacy area, whatever else the dump held.
  if (copy.size() < kFxsaveSize) return Err(EINVAL) << "thread " << tid << ": short FPU state";
  if (FxsaveRegset(PTRACE_SETREGSET, tid, copy.data()) < 0)
    return ErrnoError() << "set the FPU registers of thread " << tid;
  return Ok();
}

Result<uint64_t> GetSigmask(pid_t tid) {
  uint64_t m;
  if (Ptrace(PTRACE_GETSIGMASK, tid, sizeof m, uint64_t(&m)) < 0)
    return ErrnoError() << "get signal mask of thread " << tid;
  return m;
}

Result<void> SetSigmask(pid_t tid, uint64_t mask) {
  if (Ptrace(PTRACE_SETSIGMASK, tid, sizeof mask, uint64_t(&mask)) < 0)
    return ErrnoError() << "set signal mask of thread " << tid;
  return Ok();
}

Result<std::vector<siginfo_t>> PeekSiginfo(pid_t tid, bool shared) {
  std::vector<siginfo_t> out;
  for (;;) {
    __ptrace_peeksiginfo_args args{};
    args.off = out.size();
    args.flags = shared ? PTRACE_PEEKSIGINFO_SHARED : 0;
    args.nr = 32;
    siginfo_t buf[32];
    long n = Ptrace(PTRACE_PEEKSIGINFO, tid, uint64_t(&args), uint64_t(buf));
    if (n < 0) return ErrnoError() << "peek pending signals of thread " << tid;
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

Result<RseqConfig> GetRseq(pid_t tid) {
  RseqConfig c{};
  if (Ptrace(kGetRseqConfiguration, tid, sizeof c, uint64_t(&c)) < 0)
    return ErrnoError() << "get rseq configuration of thread " << tid;
  return c;
}

Result<UserDesc> GetThreadArea(pid_t tid, int entry) {
  UserDesc d{};
  if (Ptrace(PTRACE_GET_THREAD_AREA, tid, uint64_t(entry), uint64_t(&d)) < 0)
    return ErrnoError() << "get TLS entry " << entry << " of thread " << tid;
  return d;
}

Result<void> SetThreadArea(pid_t tid, const UserDesc& desc) {
  UserDesc d = desc;
  if (Ptrace(PTRACE_SET_THREAD_AREA, tid, d.entry_number, uint64_t(&d)) < 0)
    return ErrnoError() << "set TLS entry " << desc.entry_number << " of thread " << tid;
  return Ok();
}

}  // namespace pt

Result<void> ReadRemote(pid_t pid, RemotePtr<> addr, void* buf, size_t len) {
  while (len) {
    iovec local{buf, len};
    iovec remote{reinterpret_cast<void*>(addr.addr()), len};
    ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (n <= 0)
      return ErrnoError() << "read " << len << " bytes at 0x" << std::hex << addr.addr() << std::dec
                          << " of pid " << pid;
    buf = static_cast<char*>(buf) + n;
    addr = addr + uint64_t(n);
    len -= size_t(n);
  }
  return Ok();
}

Result<void> WriteRemote(pid_t pid, RemotePtr<> addr, const void* buf, size_t len) {
  while (len) {
    iovec local{const_cast<void*>(buf), len};
    iovec remote{reinterpret_cast<void*>(addr.addr()), len};
    ssize_t n = process_vm_writev(pid, &local, 1, &remote, 1, 0);
    if (n <= 0)
      return ErrnoError() << "write " << len << " bytes at 0x" << std::hex << addr.addr()
                          << std::dec << " of pid " << pid;
    buf = static_cast<const char*>(buf) + n;
    addr = addr + uint64_t(n);
    len -= size_t(n);
  }
  return Ok();
}

namespace {
Result<void> MemRw(pid_t pid, RemotePtr<> addr, void* buf, size_t len, bool write) {
  std::string path = ProcPath(pid, "mem");
  UniqueFd fd(open(path.c_str(), (write ? O_RDWR : O_RDONLY) | O_CLOEXEC));
  if (!fd) return ErrnoError() << "open " << path;
  char* p = static_cast<char*>(buf);
  uint64_t off = addr.addr();
  while (len) {
    ssize_t n = write ? pwrite(fd.get(), p, len, off_t(off)) : pread(fd.get(), p, len, off_t(off));
    if (n <= 0)
      return ErrnoError() << (write ? "write " : "read ") << path << " at 0x" << std::hex << off;
    p += n;
    off += uint64_t(n);
    len -= size_t(n);
  }
  return Ok();
}
}  // namespace

Result<void> ReadRemoteForce(pid_t pid, RemotePtr<> addr, void* buf, size_t len) {
  return MemRw(pid, addr, buf, len, false);
}

Result<void> WriteRemoteForce(pid_t pid, RemotePtr<> addr, const void* buf, size_t len) {
  return MemRw(pid, addr, const_cast<void*>(buf), len, true);
}

}  // namespace kleap
