// Terminals: Unix98 pty pairs as fd kinds (the kFdKinds row in files.cc), and the
// controlling terminal of a session with its foreground process group.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "engine/files.h"
#include "engine/images/core.pb.h"

namespace kleap {

// The character devices that are terminals of any kind (ptys, consoles, serial lines).
bool IsTerminal(dev_t rdev);
// Sets d->type to kTty for a pty master or slave; else returns why it can't be carried.
std::string ClassifyTty(FdDesc* d);

Result<void> DumpTty(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ValidateTty(const img::FileObject& fo);
Result<UniqueFd> OpenTty(const img::FileObject& fo, ImageReader& images, OpenFiles& files);
// After every file object is open: locks the pairs that were locked, lets go of the
// pair holders.
Result<void> FinishPtys(const img::FileTable& files, OpenFiles& open);

// Controlling terminals that can't be carried (check and dump).
std::vector<Problem> CheckCttys(const std::vector<TaskInfo>& tasks);
Result<void> DumpCtty(const TaskInfo& task, img::TaskCore* core);
Result<void> ValidateCtty(pid_t pid, const img::TaskCore& core);
// In a new session leader, before it creates its children: makes the terminal its
// controlling terminal (TIOCSCTTY). The fd is for SetForeground.
Result<UniqueFd> TakeCtty(const img::Ctty& ctty);
// In the session leader, once every process group exists (TIOCSPGRP).
Result<void> SetForeground(int fd, pid_t pgrp);

}  // namespace kleap
