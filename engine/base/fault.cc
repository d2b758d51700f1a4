#include "engine/base/fault.h"

#include <cstdlib>
#include <cstring>

namespace kleap {

bool FaultWanted(const char* name) {
  const char* want = getenv("KLEAP_FAULT");
  return want && strcmp(want, name) == 0;
}

Result<void> FaultPoint(const char* name) {
  if (FaultWanted(name)) return Err(EIO) << "injected fault at " << name << " (KLEAP_FAULT)";
  return Ok();
}

}  // namespace kleap
