// Structured logging of upgrade jobs: journald fields (KLEAP_JOB=, KLEAP_PHASE=,
// MESSAGE_ID=) when journald is there, a plain line on stderr otherwise.
#pragma once

#include <cstdint>
#include <string>

namespace kleap::upgrader {

// MESSAGE_IDs of an upgrade's start, success and failure (journalctl MESSAGE_ID=...).
inline constexpr char kMessageUpgradeStarted[] = "2c6af946591543d79f3b7c04a10acb23";
inline constexpr char kMessageUpgradeSucceeded[] = "f1182377965c4ce8884c72a5eafeac90";
inline constexpr char kMessageUpgradeFailed[] = "38d01e951db6437dae8452f19f3803b3";

// priority: syslog's (LOG_INFO, ...). message_id may be null.
void LogJob(int priority, uint32_t job, const char* phase, const char* message_id,
            const std::string& message);

}  // namespace kleap::upgrader
