// The memstore: a round trip through a dir store, every kind of damage a reader must
// refuse (each with the words it must say), a full store, the engine's image-set adapter,
// and a deterministic mutation test of the three on-media parsers.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "engine/images/image_set.h"
#include "engine/images/pstree.pb.h"
#include "imagestore/store_image_set.h"
#include "memstore/format.h"
#include "memstore/store.h"

namespace kleap::memstore {
namespace {

// The bytes of blob `seed` at `pos`: different for every blob and every position.
uint8_t PatternByte(uint64_t seed, uint64_t pos) {
  uint64_t x = (seed + 1) * 0x9e3779b97f4a7c15ull ^ pos;
  x ^= x >> 29;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 32;
  return uint8_t(x);
}

std::string Pattern(uint64_t seed, size_t len) {
  std::string s(len, '\0');
  for (size_t i = 0; i < len; ++i) s[i] = char(PatternByte(seed, i));
  return s;
}

struct FreeDeleter {
  void operator()(void* p) const { free(p); }
};
using AlignedBytes = std::unique_ptr<uint8_t[], FreeDeleter>;

AlignedBytes AlignedCopy(const std::string& s) {
  AlignedBytes p(
      static_cast<uint8_t*>(aligned_alloc(kPage, AlignUp(std::max<size_t>(s.size(), 1)))));
  memcpy(p.get(), s.data(), s.size());
  return p;
}

// What the error says, for EXPECT_THAT-free assertions on the message.
template <class R>
std::string ErrorText(const R& r) {
  return r ? std::string("(no error)") : r.error().ToString();
}

#define EXPECT_ERROR_HAS(result, text)                                                       \
  do {                                                                                       \
    auto&& r_ = (result);                                                                    \
    ASSERT_FALSE(r_) << "expected an error saying \"" << (text) << "\"";                     \
    EXPECT_NE(r_.error().ToString().find(text), std::string::npos) << r_.error().ToString(); \
  } while (0)

class MemstoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0)
      GTEST_SKIP() << "Region::Open refuses non-root users (a store holds secrets); run as root";
    char tmpl[] = "/tmp/kleap-memstore-test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    spec_ = "dir:" + dir_;
    image_ = dir_ + "/kleap-store.img";
  }
  void TearDown() override {
    if (!dir_.empty()) std::system(("rm -rf '" + dir_ + "'").c_str());
  }

  std::unique_ptr<Region> Open(uint64_t create_size = 0) {
    auto r = Region::Create(spec_, create_size);
    EXPECT_TRUE(r) << ErrorText(r);
    return r ? std::move(*r) : nullptr;
  }

  // A store with the blobs "alpha" (5000 bytes), "beta" (3 pages + 1) and "gamma" (100).
  // entries = 8: the table is at 4096, the commit record at 8192, data from 12288.
  void WriteSmallStore(uint64_t size = 1 << 20, uint64_t entries = 8) {
    auto region = Open(size);
    ASSERT_TRUE(region);
    auto w = StoreWriter::Begin(*region, entries);
    ASSERT_TRUE(w) << ErrorText(w);
    const std::pair<const char*, size_t> blobs[] = {
        {"alpha", 5000}, {"beta", 3 * 4096 + 1}, {"gamma", 100}};
    uint64_t seed = 0;
    for (auto [name, len] : blobs) {
      auto b = (*w)->CreateBlob(name);
      ASSERT_TRUE(b) << ErrorText(b);
      std::string data = Pattern(seed++, len);
      auto wr = (*b)->Write(data.data(), data.size());
      ASSERT_TRUE(wr) << ErrorText(wr);
      auto cl = (*b)->Close();
      ASSERT_TRUE(cl) << ErrorText(cl);
    }
    auto c = (*w)->Commit();
    ASSERT_TRUE(c) << ErrorText(c);
  }

  Result<StoreInfo> Info() {
    auto region = Open();
    if (!region) return Err(EIO) << "open failed";
    return ReadInfo(*region);
  }

  // Raw access to the store's file, past the Region.
  template <class T>
  T ReadAt(off_t off) {
    T v{};
    int fd = open(image_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(pread(fd, &v, sizeof v, off), ssize_t(sizeof v));
    close(fd);
    return v;
  }
  void WriteAt(off_t off, const void* p, size_t len) {
    int fd = open(image_.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, p, len, off), ssize_t(len));
    close(fd);
  }
  template <class T>
  void WriteStruct(off_t off, const T& v) {
    WriteAt(off, &v, sizeof v);
  }
  void FlipByte(off_t off) {
    auto c = ReadAt<uint8_t>(off);
    c ^= 0x5a;
    WriteAt(off, &c, 1);
  }

  // Rewrites table entry `i` and makes every checksum agree again, so only the table's
  // own range and name checks are left to catch the change.
  template <class F>
  void PatchEntryAndReseal(uint64_t i, F&& patch) {
    auto sb = ReadAt<Superblock>(0);
    auto c = ReadAt<CommitRecord>(off_t(sb.commit_offset));
    std::vector<TableEntry> table(c.blobs);
    for (uint64_t k = 0; k < c.blobs; ++k)
      table[k] = ReadAt<TableEntry>(off_t(sb.table_offset + k * sizeof(TableEntry)));
    ASSERT_LT(i, table.size());
    patch(table[i]);
    WriteStruct(off_t(sb.table_offset + i * sizeof(TableEntry)), table[i]);
    c.table_xxh3 = Xxh3(table.data(), table.size() * sizeof(TableEntry));
    c.xxh3 = Xxh3(&c, offsetof(CommitRecord, xxh3));
    WriteStruct(off_t(sb.commit_offset), c);
    SealSuperblock(&sb);  // unchanged, but sealed again as a writer would
    WriteStruct(0, sb);
  }

  std::string dir_, spec_, image_;
};

