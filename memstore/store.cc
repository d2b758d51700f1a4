#include "memstore/store.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "engine/base/proc.h"

namespace kleap::memstore {
namespace {

constexpr size_t kChunk = 1u << 20;
constexpr char kDirFile[] = "kleap-store.img";
constexpr uint64_t kDefaultDirSize = 16ull << 30;

bool Aligned(uint64_t off, const void* buf, size_t len) {
  return off % kPage == 0 && len % kPage == 0 && reinterpret_cast<uintptr_t>(buf) % kPage == 0;
}

}  // namespace

AlignedBuf AllocAligned(size_t n) {
  return AlignedBuf(static_cast<uint8_t*>(aligned_alloc(kPage, AlignUp(n))));
}

Result<std::pair<std::string, std::string>> ParseSpec(const std::string& spec) {
  auto colon = spec.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size())
    return Err(EINVAL) << "store '" << spec << "': expected pmem:/dev/pmemN or dir:PATH";
  std::string backend = spec.substr(0, colon), path = spec.substr(colon + 1);
  if (backend != "pmem" && backend != "dir")
    return Err(EINVAL) << "store '" << spec << "': unknown backend '" << backend << "'";
  return std::make_pair(backend, path);
}

Result<std::unique_ptr<Region>> Region::Open(const std::string& spec) {
  return OpenImpl(spec, false, 0);
}

Result<std::unique_ptr<Region>> Region::Create(const std::string& spec, uint64_t create_size) {
  return OpenImpl(spec, true, create_size);
}

Result<std::unique_ptr<Region>> Region::OpenImpl(const std::string& spec, bool create,
                                                 uint64_t create_size) {
  auto [backend, path] = KLEAP_TRY(ParseSpec(spec));
  if (geteuid() != 0)
    return Err(EPERM) << "store " << spec << ": root only (a store holds every secret in memory)";
  std::unique_ptr<Region> r(new Region);
  r->spec_ = spec;
  if (backend == "pmem") {
    r->fd_.reset(open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
    if (!r->fd_) return ErrnoError() << "store " << spec << ": open " << path;
    struct stat st;
    if (fstat(r->fd_.get(), &st) < 0 || !S_ISBLK(st.st_mode))
      return Err(ENOTBLK) << "store " << spec << ": " << path << " is not a block device";
    if (ioctl(r->fd_.get(), BLKGETSIZE64, &r->size_) < 0)
      return ErrnoError() << "store " << spec << ": size of " << path;
    r->direct_ = true;
    r->path_ = path;
  } else {
    // Only a writer creates a dir store: a reader's typo must not leave one behind.
    if (create && mkdir(path.c_str(), 0700) < 0 && errno != EEXIST)
      return ErrnoError() << "store " << spec << ": mkdir " << path;
    r->path_ = path + "/" + kDirFile;
    r->fd_.reset(open(r->path_.c_str(), O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600));
    if (!r->fd_ && errno == ENOENT && !create)
      return Err(ENOENT) << "store " << spec << ": no store at " << path;
    if (!r->fd_) return ErrnoError() << "store " << spec << ": open " << r->path_;
    struct stat st;
    if (fstat(r->fd_.get(), &st) < 0)
      return ErrnoError() << "store " << spec << ": stat " << r->path_;
    // A new dir store is a sparse file; 16 GiB unless told otherwise.
    if (create && create_size == 0 && st.st_size == 0) create_size = kDefaultDirSize;
    if (create_size > uint64_t(st.st_size) && ftruncate(r->fd_.get(), off_t(create_size)) < 0)
      return ErrnoError() << "store " << spec << ": size " << r->path_ << " to " << create_size;
    r->size_ = std::max<uint64_t>(create_size, uint64_t(st.st_size));
  }
  return r;
}

Result<void> Region::Io(bool write, uint64_t off, void* buf, size_t len) {
  if (off > size_ || len > size_ - off)
    return Err(ENOSPC) << "store " << spec_ << ": " << (write ? "write" : "read") << " of " << len
                       << " bytes at " << off << " is past the end (" << size_ << ")";
  auto whole = [&](uint64_t o, uint8_t* p, size_t n) -> Result<void> {
    while (n) {
      ssize_t k = write ? pwrite(fd_.get(), p, n, off_t(o)) : pread(fd_.get(), p, n, off_t(o));
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0)
        return ErrnoError() << "store " << spec_ << ": " << (write ? "write " : "read ") << n
                            << " bytes at " << o;
      p += k;
      o += uint64_t(k);
      n -= size_t(k);
    }
    return Ok();
  };
  if (!direct_ || Aligned(off, buf, len)) return whole(off, static_cast<uint8_t*>(buf), len);
  // O_DIRECT wants whole aligned pages: go through a bounce page range.
  uint64_t a = off & ~(kPage - 1), e = AlignUp(off + len);
  AlignedBuf bounce = AllocAligned(size_t(e - a));
  if (write && (a != off || e != off + len)) KLEAP_TRY(whole(a, bounce.get(), size_t(e - a)));
  if (write) {
    memcpy(bounce.get() + (off - a), buf, len);
    return whole(a, bounce.get(), size_t(e - a));
  }
  KLEAP_TRY(whole(a, bounce.get(), size_t(e - a)));
  memcpy(buf, bounce.get() + (off - a), len);
  return Ok();
}

