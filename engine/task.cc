#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <set>
#include <sstream>

#include "engine/base/log.h"
#include "engine/base/page.h"
#include "engine/ptrace/tracee.h"
#include "engine/seccomp.h"
#include "engine/share.h"
#include "engine/task.h"

namespace kleap {

std::string Problem::ToString() const {
  std::ostringstream os;
  os << "pid " << pid << " " << object;
  if (!what.empty()) os << ": " << what;
  os << ": " << reason;
  return os.str();
}

namespace {

Result<TaskInfo> ReadTaskInfo(pid_t pid) {
  TaskInfo t;
  auto st = KLEAP_TRY_CTX(ReadStat(pid), "task " << pid);
  t.pid = pid;
  t.ppid = st.ppid;
  t.pgid = st.pgrp;
  t.sid = st.session;
  t.comm = st.comm;
  t.exit_signal = st.exit_signal;
  if (st.state == 'Z') {
    t.zombie = true;
    t.exit_status = st.exit_code;
    t.tids = {pid};
    return t;
  }
  t.stopped = st.state == 'T';
  t.tids = KLEAP_TRY_CTX(ListThreads(pid), "task " << pid);
  // Leader first.
  std::stable_partition(t.tids.begin(), t.tids.end(), [&](pid_t x) { return x == pid; });
  t.arch = ReadElfClass(ProcPath(pid, "exe").c_str()) == ElfClass::k32 ? ArchKind::kX86
                                                                       : ArchKind::kX86_64;
  return t;
}

Result<std::vector<pid_t>> ChildrenOf(const TaskInfo& t, pid_t leave_out) {
  if (t.zombie) return std::vector<pid_t>{};  // its children went to a reaper
  std::set<pid_t> kids;
  for (pid_t tid : t.tids) {
    auto c = ListChildren(t.pid, tid);
    if (!c) return std::move(c).error().Context("task " + std::to_string(t.pid));
    kids.insert(c->begin(), c->end());
  }
  kids.erase(leave_out);  // kleap is not part of what it walks (engine.h)
  return std::vector<pid_t>(kids.begin(), kids.end());
}

// A thread stopped inside an rseq critical section would resume mid-section, after a
// migration the kernel never saw. Do what the kernel does on preemption: send it to the
// section's abort handler and clear rseq_cs, before anything reads its registers.
Result<void> AbortRseqCriticalSection(pid_t tid) {
  RseqConfig cfg = KLEAP_TRY(pt::GetRseq(tid));
  if (!cfg.rseq_abi_pointer) return Ok();
  constexpr uint64_t kRseqCsOffset = 8;  // struct rseq: cpu_id_start, cpu_id, rseq_cs
  uint64_t cs_ptr = 0;
  if (!ReadRemote(tid, RemotePtr(cfg.rseq_abi_pointer + kRseqCsOffset), &cs_ptr, sizeof cs_ptr))
    return Ok();
  if (!cs_ptr) return Ok();
  struct {
    uint32_t version, flags;
    uint64_t start_ip, post_commit_offset, abort_ip;
  } cs{};
  if (!ReadRemote(tid, RemotePtr(cs_ptr), &cs, sizeof cs)) return Ok();
  Regs regs = KLEAP_TRY(pt::GetRegs(tid));
  if (regs.rip < cs.start_ip || regs.rip - cs.start_ip >= cs.post_commit_offset) return Ok();
  regs.rip = cs.abort_ip;
  KLEAP_TRY(pt::SetRegs(tid, regs));
  uint64_t zero = 0;
  KLEAP_TRY(WriteRemote(tid, RemotePtr(cfg.rseq_abi_pointer + kRseqCsOffset), &zero, sizeof zero));
  KLOG(kDebug) << "thread " << tid << ": in an rseq critical section, sent to its abort handler "
               << Hex(cs.abort_ip);
  return Ok();
}

}  // namespace

Result<std::vector<TaskInfo>> WalkTree(pid_t root, pid_t leave_out) {
  std::vector<TaskInfo> out;
  std::deque<pid_t> queue{root};
  while (!queue.empty()) {
    pid_t pid = queue.front();
    queue.pop_front();
    TaskInfo t = KLEAP_TRY(ReadTaskInfo(pid));
    if (pid == root) t.ppid = 0;
    for (pid_t c : KLEAP_TRY(ChildrenOf(t, leave_out))) queue.push_back(c);
    out.push_back(std::move(t));
  }
  return out;
}

Result<std::unique_ptr<SeizedTree>> SeizedTree::Seize(pid_t root) {
  std::unique_ptr<SeizedTree> tree(new SeizedTree);
  std::deque<std::pair<pid_t, pid_t>> queue{{root, 0}};
  while (!queue.empty()) {
    auto [pid, ppid] = queue.front();
    queue.pop_front();
    KLEAP_TRY(tree->SeizeTask(pid, ppid));
    // The task can't fork any more: its children are final.
    for (pid_t c : KLEAP_TRY(ChildrenOf(tree->tasks_.back(), getpid()))) queue.push_back({c, pid});
  }
  return tree;
}

Result<void> SeizedTree::SeizeTask(pid_t pid, pid_t ppid) {
  TaskInfo t = KLEAP_TRY(ReadTaskInfo(pid));
  t.ppid = ppid;
  if (t.zombie) {
    // Nothing to stop: it can't run, and its parent, seized already, can't reap it.
    if (!ppid) return Err(ENOTSUP) << "task " << pid << " (" << t.comm << ") is a zombie";
    tasks_.push_back(std::move(t));
    return Ok();
  }
  // It would never stop: refuse now, not after the freeze deadline.
  if (pid_t tid = InVforkWait(t)) {
    Problem p = VforkProblem(pid, tid);
    return Err(ENOTSUP) << "task " << pid << " (" << t.comm << ") " << p.object << ": " << p.what
                        << ": " << p.reason;
  }
  t.tids.clear();
  // Threads may be created until every thread is stopped: loop until the list is stable.
  std::set<pid_t> seized;
  for (;;) {
    auto tids = KLEAP_TRY_CTX(ListThreads(pid), "task " << pid);
    bool added = false;
    for (pid_t tid : tids) {
      if (seized.count(tid)) continue;
      auto r = pt::SeizeAndStop(tid, /*exit_kill=*/false);
      if (!r) {
        if (errno == ESRCH &&
            access(ProcPath(pid, "task/" + std::to_string(tid)).c_str(), F_OK) != 0)
          continue;
        return std::move(r).error().Context("freeze task " + std::to_string(pid) + " (" + t.comm +
                                            ")");
      }
      if (tid == pid && t.stopped) t.stop_signal = *r;
      seized.insert(tid);
      seized_order_.push_back(tid);
      // Its filters must not judge what kleap injects; they act again once it is let go.
      if (SeccompMode(pid, tid) == 2) KLEAP_TRY_CTX(SuspendSeccomp(tid, false), "task " << pid);
      KLEAP_TRY_CTX(AbortRseqCriticalSection(tid), "task " << pid);
      auto rs = RemoteSyscalls::Create(tid);
      if (!rs) return std::move(rs).error().Context("task " + std::to_string(pid));
      threads_[tid] = std::make_unique<RemoteSyscalls>(std::move(*rs));
      added = true;
    }
    if (!added) break;
  }
  t.tids.assign(seized.begin(), seized.end());
  std::stable_partition(t.tids.begin(), t.tids.end(), [&](pid_t x) { return x == pid; });
  if (t.tids.empty() || t.tids[0] != pid)
    return Err(ESRCH) << "task " << pid << " (" << t.comm << "): its leader thread is gone";
  // The width the leader runs in right now.
  t.arch = ArchFromCs(threads_[pid]->saved_regs().cs);
  tasks_.push_back(std::move(t));
  return Ok();
}

void SeizedTree::KillAll() {
  // The init of kleap's own pid namespace ignores SIGKILL from inside it: it is let go
  // as it was instead.
  std::set<pid_t> init_tids;
  for (auto& t : tasks_) {
    if (t.pid == 1) {
      KLOG(kWarning) << "pid 1 runs on: the init of kleap's pid namespace can't be killed from "
                        "inside it (kill it from the parent namespace)";
      init_tids.insert(t.tids.begin(), t.tids.end());
      continue;
    }
    kill(t.pid, SIGKILL);
  }
  for (auto& [tid, rs] : threads_)
    if (!init_tids.count(tid)) rs->Disarm();
  threads_.clear();
  pt::ReapKilledExcept(seized_order_, init_tids);
  tasks_.clear();
  done_ = true;
}

void SeizedTree::ResumeAll() {
  if (done_) return;
  threads_.clear();  // the destructors put registers and masks back
  for (pid_t tid : seized_order_) {
    auto r = pt::Detach(tid);
    if (!r) KLOG(kWarning) << r.error().ToString() << ", ignoring";
  }
  done_ = true;
}

SeizedTree::~SeizedTree() {
  ResumeAll();
}

std::vector<Problem> CheckNamespaces(pid_t pid) {
  std::vector<Problem> out;
  // The IPC namespace is carried whole or refused by CheckIpc (ipc.cc).
  static const char* kNs[] = {"mnt", "pid", "net", "uts", "user", "cgroup"};  // time: timens.cc
  for (const char* ns : kNs) {
    struct stat mine, theirs;
    std::string self = std::string("/proc/self/ns/") + ns;
    if (stat(self.c_str(), &mine) < 0) continue;
    if (stat(ProcPath(pid, std::string("ns/") + ns).c_str(), &theirs) < 0) continue;
    if (mine.st_ino != theirs.st_ino || mine.st_dev != theirs.st_dev)
      out.push_back({pid, "task", std::string(ns) + " namespace",
                     "the task is in another " + std::string(ns) +
                         " namespace than kleap; namespaces are not carried yet"});
  }
  return out;
}

}  // namespace kleap
