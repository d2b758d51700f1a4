// Fault points: the test hook of the failure rule. A run with KLEAP_FAULT=NAME fails at
// the point called NAME, so that the tests can prove what a failure there leaves behind.
#pragma once

#include "engine/base/result.h"

namespace kleap {

// Fails with "injected fault at NAME (KLEAP_FAULT)" when KLEAP_FAULT=NAME.
Result<void> FaultPoint(const char* name);
// Whether KLEAP_FAULT=NAME: for a fault that is not a failure (a damaged image...).
bool FaultWanted(const char* name);

}  // namespace kleap
