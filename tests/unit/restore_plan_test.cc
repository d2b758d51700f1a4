// Restore planning (engine/restore_plan.cc, engine/leaders.cc): what pstree.img and the
// task images say is untrusted input, checked before anything is created; then which
// tasks create which, and what they share (PlanTasks); and the dump side's plan of the
// helpers for gone leaders (PlanLeaders).
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "engine/context.h"
#include "engine/leaders.h"
#include "engine/restore_plan.h"
#include "engine/share.h"

namespace kleap {
namespace {

std::string Message(const Result<void>& r) {
  return r ? std::string() : r.error().ToString();
}

// Adds a live task with its core (one entry a thread), an empty mm and pagemap.
img::PsTask* AddTask(RestorePlan& plan, int pid, int ppid, int sid, int pgid,
                     std::vector<int> threads = {}) {
  img::PsTask* t = plan.pstree.add_tasks();
  t->set_pid(pid);
  t->set_ppid(ppid);
  t->set_sid(sid);
  t->set_pgid(pgid);
  t->add_tids(pid);
  for (int tid : threads) t->add_tids(tid);
  img::TaskCore& core = plan.cores[pid];
  for (int tid : t->tids()) core.add_threads()->set_tid(tid);
  plan.mms[pid];
  plan.pagemaps[pid];
  plan.fdtables[pid];
  return t;
}

// A session leader (100) with a thread, a child in its own process group (101), and a
// zombie child (102) that exited with status 3.
RestorePlan ThreeTasks() {
  RestorePlan plan;
  plan.pstree.set_root_pid(100);
  AddTask(plan, 100, 0, 100, 100, {105});
  AddTask(plan, 101, 100, 100, 101);
  img::PsTask* z = plan.pstree.add_tasks();
  z->set_pid(102);
  z->set_ppid(100);
  z->set_sid(100);
  z->set_pgid(100);
  z->add_tids(102);
  z->set_zombie(true);
  z->set_exit_status(3 << 8);
  return plan;
}

TEST(ValidatePlan, AWholeTreeWithThreadsGroupsAndAZombie) {
  RestorePlan plan = ThreeTasks();
  EXPECT_TRUE(ValidatePlan(plan)) << Message(ValidatePlan(plan));
}

TEST(ValidatePlan, TheTreesShape) {
  {
    RestorePlan plan = ThreeTasks();
    plan.pstree.mutable_tasks(1)->set_ppid(101);  // its own parent comes later: itself
    EXPECT_NE(Message(ValidatePlan(plan)).find("task 101 comes before its parent 101"),
              std::string::npos)
        << Message(ValidatePlan(plan));
  }
  {
    // A second task with no parent: nothing would create it (images_fuzz found it).
    RestorePlan plan = ThreeTasks();
    plan.pstree.mutable_tasks(1)->set_ppid(0);
    EXPECT_NE(Message(ValidatePlan(plan)).find("task 101 has no parent"), std::string::npos)
        << Message(ValidatePlan(plan));
  }
  {
    RestorePlan plan = ThreeTasks();
    plan.pstree.mutable_tasks(1)->set_pid(100);
    EXPECT_NE(Message(ValidatePlan(plan)).find("bad or repeated pid 100"), std::string::npos);
  }
  {
    RestorePlan plan = ThreeTasks();
    plan.pstree.mutable_tasks(1)->add_tids(105);  // the root's thread
    EXPECT_NE(Message(ValidatePlan(plan)).find("bad or repeated tid 105"), std::string::npos);
  }
  {
    RestorePlan plan = ThreeTasks();
    plan.pstree.mutable_tasks(0)->mutable_tids()->SwapElements(0, 1);
    EXPECT_NE(Message(ValidatePlan(plan)).find("leader is not the first thread"),
              std::string::npos);
  }
}

TEST(ValidatePlan, SessionsAndGroupsNeedTheirLeaders) {
  RestorePlan plan = ThreeTasks();
  plan.pstree.mutable_tasks(1)->set_sid(77);
  EXPECT_NE(Message(ValidatePlan(plan)).find("task 101 is in session 77, whose leader is not"),
            std::string::npos);
  plan = ThreeTasks();
  plan.pstree.mutable_tasks(1)->set_pgid(78);
  EXPECT_NE(Message(ValidatePlan(plan)).find("process group 78, whose leader is not"),
            std::string::npos);
  // A gone leader is fine when a helper stands in for it.
  img::PsHelper* h = plan.pstree.add_helpers();
  h->set_pid(78);
  h->set_parent(100);
  EXPECT_TRUE(ValidatePlan(plan)) << Message(ValidatePlan(plan));
}

TEST(ValidatePlan, Zombies) {
  for (int st : {0x7f, 0x10000, -1}) {  // a stop, not a death; out of range
    RestorePlan plan = ThreeTasks();
    plan.pstree.mutable_tasks(2)->set_exit_status(st);
    EXPECT_NE(Message(ValidatePlan(plan)).find("zombie 102: bad place or wait status"),
              std::string::npos)
        << st;
  }
  RestorePlan plan = ThreeTasks();
  plan.pstree.mutable_tasks(2)->add_tids(106);  // a zombie has one thread left
  EXPECT_FALSE(ValidatePlan(plan));
  plan = ThreeTasks();
  plan.pstree.mutable_tasks(2)->set_exit_status(9);  // killed by SIGKILL
  EXPECT_TRUE(ValidatePlan(plan)) << Message(ValidatePlan(plan));
}

TEST(ValidatePlan, ThreadsAgreeWithTheCore) {
  RestorePlan plan = ThreeTasks();
  plan.cores[100].mutable_threads(1)->set_tid(106);
  EXPECT_NE(Message(ValidatePlan(plan)).find("core-100.img: thread 1 is 106, pstree says 105"),
            std::string::npos)
      << Message(ValidatePlan(plan));
  plan = ThreeTasks();
  plan.cores[101].add_threads()->set_tid(107);
  EXPECT_NE(Message(ValidatePlan(plan)).find("core-101.img: 2 threads, pstree says 1"),
            std::string::npos);
}

TEST(ValidatePlan, MappingsAndPageRuns) {
  RestorePlan plan = ThreeTasks();
  img::Vma* v = plan.mms[101].add_vmas();
  v->set_start(0x10000);
  v->set_end(0x14000);
  img::PageRun* r = plan.pagemaps[101].add_runs();
  r->set_vaddr(0x10000);
  r->set_nr_pages(4);
  EXPECT_TRUE(ValidatePlan(plan)) << Message(ValidatePlan(plan));
  r->set_nr_pages(5);  // one page past the mapping's end
  EXPECT_NE(Message(ValidatePlan(plan)).find("pagemap-101.img: page run at 0x10000 of 5 pages"),
            std::string::npos)
      << Message(ValidatePlan(plan));
  r->set_nr_pages(4);
  img::Vma* w = plan.mms[101].add_vmas();  // overlaps the first
  w->set_start(0x12000);
  w->set_end(0x18000);
  EXPECT_NE(Message(ValidatePlan(plan)).find("mm-101.img: bad mapping 0x12000-0x18000"),
            std::string::npos)
      << Message(ValidatePlan(plan));
}

TEST(ValidatePlan, FdsPointAtKnownFiles) {
  RestorePlan plan = ThreeTasks();
  img::FdEntry* e = plan.fdtables[101].add_fds();
  e->set_fd(4);
  e->set_file_id(9);
  EXPECT_NE(Message(ValidatePlan(plan)).find("fdtable-101.img: fd 4 points at unknown file 9"),
            std::string::npos)
      << Message(ValidatePlan(plan));
}

// ThreeTasks, but 101 is in session 90, whose leader is gone: a session helper made by
// 100, a subreaper, creates it.
RestorePlan WithSessionHelper() {
  RestorePlan plan = ThreeTasks();
  plan.cores[100].set_child_subreaper(true);
  plan.pstree.mutable_tasks(1)->set_sid(90);
  img::PsHelper* h = plan.pstree.add_helpers();
  h->set_pid(90);
  h->set_parent(100);
  h->set_session(true);
  return plan;
}

// Gone leaders: a helper stands in for each, and TaskCreators says who creates whom.
TEST(TaskCreators, SessionHelpersHandTheirSessionDown) {
  RestorePlan plan = WithSessionHelper();
  auto creators = TaskCreators(plan.pstree);
  ASSERT_TRUE(creators) << creators.error().ToString();
  EXPECT_EQ((*creators)[101], 90);
  EXPECT_EQ((*creators)[102], 100);
  EXPECT_TRUE(ValidatePlan(plan)) << Message(ValidatePlan(plan));
}

TEST(TaskCreators, BadHelpers) {
  auto with_helper = [](int pid, int parent, bool session) {
    RestorePlan plan = ThreeTasks();
    img::PsHelper* h = plan.pstree.add_helpers();
    h->set_pid(pid);
    h->set_parent(parent);
    h->set_session(session);
    auto r = TaskCreators(plan.pstree);
    return r ? std::string() : r.error().ToString();
  };
  EXPECT_NE(with_helper(105, 100, true).find("helper 105: its pid is not free"), std::string::npos);
  EXPECT_NE(with_helper(90, 55, true).find("helper 90: unknown parent 55"), std::string::npos);
  EXPECT_NE(with_helper(90, 102, false).find("its parent 102 is a zombie"), std::string::npos);
  // 101 in a session nobody hands down.
  RestorePlan plan = ThreeTasks();
  plan.pstree.mutable_tasks(1)->set_sid(91);
  auto r = TaskCreators(plan.pstree);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().ToString().find("task 101 is in session 91, which neither its parent nor"),
            std::string::npos)
      << r.error().ToString();
}

// ---- PlanTasks ----

// Gives `pid` fds 0..n-1 on file 1 (a plan's files aren't looked at by PlanTasks).
void GiveFds(RestorePlan& plan, int pid, int n) {
  for (int fd = 0; fd < n; ++fd) {
    img::FdEntry* e = plan.fdtables[pid].add_fds();
    e->set_fd(fd);
    e->set_file_id(1);
  }
}

ForkPlan MustPlan(const RestorePlan& plan) {
  auto r = PlanTasks(plan);
  EXPECT_TRUE(r) << (r ? "" : r.error().ToString());
  return r ? std::move(*r) : ForkPlan{};
}

TEST(PlanTasks, EachTaskItsOwnTableFsAndAddressSpace) {
  RestorePlan plan = ThreeTasks();
  GiveFds(plan, 100, 3);
  plan.mms[100].add_vmas()->set_kind(img::Vma::FILE_PRIVATE);  // a helper fd for the mapping
  ForkPlan f = MustPlan(plan);
  ASSERT_EQ(f.tasks.size(), 3u);
  const TaskPlan &root = f.tasks[0], &child = f.tasks[1], &zombie = f.tasks[2];
  EXPECT_EQ(root.children, (std::vector<size_t>{1, 2}));
  for (const TaskPlan* t : {&root, &child}) {
    EXPECT_FALSE(t->files_shared() || t->fs_shared() || t->vm_shared()) << t->ps->pid();
    EXPECT_TRUE(t->table_last()) << t->ps->pid();
    EXPECT_TRUE(t->unmaps_scratch()) << t->ps->pid();
  }
  EXPECT_NE(root.table, child.table);
  // Helpers sit just above the task's own fds: the mapping's, then the exe.
  EXPECT_EQ(root.keep_from, 3);
  EXPECT_EQ(root.helpers.vma_fd.at(0), 3);
  EXPECT_EQ(root.helpers.exe_fd, 4);
  EXPECT_EQ(root.helper_end, 5);
  EXPECT_EQ(child.keep_from, 0);
  EXPECT_EQ(child.helpers.exe_fd, 0);
  // The zombie shares nothing and has nothing to share.
  EXPECT_FALSE(zombie.table || zombie.fs || zombie.mm || zombie.core);
  EXPECT_FALSE(zombie.files_shared() || zombie.vm_shared() || zombie.table_last());
}

// 100 -> 101 -> 102, each made with CLONE_FILES and CLONE_FS from its parent: one table
// and one fs for the three. The holder installs the table; each then places its helpers
// above the one before it, and the last closes them all.
TEST(PlanTasks, OneFdTableAndFsSharedDownAChain) {
  RestorePlan plan;
  plan.pstree.set_root_pid(100);
  AddTask(plan, 100, 0, 100, 100);
  AddTask(plan, 101, 100, 100, 100)->set_files_share_with(100);
  AddTask(plan, 102, 101, 100, 100)->set_files_share_with(101);
  plan.pstree.mutable_tasks(1)->set_fs_share_with(100);
  plan.pstree.mutable_tasks(2)->set_fs_share_with(101);
  for (int pid : {100, 101, 102}) GiveFds(plan, pid, 2);
  plan.mms[101].add_vmas()->set_kind(img::Vma::ANON_SHARED);
  ForkPlan f = MustPlan(plan);
  ASSERT_EQ(f.tasks.size(), 3u);
  auto& t = f.tasks;
  EXPECT_EQ(t[0].table, t[1].table);
  EXPECT_EQ(t[1].table, t[2].table);
  EXPECT_EQ(t[0].table->holder, 0u);
  EXPECT_EQ(t[0].table->placers, (std::vector<size_t>{0, 1, 2}));
  EXPECT_FALSE(t[0].files_shared());
  EXPECT_TRUE(t[1].files_shared() && t[2].files_shared());
  EXPECT_EQ(t[1].table_prev(), 0u);
  EXPECT_EQ(t[2].table_prev(), 1u);
  EXPECT_FALSE(t[0].table_last() || t[1].table_last());
  EXPECT_TRUE(t[2].table_last());
  // Disjoint helper ranges, one after the other, above the table's own fds.
  EXPECT_EQ(t[0].helper_from, 2);
  EXPECT_EQ(t[0].helper_end, 3);  // the exe
  EXPECT_EQ(t[1].helper_from, 3);
  EXPECT_EQ(t[1].helpers.vma_fd.at(0), 3);
  EXPECT_EQ(t[1].helpers.exe_fd, 4);
  EXPECT_EQ(t[2].helper_from, 5);
  EXPECT_EQ(t[2].helper_end, 6);
  // The fs: the root holds it, both others open their helpers before it moves.
  EXPECT_EQ(t[0].fs, t[2].fs);
  EXPECT_EQ(t[0].fs->members, (std::vector<size_t>{1, 2}));
  EXPECT_TRUE(t[1].fs_shared() && !t[0].fs_shared());
  // Each has its own address space all the same.
  EXPECT_NE(t[0].mm, t[1].mm);
}

// A child made with CLONE_VM (and CLONE_FILES): it runs none of the restorer's code, so
// it takes its parent's scratch page, places no helpers, and the scratch page goes with
// it, the last of the address space.
TEST(PlanTasks, AClonedVmMember) {
  RestorePlan plan;
  plan.pstree.set_root_pid(100);
  AddTask(plan, 100, 0, 100, 100);
  img::PsTask* m = AddTask(plan, 101, 100, 100, 100);
  m->set_vm_share_with(100);
  m->set_files_share_with(100);
  plan.mms.erase(101);  // LoadPlan reads no mm image for it
  plan.pagemaps.erase(101);
  for (int pid : {100, 101}) GiveFds(plan, pid, 3);
  ForkPlan f = MustPlan(plan);
  ASSERT_EQ(f.tasks.size(), 2u);
  auto& t = f.tasks;
  EXPECT_EQ(t[0].mm, t[1].mm);
  EXPECT_EQ(t[0].mm->owner, 0u);
  EXPECT_TRUE(t[1].vm_shared() && !t[0].vm_shared());
  EXPECT_EQ(t[1].mm->image, &plan.mms[100]);
  EXPECT_FALSE(t[0].unmaps_scratch());
  EXPECT_TRUE(t[1].unmaps_scratch());
  EXPECT_EQ(t[1].helper_from, t[1].helper_end);
  // In its parent's table, but not one of its placers: the parent closes the helpers.
  EXPECT_TRUE(t[1].files_shared());
  EXPECT_EQ(t[0].table->placers, (std::vector<size_t>{0}));
  EXPECT_TRUE(t[0].table_last());
  EXPECT_FALSE(t[1].table_last());
  // Without CLONE_FILES it has a table of its own, which it closes itself.
  plan.pstree.mutable_tasks(1)->set_files_share_with(0);
  ForkPlan g = MustPlan(plan);
  ASSERT_EQ(g.tasks.size(), 2u);
  EXPECT_FALSE(g.tasks[1].files_shared());
  EXPECT_TRUE(g.tasks[1].table_last());
  EXPECT_TRUE(g.tasks[0].table_last());
}

// A task in a session whose leader is gone is created by the session's helper; the
// helper is created by the subreaper it was reparented to.
TEST(PlanTasks, GoneLeadersCreateTheirMembers) {
  RestorePlan plan = WithSessionHelper();
  ForkPlan f = MustPlan(plan);
  ASSERT_EQ(f.leaders.size(), 1u);
  EXPECT_EQ(f.leaders[0].pid, 90);
  EXPECT_TRUE(f.leaders[0].session);
  EXPECT_EQ(f.leaders[0].children, (std::vector<size_t>{1}));
  EXPECT_TRUE(f.tasks[1].by_helper);
  EXPECT_EQ(f.tasks[0].children, (std::vector<size_t>{2}));  // the zombie only
  EXPECT_EQ(f.tasks[0].leader_helpers, (std::vector<size_t>{0}));
}

// A parent makes the children of its own time namespace first, then unshares.
TEST(PlanTasks, ChildrenInTheParentsTimeNamespaceComeFirst) {
  RestorePlan plan;
  plan.pstree.set_root_pid(100);
  AddTask(plan, 100, 0, 100, 100);
  AddTask(plan, 101, 100, 100, 100)->mutable_time_ns()->set_id(7);
  AddTask(plan, 102, 100, 100, 100);
  ForkPlan f = MustPlan(plan);
  EXPECT_EQ(f.tasks[0].children, (std::vector<size_t>{2, 1}));
}

TEST(PlanTasks, BadPlans) {
  // The root can't share with a parent that isn't there.
  RestorePlan plan;
  plan.pstree.set_root_pid(100);
  AddTask(plan, 100, 0, 100, 100)->set_files_share_with(55);
  auto r = PlanTasks(plan);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().ToString().find("task 100 shares with a parent outside the tree"),
            std::string::npos)
      << r.error().ToString();
  // A CLONE_VM member must be created by its parent, not by a session helper.
  RestorePlan vm = WithSessionHelper();
  vm.pstree.mutable_tasks(1)->set_vm_share_with(100);
  r = PlanTasks(vm);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().ToString().find("task 101 shares the address space of 100, which does not "
                                      "create it"),
            std::string::npos)
      << r.error().ToString();
}