// ---- round trip ----

TEST_F(MemstoreTest, RoundTripDirStore) {
  auto region = Open(8 << 20);
  ASSERT_TRUE(region);
  EXPECT_EQ(region->size(), uint64_t(8 << 20));
  EXPECT_FALSE(region->direct());

  struct Want {
    std::string name, data;
  };
  std::vector<Want> want;
  auto w = StoreWriter::Begin(*region, 64);
  ASSERT_TRUE(w) << ErrorText(w);

  auto put = [&](const std::string& name, const std::string& data, auto&& writes) {
    auto b = (*w)->CreateBlob(name);
    ASSERT_TRUE(b) << ErrorText(b);
    writes(**b, data);
    EXPECT_EQ((*b)->size(), data.size()) << name;
    auto cl = (*b)->Close();
    ASSERT_TRUE(cl) << ErrorText(cl);
    EXPECT_TRUE((*b)->Close()) << "a second Close is a no-op";
    want.push_back({name, data});
  };
  auto whole = [](BlobWriter& b, const std::string& d) {
    ASSERT_TRUE(b.Write(d.data(), d.size()));
  };

  // Not a multiple of the page size.
  put("odd.img", Pattern(1, 5000), whole);
  // Empty.
  put("empty.img", "", whole);
  // More than the 1 MiB staging chunk, written in odd-sized pieces.
  put("big.img", Pattern(2, (1 << 20) + 300000 + 17), [](BlobWriter& b, const std::string& d) {
    const size_t pieces[] = {1, 4095, 4097, 77777, 3, 65537, 131071};
    size_t off = 0;
    for (int i = 0; off < d.size(); ++i) {
      size_t n = std::min(pieces[i % 7], d.size() - off);
      auto r = b.Write(d.data() + off, n);
      ASSERT_TRUE(r) << ErrorText(r);
      off += n;
    }
  });
  // From a 4096-aligned buffer in whole pages: the path that skips the staging buffer.
  put("aligned.img", Pattern(3, 5 * 4096), [](BlobWriter& b, const std::string& d) {
    AlignedBytes p = AlignedCopy(d);
    ASSERT_TRUE(b.Write(p.get(), 2 * 4096));
    ASSERT_TRUE(b.Write(p.get() + 2 * 4096, 3 * 4096));
  });
  // Staged bytes, then an aligned buffer (which must be staged behind them), then a tail.
  put("mixed.img", Pattern(4, 100 + 8192 + 4096 + 5), [](BlobWriter& b, const std::string& d) {
    AlignedBytes p = AlignedCopy(d.substr(100, 8192 + 4096));
    ASSERT_TRUE(b.Write(d.data(), 100));
    ASSERT_TRUE(b.Write(p.get(), 8192 + 4096));
    ASSERT_TRUE(b.Write(d.data() + 100 + 8192 + 4096, 5));
  });
  // Exactly one page.
  put("page.img", Pattern(5, 4096), whole);
  // One byte.
  put("byte.img", Pattern(6, 1), whole);

  // A name twice, a bad name, a second blob while one is open.
  EXPECT_ERROR_HAS((*w)->CreateBlob("odd.img"), "odd.img written twice");
  EXPECT_ERROR_HAS((*w)->CreateBlob(""), "bad blob name");
  EXPECT_ERROR_HAS((*w)->CreateBlob(std::string(kNameMax + 1, 'n')), "bad blob name");
  {
    auto open = (*w)->CreateBlob(std::string(kNameMax, 'n'));
    ASSERT_TRUE(open) << ErrorText(open);
    EXPECT_ERROR_HAS((*w)->CreateBlob("other.img"), "opened while another is being written");
    EXPECT_ERROR_HAS((*w)->Commit(), "still open");
    ASSERT_TRUE((*open)->Close());
    want.push_back({std::string(kNameMax, 'n'), ""});
  }

  uint64_t used = (*w)->used();
  auto c = (*w)->Commit();
  ASSERT_TRUE(c) << ErrorText(c);
  w->reset();
  region.reset();

  // Read it back through a fresh Region: only the file carries the store.
  region = Open();
  ASSERT_TRUE(region);
  EXPECT_EQ(region->size(), uint64_t(8 << 20));
  auto info = ReadInfo(*region);
  ASSERT_TRUE(info) << ErrorText(info);
  EXPECT_EQ(info->generation, 1u);
  EXPECT_EQ(info->capacity, uint64_t(8 << 20));
  EXPECT_EQ(info->used, used);
  EXPECT_EQ(info->spec, spec_);
  EXPECT_FALSE(info->writer_release.empty());
  EXPECT_GE(info->committed_ns, info->created_ns);
  ASSERT_EQ(info->blobs.size(), want.size());
  uint64_t prev_end = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const BlobInfo& b = info->blobs[i];
    SCOPED_TRACE(want[i].name);
    EXPECT_EQ(b.name, want[i].name);
    EXPECT_EQ(b.size, want[i].data.size());
    EXPECT_EQ(b.offset % kPage, 0u);
    EXPECT_GE(b.offset, prev_end);
    EXPECT_LE(b.offset + b.size, info->used);
    prev_end = b.offset + b.size;
    EXPECT_EQ(b.xxh3, Xxh3(want[i].data.data(), want[i].data.size()));
    auto v = VerifyBlob(*region, b);
    EXPECT_TRUE(v) << ErrorText(v);
    std::string got(b.size, '\0');
    auto rd = region->Read(b.offset, got.data(), got.size());
    ASSERT_TRUE(rd) << ErrorText(rd);
    EXPECT_TRUE(got == want[i].data) << "the bytes read back differ";
  }
  // Reads past the end of the region are refused.
  char byte;
  EXPECT_ERROR_HAS(region->Read(region->size(), &byte, 1), "past the end");

  // The next Begin starts generation 2 and invalidates generation 1 at once.
  {
    auto w2 = StoreWriter::Begin(*region, 64);
    ASSERT_TRUE(w2) << ErrorText(w2);
    EXPECT_ERROR_HAS(ReadInfo(*region), "did not finish");
    auto b = (*w2)->CreateBlob("second.img");
    ASSERT_TRUE(b);
    std::string d = Pattern(7, 12345);
    ASSERT_TRUE((*b)->Write(d.data(), d.size()));
    ASSERT_TRUE((*b)->Close());
    ASSERT_TRUE((*w2)->Commit());
    auto info2 = ReadInfo(*region);
    ASSERT_TRUE(info2) << ErrorText(info2);
    EXPECT_EQ(info2->generation, 2u);
    ASSERT_EQ(info2->blobs.size(), 1u) << "the second store replaces the first";
    EXPECT_EQ(info2->blobs[0].name, "second.img");
    EXPECT_EQ(info2->blobs[0].size, d.size());
    EXPECT_EQ(info2->blobs[0].offset, info->blobs[0].offset);
    EXPECT_TRUE(VerifyBlob(*region, info2->blobs[0]));
  }
  // A third, with a different table size, and nothing in it.
  {
    auto w3 = StoreWriter::Begin(*region, 8);
    ASSERT_TRUE(w3) << ErrorText(w3);
    ASSERT_TRUE((*w3)->Commit());
    auto info3 = ReadInfo(*region);
    ASSERT_TRUE(info3) << ErrorText(info3);
    EXPECT_EQ(info3->generation, 3u);
    EXPECT_TRUE(info3->blobs.empty());
  }
}

