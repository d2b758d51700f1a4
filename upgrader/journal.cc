#include "upgrader/journal.h"

#include <sys/uio.h>
#include <syslog.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cstdio>
#include <vector>

namespace kleap::upgrader {

void LogJob(int priority, uint32_t job, const char* phase, const char* message_id,
            const std::string& message) {
  std::vector<std::string> fields = {
      "MESSAGE=job " + std::to_string(job) + ": " + message,
      "PRIORITY=" + std::to_string(priority),
      "SYSLOG_IDENTIFIER=kleapd",
      "KLEAP_JOB=" + std::to_string(job),
      std::string("KLEAP_PHASE=") + phase,
  };
  if (message_id) fields.push_back(std::string("MESSAGE_ID=") + message_id);
  std::vector<iovec> iov;
  for (auto& f : fields) iov.push_back({f.data(), f.size()});
  // sd_journal_sendv() drops messages silently when journald isn't there (a container,
  // a test bus): then they go to stderr.
  static const bool journald = access("/run/systemd/journal/socket", F_OK) == 0;
  if (journald && sd_journal_sendv(iov.data(), int(iov.size())) >= 0) return;
  std::fprintf(stderr, "kleapd: %s: job %u [%s]: %s\n", priority <= LOG_ERR ? "error" : "info", job,
               phase, message.c_str());
}

}  // namespace kleap::upgrader
