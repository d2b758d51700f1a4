// Credentials (creds.cc): uids, gids, groups, capabilities, securebits, no_new_privs.
#pragma once

#include "engine/context.h"

namespace kleap {

Result<void> DumpCredsOf(RemoteSyscalls& rs, const TaskInfo& task, img::Creds* creds);
// Every thread gets the task's credentials, in an order where each step still has the
// privilege it needs.
Result<void> RestoreCreds(RemoteSyscalls& rs, pid_t tid, RemotePtr<> scratch,
                          const img::Creds& creds);

}  // namespace kleap
