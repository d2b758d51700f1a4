// signalfd: the set of signals it reads, from fdinfo. Which signals are pending is the
// task's state (signal.cc); the fd reads whatever is pending for the reader.
#include <fcntl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "engine/base/page.h"
#include "engine/files.h"

namespace kleap {

// The kernel's sigset: 64 signals, 8 bytes, on both x86 ABIs.
constexpr size_t kKernelSigsetSize = 8;

Result<void> DumpSignalfd(DumpContext&, const FdDesc& d, img::FileObject* fo) {
  img::Signalfd* s = fo->mutable_signalfd();
  s->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  s->set_mask(KLEAP_TRY(FdInfoNumber(d.info, "sigmask", 16)));
  return Ok();
}

Result<void> ValidateSignalfd(const img::FileObject& fo) {
  return ValidateAnonFlags(fo, "signalfd", fo.signalfd().flags(), O_RDWR);
}

Result<UniqueFd> OpenSignalfd(const img::FileObject& fo, ImageReader&, OpenFiles&) {
  const img::Signalfd& s = fo.signalfd();
  uint64_t mask = s.mask();
  int flags = SFD_CLOEXEC | (s.flags() & O_NONBLOCK ? SFD_NONBLOCK : 0);
  UniqueFd fd(int(syscall(SYS_signalfd4, -1, &mask, kKernelSigsetSize, flags)));
  if (!fd) return ErrnoError() << "signalfd " << fo.id() << ": create with mask " << Hex(mask);
  return fd;
}

}  // namespace kleap
