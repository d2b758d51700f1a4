#include "engine/net/netns.h"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>

#include <cstdlib>

namespace kleap::net {

Result<NetnsRef> NetnsByName(const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
    return Err(EINVAL) << "bad namespace name '" << name << "'";
  return NetnsRef{"/run/netns/" + name, "netns " + name};
}

Result<NetnsRef> NetnsByPid(int pid) {
  if (pid <= 0) return Err(EINVAL) << "bad pid " << pid;
  return NetnsRef{"/proc/" + std::to_string(pid) + "/ns/net", "pid " + std::to_string(pid)};
}

Result<UniqueFd> OpenNetns(const NetnsRef& ns) {
  UniqueFd fd(open(ns.path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoError() << ns.label << ": open " << ns.path;
  int type = ioctl(fd.get(), NS_GET_NSTYPE);
  if (type < 0) return ErrnoError() << ns.label << ": " << ns.path << " is not a namespace";
  if (type != CLONE_NEWNET)
    return Err(EINVAL) << ns.label << ": " << ns.path << " is not a network namespace";
  return fd;
}

Result<void> EnterNetns(const UniqueFd& nsfd) {
  if (!nsfd) {
    if (unshare(CLONE_NEWNET) < 0) return ErrnoError() << "unshare(CLONE_NEWNET)";
    return Ok();
  }
  if (setns(nsfd.get(), CLONE_NEWNET) < 0) return ErrnoError() << "setns(CLONE_NEWNET)";
  return Ok();
}

}  // namespace kleap::net
