#include "engine/base/proc.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <climits>
#include <cstdio>

#include "engine/base/unique_fd.h"

namespace kleap {

Result<std::string> ReadFileToString(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError() << "open " << path;
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError() << "read " << path;
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  return out;
}

Result<std::string> ReadLink(const std::string& path) {
  char buf[PATH_MAX + 1];
  ssize_t n = readlink(path.c_str(), buf, sizeof buf - 1);
  if (n < 0) return ErrnoError() << "readlink " << path;
  return std::string(buf, size_t(n));
}

Result<void> WriteStringToFile(const std::string& path, std::string_view data) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoError() << "open " << path;
  while (!data.empty()) {
    ssize_t n = write(fd.get(), data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError() << "write " << path;
    if (n == 0) return Err(EIO) << "write " << path << ": no progress";
    data.remove_prefix(size_t(n));
  }
  return Ok();
}

std::vector<std::string> SplitString(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (;;) {
    size_t e = s.find(sep, b);
    if (e == std::string_view::npos) {
      out.emplace_back(s.substr(b));
      return out;
    }
    out.emplace_back(s.substr(b, e - b));
    b = e + 1;
  }
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

std::string ProcPath(pid_t pid, std::string_view rest) {
  return "/proc/" + std::to_string(pid) + "/" + std::string(rest);
}

std::string MapFilesPath(pid_t pid, uint64_t start, uint64_t end) {
  char range[64];
  snprintf(range, sizeof range, "map_files/%" PRIx64 "-%" PRIx64, start, end);
  return pid == 0 ? std::string("/proc/self/") + range : ProcPath(pid, range);
}

std::string UnescapeOctal(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 4 <= s.size() &&
        std::all_of(s.begin() + i + 1, s.begin() + i + 4,
                    [](char c) { return c >= '0' && c <= '7'; })) {
      out.push_back(char((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

namespace {

// Assigns *out only when all of s is a number.
template <class T>
bool ParseNum(std::string_view s, T* out, int base = 10) {
  T v{};
  auto r = std::from_chars(s.data(), s.data() + s.size(), v, base);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || s.empty()) return false;
  *out = v;
  return true;
}

// Splits on runs of spaces, returning at most max_fields; the last takes the rest.
std::vector<std::string_view> Fields(std::string_view line, size_t max_fields) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size() && out.size() + 1 < max_fields) {
    while (i < line.size() && line[i] == ' ') ++i;
    if (i >= line.size()) break;
    size_t e = line.find(' ', i);
    if (e == std::string_view::npos) e = line.size();
    out.push_back(line.substr(i, e - i));
    i = e;
  }
  while (i < line.size() && line[i] == ' ') ++i;
  if (i < line.size()) out.push_back(line.substr(i));
  return out;
}

Result<MapsEntry> ParseMapsLine(std::string_view line) {
  auto f = Fields(line, 6);
  if (f.size() < 5) return Err(EINVAL) << "maps: short line '" << line << "'";
  MapsEntry m;
  auto dash = f[0].find('-');
  if (dash == std::string_view::npos || !ParseNum(f[0].substr(0, dash), &m.start, 16) ||
      !ParseNum(f[0].substr(dash + 1), &m.end, 16) || m.end < m.start)
    return Err(EINVAL) << "maps: bad range '" << f[0] << "'";
  if (f[1].size() != 4) return Err(EINVAL) << "maps: bad perms '" << f[1] << "'";
  m.read = f[1][0] == 'r';
  m.write = f[1][1] == 'w';
  m.exec = f[1][2] == 'x';
  m.shared = f[1][3] == 's';
  auto colon = f[3].find(':');
  if (!ParseNum(f[2], &m.offset, 16) || colon == std::string_view::npos ||
      !ParseNum(f[3].substr(0, colon), &m.dev_major, 16) ||
      !ParseNum(f[3].substr(colon + 1), &m.dev_minor, 16) || !ParseNum(f[4], &m.inode))
    return Err(EINVAL) << "maps: bad offset/dev/inode in '" << line << "'";
  if (f.size() > 5) m.path = std::string(f[5]);
  return m;
}

bool IsMapsLine(std::string_view line) {
  // Range lines start with hex digits and a dash; smaps key lines start with a capital word.
  auto sp = line.find(' ');
  auto dash = line.find('-');
  return dash != std::string_view::npos && sp != std::string_view::npos && dash < sp;
}

}  // namespace

bool MapsEntry::HasFlag(std::string_view f) const {
  return std::find(vm_flags.begin(), vm_flags.end(), f) != vm_flags.end();
}

Result<std::vector<MapsEntry>> ParseMaps(std::string_view text) {
  std::vector<MapsEntry> out;
  for (auto& line : SplitString(text, '\n')) {
    if (line.empty()) continue;
    out.push_back(KLEAP_TRY(ParseMapsLine(line)));
  }
  return out;
}

Result<std::vector<MapsEntry>> ReadMaps(pid_t pid) {
  auto text = KLEAP_TRY(ReadFileToString(ProcPath(pid, "maps")));
  return ParseMaps(text);
}

Result<std::vector<MapsEntry>> ParseSmaps(std::string_view text) {
  std::vector<MapsEntry> out;
  for (auto& line : SplitString(text, '\n')) {
    if (line.empty()) continue;
    if (IsMapsLine(line)) {
      out.push_back(KLEAP_TRY(ParseMapsLine(line)));
    } else if (line.rfind("VmFlags:", 0) == 0) {
      if (out.empty()) return Err(EINVAL) << "smaps: VmFlags before any range";
      for (auto& fl : SplitString(Trim(std::string_view(line).substr(8)), ' '))
        if (!fl.empty()) out.back().vm_flags.push_back(fl);
    }
  }
  return out;
}

Result<std::vector<MapsEntry>> ReadSmaps(pid_t pid) {
  auto text = KLEAP_TRY(ReadFileToString(ProcPath(pid, "smaps")));
  return ParseSmaps(text);
}

Result<ProcStat> ParseStat(std::string_view text) {
  auto open = text.find('(');
  auto close = text.rfind(')');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open)
    return Err(EINVAL) << "stat: no comm in parentheses";
  ProcStat st;
  if (!ParseNum(Trim(text.substr(0, open)), &st.pid)) return Err(EINVAL) << "stat: bad pid";
  st.comm = std::string(text.substr(open + 1, close - open - 1));
  // Fields after comm, numbered from 3 as in proc(5).
  auto rest = SplitString(Trim(text.substr(close + 1)), ' ');
  if (rest.size() < 50) return Err(EINVAL) << "stat: " << rest.size() + 2 << " fields, need 52";
  auto field = [&](int n) -> std::string_view { return rest[size_t(n - 3)]; };
  bool ok = field(3).size() == 1;
  st.state = field(3)[0];
  ok = ok && ParseNum(field(4), &st.ppid) && ParseNum(field(5), &st.pgrp) &&
       ParseNum(field(6), &st.session) && ParseNum(field(7), &st.tty_nr) &&
       ParseNum(field(8), &st.tpgid) && ParseNum(field(9), &st.flags) &&
       ParseNum(field(20), &st.num_threads) && ParseNum(field(22), &st.start_time) &&
       ParseNum(field(26), &st.start_code) && ParseNum(field(27), &st.end_code) &&
       ParseNum(field(28), &st.start_stack) && ParseNum(field(38), &st.exit_signal) &&
       ParseNum(field(45), &st.start_data) && ParseNum(field(46), &st.end_data) &&
       ParseNum(field(47), &st.start_brk) && ParseNum(field(48), &st.arg_start) &&
       ParseNum(field(49), &st.arg_end) && ParseNum(field(50), &st.env_start) &&
       ParseNum(field(51), &st.env_end) && ParseNum(field(52), &st.exit_code);
  if (!ok) return Err(EINVAL) << "stat: bad numeric field for pid " << st.pid;
  return st;
}

Result<ProcStat> ReadStat(pid_t pid, pid_t tid) {
  std::string path =
      tid ? ProcPath(pid, "task/" + std::to_string(tid) + "/stat") : ProcPath(pid, "stat");
  auto text = KLEAP_TRY(ReadFileToString(path));
  return ParseStat(text);
}

Result<ProcStatus> ProcStatus::Parse(std::string_view text) {
  ProcStatus st;
  for (auto& line : SplitString(text, '\n')) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    st.kv_[line.substr(0, colon)] = std::string(Trim(std::string_view(line).substr(colon + 1)));
  }
  if (st.kv_.empty()) return Err(EINVAL) << "status: empty";
  return st;
}

Result<std::string> ProcStatus::Get(const std::string& key) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return Err(ENOENT) << "status: no field " << key;
  return it->second;
}

