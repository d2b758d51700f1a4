// Authorization of state-changing calls through polkit's CheckAuthorization, asked
// over sd-bus without blocking the event loop. Root is allowed without asking.
#pragma once

#include <systemd/sd-bus.h>

#include <functional>
#include <string>

namespace kleap::upgrader {

inline constexpr char kActionUpgrade[] = "org.kleap.upgrader1.upgrade";

// The effective uid of the caller of `call`, from the bus (< 0 when it can't be had).
int SenderUid(sd_bus_message* call, uid_t* uid);

// Called once with the verdict. On a denial `error` is set (AccessDenied, or
// InteractiveAuthorizationRequired when authenticating would have helped); the
// callback replies to the call itself either way.
using AuthorizeDone = std::function<void(bool allowed, const sd_bus_error* error)>;

// Asks whether the sender of `call` may do `action`. `interactive` lets polkit ask the
// caller's authentication agent (also allowed when the call carries D-Bus's
// ALLOW_INTERACTIVE_AUTHORIZATION flag). Returns < 0 when the question can't even be
// asked; `done` is then not called.
int Authorize(sd_bus_message* call, const char* action, bool interactive, AuthorizeDone done);

}  // namespace kleap::upgrader
