// SysV IPC and the IPC namespace (see ipc.h). kleap reads and remakes the objects from
// inside the namespace (setns), so the tasks are only asked what only they hold: their
// undo lists, and at restore their attachments.
#include "engine/ipc.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sched.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <set>

#include "engine/base/log.h"
#include "engine/base/page.h"
#include "engine/remote_mem.h"

namespace kleap {
namespace {

constexpr int kSemVmx = 32767;  // SEMVMX: the largest semaphore value
// While the undo lists are measured every semaphore sits here, so that an adjustment of
// up to 16383 either way is applied whole and not clamped at 0 or SEMVMX.
constexpr int kSemMid = 16384;
constexpr size_t kSemopChunk = 32;  // below every sane kernel.sem SEMOPM
// Syscalls injected into tasks: the 64-bit ones at restore, each task's own at dump.
#ifndef SHM_STAT_ANY
#define SHM_STAT_ANY 15
#endif
#ifndef SEM_STAT_ANY
#define SEM_STAT_ANY 20
#endif
#ifndef MSG_STAT_ANY
#define MSG_STAT_ANY 13
#endif
#ifndef MSG_COPY
#define MSG_COPY 040000
#endif
#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

union SemArg {
  int val;
  struct semid_ds* buf;
  unsigned short* array;
  struct seminfo* info;
};

std::string ShmBlob(int id) {
  return "shmem-sysv" + std::to_string(id) + ".img";
}

Result<struct stat> NsStat(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) < 0) return ErrnoError() << "stat " << path;
  return st;
}
bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