TEST_F(MemstoreTest, WipeLeavesNoStore) {
  WriteSmallStore();
  auto region = Open();
  ASSERT_TRUE(region);
  ASSERT_TRUE(ReadInfo(*region));
  ASSERT_TRUE(region->Wipe());
  EXPECT_ERROR_HAS(ReadInfo(*region), "no store here (bad magic)");
  // A wiped region starts again at generation 1.
  auto w = StoreWriter::Begin(*region, 8);
  ASSERT_TRUE(w);
  ASSERT_TRUE((*w)->Commit());
  auto info = ReadInfo(*region);
  ASSERT_TRUE(info) << ErrorText(info);
  EXPECT_EQ(info->generation, 1u);
}

TEST_F(MemstoreTest, BadSpecs) {
  EXPECT_ERROR_HAS(Region::Open("nocolon"), "expected pmem:/dev/pmemN or dir:PATH");
  EXPECT_ERROR_HAS(Region::Open("dir:"), "expected pmem:/dev/pmemN or dir:PATH");
  EXPECT_ERROR_HAS(Region::Open("tape:/dev/st0"), "unknown backend 'tape'");
  // A regular file is no pmem device (open may already refuse O_DIRECT on tmpfs).
  std::string file = dir_ + "/not-a-device";
  int fd = open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
  close(fd);
  EXPECT_ERROR_HAS(Region::Open("pmem:" + file), "store pmem:" + file + ": ");
}

// ---- damage ----

TEST_F(MemstoreTest, CorruptBadMagic) {
  WriteSmallStore();
  char zero[8] = {};
  WriteAt(0, zero, sizeof zero);
  auto info = Info();
  EXPECT_ERROR_HAS(info, "no store here (bad magic)");
  EXPECT_EQ(info.error().code(), ENOENT);
}

TEST_F(MemstoreTest, CorruptWrongVersion) {
  WriteSmallStore();
  auto sb = ReadAt<Superblock>(0);
  sb.version = kFormatVersion + 1;
  SealSuperblock(&sb);  // only the version is wrong
  WriteStruct(0, sb);
  auto info = Info();
  EXPECT_ERROR_HAS(info, "format version 2, this kleap reads 1");
  EXPECT_EQ(info.error().code(), EPROTO);
}

TEST_F(MemstoreTest, CorruptSuperblockChecksum) {
  WriteSmallStore();
  FlipByte(offsetof(Superblock, created_ns) + 2);
  EXPECT_ERROR_HAS(Info(), "superblock checksum mismatch");
  // A flipped byte in the padding counts as much as one in a field.
  WriteSmallStore();
  FlipByte(offsetof(Superblock, pad) + 1000);
  EXPECT_ERROR_HAS(Info(), "superblock checksum mismatch");
  // And so does one in the checksum itself.
  WriteSmallStore();
  FlipByte(offsetof(Superblock, xxh3));
  EXPECT_ERROR_HAS(Info(), "superblock checksum mismatch");
}

TEST_F(MemstoreTest, CorruptSuperblockLayout) {
  WriteSmallStore();
  auto sb = ReadAt<Superblock>(0);
  sb.commit_offset += kPage;
  SealSuperblock(&sb);
  WriteStruct(0, sb);
  EXPECT_ERROR_HAS(Info(), "superblock layout is inconsistent");
}

