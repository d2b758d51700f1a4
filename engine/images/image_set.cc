#include "engine/images/image_set.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <dirent.h>
#include <cstring>
#include <set>

#include "engine/base/clock.h"
#include "engine/base/proc.h"
#include "engine/base/unique_fd.h"

namespace kleap {

std::string BootId() {
  // Read each time: a process restored after a kexec is on another boot (kleapd's job
  // tells it came back that way).
  auto s = ReadFileToString("/proc/sys/kernel/random/boot_id");
  return s ? std::string(Trim(*s)) : std::string();
}

img::Inventory NewInventory() {
  img::Inventory inv;
  inv.set_format_version(kImageFormatVersion);
  utsname u;
  uname(&u);
  inv.set_kernel_release(u.release);
  inv.set_arch(u.machine);
  inv.set_tool_version(KLEAP_VERSION);
  inv.set_created_unix_ns(uint64_t(NowNs()));
  inv.set_boot_id(BootId());
  return inv;
}
// Names kleap writes: printable ASCII, no '/', no leading '.' (".", "..", the temporary
// inventory). A name read back is held to the same rule, so it can't reach outside the set.
bool ValidImageName(const std::string& name) {
  if (name.empty() || name.size() >= 200 || name[0] == '.') return false;
  for (char c : name)
    if (c <= ' ' || c > '~' || c == '/') return false;
  return true;
}

namespace {

constexpr char kFrameMagic[8] = {'K', 'L', 'E', 'A', 'P', 'I', 'M', '1'};
constexpr size_t kFrameHeader = 12;
constexpr size_t kMaxMessage = 256u << 20;

Result<void> WriteAll(int fd, const void* data, size_t len, const std::string& what) {
  auto* p = static_cast<const uint8_t*>(data);
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError() << "write " << what;
    }
    p += n;
    len -= size_t(n);
  }
  return Ok();
}

class DirBlobWriter : public BlobWriter {
 public:
  DirBlobWriter(UniqueFd fd, std::string path, std::string name,
                std::vector<img::ImageEntry>* entries)
      : fd_(std::move(fd)), path_(std::move(path)), name_(std::move(name)), entries_(entries) {
    XXH3_64bits_reset(&state_);
  }
  ~DirBlobWriter() override {
    if (fd_) (void)Close();
  }
  Result<void> Write(const void* data, size_t len) override {
    XXH3_64bits_update(&state_, data, len);
    KLEAP_TRY(WriteAll(fd_.get(), data, len, path_));
    size_ += len;
    return Ok();
  }
  Result<void> Close() override {
    if (!fd_) return Ok();
    if (close(fd_.release()) < 0) return ErrnoError() << "close " << path_;
    img::ImageEntry e;
    e.set_name(name_);
    e.set_size(size_);
    e.set_xxh3(XXH3_64bits_digest(&state_));
    entries_->push_back(std::move(e));
    return Ok();
  }
  uint64_t size() const override { return size_; }

 private:
  UniqueFd fd_;
  std::string path_, name_;
  std::vector<img::ImageEntry>* entries_;
  XXH3_state_t state_;
  uint64_t size_ = 0;
};

class DirImageWriter : public ImageWriter {
 public:
  explicit DirImageWriter(std::string dir) : dir_(std::move(dir)) {}
  Result<std::unique_ptr<BlobWriter>> CreateBlob(const std::string& name) override {
    if (!ValidImageName(name) || name == kInventoryName)
      return Err(EINVAL) << "bad image name '" << name << "'";
    std::string path = dir_ + "/" + name;
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd) return ErrnoError() << "create " << path;
    return std::unique_ptr<BlobWriter>(new DirBlobWriter(std::move(fd), path, name, &entries_));
  }
  Result<void> Commit(img::Inventory inv) override {
    inv.clear_images();
    for (auto& e : entries_) *inv.add_images() = e;
    std::string bytes = FrameMessage(inv);
    std::string tmp = dir_ + "/.inventory.tmp";
    UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd) return ErrnoError() << "create " << tmp;
    KLEAP_TRY(WriteAll(fd.get(), bytes.data(), bytes.size(), tmp));
    if (fsync(fd.get()) < 0) return ErrnoError() << "fsync " << tmp;
    std::string final_path = dir_ + "/" + kInventoryName;
    if (rename(tmp.c_str(), final_path.c_str()) < 0) return ErrnoError() << "rename " << tmp;
    return Ok();
  }
  std::string Describe() const override { return dir_; }

 private:
  std::string dir_;
  std::vector<img::ImageEntry> entries_;
};