// setns into an IPC namespace for as long as it lives; back to the old one after.
class NsEnter {
 public:
  static Result<NsEnter> Into(const std::string& ns_path) {
    UniqueFd old(open("/proc/self/ns/ipc", O_RDONLY | O_CLOEXEC));
    if (!old) return ErrnoError() << "open /proc/self/ns/ipc";
    UniqueFd target(open(ns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!target) return ErrnoError() << "open " << ns_path;
    if (setns(target.get(), CLONE_NEWIPC) < 0) return ErrnoError() << "enter " << ns_path;
    return NsEnter(std::move(old));
  }
  NsEnter(NsEnter&& o) noexcept = default;
  ~NsEnter() {
    if (old_ && setns(old_.get(), CLONE_NEWIPC) < 0)
      KLOG(kWarning) << "return to kleap's IPC namespace failed: " << strerror(errno);
  }

 private:
  explicit NsEnter(UniqueFd old) : old_(std::move(old)) {}
  UniqueFd old_;
};

Result<std::string> ReadSysctl(const char* name) {
  std::string path = std::string("/proc/sys/kernel/") + name;
  auto s = KLEAP_TRY(ReadFileToString(path));
  return std::string(Trim(s));
}
Result<uint64_t> ReadSysctlNum(const char* name) {
  std::string s = KLEAP_TRY(ReadSysctl(name));
  char* end = nullptr;
  errno = 0;
  uint64_t v = strtoull(s.c_str(), &end, 10);
  if (errno || end == s.c_str()) return Err(EINVAL) << "/proc/sys/kernel/" << name << ": " << s;
  return v;
}
Result<void> WriteSysctl(const char* name, const std::string& value) {
  std::string path = std::string("/proc/sys/kernel/") + name;
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoError() << "open " << path;
  if (write(fd.get(), value.data(), value.size()) != ssize_t(value.size()))
    return ErrnoError() << "write " << value << " to " << path;
  return Ok();
}

img::IpcPerm PermOf(const struct ipc_perm& p) {
  img::IpcPerm out;
  out.set_key(p.__key);
  out.set_uid(p.uid);
  out.set_gid(p.gid);
  out.set_cuid(p.cuid);
  out.set_cgid(p.cgid);
  out.set_mode(p.mode & 0777);
  return out;
}

// A SysV attachment as /proc/PID/maps shows it: one or more VMAs (mprotect splits one)
// over consecutive offsets of the segment whose id is the inode.
struct Attachment {
  int id = 0;
  uint64_t start = 0, end = 0;
  bool whole_from_zero = true;
};
std::vector<Attachment> GroupAttachments(const std::vector<MapsEntry>& maps) {
  std::vector<Attachment> out;
  uint64_t next_off = 0;
  for (auto& m : maps) {
    if (m.path.rfind("/SYSV", 0) != 0) continue;
    if (!out.empty() && out.back().id == int(m.inode) && out.back().end == m.start &&
        m.offset == next_off && m.offset != 0) {
      out.back().end = m.end;
    } else {
      out.push_back({int(m.inode), m.start, m.end, m.offset == 0});
    }
    next_off = m.offset + (m.end - m.start);
  }
  return out;
}

// ---- dump ----

Result<void> DumpShmContent(DumpContext& ctx, img::ShmSegment* seg) {
  void* p = shmat(seg->id(), nullptr, SHM_RDONLY);
  if (p == reinterpret_cast<void*>(-1)) return ErrnoError() << "attach it to read it";
  uint64_t len = RoundPage(seg->size());
  struct Detach {
    void* p;
    ~Detach() { shmdt(p); }
  } detach{p};
  std::string path = MapFilesPath(0, uint64_t(p), uint64_t(p) + len);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError() << "open " << path;
  struct statfs sfs;
  if (fstatfs(fd.get(), &sfs) == 0 && uint64_t(sfs.f_type) == uint64_t(HUGETLBFS_MAGIC))
    return Err(ENOTSUP) << "a huge-page segment (SHM_HUGETLB) is not carried";
  seg->set_blob(ShmBlob(seg->id()));
  auto blob = KLEAP_TRY(ctx.images->CreateBlob(seg->blob()));
  // Only the pages that hold data: holes stay holes (SEEK_DATA counts swapped pages).
  off_t off = 0, size = off_t(seg->size());
  while (off < size) {
    off_t data = lseek(fd.get(), off, SEEK_DATA);
    if (data < 0) break;  // ENXIO: no more data
    off_t hole = lseek(fd.get(), data, SEEK_HOLE);
    if (hole < 0 || hole > off_t(len)) hole = off_t(len);
    data &= ~off_t(kPage - 1);
    hole = off_t(RoundPage(uint64_t(hole)));
    img::PageRun* r = seg->add_runs();
    r->set_vaddr(uint64_t(data));
    r->set_nr_pages(uint64_t(hole - data) / kPage);
    // Through the attachment: the file's read stops at the segment's size, the last
    // page doesn't.
    KLEAP_TRY(blob->Write(static_cast<char*>(p) + data, size_t(hole - data)));
    ctx.page_bytes += uint64_t(hole - data);
    off = hole;
  }
  return blob->Close();
}

Result<void> DumpShms(DumpContext& ctx, img::IpcNamespace* ns,
                      const std::map<int, uint64_t>& held) {
  struct shm_info info {};
  int maxidx = shmctl(0, SHM_INFO, reinterpret_cast<struct shmid_ds*>(&info));
  if (maxidx < 0) return ErrnoError() << "shmctl(SHM_INFO)";
  for (int idx = 0; idx <= maxidx; ++idx) {
    struct shmid_ds ds {};
    int id = shmctl(idx, SHM_STAT_ANY, &ds);
    if (id < 0) continue;  // an empty slot
    img::ShmSegment* seg = ns->add_shms();
    seg->set_id(id);
    *seg->mutable_perm() = PermOf(ds.shm_perm);
    seg->set_size(ds.shm_segsz);
    seg->set_nattch(ds.shm_nattch);
    seg->set_destroyed(ds.shm_perm.mode & SHM_DEST);
    seg->set_locked(ds.shm_perm.mode & SHM_LOCKED);
    auto it = held.find(id);
    uint64_t ours = it == held.end() ? 0 : it->second;
    if (ours != ds.shm_nattch)
      return Err(ENOTSUP) << "SysV shm segment " << id << " is attached " << ds.shm_nattch
                          << " times, the tree's tasks hold " << ours
                          << " of them: a process outside the tree holds it";
    KLEAP_TRY_CTX(DumpShmContent(ctx, seg), "SysV shm segment " << id);
  }
  return Ok();
}

Result<void> DumpMsgs(img::IpcNamespace* ns) {
  struct msginfo info {};
  int maxidx = msgctl(0, MSG_INFO, reinterpret_cast<struct msqid_ds*>(&info));
  if (maxidx < 0) return ErrnoError() << "msgctl(MSG_INFO)";
  for (int idx = 0; idx <= maxidx; ++idx) {
    struct msqid_ds ds {};
    int id = msgctl(idx, MSG_STAT_ANY, &ds);
    if (id < 0) continue;
    img::MsgQueue* q = ns->add_msgs();
    q->set_id(id);
    *q->mutable_perm() = PermOf(ds.msg_perm);
    q->set_qbytes(ds.msg_qbytes);
    // No message is longer than all the queue holds.
    std::vector<char> buf(sizeof(long) + std::max<uint64_t>(ds.__msg_cbytes, 1));
    for (uint64_t i = 0; i < ds.msg_qnum; ++i) {
      // MSG_COPY: the i-th message, left in the queue.
      ssize_t n = msgrcv(id, buf.data(), buf.size() - sizeof(long), long(i), IPC_NOWAIT | MSG_COPY);
      if (n < 0)
        return ErrnoError() << "SysV message queue " << id << ": copy message " << i
                            << (errno == ENOSYS ? " (the kernel lacks CONFIG_CHECKPOINT_RESTORE)"
                                                : "");
      img::MsgMessage* m = q->add_messages();
      long mtype;
      memcpy(&mtype, buf.data(), sizeof mtype);
      m->set_mtype(mtype);
      m->set_text(std::string(buf.data() + sizeof(long), size_t(n)));
    }
  }
  return Ok();
}

Result<std::vector<unsigned short>> SemValues(int id, size_t nsems) {
  std::vector<unsigned short> v(nsems);
  SemArg arg;
  arg.array = v.data();
  if (semctl(id, 0, GETALL, arg) < 0)
    return ErrnoError() << "SysV semaphore set " << id << ": GETALL";
  return v;
}

Result<void> DumpSems(img::IpcNamespace* ns) {
  struct seminfo info {};
  SemArg arg;
  arg.info = &info;
  int maxidx = semctl(0, 0, SEM_INFO, arg);
  if (maxidx < 0) return ErrnoError() << "semctl(SEM_INFO)";
  for (int idx = 0; idx <= maxidx; ++idx) {
    struct semid_ds ds {};
    arg.buf = &ds;
    int id = semctl(idx, 0, SEM_STAT_ANY, arg);
    if (id < 0) continue;
    img::SemSet* s = ns->add_sems();
    s->set_id(id);
    *s->mutable_perm() = PermOf(ds.sem_perm);
    for (unsigned short v : KLEAP_TRY(SemValues(id, ds.sem_nsems))) s->add_values(v);
  }
  return Ok();
}

// kleap's own semop, without undo: moves every semaphore between its value and kSemMid.
Result<void> ShiftSems(const img::IpcNamespace& ns, bool to_mid) {
  for (auto& s : ns.sems()) {
    std::vector<struct sembuf> ops;
    for (int i = 0; i < s.values_size(); ++i) {
      int d = kSemMid - int(s.values(i));
      if (d) ops.push_back({uint16_t(i), int16_t(to_mid ? d : -d), IPC_NOWAIT});
    }
    for (size_t k = 0; k < ops.size(); k += kSemopChunk)
      if (semop(s.id(), ops.data() + k, std::min(kSemopChunk, ops.size() - k)) < 0)
        return ErrnoError() << "SysV semaphore set " << s.id() << ": move its values "
                            << (to_mid ? "to the midpoint" : "back");
  }
  return Ok();
}

// Runs semop(id, ops, SEM_UNDO) in the task's leader, in its own mode.
Result<void> InjectSemop(RemoteSyscalls& rs, ArchKind arch, pid_t pid, int id,
                         const std::vector<struct sembuf>& ops) {
  for (size_t k = 0; k < ops.size(); k += kSemopChunk) {
    size_t n = std::min(kSemopChunk, ops.size() - k);
    auto scratch = KLEAP_TRY(StackScratch::Borrow(rs.tid(), rs.saved_regs(), 256));
    KLEAP_TRY(WriteRemote(pid, scratch.at(), ops.data() + k, n * sizeof(struct sembuf)));
    if (arch == ArchKind::kX86)
      KLEAP_TRY(rs.Call(arch, X86Arch::kSemtimedopTime64, id, scratch.at(), n, 0));
    else
      KLEAP_TRY(rs.Call(arch, X64Arch::kSemop, uint64_t(id), scratch.at(), n));
  }
  return Ok();
}

// A task's undo list can only be seen by having the kernel apply it: every thread drops
// its reference (unshare(CLONE_SYSVSEM)), the last drop applies the adjustments, and the
// values moved by exactly the task's semadj (all semaphores sit at the midpoint, so
// nothing clamps). The task then takes the same list again: semop(-adj, SEM_UNDO).
Result<void> MeasureUndo(DumpContext& ctx, const img::IpcNamespace& ns, IpcDump* out) {
  if (ns.sems_size() == 0) return Ok();
  KLEAP_TRY(ShiftSems(ns, true));
  auto measure = [&]() -> Result<void> {
    for (auto& t : ctx.tree->tasks()) {
      if (t.zombie) continue;
      std::string who = "task " + std::to_string(t.pid) + " (" + t.comm + ")";
      // The leader last: its reference may be the last one.
      for (auto it = t.tids.rbegin(); it != t.tids.rend(); ++it) {
        RemoteSyscalls& rs = ctx.tree->Thread(*it);
        ArchKind a = ArchFromCs(rs.saved_regs().cs);
        KLEAP_TRY_CTX(
            rs.Call(a, a == ArchKind::kX86 ? long(X86Arch::kUnshare) : long(X64Arch::kUnshare),
                    uint64_t(CLONE_SYSVSEM)),
            who << ": thread " << *it
                << ": unshare(CLONE_SYSVSEM) to read its semaphore undo list");
      }
      RemoteSyscalls& leader = ctx.tree->Thread(t.pid);
      ArchKind a = ArchFromCs(leader.saved_regs().cs);
      for (auto& s : ns.sems()) {
        auto now = KLEAP_TRY(SemValues(s.id(), size_t(s.values_size())));
        std::vector<struct sembuf> ops;
        for (size_t i = 0; i < now.size(); ++i) {
          int adj = int(now[i]) - kSemMid;
          if (!adj) continue;
          if (now[i] == 0 || now[i] == kSemVmx)
            return Err(ENOTSUP) << who << ": SysV semaphore " << i << " of set " << s.id()
                                << ": its undo adjustment is too large to measure (the value "
                                   "clamped at "
                                << now[i] << ")";
          img::SemUndo u;
          u.set_semid(s.id());
          u.set_semnum(uint32_t(i));
          u.set_adj(adj);
          out->undo[t.pid].push_back(u);
          ops.push_back({uint16_t(i), int16_t(-adj), SEM_UNDO | IPC_NOWAIT});
        }
        if (!ops.empty())
          KLEAP_TRY_CTX(InjectSemop(leader, a, t.pid, s.id(), ops),
                        who << ": take its semaphore undo list of set " << s.id() << " again");
      }
    }
    return Ok();
  };
  auto r = measure();
  auto back = ShiftSems(ns, false);
  KLEAP_TRY(r);
  return back;
}

}  // namespace