TEST_F(MemstoreTest, CorruptTornBlob) {
  WriteSmallStore();
  auto info = Info();
  ASSERT_TRUE(info) << ErrorText(info);
  ASSERT_EQ(info->blobs.size(), 3u);
  const BlobInfo beta = info->blobs[1];
  ASSERT_EQ(beta.name, "beta");
  FlipByte(off_t(beta.offset + beta.size - 1));  // its very last byte
  auto region = Open();
  ASSERT_TRUE(region);
  // The header is intact, so ReadInfo passes; the blob's contents do not.
  auto again = ReadInfo(*region);
  ASSERT_TRUE(again) << ErrorText(again);
  auto v = VerifyBlob(*region, again->blobs[1]);
  EXPECT_ERROR_HAS(v, "blob beta is damaged: checksum mismatch");
  EXPECT_EQ(v.error().code(), EBADMSG);
  EXPECT_TRUE(VerifyBlob(*region, again->blobs[0]));
  EXPECT_TRUE(VerifyBlob(*region, again->blobs[2]));
}

TEST_F(MemstoreTest, CorruptTableChecksum) {
  WriteSmallStore();
  FlipByte(off_t(kPage + sizeof(TableEntry) + offsetof(TableEntry, size)));  // entry 1's size
  EXPECT_ERROR_HAS(Info(), "blob table checksum mismatch");
}

TEST_F(MemstoreTest, CorruptCommitChecksum) {
  WriteSmallStore();
  auto sb = ReadAt<Superblock>(0);
  FlipByte(off_t(sb.commit_offset + offsetof(CommitRecord, data_end)));
  EXPECT_ERROR_HAS(Info(), "commit record checksum mismatch");
}

TEST_F(MemstoreTest, CorruptMissingCommitUnfinishedWriter) {
  WriteSmallStore();
  {
    auto region = Open();
    ASSERT_TRUE(region);
    auto w = StoreWriter::Begin(*region, 8);
    ASSERT_TRUE(w);
    auto b = (*w)->CreateBlob("half");
    ASSERT_TRUE(b);
    std::string d = Pattern(9, 10000);
    ASSERT_TRUE((*b)->Write(d.data(), d.size()));
    ASSERT_TRUE((*b)->Close());
    // The writer dies here: no Commit.
  }
  auto info = Info();
  EXPECT_ERROR_HAS(info, "no commit record (the writer of generation 2 did not finish)");
  EXPECT_EQ(info.error().code(), ENODATA);
}

TEST_F(MemstoreTest, CorruptMissingCommitZeroed) {
  WriteSmallStore();
  auto sb = ReadAt<Superblock>(0);
  std::string zero(kPage, '\0');
  WriteAt(off_t(sb.commit_offset), zero.data(), zero.size());
  EXPECT_ERROR_HAS(Info(), "no commit record (the writer of generation 1 did not finish)");
}

TEST_F(MemstoreTest, CorruptCommitOfAnotherGeneration) {
  WriteSmallStore();
  auto sb1 = ReadAt<Superblock>(0);
  auto old_commit = ReadAt<CommitRecord>(off_t(sb1.commit_offset));
  WriteSmallStore();  // generation 2, same layout
  auto sb2 = ReadAt<Superblock>(0);
  ASSERT_EQ(sb2.generation, 2u);
  ASSERT_EQ(sb2.commit_offset, sb1.commit_offset);
  // A stale commit record of generation 1 (a replayed page, a lost write) is not taken.
  WriteStruct(off_t(sb2.commit_offset), old_commit);
  EXPECT_ERROR_HAS(Info(), "commit record of generation 1, superblock says 2");
}

TEST_F(MemstoreTest, CorruptCommitOutOfRange) {
  WriteSmallStore();
  auto sb = ReadAt<Superblock>(0);
  auto c = ReadAt<CommitRecord>(off_t(sb.commit_offset));
  c.data_end = sb.capacity + kPage;
  c.xxh3 = Xxh3(&c, offsetof(CommitRecord, xxh3));
  WriteStruct(off_t(sb.commit_offset), c);
  EXPECT_ERROR_HAS(Info(), "commit record out of range");
  c.data_end = sb.data_offset;
  c.blobs = sb.table_entries + 1;
  c.xxh3 = Xxh3(&c, offsetof(CommitRecord, xxh3));
  WriteStruct(off_t(sb.commit_offset), c);
  EXPECT_ERROR_HAS(Info(), "commit record out of range");
}

TEST_F(MemstoreTest, CorruptEntryOutsideRegion) {
  // Past the end of the data, by offset.
  WriteSmallStore();
  uint64_t data_end = Info()->used;
  PatchEntryAndReseal(2, [&](TableEntry& e) { e.offset = data_end + kPage; });
  EXPECT_ERROR_HAS(Info(), "blob table entry 2 (gamma) points outside the region");
  // By size, also a size that would wrap around.
  for (uint64_t size : {uint64_t(1) << 40, ~uint64_t(0), ~uint64_t(0) - kPage}) {
    WriteSmallStore();
    PatchEntryAndReseal(1, [&](TableEntry& e) { e.size = size; });
    EXPECT_ERROR_HAS(Info(), "blob table entry 1 (beta) points outside the region");
  }
  // Before the data, into the table and the commit record.
  WriteSmallStore();
  PatchEntryAndReseal(0, [&](TableEntry& e) { e.offset = kPage; });
  EXPECT_ERROR_HAS(Info(), "blob table entry 0 (alpha) points outside the region");
  // Not page-aligned.
  WriteSmallStore();
  PatchEntryAndReseal(1, [&](TableEntry& e) { e.offset += 1; });
  EXPECT_ERROR_HAS(Info(), "blob table entry 1 (beta) points outside the region");
}

TEST_F(MemstoreTest, CorruptOverlappingEntries) {
  WriteSmallStore();
  auto info = Info();
  ASSERT_TRUE(info);
  uint64_t alpha = info->blobs[0].offset;
  PatchEntryAndReseal(1, [&](TableEntry& e) { e.offset = alpha; });  // beta on top of alpha
  EXPECT_ERROR_HAS(Info(), "blob table entry 1 (beta)");
  // Out of order also counts: gamma moved in front of beta's end.
  WriteSmallStore();
  uint64_t beta = info->blobs[1].offset;
  PatchEntryAndReseal(2, [&](TableEntry& e) { e.offset = beta + kPage; });
  EXPECT_ERROR_HAS(Info(), "blob table entry 2 (gamma)");
}