Result<int64_t> ProcStatus::GetInt(const std::string& key) const {
  auto s = KLEAP_TRY(Get(key));
  int64_t v;
  if (!ParseNum(std::string_view(s), &v))
    return Err(EINVAL) << "status: bad " << key << " '" << s << "'";
  return v;
}

Result<uint64_t> ParseNumber(std::string_view text, int base, std::string_view what) {
  uint64_t v;
  if (!ParseNum(Trim(text), &v, base))
    return Err(EINVAL) << what << ": not a base-" << base << " number: '" << text << "'";
  return v;
}

Result<uint64_t> ProcStatus::GetHex(const std::string& key) const {
  auto s = KLEAP_TRY(Get(key));
  uint64_t v;
  if (!ParseNum(std::string_view(s), &v, 16))
    return Err(EINVAL) << "status: bad " << key << " '" << s << "'";
  return v;
}

Result<std::vector<uint32_t>> ProcStatus::GetIds(const std::string& key) const {
  auto s = KLEAP_TRY(Get(key));
  std::vector<uint32_t> out;
  for (auto& part : SplitString(s, '\t')) {
    auto t = Trim(part);
    if (t.empty()) continue;
    for (auto& p2 : SplitString(t, ' ')) {
      if (p2.empty()) continue;
      uint32_t v;
      if (!ParseNum(std::string_view(p2), &v)) return Err(EINVAL) << "status: bad id in " << key;
      out.push_back(v);
    }
  }
  return out;
}