// ---- check ----

std::vector<Problem> CheckIpc(const std::vector<TaskInfo>& tasks) {
  std::vector<Problem> out;
  if (tasks.empty()) return out;
  auto own = NsStat("/proc/self/ns/ipc");
  auto root = NsStat(ProcPath(tasks[0].pid, "ns/ipc"));
  if (!own || !root) {
    out.push_back(
        {tasks[0].pid, "task", "ipc namespace", (own ? root.error() : own.error()).ToString()});
    return out;
  }
  bool carried = !SameFile(*own, *root);
  std::set<pid_t> in_tree;
  for (auto& t : tasks) {
    in_tree.insert(t.pid);
    if (t.zombie) continue;
    for (pid_t tid : t.tids) {
      auto st = NsStat(ProcPath(t.pid, "task/" + std::to_string(tid) + "/ns/ipc"));
      if (st && !SameFile(*st, *root))
        out.push_back({t.pid, tid == t.pid ? "task" : "thread " + std::to_string(tid),
                       "ipc namespace",
                       "in another IPC namespace than the tree's root; a tree is carried with "
                       "one IPC namespace"});
    }
    if (carried) continue;
    auto maps = ReadMaps(t.pid);
    if (!maps) continue;  // CheckMappings says why
    for (auto& m : *maps)
      if (m.path.rfind("/SYSV", 0) == 0)
        out.push_back({t.pid, "mapping " + Hex(m.start) + "-" + Hex(m.end), m.path,
                       "SysV shared memory in kleap's own IPC namespace is not carried: run the "
                       "tree in an IPC namespace of its own (unshare --ipc); carrying the "
                       "system's namespace is later work"});
  }
  if (!carried) return out;
  // The namespace goes whole: nobody outside the tree may be in it.
  auto pids = ListPids();
  if (!pids) return out;
  for (pid_t pid : *pids) {
    if (in_tree.count(pid)) continue;
    auto st = NsStat(ProcPath(pid, "ns/ipc"));
    if (!st || !SameFile(*st, *root)) continue;
    out.push_back({tasks[0].pid, "task", "ipc namespace",
                   DescribePid(pid) +
                       ", outside the tree, is in the tree's IPC namespace, which is carried "
                       "whole"});
    break;
  }
  return out;
}

