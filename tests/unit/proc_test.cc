// Tests for engine/base/proc.h: the /proc parsers on fixtures and on the live process.
#include "engine/base/proc.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/unique_fd.h"

namespace kleap {
namespace {

pid_t Tid() {
  return pid_t(syscall(SYS_gettid));
}

bool Contains(const std::vector<pid_t>& v, pid_t x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

// Calls every parser on every prefix of `text`: malformed input must give an error or a
// value, never a crash (run under ASan to catch out-of-bounds reads).
void FeedAllPrefixes(const std::string& text) {
  for (size_t n = 0; n <= text.size(); ++n) {
    std::string_view p(text.data(), n);
    (void)ParseMaps(p);
    (void)ParseSmaps(p);
    (void)ParseStat(p);
    (void)ProcStatus::Parse(p);
    (void)ParseFdInfo(p);
    (void)ParseMountInfo(p);
    (void)UnescapeOctal(p);
  }
}

// A temporary directory removed (recursively, shallow) at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/kleap-unit.XXXXXX";
    char* p = mkdtemp(tmpl.data());
    EXPECT_NE(p, nullptr) << strerror(errno);
    path_ = tmpl;
  }
  ~TempDir() { (void)system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Polls `cond` for up to ~2 s.
bool WaitFor(const std::function<bool()>& cond) {
  for (int i = 0; i < 200; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return cond();
}

// ---------------------------------------------------------------- small helpers

TEST(ProcHelpers, SplitString) {
  EXPECT_EQ(SplitString("a b  c", ' '), (std::vector<std::string>{"a", "b", "", "c"}));
  EXPECT_EQ(SplitString("", ','), (std::vector<std::string>{""}));
  EXPECT_EQ(SplitString("x,", ','), (std::vector<std::string>{"x", ""}));
  EXPECT_EQ(SplitString(",", ','), (std::vector<std::string>{"", ""}));
}

TEST(ProcHelpers, Trim) {
  EXPECT_EQ(Trim("  a b\t\n"), "a b");
  EXPECT_EQ(Trim("\t\n "), "");
  EXPECT_EQ(Trim(""), "");
  EXPECT_EQ(Trim("x"), "x");
}

TEST(ProcHelpers, ParseNumber) {
  auto pers = ParseNumber("00400000\n", 16, "/proc/1/personality");
  ASSERT_TRUE(pers.has_value()) << pers.error().ToString();
  EXPECT_EQ(*pers, 0x400000u);
  auto umask = ParseNumber("0022", 8, "Umask");
  ASSERT_TRUE(umask.has_value());
  EXPECT_EQ(*umask, 022u);
  // What std::stoul threw on, or read half of, is an error that names the field.
  for (const char* bad : {"", "\n", "zz", "12xy", "-1", "99999999999999999999"}) {
    auto r = ParseNumber(bad, 16, "/proc/7/personality");
    ASSERT_FALSE(r.has_value()) << bad;
    EXPECT_NE(r.error().message().find("/proc/7/personality"), std::string::npos);
  }
  EXPECT_FALSE(ParseNumber("8", 8, "Umask").has_value());
}

TEST(ProcHelpers, ProcPath) {
  EXPECT_EQ(ProcPath(12, "maps"), "/proc/12/maps");
  EXPECT_EQ(ProcPath(1, "task/3/stat"), "/proc/1/task/3/stat");
  // The kernel's names: lowercase hex without 0x, all 64 bits.
  EXPECT_EQ(MapFilesPath(12, 0x7f00a000, 0x7f00c000), "/proc/12/map_files/7f00a000-7f00c000");
  EXPECT_EQ(MapFilesPath(0, 0xfffff000ULL << 32, ~0ULL),
            "/proc/self/map_files/fffff00000000000-ffffffffffffffff");
}

TEST(ProcHelpers, UnescapeOctal) {
  EXPECT_EQ(UnescapeOctal("a\\040b"), "a b");
  EXPECT_EQ(UnescapeOctal("\\011tab\\012nl\\134bs"), "\ttab\nnl\\bs");
  EXPECT_EQ(UnescapeOctal("plain"), "plain");
  EXPECT_EQ(UnescapeOctal(""), "");
  // Incomplete or non-octal escapes stay as they are.
  EXPECT_EQ(UnescapeOctal("end\\"), "end\\");
  EXPECT_EQ(UnescapeOctal("end\\04"), "end\\04");
  EXPECT_EQ(UnescapeOctal("\\089"), "\\089");
  EXPECT_EQ(UnescapeOctal("\\0401"), " 1");
}

TEST(ProcHelpers, ReadFileToStringAndWrite) {
  TempDir dir;
  std::string path = dir.path() + "/f";
  // WriteStringToFile does not create the file.
  auto w0 = WriteStringToFile(path, "x");
  ASSERT_FALSE(w0);
  EXPECT_EQ(w0.error().code(), ENOENT);
  EXPECT_NE(w0.error().message().find(path), std::string::npos);
  UniqueFd fd(open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.ok());
  // Larger than ReadFileToString's internal buffer.
  std::string big(100000, 'q');
  big[12345] = '\0';
  ASSERT_TRUE(WriteStringToFile(path, big));
  auto r = ReadFileToString(path);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, big);
  auto missing = ReadFileToString(dir.path() + "/nope");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), ENOENT);
  EXPECT_NE(missing.error().ToString().find("open "), std::string::npos);
}

TEST(ProcHelpers, ReadLink) {
  TempDir dir;
  std::string link = dir.path() + "/l";
  ASSERT_EQ(symlink("/some/where with space", link.c_str()), 0);
  auto r = ReadLink(link);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(*r, "/some/where with space");
  auto bad = ReadLink(dir.path());  // not a link
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), EINVAL);
  auto exe = ReadLink("/proc/self/exe");
  ASSERT_TRUE(exe);
  EXPECT_EQ(exe->front(), '/');
}

// ---------------------------------------------------------------- maps / smaps

constexpr const char* kMapsFixture =
    "00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon\n"
    "00651000-00652000 r--p 00051000 08:02 173521      /usr/bin/dbus-daemon\n"
    "00e03000-00e24000 rw-p 00000000 00:00 0           [heap]\n"
    "7f2c3d000000-7f2c3d021000 rw-p 00000000 00:00 0 \n"
    "7f2c3d100000-7f2c3d200000 rw-s 00000000 00:05 1234 /dev/shm/my file  with spaces\n"
    "7f2c3d300000-7f2c3d301000 r--p 00001000 fd:1a 99                         /tmp/gone (deleted)\n"
    "7f2c3d400000-7f2c3d401000 ---p 00000000 00:00 0\n"
    "7ffd1b9f0000-7ffd1b9f2000 r-xp 00000000 00:00 0                          [vdso]\n"
    "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";

