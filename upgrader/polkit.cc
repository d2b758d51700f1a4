#include "upgrader/polkit.h"

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "upgrader/sd_ptr.h"

namespace kleap::upgrader {
namespace {

constexpr char kPolkitName[] = "org.freedesktop.PolicyKit1";
constexpr char kPolkitPath[] = "/org/freedesktop/PolicyKit1/Authority";
constexpr char kPolkitInterface[] = "org.freedesktop.PolicyKit1.Authority";
constexpr uint32_t kAllowUserInteraction = 1;

struct Pending {
  std::string action;
  uid_t uid;
  AuthorizeDone done;
};

void Deny(Pending& p, const char* name, const std::string& msg) {
  SdError e;
  sd_bus_error_set(e.get(), name, msg.c_str());
  p.done(false, e.get());
}

int OnReply(sd_bus_message* reply, void* userdata, sd_bus_error*) {
  std::unique_ptr<Pending> p(static_cast<Pending*>(userdata));
  std::string who = "uid " + std::to_string(p->uid);
  if (const sd_bus_error* e = sd_bus_message_get_error(reply)) {
    std::string why = e->message ? e->message : e->name;
    if (sd_bus_error_has_names(e, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
      why = "polkit (org.freedesktop.PolicyKit1) is not running";
    Deny(*p, SD_BUS_ERROR_ACCESS_DENIED,
         who + " is not root and polkit could not authorize " + p->action + ": " + why);
    return 0;
  }
  int authorized = 0, challenge = 0;
  int r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
  if (r >= 0) r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
  if (r < 0) {
    Deny(*p, SD_BUS_ERROR_ACCESS_DENIED,
         "polkit's answer for " + p->action + " is unreadable: " + strerror(-r));
    return 0;
  }
  if (authorized) {
    p->done(true, nullptr);
  } else if (challenge) {
    Deny(*p, SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED,
         who + " must authenticate for " + p->action +
             " (polkit); allow interactive authorization, or run as root");
  } else {
    Deny(*p, SD_BUS_ERROR_ACCESS_DENIED, who + " is not allowed " + p->action + " (polkit)");
  }
  return 0;
}

}  // namespace

int SenderUid(sd_bus_message* call, uid_t* uid) {
  SdCreds creds;
  int r = sd_bus_query_sender_creds(call, SD_BUS_CREDS_EUID | SD_BUS_CREDS_AUGMENT, creds.put());
  if (r < 0) return r;
  return sd_bus_creds_get_euid(creds.get(), uid);
}

int Authorize(sd_bus_message* call, const char* action, bool interactive, AuthorizeDone done) {
  uid_t uid;
  int r = SenderUid(call, &uid);
  if (r < 0) return r;
  if (uid == 0) {
    done(true, nullptr);
    return 0;
  }
  const char* sender = sd_bus_message_get_sender(call);
  if (!sender) return -EBADMSG;
  sd_bus* bus = sd_bus_message_get_bus(call);
  SdMessage query;
  r = sd_bus_message_new_method_call(bus, query.put(), kPolkitName, kPolkitPath, kPolkitInterface,
                                     "CheckAuthorization");
  sd_bus_message* q = query.get();
  // subject (sa{sv}): the caller's bus name; details a{ss}; flags u; cancellation id s.
  if (r >= 0)
    r = sd_bus_message_append(
        q, "(sa{sv})sa{ss}us", "system-bus-name", 1, "name", "s", sender, action, 0,
        interactive || sd_bus_message_get_allow_interactive_authorization(call) > 0
            ? kAllowUserInteraction
            : 0u,
        "");
  if (r < 0) return r;
  auto p = std::make_unique<Pending>(Pending{action, uid, std::move(done)});
  // Authenticating can take as long as the admin types: no short timeout. OnReply owns p.
  r = sd_bus_call_async(bus, nullptr, q, OnReply, p.get(), 30ull * 60 * 1000000);
  if (r >= 0) (void)p.release();
  return r;
}

}  // namespace kleap::upgrader