// ---- dump ----

Result<IpcDump> DumpIpc(DumpContext& ctx) {
  IpcDump out;
  auto& tasks = ctx.tree->tasks();
  pid_t root = tasks[0].pid;
  auto own = KLEAP_TRY(NsStat("/proc/self/ns/ipc"));
  auto theirs = KLEAP_TRY(NsStat(ProcPath(root, "ns/ipc")));
  if (SameFile(own, theirs)) return out;  // CheckIpc refused any SysV shm there

  // Attachments the tree's tasks hold, and that each is a whole one.
  std::map<int, uint64_t> held;
  for (auto& t : tasks) {
    if (t.zombie) continue;
    auto maps = KLEAP_TRY_CTX(ReadMaps(t.pid), "task " << t.pid);
    for (auto& m : maps)
      if (m.path.rfind("/SYSV", 0) == 0) held[int(m.inode)]++;  // a split VMA counts too
    for (auto& a : GroupAttachments(maps))
      if (!a.whole_from_zero)
        return Err(ENOTSUP) << "task " << t.pid << " mapping " << Hex(a.start) << "-" << Hex(a.end)
                            << ": only a part of SysV shm segment " << a.id
                            << " is attached (the rest was unmapped); not carried";
  }

  img::IpcNamespace ns;
  {
    auto in = KLEAP_TRY(NsEnter::Into(ProcPath(root, "ns/ipc")));
    ns.set_shmmax(KLEAP_TRY(ReadSysctlNum("shmmax")));
    ns.set_shmall(KLEAP_TRY(ReadSysctlNum("shmall")));
    ns.set_shmmni(KLEAP_TRY(ReadSysctlNum("shmmni")));
    ns.set_shm_rmid_forced(uint32_t(KLEAP_TRY(ReadSysctlNum("shm_rmid_forced"))));
    ns.set_msgmax(KLEAP_TRY(ReadSysctlNum("msgmax")));
    ns.set_msgmnb(KLEAP_TRY(ReadSysctlNum("msgmnb")));
    ns.set_msgmni(KLEAP_TRY(ReadSysctlNum("msgmni")));
    ns.set_sem(KLEAP_TRY(ReadSysctl("sem")));
    KLEAP_TRY(DumpShms(ctx, &ns, held));
    KLEAP_TRY(DumpMsgs(&ns));
    KLEAP_TRY(DumpSems(&ns));
    KLEAP_TRY(MeasureUndo(ctx, ns, &out));
  }
  // Every attachment of the tree must name a segment of its namespace.
  for (auto& [id, n] : held) {
    bool found = false;
    for (auto& s : ns.shms()) found |= s.id() == id;
    if (!found)
      return Err(ENOTSUP) << "SysV shm segment " << id
                          << " is attached in the tree but is not in its IPC namespace";
  }
  KLEAP_TRY(ctx.images->WriteMessage(kIpcImage, ns));
  ctx.written.ipc = ns;
  ctx.written.has_ipc = true;
  out.carried = true;
  return out;
}