TEST(ParseMaps, Fixture) {
  auto r = ParseMaps(kMapsFixture);
  ASSERT_TRUE(r) << r.error().ToString();
  const auto& m = *r;
  ASSERT_EQ(m.size(), 9u);

  EXPECT_EQ(m[0].start, 0x400000u);
  EXPECT_EQ(m[0].end, 0x452000u);
  EXPECT_EQ(m[0].size(), 0x52000u);
  EXPECT_TRUE(m[0].read);
  EXPECT_FALSE(m[0].write);
  EXPECT_TRUE(m[0].exec);
  EXPECT_FALSE(m[0].shared);
  EXPECT_EQ(m[0].offset, 0u);
  EXPECT_EQ(m[0].dev_major, 8u);
  EXPECT_EQ(m[0].dev_minor, 2u);
  EXPECT_EQ(m[0].inode, 173521u);
  EXPECT_EQ(m[0].path, "/usr/bin/dbus-daemon");
  EXPECT_TRUE(m[0].vm_flags.empty());

  EXPECT_EQ(m[1].offset, 0x51000u);
  EXPECT_FALSE(m[1].exec);

  EXPECT_EQ(m[2].path, "[heap]");
  EXPECT_TRUE(m[2].write);

  // Anonymous line with a trailing space and no path.
  EXPECT_EQ(m[3].start, 0x7f2c3d000000u);
  EXPECT_EQ(m[3].end, 0x7f2c3d021000u);
  EXPECT_EQ(m[3].path, "");
  EXPECT_EQ(m[3].inode, 0u);

  // Path with spaces (including a double space) kept verbatim; shared mapping.
  EXPECT_TRUE(m[4].shared);
  EXPECT_EQ(m[4].dev_minor, 5u);
  EXPECT_EQ(m[4].inode, 1234u);
  EXPECT_EQ(m[4].path, "/dev/shm/my file  with spaces");

  // Hex device numbers; "(deleted)" stays part of the path.
  EXPECT_EQ(m[5].dev_major, 0xfdu);
  EXPECT_EQ(m[5].dev_minor, 0x1au);
  EXPECT_EQ(m[5].offset, 0x1000u);
  EXPECT_EQ(m[5].path, "/tmp/gone (deleted)");

  // No-path line without a trailing space; no permissions.
  EXPECT_EQ(m[6].path, "");
  EXPECT_FALSE(m[6].read || m[6].write || m[6].exec || m[6].shared);

  EXPECT_EQ(m[7].path, "[vdso]");
  EXPECT_TRUE(m[7].exec);
  EXPECT_EQ(m[8].start, 0xffffffffff600000u);
  EXPECT_EQ(m[8].path, "[vsyscall]");
}

TEST(ParseMaps, EmptyInputAndBlankLines) {
  auto e = ParseMaps("");
  ASSERT_TRUE(e);
  EXPECT_TRUE(e->empty());
  auto b = ParseMaps("\n\n00400000-00401000 r--p 00000000 00:00 0\n\n");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->size(), 1u);
}

TEST(ParseMaps, MalformedLinesAreErrors) {
  const char* bad[] = {
      "garbage",
      "00400000-00452000",
      "00400000-00452000 r-xp 00000000 08:02",             // no inode
      "00400000 r-xp 00000000 08:02 1 /x",                 // no dash
      "0040zz00-00452000 r-xp 00000000 08:02 1 /x",        // bad hex
      "00452000-00400000 r-xp 00000000 08:02 1 /x",        // end < start
      "00400000-00452000 rw 00000000 08:02 1 /x",          // short perms
      "00400000-00452000 r-xp 0000g000 08:02 1 /x",        // bad offset
      "00400000-00452000 r-xp 00000000 0802 1 /x",         // no colon in dev
      "00400000-00452000 r-xp 00000000 08:zz 1 /x",        // bad minor
      "00400000-00452000 r-xp 00000000 08:02 1a /x",       // inode is decimal
      "00400000-00452000 r-xp 00000000 08:02 -1 /x",       // negative inode
      "10000000000000000-10000000000000001 r-xp 0 0:0 0",  // range overflows 64 bits
  };
  for (const char* line : bad) {
    auto r = ParseMaps(line);
    EXPECT_FALSE(r) << "accepted: " << line;
    if (!r) {
      EXPECT_EQ(r.error().code(), EINVAL) << line;
    }
  }
  // One bad line spoils the whole file.
  std::string text = std::string(kMapsFixture) + "oops\n";
  EXPECT_FALSE(ParseMaps(text));
}

constexpr const char* kSmapsFixture =
    "7f2c3d000000-7f2c3d021000 rw-p 00000000 00:00 0 \n"
    "Size:                132 kB\n"
    "KernelPageSize:        4 kB\n"
    "Rss:                   8 kB\n"
    "Anonymous:             8 kB\n"
    "THPeligible:    0\n"
    "ProtectionKey:         0\n"
    "VmFlags: rd wr mr mw me ac sd \n"
    "7f2c3d100000-7f2c3d200000 rw-s 00000000 00:05 1234 /dev/shm/a - b\n"
    "Size:               1024 kB\n"
    "VmFlags: rd wr sh mr mw me ms dc dd\n"
    "7ffd1b9f0000-7ffd1b9f2000 r-xp 00000000 00:00 0                          [vdso]\n"
    "Size:                  8 kB\n"
    "VmFlags: rd ex mr mw me de sd\n";