TEST_F(MemstoreTest, CorruptDuplicateNames) {
  WriteSmallStore();
  PatchEntryAndReseal(2, [&](TableEntry& e) { snprintf(e.name, sizeof e.name, "alpha"); });
  EXPECT_ERROR_HAS(Info(), "blob alpha is listed twice");
}

TEST_F(MemstoreTest, CorruptEntryNames) {
  WriteSmallStore();
  PatchEntryAndReseal(1, [&](TableEntry& e) { memset(e.name, 0, sizeof e.name); });
  EXPECT_ERROR_HAS(Info(), "blob table entry 1 has no valid name");
  WriteSmallStore();
  PatchEntryAndReseal(1, [&](TableEntry& e) { memset(e.name, 'x', sizeof e.name); });  // no NUL
  EXPECT_ERROR_HAS(Info(), "blob table entry 1 has no valid name");
}

TEST_F(MemstoreTest, CorruptCapacityLargerThanRegion) {
  WriteSmallStore(1 << 20);
  ASSERT_EQ(truncate(image_.c_str(), 512 << 10), 0);
  auto info = Info();
  EXPECT_ERROR_HAS(info, "superblock says 1048576 bytes, the region holds 524288");
  EXPECT_EQ(info.error().code(), EBADMSG);
}

TEST_F(MemstoreTest, CorruptShortRegion) {
  // A file too short for even a superblock.
  WriteSmallStore(1 << 20);
  ASSERT_EQ(truncate(image_.c_str(), 100), 0);
  EXPECT_ERROR_HAS(Info(), "past the end");
}

// ---- a full store ----

TEST_F(MemstoreTest, FullStoreFailsInWrite) {
  auto region = Open(64 << 10);  // 52 KiB of data behind the header
  ASSERT_TRUE(region);
  auto w = StoreWriter::Begin(*region, 8);
  ASSERT_TRUE(w) << ErrorText(w);
  std::string d = Pattern(1, 64 << 10);
  AlignedBytes p = AlignedCopy(d);  // aligned whole pages go to the region at once
  auto b = (*w)->CreateBlob("huge.img");
  ASSERT_TRUE(b);
  auto r = (*b)->Write(p.get(), d.size());
  EXPECT_ERROR_HAS(r, "is full: blob huge.img");
  EXPECT_EQ(r.error().code(), ENOSPC);
  // A blob whose write failed is not recorded, and nothing of the generation commits.
  EXPECT_ERROR_HAS((*b)->Close(), "huge.img failed and was not recorded");
  EXPECT_ERROR_HAS((*w)->Commit(), "not committed, a blob failed");
  EXPECT_ERROR_HAS(ReadInfo(*region), "did not finish");
}

TEST_F(MemstoreTest, ReadingAMissingDirStoreCreatesNothing) {
  std::string missing = dir_ + "/typo";
  EXPECT_ERROR_HAS(Region::Open("dir:" + missing), "no store at " + missing);
  struct stat st;
  EXPECT_NE(stat(missing.c_str(), &st), 0) << "a reader created " << missing;
}

TEST_F(MemstoreTest, FullStoreFailsInStagedFlush) {
  auto region = Open(1 << 20);
  ASSERT_TRUE(region);
  auto w = StoreWriter::Begin(*region, 8);
  ASSERT_TRUE(w);
  std::string d = Pattern(2, (1 << 20) + 4096);  // fills the 1 MiB staging chunk
  auto b = (*w)->CreateBlob("staged.img");
  ASSERT_TRUE(b);
  auto r = (*b)->Write(d.data(), d.size());
  EXPECT_ERROR_HAS(r, "is full: blob staged.img");
  EXPECT_EQ(r.error().code(), ENOSPC);
}

TEST_F(MemstoreTest, FullStoreFailsInClose) {
  auto region = Open(64 << 10);
  ASSERT_TRUE(region);
  auto w = StoreWriter::Begin(*region, 8);
  ASSERT_TRUE(w);
  auto first = (*w)->CreateBlob("first.img");
  ASSERT_TRUE(first);
  std::string d = Pattern(1, 40000);
  ASSERT_TRUE((*first)->Write(d.data(), d.size()));
  ASSERT_TRUE((*first)->Close());
  auto second = (*w)->CreateBlob("second.img");
  ASSERT_TRUE(second);
  std::string d2 = Pattern(2, 20000);
  ASSERT_TRUE((*second)->Write(d2.data(), d2.size())) << "small writes are only staged";
  auto r = (*second)->Close();
  EXPECT_ERROR_HAS(r, "is full: blob second.img");
  EXPECT_EQ(r.error().code(), ENOSPC);
  // The failed blob keeps the store from being committed.
  EXPECT_FALSE((*w)->Commit());
  EXPECT_ERROR_HAS(ReadInfo(*region), "did not finish");
}