Result<void> Region::Read(uint64_t off, void* buf, size_t len) {
  return Io(false, off, buf, len);
}
Result<void> Region::Write(uint64_t off, const void* buf, size_t len) {
  return Io(true, off, const_cast<void*>(buf), len);
}

Result<void> Region::Sync() {
  if (fdatasync(fd_.get()) < 0) return ErrnoError() << "store " << spec_ << ": sync";
  return Ok();
}

Result<void> Region::Wipe() {
  AlignedBuf zero = AllocAligned(kChunk);
  memset(zero.get(), 0, kChunk);
  auto zero_range = [&](uint64_t from, uint64_t to) -> Result<void> {
    for (uint64_t off = from; off < to; off += kChunk)
      KLEAP_TRY(Write(off, zero.get(), size_t(std::min<uint64_t>(kChunk, to - off))));
    return Ok();
  };
  if (direct_) {
    KLEAP_TRY(zero_range(0, size_));  // pmem: every byte
  } else {
    // A sparse file: overwrite what is allocated, not the holes.
    for (off_t off = 0;;) {
      off_t data = lseek(fd_.get(), off, SEEK_DATA);
      if (data < 0) break;
      off_t hole = lseek(fd_.get(), data, SEEK_HOLE);
      if (hole < 0) hole = off_t(size_);
      KLEAP_TRY(zero_range(uint64_t(data), std::min<uint64_t>(uint64_t(hole), size_)));
      off = hole;
    }
  }
  return Sync();
}

Result<StoreInfo> ReadInfo(Region& region) {
  AlignedBuf page = AllocAligned(kPage);
  KLEAP_TRY(region.Read(0, page.get(), kPage));
  Superblock sb = KLEAP_TRY(
      ParseSuperblock(std::string_view(reinterpret_cast<char*>(page.get()), kPage), region.size()));
  KLEAP_TRY(region.Read(sb.commit_offset, page.get(), kPage));
  CommitRecord c =
      KLEAP_TRY(ParseCommit(std::string_view(reinterpret_cast<char*>(page.get()), kPage), sb));
  size_t table_len = size_t(AlignUp(c.blobs * sizeof(TableEntry)));
  AlignedBuf table = AllocAligned(std::max<size_t>(table_len, kPage));
  if (table_len) KLEAP_TRY(region.Read(sb.table_offset, table.get(), table_len));
  StoreInfo info;
  info.blobs = KLEAP_TRY(
      ParseTable(std::string_view(reinterpret_cast<char*>(table.get()), table_len), sb, c));
  info.spec = region.spec();
  info.capacity = sb.capacity;
  info.generation = sb.generation;
  info.used = c.data_end;
  info.created_ns = sb.created_ns;
  info.committed_ns = c.committed_ns;
  info.writer_release = sb.writer_release;
  info.writer_boot_id = sb.writer_boot_id;
  return info;
}