TEST(ParseSmaps, FixtureVmFlags) {
  auto r = ParseSmaps(kSmapsFixture);
  ASSERT_TRUE(r) << r.error().ToString();
  const auto& m = *r;
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].start, 0x7f2c3d000000u);
  EXPECT_EQ(m[0].path, "");
  EXPECT_EQ(m[0].vm_flags, (std::vector<std::string>{"rd", "wr", "mr", "mw", "me", "ac", "sd"}));
  EXPECT_TRUE(m[0].HasFlag("ac"));
  EXPECT_FALSE(m[0].HasFlag("ex"));
  EXPECT_FALSE(m[0].HasFlag("a"));  // whole words only
  EXPECT_EQ(m[1].path, "/dev/shm/a - b");
  EXPECT_TRUE(m[1].shared);
  EXPECT_TRUE(m[1].HasFlag("sh"));
  EXPECT_TRUE(m[1].HasFlag("dc"));
  EXPECT_TRUE(m[1].HasFlag("dd"));
  EXPECT_EQ(m[1].vm_flags.size(), 9u);
  EXPECT_EQ(m[2].path, "[vdso]");
  EXPECT_TRUE(m[2].HasFlag("de"));
  EXPECT_TRUE(m[2].HasFlag("ex"));
}

TEST(ParseSmaps, RangesWithoutVmFlags) {
  // Plain maps text is valid smaps input: ranges only, no flags.
  auto r = ParseSmaps(kMapsFixture);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->size(), 9u);
  for (const auto& e : *r) EXPECT_TRUE(e.vm_flags.empty());
}

TEST(ParseSmaps, Malformed) {
  auto r = ParseSmaps("VmFlags: rd wr\n7f2c3d000000-7f2c3d021000 rw-p 00000000 00:00 0\n");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), EINVAL);
  EXPECT_FALSE(ParseSmaps("7f2c3d000000-7f2c3d021000 rw-p zz 00:00 0\nVmFlags: rd\n"));
}

TEST(ParseMaps, LiveSelf) {
  // An anonymous mapping with known protections, inside a PROT_NONE guard region so it is
  // not merged with a neighbour.
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  char* guard =
      static_cast<char*>(mmap(nullptr, 5 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(guard, MAP_FAILED);
  char* mid = guard + page;
  ASSERT_EQ(mprotect(mid, 3 * page, PROT_READ | PROT_EXEC), 0);

  auto r = ReadMaps(getpid());
  ASSERT_TRUE(r) << r.error().ToString();
  auto text = ReadFileToString("/proc/self/maps");
  ASSERT_TRUE(text);
  EXPECT_GT(r->size(), 5u);

  bool found_mid = false, found_stack = false, found_vdso = false, found_exe = false;
  auto exe = ReadLink("/proc/self/exe");
  ASSERT_TRUE(exe);
  int local = 0;
  uint64_t local_addr = reinterpret_cast<uintptr_t>(&local);
  uint64_t prev_end = 0;
  for (const auto& e : *r) {
    EXPECT_LT(e.start, e.end);
    EXPECT_GE(e.start, prev_end) << "maps not sorted / overlapping";
    prev_end = e.end;
    if (e.start == reinterpret_cast<uintptr_t>(mid)) {
      found_mid = true;
      EXPECT_EQ(e.size(), 3 * page);
      EXPECT_TRUE(e.read);
      EXPECT_FALSE(e.write);
      EXPECT_TRUE(e.exec);
      EXPECT_FALSE(e.shared);
      EXPECT_EQ(e.path, "");
      EXPECT_EQ(e.inode, 0u);
    }
    if (e.path == "[stack]") {
      found_stack = true;
      EXPECT_TRUE(local_addr >= e.start && local_addr < e.end) << "local var not in [stack]";
    }
    if (e.path == "[vdso]") found_vdso = true;
    if (e.path == *exe) found_exe = true;
  }
  EXPECT_TRUE(found_mid);
  EXPECT_TRUE(found_stack);
  EXPECT_TRUE(found_vdso);
  EXPECT_TRUE(found_exe) << "no mapping of " << *exe;
  munmap(guard, 5 * page);
}

TEST(ParseMaps, LiveFileWithSpacesAndDeleted) {
  TempDir dir;
  std::string path = dir.path() + "/a file  with spaces";
  UniqueFd fd(open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.ok()) << strerror(errno);
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  ASSERT_EQ(ftruncate(fd.get(), off_t(4 * page)), 0);
  struct stat st;
  ASSERT_EQ(fstat(fd.get(), &st), 0);
  // Map pages 1..2 of the file, shared.
  void* addr = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), off_t(page));
  ASSERT_NE(addr, MAP_FAILED);

  auto find = [&](const std::vector<MapsEntry>& maps) -> const MapsEntry* {
    for (const auto& e : maps)
      if (e.start == reinterpret_cast<uintptr_t>(addr)) return &e;
    return nullptr;
  };
  auto r = ReadMaps(getpid());
  ASSERT_TRUE(r) << r.error().ToString();
  const MapsEntry* e = find(*r);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->path, path);
  EXPECT_EQ(e->size(), 2 * page);
  EXPECT_EQ(e->offset, page);
  EXPECT_TRUE(e->shared);
  EXPECT_TRUE(e->write);
  EXPECT_EQ(e->inode, uint64_t(st.st_ino));
  EXPECT_EQ(e->dev_major, major(st.st_dev));
  EXPECT_EQ(e->dev_minor, minor(st.st_dev));

  ASSERT_EQ(unlink(path.c_str()), 0);
  auto r2 = ReadMaps(getpid());
  ASSERT_TRUE(r2) << r2.error().ToString();
  e = find(*r2);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->path, path + " (deleted)");
  munmap(addr, 2 * page);
}

