// Kernel AIO contexts: io_setup(2) rings, the completions in them, and remaking them.
//
// A context has no fd: it is a ring mapping ("/[aio] (deleted)") whose address is the
// context id. The ring starts with a header {id, nr, head, tail, magic, compat and
// incompat features, header length} followed by nr struct io_event slots. The kernel
// writes tail and the events; head is where the reader is, and the task may move it
// itself. Dump reads the header and the events between head and tail, with the tree
// frozen, and asks the task (io_getevents with nothing to wait for) that the ring is a
// live context of its own.
//
// Ring size: io_setup(n) asks for max(n, 4 * possible CPUs) * 2 + 2 slots and rounds the
// ring up to whole pages, so a ring of P pages has P * 128 - 1 slots whatever n was.
// Giving io_setup (nr - 2) / 2 (that is 64 * P - 2) makes a ring of P pages again, as
// long as that is not below 4 * possible CPUs of the restoring kernel (checked: the
// restore fails with both sizes when the new ring differs).
//
// Restore, in the task's own ABI (a 32-bit task gets the compat io_setup, whose id is
// 32 bits): io_setup, then mremap of the new ring onto the old address, which the
// kernel's ring mremap hook turns into the context id. The completions come back by
// making the kernel produce them: head times a zero-length write on a pipe of the task
// (it completes inside io_submit) reaped at once, then as many as were pending, left
// in the ring; their slots are then overwritten with the dumped events. So head, tail
// and the kernel's own accounting of free slots are all what they were.
//
// Not carried: requests submitted and not completed yet (a poll on an empty pipe, an
// fsync or O_DIRECT request under way). The kernel shows them nowhere a tracer can
// read, so dump can't even see them; see docs/engine.md.
#include "engine/aio.h"

#include <fcntl.h>
#include <linux/aio_abi.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "engine/base/log.h"
#include "engine/base/page.h"
#include "engine/mm.h"
#include "engine/remote_mem.h"