TEST_F(MemstoreTest, FullStoreExactFit) {
  auto region = Open(64 << 10);
  ASSERT_TRUE(region);
  auto w = StoreWriter::Begin(*region, 8);
  ASSERT_TRUE(w);
  uint64_t room = region->size() - (*w)->used();
  std::string d = Pattern(3, room);
  auto b = (*w)->CreateBlob("fits.img");
  ASSERT_TRUE(b);
  ASSERT_TRUE((*b)->Write(d.data(), d.size()));
  auto cl = (*b)->Close();
  ASSERT_TRUE(cl) << ErrorText(cl);
  auto e = (*w)->CreateBlob("empty-at-the-end.img");
  ASSERT_TRUE(e);
  ASSERT_TRUE((*e)->Close());
  ASSERT_TRUE((*w)->Commit());
  auto info = ReadInfo(*region);
  ASSERT_TRUE(info) << ErrorText(info);
  ASSERT_EQ(info->blobs.size(), 2u);
  EXPECT_EQ(info->used, region->size());
  EXPECT_EQ(info->blobs[1].offset, region->size());
  EXPECT_TRUE(VerifyBlob(*region, info->blobs[0]));
  EXPECT_TRUE(VerifyBlob(*region, info->blobs[1]));
}

TEST_F(MemstoreTest, FullTableAndTinyRegion) {
  auto region = Open(64 << 10);
  ASSERT_TRUE(region);
  auto w = StoreWriter::Begin(*region, 2);
  ASSERT_TRUE(w);
  for (const char* name : {"one", "two"}) {
    auto b = (*w)->CreateBlob(name);
    ASSERT_TRUE(b);
    ASSERT_TRUE((*b)->Close());
  }
  EXPECT_ERROR_HAS((*w)->CreateBlob("three"), "table full (2 blobs)");
  w->reset();
  region.reset();
  ASSERT_EQ(truncate(image_.c_str(), 8192), 0);
  region = Open();
  ASSERT_TRUE(region);
  auto tiny = StoreWriter::Begin(*region, 8);
  EXPECT_ERROR_HAS(tiny, "is too small");
  EXPECT_EQ(tiny.error().code(), ENOSPC);
  EXPECT_ERROR_HAS(StoreWriter::Begin(*region, 0), "0 table entries");
}

// ---- the engine's image-set interface ----

TEST_F(MemstoreTest, ImageSetRoundTrip) {
  auto region = Open(4 << 20);
  ASSERT_TRUE(region);
  auto w = imagestore::CreateStoreImageSet(std::move(region));
  ASSERT_TRUE(w) << ErrorText(w);
  EXPECT_EQ((*w)->Describe(), spec_);
  img::PsTree tree;
  tree.set_root_pid(42);
  auto* t = tree.add_tasks();
  t->set_pid(42);
  t->add_tids(42);
  t->add_tids(43);
  t->set_comm("demo");
  auto wm = (*w)->WriteMessage("pstree.img", tree);
  ASSERT_TRUE(wm) << ErrorText(wm);
  std::string pages = Pattern(11, 3 * 4096);
  {
    auto b = (*w)->CreateBlob("pages-42.img");
    ASSERT_TRUE(b);
    ASSERT_TRUE((*b)->Write(pages.data(), pages.size()));
    ASSERT_TRUE((*b)->Close());
  }
  EXPECT_ERROR_HAS((*w)->CreateBlob(kInventoryName), "bad image name 'inventory.img'");
  img::Inventory inv;
  inv.set_format_version(kImageFormatVersion);
  inv.set_root_pid(42);
  auto cm = (*w)->Commit(inv);
  ASSERT_TRUE(cm) << ErrorText(cm);
  w->reset();

  auto reg2 = Open();
  ASSERT_TRUE(reg2);
  auto r = imagestore::OpenStoreImageSet(std::move(reg2));
  ASSERT_TRUE(r) << ErrorText(r);
  EXPECT_EQ((*r)->Describe(), spec_);
  EXPECT_EQ((*r)->inventory().root_pid(), 42);
  ASSERT_EQ((*r)->inventory().images_size(), 2);
  EXPECT_EQ((*r)->inventory().images(0).name(), "pstree.img");
  EXPECT_EQ((*r)->inventory().images(1).name(), "pages-42.img");
  EXPECT_EQ((*r)->inventory().images(1).size(), pages.size());
  img::PsTree got;
  auto rm = (*r)->ReadMessage("pstree.img", &got);
  ASSERT_TRUE(rm) << ErrorText(rm);
  EXPECT_EQ(got.root_pid(), 42);
  ASSERT_EQ(got.tasks_size(), 1);
  EXPECT_EQ(got.tasks(0).comm(), "demo");
  EXPECT_EQ(got.tasks(0).tids_size(), 2);
  auto blob = (*r)->OpenBlob("pages-42.img");
  ASSERT_TRUE(blob) << ErrorText(blob);
  EXPECT_EQ((*blob)->size(), pages.size());
  auto m = (*blob)->Map(4096, 8192);
  ASSERT_TRUE(m) << ErrorText(m);
  EXPECT_TRUE(std::string(reinterpret_cast<const char*>(*m), 8192) == pages.substr(4096, 8192));
  std::string part(100, '\0');
  ASSERT_TRUE((*blob)->ReadAt(50, part.data(), part.size()));
  EXPECT_TRUE(part == pages.substr(50, 100));
  EXPECT_ERROR_HAS((*blob)->ReadAt(pages.size() - 1, part.data(), 2), "read past the end");
  EXPECT_ERROR_HAS((*blob)->Map(pages.size(), 1), "map past the end");
  EXPECT_TRUE((*r)->VerifyImage("pages-42.img"));
  EXPECT_ERROR_HAS((*r)->OpenBlob("nope.img"), "nope.img: not listed in the inventory");
  auto stored = (*r)->ListStored();
  ASSERT_TRUE(stored);
  EXPECT_EQ(*stored, (std::vector<std::string>{"pstree.img", "pages-42.img", kInventoryName}));
}