// ---- restore ----

Result<void> ValidateIpc(const RestorePlan& plan) {
  const img::IpcNamespace& ns = plan.ipc;
  std::map<int, const img::ShmSegment*> shms;
  std::map<int, std::vector<int64_t>> sem_final;
  if (plan.has_ipc) {
    for (auto& s : ns.shms()) {
      std::string who = std::string(kIpcImage) + ": shm segment " + std::to_string(s.id());
      if (s.id() < 0 || !shms.emplace(s.id(), &s).second)
        return Err(EINVAL) << who << ": bad or repeated id";
      if (s.size() == 0 || s.size() > (1ull << 40))
        return Err(EINVAL) << who << ": bad size " << s.size();
      if (s.perm().mode() > 0777) return Err(EINVAL) << who << ": bad mode";
      if (s.blob() != ShmBlob(s.id())) return Err(EINVAL) << who << ": bad blob " << s.blob();
      uint64_t prev = 0;
      for (auto& r : s.runs())
        if (r.vaddr() % kPage || r.vaddr() < prev || r.nr_pages() == 0 ||
            r.vaddr() > RoundPage(s.size()) ||
            r.nr_pages() > (RoundPage(s.size()) - r.vaddr()) / kPage)
          return Err(EINVAL) << who << ": page run at " << r.vaddr() << " out of range";
        else
          prev = r.vaddr() + r.nr_pages() * kPage;
    }
    std::set<int> ids;
    for (auto& q : ns.msgs()) {
      std::string who = std::string(kIpcImage) + ": message queue " + std::to_string(q.id());
      if (q.id() < 0 || !ids.insert(q.id()).second)
        return Err(EINVAL) << who << ": bad or repeated id";
      if (q.perm().mode() > 0777) return Err(EINVAL) << who << ": bad mode";
      if (q.qbytes() > INT32_MAX) return Err(EINVAL) << who << ": bad qbytes";
      for (auto& m : q.messages())
        if (m.mtype() <= 0 || m.text().size() > INT32_MAX)
          return Err(EINVAL) << who << ": a message of bad type or size";
    }
    ids.clear();
    for (auto& s : ns.sems()) {
      std::string who = std::string(kIpcImage) + ": semaphore set " + std::to_string(s.id());
      if (s.id() < 0 || !ids.insert(s.id()).second)
        return Err(EINVAL) << who << ": bad or repeated id";
      if (s.perm().mode() > 0777) return Err(EINVAL) << who << ": bad mode";
      if (s.values_size() == 0 || s.values_size() > 32000)
        return Err(EINVAL) << who << ": bad number of semaphores";
      for (uint32_t v : s.values())
        if (v > kSemVmx) return Err(EINVAL) << who << ": bad value " << v;
      sem_final[s.id()].assign(s.values().begin(), s.values().end());
    }
    // The numeric sysctls are written back as numbers: the kernel judges them.
    for (char c : ns.sem())
      if (!isdigit(static_cast<unsigned char>(c)) && !isspace(static_cast<unsigned char>(c)))
        return Err(EINVAL) << kIpcImage << ": bad kernel.sem " << ns.sem();
  }
  for (auto& [pid, core] : plan.cores)
    for (auto& u : core.sem_undo()) {
      auto it = sem_final.find(u.semid());
      if (it == sem_final.end() || u.semnum() >= it->second.size() || u.adj() < -kSemVmx ||
          u.adj() > kSemVmx || u.adj() == 0)
        return Err(EINVAL) << CoreImage(pid) << ": bad semaphore undo entry (set " << u.semid()
                           << ", semaphore " << u.semnum() << ", adj " << u.adj() << ")";
      it->second[u.semnum()] += u.adj();
    }
  for (auto& [id, vals] : sem_final)
    for (size_t i = 0; i < vals.size(); ++i)
      if (vals[i] < 0 || vals[i] > kSemVmx)
        return Err(EINVAL) << kIpcImage << ": semaphore " << i << " of set " << id
                           << " would start at " << vals[i] << " with the undo lists";
  for (auto& [pid, mm] : plan.mms)
    for (auto& v : mm.vmas()) {
      if (v.kind() != img::Vma::SYSV_SHM) continue;
      auto it = shms.find(int(v.shmem_id()));
      if (v.shmem_id() > uint64_t(INT32_MAX) || it == shms.end())
        return Err(EINVAL) << MmImage(pid) << ": mapping " << Hex(v.start())
                           << " attaches SysV shm segment " << v.shmem_id()
                           << ", which the set doesn't hold";
      if (v.pgoff() % kPage || v.pgoff() >= RoundPage(it->second->size()) ||
          v.end() - v.start() > RoundPage(it->second->size()) - v.pgoff())
        return Err(EINVAL) << MmImage(pid) << ": mapping " << Hex(v.start())
                           << " lies outside SysV shm segment " << v.shmem_id();
    }
  return Ok();
}