TEST(ParseSmaps, LiveVmFlags) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  char* guard =
      static_cast<char*>(mmap(nullptr, 6 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(guard, MAP_FAILED);
  char* a = guard + page;      // rw, DONTFORK + DONTDUMP
  char* b = guard + 3 * page;  // r only, untouched flags
  ASSERT_EQ(mprotect(a, page, PROT_READ | PROT_WRITE), 0);
  ASSERT_EQ(mprotect(b, page, PROT_READ), 0);
  ASSERT_EQ(madvise(a, page, MADV_DONTFORK), 0);
  ASSERT_EQ(madvise(a, page, MADV_DONTDUMP), 0);

  auto r = ReadSmaps(getpid());
  ASSERT_TRUE(r) << r.error().ToString();
  // Same ranges as maps (modulo changes between the two reads: compare our two entries).
  const MapsEntry *ea = nullptr, *eb = nullptr;
  size_t with_flags = 0;
  for (const auto& e : *r) {
    if (!e.vm_flags.empty()) ++with_flags;
    if (e.start == reinterpret_cast<uintptr_t>(a)) ea = &e;
    if (e.start == reinterpret_cast<uintptr_t>(b)) eb = &e;
  }
  EXPECT_EQ(with_flags, r->size()) << "every smaps range has a VmFlags line";
  ASSERT_NE(ea, nullptr);
  ASSERT_NE(eb, nullptr);
  EXPECT_EQ(ea->size(), page);
  EXPECT_TRUE(ea->HasFlag("rd"));
  EXPECT_TRUE(ea->HasFlag("wr"));
  EXPECT_TRUE(ea->HasFlag("dc")) << "MADV_DONTFORK";
  EXPECT_TRUE(ea->HasFlag("dd")) << "MADV_DONTDUMP";
  EXPECT_FALSE(ea->HasFlag("ex"));
  EXPECT_TRUE(eb->HasFlag("rd"));
  EXPECT_FALSE(eb->HasFlag("wr"));
  EXPECT_FALSE(eb->HasFlag("dc"));
  EXPECT_FALSE(eb->HasFlag("dd"));
  munmap(guard, 6 * page);
}

// ---------------------------------------------------------------- stat

// Builds a /proc/PID/stat line: fields[n] is field n of proc(5) (1-based), 52 fields.
std::string MakeStat(const std::string& comm, std::map<int, std::string> over = {}) {
  std::string s;
  for (int n = 1; n <= 52; ++n) {
    std::string v;
    if (over.count(n)) {
      v = over[n];
    } else if (n == 1) {
      v = "4321";
    } else if (n == 2) {
      v = "(" + comm + ")";
    } else if (n == 3) {
      v = "S";
    } else {
      v = std::to_string(1000 + n);  // distinct per field, to catch off-by-one indexing
    }
    if (n > 1) s += ' ';
    s += v;
  }
  return s + "\n";
}

TEST(ParseStat, FieldNumbering) {
  auto r = ParseStat(MakeStat("bash"));
  ASSERT_TRUE(r) << r.error().ToString();
  const ProcStat& st = *r;
  EXPECT_EQ(st.pid, 4321);
  EXPECT_EQ(st.comm, "bash");
  EXPECT_EQ(st.state, 'S');
  EXPECT_EQ(st.ppid, 1004);
  EXPECT_EQ(st.pgrp, 1005);
  EXPECT_EQ(st.session, 1006);
  EXPECT_EQ(st.tty_nr, 1007);
  EXPECT_EQ(st.flags, 1009u);
  EXPECT_EQ(st.num_threads, 1020u);
  EXPECT_EQ(st.start_time, 1022u);
  EXPECT_EQ(st.start_code, 1026u);
  EXPECT_EQ(st.end_code, 1027u);
  EXPECT_EQ(st.start_stack, 1028u);
  EXPECT_EQ(st.exit_signal, 1038);
  EXPECT_EQ(st.start_data, 1045u);
  EXPECT_EQ(st.end_data, 1046u);
  EXPECT_EQ(st.start_brk, 1047u);
  EXPECT_EQ(st.arg_start, 1048u);
  EXPECT_EQ(st.arg_end, 1049u);
  EXPECT_EQ(st.env_start, 1050u);
  EXPECT_EQ(st.env_end, 1051u);
}

TEST(ParseStat, NastyComm) {
  for (std::string comm :
       {"a b", "x) S 1 2 3 (", ")", "((", "() ()", "", " lead", "tail ", "a)\nb"}) {
    auto r = ParseStat(MakeStat(comm, {{3, "R"}, {4, "77"}}));
    ASSERT_TRUE(r) << "comm '" << comm << "': " << r.error().ToString();
    EXPECT_EQ(r->comm, comm);
    EXPECT_EQ(r->state, 'R');
    EXPECT_EQ(r->ppid, 77);
  }
}

TEST(ParseStat, BigAndNegativeValues) {
  auto r = ParseStat(MakeStat("k", {{7, "-1"},
                                    {9, "18446744073709551615"},
                                    {26, "94000000000000"},
                                    {28, "140720000000000"},
                                    {38, "17"}}));
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->tty_nr, -1);
  EXPECT_EQ(r->flags, UINT64_MAX);
  EXPECT_EQ(r->start_code, 94000000000000u);
  EXPECT_EQ(r->start_stack, 140720000000000u);
  EXPECT_EQ(r->exit_signal, 17);
}

TEST(ParseStat, Malformed) {
  std::string good = MakeStat("ok");
  std::string no_last = good.substr(0, good.rfind(' '));  // 51 fields
  std::vector<std::string> bad = {
      "",
      "1234",
      "1234 (unterminated S 1 2",
      "1234 )x( S",
      "abc (x) S" + good.substr(good.find(") S") + 3),  // bad pid
      no_last,
      MakeStat("x", {{3, "SS"}}),    // state must be one char
      MakeStat("x", {{4, "one"}}),   // non-numeric ppid
      MakeStat("x", {{22, "-5"}}),   // negative unsigned start_time
      MakeStat("x", {{51, "12z"}}),  // trailing junk
      MakeStat("x", {{6, ""}}),      // empty field (double space)
  };
  for (const auto& s : bad) {
    auto r = ParseStat(s);
    EXPECT_FALSE(r) << "accepted: " << s;
    if (!r) {
      EXPECT_EQ(r.error().code(), EINVAL);
    }
  }
}

TEST(ParseStat, LiveSelf) {
  auto r = ReadStat(getpid());
  ASSERT_TRUE(r) << r.error().ToString();
  const ProcStat& st = *r;
  EXPECT_EQ(st.pid, getpid());
  EXPECT_EQ(st.ppid, getppid());
  EXPECT_EQ(st.pgrp, getpgrp());
  EXPECT_EQ(st.session, getsid(0));
  EXPECT_EQ(st.state, 'R');
  EXPECT_GE(st.num_threads, 1u);
  EXPECT_EQ(st.exit_signal, SIGCHLD);
  auto comm = ReadFileToString("/proc/self/comm");
  ASSERT_TRUE(comm);
  EXPECT_EQ(st.comm, std::string(Trim(*comm)));

  // Code range holds this function; brk is at or above start_brk.
  uintptr_t fn = reinterpret_cast<uintptr_t>(&MakeStat);
  EXPECT_LE(st.start_code, fn);
  EXPECT_GT(st.end_code, fn);
  EXPECT_LE(st.start_brk, reinterpret_cast<uintptr_t>(sbrk(0)));
  // The argument area holds exactly /proc/self/cmdline.
  auto cmdline = ReadFileToString("/proc/self/cmdline");
  ASSERT_TRUE(cmdline);
  ASSERT_GT(st.arg_end, st.arg_start);
  std::string args(reinterpret_cast<const char*>(st.arg_start), st.arg_end - st.arg_start);
  EXPECT_EQ(args, *cmdline);
  EXPECT_GE(st.env_end, st.env_start);
}

