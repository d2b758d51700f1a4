#pragma once

#include <string>
#include <vector>

namespace kleap::memstore {

// `kleap store info|ls|cat NAME|wipe [--backend SPEC] [--json] [--verify] [--yes]`.
// Returns the exit status: 0 ok, 1 failure or a store that isn't whole, 2 usage.
int RunStoreCommand(const std::vector<std::string>& args);

inline constexpr char kDefaultStore[] = "pmem:/dev/pmem0";

}  // namespace kleap::memstore
