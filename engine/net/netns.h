// Running code inside a network namespace. The caller's own namespace is never
// changed: the work runs on a helper thread that setns()es (network namespaces are
// per thread), and every socket and /proc/sys/net file it opens belongs to the target.
#pragma once

#include <optional>
#include <string>
#include <thread>

#include "engine/base/result.h"
#include "engine/base/unique_fd.h"

namespace kleap::net {

// A namespace named by `ip netns` (/run/netns/NAME) or by a task (/proc/PID/ns/net).
struct NetnsRef {
  std::string path;
  std::string label;  // "netns NAME" or "pid PID", for messages
};

Result<NetnsRef> NetnsByName(const std::string& name);
Result<NetnsRef> NetnsByPid(int pid);

// Opens and checks that the file is a network namespace.
Result<UniqueFd> OpenNetns(const NetnsRef& ns);

// Enters `nsfd` (or, when it is not open, a new empty namespace) on the calling thread.
Result<void> EnterNetns(const UniqueFd& nsfd);

// Runs fn() on a helper thread inside the namespace and returns its result.
template <class F>
auto RunInNetns(const UniqueFd& nsfd, F fn) -> decltype(fn()) {
  std::optional<decltype(fn())> out;
  std::thread t([&] {
    auto entered = EnterNetns(nsfd);
    if (!entered) {
      out.emplace(std::move(entered).error());
      return;
    }
    out.emplace(fn());
  });
  t.join();
  return std::move(*out);
}

// Runs fn() inside a new, empty network namespace that goes away afterwards.
template <class F>
auto RunInFreshNetns(F fn) -> decltype(fn()) {
  return RunInNetns(UniqueFd(), fn);
}

}  // namespace kleap::net