TEST_F(MemstoreTest, ImageSetWithoutInventory) {
  {
    auto region = Open(1 << 20);
    ASSERT_TRUE(region);
    auto w = StoreWriter::Begin(*region, 8);
    ASSERT_TRUE(w);
    auto b = (*w)->CreateBlob("pstree.img");
    ASSERT_TRUE(b);
    ASSERT_TRUE((*b)->Write("x", 1));
    ASSERT_TRUE((*b)->Close());
    ASSERT_TRUE((*w)->Commit());
  }
  auto region = Open();
  ASSERT_TRUE(region);
  auto r = imagestore::OpenStoreImageSet(std::move(region));
  EXPECT_ERROR_HAS(r, "holds no image set (no inventory.img)");
  EXPECT_EQ(r.error().code(), ENOENT);
}

TEST_F(MemstoreTest, ImageSetDamagedInventory) {
  {
    auto region = Open(1 << 20);
    ASSERT_TRUE(region);
    auto w = imagestore::CreateStoreImageSet(std::move(region));
    ASSERT_TRUE(w);
    img::Inventory inv;
    inv.set_format_version(kImageFormatVersion);
    ASSERT_TRUE((*w)->Commit(inv));
  }
  auto info = Info();
  ASSERT_TRUE(info);
  ASSERT_EQ(info->blobs.size(), 1u);
  FlipByte(off_t(info->blobs[0].offset));
  auto region = Open();
  ASSERT_TRUE(region);
  EXPECT_ERROR_HAS(imagestore::OpenStoreImageSet(std::move(region)),
                   "blob inventory.img is damaged");
}

// ---- the parsers, mutated ----

// Checks that whatever a parser accepted obeys the rules the readers rely on.
void CheckSuperblock(const Superblock& sb, uint64_t region_size) {
  ASSERT_EQ(memcmp(sb.magic, "KLEAPMS1", 8), 0);
  ASSERT_EQ(sb.version, kFormatVersion);
  ASSERT_LE(sb.capacity, region_size);
  ASSERT_EQ(sb.table_offset, kPage);
  ASSERT_GE(sb.table_entries, 1u);
  ASSERT_LE(sb.table_entries, 1u << 16);
  ASSERT_GE(sb.commit_offset, sb.table_offset + sb.table_entries * sizeof(TableEntry));
  ASSERT_EQ(sb.data_offset, sb.commit_offset + kPage);
  ASSERT_LE(sb.data_offset, sb.capacity);
}

void CheckCommit(const CommitRecord& c, const Superblock& sb) {
  ASSERT_EQ(c.generation, sb.generation);
  ASSERT_LE(c.blobs, sb.table_entries);
  ASSERT_GE(c.data_end, sb.data_offset);
  ASSERT_LE(c.data_end, sb.capacity);
}

void CheckTable(const std::vector<BlobInfo>& blobs, const Superblock& sb, const CommitRecord& c) {
  ASSERT_EQ(blobs.size(), c.blobs);
  std::set<std::string> names;
  uint64_t prev_end = sb.data_offset;
  for (auto& b : blobs) {
    ASSERT_FALSE(b.name.empty());
    ASSERT_LE(b.name.size(), kNameMax);
    ASSERT_EQ(b.name.find('\0'), std::string::npos);
    ASSERT_TRUE(names.insert(b.name).second) << b.name;
    ASSERT_EQ(b.offset % kPage, 0u);
    ASSERT_GE(b.offset, prev_end);
    ASSERT_GE(b.offset, sb.data_offset);
    ASSERT_LE(b.offset, c.data_end);
    ASSERT_LE(b.size, c.data_end - b.offset);  // within [data_offset, data_end], no wrap
    prev_end = b.offset + b.size;
  }
}

