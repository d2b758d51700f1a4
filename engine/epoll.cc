// epoll: every file an instance watches, with its events and data, from the `tfd:`
// lines of fdinfo; nested instances are files like any other.
//
// The kernel keys a registration by (file, fd number), and the task later names it by
// that number (EPOLL_CTL_MOD/DEL). The number may have been closed since, and even
// reused for another file, while the registered file stays open under another number:
// the registration stays. So each registration's file is found among the task's fds
// (kcmp KCMP_EPOLL_TFD; several files under one number are told apart by their order),
// and it is remade under its own number: after every file object is open, a helper
// process puts each target at its number and registers it (RegisterEpollTargets). A
// registration whose file no fd of the task holds is refused.
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "engine/base/run_child.h"
#include "engine/files.h"

namespace kleap {
namespace {

constexpr int kMaxTfd = 1 << 20;

struct TfdLine {
  int tfd = -1;
  uint32_t events = 0;
  uint64_t data = 0;
};

Result<std::vector<TfdLine>> ParseTfds(const FdInfo& info) {
  std::vector<TfdLine> out;
  auto [lo, hi] = info.extra.equal_range("tfd");
  for (auto it = lo; it != hi; ++it) {
    TfdLine t;
    unsigned long long data = 0;
    if (sscanf(it->second.c_str(), "%d events: %x data: %llx", &t.tfd, &t.events, &data) != 3 ||
        t.tfd < 0 || t.tfd > kMaxTfd)
      return Err(EINVAL) << "fdinfo: bad epoll line 'tfd: " << it->second << "'";
    t.data = data;
    out.push_back(t);
  }
  return out;
}

// The fd of task d.NumbersOf() that holds the file registered in epoll d.fd (of d.pid)
// as the toff-th under tfd: tfd itself when it still does, else another. -1 when none
// does.
int HolderFd(const FdDesc& d, int tfd, uint32_t toff, const std::vector<int>& fds) {
  kcmp_epoll_slot slot{uint32_t(d.fd), uint32_t(tfd), toff};
  auto holds = [&](int fd) {
    return syscall(SYS_kcmp, d.NumbersOf(), d.pid, KCMP_EPOLL_TFD, fd, &slot) == 0;
  };
  if (holds(tfd)) return tfd;
  for (int fd : fds)
    if (fd != tfd && (fd != d.fd || d.NumbersOf() != d.pid) && holds(fd)) return fd;
  return -1;
}

// Every registration with the fd that holds its file.
Result<std::vector<std::pair<TfdLine, int>>> Targets(const FdDesc& d) {
  auto tfds = KLEAP_TRY(ParseTfds(d.info));
  auto fds = KLEAP_TRY(ListFds(d.NumbersOf()));
  std::map<int, uint32_t> toff;  // fdinfo lists a number's files in the kernel's order
  std::vector<std::pair<TfdLine, int>> out;
  for (auto& t : tfds) {
    int holder = HolderFd(d, t.tfd, toff[t.tfd]++, fds);
    if (holder < 0)
      return Err(ENOTSUP) << "it watches a file registered as fd " << t.tfd
                          << ", which the task holds under no fd any more";
    out.push_back({t, holder});
  }
  return out;
}

}  // namespace

std::string RefuseEpoll(const FdDesc& d) {
  auto t = Targets(d);
  return t ? "" : t.error().ToString();
}

Result<void> DumpEpoll(DumpContext&, const FdDesc& d, img::FileObject* fo) {
  img::Epoll* e = fo->mutable_epoll();
  e->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  for (auto& [t, holder] : KLEAP_TRY(Targets(d))) {
    img::EpollTarget* et = e->add_targets();
    et->set_tfd(t.tfd);
    et->set_events(t.events);
    et->set_data(t.data);
    et->set_held_fd(holder);
  }
  return Ok();
}

// The file ids of the targets, once every fd of the task has one.
Result<void> ResolveEpoll(img::FileObject* fo, const img::FdTable& table) {
  for (auto& t : *fo->mutable_epoll()->mutable_targets()) {
    auto e = std::find_if(table.fds().begin(), table.fds().end(),
                          [&](auto& e) { return e.fd() == t.held_fd(); });
    if (e == table.fds().end())
      return Err(ENOENT) << "epoll watches fd " << t.tfd() << ", held as fd " << t.held_fd()
                         << ", which is not open";
    t.set_file_id(e->file_id());
  }
  return Ok();
}

Result<void> ValidateEpoll(const img::FileObject& fo) {
  std::set<std::pair<int, uint64_t>> keys;  // the kernel's: one registration each
  for (auto& t : fo.epoll().targets()) {
    if (t.tfd() < 0 || t.tfd() > kMaxTfd)
      return Err(EINVAL) << "files.img: epoll " << fo.id() << ": bad target fd " << t.tfd();
    if (!keys.insert({t.tfd(), t.file_id()}).second)
      return Err(EINVAL) << "files.img: epoll " << fo.id() << ": file " << t.file_id()
                         << " registered twice as fd " << t.tfd();
  }
  return ValidateAnonFlags(fo, "epoll", fo.epoll().flags(), O_RDWR);
}

Result<UniqueFd> OpenEpoll(const img::FileObject& fo, ImageReader&, OpenFiles&) {
  UniqueFd fd(epoll_create1(EPOLL_CLOEXEC));
  if (!fd) return ErrnoError() << "epoll " << fo.id() << ": create";
  if ((fo.epoll().flags() & O_NONBLOCK) && fcntl(fd.get(), F_SETFL, O_NONBLOCK) < 0)
    return ErrnoError() << "epoll " << fo.id() << ": set O_NONBLOCK";
  return fd;
}

Result<void> RegisterEpollTargets(const img::FileTable& files, const OpenFiles& open) {
  struct Op {
    size_t ep, target;  // indexes in fds
    int tfd;
    epoll_event ev;
    uint64_t ep_id, target_id;
  };
  std::vector<int> fds;  // controller fds involved
  std::vector<Op> ops;
  int top = 0;
  auto index = [&](uint64_t id) -> Result<size_t> {
    auto it = open.by_id.find(id);
    if (it == open.by_id.end()) return Err(EINVAL) << "files.img: epoll target file " << id;
    fds.push_back(it->second.get());
    return fds.size() - 1;
  };
  for (auto& fo : files.files()) {
    if (!fo.has_epoll()) continue;
    for (auto& t : fo.epoll().targets()) {
      Op op{};
      op.ep = KLEAP_TRY(index(fo.id()));
      op.target = KLEAP_TRY_CTX(index(t.file_id()), "epoll " << fo.id());
      op.tfd = t.tfd();
      op.ev.events = t.events();
      op.ev.data.u64 = t.data();
      op.ep_id = fo.id();
      op.target_id = t.file_id();
      top = std::max(top, t.tfd() + 1);
      ops.push_back(op);
    }
  }
  if (ops.empty()) return Ok();
  return RunInChild("register the epoll targets", [&]() -> Result<void> {
    // A table of our own: move every fd involved above the target numbers first.
    for (int& fd : fds) fd = fcntl(fd, F_DUPFD_CLOEXEC, top);
    for (auto& op : ops) {
      const char* what = nullptr;
      if (fds[op.ep] < 0 || fds[op.target] < 0)
        what = "move";
      else if (dup2(fds[op.target], op.tfd) < 0)
        what = "place";
      else if (epoll_ctl(fds[op.ep], EPOLL_CTL_ADD, op.tfd, &op.ev) < 0)
        what = "register";
      if (what)
        return ErrnoError() << "epoll " << op.ep_id << ": " << what << " file " << op.target_id
                            << " as fd " << op.tfd;
      close(op.tfd);
    }
    return Ok();
  });
}

}  // namespace kleap
