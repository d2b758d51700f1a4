// The dump's own check of the set it wrote (CheckPlan, engine/restore_plan.h): a real
// child holding one fd of every kind is dumped (--leave-running), then one field of
// each kind's image is damaged in turn. CheckPlan, which the dump runs before it
// commits and the restore runs before it creates anything, must refuse each, naming
// the object; the undamaged set must pass.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "engine/context.h"
#include "engine/engine.h"
#include "engine/images/image_set.h"
#include "engine/restore_plan.h"

namespace kleap {
namespace {

// The child: one fd of every kind kleap carries, then it waits to be killed.
[[noreturn]] void Hold(const std::string& dir, int ready) {
  setsid();
  std::string file = dir + "/file";
  int reg = open(file.c_str(), O_RDWR | O_CREAT, 0644);
  int p[2], us[2];
  bool ok = reg >= 0 && pipe(p) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, us) == 0;
  int efd = eventfd(1, 0);
  int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
  sigset_t m;
  sigemptyset(&m);
  sigaddset(&m, SIGUSR2);
  int sfd = signalfd(-1, &m, 0);
  int ep = epoll_create1(0);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ok = ok && epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) == 0;
  int in = inotify_init1(0);
  ok = ok && inotify_add_watch(in, file.c_str(), IN_MODIFY) > 0;
  int tcp = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ok = ok && bind(tcp, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && listen(tcp, 4) == 0;
  int nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
  int ptm = posix_openpt(O_RDWR | O_NOCTTY);
  int mfd = memfd_create("kleap-dump-check", 0);
  ok = ok && efd >= 0 && tfd >= 0 && sfd >= 0 && in >= 0 && nl >= 0 && ptm >= 0 && mfd >= 0 &&
       write(mfd, "m", 1) == 1 && unlockpt(ptm) == 0;
  (void)!write(ready, ok ? "y" : "n", 1);
  for (;;) pause();
}

class DumpCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/kleap-dump-check.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    int ready[2];
    ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
    child_ = fork();
    ASSERT_GE(child_, 0);
    if (child_ == 0) Hold(dir_, ready[1]);
    close(ready[1]);
    char c = 0;
    ASSERT_EQ(read(ready[0], &c, 1), 1);
    close(ready[0]);
    ASSERT_EQ(c, 'y') << "the child could not make its fds";
    auto writer = CreateDirImageSet(dir_ + "/set");
    ASSERT_TRUE(writer) << writer.error().ToString();
    DumpOptions opts;
    opts.root = child_;
    opts.leave_running = true;
    auto dumped = DumpTree(opts, **writer);
    ASSERT_TRUE(dumped) << dumped.error().ToString();
    auto reader = OpenDirImageSet(dir_ + "/set");
    ASSERT_TRUE(reader) << reader.error().ToString();
    auto plan = LoadPlan(**reader);
    ASSERT_TRUE(plan) << plan.error().ToString();
    plan_ = std::move(*plan);
  }
  void TearDown() override {
    if (child_ > 0) {
      kill(child_, SIGKILL);
      waitpid(child_, nullptr, 0);
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::string dir_;
  pid_t child_ = -1;
  RestorePlan plan_;
};

TEST_F(DumpCheck, EveryKindsDamageIsCaughtBeforeTheCommit) {
  ASSERT_TRUE(CheckPlan(plan_)) << CheckPlan(plan_).error().ToString();
  using Kind = img::FileObject::KindCase;
  // One damaged field a kind, each one the restore could not have made again.
  std::map<Kind, std::function<void(img::FileObject&)>> damage = {
      {img::FileObject::kReg, [](auto& f) { f.mutable_reg()->set_flags(0x40000000); }},
      {img::FileObject::kPipe, [](auto& f) { f.mutable_pipe()->set_flags(O_RDWR); }},
      {img::FileObject::kEventfd, [](auto& f) { f.mutable_eventfd()->set_flags(O_WRONLY); }},
      {img::FileObject::kTimerfd, [](auto& f) { f.mutable_timerfd()->set_clockid(99); }},
      {img::FileObject::kSignalfd, [](auto& f) { f.mutable_signalfd()->set_flags(O_RDONLY); }},
      {img::FileObject::kEpoll,
       [](auto& f) { f.mutable_epoll()->mutable_targets(0)->set_tfd(-1); }},
      {img::FileObject::kInotify,
       [](auto& f) { f.mutable_inotify()->mutable_watches(0)->set_wd(0); }},
      {img::FileObject::kUnixSock, [](auto& f) { f.mutable_unix_sock()->set_type(99); }},
      {img::FileObject::kInetSock, [](auto& f) { f.mutable_inet_sock()->set_family(99); }},
      {img::FileObject::kNetlinkSock, [](auto& f) { f.mutable_netlink_sock()->set_protocol(99); }},
      {img::FileObject::kTty, [](auto& f) { f.mutable_tty()->set_flags(O_ACCMODE); }},
      {img::FileObject::kMemfd, [](auto& f) { f.mutable_memfd()->set_shmem_id(0); }},
  };
  std::map<Kind, bool> seen;
  for (int i = 0; i < plan_.files.files_size(); ++i) {
    Kind k = plan_.files.files(i).kind_case();
    if (seen[k]) continue;
    seen[k] = true;
    auto d = damage.find(k);
    ASSERT_NE(d, damage.end()) << "kind " << int(k) << " has no damage to try";
    RestorePlan bad = plan_;
    img::FileObject& f = *bad.files.mutable_files(i);
    d->second(f);
    auto r = CheckPlan(bad);
    ASSERT_FALSE(r) << "kind " << int(k) << ": damaged, and not refused";
    std::string msg = r.error().ToString();
    EXPECT_NE(msg.find("files.img"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(f.id())), std::string::npos) << msg;
  }
  for (auto& [k, fn] : damage) EXPECT_TRUE(seen[k]) << "the dump held no file of kind " << int(k);
}

TEST_F(DumpCheck, TheTasksImagesToo) {
  pid_t pid = child_;
  auto refused = [&](const char* what, const std::function<void(RestorePlan&)>& fn,
                     const std::string& want) {
    RestorePlan bad = plan_;
    fn(bad);
    auto r = CheckPlan(bad);
    ASSERT_FALSE(r) << what << ": damaged, and not refused";
    EXPECT_NE(r.error().ToString().find(want), std::string::npos)
        << what << ": " << r.error().ToString();
  };
  refused(
      "pstree", [](RestorePlan& p) { *p.pstree.add_tasks() = p.pstree.tasks(0); },
      "repeated pid " + std::to_string(pid));
  refused(
      "core", [&](RestorePlan& p) { p.cores[pid].mutable_threads(0)->set_tid(pid + 1); },
      std::to_string(pid));
  refused(
      "mm", [&](RestorePlan& p) { p.mms[pid].mutable_vmas(0)->set_end(1); },
      "mm-" + std::to_string(pid));
  refused(
      "pagemap",
      [&](RestorePlan& p) {
        auto* r = p.pagemaps[pid].add_runs();
        r->set_vaddr(0x1000);
        r->set_nr_pages(1);
      },
      std::to_string(pid));
  refused(
      "fd table", [&](RestorePlan& p) { p.fdtables[pid].mutable_fds(0)->set_file_id(999999); },
      "fdtable-" + std::to_string(pid));
  refused(
      "file owner",
      [&](RestorePlan& p) {
        auto* o = p.files.mutable_files(0)->mutable_owner();
        o->set_type(F_OWNER_PID);
        o->set_pid(pid + 100000);
      },
      "is not in the set");
}

}  // namespace
}  // namespace kleap
