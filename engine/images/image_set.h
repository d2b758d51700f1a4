// The image-set interface: how the engine writes and reads a set of images. The
// engine knows nothing about where a set lives; DirImageSet keeps one in a directory,
// and the memstore (a later component) will provide its own implementation.
//
// A set holds framed protobuf messages and raw blobs (page-aligned memory pages).
// Every image is checksummed (XXH3-64) in the inventory, which is written last: a set
// whose writer died half-way has no inventory and is never taken as whole.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/message.h>

#include "engine/base/result.h"
#include "engine/images/inventory.pb.h"

namespace kleap {

inline constexpr uint32_t kImageFormatVersion = 1;

// This boot's id (/proc/sys/kernel/random/boot_id), as inventories record it.
std::string BootId();
// An inventory for a set written now by this kleap on this kernel: format and tool
// version, kernel release, machine, boot id, time. The writer adds the rest.
img::Inventory NewInventory();
inline constexpr char kInventoryName[] = "inventory.img";

class BlobWriter {
 public:
  virtual ~BlobWriter() = default;
  virtual Result<void> Write(const void* data, size_t len) = 0;
  // Finishes the blob and records its size and checksum for the inventory.
  virtual Result<void> Close() = 0;
  virtual uint64_t size() const = 0;
};

// Blobs are written one at a time: a writer may lay them out one after another (the
// memstore does), so the engine closes each blob before it creates the next.
class ImageWriter {
 public:
  virtual ~ImageWriter() = default;
  virtual Result<std::unique_ptr<BlobWriter>> CreateBlob(const std::string& name) = 0;
  // Writes `inv` with the recorded image entries as the last step.
  virtual Result<void> Commit(img::Inventory inv) = 0;
  virtual std::string Describe() const = 0;

  Result<void> WriteMessage(const std::string& name, const google::protobuf::Message& msg);
};

class BlobReader {
 public:
  virtual ~BlobReader() = default;
  virtual uint64_t size() const = 0;
  virtual Result<void> ReadAt(uint64_t off, void* buf, size_t len) = 0;
  // Maps [off, off+len) read-only, or returns nullptr when the backend can't map.
  // The mapping lives until the next Map call or the reader's destruction.
  virtual Result<const uint8_t*> Map(uint64_t off, size_t len) = 0;
};

// Names kleap writes and reads back: printable ASCII, no '/', no leading '.'.
bool ValidImageName(const std::string& name);

class ImageReader {
 public:
  virtual ~ImageReader() = default;
  const img::Inventory& inventory() const { return inventory_; }
  // Opens an image listed in the inventory; the size must match the inventory.
  virtual Result<std::unique_ptr<BlobReader>> OpenBlob(const std::string& name) = 0;
  virtual std::string Describe() const = 0;
  // Names that exist in the set's storage, listed in the inventory or not.
  virtual Result<std::vector<std::string>> ListStored() = 0;

  const img::ImageEntry* Find(const std::string& name) const;
  bool Has(const std::string& name) const { return Find(name) != nullptr; }
  // Reads a framed message and checks its checksum against the inventory.
  Result<void> ReadMessage(const std::string& name, google::protobuf::Message* msg);
  // Reads a whole image and compares its checksum with the inventory.
  Result<void> VerifyImage(const std::string& name);

 protected:
  // After inventory_ is read: every name is one a writer takes (no '/', no leading
  // '.', so no name reaches outside the set) and none is listed twice. `where` names
  // the set in the error.
  Result<void> CheckInventory(const std::string& where) const;
  img::Inventory inventory_;
};

// A set in a directory (mode 0700, files 0600).
Result<std::unique_ptr<ImageWriter>> CreateDirImageSet(const std::string& dir);
Result<std::unique_ptr<ImageReader>> OpenDirImageSet(const std::string& dir);

// Frames and unframes a message: "KLEAPIM1", u32 little-endian length, payload.
std::string FrameMessage(const google::protobuf::Message& msg);
Result<void> UnframeMessage(const std::string& name, const std::string& bytes,
                            google::protobuf::Message* msg);

}  // namespace kleap
