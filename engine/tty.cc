// Terminals: Unix98 pty pairs and controlling terminals.
//
// A pair whose master is in the set is made again: masters are allocated from the
// multiplexer until the kernel hands out the old index (the others are closed), then
// the slave's termios, window size, exclusive mode, the master's packet mode and the
// lock are set and the bytes buffered in either direction are written back. A slave
// whose master is outside the set (held by a driver across the dump) is reopened by
// path and must be the same device; the pair lives on outside, with its state.
//
// Buffered bytes can only be read by consuming them, so dump reads them with the tree
// frozen and writes them straight back, the same way restore does: input through the
// master with the slave's echo and input processing off (its canonical mode kept, so
// complete lines stay lines), output through the slave with OPOST off.
#include "engine/tty.h"

#include "engine/base/page.h"

#include <asm/termbits.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <set>

namespace kleap {

namespace {

constexpr unsigned kPtySlaveMajor = 136;  // UNIX98_PTY_SLAVE_MAJOR
constexpr unsigned kPtyMaxIndex = 1u << 20;
constexpr size_t kMaxBuffered = 1u << 20;
constexpr size_t kNccs = sizeof(termios2{}.c_cc);
// Where a pair's master is held during the open phase, in OpenFiles::by_id (file ids
// from dump are small counters).
constexpr uint64_t kPairKey = 1ull << 63;

bool IsPtmx(dev_t r) {
  return major(r) == 5 && minor(r) == 2;
}
bool IsDevTty(dev_t r) {
  return major(r) == 5 && minor(r) == 0;
}
// A terminal that lives outside any set, on the machine: the system console, a serial
// line or a virtual console. Its path, or "" for other devices.
std::string LineTerminalPath(dev_t r) {
  if (major(r) == 5 && minor(r) == 1) return "/dev/console";
  if (major(r) == 4 && minor(r) >= 1 && minor(r) < 64) return "/dev/tty" + std::to_string(minor(r));
  if (major(r) == 4 && minor(r) >= 64 && minor(r) < 256)
    return "/dev/ttyS" + std::to_string(minor(r) - 64);
  return "";
}

bool IsPtySlave(dev_t r) {
  return major(r) == kPtySlaveMajor;
}
std::string SlavePath(unsigned index) {
  return "/dev/pts/" + std::to_string(index);
}

// new_encode_dev(), as /proc/PID/stat's tty_nr and TIOCGDEV give it.
dev_t DecodeDev(unsigned u) {
  return makedev((u >> 8) & 0xfff, (u & 0xff) | ((u >> 12) & 0xfff00));
}

// The terminal behind an fd of /dev/tty (TIOCGDEV), when it is a pty of /dev/pts.
Result<dev_t> DevTtySlave(pid_t pid, int fd) {
  UniqueFd copy = KLEAP_TRY(GrabFd(pid, fd));
  unsigned dev = 0;
  if (ioctl(copy.get(), TIOCGDEV, &dev) < 0) return ErrnoError() << "TIOCGDEV";
  dev_t r = DecodeDev(dev);
  struct stat st;
  if (major(r) != kPtySlaveMajor || stat(SlavePath(minor(r)).c_str(), &st) < 0 || st.st_rdev != r)
    return Err(ENOTSUP) << "/dev/tty stands for char " << major(r) << ":" << minor(r)
                        << ", which is not a pty of /dev/pts";
  return r;
}

// Opens /dev/tty for a controlling terminal that is the slave `rdev`: a helper that
// shares the controller's fd table takes the slave as its controlling terminal in a
// session of its own and opens /dev/tty onto a number reserved for it. Its session
// ends with it, which frees the terminal for the restored session leader.
Result<UniqueFd> OpenDevTty(dev_t rdev, int flags) {
  UniqueFd slot(open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!slot) return ErrnoError() << "open /dev/null";
  std::string slave = SlavePath(minor(rdev));
  long pid = syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, nullptr, nullptr, 0);
  if (pid < 0) return ErrnoError() << "clone a helper for /dev/tty";
  if (pid == 0) {
    int err = 0;
    int s = setsid() < 0 ? -1 : open(slave.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0 || ioctl(s, TIOCSCTTY, 0) < 0) err = errno;
    UniqueFd d;
    if (!err) d = OpenLikeTask("/dev/tty", flags | O_NOCTTY | O_CLOEXEC, 0);
    if (!err && (!d || dup3(d.get(), slot.get(), O_CLOEXEC) < 0)) err = errno;
    d.reset();  // the fd table is the parent's (CLONE_FILES), and _exit runs no destructor
    if (s >= 0) close(s);
    _exit(err);
  }
  int st = 0;
  while (waitpid(pid_t(pid), &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    errno = WIFEXITED(st) ? WEXITSTATUS(st) : EIO;
    return ErrnoError() << "open /dev/tty with " << slave << " as the controlling terminal";
  }
  unsigned dev = 0;
  struct stat ds;
  if (fstat(slot.get(), &ds) < 0 || !IsDevTty(ds.st_rdev) ||
      ioctl(slot.get(), TIOCGDEV, &dev) < 0 || DecodeDev(dev) != rdev)
    return Err(EIO) << "/dev/tty did not open as " << slave;
  return slot;
}

// The open flags a tty file keeps (O_LARGEFILE: an ia32 task's files may lack it).
constexpr uint32_t kKeptFlags = O_ACCMODE | O_NONBLOCK | O_APPEND | kKernelOLargefile;
int MasterFlags(const img::PtyPair& p) {
  return int(p.master_flags() & kKeptFlags);
}

// A restoring guard: runs f at scope exit.
template <class F>
struct Defer {
  F f;
  ~Defer() { f(); }
};
template <class F>
Defer(F) -> Defer<F>;

void ToImage(const termios2& t, img::Termios* o) {
  o->set_iflag(t.c_iflag);
  o->set_oflag(t.c_oflag);
  o->set_cflag(t.c_cflag);
  o->set_lflag(t.c_lflag);
  o->set_line(t.c_line);
  o->set_cc(std::string(reinterpret_cast<const char*>(t.c_cc), kNccs));
  o->set_ispeed(t.c_ispeed);
  o->set_ospeed(t.c_ospeed);
}

termios2 FromImage(const img::Termios& o) {
  termios2 t{};
  t.c_iflag = o.iflag();
  t.c_oflag = o.oflag();
  t.c_cflag = o.cflag();
  t.c_lflag = o.lflag();
  t.c_line = cc_t(o.line());
  memcpy(t.c_cc, o.cc().data(), std::min(o.cc().size(), kNccs));
  t.c_ispeed = o.ispeed();
  t.c_ospeed = o.ospeed();
  return t;
}

Result<std::string> ReadAvailable(int fd, const char* what) {
  std::string out;
  char buf[4096];
  for (;;) {
    // poll (like a read that finds nothing) first runs the tty's pending buffer work.
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 0) < 0) return ErrnoError() << "poll the " << what;
    if (!(p.revents & POLLIN)) break;
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EIO)) break;
    if (n < 0) return ErrnoError() << "read the " << what;
    if (n == 0) break;
    out.append(buf, size_t(n));
    if (out.size() > kMaxBuffered)
      return Err(ENOTSUP) << "more than " << kMaxBuffered << " bytes buffered for the " << what;
  }
  return out;
}

