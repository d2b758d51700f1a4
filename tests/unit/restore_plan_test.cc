// Restore planning (engine/restore_plan.cc, engine/leaders.cc): what pstree.img and the
// task images say is untrusted input, checked before anything is created.
#include <gtest/gtest.h>

#include "engine/context.h"
#include "engine/leaders.h"
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

// Gone leaders: a helper stands in for each, and TaskCreators says who creates whom.
TEST(TaskCreators, SessionHelpersHandTheirSessionDown) {
  RestorePlan plan = ThreeTasks();
  plan.cores[100].set_child_subreaper(true);
  // 101 is in session 90, whose leader is gone: a session helper made by 100 creates it.
  plan.pstree.mutable_tasks(1)->set_sid(90);
  img::PsHelper* h = plan.pstree.add_helpers();
  h->set_pid(90);
  h->set_parent(100);
  h->set_session(true);
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

}  // namespace
}  // namespace kleap