TEST(ParseStat, LiveThreadWithNastyComm) {
  // A thread names itself with spaces and parentheses; read it back by tid.
  const char* name = "x) (y z";  // 7 chars, under the 15-char limit
  std::atomic<pid_t> tid{0};
  std::atomic<bool> done{false};
  std::thread t([&] {
    prctl(PR_SET_NAME, name, 0, 0, 0);
    tid = Tid();
    while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (tid == 0) std::this_thread::yield();
  auto r = ReadStat(getpid(), tid);
  auto main_st = ReadStat(getpid(), Tid());
  done = true;
  t.join();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->pid, tid.load());
  EXPECT_EQ(r->comm, name);
  EXPECT_EQ(r->ppid, getppid());
  EXPECT_EQ(r->num_threads, 2u);
  ASSERT_TRUE(main_st);
  EXPECT_NE(main_st->comm, name);
  EXPECT_EQ(main_st->pid, getpid());
}

TEST(ParseStat, ReadMissingPid) {
  // pid_max is at most 4M; a pid above it cannot exist.
  auto r = ReadStat(1 << 23);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ENOENT);
}

// ---------------------------------------------------------------- status

constexpr const char* kStatusFixture =
    "Name:\tmy proc: x\n"
    "Umask:\t0022\n"
    "State:\tS (sleeping)\n"
    "Tgid:\t1234\n"
    "Pid:\t1235\n"
    "PPid:\t1\n"
    "Uid:\t1000\t1001\t1002\t1003\n"
    "Gid:\t100\t101\t102\t103\n"
    "Groups:\t4 24 27 \n"
    "NSpid:\t1235\t7\n"
    "VmRSS:\t    1234 kB\n"
    "Threads:\t3\n"
    "SigQ:\t0/62811\n"
    "SigBlk:\t0000000000010002\n"
    "SigIgn:\tfffffffe7ffbfeff\n"
    "CapEff:\t000001ffffffffff\n"
    "Seccomp:\t0\n";

TEST(ProcStatus, Fixture) {
  auto r = ProcStatus::Parse(kStatusFixture);
  ASSERT_TRUE(r) << r.error().ToString();
  const ProcStatus& s = *r;
  EXPECT_TRUE(s.Has("Name"));
  EXPECT_FALSE(s.Has("Nope"));
  EXPECT_EQ(*s.Get("Name"), "my proc: x");  // only the first colon separates
  EXPECT_EQ(*s.Get("State"), "S (sleeping)");
  EXPECT_EQ(*s.GetInt("Tgid"), 1234);
  EXPECT_EQ(*s.GetInt("Pid"), 1235);
  EXPECT_EQ(*s.GetInt("Threads"), 3);
  EXPECT_EQ(*s.GetInt("Seccomp"), 0);

  auto uid = s.GetIds("Uid");
  ASSERT_TRUE(uid) << uid.error().ToString();
  EXPECT_EQ(*uid, (std::vector<uint32_t>{1000, 1001, 1002, 1003}));
  auto gid = s.GetIds("Gid");
  ASSERT_TRUE(gid);
  EXPECT_EQ(*gid, (std::vector<uint32_t>{100, 101, 102, 103}));
  auto groups = s.GetIds("Groups");  // space separated, trailing space
  ASSERT_TRUE(groups);
  EXPECT_EQ(*groups, (std::vector<uint32_t>{4, 24, 27}));

  EXPECT_EQ(*s.GetHex("SigBlk"), 0x10002u);
  EXPECT_EQ(*s.GetHex("SigIgn"), 0xfffffffe7ffbfeffull);
  EXPECT_EQ(*s.GetHex("CapEff"), 0x1ffffffffffull);
  EXPECT_EQ(*s.GetHex("Umask"), 0x22u);

  auto missing = s.Get("Nope");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), ENOENT);
  EXPECT_EQ(s.GetInt("Nope").error().code(), ENOENT);
  EXPECT_EQ(s.GetHex("Nope").error().code(), ENOENT);
  EXPECT_EQ(s.GetIds("Nope").error().code(), ENOENT);
  // Typed accessors reject values of the wrong shape.
  EXPECT_EQ(s.GetInt("Name").error().code(), EINVAL);
  EXPECT_EQ(s.GetInt("SigQ").error().code(), EINVAL);
  EXPECT_EQ(s.GetHex("State").error().code(), EINVAL);
  EXPECT_EQ(s.GetIds("State").error().code(), EINVAL);
}

TEST(ProcStatus, Malformed) {
  EXPECT_FALSE(ProcStatus::Parse(""));
  EXPECT_FALSE(ProcStatus::Parse("\n\n"));
  EXPECT_FALSE(ProcStatus::Parse("no colon here\nnor here"));
  auto r = ProcStatus::Parse("Uid:\t1\t-2\nSigBlk:\t00zz\nEmpty:\n");
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->GetIds("Uid"));
  EXPECT_FALSE(r->GetHex("SigBlk"));
  EXPECT_FALSE(r->GetInt("Empty"));
  EXPECT_EQ(*r->Get("Empty"), "");
}

