// libFuzzer target for the memstore's on-media parsers (memstore/format.h).
//
// The input is a store header in pieces:
//
//   [0]        flags: 1 reseal the superblock, 2 set the commit record's table checksum,
//              4 reseal the commit record, 8 give the commit record the superblock's
//              generation, 16 cut the superblock short, 32 cut the commit record short
//   [1]        where to cut (x16 for the superblock)
//   [2, 10)    the region size, little-endian
//   [10, +4096)        the superblock page (zero-padded when the input ends early)
//   [4106, +64)        the commit record (56 bytes used)
//   [4170, end)        the blob table
//
// Checksums would stop a mutator at the first check, so the flags let it ask for them
// to be made right. Whatever a parser accepts must obey the rules the readers rely on;
// a broken rule aborts.
//
// Built by scripts/fuzz.sh. With -DKLEAP_FUZZ_MAKE_SEEDS the same file builds a small
// program that writes a seed corpus of valid headers instead.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "memstore/format.h"

using namespace kleap::memstore;

namespace {

constexpr size_t kHead = 10;
constexpr size_t kCommitPart = 64;
constexpr size_t kTableAt = kHead + sizeof(Superblock) + kCommitPart;

enum : uint8_t {
  kResealSb = 1,
  kFixTableSum = 2,
  kResealCommit = 4,
  kSameGeneration = 8,
  kCutSb = 16,
  kCutCommit = 32,
};

}  // namespace

#ifndef KLEAP_FUZZ_MAKE_SEEDS