Result<void> WriteAll(int fd, const std::string& data, const char* what) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      if (poll(&p, 1, 1000) <= 0) return Err(ETIMEDOUT) << "the " << what << " takes no more";
      continue;
    }
    if (n < 0) return ErrnoError() << "write the " << what;
    off += size_t(n);
  }
  return Ok();
}

Result<void> WaitQueued(int fd, size_t want, const char* what) {
  int have = 0;
  for (int i = 0; i < 2000; ++i) {
    if (ioctl(fd, FIONREAD, &have) < 0) return ErrnoError() << "FIONREAD on the " << what;
    if (size_t(have) >= want) return Ok();
    usleep(1000);
  }
  return Err(ETIMEDOUT) << "the " << what << " holds " << have << " bytes, not " << want;
}

// The bytes of input a canonical reader sees as complete lines.
size_t CompleteLines(const std::string& data, const termios2& t) {
  if (!(t.c_lflag & ICANON)) return data.size();
  size_t end = 0;
  for (size_t i = 0; i < data.size(); ++i) {
    cc_t c = cc_t(data[i]);
    if (c == '\n' || (c && c == t.c_cc[VEOL]) || (c && (t.c_lflag & IEXTEN) && c == t.c_cc[VEOL2]))
      end = i + 1;
  }
  return end;
}

