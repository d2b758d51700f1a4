// eventfd: the 64-bit counter and the EFD_SEMAPHORE mode, from fdinfo (the mode from a
// probe before Linux 6.3); restored by creating the object with its flags and writing
// the counter back.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine/files.h"

namespace kleap {

// The counter can't exceed this: a write that would is refused by the kernel.
constexpr uint64_t kEventfdMax = ~uint64_t(0) - 1;

namespace {

// Before Linux 6.3 fdinfo doesn't show the EFD_SEMAPHORE mode, so it is told by what a
// read returns, on a copy of the file, with the tree frozen: with a counter of 2 or
// more, a read in semaphore mode takes 1, otherwise all of it. The counter is raised
// to 2 first when it is lower, and put back exactly afterwards.
Result<bool> ProbeSemaphore(pid_t pid, int fd, uint64_t count) {
  UniqueFd copy = KLEAP_TRY(GrabFd(pid, fd));
  auto write_n = [&](uint64_t v) -> Result<void> {
    if (write(copy.get(), &v, sizeof v) != sizeof v)
      return ErrnoError() << "eventfd fd " << fd << " of task " << pid << ": write " << v;
    return Ok();
  };
  auto read_n = [&]() -> Result<uint64_t> {
    uint64_t v = 0;
    if (read(copy.get(), &v, sizeof v) != sizeof v)
      return ErrnoError() << "eventfd fd " << fd << " of task " << pid << ": read";
    return v;
  };
  uint64_t raised = count < 2 ? 2 : 0;
  if (raised) KLEAP_TRY(write_n(raised));
  uint64_t got = KLEAP_TRY(read_n());
  bool semaphore = got == 1;
  uint64_t now = count + raised - got;
  if (now < count) KLEAP_TRY(write_n(count - now));
  while (now > count) {  // semaphore mode: one at a time
    KLEAP_TRY(read_n());
    --now;
  }
  return semaphore;
}

}  // namespace

Result<void> DumpEventfd(DumpContext&, const FdDesc& d, img::FileObject* fo) {
  img::Eventfd* e = fo->mutable_eventfd();
  e->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  e->set_count(KLEAP_TRY(FdInfoNumber(d.info, "eventfd-count", 16)));
  bool shown = d.info.extra.count("eventfd-semaphore");
  // KLEAP_EVENTFD_PROBE=1 (a test hook) probes also where fdinfo shows the mode, and
  // checks the two agree.
  const char* force = getenv("KLEAP_EVENTFD_PROBE");
  if (!shown || (force && *force == '1')) {
    bool probed = KLEAP_TRY(ProbeSemaphore(d.pid, d.fd, e->count()));
    if (shown && probed != (KLEAP_TRY(FdInfoNumber(d.info, "eventfd-semaphore", 16)) != 0))
      return Err(EIO) << "eventfd fd " << d.fd << " of task " << d.pid
                      << ": the probe and fdinfo disagree on EFD_SEMAPHORE";
    e->set_semaphore(probed);
  } else {
    e->set_semaphore(KLEAP_TRY(FdInfoNumber(d.info, "eventfd-semaphore", 16)) != 0);
  }
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
