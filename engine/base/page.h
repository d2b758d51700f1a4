// The page size the engine and its images work in, and numbers in messages.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>

namespace kleap {

// x86 (both widths) has 4 KiB pages; the images store page-aligned runs of them.
inline constexpr uint64_t kPage = 4096;

constexpr uint64_t RoundPage(uint64_t n) {
  return (n + kPage - 1) / kPage * kPage;
}

// "0x7f00": addresses and masks in messages.
inline std::string Hex(uint64_t v) {
  std::ostringstream os;
  os << "0x" << std::hex << v;
  return os.str();
}

// "0755": modes and open flags in messages.
inline std::string Oct(uint64_t v) {
  std::ostringstream os;
  os << "0" << std::oct << v;
  return os.str();
}

}  // namespace kleap
