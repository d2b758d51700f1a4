// The memstore's on-media format, the same on every backend:
//
//   [0, 4096)                    superblock
//   [4096, commit_offset)        blob table, 128-byte entries
//   [commit_offset, +4096)       commit record, written last
//   [data_offset, capacity)      blobs, each 4096-aligned
//
// Everything is little-endian and checksummed with XXH3-64. A writer first clears the
// commit record, so a store whose writer died half-way is never taken as whole. The
// parsers take raw bytes and trust nothing: they are fuzzed (tests/fuzz).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/result.h"

namespace kleap::memstore {

inline constexpr uint32_t kFormatVersion = 1;
inline constexpr uint64_t kPage = 4096;
inline constexpr size_t kNameMax = 103;  // plus the NUL

struct Superblock {
  char magic[8];  // "KLEAPMS1"
  uint32_t version;
  uint32_t sb_size;
  uint64_t capacity;
  uint64_t generation;
  uint64_t table_offset;
  uint64_t table_entries;
  uint64_t commit_offset;
  uint64_t data_offset;
  uint64_t created_ns;  // CLOCK_REALTIME of the writer
  char writer_release[65];
  char writer_boot_id[37];
  char pad[4096 - 72 - 65 - 37 - 8];
  uint64_t xxh3;  // of every byte before it
};
static_assert(sizeof(Superblock) == 4096, "the superblock is one page");
static_assert(offsetof(Superblock, xxh3) == 4088);

struct TableEntry {
  char name[kNameMax + 1];
  uint64_t offset;
  uint64_t size;
  uint64_t xxh3;
};
static_assert(sizeof(TableEntry) == 128);

struct CommitRecord {
  char magic[8];  // "KLEAPCM1"
  uint64_t generation;
  uint64_t blobs;
  uint64_t table_xxh3;
  uint64_t data_end;
  uint64_t committed_ns;
  uint64_t xxh3;  // of every byte before it
};

struct BlobInfo {
  std::string name;
  uint64_t offset = 0, size = 0, xxh3 = 0;
};

// What a whole store says about itself.
struct StoreHeader {
  Superblock sb;
  CommitRecord commit;
  std::vector<BlobInfo> blobs;
};

// Lays out a new store of `capacity` bytes with room for `entries` blobs.
Result<Superblock> NewSuperblock(uint64_t capacity, uint64_t generation, uint64_t entries);
void SealSuperblock(Superblock* sb);
CommitRecord NewCommit(const Superblock& sb, const std::vector<TableEntry>& table,
                       uint64_t data_end);

// Each checks what it can on its own and names the first problem.
Result<Superblock> ParseSuperblock(std::string_view bytes, uint64_t region_size);
Result<CommitRecord> ParseCommit(std::string_view bytes, const Superblock& sb);
Result<std::vector<BlobInfo>> ParseTable(std::string_view bytes, const Superblock& sb,
                                         const CommitRecord& c);

uint64_t Xxh3(const void* data, size_t len);
inline uint64_t AlignUp(uint64_t v) {
  return (v + kPage - 1) & ~(kPage - 1);
}

}  // namespace kleap::memstore
