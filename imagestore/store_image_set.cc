#include "imagestore/store_image_set.h"

#include <algorithm>
#include <string>
#include <vector>

namespace kleap::imagestore {
namespace {

// A blob of the store as the engine writes it.
class StoreBlobSink : public BlobWriter {
 public:
  explicit StoreBlobSink(std::unique_ptr<memstore::BlobWriter> b) : b_(std::move(b)) {}
  Result<void> Write(const void* data, size_t len) override { return b_->Write(data, len); }
  Result<void> Close() override { return b_->Close(); }
  uint64_t size() const override { return b_->size(); }

 private:
  std::unique_ptr<memstore::BlobWriter> b_;
};

class StoreImageWriter : public ImageWriter {
 public:
  StoreImageWriter(std::unique_ptr<memstore::Region> r, std::unique_ptr<memstore::StoreWriter> w)
      : region_(std::move(r)), w_(std::move(w)) {}
  Result<std::unique_ptr<BlobWriter>> CreateBlob(const std::string& name) override {
    if (!ValidImageName(name) || name == kInventoryName)
      return Err(EINVAL) << "bad image name '" << name << "'";
    auto b = KLEAP_TRY(w_->CreateBlob(name));
    return std::unique_ptr<BlobWriter>(new StoreBlobSink(std::move(b)));
  }
  Result<void> Commit(img::Inventory inv) override {
    inv.clear_images();
    for (auto& b : w_->blobs()) {
      img::ImageEntry* e = inv.add_images();
      e->set_name(b.name);
      e->set_size(b.size);
      e->set_xxh3(b.xxh3);
    }
    std::string bytes = FrameMessage(inv);
    auto b = KLEAP_TRY(w_->CreateBlob(kInventoryName));
    KLEAP_TRY(b->Write(bytes.data(), bytes.size()));
    KLEAP_TRY(b->Close());
    return w_->Commit();
  }
  std::string Describe() const override { return region_->spec(); }

 private:
  std::unique_ptr<memstore::Region> region_;
  std::unique_ptr<memstore::StoreWriter> w_;
};

class StoreBlobReader : public BlobReader {
 public:
  StoreBlobReader(memstore::Region& r, memstore::BlobInfo b) : region_(r), blob_(std::move(b)) {}
  uint64_t size() const override { return blob_.size; }
  Result<void> ReadAt(uint64_t off, void* buf, size_t len) override {
    if (off > blob_.size || len > blob_.size - off)
      return Err(EINVAL) << "store blob " << blob_.name << ": read past the end";
    return region_.Read(blob_.offset + off, buf, len);
  }
  // No mapping of a pmem block device without the page cache: read the window instead.
  Result<const uint8_t*> Map(uint64_t off, size_t len) override {
    if (off > blob_.size || len > blob_.size - off)
      return Err(EINVAL) << "store blob " << blob_.name << ": map past the end";
    if (len > cap_) {
      buf_ = memstore::AllocAligned(len);
      cap_ = size_t(memstore::AlignUp(len));
    }
    KLEAP_TRY(region_.Read(blob_.offset + off, buf_.get(), len));
    return static_cast<const uint8_t*>(buf_.get());
  }

 private:
  memstore::Region& region_;
  memstore::BlobInfo blob_;
  memstore::AlignedBuf buf_;
  size_t cap_ = 0;
};

class StoreImageReader : public ImageReader {
 public:
  explicit StoreImageReader(std::unique_ptr<memstore::Region> r) : region_(std::move(r)) {}
  Result<void> Load() {
    info_ = KLEAP_TRY(memstore::ReadInfo(*region_));
    auto it = std::find_if(info_.blobs.begin(), info_.blobs.end(),
                           [](auto& b) { return b.name == kInventoryName; });
    if (it == info_.blobs.end())
      return Err(ENOENT) << "store " << region_->spec() << " holds no image set (no "
                         << kInventoryName << ")";
    KLEAP_TRY(memstore::VerifyBlob(*region_, *it));
    std::string bytes(it->size, '\0');
    KLEAP_TRY(region_->Read(it->offset, bytes.data(), bytes.size()));
    KLEAP_TRY(UnframeMessage(kInventoryName, bytes, &inventory_));
    if (inventory_.format_version() != kImageFormatVersion)
      return Err(EINVAL) << "store " << region_->spec() << ": image format version "
                         << inventory_.format_version();
    return CheckInventory("store " + region_->spec());
  }
  Result<std::unique_ptr<BlobReader>> OpenBlob(const std::string& name) override {
    const img::ImageEntry* e = Find(name);
    if (!e) return Err(ENOENT) << name << ": not listed in the inventory of " << region_->spec();
    auto it = std::find_if(info_.blobs.begin(), info_.blobs.end(),
                           [&](auto& b) { return b.name == name; });
    if (it == info_.blobs.end())
      return Err(ENOENT) << "image " << name << " is missing from store " << region_->spec();
    if (it->size != e->size())
      return Err(EINVAL) << "image " << name << " is damaged: size " << it->size
                         << ", inventory says " << e->size();
    return std::unique_ptr<BlobReader>(new StoreBlobReader(*region_, *it));
  }
  std::string Describe() const override { return region_->spec(); }
  Result<std::vector<std::string>> ListStored() override {
    std::vector<std::string> out;
    for (auto& b : info_.blobs) out.push_back(b.name);
    return out;
  }

 private:
  std::unique_ptr<memstore::Region> region_;
  memstore::StoreInfo info_;
};

}  // namespace

Result<std::unique_ptr<ImageWriter>> CreateStoreImageSet(std::unique_ptr<memstore::Region> region) {
  auto w = KLEAP_TRY(memstore::StoreWriter::Begin(*region));
  return std::unique_ptr<ImageWriter>(new StoreImageWriter(std::move(region), std::move(w)));
}

Result<std::unique_ptr<ImageReader>> OpenStoreImageSet(std::unique_ptr<memstore::Region> region) {
  auto r = std::make_unique<StoreImageReader>(std::move(region));
  KLEAP_TRY(r->Load());
  return std::unique_ptr<ImageReader>(std::move(r));
}

}  // namespace kleap::imagestore
