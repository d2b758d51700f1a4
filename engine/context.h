// State that dump and restore carry across the per-resource modules.
#pragma once

#include <sys/stat.h>

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/base/unique_fd.h"
#include "engine/images/core.pb.h"
#include "engine/images/files.pb.h"
#include "engine/images/image_set.h"
#include "engine/images/ipc.pb.h"
#include "engine/images/mm.pb.h"
#include "engine/images/pagemap.pb.h"
#include "engine/images/pstree.pb.h"
#include "engine/sock_inet.h"
#include "engine/task.h"

namespace kleap {

// ---- dump ----

// A set's images, keyed by pid: as the restore reads them (LoadPlan), and as the dump
// writes them (DumpContext::written), for the same checks (CheckPlan).
struct RestorePlan {
  img::PsTree pstree;
  std::map<pid_t, img::TaskCore> cores;
  std::map<pid_t, img::MmImage> mms;
  std::map<pid_t, img::Pagemap> pagemaps;
  std::map<pid_t, img::FdTable> fdtables;
  img::FileTable files;
  img::ShmemTable shmem;
  img::IpcNamespace ipc;  // when the tree had an IPC namespace of its own (ipc.img)
  bool has_ipc = false;
};

struct DumpContext {
  ImageWriter* images = nullptr;
  SeizedTree* tree = nullptr;
  // Open file descriptions seen so far, to find the ones tasks share (kcmp).
  struct SeenFile {
    pid_t pid;
    int fd;
    uint64_t id;
    dev_t dev;
    ino_t ino;
  };
  std::vector<SeenFile> seen_files;
  // Files kleap opened itself to dump them (in flight, received by a peek; deleted but
  // mapped, run or a cwd, opened through /proc): open until the dump ends, so seen_files
  // can name them by kleap's fd.
  std::vector<UniqueFd> held_fds;
  // Unlinked files carried so far, by (dev, inode): the file object holding the content.
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> ghost_ids;
  img::FileTable files;
  uint64_t next_file_id = 1;
  // Pipes are told apart by (dev, inode): FIFOs on two tmpfs mounts can share an inode.
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> pipe_ids;
  uint64_t PipeId(uint64_t dev, uint64_t ino) {
    auto [it, added] = pipe_ids.emplace(std::make_pair(dev, ino), pipe_ids.size() + 1);
    return it->second;
  }
  img::ShmemTable shmem;
  // Shmem objects are numbered per (dev, inode): an fd and the mappings of one memfd share one.
  std::map<std::pair<uint64_t, uint64_t>, uint64_t> shmem_ids;
  uint64_t ShmemId(uint64_t dev, uint64_t ino) {
    auto [it, added] = shmem_ids.emplace(std::make_pair(dev, ino), shmem_ids.size() + 1);
    return it->second;
  }
  uint64_t page_bytes = 0;
  // The pages of each task's private anonymous mappings that more than one mapping
  // holds, (address, page frame), ascending: its children's pages are compared with
  // them (mm.cc, Pagemap.parent_runs). Parents are dumped first (pstree order).
  std::map<pid_t, std::vector<std::pair<uint64_t, uint64_t>>> cow_frames;
  // Every image written so far, for CheckPlan before the commit.
  RestorePlan written;
  // Declared last, so a failed dump takes the sockets out of repair mode first.
  SockRepairSet repaired_socks;
};

// Image names, one place.
std::string CoreImage(pid_t pid);
std::string MmImage(pid_t pid);
std::string PagemapImage(pid_t pid);
std::string PagesImage(pid_t pid);
std::string FdTableImage(pid_t pid);
std::string ShmemImage(uint64_t id);
std::string GhostImage(uint64_t id);
inline constexpr char kPsTreeImage[] = "pstree.img";
inline constexpr char kFilesImage[] = "files.img";
inline constexpr char kShmemTableImage[] = "shmem.img";

// Check-side classification, shared by check and dump.
std::vector<Problem> CheckFds(pid_t pid);
std::vector<Problem> CheckMappings(pid_t pid);
std::vector<Problem> CheckTaskState(pid_t pid);
// Sessions and process groups whose leader is outside the tree.
std::vector<Problem> CheckTreeShape(const std::vector<TaskInfo>& tasks);
// Everything above, for every task: what check reports and dump refuses.
std::vector<Problem> CheckTasks(const std::vector<TaskInfo>& tasks);

// ---- restore ----

// Files the restore controller opens once, before any task exists. Tasks inherit
// them by fork and dup them into place.
struct OpenFiles {
  std::map<uint64_t, UniqueFd> by_id;                  // FileObject id -> fd in the controller
  std::map<uint64_t, UniqueFd> pipes;                  // pipe id -> read end (holder)
  std::map<uint64_t, UniqueFd> pipe_writes;            // pipe id -> write end (holder)
  std::set<std::pair<uint64_t, bool>> pipe_ends_used;  // (pipe id, write end) handed out
  // The unlinked files made again so far, by the id of the file object that holds their
  // content (RegFile.ghost_of names it): each a read-write description of its own.
  std::map<uint64_t, UniqueFd> ghosts;
  // Inet sockets bound with SO_REUSEPORT on for a moment: they share their port with
  // another carried socket that has it on (FinishSockets puts theirs back).
  std::set<uint64_t> bind_reuseport;
  // The unix sockets made, waiting for their queues (sock_unix.cc: FillUnixSockets).
  std::shared_ptr<void> unix_restore;
  std::map<uint64_t, UniqueFd> mem_files;  // shmem id -> the memfd/tmpfs file (not anon shared)
  pid_t mem_files_pid = 0;                 // the process holding mem_files
  // shmem id -> the description memfd_create made, held by mem_files_pid. Unlike a
  // reopen through /proc it is no writer of the inode, which an exec of the memfd
  // needs (ETXTBSY otherwise); it goes to the first read-write fd of the memfd, and to
  // its writable shared mappings (memfd.cc).
  std::map<uint64_t, UniqueFd> memfd_created;
  std::set<uint64_t> memfd_created_given;
  // Pidfds of tasks of the set, by file id: (pid, flags). Their by_id fd is a
  // placeholder until OpenLivePidfds; a task takes the pidfd from the controller
  // (mem_files_pid) with pidfd_getfd (pidfd.h).
  std::map<uint64_t, std::pair<pid_t, uint32_t>> live_pidfds;
  // Dead processes' pidfds come from children that exited, one per Pidfd.dead_id, reaped
  // once every pidfd of them is open (ReapPidfdChildren).
  std::map<uint64_t, pid_t> pidfd_dead;
};

// The kernel's O_LARGEFILE: glibc defines O_LARGEFILE as 0 on x86_64.
inline constexpr int kKernelOLargefile = 0100000;
// Opens path as the task would have: through the compat entry when the flags lack
// O_LARGEFILE (an ia32 task's files). Empty on failure, with errno set.
UniqueFd OpenLikeTask(const std::string& path, int flags, mode_t mode);
Result<void> OpenFileObjects(const RestorePlan& plan, ImageReader& images, OpenFiles* out);
Result<void> OpenPipes(const RestorePlan& plan, OpenFiles* out);
// The memfds and unlinked tmpfs files of shmem.img, filled and sealed (memfd.cc).
Result<void> CreateMemFiles(const RestorePlan& plan, ImageReader& images, OpenFiles* out);
// shmem.img's objects, and every mapping and fd that names one (images are untrusted).
Result<void> ValidateShmem(const RestorePlan& plan);
// Every file object has a known kind whose fields make sense (files.img is untrusted).
Result<void> ValidateFileObjects(const img::FileTable& files);
// Puts every fd of a new task's table in place and closes everything else below
// `keep_from`, through `sys`: the task's own syscalls before ptrace takes over
// (LocalFdSyscall), or injected ones for a task that runs no C code of the restorer's
// (one sharing its parent's address space). `sys` returns the result or -errno.
using FdSyscall = std::function<long(long nr, long a1, long a2, long a3)>;
long LocalFdSyscall(long nr, long a1, long a2, long a3);
Result<void> InstallFds(const img::FdTable& table, const OpenFiles& files, int keep_from,
                        const FdSyscall& sys);

// Helper fds a task opens for its mappings (files, shmem objects, exe), at high numbers.
struct MmHelpers {
  std::map<size_t, int> vma_fd;  // index in MmImage.vmas -> fd
  int exe_fd = -1;
};

// Whether a file found at `path` must have the inode and device it had at the dump: not
// after a reboot (a kexec: an initramfs or tmpfs is made afresh, devices may be
// numbered otherwise), nor on a tmpfs or ramfs when the set carries mounts (it was
// filled again from the images).
bool InodeKept(const std::string& path, ImageReader& images);
Result<img::FileIdentity> IdentifyFile(const std::string& path, const struct stat& st);

}  // namespace kleap
