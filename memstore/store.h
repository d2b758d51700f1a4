// The memstore: named blobs in a region that survives kexec (pmem), or in a file (dir).
// It knows no processes and no images: the engine's image sets live in it through
// imagestore/, which joins the two.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
#include "memstore/format.h"

namespace kleap::memstore {

struct AlignedFree {
  void operator()(void* p) const { free(p); }
};
// A page-aligned buffer, for reads and writes that go straight to an O_DIRECT region.
using AlignedBuf = std::unique_ptr<uint8_t[], AlignedFree>;
AlignedBuf AllocAligned(size_t n);

// One blob being written into a store: its bytes in order, then Close, which records its
// size and checksum in the store's table. Blobs are laid out one after another, so a
// store has one open at a time.
class BlobWriter {
 public:
  virtual ~BlobWriter() = default;
  virtual Result<void> Write(const void* data, size_t len) = 0;
  virtual Result<void> Close() = 0;
  virtual uint64_t size() const = 0;
};

// A byte range a store lives in: a pmem block device or a file.
class Region {
 public:
  // An existing region: "pmem:/dev/pmem0" or "dir:/var/lib/kleap/store".
  static Result<std::unique_ptr<Region>> Open(const std::string& spec);
  // The same for a writer: a dir store is created when missing (a sparse file of
  // `create_size` bytes, 16 GiB when 0), and grown to `create_size`.
  static Result<std::unique_ptr<Region>> Create(const std::string& spec, uint64_t create_size = 0);
  const std::string& spec() const { return spec_; }
  uint64_t size() const { return size_; }
  bool direct() const { return direct_; }
  Result<void> Read(uint64_t off, void* buf, size_t len);
  Result<void> Write(uint64_t off, const void* buf, size_t len);
  Result<void> Sync();
  // Overwrites every byte of the region with zeros.
  Result<void> Wipe();

 private:
  Region() = default;
  static Result<std::unique_ptr<Region>> OpenImpl(const std::string& spec, bool create,
                                                  uint64_t create_size);
  Result<void> Io(bool write, uint64_t off, void* buf, size_t len);
  std::string spec_, path_;
  UniqueFd fd_;
  uint64_t size_ = 0;
  bool direct_ = false;  // O_DIRECT: no second copy in the page cache
};

struct StoreInfo {
  std::string spec;
  uint64_t capacity = 0, generation = 0, used = 0, created_ns = 0, committed_ns = 0;
  std::string writer_release, writer_boot_id;
  std::vector<BlobInfo> blobs;
};

// Reads the header and checks everything but the blob contents.
Result<StoreInfo> ReadInfo(Region& region);
// Checks one blob's contents against its checksum.
Result<void> VerifyBlob(Region& region, const BlobInfo& blob);
// Test hook: flips one byte in the middle of the middle blob, so that its checksum
// fails. Returns that blob and the region offset of the byte.
Result<std::pair<std::string, uint64_t>> DamageOneBlob(Region& region);

class StoreWriter {
 public:
  // Starts a new generation: the old store is invalid from here on.
  static Result<std::unique_ptr<StoreWriter>> Begin(Region& region, uint64_t table_entries = 4096);
  Result<std::unique_ptr<BlobWriter>> CreateBlob(const std::string& name);
  Result<void> Commit();
  uint64_t used() const { return next_; }
  std::vector<BlobInfo> blobs() const;

 private:
  friend class StoreBlobWriter;
  explicit StoreWriter(Region& r) : region_(r) {}
  Region& region_;
  Superblock sb_{};
  std::vector<TableEntry> table_;
  uint64_t next_ = 0;
  bool open_blob_ = false;
  Error failed_;  // a blob failed: this generation can't be committed
  bool has_failed_ = false;
};

// "pmem:/dev/pmem0" -> backend "pmem", path "/dev/pmem0".
Result<std::pair<std::string, std::string>> ParseSpec(const std::string& spec);

}  // namespace kleap::memstore
