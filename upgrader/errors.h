// The D-Bus error names of org.kleap.Upgrader1, in one place, and the errno each stands
// for. A caller gets org.kleap.Upgrader1.Error.NotDumpable, not "Input/output error".
#pragma once

#include <cerrno>

namespace kleap::upgrader {

inline constexpr char kErrorPrefix[] = "org.kleap.Upgrader1.Error.";
inline constexpr char kErrUpgradeInProgress[] = "org.kleap.Upgrader1.Error.UpgradeInProgress";
inline constexpr char kErrKernelNotFound[] = "org.kleap.Upgrader1.Error.KernelNotFound";
inline constexpr char kErrKernelRejected[] = "org.kleap.Upgrader1.Error.KernelRejected";
inline constexpr char kErrNotDumpable[] = "org.kleap.Upgrader1.Error.NotDumpable";
inline constexpr char kErrMemstoreTooSmall[] = "org.kleap.Upgrader1.Error.MemstoreTooSmall";
inline constexpr char kErrTaskGone[] = "org.kleap.Upgrader1.Error.TaskGone";
inline constexpr char kErrFailed[] = "org.kleap.Upgrader1.Error.Failed";
inline constexpr char kErrCanceled[] = "org.kleap.Upgrader1.Error.Canceled";
inline constexpr char kErrNotCancelable[] = "org.kleap.Upgrader1.Error.NotCancelable";
inline constexpr char kErrNotSupported[] = "org.kleap.Upgrader1.Error.NotSupported";
inline constexpr char kErrKexecUnavailable[] = "org.kleap.Upgrader1.Error.KexecUnavailable";

// The error name for an errno from the engine, the memstore or kexec staging. Where
// an errno is ambiguous (ENOENT: a kernel or a task?) the caller names the error itself.
inline const char* ErrorNameFor(int err) {
  switch (err) {
    case EBUSY:
      return kErrUpgradeInProgress;
    case EKEYREJECTED:
    case ENOEXEC:
    case EPERM:
      return kErrKernelRejected;
    case ENOTSUP:
      return kErrNotDumpable;
    case ENOSPC:
      return kErrMemstoreTooSmall;
    case ESRCH:
      return kErrTaskGone;
    default:
      return kErrFailed;
  }
}

}  // namespace kleap::upgrader