Result<ProcStatus> ReadStatus(pid_t pid, pid_t tid) {
  std::string path =
      tid ? ProcPath(pid, "task/" + std::to_string(tid) + "/status") : ProcPath(pid, "status");
  auto text = KLEAP_TRY(ReadFileToString(path));
  return ProcStatus::Parse(text);
}

Result<FdInfo> ParseFdInfo(std::string_view text) {
  FdInfo fi;
  bool have_pos = false, have_flags = false;
  for (auto& line : SplitString(text, '\n')) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    auto val = Trim(std::string_view(line).substr(colon + 1));
    if (key == "pos") {
      have_pos = ParseNum(val, &fi.pos);
    } else if (key == "flags") {
      have_flags = ParseNum(val, &fi.flags, 8);
    } else if (key == "mnt_id") {
      if (!ParseNum(val, &fi.mnt_id)) return Err(EINVAL) << "fdinfo: bad mnt_id '" << val << "'";
    } else if (key == "ino") {
      if (!ParseNum(val, &fi.ino)) return Err(EINVAL) << "fdinfo: bad ino '" << val << "'";
    } else {
      fi.extra.emplace(key, std::string(val));
    }
  }
  if (!have_pos || !have_flags) return Err(EINVAL) << "fdinfo: missing pos or flags";
  return fi;
}

Result<FdInfo> ReadFdInfo(pid_t pid, int fd) {
  auto text = KLEAP_TRY(ReadFileToString(ProcPath(pid, "fdinfo/" + std::to_string(fd))));
  return ParseFdInfo(text);
}

