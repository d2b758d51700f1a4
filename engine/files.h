// Kinds of fds and the per-kind dump and restore steps that files.cc dispatches to
// through its table (kFdKinds). Each kind's two sides live in its own file:
// files.cc (regular files, directories, devices), pipe.cc, eventfd.cc,
// timerfd.cc, signalfd.cc, epoll.cc, inotify.cc.
#pragma once

#include <functional>

#include <sys/stat.h>

#include <string>

#include "engine/base/proc.h"
#include "engine/context.h"

namespace kleap {

enum class FdType {
  kRegular,
  kDirectory,
  kCharDevice,
  kPipe,
  kFifo,
  kEventfd,
  kTimerfd,
  kSignalfd,
  kEpoll,
  kInotify,
  kUnixSocket,
  kTty,
  kInetSocket,
  kMemfd,  // a memfd or an unlinked tmpfs file: a shmem object of the set
  kNetlinkSocket,
  kPidfd,
  kUnsupported,
};

// Every fd of a task into its fd table image, and each file object once into files.img.
Result<void> DumpFds(DumpContext& ctx, const TaskInfo& task, img::FdTable* fds);

// One fd of a task as /proc shows it, without changing the task.
struct FdDesc {
  pid_t pid = 0;
  int fd = -1;
  FdType type = FdType::kUnsupported;
  std::string link;
  struct stat st {};
  FdInfo info;
  bool deleted = false;
  std::string what, reason;  // for kUnsupported
  // The task whose fd numbers the file's own state names (an epoll's registrations):
  // pid itself, but for a file in flight, which kleap holds, the receiver's task.
  pid_t numbers_of = 0;
  pid_t NumbersOf() const { return numbers_of ? numbers_of : pid; }
};

Result<FdDesc> DescribeFd(pid_t pid, int fd, pid_t numbers_of = 0);

// A file in flight (SCM_RIGHTS), received by kleap's own peek of a queue: dumped once as
// a file object like any fd's (kept open until the dump ends); its id. `where` names
// the socket it is in flight to.
// `receiver` is the task holding that socket.
Result<uint64_t> DumpInflightFile(DumpContext& ctx, UniqueFd fd, const std::string& where,
                                  pid_t receiver);
// A file deleted since it was mapped or run, or a working directory removed since,
// opened by kleap through /proc (map_files, exe, cwd): dumped once as an unlinked file
// or deleted directory (files.img), its id.
Result<uint64_t> DumpMappedGhost(DumpContext& ctx, const std::string& proc_path,
                                 const std::string& where);
// Why a deleted file opened at proc_path can't be carried ("" when it can).
std::string RefuseMappedGhost(const std::string& proc_path);
// The same question check asks: why the file can't be carried ("" when it can).
std::string RefuseInflightFile(int fd, pid_t receiver);
// A number from a "key: value" line of fdinfo, in the given base.
Result<uint64_t> FdInfoNumber(const FdInfo& info, const char* key, int base);
// The open flags of an anon-inode file object: the access mode its kind always has,
// and maybe O_NONBLOCK, nothing else.
Result<void> ValidateAnonFlags(const img::FileObject& fo, const char* kind, uint32_t flags,
                               uint32_t accmode);
// A copy of a task's fd in this process (pidfd_getfd): the same open file description.
Result<UniqueFd> GrabFd(pid_t pid, int fd);
// Calls fn for every fd of every task of the tree that is no zombie; the fds of a task
// that can't be listed are left out (CheckFds names it).
void ForEachTreeFd(const std::vector<TaskInfo>& tasks,
                   const std::function<void(const TaskInfo&, int fd)>& fn);

// ---- per kind: dump fills the FileObject's kind, open makes it in the controller ----

Result<void> DumpRegFile(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<UniqueFd> OpenRegFile(const img::FileObject& fo, ImageReader& images, OpenFiles& files);
Result<void> ValidateRegFile(const img::FileObject& fo);
// Pipe and FIFO ends (pipe.cc).
Result<void> ValidatePipeEnd(const img::FileObject& fo);

Result<void> DumpPipeEnd(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<UniqueFd> OpenPipeEnd(const img::FileObject& fo, ImageReader& images, OpenFiles& files);

Result<void> DumpEventfd(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ValidateEventfd(const img::FileObject& fo);
Result<UniqueFd> OpenEventfd(const img::FileObject& fo, ImageReader& images, OpenFiles& files);

Result<void> DumpTimerfd(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ValidateTimerfd(const img::FileObject& fo);
Result<UniqueFd> OpenTimerfd(const img::FileObject& fo, ImageReader& images, OpenFiles& files);

Result<void> DumpSignalfd(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ValidateSignalfd(const img::FileObject& fo);
Result<UniqueFd> OpenSignalfd(const img::FileObject& fo, ImageReader& images, OpenFiles& files);

std::string RefuseEpoll(const FdDesc& d);
Result<void> DumpEpoll(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ResolveEpoll(img::FileObject* fo, const img::FdTable& table);
Result<void> ValidateEpoll(const img::FileObject& fo);
Result<UniqueFd> OpenEpoll(const img::FileObject& fo, ImageReader& images, OpenFiles& files);
// The post-open fixup: every registration remade under its fd number, once every
// file object is open.
Result<void> RegisterEpollTargets(const img::FileTable& files, const OpenFiles& open);

std::string RefuseInotify(const FdDesc& d);
Result<void> DumpInotify(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ValidateInotify(const img::FileObject& fo);
Result<UniqueFd> OpenInotify(const img::FileObject& fo, ImageReader& images, OpenFiles& files);

// Memory-backed files (memfd.cc): memfds and unlinked tmpfs files. ClassifyMemFile decides
// whether an fd is one: true when it is (d->type is kMemfd, or d->reason says why not).
bool ClassifyMemFile(FdDesc* d);
Result<void> DumpMemfd(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ValidateMemfd(const img::FileObject& fo);
Result<UniqueFd> OpenMemfd(const img::FileObject& fo, ImageReader& images, OpenFiles& files);

// Sockets (sock_inet.cc): sets d->type to kInetSocket for TCP and UDP over IPv4/IPv6,
// else returns why the socket can't be carried.
std::string ClassifySocket(FdDesc* d);
std::string RefuseInetSock(const FdDesc& d);
Result<void> DumpInetSock(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ValidateInetSock(const img::FileObject& fo);
Result<UniqueFd> OpenInetSock(const img::FileObject& fo, ImageReader& images, OpenFiles& files);

// Netlink sockets (sock_netlink.cc): d->type is kNetlinkSocket when ClassifySocket saw
// AF_NETLINK; the refusal names what can't be carried on this one.
std::string RefuseNetlinkSock(const FdDesc& d);
Result<void> DumpNetlinkSock(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ValidateNetlinkSock(const img::FileObject& fo);
Result<UniqueFd> OpenNetlinkSock(const img::FileObject& fo, ImageReader& images, OpenFiles& files);

}  // namespace kleap