// Writes buffered bytes back into a pair, then sets its termios to `final`.
Result<void> Refill(int master, int slave, const termios2& final, const std::string& to_slave,
                    const std::string& to_master) {
  termios2 replay = final;
  replay.c_lflag &=
      ~tcflag_t(ECHO | ECHOE | ECHOK | ECHONL | ECHOCTL | ECHOPRT | ECHOKE | ISIG | IEXTEN);
  replay.c_iflag &= ~tcflag_t(IXON | IXOFF | IXANY | ICRNL | INLCR | IGNCR | IUCLC | ISTRIP |
                              BRKINT | INPCK | PARMRK | IMAXBEL);
  replay.c_oflag &= ~tcflag_t(OPOST);
  for (int c : {VINTR, VQUIT, VERASE, VKILL, VEOF, VSTART, VSTOP, VSUSP, VREPRINT, VDISCARD,
                VWERASE, VLNEXT})
    replay.c_cc[c] = 0;  // _POSIX_VDISABLE
  if (!to_slave.empty() || !to_master.empty()) {
    if (ioctl(slave, TCSETS2, &replay) < 0) return ErrnoError() << "set the replay termios";
    KLEAP_TRY(WriteAll(master, to_slave, "slave's input"));
    KLEAP_TRY(WaitQueued(slave, CompleteLines(to_slave, final), "slave's input"));
    KLEAP_TRY(WriteAll(slave, to_master, "master's input"));
    KLEAP_TRY(WaitQueued(master, to_master.size(), "master's input"));
  }
  // ICANON and EXTPROC are as in the replay termios, so the line structure stays.
  if (ioctl(slave, TCSETS2, &final) < 0) return ErrnoError() << "set termios";
  return Ok();
}