TEST(MemstoreParserMutation, TwentyThousandMutations) {
  constexpr uint64_t kCap = 1 << 20;
  // A valid header: a superblock, a table of four entries, a commit record.
  auto sb0 = NewSuperblock(kCap, 7, 8);
  ASSERT_TRUE(sb0) << ErrorText(sb0);
  snprintf(sb0->writer_release, sizeof sb0->writer_release, "6.1.0-test");
  snprintf(sb0->writer_boot_id, sizeof sb0->writer_boot_id, "00000000-0000-0000-0000-000000000000");
  sb0->created_ns = 1700000000000000000ull;  // not the clock: the same bytes every run
  SealSuperblock(&*sb0);
  std::vector<TableEntry> table0(4);
  uint64_t at = sb0->data_offset;
  const uint64_t sizes[] = {5000, 0, 3 * 4096, 1};
  for (size_t i = 0; i < table0.size(); ++i) {
    snprintf(table0[i].name, sizeof table0[i].name, "blob-%zu.img", i);
    table0[i].offset = at;
    table0[i].size = sizes[i];
    table0[i].xxh3 = 0x1234 + i;
    at = AlignUp(at + sizes[i]);
  }
  CommitRecord c0 = NewCommit(*sb0, table0, at);
  c0.committed_ns = 1700000000000000001ull;
  c0.xxh3 = Xxh3(&c0, offsetof(CommitRecord, xxh3));
  std::string sb_bytes(reinterpret_cast<const char*>(&*sb0), sizeof *sb0);
  std::string commit_bytes(reinterpret_cast<const char*>(&c0), sizeof c0);
  commit_bytes.resize(kPage, '\0');
  std::string table_bytes(reinterpret_cast<const char*>(table0.data()),
                          table0.size() * sizeof(TableEntry));
  table_bytes.resize(8 * sizeof(TableEntry), '\0');

  // The unmutated header parses, and the checks below agree with it.
  {
    auto sb = ParseSuperblock(sb_bytes, kCap);
    ASSERT_TRUE(sb) << ErrorText(sb);
    auto c = ParseCommit(commit_bytes, *sb);
    ASSERT_TRUE(c) << ErrorText(c);
    auto t = ParseTable(table_bytes, *sb, *c);
    ASSERT_TRUE(t) << ErrorText(t);
    ASSERT_EQ(t->size(), 4u);
    CheckTable(*t, *sb, *c);
  }

  std::mt19937_64 rng(0x6b6c656170u);  // fixed: the same 20000 cases every run
  auto pick = [&](uint64_t n) { return n ? rng() % n : 0; };
  // Values that sit on the edges of the checks.
  auto interesting = [&](const Superblock& sb) -> uint64_t {
    const uint64_t v[] = {0,
                          1,
                          kPage,
                          kPage - 1,
                          kPage + 1,
                          sb.data_offset,
                          sb.commit_offset,
                          sb.capacity,
                          sb.capacity - kPage,
                          sb.capacity + kPage,
                          1u << 16,
                          (1u << 16) + 1,
                          ~uint64_t(0),
                          ~uint64_t(0) - kPage + 1,
                          uint64_t(1) << 63,
                          uint64_t(1) << 57,
                          c0.data_end,
                          sb.generation,
                          sb.generation + 1};
    return v[pick(std::size(v))];
  };
  auto mutate = [&](std::string& s, size_t hot_len) {
    int n = 1 + int(pick(4));
    for (int k = 0; k < n && !s.empty(); ++k) {
      // Mostly within the fields; sometimes anywhere.
      size_t limit = pick(4) ? std::min(hot_len, s.size()) : s.size();
      size_t pos = pick(limit);
      switch (pick(5)) {
        case 0:
          s[pos] ^= char(1u << pick(8));
          break;
        case 1:
          s[pos] = char(rng());
          break;
        case 2: {
          uint64_t v = interesting(*sb0);
          size_t p8 = pos & ~size_t(7);
          if (p8 + 8 <= s.size()) memcpy(&s[p8], &v, 8);
          break;
        }
        case 3: {
          uint64_t v = rng();
          size_t p8 = pos & ~size_t(7);
          if (p8 + 8 <= s.size()) memcpy(&s[p8], &v, 8);
          break;
        }
        case 4:
          if (pick(8) == 0)
            s.resize(pick(s.size() + 1));  // short read
          else
            s[pos] = 0;
          break;
      }
    }
  };

  // Stops the test at the first mutation whose parse result breaks a rule.
#define CHECKED(call)                                                        \
  do {                                                                       \
    call;                                                                    \
    if (HasFatalFailure()) FAIL() << "mutation " << iter << " broke a rule"; \
  } while (0)

  int sb_ok = 0, sb_err = 0, commit_ok = 0, commit_err = 0, table_ok = 0, table_err = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string sbm = sb_bytes, cm = commit_bytes, tm = table_bytes;
    uint64_t region = kCap;
    switch (pick(8)) {
      case 0:
        region = kCap - kPage;
        break;
      case 1:
        region = rng();
        break;
      case 2:
        region = 0;
        break;
      default:
        break;
    }
    unsigned which = unsigned(pick(7)) + 1;  // a non-empty subset of {sb, commit, table}
    if (which & 1) mutate(sbm, 256);
    if (which & 2) mutate(cm, sizeof(CommitRecord));
    if (which & 4) mutate(tm, table0.size() * sizeof(TableEntry));
    // Most of the time make the checksums agree again, so the checks behind them run.
    bool reseal = pick(4) != 0;
    if (reseal && sbm.size() >= sizeof(Superblock)) {
      Superblock s;
      memcpy(&s, sbm.data(), sizeof s);
      SealSuperblock(&s);
      memcpy(sbm.data(), &s, sizeof s);
    }

    auto sb = ParseSuperblock(sbm, region);
    if (sb) {
      ++sb_ok;
      CHECKED(CheckSuperblock(*sb, region));
    } else {
      ++sb_err;
      ASSERT_NE(sb.error().code(), 0);
      ASSERT_FALSE(sb.error().message().empty());
    }
    // The later parsers only ever see a superblock that parsed: the original one if not.
    const Superblock& s = sb ? *sb : *sb0;

    if (reseal && cm.size() >= sizeof(CommitRecord)) {
      CommitRecord c;
      memcpy(&c, cm.data(), sizeof c);
      if (pick(2)) c.generation = s.generation;
      uint64_t len = c.blobs <= s.table_entries ? c.blobs * sizeof(TableEntry) : 0;
      if (len <= tm.size()) c.table_xxh3 = Xxh3(tm.data(), len);
      c.xxh3 = Xxh3(&c, offsetof(CommitRecord, xxh3));
      memcpy(cm.data(), &c, sizeof c);
    }
    auto c = ParseCommit(cm, s);
    if (!c) {
      ++commit_err;
      ASSERT_FALSE(c.error().message().empty());
      continue;
    }
    ++commit_ok;
    CHECKED(CheckCommit(*c, s));

    auto t = ParseTable(tm, s, *c);
    if (!t) {
      ++table_err;
      ASSERT_FALSE(t.error().message().empty());
      continue;
    }
    ++table_ok;
    CHECKED(CheckTable(*t, s, *c));
  }
#undef CHECKED
  printf(
      "[          ] superblock %d ok %d refused; commit %d ok %d refused; table %d ok %d refused\n",
      sb_ok, sb_err, commit_ok, commit_err, table_ok, table_err);
  // The mutations reach every parser and every parser both accepts and refuses.
  EXPECT_GT(sb_ok, 500);
  EXPECT_GT(sb_err, 500);
  EXPECT_GT(commit_ok, 500);
  EXPECT_GT(commit_err, 500);
  EXPECT_GT(table_ok, 500);
  EXPECT_GT(table_err, 500);
}

}  // namespace
}  // namespace kleap::memstore