TEST(ProcStatus, LiveSelf) {
  // Block SIGUSR2 on this (the main) thread while reading status.
  sigset_t add, old;
  sigemptyset(&add);
  sigaddset(&add, SIGUSR2);
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &add, &old), 0);
  auto r = ReadStatus(getpid(), Tid());
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ASSERT_TRUE(r) << r.error().ToString();
  const ProcStatus& s = *r;

  EXPECT_EQ(*s.GetInt("Pid"), Tid());
  EXPECT_EQ(*s.GetInt("Tgid"), getpid());
  EXPECT_EQ(*s.GetInt("PPid"), getppid());

  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  ASSERT_EQ(getresuid(&ru, &eu, &su), 0);
  ASSERT_EQ(getresgid(&rg, &eg, &sg), 0);
  auto uid = s.GetIds("Uid");
  ASSERT_TRUE(uid);
  ASSERT_EQ(uid->size(), 4u);
  EXPECT_EQ((*uid)[0], ru);
  EXPECT_EQ((*uid)[1], eu);
  EXPECT_EQ((*uid)[2], su);
  EXPECT_EQ((*uid)[3], uint32_t(setfsuid(uid_t(-1))));  // -1: query only
  auto gid = s.GetIds("Gid");
  ASSERT_TRUE(gid);
  ASSERT_EQ(gid->size(), 4u);
  EXPECT_EQ((*gid)[0], rg);
  EXPECT_EQ((*gid)[1], eg);
  EXPECT_EQ((*gid)[2], sg);

  auto blk = s.GetHex("SigBlk");
  ASSERT_TRUE(blk) << blk.error().ToString();
  EXPECT_TRUE(*blk & (1ull << (SIGUSR2 - 1))) << std::hex << *blk;
  uint64_t old_bits = 0;
  for (int sig = 1; sig <= 64; ++sig)
    if (sigismember(&old, sig) == 1) old_bits |= 1ull << (sig - 1);
  EXPECT_EQ(*blk, old_bits | (1ull << (SIGUSR2 - 1)));

  // CapEff equals what capget reports.
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  ASSERT_EQ(syscall(SYS_capget, &hdr, data), 0);
  uint64_t eff = (uint64_t(data[1].effective) << 32) | data[0].effective;
  auto capeff = s.GetHex("CapEff");
  ASSERT_TRUE(capeff);
  EXPECT_EQ(*capeff, eff);

  // After unblocking, a fresh read no longer shows SIGUSR2.
  auto r2 = ReadStatus(getpid());
  ASSERT_TRUE(r2);
  EXPECT_FALSE(*r2->GetHex("SigBlk") & (1ull << (SIGUSR2 - 1)));
}

// ---------------------------------------------------------------- fdinfo

TEST(ParseFdInfo, Fixture) {
  auto r = ParseFdInfo(
      "pos:\t12345\n"
      "flags:\t02104002\n"
      "mnt_id:\t29\n"
      "ino:\t1038\n"
      "eventfd-count:               1a\n"
      "eventfd-id: 1\n"
      "eventfd-semaphore: 0\n");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->pos, 12345u);
  EXPECT_EQ(r->flags, 02104002u);
  EXPECT_EQ(r->flags & O_ACCMODE, unsigned(O_RDWR));
  EXPECT_TRUE(r->flags & O_CLOEXEC);
  EXPECT_TRUE(r->flags & O_NONBLOCK);
  EXPECT_EQ(r->mnt_id, 29);
  EXPECT_EQ(r->ino, 1038u);
  EXPECT_EQ(r->extra.size(), 3u);
  EXPECT_EQ(r->extra.find("eventfd-count")->second, "1a");
  EXPECT_EQ(r->extra.find("eventfd-id")->second, "1");
  EXPECT_EQ(r->extra.find("eventfd-semaphore")->second, "0");
  EXPECT_EQ(r->extra.count("pos"), 0u);
  EXPECT_EQ(r->extra.count("flags"), 0u);
}

TEST(ParseFdInfo, MinimalAndOldKernel) {
  // Kernels before mnt_id/ino: only pos and flags.
  auto r = ParseFdInfo("pos:\t0\nflags:\t0100000\n");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->pos, 0u);
  EXPECT_EQ(r->flags, 0100000u);
  EXPECT_EQ(r->mnt_id, -1);
  EXPECT_EQ(r->ino, 0u);
  EXPECT_TRUE(r->extra.empty());
}

TEST(ParseFdInfo, ExtraKeysWithSpacesAndColons) {
  auto r = ParseFdInfo(
      "pos:\t0\nflags:\t02000000\nmnt_id:\t15\n"
      "inotify wd:1 ino:2 sdev:3 mask:fff ignored_mask:0\n"
      "sigmask:\t0000000000000200\n");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->extra.find("sigmask")->second, "0000000000000200");
  EXPECT_EQ(r->extra.find("inotify wd")->second, "1 ino:2 sdev:3 mask:fff ignored_mask:0");
}

TEST(ParseFdInfo, RepeatedKeysAreAllKept) {
  // An epoll fd lists one tfd: line per target.
  auto r = kleap::ParseFdInfo(
      "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n"
      "tfd:        5 events:       19 data:                5  pos:0 ino:2b3 sdev:f\n"
      "tfd:        7 events:        1 data:                7  pos:0 ino:2b5 sdev:f\n");
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->extra.count("tfd"), 2u);
  auto range = r->extra.equal_range("tfd");
  EXPECT_NE(range.first->second.find("events:"), std::string::npos);
  EXPECT_EQ(std::next(range.first)->second.rfind("7 ", 0), 0u);
}

TEST(ParseFdInfo, BadNumbersAreErrors) {
  EXPECT_FALSE(kleap::ParseFdInfo("pos:\t0\nflags:\t02\nmnt_id:\t12x\n"));
  EXPECT_FALSE(kleap::ParseFdInfo("pos:\t0\nflags:\t02\nino:\tabc\n"));
}

TEST(ParseFdInfo, Malformed) {
  const char* bad[] = {
      "",
      "pos:\t1\n",                // no flags
      "flags:\t02\n",             // no pos
      "pos:\tx\nflags:\t02\n",    // bad pos
      "pos:\t1\nflags:\t09\n",    // flags are octal
      "pos:\t-1\nflags:\t02\n",   // unsigned
      "pos:\t1 2\nflags:\t02\n",  // trailing junk
      "garbage without colon\n",
  };
  for (const char* s : bad) {
    auto r = ParseFdInfo(s);
    EXPECT_FALSE(r) << "accepted: " << s;
    if (!r) {
      EXPECT_EQ(r.error().code(), EINVAL);
    }
  }
}