Result<std::pair<std::string, uint64_t>> DamageOneBlob(Region& region) {
  auto info = KLEAP_TRY(ReadInfo(region));
  if (info.blobs.empty()) return Err(ENOENT) << "the store holds no blobs";
  auto& b = info.blobs[info.blobs.size() / 2];
  uint8_t byte;
  uint64_t at = b.offset + b.size / 2;
  KLEAP_TRY(region.Read(at, &byte, 1));
  byte ^= 0x5a;
  KLEAP_TRY(region.Write(at, &byte, 1));
  KLEAP_TRY(region.Sync());
  return std::make_pair(b.name, at);
}

Result<void> VerifyBlob(Region& region, const BlobInfo& blob) {
  AlignedBuf buf = AllocAligned(kChunk);
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  Result<void> r = Ok();
  for (uint64_t off = 0; off < blob.size && r; off += kChunk) {
    size_t n = size_t(std::min<uint64_t>(kChunk, blob.size - off));
    r = region.Read(blob.offset + off, buf.get(), n);
    if (r) XXH3_64bits_update(st, buf.get(), n);
  }
  uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  KLEAP_TRY(std::move(r));
  if (h != blob.xxh3)
    return Err(EBADMSG) << "store " << region.spec() << ": blob " << blob.name
                        << " is damaged: checksum mismatch";
  return Ok();
}

// ---- writing ----

class StoreBlobWriter : public BlobWriter {
 public:
  StoreBlobWriter(StoreWriter& w, std::string name, uint64_t offset)
      : w_(w), name_(std::move(name)), offset_(offset), stage_(AllocAligned(kChunk)) {
    XXH3_64bits_reset(&state_);
  }
  ~StoreBlobWriter() override {
    if (!closed_) (void)Close();
  }
  Result<void> Write(const void* data, size_t len) override {
    if (failed_) return Err(EIO) << "store: blob " << name_ << " already failed";
    auto r = WriteImpl(data, len);
    if (!r) Fail(r.error());
    return r;
  }
  Result<void> Close() override {
    if (closed_)
      return failed_ ? Result<void>(Err(EIO) << "store: blob " << name_ << " failed") : Ok();
    closed_ = true;
    w_.open_blob_ = false;
    if (failed_) return Err(EIO) << "store: blob " << name_ << " failed and was not recorded";
    auto r = Finish();
    if (!r) Fail(r.error());
    return r;
  }
  uint64_t size() const override { return written_ + staged_; }

 private:
  Result<void> WriteImpl(const void* data, size_t len) {
    XXH3_64bits_update(&state_, data, len);
    auto* p = static_cast<const uint8_t*>(data);
    while (len) {
      // Aligned whole pages go straight to the region: one copy.
      if (staged_ == 0 && Aligned(0, p, len - len % kPage) && len >= kPage) {
        size_t n = len - len % kPage;
        KLEAP_TRY(Put(p, n));
        p += n;
        len -= n;
        continue;
      }
      size_t n = std::min(len, kChunk - staged_);
      memcpy(stage_.get() + staged_, p, n);
      staged_ += n;
      p += n;
      len -= n;
      if (staged_ == kChunk) KLEAP_TRY(Flush());
    }
    return Ok();
  }
  Result<void> Finish() {
    if (staged_) {
      memset(stage_.get() + staged_, 0, size_t(AlignUp(staged_) - staged_));
      size_t n = staged_;
      KLEAP_TRY(Put(stage_.get(), size_t(AlignUp(n))));
      written_ -= AlignUp(n) - n;
      staged_ = 0;
    }
    TableEntry e{};
    snprintf(e.name, sizeof e.name, "%s", name_.c_str());
    e.offset = offset_;
    e.size = written_;
    e.xxh3 = XXH3_64bits_digest(&state_);
    w_.table_.push_back(e);
    w_.next_ = AlignUp(offset_ + written_);
    return Ok();
  }
  // A blob that failed is never recorded, and its generation can't be committed.
  void Fail(const Error& e) {
    failed_ = true;
    if (!w_.has_failed_) {
      w_.failed_ = e;
      w_.has_failed_ = true;
    }
  }
  Result<void> Flush() {
    KLEAP_TRY(Put(stage_.get(), staged_));
    staged_ = 0;
    return Ok();
  }
  Result<void> Put(const uint8_t* p, size_t n) {
    uint64_t at = offset_ + written_;
    if (at + n > w_.sb_.capacity)
      return Err(ENOSPC) << "store " << w_.region_.spec() << " is full: blob " << name_
                         << " needs more than the "
                         << w_.sb_.capacity - std::min(at, w_.sb_.capacity) << " bytes left of "
                         << w_.sb_.capacity;
    KLEAP_TRY(w_.region_.Write(at, p, n));
    written_ += n;
    return Ok();
  }
  StoreWriter& w_;
  std::string name_;
  uint64_t offset_, written_ = 0;
  AlignedBuf stage_;
  size_t staged_ = 0;
  XXH3_state_t state_;
  bool closed_ = false, failed_ = false;
};

