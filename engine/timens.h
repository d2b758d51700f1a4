// Time namespaces (time_namespaces(7)): a tree in a time namespace of its own keeps its
// clock offsets (monotonic, boottime), and so does a task that unshared one for its
// children.
#pragma once

#include <vector>

#include "engine/context.h"

namespace kleap {

// What can't be carried: a namespace someone outside the tree is in, one a task
// entered with setns, one whose offsets nothing in the tree shows.
std::vector<Problem> CheckTimeNamespaces(const std::vector<TaskInfo>& tasks);
// Sets time_ns and time_ns_for_children of every task that is not in kleap's own.
Result<void> DumpTimeNamespaces(const std::vector<TaskInfo>& tasks, img::PsTree* tree);
// Each namespace is made exactly once, by the root's creator or an unsharing parent,
// and every task is in its parent's namespace or in the one the parent made.
Result<void> ValidateTimeNamespaces(const img::PsTree& tree);
// In the task that makes it (or the controller, for the root's): unshare(CLONE_NEWTIME)
// and the namespace's offsets, before any task is in it. Children created after are in it.
Result<void> MakeTimeNamespace(const img::TimeNs& ns);

}  // namespace kleap
