// eventfd: the 64-bit counter and the EFD_SEMAPHORE mode, from fdinfo; restored by
// creating the object with its flags and writing the counter back.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine/files.h"

namespace kleap {

// The counter can't exceed this: a write that would is refused by the kernel.
constexpr uint64_t kEventfdMax = ~uint64_t(0) - 1;

std::string RefuseEventfd(const FdDesc& d) {
  // Linux 6.3 added the mode to fdinfo; without it the mode can't be told.
  if (!d.info.extra.count("eventfd-semaphore"))
    return "this kernel's fdinfo doesn't show the EFD_SEMAPHORE mode (needs Linux 6.3)";
  return "";
}

Result<void> DumpEventfd(DumpContext&, const FdDesc& d, img::FileObject* fo) {
  img::Eventfd* e = fo->mutable_eventfd();
  e->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  e->set_count(KLEAP_TRY(FdInfoNumber(d.info, "eventfd-count", 16)));
  e->set_semaphore(KLEAP_TRY(FdInfoNumber(d.info, "eventfd-semaphore", 16)) != 0);
  return Ok();
}

Result<void> ValidateEventfd(const img::FileObject& fo) {
  const img::Eventfd& e = fo.eventfd();
  if (e.count() > kEventfdMax)
    return Err(EINVAL) << "files.img: eventfd " << fo.id() << ": counter " << e.count()
                       << " is above the maximum";
  return ValidateAnonFlags(fo, "eventfd", e.flags(), O_RDWR);
}

Result<UniqueFd> OpenEventfd(const img::FileObject& fo, ImageReader&, OpenFiles&) {
  const img::Eventfd& e = fo.eventfd();
  int flags = EFD_CLOEXEC | (e.semaphore() ? EFD_SEMAPHORE : 0) |
              (e.flags() & O_NONBLOCK ? EFD_NONBLOCK : 0);
  // eventfd() takes a 32-bit start value; a write adds all 64 bits.
  UniqueFd fd(eventfd(0, flags));
  if (!fd) return ErrnoError() << "eventfd " << fo.id() << ": create";
  uint64_t count = e.count();
  if (count && write(fd.get(), &count, sizeof count) != sizeof count)
    return ErrnoError() << "eventfd " << fo.id() << ": set the counter to " << count;
  return fd;
}

}  // namespace kleap