TEST(ParseFdInfo, LiveFile) {
  TempDir dir;
  std::string path = dir.path() + "/f";
  UniqueFd fd(open(path.c_str(), O_CREAT | O_RDWR | O_APPEND | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.ok());
  ASSERT_EQ(write(fd.get(), "0123456789", 10), 10);
  ASSERT_EQ(lseek(fd.get(), 7, SEEK_SET), 7);
  struct stat st;
  ASSERT_EQ(fstat(fd.get(), &st), 0);
  auto r = ReadFdInfo(getpid(), fd.get());
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->pos, 7u);
  EXPECT_EQ(r->flags & O_ACCMODE, unsigned(O_RDWR));
  EXPECT_TRUE(r->flags & O_APPEND);
  EXPECT_TRUE(r->flags & O_CLOEXEC);
  EXPECT_FALSE(r->flags & O_NONBLOCK);
  EXPECT_EQ(r->ino, uint64_t(st.st_ino));
  // The mount id names a mount in our mountinfo with the file's device.
  ASSERT_GE(r->mnt_id, 0);
  auto mounts = ReadMountInfo(getpid());
  ASSERT_TRUE(mounts) << mounts.error().ToString();
  const MountInfo* m = nullptr;
  for (const auto& mi : *mounts)
    if (mi.mnt_id == r->mnt_id) m = &mi;
  ASSERT_NE(m, nullptr) << "mnt_id " << r->mnt_id << " not in mountinfo";
  EXPECT_EQ(m->dev_major, major(st.st_dev));
  EXPECT_EQ(m->dev_minor, minor(st.st_dev));

  auto bad = ReadFdInfo(getpid(), 1 << 20);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ENOENT);
}

