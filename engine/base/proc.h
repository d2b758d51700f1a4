// Parsers for /proc files. Each Parse* takes the text so that unit tests can feed it
// fixtures; each Read* reads the live file for a pid.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/result.h"

namespace kleap {

Result<std::string> ReadFileToString(const std::string& path);
Result<std::string> ReadLink(const std::string& path);
Result<void> WriteStringToFile(const std::string& path, std::string_view data);
std::vector<std::string> SplitString(std::string_view s, char sep);
std::string_view Trim(std::string_view s);
// A whole number in `base`, spaces around it allowed (a /proc file's trailing newline);
// the error names `what`.
Result<uint64_t> ParseNumber(std::string_view text, int base, std::string_view what);
std::string ProcPath(pid_t pid, std::string_view rest);
// /proc/PID/map_files/START-END (PID 0: /proc/self/...): the file a mapping maps.
std::string MapFilesPath(pid_t pid, uint64_t start, uint64_t end);

struct MapsEntry {
  uint64_t start = 0, end = 0;
  bool read = false, write = false, exec = false, shared = false;
  uint64_t offset = 0;
  uint32_t dev_major = 0, dev_minor = 0;
  uint64_t inode = 0;
  std::string path;                   // may be empty, "[heap]", "/x (deleted)"
  std::vector<std::string> vm_flags;  // from smaps VmFlags, when read through ReadSmaps

  uint64_t size() const { return end - start; }
  bool HasFlag(std::string_view f) const;
};

Result<std::vector<MapsEntry>> ParseMaps(std::string_view text);
Result<std::vector<MapsEntry>> ReadMaps(pid_t pid);
// Like ParseMaps, but also fills vm_flags from the VmFlags lines of smaps.
Result<std::vector<MapsEntry>> ParseSmaps(std::string_view text);
Result<std::vector<MapsEntry>> ReadSmaps(pid_t pid);

// /proc/PID/stat. Field names follow proc(5); comm may hold spaces and parentheses.
struct ProcStat {
  pid_t pid = 0;
  std::string comm;
  char state = '?';
  pid_t ppid = 0, pgrp = 0, session = 0;
  int tty_nr = 0;
  pid_t tpgid = 0;  // the foreground group of the controlling terminal, or -1
  uint64_t flags = 0;
  uint64_t num_threads = 0;
  uint64_t start_time = 0;
  uint64_t start_code = 0, end_code = 0, start_stack = 0;
  uint64_t start_data = 0, end_data = 0, start_brk = 0;
  uint64_t arg_start = 0, arg_end = 0, env_start = 0, env_end = 0;
  int exit_signal = 0;
  int exit_code = 0;  // a zombie's wait status (field 52)
};
Result<ProcStat> ParseStat(std::string_view text);
Result<ProcStat> ReadStat(pid_t pid, pid_t tid = 0);

// /proc/PID/status as key -> value, with typed accessors.
class ProcStatus {
 public:
  static Result<ProcStatus> Parse(std::string_view text);
  bool Has(const std::string& key) const { return kv_.count(key) != 0; }
  Result<std::string> Get(const std::string& key) const;
  Result<int64_t> GetInt(const std::string& key) const;
  Result<uint64_t> GetHex(const std::string& key) const;
  // "Uid:" and "Gid:": real, effective, saved, filesystem.
  Result<std::vector<uint32_t>> GetIds(const std::string& key) const;

 private:
  std::map<std::string, std::string> kv_;
};
Result<ProcStatus> ReadStatus(pid_t pid, pid_t tid = 0);

struct FdInfo {
  uint64_t pos = 0;
  uint32_t flags = 0;  // octal in the file
  int mnt_id = -1;
  uint64_t ino = 0;
  // Every other "key: value" line; keys repeat (epoll's tfd:, inotify's wd: lines).
  std::multimap<std::string, std::string> extra;
};
Result<FdInfo> ParseFdInfo(std::string_view text);
Result<FdInfo> ReadFdInfo(pid_t pid, int fd);

struct MountInfo {
  int mnt_id = 0, parent_id = 0;
  uint32_t dev_major = 0, dev_minor = 0;
  std::string root, mount_point, mount_options;
  std::vector<std::string> optional_fields;
  std::string fstype, source, super_options;
};
Result<std::vector<MountInfo>> ParseMountInfo(std::string_view text);
Result<std::vector<MountInfo>> ReadMountInfo(pid_t pid);

// /proc/PID/limits: (soft, hard) per resource, in RLIMIT_* order; "unlimited" is ~0.
Result<std::vector<std::pair<uint64_t, uint64_t>>> ParseLimits(std::string_view text);

// Thread ids of a process, from /proc/PID/task.
Result<std::vector<pid_t>> ListThreads(pid_t pid);
// Children of one thread, from /proc/PID/task/TID/children.
Result<std::vector<pid_t>> ListChildren(pid_t pid, pid_t tid);
// Open fd numbers, from /proc/PID/fd.
Result<std::vector<int>> ListFds(pid_t pid);
// Every process of the system (kleap's pid namespace), from /proc.
Result<std::vector<pid_t>> ListPids();
// "pid N (comm)", or "pid N" when it is gone: how errors name a process.
std::string DescribePid(pid_t pid);
// Undoes the octal escapes (\040 and friends) of mountinfo and maps-like files.
std::string UnescapeOctal(std::string_view s);

}  // namespace kleap