namespace {

// Creates an object as its creator did (cuid/cgid are the creator's effective ids),
// with the id it had (next_id is read once by the next create in this namespace).
Result<int> CreateAs(const char* next_id, const img::IpcPerm& perm, int want,
                     const std::function<int()>& create) {
  KLEAP_TRY(WriteSysctl(next_id, std::to_string(want)));
  uid_t euid = geteuid();
  gid_t egid = getegid();
  if (syscall(SYS_setresgid, -1, perm.cgid(), -1) < 0 ||
      syscall(SYS_setresuid, -1, perm.cuid(), -1) < 0) {
    int e = errno;
    syscall(SYS_setresuid, -1, euid, -1);
    syscall(SYS_setresgid, -1, egid, -1);
    errno = e;
    return ErrnoError() << "take the creator's ids " << perm.cuid() << "/" << perm.cgid();
  }
  int got = create();
  int e = errno;
  syscall(SYS_setresuid, -1, euid, -1);
  syscall(SYS_setresgid, -1, egid, -1);
  if (geteuid() != euid) return Err(EPERM) << "could not take back kleap's own uid";
  errno = e;
  if (got < 0) return ErrnoError() << "create";
  if (got != want) return Err(EEXIST) << "created with id " << got << ", not " << want;
  return got;
}

template <class Ds>
void SetPerm(Ds* ds, const img::IpcPerm& p) {
  ds->uid = p.uid();
  ds->gid = p.gid();
  ds->mode = (unsigned short)p.mode();
}

}  // namespace

Result<std::unique_ptr<IpcRestore>> IpcRestore::Create(const RestorePlan& plan,
                                                       ImageReader& images) {
  std::unique_ptr<IpcRestore> r(new IpcRestore);
  r->old_ns_ = UniqueFd(open("/proc/self/ns/ipc", O_RDONLY | O_CLOEXEC));
  if (!r->old_ns_) return ErrnoError() << "open /proc/self/ns/ipc";
  if (unshare(CLONE_NEWIPC) < 0) return ErrnoError() << "create an IPC namespace";
  KLEAP_TRY_CTX(r->Build(plan, images), "remake the IPC namespace");
  return r;
}

