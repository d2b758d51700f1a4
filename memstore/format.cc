#include "memstore/format.h"

#include <time.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace kleap::memstore {
namespace {

constexpr char kSbMagic[8] = {'K', 'L', 'E', 'A', 'P', 'M', 'S', '1'};
constexpr char kCommitMagic[8] = {'K', 'L', 'E', 'A', 'P', 'C', 'M', '1'};
constexpr uint64_t kMaxEntries = 1u << 16;

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

}  // namespace

uint64_t Xxh3(const void* data, size_t len) {
  return XXH3_64bits(data, len);
}

Result<Superblock> NewSuperblock(uint64_t capacity, uint64_t generation, uint64_t entries) {
  Superblock sb{};
  memcpy(sb.magic, kSbMagic, sizeof sb.magic);
  sb.version = kFormatVersion;
  sb.sb_size = sizeof(Superblock);
  sb.capacity = capacity;
  sb.generation = generation;
  sb.table_offset = kPage;
  sb.table_entries = entries;
  sb.commit_offset = AlignUp(sb.table_offset + entries * sizeof(TableEntry));
  sb.data_offset = sb.commit_offset + kPage;
  sb.created_ns = NowNs();
  if (entries == 0 || entries > kMaxEntries)
    return Err(EINVAL) << "memstore: " << entries << " table entries";
  if (capacity < sb.data_offset + kPage)
    return Err(ENOSPC) << "memstore: a region of " << capacity << " bytes is too small (at least "
                       << sb.data_offset + kPage << ")";
  return sb;
}

void SealSuperblock(Superblock* sb) {
  sb->xxh3 = Xxh3(sb, offsetof(Superblock, xxh3));
}

CommitRecord NewCommit(const Superblock& sb, const std::vector<TableEntry>& table,
                       uint64_t data_end) {
  CommitRecord c{};
  memcpy(c.magic, kCommitMagic, sizeof c.magic);
  c.generation = sb.generation;
  c.blobs = table.size();
  c.table_xxh3 = Xxh3(table.data(), table.size() * sizeof(TableEntry));
  c.data_end = data_end;
  c.committed_ns = NowNs();
  c.xxh3 = Xxh3(&c, offsetof(CommitRecord, xxh3));
  return c;
}

Result<Superblock> ParseSuperblock(std::string_view bytes, uint64_t region_size) {
  Superblock sb;
  if (bytes.size() < sizeof sb)
    return Err(EINVAL) << "memstore: superblock: " << bytes.size() << " bytes, need " << sizeof sb;
  memcpy(&sb, bytes.data(), sizeof sb);
  if (memcmp(sb.magic, kSbMagic, sizeof sb.magic) != 0)
    return Err(ENOENT) << "memstore: no store here (bad magic)";
  if (sb.version != kFormatVersion)
    return Err(EPROTO) << "memstore: format version " << sb.version << ", this kleap reads "
                       << kFormatVersion;
  if (sb.xxh3 != Xxh3(&sb, offsetof(Superblock, xxh3)))
    return Err(EBADMSG) << "memstore: superblock checksum mismatch";
  if (sb.sb_size != sizeof(Superblock))
    return Err(EBADMSG) << "memstore: superblock size " << sb.sb_size;
  if (sb.capacity > region_size)
    return Err(EBADMSG) << "memstore: superblock says " << sb.capacity
                        << " bytes, the region holds " << region_size;
  if (sb.table_offset != kPage || sb.table_entries == 0 || sb.table_entries > kMaxEntries ||
      sb.commit_offset != AlignUp(sb.table_offset + sb.table_entries * sizeof(TableEntry)) ||
      sb.data_offset != sb.commit_offset + kPage || sb.data_offset > sb.capacity)
    return Err(EBADMSG) << "memstore: superblock layout is inconsistent (table " << sb.table_offset
                        << "+" << sb.table_entries << ", commit " << sb.commit_offset << ", data "
                        << sb.data_offset << ")";
  if (sb.writer_release[sizeof sb.writer_release - 1] ||
      sb.writer_boot_id[sizeof sb.writer_boot_id - 1])
    return Err(EBADMSG) << "memstore: superblock strings are not terminated";
  return sb;
}

Result<CommitRecord> ParseCommit(std::string_view bytes, const Superblock& sb) {
  CommitRecord c;
  if (bytes.size() < sizeof c) return Err(EINVAL) << "memstore: commit record: short read";
  memcpy(&c, bytes.data(), sizeof c);
  if (memcmp(c.magic, kCommitMagic, sizeof c.magic) != 0)
    return Err(ENODATA) << "memstore: no commit record (the writer of generation " << sb.generation
                        << " did not finish)";
  if (c.xxh3 != Xxh3(&c, offsetof(CommitRecord, xxh3)))
    return Err(EBADMSG) << "memstore: commit record checksum mismatch";
  if (c.generation != sb.generation)
    return Err(EBADMSG) << "memstore: commit record of generation " << c.generation
                        << ", superblock says " << sb.generation;
  if (c.blobs > sb.table_entries || c.data_end > sb.capacity || c.data_end < sb.data_offset)
    return Err(EBADMSG) << "memstore: commit record out of range (" << c.blobs
                        << " blobs, data end " << c.data_end << ")";
  return c;
}

Result<std::vector<BlobInfo>> ParseTable(std::string_view bytes, const Superblock& sb,
                                         const CommitRecord& c) {
  if (bytes.size() < c.blobs * sizeof(TableEntry))
    return Err(EINVAL) << "memstore: blob table: short read";
  if (Xxh3(bytes.data(), c.blobs * sizeof(TableEntry)) != c.table_xxh3)
    return Err(EBADMSG) << "memstore: blob table checksum mismatch";
  std::vector<BlobInfo> out;
  uint64_t prev_end = sb.data_offset;
  for (uint64_t i = 0; i < c.blobs; ++i) {
    TableEntry e;
    memcpy(&e, bytes.data() + i * sizeof e, sizeof e);
    size_t n = strnlen(e.name, sizeof e.name);
    if (n == 0 || n == sizeof e.name)
      return Err(EBADMSG) << "memstore: blob table entry " << i << " has no valid name";
    std::string name(e.name, n);
    if (e.offset % kPage || e.offset < prev_end || e.offset > c.data_end ||
        e.size > c.data_end - e.offset)
      return Err(EBADMSG) << "memstore: blob table entry " << i << " (" << name
                          << ") points outside the region: offset " << e.offset << " size "
                          << e.size << ", data " << sb.data_offset << "-" << c.data_end;
    for (auto& b : out)
      if (b.name == name) return Err(EBADMSG) << "memstore: blob " << name << " is listed twice";
    prev_end = e.offset + e.size;
    out.push_back({name, e.offset, e.size, e.xxh3});
  }
  return out;
}

}  // namespace kleap::memstore
