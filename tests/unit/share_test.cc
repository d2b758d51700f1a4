// ValidateSharing (engine/share.cc): what pstree.img says tasks share is untrusted input.
#include "engine/share.h"

#include <gtest/gtest.h>

namespace kleap {
namespace {

// A root (1) and its child (2), each with an fd table of one fd and a cwd.
RestorePlan TwoTasks() {
  RestorePlan plan;
  plan.pstree.set_root_pid(1);
  for (int pid : {1, 2}) {
    img::PsTask* t = plan.pstree.add_tasks();
    t->set_pid(pid);
    t->set_ppid(pid == 1 ? 0 : 1);
    t->add_tids(pid);
    img::FdEntry* e = plan.fdtables[pid].add_fds();
    e->set_fd(3);
    e->set_file_id(7);
    plan.cores[pid].set_cwd("/tmp");
    plan.cores[pid].set_root("/");
    plan.cores[pid].set_umask(022);
  }
  return plan;
}

std::string Message(const Result<void>& r) {
  return r ? std::string() : r.error().ToString();
}

TEST(ValidateSharing, ParentSharing) {
  RestorePlan plan = TwoTasks();
  plan.pstree.mutable_tasks(1)->set_files_share_with(1);
  plan.pstree.mutable_tasks(1)->set_fs_share_with(1);
  EXPECT_TRUE(ValidateSharing(plan)) << Message(ValidateSharing(plan));
}

TEST(ValidateSharing, OnlyTheLiveParent) {
  RestorePlan plan = TwoTasks();
  plan.pstree.mutable_tasks(0)->set_files_share_with(2);  // the root with its child
  EXPECT_NE(Message(ValidateSharing(plan))
                .find("task 1 shares with 2, which is not its live "
                      "parent"),
            std::string::npos)
      << Message(ValidateSharing(plan));
  plan = TwoTasks();
  plan.pstree.mutable_tasks(1)->set_fs_share_with(99);
  EXPECT_FALSE(ValidateSharing(plan));
  plan = TwoTasks();
  plan.pstree.mutable_tasks(0)->set_zombie(true);
  plan.pstree.mutable_tasks(1)->set_files_share_with(1);
  EXPECT_FALSE(ValidateSharing(plan));
}

TEST(ValidateSharing, TheImagesMustAgree) {
  RestorePlan plan = TwoTasks();
  plan.pstree.mutable_tasks(1)->set_files_share_with(1);
  plan.fdtables[2].mutable_fds(0)->set_file_id(8);
  EXPECT_NE(Message(ValidateSharing(plan))
                .find("fdtable-2.img: the task shares its parent's fd "
                      "table, but its fds differ"),
            std::string::npos)
      << Message(ValidateSharing(plan));
  plan = TwoTasks();
  plan.pstree.mutable_tasks(1)->set_files_share_with(1);
  plan.fdtables[2].add_fds()->set_fd(4);
  EXPECT_FALSE(ValidateSharing(plan));
  plan = TwoTasks();
  plan.pstree.mutable_tasks(1)->set_fs_share_with(1);
  plan.cores[2].set_umask(077);
  EXPECT_NE(Message(ValidateSharing(plan)).find("core-2.img: the task shares its parent's cwd"),
            std::string::npos)
      << Message(ValidateSharing(plan));
}

TEST(ValidateSharing, AddressSpaceOfTheLiveParent) {
  RestorePlan plan = TwoTasks();
  plan.pstree.mutable_tasks(1)->set_vm_share_with(1);
  EXPECT_TRUE(ValidateSharing(plan)) << Message(ValidateSharing(plan));
  plan.pstree.mutable_tasks(0)->set_vm_share_with(2);  // the root with its child
  EXPECT_NE(Message(ValidateSharing(plan))
                .find("task 1 shares the address space of 2, which is not its live parent"),
            std::string::npos)
      << Message(ValidateSharing(plan));
  plan = TwoTasks();
  plan.pstree.mutable_tasks(1)->set_vm_share_with(1);
  plan.pstree.mutable_tasks(0)->set_zombie(true);
  EXPECT_FALSE(ValidateSharing(plan));
}

TEST(ValidateSharing, AddressSpaceMemberIsALeaf) {
  for (int shape = 0; shape < 4; ++shape) {
    RestorePlan plan = TwoTasks();
    plan.pstree.mutable_tasks(1)->set_vm_share_with(1);
    if (shape == 0) plan.pstree.mutable_tasks(1)->add_tids(3);
    if (shape == 1) {
      img::PsTask* t = plan.pstree.add_tasks();
      t->set_pid(4);
      t->set_ppid(2);
      t->add_tids(4);
    }
    if (shape == 2) plan.pstree.mutable_tasks(1)->set_sid(2);
    if (shape == 3) plan.pstree.mutable_tasks(1)->mutable_time_ns()->set_id(5);
    EXPECT_NE(Message(ValidateSharing(plan)).find("task 2 shares its parent's address space"),
              std::string::npos)
        << "shape " << shape << ": " << Message(ValidateSharing(plan));
  }
}

}  // namespace
}  // namespace kleap