Result<void> IpcRestore::Build(const RestorePlan& plan, ImageReader& images) {
  const img::IpcNamespace& ns = plan.ipc;
  ns_ = &ns;
  // Limits first; message and segment sizes get room while the objects are remade (a
  // queue's qbytes above msgmnb needs CAP_SYS_RESOURCE otherwise), then their own values.
  uint64_t msgmnb = ns.msgmnb(), msgmax = ns.msgmax(), shmmax = ns.shmmax();
  for (auto& q : ns.msgs()) {
    msgmnb = std::max<uint64_t>(msgmnb, q.qbytes());
    for (auto& m : q.messages()) msgmax = std::max<uint64_t>(msgmax, m.text().size());
  }
  for (auto& s : ns.shms()) shmmax = std::max<uint64_t>(shmmax, s.size());
  KLEAP_TRY(WriteSysctl("shmmni", std::to_string(ns.shmmni())));
  KLEAP_TRY(WriteSysctl("shmall", std::to_string(ns.shmall())));
  KLEAP_TRY(WriteSysctl("shmmax", std::to_string(shmmax)));
  KLEAP_TRY(WriteSysctl("msgmni", std::to_string(ns.msgmni())));
  KLEAP_TRY(WriteSysctl("msgmax", std::to_string(msgmax)));
  KLEAP_TRY(WriteSysctl("msgmnb", std::to_string(msgmnb)));
  KLEAP_TRY(WriteSysctl("sem", ns.sem()));

  for (auto& s : ns.shms()) {
    std::string who = "SysV shm segment " + std::to_string(s.id());
    KLEAP_TRY_CTX(CreateAs("shm_next_id", s.perm(), s.id(),
                           [&] {
                             return shmget(s.perm().key(), s.size(),
                                           IPC_CREAT | IPC_EXCL | int(s.perm().mode()));
                           }),
                  who);
    void* p = shmat(s.id(), nullptr, 0);
    if (p == reinterpret_cast<void*>(-1)) return ErrnoError() << who << ": attach";
    attached_[s.id()] = p;
    KLEAP_TRY(images.VerifyImage(s.blob()));
    auto blob = KLEAP_TRY(images.OpenBlob(s.blob()));
    uint64_t off = 0;
    for (auto& r : s.runs()) {
      uint64_t n = r.nr_pages() * kPage;
      if (off + n > blob->size())
        return Err(EINVAL) << "image " << s.blob() << " is shorter than its page runs";
      KLEAP_TRY(blob->ReadAt(off, static_cast<char*>(p) + r.vaddr(), n));
      off += n;
    }
    if (off != blob->size())
      return Err(EINVAL) << "image " << s.blob() << " holds " << blob->size()
                         << " bytes, its page runs " << off;
    struct shmid_ds ds {};
    SetPerm(&ds.shm_perm, s.perm());
    if (shmctl(s.id(), IPC_SET, &ds) < 0) return ErrnoError() << who << ": IPC_SET";
    if (s.locked() && shmctl(s.id(), SHM_LOCK, nullptr) < 0)
      return ErrnoError() << who << ": SHM_LOCK";
  }

  for (auto& q : ns.msgs()) {
    std::string who = "SysV message queue " + std::to_string(q.id());
    KLEAP_TRY_CTX(
        CreateAs(
            "msg_next_id", q.perm(), q.id(),
            [&] { return msgget(q.perm().key(), IPC_CREAT | IPC_EXCL | int(q.perm().mode())); }),
        who);
    struct msqid_ds ds {};
    if (msgctl(q.id(), IPC_STAT, &ds) < 0) return ErrnoError() << who << ": IPC_STAT";
    ds.msg_qbytes = q.qbytes();
    SetPerm(&ds.msg_perm, q.perm());
    if (msgctl(q.id(), IPC_SET, &ds) < 0) return ErrnoError() << who << ": IPC_SET";
    std::vector<char> buf;
    for (auto& m : q.messages()) {
      buf.resize(sizeof(long) + m.text().size());
      long mtype = long(m.mtype());
      memcpy(buf.data(), &mtype, sizeof mtype);
      memcpy(buf.data() + sizeof(long), m.text().data(), m.text().size());
      if (msgsnd(q.id(), buf.data(), m.text().size(), IPC_NOWAIT) < 0)
        return ErrnoError() << who << ": send a message of " << m.text().size() << " bytes";
    }
  }

  // Each set starts with the undo lists applied; each task then takes its list back.
  std::map<int, std::vector<int>> start;
  for (auto& s : ns.sems()) start[s.id()].assign(s.values().begin(), s.values().end());
  for (auto& [pid, core] : plan.cores)
    for (auto& u : core.sem_undo()) start[u.semid()][u.semnum()] += u.adj();
  for (auto& s : ns.sems()) {
    std::string who = "SysV semaphore set " + std::to_string(s.id());
    KLEAP_TRY_CTX(CreateAs("sem_next_id", s.perm(), s.id(),
                           [&] {
                             return semget(s.perm().key(), s.values_size(),
                                           IPC_CREAT | IPC_EXCL | int(s.perm().mode()));
                           }),
                  who);
    std::vector<unsigned short> vals(start[s.id()].begin(), start[s.id()].end());
    SemArg arg;
    arg.array = vals.data();
    if (semctl(s.id(), 0, SETALL, arg) < 0) return ErrnoError() << who << ": SETALL";
    struct semid_ds ds {};
    SetPerm(&ds.sem_perm, s.perm());
    arg.buf = &ds;
    if (semctl(s.id(), 0, IPC_SET, arg) < 0) return ErrnoError() << who << ": IPC_SET";
  }
  KLEAP_TRY(WriteSysctl("msgmax", std::to_string(ns.msgmax())));
  KLEAP_TRY(WriteSysctl("msgmnb", std::to_string(ns.msgmnb())));
  KLEAP_TRY(WriteSysctl("shmmax", std::to_string(ns.shmmax())));
  return Ok();
}

