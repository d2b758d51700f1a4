// Pipes and FIFOs: the data buffered in them, their size, and ends shared between tasks.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "engine/base/log.h"
#include "engine/base/page.h"
#include "engine/files.h"

namespace kleap {
namespace {

// Copies what is buffered in a pipe without consuming it: tee() into a pipe of our own.
Result<void> DumpPipeData(DumpContext& ctx, pid_t pid, int fd, uint64_t pipe_id, bool fifo,
                          const std::string& fifo_path, const struct stat& st, bool deleted) {
  for (auto& p : ctx.files.pipes())
    if (p.id() == pipe_id) return Ok();
  // A fresh read end on the same pipe; O_NONBLOCK so that a FIFO open never waits.
  std::string path = ProcPath(pid, "fd/" + std::to_string(fd));
  UniqueFd rd(open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!rd)
    return ErrnoError() << "open a read end of "
                        << (fifo ? fifo_path : "pipe " + std::to_string(pipe_id));
  int size = fcntl(rd.get(), F_GETPIPE_SZ);
  if (size < 0) return ErrnoError() << "get the size of pipe " << pipe_id;
  int tmp[2];
  if (pipe2(tmp, O_CLOEXEC | O_NONBLOCK) < 0) return ErrnoError() << "pipe";
  UniqueFd tr(tmp[0]), tw(tmp[1]);
  if (fcntl(tw.get(), F_SETPIPE_SZ, size) < 0)
    return ErrnoError() << "size a copy pipe to " << size;
  std::string data;
  ssize_t n = tee(rd.get(), tw.get(), size_t(size), SPLICE_F_NONBLOCK);
  if (n < 0 && errno != EAGAIN) return ErrnoError() << "copy the data of pipe " << pipe_id;
  if (n > 0) {
    data.resize(size_t(n));
    if (read(tr.get(), data.data(), size_t(n)) != n)
      return ErrnoError() << "read the copy of pipe " << pipe_id;
  }
  img::Pipe* p = ctx.files.add_pipes();
  p->set_id(pipe_id);
  p->set_size(uint32_t(size));
  p->set_data(data);
  p->set_fifo(fifo);
  if (fifo) p->set_fifo_path(fifo_path);
  if (deleted) {
    p->set_fifo_deleted(true);
    p->set_mode(st.st_mode & 07777);
    p->set_uid(st.st_uid);
    p->set_gid(st.st_gid);
  }
  return Ok();
}

}  // namespace

Result<void> OpenPipes(const RestorePlan& plan, OpenFiles* out) {
  for (auto& p : plan.files.pipes()) {
    if (p.data().size() > p.size())
      return Err(EINVAL) << "files.img: pipe " << p.id() << " holds " << p.data().size()
                         << " bytes but its size is " << p.size();
    UniqueFd rd, wr;
    if (p.fifo()) {
      // An unlinked one is made again, at its path when that is free, and unlinked once
      // open: its fds' links read "PATH (deleted)" again.
      std::string path = p.fifo_path();
      if (p.fifo_deleted()) {
        for (int i = 0; mknod(path.c_str(), S_IFIFO | 0600, 0) < 0; ++i) {
          if (errno != EEXIST || i > 100) return ErrnoError() << "make FIFO " << path;
          path = p.fifo_path() + ".kleap-" + std::to_string(getpid()) + "-" + std::to_string(i);
        }
      }
      // O_RDWR holds both ends open, so neither side's open blocks.
      UniqueFd both(open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
      int err = errno;
      if (p.fifo_deleted()) {
        if (both &&
            (fchown(both.get(), p.uid(), p.gid()) < 0 || fchmod(both.get(), p.mode() & 07777) < 0))
          err = errno, both.reset();
        unlink(path.c_str());
      }
      errno = err;
      if (!both) return ErrnoError() << "open FIFO " << p.fifo_path();
      struct stat st;
      if (fstat(both.get(), &st) < 0 || !S_ISFIFO(st.st_mode))
        return Err(ESTALE) << p.fifo_path() << " is no longer a FIFO";
      std::string self = "/proc/self/fd/" + std::to_string(both.get());
      rd.reset(open(self.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
      wr.reset(open(self.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
      if (!rd || !wr) return ErrnoError() << "open the ends of FIFO " << p.fifo_path();
    } else {
      int fds[2];
      if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return ErrnoError() << "pipe";
      rd.reset(fds[0]);
      wr.reset(fds[1]);
    }
    if (fcntl(wr.get(), F_SETPIPE_SZ, int(p.size())) < 0)
      return ErrnoError() << "resize pipe " << p.id() << " to " << p.size();
    if (!p.data().empty() &&
        write(wr.get(), p.data().data(), p.data().size()) != ssize_t(p.data().size()))
      return ErrnoError() << "refill pipe " << p.id() << " with " << p.data().size() << " bytes";
    out->pipes[p.id()] = std::move(rd);
    out->pipe_writes[p.id()] = std::move(wr);
  }
  return Ok();
}

Result<void> DumpPipeEnd(DumpContext& ctx, const FdDesc& d, img::FileObject* fo) {
  bool fifo = d.type == FdType::kFifo;
  img::PipeEnd* pe = fo->mutable_pipe();
  uint64_t pipe_id = ctx.PipeId(d.st.st_dev, d.st.st_ino);
  pe->set_pipe_id(pipe_id);
  pe->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  pe->set_fifo(fifo);
  std::string path = d.deleted ? d.link.substr(0, d.link.size() - strlen(" (deleted)")) : d.link;
  if (fifo) pe->set_fifo_path(path);
  return DumpPipeData(ctx, d.pid, d.fd, pipe_id, fifo, path, d.st, d.deleted);
}

Result<void> ValidatePipeEnd(const img::FileObject& fo) {
  const img::PipeEnd& end = fo.pipe();
  uint32_t mode = end.flags() & O_ACCMODE;
  // A FIFO may be open for both; a pipe's end is one or the other.
  if ((mode != O_RDONLY && mode != O_WRONLY && !(end.fifo() && mode == O_RDWR)) ||
      (end.flags() & ~uint32_t(O_ACCMODE | O_NONBLOCK | O_DIRECT | kKernelOLargefile)))
    return Err(EINVAL) << "files.img: pipe end " << fo.id() << ": bad flags " << Oct(end.flags());
  if (end.fifo() && (end.fifo_path().empty() || end.fifo_path()[0] != '/'))
    return Err(EINVAL) << "files.img: FIFO end " << fo.id() << ": path is not absolute";
  return Ok();
}

Result<UniqueFd> OpenPipeEnd(const img::FileObject& fo, ImageReader&, OpenFiles& files) {
  const img::PipeEnd& end = fo.pipe();
  bool write_end = (end.flags() & O_ACCMODE) == O_WRONLY;
  auto& holders = write_end ? files.pipe_writes : files.pipes;
  auto it = holders.find(end.pipe_id());
  if (it == holders.end())
    return Err(EINVAL) << "files.img: file " << fo.id() << ": pipe end of unknown pipe "
                       << end.pipe_id();
  UniqueFd fd;
  if (!end.fifo() && files.pipe_ends_used.insert({end.pipe_id(), write_end}).second) {
    // The first description of each direction is the end pipe2() made: it has exactly
    // the flags of an end made by pipe() (a reopen would add O_LARGEFILE).
    fd.reset(fcntl(it->second.get(), F_DUPFD_CLOEXEC, 0));
  } else {
    // Further descriptions, and FIFO ends, are opened anew through /proc.
    std::string self = "/proc/self/fd/" + std::to_string(it->second.get());
    // A FIFO opened O_RDWR stays O_RDWR.
    int mode = (end.flags() & O_ACCMODE) == O_RDWR ? O_RDWR : write_end ? O_WRONLY : O_RDONLY;
    fd = OpenLikeTask(self, mode | O_NONBLOCK | O_CLOEXEC | (int(end.flags()) & kKernelOLargefile),
                      0);
  }
  if (!fd) return ErrnoError() << "file " << fo.id() << ": reopen pipe " << end.pipe_id();
  int fl = int(end.flags()) & (O_NONBLOCK | O_APPEND | O_ASYNC | O_DIRECT | O_NOATIME);
  if (fcntl(fd.get(), F_SETFL, fl) < 0)
    return ErrnoError() << "set flags of pipe " << end.pipe_id();
  return fd;
}

}  // namespace kleap