Result<std::vector<MountInfo>> ParseMountInfo(std::string_view text) {
  std::vector<MountInfo> out;
  for (auto& line : SplitString(text, '\n')) {
    if (line.empty()) continue;
    auto sep = line.find(" - ");
    if (sep == std::string::npos)
      return Err(EINVAL) << "mountinfo: no separator in '" << line << "'";
    auto left = SplitString(std::string_view(line).substr(0, sep), ' ');
    auto right = SplitString(std::string_view(line).substr(sep + 3), ' ');
    if (left.size() < 6 || right.size() < 3)
      return Err(EINVAL) << "mountinfo: short line '" << line << "'";
    MountInfo m;
    auto colon = left[2].find(':');
    if (!ParseNum(std::string_view(left[0]), &m.mnt_id) ||
        !ParseNum(std::string_view(left[1]), &m.parent_id) || colon == std::string::npos ||
        !ParseNum(std::string_view(left[2]).substr(0, colon), &m.dev_major) ||
        !ParseNum(std::string_view(left[2]).substr(colon + 1), &m.dev_minor))
      return Err(EINVAL) << "mountinfo: bad ids in '" << line << "'";
    m.root = UnescapeOctal(left[3]);
    m.mount_point = UnescapeOctal(left[4]);
    m.mount_options = left[5];
    for (size_t i = 6; i < left.size(); ++i) m.optional_fields.push_back(left[i]);
    m.fstype = right[0];
    m.source = UnescapeOctal(right[1]);
    m.super_options = right[2];
    out.push_back(std::move(m));
  }
  return out;
}

Result<std::vector<MountInfo>> ReadMountInfo(pid_t pid) {
  auto text = KLEAP_TRY(ReadFileToString(ProcPath(pid, "mountinfo")));
  return ParseMountInfo(text);
}

Result<std::vector<std::pair<uint64_t, uint64_t>>> ParseLimits(std::string_view text) {
  // "Max cpu time              unlimited            unlimited            seconds"
  // The name column is 26 wide; the two values follow, then an optional unit.
  std::vector<std::pair<uint64_t, uint64_t>> out;
  auto lines = SplitString(text, '\n');
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (line.empty()) continue;
    if (line.size() < 27) return Err(EINVAL) << "limits: short line '" << line << "'";
    auto f = Fields(std::string_view(line).substr(26), 3);
    if (f.size() < 2) return Err(EINVAL) << "limits: bad line '" << line << "'";
    std::pair<uint64_t, uint64_t> v;
    for (int k = 0; k < 2; ++k) {
      uint64_t* dst = k == 0 ? &v.first : &v.second;
      if (f[size_t(k)] == "unlimited")
        *dst = ~uint64_t(0);
      else if (!ParseNum(f[size_t(k)], dst))
        return Err(EINVAL) << "limits: bad value in '" << line << "'";
    }
    out.push_back(v);
  }
  if (out.size() < 16) return Err(EINVAL) << "limits: " << out.size() << " resources, expected 16";
  return out;
}

namespace {
Result<std::vector<long>> ListNumericDir(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (!d) return ErrnoError() << "opendir " << path;
  std::vector<long> out;
  while (dirent* e = readdir(d)) {
    long v;
    if (ParseNum(std::string_view(e->d_name), &v)) out.push_back(v);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

Result<std::vector<pid_t>> ListThreads(pid_t pid) {
  auto v = KLEAP_TRY(ListNumericDir(ProcPath(pid, "task")));
  return std::vector<pid_t>(v.begin(), v.end());
}

Result<std::vector<int>> ListFds(pid_t pid) {
  auto v = KLEAP_TRY(ListNumericDir(ProcPath(pid, "fd")));
  return std::vector<int>(v.begin(), v.end());
}

Result<std::vector<pid_t>> ListPids() {
  auto v = KLEAP_TRY(ListNumericDir("/proc"));
  return std::vector<pid_t>(v.begin(), v.end());
}

std::string DescribePid(pid_t pid) {
  std::string out = "pid " + std::to_string(pid);
  auto comm = ReadFileToString(ProcPath(pid, "comm"));
  if (comm) out += " (" + std::string(Trim(*comm)) + ")";
  return out;
}

Result<std::vector<pid_t>> ListChildren(pid_t pid, pid_t tid) {
  auto text =
      KLEAP_TRY(ReadFileToString(ProcPath(pid, "task/" + std::to_string(tid) + "/children")));
  std::vector<pid_t> out;
  for (auto& s : SplitString(Trim(text), ' ')) {
    pid_t p;
    if (!s.empty() && ParseNum(std::string_view(s), &p)) out.push_back(p);
  }
  return out;
}

}  // namespace kleap