Result<std::unique_ptr<StoreWriter>> StoreWriter::Begin(Region& region, uint64_t table_entries) {
  uint64_t generation = 1;
  AlignedBuf page = AllocAligned(kPage);
  if (region.size() >= kPage) {
    KLEAP_TRY(region.Read(0, page.get(), kPage));
    auto old = ParseSuperblock(std::string_view(reinterpret_cast<char*>(page.get()), kPage),
                               region.size());
    if (old) generation = old->generation + 1;
  }
  std::unique_ptr<StoreWriter> w(new StoreWriter(region));
  w->sb_ = KLEAP_TRY(NewSuperblock(region.size() & ~(kPage - 1), generation, table_entries));
  utsname u;
  uname(&u);
  snprintf(w->sb_.writer_release, sizeof w->sb_.writer_release, "%s", u.release);
  auto boot = ReadFileToString("/proc/sys/kernel/random/boot_id");
  snprintf(w->sb_.writer_boot_id, sizeof w->sb_.writer_boot_id, "%s",
           boot ? std::string(Trim(*boot)).c_str() : "");
  SealSuperblock(&w->sb_);
  // Invalidate whatever was there before writing anything else.
  memset(page.get(), 0, kPage);
  KLEAP_TRY(region.Write(w->sb_.commit_offset, page.get(), kPage));
  KLEAP_TRY(region.Sync());
  memcpy(page.get(), &w->sb_, sizeof w->sb_);
  KLEAP_TRY(region.Write(0, page.get(), kPage));
  w->next_ = w->sb_.data_offset;
  return w;
}

Result<std::unique_ptr<BlobWriter>> StoreWriter::CreateBlob(const std::string& name) {
  if (name.empty() || name.size() > kNameMax)
    return Err(EINVAL) << "store: bad blob name '" << name << "'";
  if (open_blob_)
    return Err(EBUSY) << "store: blob " << name << " opened while another is being written";
  if (table_.size() >= sb_.table_entries)
    return Err(ENOSPC) << "store " << region_.spec() << ": table full (" << sb_.table_entries
                       << " blobs)";
  for (auto& e : table_)
    if (name == e.name) return Err(EEXIST) << "store: blob " << name << " written twice";
  open_blob_ = true;
  return std::unique_ptr<BlobWriter>(new StoreBlobWriter(*this, name, next_));
}

Result<void> StoreWriter::Commit() {
  if (open_blob_) return Err(EBUSY) << "store: commit with a blob still open";
  if (has_failed_)
    return Error(failed_).Context("store " + region_.spec() + ": not committed, a blob failed");
  size_t table_len = size_t(AlignUp(std::max<size_t>(table_.size() * sizeof(TableEntry), 1)));
  AlignedBuf table = AllocAligned(table_len);
  memset(table.get(), 0, table_len);
  if (!table_.empty()) memcpy(table.get(), table_.data(), table_.size() * sizeof(TableEntry));
  KLEAP_TRY(region_.Write(sb_.table_offset, table.get(), table_len));
  KLEAP_TRY(region_.Sync());
  CommitRecord c = NewCommit(sb_, table_, next_);
  AlignedBuf page = AllocAligned(kPage);
  memset(page.get(), 0, kPage);
  memcpy(page.get(), &c, sizeof c);
  KLEAP_TRY(region_.Write(sb_.commit_offset, page.get(), kPage));
  return region_.Sync();
}

std::vector<BlobInfo> StoreWriter::blobs() const {
  std::vector<BlobInfo> out;
  for (auto& e : table_) out.push_back({e.name, e.offset, e.size, e.xxh3});
  return out;
}

}  // namespace kleap::memstore