// ---- PlanLeaders (dump side) ----

// A pid no task on this machine has.
pid_t FreePid() {
  for (pid_t p = 4194000;; --p)
    if (access(("/proc/" + std::to_string(p)).c_str(), F_OK) != 0) return p;
}

TaskInfo Info(pid_t pid, pid_t ppid, pid_t sid, pid_t pgid) {
  TaskInfo t;
  t.pid = pid;
  t.ppid = ppid;
  t.sid = sid;
  t.pgid = pgid;
  t.tids = {pid};
  return t;
}

TEST(PlanLeaders, ATreeWithItsLeadersNeedsNoHelper) {
  auto p =
      PlanLeaders({Info(100, 1, 100, 100), Info(101, 100, 100, 101), Info(102, 101, 100, 101)});
  EXPECT_TRUE(p.helpers.empty());
  EXPECT_TRUE(p.problems.empty());
}

TEST(PlanLeaders, GoneLeadersGetHelpers) {
  pid_t gone_session = FreePid(), gone_group = gone_session - 1;
  ASSERT_NE(access(("/proc/" + std::to_string(gone_group)).c_str(), F_OK), 0);
  // 101's session leader exited (a daemon's grandchild); 102 is in a group whose leader
  // exited, in 101's session.
  auto p = PlanLeaders({Info(100, 1, 100, 100), Info(101, 100, gone_session, gone_session),
                        Info(102, 101, gone_session, gone_group)});
  ASSERT_TRUE(p.problems.empty()) << p.problems[0].reason;
  ASSERT_EQ(p.helpers.size(), 2u);
  EXPECT_EQ(p.helpers[0].pid(), gone_session);
  EXPECT_TRUE(p.helpers[0].session());
  EXPECT_EQ(p.helpers[0].parent(), 100);
  EXPECT_EQ(p.helpers[1].pid(), gone_group);
  EXPECT_FALSE(p.helpers[1].session());
  EXPECT_EQ(p.helpers[1].parent(), 101);  // made by 102's creator, in the session
}

