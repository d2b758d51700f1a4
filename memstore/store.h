// The memstore: named blobs in a region that survives kexec (pmem), or in a file (dir).
// It knows no processes; the engine's image sets live in it through StoreImageWriter and
// StoreImageReader, which implement the engine's image-set interface.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/base/result.h"
#include "engine/base/unique_fd.h"
#include "engine/images/image_set.h"
#include "memstore/format.h"

namespace kleap::memstore {

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

// The engine's image-set interface over a store.
Result<std::unique_ptr<ImageWriter>> CreateStoreImageSet(std::unique_ptr<Region> region);
Result<std::unique_ptr<ImageReader>> OpenStoreImageSet(std::unique_ptr<Region> region);

// "pmem:/dev/pmem0" -> backend "pmem", path "/dev/pmem0".
Result<std::pair<std::string, std::string>> ParseSpec(const std::string& spec);

}  // namespace kleap::memstore
