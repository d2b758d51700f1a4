// Unix sockets: the fd kind's steps (files.cc's table dispatches to them) and what
// check and the open phase need beyond them. Both sides live in sock_unix.cc.
#pragma once

#include <string>
#include <vector>

#include "engine/context.h"
#include "engine/files.h"

namespace kleap {

// Whether the task's fd is an AF_UNIX socket (DescribeFd's classification).
bool IsUnixSocket(pid_t pid, int fd);

std::string RefuseUnixSock(const FdDesc& d);
Result<void> DumpUnixSock(DumpContext& ctx, const FdDesc& d, img::FileObject* fo);
Result<void> ValidateUnixSock(const img::FileObject& fo);
// Across the set: every queued datagram can be sent again by a socket of the set (its
// peer, a named socket of the set, or one of ours to a named receiver).
Result<void> ValidateUnixQueues(const img::FileTable& files);
Result<UniqueFd> OpenUnixSock(const img::FileObject& fo, ImageReader& images, OpenFiles& files);

// What only the whole tree tells (UNIX_DIAG over every unix socket its tasks hold): a
// peer, or a client waiting in a backlog, outside the tree; data sent on a connection
// nobody accepted yet.
std::vector<Problem> CheckUnixPeers(const std::vector<TaskInfo>& tasks);

// The open phase: every unix socket of the set at once (a pair, a listener and its
// backlog need each other), into open->by_id; OpenUnixSock then hands each out.
Result<void> OpenUnixSockets(const img::FileTable& files, OpenFiles* open);
// Once every other file of the set is open: the sockets' queues, with the files in
// flight (SCM_RIGHTS), then their options, buffer sizes, shutdown and flags.
Result<void> FillUnixSockets(OpenFiles* open);

}  // namespace kleap