TEST(PlanLeaders, ShapesThatCantBeMade) {
  auto reason = [](const LeaderPlan& p) {
    return p.problems.empty() ? std::string() : p.problems[0].what + ": " + p.problems[0].reason;
  };
  // The root's session leader is alive outside the tree (this test's own session).
  pid_t outside = getsid(0);
  auto p = PlanLeaders({Info(100, 1, outside, 100)});
  EXPECT_NE(reason(p).find("the session leader is outside the tree"), std::string::npos)
      << reason(p);
  // A task in another session than its parent, whose leader is alive in the tree.
  p = PlanLeaders({Info(100, 1, 100, 100), Info(101, 100, 101, 101), Info(102, 100, 101, 101)});
  EXPECT_NE(reason(p).find("nothing can hand the session down to it again"), std::string::npos)
      << reason(p);
  // Members of one gone session with different parents: no one helper can make them all.
  pid_t gone = FreePid();
  p = PlanLeaders({Info(100, 1, 100, 100), Info(101, 100, 101, 101), Info(102, 100, gone, gone),
                   Info(103, 101, gone, gone)});
  EXPECT_NE(reason(p).find("its members have different parents"), std::string::npos) << reason(p);
  // A task in the kernel's session 0 under a parent that is not (an orphan of a process
  // the kernel started, reparented to init): no helper can have pid 0.
  p = PlanLeaders({Info(1, 0, 1, 1), Info(200, 1, 0, 0)});
  EXPECT_NE(reason(p).find("the kernel's session 0"), std::string::npos) << reason(p);
  EXPECT_TRUE(p.helpers.empty());
}

}  // namespace
}  // namespace kleap