namespace kleap {
namespace {

struct AioRingHeader {
  uint32_t id, nr, head, tail, magic, compat_features, incompat_features, header_length;
};
static_assert(sizeof(AioRingHeader) == 32);
static_assert(sizeof(io_event) == 32);
static_assert(sizeof(iocb) == 64);

constexpr uint32_t kAioRingMagic = 0xa10a10a1;
constexpr uint64_t kMaxRing = 256ull << 20;  // the kernel's bound: 0x10000000 bytes of events
constexpr uint64_t kBatch = 64;              // requests per injected io_submit/io_getevents

std::string Where(pid_t pid, uint64_t id) {
  return "task " + std::to_string(pid) + " AIO context " + Hex(id);
}

// Slots the ring of a mapping of `size` bytes has.
uint64_t SlotsOf(uint64_t size) {
  return size / sizeof(io_event) - 1;
}

// What io_setup takes to make a ring of `slots` slots again (see above).
uint32_t NrEventsFor(uint32_t slots) {
  return (slots - 2) / 2;
}

}  // namespace

bool IsAioRingMapping(const MapsEntry& m) {
  return m.shared && m.path == "/[aio] (deleted)";
}

Result<void> DumpAioRing(RemoteSyscalls& rs, ArchKind arch, const MapsEntry& m, img::AioRing* out) {
  pid_t pid = rs.tid();
  std::string where = Where(pid, m.start);
  AioRingHeader h;
  KLEAP_TRY_CTX(ReadRemote(pid, RemotePtr(m.start), &h, sizeof h), where << ": read the ring");
  if (h.magic != kAioRingMagic || h.header_length != sizeof h || h.incompat_features != 0)
    return Err(ENOTSUP) << where << ": not an AIO ring kleap knows (magic " << Hex(h.magic)
                        << ", header of " << h.header_length << " bytes, incompatible features "
                        << Hex(h.incompat_features) << ")";
  if (m.size() > kMaxRing || h.nr != SlotsOf(m.size()))
    return Err(ENOTSUP) << where << ": the ring mapping of " << m.size()
                        << " bytes does not hold the ring's " << h.nr
                        << " slots (was it partly unmapped or moved?)";
  if (h.head >= h.nr || h.tail >= h.nr)
    return Err(EINVAL) << where << ": ring head " << h.head << " or tail " << h.tail
                       << " is past its " << h.nr << " slots";
  // The ring must be a live context of this task, not a mapping left behind.
  auto live = WithArch(arch, [&](auto a) {
    return rs.Call(a.kKind, decltype(a)::kIoGetevents, m.start, 0, 0, 0, 0);
  });
  if (!live)
    return Err(ENOTSUP) << where << ": the ring is not a context of the task ("
                        << live.error().ToString() << ")";
  out->set_id(m.start);
  out->set_size(m.size());
  out->set_ring_nr(h.nr);
  out->set_nr_events(NrEventsFor(h.nr));
  out->set_head(h.head);
  out->set_tail(h.tail);
  uint32_t pending = (h.tail + h.nr - h.head) % h.nr;
  std::vector<io_event> ev(pending);
  uint32_t first = std::min(pending, h.nr - h.head);
  auto slot = [&](uint32_t i) { return RemotePtr(m.start + sizeof h + uint64_t(i) * 32); };
  if (first)
    KLEAP_TRY_CTX(ReadRemote(pid, slot(h.head), ev.data(), first * sizeof(io_event)), where);
  if (pending > first)
    KLEAP_TRY_CTX(ReadRemote(pid, slot(0), ev.data() + first, (pending - first) * sizeof(io_event)),
                  where);
  for (auto& e : ev) {
    img::AioEvent* o = out->add_events();
    o->set_data(e.data);
    o->set_obj(e.obj);
    o->set_res(e.res);
    o->set_res2(e.res2);
  }
  return Ok();
}

Result<void> ValidateAio(pid_t pid, const img::MmImage& mm) {
  int rings = 0;
  for (auto& v : mm.vmas()) rings += v.kind() == img::Vma::AIO_RING;
  if (rings != mm.aio_size())
    return Err(EINVAL) << MmImage(pid) << ": " << rings << " AIO ring mappings for "
                       << mm.aio_size() << " AIO contexts";
  for (auto& r : mm.aio()) {
    std::string where = MmImage(pid) + ": AIO context " + Hex(r.id());
    const img::Vma* vma = nullptr;
    for (auto& v : mm.vmas())
      if (v.start() == r.id()) vma = &v;
    if (!vma || vma->kind() != img::Vma::AIO_RING || vma->end() - vma->start() != r.size())
      return Err(EINVAL) << where << ": no AIO ring mapping of " << r.size() << " bytes there";
    if (r.size() < kPage || r.size() % kPage || r.size() > kMaxRing ||
        r.ring_nr() != SlotsOf(r.size()) || r.nr_events() != NrEventsFor(r.ring_nr()))
      return Err(EINVAL) << where << ": a ring of " << r.size() << " bytes can't have "
                         << r.ring_nr() << " slots from io_setup(" << r.nr_events() << ")";
    if (r.head() >= r.ring_nr() || r.tail() >= r.ring_nr() ||
        uint64_t(r.events_size()) != (r.tail() + r.ring_nr() - r.head()) % r.ring_nr())
      return Err(EINVAL) << where << ": head " << r.head() << ", tail " << r.tail() << " and "
                         << r.events_size() << " events don't fit together";
    if (mm.arch() == uint32_t(ArchKind::kX86) && r.id() + r.size() > (1ull << 32))
      return Err(EINVAL) << where << ": above 4 GiB in a 32-bit task";
  }
  return Ok();
}

namespace {

template <class A>
Result<void> RestoreRing(A, RemoteSyscalls& rs, pid_t pid, RemotePtr<> data,
                         const img::AioRing& r) {
  constexpr ArchKind kind = A::kKind;
  constexpr ArchKind k64 = ArchKind::kX86_64;
  using word = typename A::word;
  std::string where = Where(pid, r.id());
  // The data area: the new id and the pipe at 0, a zero timespec at 16, one iocb at 32,
  // the pointers io_submit takes at 128, the events io_getevents returns at 1024.
  const RemotePtr<word> id_at = data.Cast<word>();
  const RemotePtr<int32_t> pipe_at = data.Cast<int32_t>();
  const RemotePtr<timespec> ts_at = (data + 16).Cast<timespec>();
  const RemotePtr<iocb> iocb_at = (data + 32).Cast<iocb>();
  const RemotePtr<word> ptrs_at = (data + 128).Cast<word>();
  const RemotePtr<io_event> events_at = (data + 1024).Cast<io_event>();
  static_assert(1024 + kBatch * sizeof(io_event) <= ScratchPage::kDataSize);

  uint64_t zero[2] = {0, 0};
  KLEAP_TRY(WriteRemote(pid, id_at, zero, sizeof zero));
  KLEAP_TRY_CTX(rs.Call(kind, A::kIoSetup, r.nr_events(), id_at),
                where << ": io_setup(" << r.nr_events() << ")"
                      << " (fs.aio-max-nr bounds the contexts of the machine)");
  word got_id = KLEAP_TRY(ReadRemoteValue(pid, id_at));
  uint64_t id = got_id;
  AioRingHeader h;
  KLEAP_TRY(ReadRemote(pid, RemotePtr(id), &h, sizeof h));
  if (h.nr != r.ring_nr())
    return Err(ENOTSUP) << where << ": io_setup(" << r.nr_events() << ") made a ring of " << h.nr
                        << " slots here, the dumped one had " << r.ring_nr()
                        << " (more possible CPUs on this kernel?)";
  if (id != r.id()) {
    uint64_t moved = KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kMremap, id, r.size(), r.size(),
                                           MREMAP_MAYMOVE | MREMAP_FIXED, r.id()),
                                   where << ": move the new ring from " << Hex(id));
    if (moved != r.id()) return Err(EFAULT) << where << ": the ring moved to " << Hex(moved);
  }
  KLEAP_TRY_CTX(rs.Call(kind, A::kIoGetevents, r.id(), 0, 0, 0, 0),
                where << ": the moved ring is not the context");
  if (r.head() == 0 && r.events_size() == 0) return Ok();

