// Work that needs a process of its own for a moment (its own fd numbers, its own
// credentials) but the same open files: a forked child runs it, and its error comes
// back here through a shared page (not an fd: the child may dup2 over any number).
#pragma once

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "engine/base/result.h"

namespace kleap {

// Runs body() in a forked child and waits for it. The child never returns to the
// caller's code: it _exits with body's result.
template <class Body>
Result<void> RunInChild(const std::string& what, Body body) {
  constexpr size_t kSize = 4096;
  void* page = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) return ErrnoError() << what << ": map a page for the helper";
  char* msg = static_cast<char*>(page);
  pid_t pid = fork();
  if (pid < 0) {
    munmap(page, kSize);
    return ErrnoError() << what << ": fork";
  }
  if (pid == 0) {
    Result<void> r = body();
    if (!r) snprintf(msg, kSize, "%s", r.error().ToString().c_str());
    _exit(r ? 0 : 1);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  std::string err(msg, strnlen(msg, kSize));
  munmap(page, kSize);
  if (!err.empty()) return Err(EINVAL) << err;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return Err(EIO) << what << ": the helper died (status " << st << ")";
  return Ok();
}

}  // namespace kleap