class DirBlobReader : public BlobReader {
 public:
  DirBlobReader(UniqueFd fd, std::string path, uint64_t size)
      : fd_(std::move(fd)), path_(std::move(path)), size_(size) {}
  ~DirBlobReader() override { Unmap(); }
  uint64_t size() const override { return size_; }
  Result<void> ReadAt(uint64_t off, void* buf, size_t len) override {
    if (off > size_ || len > size_ - off)
      return Err(EINVAL) << path_ << ": read of " << len << " bytes at " << off << " past the end ("
                         << size_ << ")";
    auto* p = static_cast<uint8_t*>(buf);
    while (len) {
      ssize_t n = pread(fd_.get(), p, len, off_t(off));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoError() << "read " << path_;
      if (n == 0) return Err(EIO) << path_ << ": truncated";
      p += n;
      off += uint64_t(n);
      len -= size_t(n);
    }
    return Ok();
  }
  Result<const uint8_t*> Map(uint64_t off, size_t len) override {
    if (off > size_ || len > size_ - off)
      return Err(EINVAL) << path_ << ": map of " << len << " bytes at " << off << " past the end";
    Unmap();
    uint64_t aligned = off & ~uint64_t(4095);
    size_t map_len = len + size_t(off - aligned);
    if (map_len == 0) return static_cast<const uint8_t*>(nullptr);
    void* p =
        mmap(nullptr, map_len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd_.get(), off_t(aligned));
    if (p == MAP_FAILED) return ErrnoError() << "mmap " << path_;
    map_ = p;
    map_len_ = map_len;
    return static_cast<const uint8_t*>(p) + (off - aligned);
  }

 private:
  void Unmap() {
    if (map_) munmap(map_, map_len_);
    map_ = nullptr;
  }
  UniqueFd fd_;
  std::string path_;
  uint64_t size_;
  void* map_ = nullptr;
  size_t map_len_ = 0;
};

class DirImageReader : public ImageReader {
 public:
  explicit DirImageReader(std::string dir) : dir_(std::move(dir)) {}
  Result<void> Load() {
    std::string path = dir_ + "/" + kInventoryName;
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      if (errno == ENOENT)
        return Err(ENOENT) << dir_ << ": no " << kInventoryName
                           << " (not an image set, or its dump did not finish)";
      return ErrnoError() << "open " << path;
    }
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return ErrnoError() << "stat " << path;
    if (uint64_t(st.st_size) > kMaxMessage) return Err(EINVAL) << path << ": too large";
    std::string bytes(size_t(st.st_size), '\0');
    if (pread(fd.get(), bytes.data(), bytes.size(), 0) != ssize_t(bytes.size()))
      return ErrnoError() << "read " << path;
    KLEAP_TRY(UnframeMessage(kInventoryName, bytes, &inventory_));
    if (inventory_.format_version() != kImageFormatVersion)
      return Err(EINVAL) << path << ": format version " << inventory_.format_version()
                         << ", this kleap reads " << kImageFormatVersion;
    return CheckInventory(dir_);
  }
  Result<std::unique_ptr<BlobReader>> OpenBlob(const std::string& name) override {
    const img::ImageEntry* e = Find(name);
    if (!e) return Err(ENOENT) << name << ": not listed in the inventory of " << dir_;
    std::string path = dir_ + "/" + name;
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return ErrnoError() << "open image " << path;
    struct stat st;
    if (fstat(fd.get(), &st) < 0) return ErrnoError() << "stat " << path;
    if (uint64_t(st.st_size) != e->size())
      return Err(EINVAL) << "image " << path << " is damaged: size " << st.st_size
                         << ", inventory says " << e->size();
    return std::unique_ptr<BlobReader>(new DirBlobReader(std::move(fd), path, e->size()));
  }
  std::string Describe() const override { return dir_; }
  Result<std::vector<std::string>> ListStored() override {
    DIR* d = opendir(dir_.c_str());
    if (!d) return ErrnoError() << "opendir " << dir_;
    std::vector<std::string> out;
    while (dirent* de = readdir(d))
      if (de->d_name[0] != '.') out.push_back(de->d_name);
    closedir(d);
    return out;
  }

 private:
  std::string dir_;
};

}  // namespace

std::string FrameMessage(const google::protobuf::Message& msg) {
  std::string payload;
  msg.SerializeToString(&payload);
  std::string out(kFrameMagic, sizeof kFrameMagic);
  uint32_t len = uint32_t(payload.size());
  char lenbuf[4] = {char(len), char(len >> 8), char(len >> 16), char(len >> 24)};
  out.append(lenbuf, 4);
  out += payload;
  return out;
}

