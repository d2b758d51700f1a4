// Lookups in maps whose keys the caller has made sure of: a plan that was validated, or a
// map built from the same walk of the tree. A missing key is a bug, stopped at once by
// KLEAP_CHECK; std::map::at would throw instead, and nothing may unwind through a
// half-seized tracee or through PID 1 (STYLE.md). Keys that come from the kernel or from
// an image unchecked are looked up with find() and a Result naming them.
#pragma once

#include "engine/base/result.h"

namespace kleap {

template <class Map, class Key>
auto& Lookup(Map& m, const Key& k) {
  auto it = m.find(k);
  KLEAP_CHECK(it != m.end());
  return it->second;
}

}  // namespace kleap