  // Completions the kernel makes itself: zero-length writes on a pipe of the task.
  KLEAP_TRY_CTX(rs.Call(kind, A::kPipe2, pipe_at, O_CLOEXEC), where << ": pipe2");
  int32_t fds[2];
  KLEAP_TRY(ReadRemote(pid, pipe_at, fds, sizeof fds));
  KLEAP_TRY(WriteRemote(pid, ts_at, zero, sizeof zero));
  iocb cb{};
  cb.aio_lio_opcode = IOCB_CMD_PWRITE;
  cb.aio_fildes = uint32_t(fds[1]);
  KLEAP_TRY(WriteRemoteValue(pid, iocb_at, cb));
  word ptrs[kBatch];
  std::fill(std::begin(ptrs), std::end(ptrs), word(iocb_at.addr()));
  KLEAP_TRY(WriteRemote(pid, ptrs_at, ptrs, sizeof ptrs));
  auto fill = [&]() -> Result<void> {
    auto submit = [&](uint64_t n) -> Result<void> {
      uint64_t done =
          KLEAP_TRY_CTX(rs.Call(kind, A::kIoSubmit, r.id(), n, ptrs_at), where << ": io_submit");
      if (done != n) return Err(EAGAIN) << where << ": io_submit took " << done << " of " << n;
      return Ok();
    };
    for (uint64_t done = 0; done < r.head(); done += kBatch) {
      uint64_t n = std::min<uint64_t>(kBatch, r.head() - done);
      KLEAP_TRY(submit(n));
      uint64_t reaped =
          KLEAP_TRY_CTX(rs.Call(kind, A::kIoGetevents, r.id(), n, n, events_at, ts_at),
                        where << ": io_getevents");
      if (reaped != n) return Err(EIO) << where << ": reaped " << reaped << " of " << n;
    }
    for (uint64_t done = 0; done < uint64_t(r.events_size()); done += kBatch)
      KLEAP_TRY(submit(std::min<uint64_t>(kBatch, r.events_size() - done)));
    return Ok();
  };
  auto filled = fill();
  for (int fd : fds) (void)rs.Call(kind, A::kClose, RemoteFd(fd));
  KLEAP_TRY_CTX(std::move(filled), "the ring was " << r.ring_nr() << " slots, head " << r.head()
                                                   << ", " << r.events_size() << " pending");
  KLEAP_TRY(ReadRemote(pid, RemotePtr(r.id()), &h, sizeof h));
  if (h.head != r.head() || h.tail != r.tail())
    return Err(EIO) << where << ": the ring came back with head " << h.head << " and tail "
                    << h.tail << ", not " << r.head() << " and " << r.tail();
  for (int i = 0; i < r.events_size(); ++i) {
    const img::AioEvent& e = r.events(i);
    io_event ev{e.data(), e.obj(), e.res(), e.res2()};
    uint64_t slot = (r.head() + uint64_t(i)) % r.ring_nr();
    KLEAP_TRY_CTX(WriteRemote(pid, RemotePtr(r.id() + sizeof h + slot * sizeof ev), &ev, sizeof ev),
                  where << ": event " << i);
  }
  return Ok();
}

}  // namespace

Result<void> RestoreAio(RemoteSyscalls& rs, pid_t pid, RemotePtr<> data, const img::MmImage& mm) {
  if (mm.aio_size() == 0) return Ok();
  // Keep the old ring addresses taken, so no new ring lands on one of them.
  for (auto& r : mm.aio())
    KLEAP_TRY_CTX(rs.Call(ArchKind::kX86_64, X64Arch::kMmap, r.id(), r.size(), PROT_NONE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, ~uint64_t(0), 0),
                  Where(pid, r.id()) << ": reserve its address");
  for (auto& r : mm.aio())
    KLEAP_TRY(
        WithArch(ArchKind(mm.arch()), [&](auto a) { return RestoreRing(a, rs, pid, data, r); }));
  return Ok();
}

}  // namespace kleap
