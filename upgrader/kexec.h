// kexec staging: load a kernel and initrd with kexec_file_load(2) (no kexec-tools),
// build the new kernel's command line, check, unload, and execute. kleapd uses this;
// so does kleap-kexec, the tool the VM tests drive.
#pragma once

#include <string>
#include <vector>

#include "engine/base/result.h"

namespace kleap::upgrader {

struct CmdlineOptions {
  std::string current;  // the running kernel's command line (/proc/cmdline)
  std::string store;    // kleap.resume=, e.g. "pmem:/dev/pmem0"; empty: none
  std::string entry;    // "init=/usr/lib/kleap/kleap-init" or "rdinit=/kleap-init"; empty: none
  std::string append;   // extra parameters, appended last
};

// The new kernel's command line: the current one without the parameters kleap sets
// (kleap.*, and init=/rdinit= when an entry is given, which move to kleap.init= so that
// kleap-init knows the real init), plus kleap.resume= and the entry. A pmem store needs
// the current memmap= region: refused when the running kernel has none.
Result<std::string> BuildCmdline(const CmdlineOptions& o);

// Splits a command line into parameters, keeping quoted values whole.
std::vector<std::string> SplitCmdline(const std::string& cmdline);

struct LoadOptions {
  std::string kernel, initrd, cmdline;
};

// Loads the kernel for a later Execute(). Errors name the file and the reason: missing,
// rejected by the kernel (signature, lockdown), not loadable, no KEXEC_FILE support.
Result<void> Load(const LoadOptions& o);
Result<void> Unload();
// Whether a kernel is loaded (/sys/kernel/kexec_loaded).
Result<bool> IsLoaded();
// Reboots into the loaded kernel at once; returns only on failure.
Result<void> Execute();

}  // namespace kleap::upgrader