TEST(ParseFdInfo, LiveProcFileAndEventfd) {
  UniqueFd pfd(open("/proc/self/status", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(pfd.ok());
  auto r = ReadFdInfo(getpid(), pfd.get());
  ASSERT_TRUE(r) << r.error().ToString();
  auto mounts = ReadMountInfo(getpid());
  ASSERT_TRUE(mounts);
  bool found = false;
  for (const auto& mi : *mounts)
    if (mi.mnt_id == r->mnt_id) {
      found = true;
      EXPECT_EQ(mi.fstype, "proc");
    }
  EXPECT_TRUE(found);

  UniqueFd efd(eventfd(26, EFD_NONBLOCK | EFD_CLOEXEC));
  ASSERT_TRUE(efd.ok());
  auto e = ReadFdInfo(getpid(), efd.get());
  ASSERT_TRUE(e) << e.error().ToString();
  EXPECT_TRUE(e->flags & O_NONBLOCK);
  ASSERT_EQ(e->extra.count("eventfd-count"), 1u);
  EXPECT_EQ(e->extra.find("eventfd-count")->second, "1a");  // the kernel prints it in hex
}

// ---------------------------------------------------------------- mountinfo

constexpr const char* kMountInfoFixture =
    "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "40 36 0:50 /dir\\040with\\040space /mnt/my\\040mount\\011tab rw,relatime shared:5 master:2 "
    "propagate_from:1 - tmpfs tmp\\134fs rw,size=1024k\n"
    "41 40 259:3 / /boot rw shared:7 - vfat /dev/nvme0n1p3 rw,fmask=0022\n";

TEST(ParseMountInfo, Fixture) {
  auto r = ParseMountInfo(kMountInfoFixture);
  ASSERT_TRUE(r) << r.error().ToString();
  const auto& m = *r;
  ASSERT_EQ(m.size(), 4u);

  EXPECT_EQ(m[0].mnt_id, 36);
  EXPECT_EQ(m[0].parent_id, 35);
  EXPECT_EQ(m[0].dev_major, 98u);
  EXPECT_EQ(m[0].dev_minor, 0u);
  EXPECT_EQ(m[0].root, "/mnt1");
  EXPECT_EQ(m[0].mount_point, "/mnt2");
  EXPECT_EQ(m[0].mount_options, "rw,noatime");
  EXPECT_EQ(m[0].optional_fields, (std::vector<std::string>{"master:1"}));
  EXPECT_EQ(m[0].fstype, "ext3");
  EXPECT_EQ(m[0].source, "/dev/root");
  EXPECT_EQ(m[0].super_options, "rw,errors=continue");

  // No optional fields.
  EXPECT_TRUE(m[1].optional_fields.empty());
  EXPECT_EQ(m[1].fstype, "proc");
  EXPECT_EQ(m[1].mount_point, "/proc");

  // Octal escapes in root, mount point and source; three optional fields.
  EXPECT_EQ(m[2].root, "/dir with space");
  EXPECT_EQ(m[2].mount_point, "/mnt/my mount\ttab");
  EXPECT_EQ(m[2].source, "tmp\\fs");
  EXPECT_EQ(m[2].optional_fields,
            (std::vector<std::string>{"shared:5", "master:2", "propagate_from:1"}));
  EXPECT_EQ(m[2].fstype, "tmpfs");
  EXPECT_EQ(m[2].super_options, "rw,size=1024k");

  // Decimal major above 255.
  EXPECT_EQ(m[3].dev_major, 259u);
  EXPECT_EQ(m[3].dev_minor, 3u);
}

TEST(ParseMountInfo, Malformed) {
  const char* bad[] = {
      "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 ext3 /dev/root rw",  // no " - "
      "36 35 98:0 /mnt1 /mnt2 - ext3 /dev/root rw",                    // no mount options
      "36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root",                    // no super options
      "x 35 98:0 / / rw - ext3 /dev/root rw",                          // bad id
      "36 35 980 / / rw - ext3 /dev/root rw",                          // no colon in dev
      "36 35 98:y / / rw - ext3 /dev/root rw",                         // bad minor
  };
  for (const char* s : bad) {
    auto r = ParseMountInfo(s);
    EXPECT_FALSE(r) << "accepted: " << s;
    if (!r) {
      EXPECT_EQ(r.error().code(), EINVAL);
    }
  }
  auto empty = ParseMountInfo("");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
}

TEST(ParseMountInfo, LiveSelf) {
  auto r = ReadMountInfo(getpid());
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_FALSE(r->empty());
  bool have_root = false;
  for (const auto& m : *r) {
    EXPECT_GT(m.mnt_id, 0);
    EXPECT_FALSE(m.mount_point.empty());
    EXPECT_EQ(m.mount_point[0], '/');
    EXPECT_FALSE(m.fstype.empty());
    if (m.mount_point == "/") have_root = true;
  }
  EXPECT_TRUE(have_root);
}

TEST(ParseMountInfo, LiveEscapedMountPoint) {
  // In a private mount namespace of a child, mount a tmpfs on a path with a space and a
  // tab, and check that the child reads it back unescaped. Needs CAP_SYS_ADMIN.
  TempDir dir;
  std::string mp = dir.path() + "/mount point\twith tab";
  ASSERT_EQ(mkdir(mp.c_str(), 0700), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (unshare(CLONE_NEWNS) != 0) _exit(77);
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(77);
    if (mount("kleap\\src x", mp.c_str(), "tmpfs", 0, "size=64k") != 0) _exit(77);
    auto r = ReadMountInfo(getpid());
    if (!r) _exit(2);
    for (const auto& m : *r)
      if (m.mount_point == mp) _exit(m.fstype == "tmpfs" && m.source == "kleap\\src x" ? 0 : 3);
    _exit(4);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77)
    GTEST_SKIP() << "cannot create a mount namespace and mount tmpfs here";
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "2: read failed, 3: wrong fstype/source, 4: mount point not found";
}

// ---------------------------------------------------------------- task listings

TEST(ListThreads, SeesSecondThread) {
  // Threads of earlier tests may linger in /proc for a moment after their join.
  ASSERT_TRUE(WaitFor([] {
    auto v = ListThreads(getpid());
    return v && *v == std::vector<pid_t>{getpid()};
  })) << "test expects a single-threaded process";

  std::atomic<pid_t> tid{0};
  std::atomic<bool> done{false};
  std::thread t([&] {
    tid = Tid();
    while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (tid == 0) std::this_thread::yield();
  auto during = ListThreads(getpid());
  done = true;
  t.join();
  ASSERT_TRUE(during) << during.error().ToString();
  std::vector<pid_t> want{getpid(), tid.load()};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(*during, want);  // sorted

  // The exited thread leaves /proc shortly after join.
  EXPECT_TRUE(WaitFor([] {
    auto v = ListThreads(getpid());
    return v && v->size() == 1;
  }));
}

TEST(ListThreads, MissingPid) {
  auto r = ListThreads(1 << 23);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ENOENT);
  EXPECT_NE(r.error().message().find("/task"), std::string::npos);
}

// Forks a child that sleeps until killed; returns its pid.
pid_t ForkSleeper() {
  pid_t c = fork();
  if (c == 0) {
    for (;;) pause();
  }
  return c;
}

void KillAndReap(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
}

TEST(ListChildren, MainThreadAndOtherThread) {
  if (access(ProcPath(getpid(), "task/" + std::to_string(getpid()) + "/children").c_str(), F_OK) !=
      0)
    GTEST_SKIP() << "kernel without CONFIG_PROC_CHILDREN";
  auto none = ListChildren(getpid(), getpid());
  ASSERT_TRUE(none) << none.error().ToString();

  pid_t c1 = ForkSleeper();
  ASSERT_GT(c1, 0);
  // A second child, forked by another thread, is listed under that thread only.
  pid_t c2 = -1, thread_tid = 0;
  std::vector<pid_t> in_thread;
  std::thread t([&] {
    thread_tid = Tid();
    c2 = ForkSleeper();
    auto r = ListChildren(getpid(), thread_tid);
    if (r) in_thread = *r;
  });
  t.join();
  auto main_list = ListChildren(getpid(), getpid());
  KillAndReap(c1);
  KillAndReap(c2);
  ASSERT_GT(c2, 0);

  EXPECT_TRUE(Contains(in_thread, c2));
  EXPECT_FALSE(Contains(in_thread, c1));
  ASSERT_TRUE(main_list) << main_list.error().ToString();
  EXPECT_TRUE(Contains(*main_list, c1));
  for (pid_t p : *none) EXPECT_NE(p, c1);

  auto after = ListChildren(getpid(), getpid());
  ASSERT_TRUE(after);
  EXPECT_FALSE(Contains(*after, c1));
  EXPECT_FALSE(Contains(*after, c2));
}

TEST(ListChildren, MissingTask) {
  auto r = ListChildren(getpid(), 1 << 23);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ENOENT);
}

TEST(ListFds, SeesOpenAndClosed) {
  auto before = ListFds(getpid());
  ASSERT_TRUE(before) << before.error().ToString();
  EXPECT_TRUE(std::is_sorted(before->begin(), before->end()));
  // A high, sparse fd number.
  UniqueFd fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.ok());
  struct rlimit rl;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
  const int high = int(std::min<rlim_t>(987, rl.rlim_cur - 1));
  ASSERT_GT(high, fd.get());
  ASSERT_EQ(dup3(fd.get(), high, O_CLOEXEC), high);
  UniqueFd hfd(high);
  auto during = ListFds(getpid());
  ASSERT_TRUE(during);
  EXPECT_TRUE(std::find(during->begin(), during->end(), fd.get()) != during->end());
  EXPECT_TRUE(std::find(during->begin(), during->end(), high) != during->end());
  EXPECT_TRUE(std::is_sorted(during->begin(), during->end()));
  fd.reset();
  hfd.reset();
  auto after = ListFds(getpid());
  ASSERT_TRUE(after);
  // Same fd state as at the start (the directory fd of the listing itself reuses the
  // lowest free number, so the closed low fd may show up again as that).
  EXPECT_EQ(*after, *before);
  EXPECT_TRUE(std::find(after->begin(), after->end(), high) == after->end());
  EXPECT_FALSE(ListFds(1 << 23));
}

// ---------------------------------------------------------------- robustness

TEST(ProcParsers, EveryPrefixOfEveryFixtureIsHandled) {
  FeedAllPrefixes(kMapsFixture);
  FeedAllPrefixes(kSmapsFixture);
  FeedAllPrefixes(MakeStat("a) (b"));
  FeedAllPrefixes(kStatusFixture);
  FeedAllPrefixes("pos:\t1\nflags:\t02\nmnt_id:\t3\nino:\t4\nx: y\n");
  FeedAllPrefixes(kMountInfoFixture);
  FeedAllPrefixes("\\\\0\\04\\040\\");
  SUCCEED();
}

TEST(ProcParsers, ArbitraryBytes) {
  // Deterministic pseudo-random garbage drawn from the characters the parsers care about.
  const char alphabet[] = "0123456789abcdefABCDEF-:() \t\n\\rwxsp-/[]kBVmFlags";
  uint32_t x = 12345;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s;
    size_t len = (x >> 3) % 200;
    for (size_t i = 0; i < len; ++i) {
      x = x * 1103515245u + 12345u;
      s.push_back(alphabet[(x >> 16) % (sizeof alphabet - 1)]);
    }
    x = x * 1103515245u + 12345u;
    (void)ParseMaps(s);
    (void)ParseSmaps(s);
    (void)ParseStat(s);
    (void)ProcStatus::Parse(s);
    (void)ParseFdInfo(s);
    (void)ParseMountInfo(s);
    (void)UnescapeOctal(s);
  }
  SUCCEED();
}

}  // namespace
}  // namespace kleap