Result<void> IpcRestore::Finish() {
  for (auto& s : ns_->shms())
    if (s.destroyed() && shmctl(s.id(), IPC_RMID, nullptr) < 0)
      return ErrnoError() << "SysV shm segment " << s.id() << ": IPC_RMID again";
  for (auto& [id, p] : attached_) shmdt(p);
  attached_.clear();
  for (auto& s : ns_->shms()) {
    struct shmid_ds ds {};
    if (shmctl(s.id(), IPC_STAT, &ds) < 0)
      return ErrnoError() << "SysV shm segment " << s.id() << ": IPC_STAT";
    if (ds.shm_nattch != s.nattch())
      return Err(EIO) << "SysV shm segment " << s.id() << " is attached " << ds.shm_nattch
                      << " times after the restore, " << s.nattch() << " at the dump";
  }
  // Last: with it set, a segment nobody has attached goes when its creator (kleap) exits.
  KLEAP_TRY(WriteSysctl("shm_rmid_forced", std::to_string(ns_->shm_rmid_forced())));
  Leave();
  return Ok();
}

void IpcRestore::Leave() {
  if (old_ns_ && setns(old_ns_.get(), CLONE_NEWIPC) < 0)
    KLOG(kWarning) << "return to kleap's IPC namespace failed: " << strerror(errno);
  old_ns_.reset();
}

IpcRestore::~IpcRestore() {
  for (auto& [id, p] : attached_) shmdt(p);
  Leave();
}

Result<void> AttachSysvShm(RemoteSyscalls& rs, pid_t pid, const img::MmImage& mm) {
  constexpr ArchKind k64 = ArchKind::kX86_64;
  auto has = [](const img::Vma& v, const char* f) {
    return std::find(v.vm_flags().begin(), v.vm_flags().end(), f) != v.vm_flags().end();
  };
  for (int i = 0; i < mm.vmas_size(); ++i) {
    const img::Vma& v = mm.vmas(i);
    if (v.kind() != img::Vma::SYSV_SHM) continue;
    std::string where = "task " + std::to_string(pid) + " mapping " + Hex(v.start()) + "-" +
                        Hex(v.end()) + " (SysV shm " + std::to_string(v.shmem_id()) + ")";
    bool continues = i > 0 && mm.vmas(i - 1).kind() == img::Vma::SYSV_SHM &&
                     mm.vmas(i - 1).shmem_id() == v.shmem_id() &&
                     mm.vmas(i - 1).end() == v.start() && v.pgoff() != 0;
    uint32_t attach_prot = PROT_READ;
    if (!continues) {
      if (v.pgoff() != 0) return Err(EINVAL) << where << ": does not start at the segment's start";
      uint64_t flags = (has(v, "mw") ? 0 : SHM_RDONLY) | (has(v, "me") ? SHM_EXEC : 0);
      uint64_t got = KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kShmat, v.shmem_id(), v.start(), flags),
                                   where << ": shmat");
      if (got != v.start()) return Err(EFAULT) << where << ": attached at " << Hex(got);
    }
    attach_prot |= (has(v, "mw") ? PROT_WRITE : 0) | (has(v, "me") ? PROT_EXEC : 0);
    if (continues || v.prot() != attach_prot)
      KLEAP_TRY_CTX(rs.Call(k64, X64Arch::kMprotect, v.start(), v.end() - v.start(), v.prot()),
                    where << ": mprotect");
  }
  return Ok();
}

Result<void> RestoreSemUndo(RemoteSyscalls& rs, pid_t pid, RemotePtr<> scratch,
                            const img::TaskCore& core) {
  std::map<int, std::vector<struct sembuf>> by_set;
  for (auto& u : core.sem_undo())
    by_set[u.semid()].push_back({uint16_t(u.semnum()), int16_t(-u.adj()), SEM_UNDO | IPC_NOWAIT});
  for (auto& [id, ops] : by_set)
    for (size_t k = 0; k < ops.size(); k += kSemopChunk) {
      size_t n = std::min(kSemopChunk, ops.size() - k);
      KLEAP_TRY(WriteRemote(pid, scratch, ops.data() + k, n * sizeof(struct sembuf)));
      KLEAP_TRY_CTX(
          rs.Call(ArchKind::kX86_64, X64Arch::kSemop, uint64_t(id), scratch, n),
          "task " << pid << ": take its undo list of SysV semaphore set " << id << " again");
    }
  return Ok();
}

}  // namespace kleap