namespace {

[[noreturn]] void Broken(const char* rule) {
  fprintf(stderr, "memstore_fuzz: a parser accepted a header that breaks: %s\n", rule);
  abort();
}
#define RULE(cond)              \
  do {                          \
    if (!(cond)) Broken(#cond); \
  } while (0)

void CheckSuperblock(const Superblock& sb, uint64_t region_size) {
  RULE(memcmp(sb.magic, "KLEAPMS1", 8) == 0);
  RULE(sb.version == kFormatVersion);
  RULE(sb.sb_size == sizeof(Superblock));
  RULE(sb.capacity <= region_size);
  RULE(sb.table_offset == kPage);
  RULE(sb.table_entries >= 1 && sb.table_entries <= (1u << 16));
  RULE(sb.commit_offset >= sb.table_offset + sb.table_entries * sizeof(TableEntry));
  RULE(sb.commit_offset % kPage == 0);
  RULE(sb.data_offset == sb.commit_offset + kPage);
  RULE(sb.data_offset <= sb.capacity);
  RULE(memchr(sb.writer_release, 0, sizeof sb.writer_release) != nullptr);
  RULE(memchr(sb.writer_boot_id, 0, sizeof sb.writer_boot_id) != nullptr);
}

void CheckCommit(const CommitRecord& c, const Superblock& sb) {
  RULE(c.generation == sb.generation);
  RULE(c.blobs <= sb.table_entries);
  RULE(c.data_end >= sb.data_offset);
  RULE(c.data_end <= sb.capacity);
}

void CheckTable(const std::vector<BlobInfo>& blobs, const Superblock& sb, const CommitRecord& c) {
  RULE(blobs.size() == c.blobs);
  std::set<std::string> names;
  uint64_t prev_end = sb.data_offset;
  for (auto& b : blobs) {
    RULE(!b.name.empty() && b.name.size() <= kNameMax);
    RULE(b.name.find('\0') == std::string::npos);
    RULE(names.insert(b.name).second);
    RULE(b.offset % kPage == 0);
    RULE(b.offset >= prev_end);
    RULE(b.offset >= sb.data_offset && b.offset <= c.data_end);
    RULE(b.size <= c.data_end - b.offset);
    prev_end = b.offset + b.size;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHead) return 0;
  const uint8_t flags = data[0], cut = data[1];
  uint64_t region_size;
  memcpy(&region_size, data + 2, 8);

  auto part = [&](size_t at, size_t len) {
    std::string s(len, '\0');
    if (at < size) memcpy(s.data(), data + at, std::min(len, size - at));
    return s;
  };
  std::string sb_bytes = part(kHead, sizeof(Superblock));
  std::string commit_bytes = part(kHead + sizeof(Superblock), kCommitPart);
  std::string table_bytes =
      size > kTableAt ? std::string(reinterpret_cast<const char*>(data) + kTableAt, size - kTableAt)
                      : std::string();

  if (flags & kResealSb) {
    Superblock sb;
    memcpy(&sb, sb_bytes.data(), sizeof sb);
    SealSuperblock(&sb);
    memcpy(sb_bytes.data(), &sb, sizeof sb);
  }
  if (flags & kCutSb) sb_bytes.resize(size_t(cut) * 16 % sizeof(Superblock));

  auto sb = ParseSuperblock(sb_bytes, region_size);
  if (!sb) {
    if (sb.error().message().empty()) Broken("a superblock error says something");
    return 0;
  }
  CheckSuperblock(*sb, region_size);

  {
    CommitRecord c;
    memcpy(&c, commit_bytes.data(), sizeof c);
    if (flags & kSameGeneration) c.generation = sb->generation;
    if ((flags & kFixTableSum) && c.blobs <= sb->table_entries &&
        c.blobs * sizeof(TableEntry) <= table_bytes.size())
      c.table_xxh3 = Xxh3(table_bytes.data(), c.blobs * sizeof(TableEntry));
    if (flags & kResealCommit) c.xxh3 = Xxh3(&c, offsetof(CommitRecord, xxh3));
    memcpy(commit_bytes.data(), &c, sizeof c);
  }
  if (flags & kCutCommit) commit_bytes.resize(cut % sizeof(CommitRecord));

  auto c = ParseCommit(commit_bytes, *sb);
  if (!c) {
    if (c.error().message().empty()) Broken("a commit error says something");
    return 0;
  }
  CheckCommit(*c, *sb);

  auto t = ParseTable(table_bytes, *sb, *c);
  if (!t) {
    if (t.error().message().empty()) Broken("a table error says something");
    return 0;
  }
  CheckTable(*t, *sb, *c);
  return 0;
}

#else  // KLEAP_FUZZ_MAKE_SEEDS: write valid headers into the directory argv[1]

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  struct Seed {
    uint64_t capacity, entries, region;
    std::vector<uint64_t> sizes;
  };
  const Seed seeds[] = {
      {1 << 20, 8, 1 << 20, {5000, 0, 3 * 4096, 1}},
      {64 << 10, 2, 1 << 20, {}},
      {16 << 20, 32, 16 << 20, {4096, 4097, 1 << 20, 0, 0, 77}},
  };
  int n = 0;
  for (const Seed& s : seeds) {
    auto sb = NewSuperblock(s.capacity, 1 + uint64_t(n), s.entries);
    if (!sb) {
      fprintf(stderr, "%s\n", sb.error().ToString().c_str());
      return 1;
    }
    snprintf(sb->writer_release, sizeof sb->writer_release, "6.1.0-fuzz");
    snprintf(sb->writer_boot_id, sizeof sb->writer_boot_id, "12345678-1234-1234-1234-123456789abc");
    SealSuperblock(&*sb);
    std::vector<TableEntry> table(s.sizes.size());
    uint64_t at = sb->data_offset;
    for (size_t i = 0; i < table.size(); ++i) {
      snprintf(table[i].name, sizeof table[i].name, "blob-%zu.img", i);
      table[i].offset = at;
      table[i].size = s.sizes[i];
      table[i].xxh3 = 0x5eed0000 + i;
      at = AlignUp(at + s.sizes[i]);
    }
    CommitRecord c = NewCommit(*sb, table, at);
    for (uint8_t flags :
         {uint8_t(0), uint8_t(kResealSb | kFixTableSum | kResealCommit | kSameGeneration)}) {
      std::string in(kTableAt, '\0');
      in[0] = char(flags);
      in[1] = 0;
      memcpy(&in[2], &s.region, 8);
      memcpy(&in[kHead], &*sb, sizeof(Superblock));
      memcpy(&in[kHead + sizeof(Superblock)], &c, sizeof c);
      in.append(reinterpret_cast<const char*>(table.data()), table.size() * sizeof(TableEntry));
      std::string path =
          std::string(argv[1]) + "/seed-" + std::to_string(n) + "-" + std::to_string(flags);
      FILE* f = fopen(path.c_str(), "wb");
      if (!f || fwrite(in.data(), 1, in.size(), f) != in.size() || fclose(f) != 0) {
        perror(path.c_str());
        return 1;
      }
    }
    ++n;
  }
  return 0;
}

#endif
