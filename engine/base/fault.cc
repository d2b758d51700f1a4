#include "engine/base/fault.h"

#include <cstdlib>
#include <cstring>

namespace kleap {

Result<void> FaultPoint(const char* name) {
  const char* want = getenv("KLEAP_FAULT");
  if (want && strcmp(want, name) == 0)
    return Err(EIO) << "injected fault at " << name << " (KLEAP_FAULT)";
  return Ok();
}

}  // namespace kleap