// Reads the state of the pair whose master is `m`; the tree is frozen.
Result<void> DumpPair(int m, img::Tty* t, img::PtyPair* p) {
  unsigned index = 0;
  int locked = 0, packet = 0, excl = 0, ldisc = 0;
  termios2 tio{};
  winsize ws{};
  if (ioctl(m, TIOCGPTN, &index) < 0) return ErrnoError() << "TIOCGPTN";
  if (ioctl(m, TIOCGPTLCK, &locked) < 0) return ErrnoError() << "TIOCGPTLCK";
  if (ioctl(m, TIOCGPKT, &packet) < 0) return ErrnoError() << "TIOCGPKT";
  if (ioctl(m, TCGETS2, &tio) < 0) return ErrnoError() << "TCGETS2";
  if (ioctl(m, TIOCGWINSZ, &ws) < 0) return ErrnoError() << "TIOCGWINSZ";
  int unlock = 0, lock = 1;
  if (locked && ioctl(m, TIOCSPTLCK, &unlock) < 0) return ErrnoError() << "unlock pty " << index;
  Defer relock{[&] {
    if (locked) ioctl(m, TIOCSPTLCK, &lock);
  }};
  UniqueFd peer(ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
  if (!peer) return ErrnoError() << "open the slave of pty " << index;
  struct stat st;
  if (fstat(peer.get(), &st) < 0) return ErrnoError() << "stat pty " << index;
  if (ioctl(peer.get(), TIOCGEXCL, &excl) < 0) return ErrnoError() << "TIOCGEXCL";
  if (ioctl(peer.get(), TIOCGETD, &ldisc) < 0) return ErrnoError() << "TIOCGETD";
  if (ldisc != 0)
    return Err(ENOTSUP) << "pty " << index << " has line discipline " << ldisc
                        << "; only N_TTY is carried";
  t->set_dev(st.st_dev);
  t->set_rdev(st.st_rdev);
  p->set_index(index);
  ToImage(tio, p->mutable_termios());
  p->set_rows(ws.ws_row);
  p->set_cols(ws.ws_col);
  p->set_xpixel(ws.ws_xpixel);
  p->set_ypixel(ws.ws_ypixel);
  p->set_packet(packet);
  p->set_locked(locked);
  p->set_exclusive(excl);
  p->set_master_flags(uint32_t(fcntl(m, F_GETFL)) & ~uint32_t(O_CLOEXEC));
  p->set_slave_uid(st.st_uid);
  p->set_slave_gid(st.st_gid);
  p->set_slave_mode(st.st_mode & 07777);

  // The buffered bytes: read in packet mode off (no status bytes) and with the slave
  // non-canonical (a partial line is read too), then written back at once.
  int off = 0, on = 1;
  if (packet && ioctl(m, TIOCPKT, &off) < 0) return ErrnoError() << "TIOCPKT";
  Defer repacket{[&] {
    if (packet) ioctl(m, TIOCPKT, &on);
  }};
  termios2 raw = tio;
  raw.c_lflag &= ~tcflag_t(ICANON);
  raw.c_cc[VMIN] = 0;
  raw.c_cc[VTIME] = 0;
  if (ioctl(peer.get(), TCSETS2, &raw) < 0) return ErrnoError() << "set termios of pty " << index;
  auto to_slave = ReadAvailable(peer.get(), "slave's input");
  auto to_master = to_slave ? ReadAvailable(m, "master's input") : Result<std::string>("");
  KLEAP_TRY_CTX(Refill(m, peer.get(), tio, to_slave ? *to_slave : "", to_master ? *to_master : ""),
                "put back what pty " << index << " holds");
  if (!to_slave) return to_slave.error();
  if (!to_master) return to_master.error();
  p->set_to_slave(*to_slave);
  p->set_to_master(*to_master);
  return Ok();
}

// A master in the tree with the given index: its fd (a copy) and its path.
struct FoundMaster {
  UniqueFd fd;
  std::string path;
};
Result<FoundMaster> FindMaster(DumpContext& ctx, unsigned index) {
  for (auto& task : ctx.tree->tasks()) {
    if (task.zombie) continue;
    auto fds = ListFds(task.pid);
    if (!fds) continue;
    for (int fd : *fds) {
      std::string path = ProcPath(task.pid, "fd/" + std::to_string(fd));
      struct stat st;
      if (stat(path.c_str(), &st) < 0 || !S_ISCHR(st.st_mode) || !IsPtmx(st.st_rdev)) continue;
      UniqueFd m = KLEAP_TRY(GrabFd(task.pid, fd));
      unsigned n = 0;
      if (ioctl(m.get(), TIOCGPTN, &n) == 0 && n == index)
        return FoundMaster{std::move(m), KLEAP_TRY(ReadLink(path))};
    }
  }
  return FoundMaster{};
}

// The pair's master in the controller: made by the first object of the pair opened.
Result<int> PairMaster(const img::Tty& t, OpenFiles& files) {
  const img::PtyPair& p = t.pair();
  uint64_t key = kPairKey | p.index();
  if (auto it = files.by_id.find(key); it != files.by_id.end()) return it->second.get();
  // The kernel hands out the lowest free index: open until it is ours. A pty whose last
  // file was closed a moment ago gives its index back a little later (the tty is
  // released from a work queue), so a taken index is asked for again for a while.
  UniqueFd m;
  for (int round = 0; !m && round < 50; ++round) {
    std::vector<UniqueFd> others;
    bool taken = false;
    for (unsigned tries = 0; tries <= p.index() && !m && !taken; ++tries) {
      UniqueFd fd = OpenLikeTask(p.ptmx_path(), MasterFlags(p) | O_NOCTTY | O_CLOEXEC, 0);
      if (!fd) return ErrnoError() << "open " << p.ptmx_path();
      unsigned n = 0;
      if (ioctl(fd.get(), TIOCGPTN, &n) < 0) return ErrnoError() << "TIOCGPTN";
      if (n == p.index())
        m = std::move(fd);
      else if (n > p.index())
        taken = true;
      else
        others.push_back(std::move(fd));
    }
    if (!m) usleep(20000);
  }
  if (!m)
    return Err(EEXIST) << SlavePath(p.index()) << " is taken; the pty of index " << p.index()
                       << " can't be made again";
  int unlock = 0;
  if (ioctl(m.get(), TIOCSPTLCK, &unlock) < 0) return ErrnoError() << "unlock pty " << p.index();
  UniqueFd peer(ioctl(m.get(), TIOCGPTPEER, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
  if (!peer) return ErrnoError() << "open the slave of pty " << p.index();
  struct stat st;
  if (fstat(peer.get(), &st) < 0) return ErrnoError() << "stat pty " << p.index();
  if (st.st_rdev != t.rdev() || st.st_dev != t.dev())
    return Err(ESTALE) << p.ptmx_path() << " made " << SlavePath(p.index())
                       << " on another devpts instance than at the dump";
  winsize ws{uint16_t(p.rows()), uint16_t(p.cols()), uint16_t(p.xpixel()), uint16_t(p.ypixel())};
  if (ioctl(m.get(), TIOCSWINSZ, &ws) < 0) return ErrnoError() << "TIOCSWINSZ";
  KLEAP_TRY_CTX(Refill(m.get(), peer.get(), FromImage(p.termios()), p.to_slave(), p.to_master()),
                "pty " << p.index());
  int on = 1;
  if (p.exclusive() && ioctl(peer.get(), TIOCEXCL) < 0) return ErrnoError() << "TIOCEXCL";
  if (p.packet() && ioctl(m.get(), TIOCPKT, &on) < 0) return ErrnoError() << "TIOCPKT";
  int fd = m.get();
  files.by_id[key] = std::move(m);
  return fd;
}

std::string DeviceName(dev_t r) {
  return "char " + std::to_string(major(r)) + ":" + std::to_string(minor(r));
}

}  // namespace

bool IsTerminal(dev_t r) {
  unsigned ma = major(r);
  return (ma == 5 && minor(r) <= 2) || ma == 4 || ma == 2 || ma == 3 ||
         (ma >= kPtySlaveMajor && ma < kPtySlaveMajor + 8) || ma == 188 || ma == 204;
}

std::string ClassifyTty(FdDesc* d) {
  dev_t r = d->st.st_rdev;
  d->what = d->link + " (" + DeviceName(r) + ")";
  if (IsPtmx(r)) {
    if (d->link != "/dev/ptmx" && d->link != "/dev/pts/ptmx")
      return "a pty of another devpts instance than /dev/pts";
    d->type = FdType::kTty;
    d->what = d->link;
    return "";
  }
  if (IsPtySlave(r)) {
    if (d->link != SlavePath(minor(r))) return "a pty of another devpts instance than /dev/pts";
    d->type = FdType::kTty;
    d->what = d->link;
    return "";
  }
  if (IsDevTty(r)) {
    auto slave = DevTtySlave(d->pid, d->fd);
    if (!slave) return slave.error().ToString();
    d->type = FdType::kTty;
    d->what = d->link + " (" + SlavePath(minor(*slave)) + ")";
    return "";
  }
  // The console, a serial line or a VT is the machine's: it is opened again by its path.
  if (std::string p = LineTerminalPath(r); !p.empty()) {
    if (d->link != p) return "a terminal device opened at " + d->link + ", not at " + p;
    d->type = FdType::kTty;
    d->what = d->link;
    return "";
  }
  return "only Unix98 ptys, the console, serial lines and virtual consoles are carried among "
         "terminals";
}

Result<void> DumpTty(DumpContext& ctx, const FdDesc& d, img::FileObject* fo) {
  img::Tty* t = fo->mutable_tty();
  t->set_flags(d.info.flags & ~uint32_t(O_CLOEXEC));
  t->set_path(d.link);
  if (IsPtmx(d.st.st_rdev)) {
    t->set_master(true);
    UniqueFd m = KLEAP_TRY(GrabFd(d.pid, d.fd));
    t->mutable_pair()->set_ptmx_path(d.link);
    return DumpPair(m.get(), t, t->mutable_pair());
  }
  dev_t rdev = d.st.st_rdev;
  t->set_dev(d.st.st_dev);
  if (!LineTerminalPath(rdev).empty()) {
    t->set_rdev(rdev);
    t->set_line(true);
    return Ok();
  }
  if (IsDevTty(rdev)) {
    rdev = KLEAP_TRY(DevTtySlave(d.pid, d.fd));
    struct stat st;
    if (stat(SlavePath(minor(rdev)).c_str(), &st) < 0) return ErrnoError() << "stat the pty";
    t->set_dev(st.st_dev);
    t->set_dev_tty(true);
  }
  t->set_rdev(rdev);
  FoundMaster m = KLEAP_TRY(FindMaster(ctx, minor(rdev)));
  if (!m.fd) return Ok();  // the master is outside: the slave is reopened by path
  t->mutable_pair()->set_ptmx_path(m.path);
  return DumpPair(m.fd.get(), t, t->mutable_pair());
}

Result<void> ValidateTty(const img::FileObject& fo) {
  const img::Tty& t = fo.tty();
  auto bad = [&](const char* what) {
    return Err(EINVAL) << "files.img: tty " << fo.id() << ": " << what;
  };
  uint32_t allowed = O_ACCMODE | O_NONBLOCK | O_APPEND | O_NOCTTY | kKernelOLargefile;
  for (uint32_t f : {t.flags(), t.pair().master_flags()})
    if ((f & ~allowed) || (f & O_ACCMODE) == O_ACCMODE) return bad("bad flags");
  if (t.line())
    return t.master() || t.dev_tty() || t.has_pair() ||
                   t.path() != LineTerminalPath(dev_t(t.rdev())) || t.path().empty()
               ? bad("bad terminal line")
               : Ok();
  if (!IsPtySlave(dev_t(t.rdev())) || minor(dev_t(t.rdev())) >= kPtyMaxIndex)
    return bad("not a pty slave device");
  unsigned index = minor(dev_t(t.rdev()));
  if (t.dev_tty() ? t.master() || t.path() != "/dev/tty"
                  : !t.master() && t.path() != SlavePath(index))
    return bad("bad slave path");
  if (!t.has_pair()) return t.master() ? bad("a master without its pair") : Ok();
  const img::PtyPair& p = t.pair();
  if (p.index() != index) return bad("the pair's index is not the device's");
  if (p.ptmx_path() != "/dev/ptmx" && p.ptmx_path() != "/dev/pts/ptmx") return bad("bad ptmx path");
  if (t.master() && t.path() != p.ptmx_path()) return bad("bad master path");
  if (p.termios().cc().size() != kNccs) return bad("bad termios");
  if (p.rows() > 0xffff || p.cols() > 0xffff || p.xpixel() > 0xffff || p.ypixel() > 0xffff)
    return bad("bad window size");
  if (p.to_slave().size() > kMaxBuffered || p.to_master().size() > kMaxBuffered)
    return bad("too much buffered data");
  return Ok();
}

Result<UniqueFd> OpenTty(const img::FileObject& fo, ImageReader&, OpenFiles& files) {
  const img::Tty& t = fo.tty();
  int flags = int(t.flags() & kKeptFlags);
  if (!t.has_pair() && t.dev_tty()) return OpenDevTty(dev_t(t.rdev()), flags);
  if (t.line()) {
    // The machine's own terminal, after a kexec too: /dev is another devtmpfs then, so
    // only the device number must agree. (Its termios is the device's, not the set's.)
    UniqueFd fd = OpenLikeTask(t.path(), flags | O_NOCTTY | O_CLOEXEC, 0);
    if (!fd) return ErrnoError() << "open " << t.path();
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return ErrnoError() << "stat " << t.path();
    if (!S_ISCHR(st.st_mode) || st.st_rdev != t.rdev())
      return Err(ESTALE) << t.path() << " is another device than at the dump ("
                         << DeviceName(st.st_rdev) << ", was " << DeviceName(dev_t(t.rdev()))
                         << ")";
    return fd;
  }
  if (!t.has_pair()) {
    UniqueFd fd = OpenLikeTask(t.path(), flags | O_NOCTTY | O_CLOEXEC, 0);
    if (!fd) return ErrnoError() << "open " << t.path();
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return ErrnoError() << "stat " << t.path();
    if (st.st_rdev != t.rdev() || st.st_dev != t.dev())
      return Err(ESTALE) << t.path() << " is not the terminal it was at the dump (its master "
                         << "was outside the set and must stay open)";
    return fd;
  }
  int m = KLEAP_TRY(PairMaster(t, files));
  if (t.dev_tty()) return OpenDevTty(dev_t(t.rdev()), flags);
  if (t.master()) {
    UniqueFd fd(fcntl(m, F_DUPFD_CLOEXEC, 0));
    if (!fd || fcntl(fd.get(), F_SETFL, flags & (O_NONBLOCK | O_APPEND)) < 0)
      return ErrnoError() << "master of pty " << t.pair().index();
    return fd;
  }
  // The flags go into the file as they are: O_CLOEXEC would show in F_GETFL.
  UniqueFd fd(ioctl(m, TIOCGPTPEER, flags | O_NOCTTY));
  if (!fd || fcntl(fd.get(), F_SETFD, FD_CLOEXEC) < 0) return ErrnoError() << "open " << t.path();
  return fd;
}

Result<void> FinishPtys(const img::FileTable& files, OpenFiles& open) {
  for (auto& fo : files.files()) {
    if (fo.kind_case() != img::FileObject::kTty || !fo.tty().has_pair()) continue;
    const img::PtyPair& p = fo.tty().pair();
    auto m = open.by_id.find(kPairKey | p.index());
    if (m == open.by_id.end()) continue;
    // The slave's owner and mode, through the master's own slave.
    UniqueFd slave(ioctl(m->second.get(), TIOCGPTPEER, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
    if (!slave || fchown(slave.get(), p.slave_uid(), p.slave_gid()) < 0 ||
        fchmod(slave.get(), p.slave_mode() & 07777) < 0)
      return ErrnoError() << "pty " << p.index() << ": set the owner " << p.slave_uid() << ":"
                          << p.slave_gid() << " and mode " << Oct(p.slave_mode())
                          << " of its slave";
  }
  for (auto& fo : files.files()) {
    if (fo.kind_case() != img::FileObject::kTty || !fo.tty().pair().locked()) continue;
    auto it = open.by_id.find(kPairKey | fo.tty().pair().index());
    int lock = 1;
    if (it != open.by_id.end() && ioctl(it->second.get(), TIOCSPTLCK, &lock) < 0)
      return ErrnoError() << "lock pty " << fo.tty().pair().index();
  }
  for (auto it = open.by_id.begin(); it != open.by_id.end();)
    it = it->first & kPairKey ? open.by_id.erase(it) : std::next(it);
  return Ok();
}

// ---- controlling terminals ----

std::vector<Problem> CheckCttys(const std::vector<TaskInfo>& tasks) {
  std::vector<Problem> out;
  std::map<pid_t, ProcStat> stats;
  std::set<pid_t> pgids;
  for (auto& t : tasks) {
    pgids.insert(t.pgid);
    if (t.zombie) continue;
    if (auto st = ReadStat(t.pid)) stats[t.pid] = *st;
  }
  for (auto& [pid, st] : stats) {
    if (st.tty_nr == 0) continue;
    dev_t r = DecodeDev(unsigned(st.tty_nr));
    std::string what = "controlling terminal (" + DeviceName(r) + ")";
    auto leader = stats.find(st.session);
    if (leader != stats.end() && leader->second.tty_nr != st.tty_nr) {
      out.push_back({pid, "task", what, "its controlling terminal is not its session leader's"});
      continue;
    }
    bool line = !LineTerminalPath(r).empty();
    if (!IsPtySlave(r) && !line) {
      out.push_back({pid, "task", what,
                     "only a pty, the console, a serial line or a virtual console can be carried "
                     "as a controlling terminal"});
      continue;
    }
    std::string path = line ? LineTerminalPath(r) : SlavePath(minor(r));
    struct stat ps;
    if (stat(path.c_str(), &ps) < 0 || ps.st_rdev != r)
      out.push_back({pid, "task", what, "the pty is not in /dev/pts"});
    else if (pid == st.session && st.tpgid > 0 && !pgids.count(st.tpgid))
      out.push_back(
          {pid, "task", what,
           "its foreground process group " + std::to_string(st.tpgid) + " is outside the tree"});
  }
  return out;
}

Result<void> DumpCtty(const TaskInfo& task, img::TaskCore* core) {
  ProcStat st = KLEAP_TRY_CTX(ReadStat(task.pid), "task " << task.pid);
  if (st.tty_nr == 0) return Ok();
  dev_t r = DecodeDev(unsigned(st.tty_nr));
  std::string line = LineTerminalPath(r);
  if (!IsPtySlave(r) && line.empty())
    return Err(ENOTSUP) << "task " << task.pid << ": its controlling terminal (" << DeviceName(r)
                        << ") is not a pty or a terminal line";
  img::Ctty* c = core->mutable_ctty();
  c->set_path(line.empty() ? SlavePath(minor(r)) : line);
  c->set_rdev(r);
  if (task.pid == task.sid && st.tpgid > 0) c->set_foreground(st.tpgid);
  return Ok();
}

Result<void> ValidateCtty(pid_t pid, const img::TaskCore& core) {
  if (!core.has_ctty()) return Ok();
  const img::Ctty& c = core.ctty();
  dev_t r = dev_t(c.rdev());
  bool pty = IsPtySlave(r) && minor(r) < kPtyMaxIndex && c.path() == SlavePath(minor(r));
  bool line = !LineTerminalPath(r).empty() && c.path() == LineTerminalPath(r);
  if ((!pty && !line) || c.foreground() < 0)
    return Err(EINVAL) << "core-" << pid << ".img: bad controlling terminal";
  return Ok();
}

Result<UniqueFd> TakeCtty(const img::Ctty& c) {
  UniqueFd fd(open(c.path().c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!fd) return ErrnoError() << "open the controlling terminal " << c.path();
  struct stat st;
  if (fstat(fd.get(), &st) < 0 || st.st_rdev != dev_t(c.rdev()))
    return Err(ESTALE) << c.path() << " is not the controlling terminal of the dump";
  if (ioctl(fd.get(), TIOCSCTTY, 0) < 0)
    return ErrnoError() << "make " << c.path() << " the controlling terminal";
  return fd;
}

Result<void> SetForeground(int fd, pid_t pgrp) {
  if (pgrp <= 0) return Ok();
  // A group whose leader is gone exists once its first member has joined it.
  sigset_t ttou, old;
  sigemptyset(&ttou);
  sigaddset(&ttou, SIGTTOU);
  sigprocmask(SIG_BLOCK, &ttou, &old);
  Defer unblock{[&] { sigprocmask(SIG_SETMASK, &old, nullptr); }};
  for (int i = 0;; ++i) {
    if (ioctl(fd, TIOCSPGRP, &pgrp) == 0) return Ok();
    if ((errno != ESRCH && errno != EPERM) || i == 2000)
      return ErrnoError() << "make process group " << pgrp << " the foreground group";
    usleep(1000);
  }
}

}  // namespace kleap
