// The new kernel's command line, built from the running one.
#include <gtest/gtest.h>

#include "upgrader/kexec.h"

namespace kleap::upgrader {
namespace {

TEST(KexecCmdline, AddsStoreAndEntryAndKeepsMemmap) {
  CmdlineOptions o;
  o.current = "BOOT_IMAGE=/vmlinuz-6.1 root=/dev/vda1 ro console=ttyS0 memmap=256M!768M quiet";
  o.store = "pmem:/dev/pmem0";
  o.entry = "init=/usr/lib/kleap/kleap-init";
  auto r = BuildCmdline(o);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r,
            "BOOT_IMAGE=/vmlinuz-6.1 root=/dev/vda1 ro console=ttyS0 memmap=256M!768M quiet "
            "kleap.resume=pmem:/dev/pmem0 init=/usr/lib/kleap/kleap-init");
}

TEST(KexecCmdline, OldInitMovesToKleapInit) {
  CmdlineOptions o;
  o.current = "root=/dev/sda init=/lib/systemd/systemd rdinit=/init2 memmap=1G!4G";
  o.store = "pmem:/dev/pmem0";
  o.entry = "init=/usr/lib/kleap/kleap-init";
  auto r = BuildCmdline(o);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r,
            "root=/dev/sda rdinit=/init2 memmap=1G!4G kleap.resume=pmem:/dev/pmem0 "
            "kleap.init=/lib/systemd/systemd init=/usr/lib/kleap/kleap-init");
}

TEST(KexecCmdline, OldKleapParametersAreReplaced) {
  CmdlineOptions o;
  o.current = "console=ttyS0 kleap.resume=dir:/old kleap.init=/x memmap=256M!768M";
  o.store = "pmem:/dev/pmem1";
  auto r = BuildCmdline(o);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, "console=ttyS0 memmap=256M!768M kleap.resume=pmem:/dev/pmem1 kleap.init=/x");
}

TEST(KexecCmdline, InitArgumentsStayAfterDashDash) {
  CmdlineOptions o;
  o.current = "console=ttyS0 memmap=256M!768M -- --single arg";
  o.store = "pmem:/dev/pmem0";
  o.entry = "rdinit=/kleap-init";
  o.append = "kleaptest.phase=2";
  auto r = BuildCmdline(o);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r,
            "console=ttyS0 memmap=256M!768M kleap.resume=pmem:/dev/pmem0 rdinit=/kleap-init "
            "kleaptest.phase=2 -- --single arg");
}

TEST(KexecCmdline, ASecondUpgradeKeepsTheRealInit) {
  // The command line a first upgrade left: kleap-init must not become its own fallback.
  CmdlineOptions o;
  o.current =
      "root=/dev/sda memmap=1G!4G kleap.resume=pmem:/dev/pmem0 kleap.init=/sbin/init "
      "init=/usr/lib/kleap/kleap-init";
  o.store = "pmem:/dev/pmem0";
  o.entry = "init=/usr/lib/kleap/kleap-init";
  auto r = BuildCmdline(o);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r,
            "root=/dev/sda memmap=1G!4G kleap.resume=pmem:/dev/pmem0 kleap.init=/sbin/init "
            "init=/usr/lib/kleap/kleap-init");
}

TEST(KexecCmdline, OnlyTheEntrysOwnParameterMoves) {
  CmdlineOptions o;
  o.current = "init=/lib/systemd/systemd-custom memmap=256M!768M";
  o.store = "pmem:/dev/pmem0";
  o.entry = "rdinit=/kleap-init";
  auto r = BuildCmdline(o);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r,
            "init=/lib/systemd/systemd-custom memmap=256M!768M kleap.resume=pmem:/dev/pmem0 "
            "rdinit=/kleap-init");
}

TEST(KexecCmdline, PmemStoreNeedsAMemmapRegion) {
  CmdlineOptions o;
  o.current = "root=/dev/vda1 ro";
  o.store = "pmem:/dev/pmem0";
  auto r = BuildCmdline(o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().ToString().find("needs a memmap= region"), std::string::npos)
      << r.error().ToString();
  o.store = "dir:/var/lib/kleap";  // a dir store doesn't
  EXPECT_TRUE(BuildCmdline(o));
}

TEST(KexecCmdline, BadEntryAndQuotes) {
  CmdlineOptions o;
  o.current = "a=\"x y\" b";
  o.entry = "foo=/bar";
  EXPECT_FALSE(BuildCmdline(o));
  EXPECT_EQ(SplitCmdline("a=\"x y\"  b\n"), (std::vector<std::string>{"a=\"x y\"", "b"}));
}

TEST(KexecLoad, MissingKernelIsNamed) {
  auto r = Load({"/nonexistent/vmlinuz", "", "console=ttyS0"});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().ToString().find("kernel image /nonexistent/vmlinuz"), std::string::npos);
}

}  // namespace
}  // namespace kleap::upgrader