Result<void> UnframeMessage(const std::string& name, const std::string& bytes,
                            google::protobuf::Message* msg) {
  if (bytes.size() < kFrameHeader || memcmp(bytes.data(), kFrameMagic, sizeof kFrameMagic) != 0)
    return Err(EINVAL) << "image " << name << " is damaged: bad magic";
  auto* b = reinterpret_cast<const uint8_t*>(bytes.data()) + 8;
  uint64_t len = uint64_t(b[0]) | uint64_t(b[1]) << 8 | uint64_t(b[2]) << 16 | uint64_t(b[3]) << 24;
  if (len != bytes.size() - kFrameHeader)
    return Err(EINVAL) << "image " << name << " is damaged: frame says " << len
                       << " bytes, file holds " << bytes.size() - kFrameHeader;
  if (!msg->ParseFromArray(bytes.data() + kFrameHeader, int(len)))
    return Err(EINVAL) << "image " << name << " is damaged: not a valid " << msg->GetTypeName();
  return Ok();
}

Result<void> ImageWriter::WriteMessage(const std::string& name,
                                       const google::protobuf::Message& msg) {
  std::string bytes = FrameMessage(msg);
  auto w = KLEAP_TRY(CreateBlob(name));
  KLEAP_TRY(w->Write(bytes.data(), bytes.size()));
  return w->Close();
}

Result<void> ImageReader::CheckInventory(const std::string& where) const {
  auto shown = [](const std::string& name) {  // a crafted name may hold anything
    std::string out;
    for (unsigned char c : name.substr(0, 64)) {
      if (c >= 0x20 && c < 0x7f && c != '\\') {
        out += char(c);
      } else {
        char hex[5];
        snprintf(hex, sizeof hex, "\\x%02x", c);
        out += hex;
      }
    }
    return name.size() > 64 ? out + "..." : out;
  };
  std::set<std::string> seen;
  for (int i = 0; i < inventory_.images_size(); ++i) {
    const std::string& name = inventory_.images(i).name();
    if (!ValidImageName(name) || name == kInventoryName)
      return Err(EINVAL) << where << ": " << kInventoryName << ": entry " << i
                         << " has a bad image name '" << shown(name) << "'";
    if (!seen.insert(name).second)
      return Err(EINVAL) << where << ": " << kInventoryName << ": image " << name
                         << " is listed twice";
  }
  return Ok();
}

const img::ImageEntry* ImageReader::Find(const std::string& name) const {
  for (auto& e : inventory_.images())
    if (e.name() == name) return &e;
  return nullptr;
}

Result<void> ImageReader::ReadMessage(const std::string& name, google::protobuf::Message* msg) {
  auto blob = KLEAP_TRY(OpenBlob(name));
  if (blob->size() > kMaxMessage)
    return Err(EINVAL) << "image " << name << " is too large for a message";
  std::string bytes(blob->size(), '\0');
  KLEAP_TRY(blob->ReadAt(0, bytes.data(), bytes.size()));
  uint64_t h = XXH3_64bits(bytes.data(), bytes.size());
  if (h != Find(name)->xxh3())
    return Err(EBADMSG) << "image " << Describe() << "/" << name
                        << " is damaged: checksum mismatch";
  return UnframeMessage(name, bytes, msg);
}

Result<void> ImageReader::VerifyImage(const std::string& name) {
  auto blob = KLEAP_TRY(OpenBlob(name));
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  constexpr size_t kWindow = 8u << 20;  // bounds the RSS of a check
  for (uint64_t off = 0; off < blob->size(); off += kWindow) {
    size_t len = size_t(std::min<uint64_t>(kWindow, blob->size() - off));
    auto p = KLEAP_TRY(blob->Map(off, len));
    XXH3_64bits_update(&st, p, len);
  }
  if (XXH3_64bits_digest(&st) != Find(name)->xxh3())
    return Err(EBADMSG) << "image " << Describe() << "/" << name
                        << " is damaged: checksum mismatch";
  return Ok();
}

Result<std::unique_ptr<ImageWriter>> CreateDirImageSet(const std::string& dir) {
  if (mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) return ErrnoError() << "mkdir " << dir;
  struct stat st;
  if (stat(dir.c_str(), &st) < 0) return ErrnoError() << "stat " << dir;
  if (!S_ISDIR(st.st_mode)) return Err(ENOTDIR) << dir << " is not a directory";
  std::string inv = dir + "/" + kInventoryName;
  DIR* d = opendir(dir.c_str());
  if (!d) return ErrnoError() << "opendir " << dir;
  bool empty = true;
  while (dirent* de = readdir(d))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) empty = false;
  closedir(d);
  if (!empty)
    return Err(EEXIST) << dir << " is not empty; kleap writes a set into an empty directory";
  chmod(dir.c_str(), 0700);
  return std::unique_ptr<ImageWriter>(new DirImageWriter(dir));
}

Result<std::unique_ptr<ImageReader>> OpenDirImageSet(const std::string& dir) {
  auto r = std::make_unique<DirImageReader>(dir);
  KLEAP_TRY(r->Load());
  return std::unique_ptr<ImageReader>(std::move(r));
}

}  // namespace kleap
