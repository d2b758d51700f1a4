// SysV IPC and the IPC namespace. SysV objects belong to an IPC namespace, not to a
// task, so kleap carries a whole namespace: a tree whose tasks run in an IPC namespace
// of their own (and that nothing outside the tree is in) gets every shm segment,
// message queue and semaphore set of it, and its sysctls, rebuilt in a new namespace
// with the same ids. A task's shm attachments are SYSV_SHM mappings, attached again at
// restore by an injected shmat; its semaphore undo list (semadj), which no interface
// reads, is measured at dump by making the task drop it (see DumpIpc).
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <vector>

#include "engine/context.h"
#include "engine/images/ipc.pb.h"

namespace kleap {

inline constexpr char kIpcImage[] = "ipc.img";

// The tree's IPC namespace: every task in the root's; nothing outside the tree in it
// when it isn't kleap's; no SysV shm attached in kleap's own.
std::vector<Problem> CheckIpc(const std::vector<TaskInfo>& tasks);

struct IpcDump {
  bool carried = false;                             // ipc.img written
  std::map<pid_t, std::vector<img::SemUndo>> undo;  // per task
};
// With the tree seized (and gadgets set): writes ipc.img and its shm blobs when the
// tree has an IPC namespace of its own, and measures each task's semadj, leaving the
// task as it was.
Result<IpcDump> DumpIpc(DumpContext& ctx);

// Every field of ipc.img, the undo lists and SYSV_SHM mappings against it.
Result<void> ValidateIpc(const RestorePlan& plan);

// The controller's side of a restore: a new IPC namespace entered by the controller
// (the tasks it forks are born in it), with every object remade. Finish() (once every
// task is rebuilt) removes the segments that were IPC_RMID'd, lets go of the
// controller's attachments, checks nattch and returns the controller to its namespace.
class IpcRestore {
 public:
  static Result<std::unique_ptr<IpcRestore>> Create(const RestorePlan& plan, ImageReader& images);
  ~IpcRestore();
  Result<void> Finish();

 private:
  IpcRestore() = default;
  Result<void> Build(const RestorePlan& plan, ImageReader& images);
  void Leave();
  const img::IpcNamespace* ns_ = nullptr;
  UniqueFd old_ns_;
  std::map<int, void*> attached_;  // shmid -> controller's attachment
};

// In a task being rebuilt (its memory laid out): attaches its SysV segments again.
Result<void> AttachSysvShm(RemoteSyscalls& rs, pid_t pid, const img::MmImage& mm);
// Re-creates the task's undo list; runs while the task is still privileged.
Result<void> RestoreSemUndo(RemoteSyscalls& rs, pid_t pid, RemotePtr<> scratch,
                            const img::TaskCore& core);

}  // namespace kleap
