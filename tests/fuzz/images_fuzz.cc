// libFuzzer target for the restore side's checks of an image set: what `kleap validate`,
// `kleap restore` and the dump's own check before it commits (CheckPlan) run over images
// nothing vouches for.
//
// The input is a small image set:
//
//   [0]     flags: 1 raw (each record is a whole image file, frame included; else the
//           protobuf payload, framed here), 2 keep the fuzzed inventory's entries (else
//           each image's size and checksum are made right), 4 read the set from a
//           directory (OpenDirImageSet; else the in-memory reader below), 8 run
//           ValidateImages too (`kleap validate`: it stats the files the set maps and
//           looks in /proc for its pids), 16 InspectImages (`kleap inspect`), 32 ... as
//           JSON
//   [1,...) records: [kind][length, u16 little-endian][length bytes] (the last one
//           cut to what is left). kind % 12 names the image:
//             0 inventory.img   1 pstree.img   2 core-PID   3 mm-PID   4 pagemap-PID
//             5 fdtable-PID     6 files.img    7 shmem.img  8 ipc.img  9 netns.img
//             10 mounts.img     11 tmpfs content (the N-th mount's `content` name)
//           The N-th core or fdtable record is the image of the N-th live task of
//           pstree.img (the first pstree record), the N-th mm or pagemap record that of
//           its N-th live task with an address space of its own; so names follow the
//           pids the fuzzer writes. The first record of a name wins.
//
// Raw blobs are never in the input: each blob an image names (pages, shmem objects and
// SysV segments, an unlinked file's content, a tmpfs's files) is added as zeros of the
// size its runs ask for (at most kVirtualMax bytes in all), so the size and checksum
// checks behind can pass. The inventory, when the input has none, is the format version
// and the root pid of pstree.img.
//
// Steps: LoadPlan (which runs CheckPlan and so ValidatePlan), then what restore does next
// without a system call: CheckPageBlobSizes, VerifyBlobs and PlanTasks; then each
// validator directly on the images it takes, so that one refused early does not hide the
// others (ValidateTimeNamespaces, ValidateTimers, ValidateCtty, ValidateSeccomp,
// ValidateLocks, ValidateAio, ValidateFileObjects, ValidateShmem, ValidateIpc,
// ValidateFileOwners, ValidateNetImage). An error is the expected answer to bad input.
// A crash, a sanitizer report, a KLEAP_CHECK, or a plan that passed the checks but breaks
// what they promise (RULE below: each has a name) aborts. KLEAP_FUZZ_IGNORE=name,name
// leaves out rules that stand for findings reported already.
//
// Built by scripts/fuzz.sh (CMake, -DKLEAP_FUZZ=ON: tests/fuzz/CMakeLists.txt). With
// -DKLEAP_FUZZ_MAKE_SEEDS the same file builds images_fuzz_seeds, which turns image sets
// written by `kleap dump` into inputs (tests/fuzz/make-image-sets.sh writes some), and
// writes a small set made in code.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/aio.h"
#include "engine/base/arch.h"
#include "engine/base/log.h"
#include "engine/context.h"
#include "engine/engine.h"
#include "engine/fown.h"
#include "engine/images/image_set.h"
#include "engine/images/mounts.pb.h"
#include "engine/ipc.h"
#include "engine/locks.h"
#include "engine/net/net.pb.h"
#include "engine/net/netconf.h"
#include "engine/restore_plan.h"
#include "engine/seccomp.h"
#include "engine/timens.h"
#include "engine/timers.h"
#include "engine/tty.h"

using namespace kleap;

namespace {

enum : uint8_t {
  kRaw = 1,
  kKeepEntries = 2,
  kDir = 4,
  kValidate = 8,
  kInspect = 16,
  kJson = 32,
};

enum Kind : uint8_t {
  kInventoryRec,
  kPsTreeRec,
  kCoreRec,
  kMmRec,
  kPagemapRec,
  kFdTableRec,
  kFilesRec,
  kShmemRec,
  kIpcRec,
  kNetNsRec,
  kMountsRec,
  kTmpfsRec,
  kKinds,
};

constexpr char kMountsName[] = "mounts.img";

template <class M>
bool Decode(const std::string& file, M* m) {
  return bool(UnframeMessage("fuzz", file, m));
}

}  // namespace

#ifndef KLEAP_FUZZ_MAKE_SEEDS

namespace {

constexpr uint64_t kVirtualMax = 16ull << 20;

// The frame of an image file (image_set.cc): "KLEAPIM1", u32 little-endian length.
std::string Frame(const std::string& payload) {
  std::string out = "KLEAPIM1";
  uint32_t n = uint32_t(payload.size());
  for (int i = 0; i < 4; ++i) out += char(n >> (8 * i));
  return out + payload;
}

// As the readers take names (CheckInventory).
bool SafeName(const std::string& n) {
  return ValidImageName(n) && n != kInventoryName;
}

uint64_t AddCapped(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}
uint64_t PagesBytes(uint64_t pages) {
  return pages > UINT64_MAX / 4096 ? UINT64_MAX : pages * 4096;
}

// ---- rules ----

std::set<std::string>& Ignored() {
  static std::set<std::string> s = [] {
    std::set<std::string> out;
    const char* e = getenv("KLEAP_FUZZ_IGNORE");
    std::string v = e ? e : "";
    size_t at = 0;
    while (at <= v.size()) {
      size_t comma = std::min(v.find(',', at), v.size());
      if (comma > at) out.insert(v.substr(at, comma - at));
      at = comma + 1;
    }
    return out;
  }();
  return s;
}

[[noreturn]] void Broken(const char* name, const char* rule, const std::string& detail) {
  fprintf(stderr, "images_fuzz: rule %s broken: %s%s%s\n", name, rule, detail.empty() ? "" : ": ",
          detail.c_str());
  abort();
}
template <class F>
bool Fails(const char* name, const char* text, const F& detail) {
  if (!Ignored().count(name)) Broken(name, text, detail());
  return false;
}
// A rule: false when broken and ignored, for the checks after it that need it.
#define HOLDS(name, cond, detail) \
  (bool(cond) || Fails(name, #cond, [&]() -> std::string { return detail; }))
#define RULE(name, cond, detail) (void)HOLDS(name, cond, detail)

// Zeros for the blobs the input leaves out: read-only, never touched, so never backed.
const uint8_t* Zeros() {
  static const uint8_t* z = [] {
    void* p =
        mmap(nullptr, kVirtualMax, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) abort();
    return static_cast<const uint8_t*>(p);
  }();
  return z;
}
uint64_t ZerosXxh3(uint64_t size) {
  static std::map<uint64_t, uint64_t> cache;
  if (cache.size() > 4096) cache.clear();
  auto it = cache.find(size);
  if (it == cache.end()) it = cache.emplace(size, XXH3_64bits(Zeros(), size_t(size))).first;
  return it->second;
}

struct Stored {
  std::string bytes;
  uint64_t zeros = 0;  // a blob of zeros, when bytes is empty
  bool virt = false;
  uint64_t size() const { return virt ? zeros : bytes.size(); }
  const uint8_t* data() const {
    return virt ? Zeros() : reinterpret_cast<const uint8_t*>(bytes.data());
  }
  uint64_t xxh3() const {
    return virt ? ZerosXxh3(zeros) : XXH3_64bits(bytes.data(), bytes.size());
  }
};

class MemBlob : public BlobReader {
 public:
  explicit MemBlob(const Stored& s) : s_(s) {}
  uint64_t size() const override { return s_.size(); }
  Result<void> ReadAt(uint64_t off, void* buf, size_t len) override {
    if (off > size() || len > size() - off)
      return Err(EINVAL) << "read of " << len << " bytes at " << off << " past the end";
    memcpy(buf, s_.data() + off, len);
    return Ok();
  }
  Result<const uint8_t*> Map(uint64_t off, size_t len) override {
    if (off > size() || len > size() - off)
      return Err(EINVAL) << "map of " << len << " bytes at " << off << " past the end";
    return s_.data() + off;
  }

 private:
  const Stored& s_;
};

// A set in memory, as the directory reader would read it from files of these names.
class MemReader : public ImageReader {
 public:
  MemReader(const std::map<std::string, Stored>& stored, img::Inventory inv) : stored_(stored) {
    inventory_ = std::move(inv);
  }
  Result<std::unique_ptr<BlobReader>> OpenBlob(const std::string& name) override {
    const img::ImageEntry* e = Find(name);
    if (!e) return Err(ENOENT) << name << ": not listed in the inventory";
    // The directory reader opens DIR/NAME: a name from an image that leaves the
    // directory makes kleap open a file outside the set.
    RULE("blob-name", SafeName(name), name);
    auto it = stored_.find(name);
    if (it == stored_.end()) return Err(ENOENT) << "open image " << name << ": missing";
    if (it->second.size() != e->size())
      return Err(EINVAL) << "image " << name << " is damaged: size " << it->second.size()
                         << ", inventory says " << e->size();
    return std::unique_ptr<BlobReader>(new MemBlob(it->second));
  }
  std::string Describe() const override { return "fuzz"; }
  Result<std::vector<std::string>> ListStored() override {
    std::vector<std::string> out;
    for (auto& [name, s] : stored_) out.push_back(name);
    return out;
  }

 private:
  const std::map<std::string, Stored>& stored_;
};

// ---- what a plan that passed LoadPlan promises (restore_plan.h, context.h) ----

void CheckLoadedPlan(const RestorePlan& plan) {
  const auto& tasks = plan.pstree.tasks();
  RULE("plan-tasks", tasks.size() > 0, "");
  std::set<pid_t> pids, tids;
  for (auto& t : tasks) {
    std::string who = "task " + std::to_string(t.pid());
    RULE("plan-pid", t.pid() > 0 && pids.insert(t.pid()).second, who);
    RULE("plan-parent-first", t.ppid() == 0 || pids.count(t.ppid()), who);
    RULE("plan-tids", t.tids_size() > 0 && t.tids(0) == t.pid(), who);
    for (int tid : t.tids()) RULE("plan-tids", tid > 0 && tids.insert(tid).second, who);
    if (t.zombie()) {
      RULE("plan-zombie", t.ppid() != 0 && t.tids_size() == 1, who);
      continue;
    }
    auto core = plan.cores.find(t.pid());
    if (!HOLDS("plan-core", core != plan.cores.end(), who)) continue;
    RULE("plan-core", core->second.threads_size() == t.tids_size(), who);
    auto fds = plan.fdtables.find(t.pid());
    if (!HOLDS("plan-fdtable", fds != plan.fdtables.end(), who)) continue;
    for (auto& e : fds->second.fds()) RULE("plan-fd", e.fd() >= 0 && e.fd() <= (1 << 20), who);
    if (t.vm_share_with()) {
      RULE("plan-vm-share", t.vm_share_with() == uint32_t(t.ppid()), who);
      continue;
    }
    auto mm = plan.mms.find(t.pid());
    auto pm = plan.pagemaps.find(t.pid());
    if (!HOLDS("plan-mm", mm != plan.mms.end() && pm != plan.pagemaps.end(), who)) continue;
    uint64_t prev_end = 0;
    for (auto& v : mm->second.vmas()) {
      RULE("plan-vma",
           v.start() < v.end() && v.start() % 4096 == 0 && v.end() % 4096 == 0 &&
               v.start() >= prev_end && v.end() <= X64Arch::kTaskSize,
           who);
      prev_end = v.end();
    }
    // Page runs: inside a mapping each, in order; their bytes add up without wrapping
    // (CheckPageBlobSizes and the restore's reads rely on it).
    uint64_t prev = 0, bytes = 0;
    for (auto& r : pm->second.runs()) {
      bool inside = false;
      for (auto& v : mm->second.vmas())
        inside |= r.vaddr() >= v.start() && r.nr_pages() <= (v.end() - r.vaddr()) / 4096;
      RULE("plan-page-run",
           inside && r.vaddr() % 4096 == 0 && r.vaddr() >= prev && r.nr_pages() > 0, who);
      prev = r.vaddr() + r.nr_pages() * 4096;
      RULE("plan-page-bytes", bytes <= X64Arch::kTaskSize, who);
      bytes += r.nr_pages() * 4096;
    }
  }
  std::set<uint64_t> file_ids;
  for (auto& f : plan.files.files())
    RULE("plan-file-id", file_ids.insert(f.id()).second, std::to_string(f.id()));
  for (auto& it : plan.fdtables)
    for (auto& e : it.second.fds())
      RULE("plan-fd-file", file_ids.count(e.file_id()), FdTableImage(it.first));
  std::set<uint64_t> shmem_ids;
  for (auto& o : plan.shmem.objects())
    RULE("plan-shmem-id", o.id() != 0 && shmem_ids.insert(o.id()).second, std::to_string(o.id()));
}

// ---- what PlanTasks makes of a plan it accepts ----

void CheckForkPlan(const ForkPlan& fork, const RestorePlan& plan) {
  const auto& ps = plan.pstree.tasks();
  if (!HOLDS("fork-tasks", fork.tasks.size() == size_t(ps.size()), "")) return;
  // Every task but the root is created by exactly one task or helper, after it.
  std::vector<int> made(fork.tasks.size(), 0);
  for (size_t i = 0; i < fork.tasks.size(); ++i) {
    const TaskPlan& t = fork.tasks[i];
    if (!HOLDS("fork-index", t.index == i && t.ps == &ps[int(i)], "")) return;
    for (size_t c : t.children) {
      if (HOLDS("fork-child", c < fork.tasks.size() && c > i,
                "task " + std::to_string(t.ps->pid()) + " creates index " + std::to_string(c)))
        made[c]++;
    }
    for (size_t h : t.leader_helpers) RULE("fork-helper", h < fork.leaders.size(), "");
  }
  for (auto& l : fork.leaders) {
    for (size_t c : l.children) {
      if (HOLDS("fork-child", c < fork.tasks.size(), "helper " + std::to_string(l.pid))) made[c]++;
    }
    for (size_t h : l.helpers) RULE("fork-helper", h < fork.leaders.size(), "");
  }
  for (size_t i = 0; i < fork.tasks.size(); ++i)
    RULE("fork-created-once", made[i] == (i == 0 ? 0 : 1),
         "task " + std::to_string(fork.tasks[i].ps->pid()) + " (ppid " +
             std::to_string(fork.tasks[i].ps->ppid()) + ") is created " + std::to_string(made[i]) +
             " times");
  // Tables, fs and address spaces, and the helper fds in a table.
  for (const TaskPlan& t : fork.tasks) {
    std::string who = "task " + std::to_string(t.ps->pid());
    if (t.ps->zombie()) {
      RULE("fork-zombie", !t.core && !t.fds && !t.table && !t.fs && !t.mm, who);
      continue;
    }
    if (!HOLDS("fork-live", t.core && t.fds && t.table && t.fs && t.mm && t.mm->image, who))
      continue;
    RULE("fork-table",
         t.table->holder < fork.tasks.size() && !t.table->placers.empty() &&
             t.table->placers[0] == t.table->holder,
         who);
    RULE("fork-mm", t.mm->owner < fork.tasks.size() && t.mm->last < fork.tasks.size(), who);
    RULE("fork-helper-fds", t.keep_from <= t.helper_from && t.helper_from <= t.helper_end, who);
    if (t.vm_shared()) {
      RULE("fork-vm-shared", t.helper_from == t.helper_end && t.helpers.vma_fd.empty(), who);
      continue;
    }
    std::set<int> fds;
    for (auto& [vma, fd] : t.helpers.vma_fd) {
      RULE("fork-helper-fds", vma < size_t(t.mm->image->vmas_size()), who);  // (not read)
      RULE("fork-helper-fds", fd >= t.helper_from && fd < t.helper_end && fds.insert(fd).second,
           who);
    }
    RULE("fork-helper-fds", t.helpers.exe_fd == t.helper_end - 1 && !fds.count(t.helpers.exe_fd),
         who);
    // The scratch page is free in the dumped layout (PickScratch).
    uint64_t a = t.mm->scratch.base.addr();
    for (auto& v : t.mm->image->vmas())
      RULE("fork-scratch", a >= v.end() || a + ScratchPage::kSize <= v.start(), who);
  }
  // The placers of a table open their helpers one range after the other.
  std::set<const SharedFdTable*> tables;
  for (const TaskPlan& t : fork.tasks)
    if (t.table && tables.insert(t.table.get()).second)
      for (size_t k = 1; k < t.table->placers.size(); ++k) {
        if (!HOLDS("fork-placers",
                   std::max(t.table->placers[k - 1], t.table->placers[k]) < fork.tasks.size(), ""))
          break;
        const TaskPlan& a = fork.tasks[t.table->placers[k - 1]];
        const TaskPlan& b = fork.tasks[t.table->placers[k]];
        RULE("fork-placers", b.helper_from == a.helper_end && b.keep_from <= a.helper_end,
             "task " + std::to_string(b.ps->pid()));
      }
}

// ---- the input ----

struct Input {
  uint8_t flags = 0;
  std::map<std::string, Stored> stored;
  bool have_inventory = false;
  std::string inventory;  // the record as given
  img::PsTree pstree;
  bool have_pstree = false;
};

// Splits the records and names them.
void Split(const uint8_t* data, size_t size, Input* in) {
  in->flags = data[0];
  struct Rec {
    Kind kind;
    std::string file;
  };
  std::vector<Rec> recs;
  for (size_t at = 1; at + 3 <= size;) {
    Kind k = Kind(data[at] % kKinds);
    size_t len = size_t(data[at + 1]) | size_t(data[at + 2]) << 8;
    at += 3;
    len = std::min(len, size - at);
    std::string payload(reinterpret_cast<const char*>(data) + at, len);
    at += len;
    recs.push_back({k, (in->flags & kRaw) ? payload : Frame(payload)});
  }
  // pstree.img first: it names the per-task images; mounts.img names the tmpfs ones.
  img::MountTable mounts;
  bool have_mounts = false;
  for (auto& r : recs) {
    if (r.kind == kPsTreeRec && !in->have_pstree) {
      in->have_pstree = true;
      (void)Decode(r.file, &in->pstree);
    }
    if (r.kind == kMountsRec && !have_mounts) {
      have_mounts = true;
      (void)Decode(r.file, &mounts);
    }
  }
  std::vector<pid_t> live, own_mm;
  for (auto& t : in->pstree.tasks()) {
    if (t.zombie()) continue;
    live.push_back(t.pid());
    if (!t.vm_share_with()) own_mm.push_back(t.pid());
  }
  std::vector<std::string> contents;
  for (auto& m : mounts.mounts())
    if (!m.content().empty()) contents.push_back(m.content());
  size_t n[kKinds] = {};
  auto pid_of = [](const std::vector<pid_t>& v, size_t i) {
    return i < v.size() ? v[i] : pid_t(90000 + i);  // extra images, listed but unused
  };
  for (auto& r : recs) {
    size_t i = n[r.kind]++;
    std::string name;
    switch (r.kind) {
      case kInventoryRec:
        if (!in->have_inventory) {
          in->have_inventory = true;
          in->inventory = r.file;
        }
        continue;
      case kPsTreeRec:
        name = kPsTreeImage;
        break;
      case kCoreRec:
        name = CoreImage(pid_of(live, i));
        break;
      case kMmRec:
        name = MmImage(pid_of(own_mm, i));
        break;
      case kPagemapRec:
        name = PagemapImage(pid_of(own_mm, i));
        break;
      case kFdTableRec:
        name = FdTableImage(pid_of(live, i));
        break;
      case kFilesRec:
        name = kFilesImage;
        break;
      case kShmemRec:
        name = kShmemTableImage;
        break;
      case kIpcRec:
        name = kIpcImage;
        break;
      case kNetNsRec:
        name = net::kNetNsImage;
        break;
      case kMountsRec:
        name = kMountsName;
        break;
      case kTmpfsRec:
        name = i < contents.size() ? contents[i] : "tmpfs-" + std::to_string(i) + ".img";
        break;
      case kKinds:
        break;
    }
    in->stored.emplace(name, Stored{std::move(r.file)});
  }
}

// The blobs the images name, as zeros of the size each asks for.
void AddBlobs(Input* in) {
  std::map<std::string, uint64_t> want;
  auto add = [&](const std::string& name, uint64_t size) {
    if (SafeName(name) && !in->stored.count(name)) want.emplace(name, size);
  };
  for (auto& [name, s] : in->stored) {
    if (name.rfind("pagemap-", 0) == 0) {
      img::Pagemap pm;
      if (!Decode(s.bytes, &pm)) continue;
      uint64_t bytes = 0;
      for (auto& r : pm.runs()) bytes = AddCapped(bytes, PagesBytes(r.nr_pages()));
      add(pm.blob(), bytes);
    }
  }
  auto find = [&](const char* name) -> const std::string* {
    auto it = in->stored.find(name);
    return it == in->stored.end() ? nullptr : &it->second.bytes;
  };
  if (auto* s = find(kShmemTableImage)) {
    img::ShmemTable t;
    if (Decode(*s, &t))
      for (auto& o : t.objects()) {
        uint64_t bytes = 0;
        for (auto& r : o.runs()) bytes = AddCapped(bytes, PagesBytes(r.nr_pages()));
        add(o.blob(), bytes);
      }
  }
  if (auto* s = find(kIpcImage)) {
    img::IpcNamespace ns;
    if (Decode(*s, &ns))
      for (auto& seg : ns.shms()) {
        uint64_t bytes = 0;
        for (auto& r : seg.runs()) bytes = AddCapped(bytes, PagesBytes(r.nr_pages()));
        add(seg.blob(), bytes);
      }
  }
  if (auto* s = find(kFilesImage)) {
    img::FileTable ft;
    if (Decode(*s, &ft))
      for (auto& f : ft.files())
        if (f.has_reg() && !f.reg().ghost_blob().empty()) {
          uint64_t bytes = 0;
          for (auto& r : f.reg().ghost_runs()) bytes = AddCapped(bytes, r.length());
          add(f.reg().ghost_blob(), bytes);
        }
  }
  if (auto* s = find(kMountsName)) {
    img::MountTable mt;
    if (Decode(*s, &mt))
      for (auto& m : mt.mounts()) {
        auto c = in->stored.find(m.content());
        img::TmpfsImage ti;
        uint64_t bytes = 0;
        if (c != in->stored.end() && Decode(c->second.bytes, &ti))
          for (auto& e : ti.entries())
            if (S_ISREG(e.mode())) bytes = std::max(bytes, AddCapped(e.offset(), e.size()));
        add(m.blob(), bytes);
      }
  }
  uint64_t total = 0;
  for (auto& [name, size] : want) {
    if (size > kVirtualMax - total) continue;  // left out: too large to hash each time
    total += size;
    Stored s;
    s.virt = true;
    s.zeros = size;
    in->stored.emplace(name, std::move(s));
  }
}

// The inventory the reader finds: the input's, or one made here. False when the input's
// can't be decoded (a set no reader opens).
bool MakeInventory(const Input& in, img::Inventory* inv) {
  if (in.have_inventory) {
    if (!Decode(in.inventory, inv)) return false;
  } else {
    inv->set_format_version(kImageFormatVersion);
    inv->set_root_pid(in.pstree.root_pid());
    inv->set_arch("x86_64");
    inv->set_boot_id("fuzz");  // not this boot: the inode checks are left out
  }
  if (!(in.flags & kKeepEntries)) inv->clear_images();
  std::set<std::string> listed;
  for (auto& e : inv->images()) listed.insert(e.name());
  for (auto& [name, s] : in.stored) {
    if (listed.count(name)) continue;
    img::ImageEntry* e = inv->add_images();
    e->set_name(name);
    e->set_size(s.size());
    e->set_xxh3(s.xxh3());
  }
  return true;
}

// ---- the set written to a directory (kDir) ----

// Made at the first input that asks for it; left to the end of the process (Cleanup).
std::string* set_dir = nullptr;
const std::string& SetDir() {
  if (!set_dir) {
    const char* base = getenv("KLEAP_FUZZ_TMP");  // scripts/fuzz.sh: a directory of its own
    set_dir = new std::string(std::string(base && *base ? base : "/tmp") + "/kleap-images-fuzz." +
                              std::to_string(getpid()));
    mkdir(set_dir->c_str(), 0700);
  }
  return *set_dir;
}

void EmptyDir(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> names;
  while (dirent* de = readdir(d))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) names.push_back(de->d_name);
  closedir(d);
  for (auto& n : names) unlink((dir + "/" + n).c_str());
}

bool WriteFile(const std::string& path, const Stored& s) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = s.virt ? ftruncate(fd, off_t(s.zeros)) == 0
                   : write(fd, s.bytes.data(), s.bytes.size()) == ssize_t(s.bytes.size());
  return close(fd) == 0 && ok;
}

void Cleanup() {
  if (!set_dir) return;
  EmptyDir(*set_dir);
  rmdir(set_dir->c_str());
}

// ---- the steps ----

// KLEAP_FUZZ_VERBOSE=1: each step's answer on stderr (to see how far an input gets).
bool Verbose() {
  static bool v = getenv("KLEAP_FUZZ_VERBOSE") && *getenv("KLEAP_FUZZ_VERBOSE") == '1';
  return v;
}
template <class R>
void Say(const char* step, const R& r) {
  if (Verbose())
    fprintf(stderr, "images_fuzz: %s: %s\n", step, r ? "ok" : r.error().ToString().c_str());
}

void RunSet(ImageReader& r, uint8_t flags) {
  auto plan = LoadPlan(r);
  Say("LoadPlan", plan);
  if (plan) {
    CheckLoadedPlan(*plan);
    Say("CheckPageBlobSizes", CheckPageBlobSizes(r, *plan));
    Say("VerifyBlobs", VerifyBlobs(r, *plan));
    auto fork = PlanTasks(*plan);
    Say("PlanTasks", fork);
    if (fork) CheckForkPlan(*fork, *plan);
  }
  if (flags & kValidate)
    Say("ValidateImages", r.Has(net::kNetNsImage) ? net::ValidateNetImage(r) : ValidateImages(r));
  if (flags & kInspect) Say("InspectImages", InspectImages(r, flags & kJson));
}

// Each validator on the images it takes, whether or not LoadPlan got that far.
void RunValidators(const Input& in) {
  RestorePlan p;  // only what ValidateShmem, ValidateIpc and ValidateFileOwners read
  p.pstree = in.pstree;
  if (in.have_pstree) Say("ValidateTimeNamespaces", ValidateTimeNamespaces(in.pstree));
  for (auto& it : in.stored) {
    const std::string& name = it.first;
    const Stored& s = it.second;
    pid_t pid = 0;
    if (sscanf(name.c_str(), "core-%d.img", &pid) == 1) {
      img::TaskCore core;
      if (!Decode(s.bytes, &core)) continue;
      Say("ValidateTimers", ValidateTimers(pid, core.timers()));
      Say("ValidateCtty", ValidateCtty(pid, core));
      for (auto& th : core.threads()) Say("ValidateSeccomp", ValidateSeccomp(pid, th));
      Say("ValidateLocks", ValidateLocks(pid, core));
      int shared = SharedSeccompPrefix(core);
      for (auto& th : core.threads())
        RULE("seccomp-prefix", shared >= 0 && shared <= th.seccomp_size(), name);
      p.cores[pid] = std::move(core);
    } else if (sscanf(name.c_str(), "mm-%d.img", &pid) == 1) {
      img::MmImage mm;
      if (!Decode(s.bytes, &mm)) continue;
      Say("ValidateAio", ValidateAio(pid, mm));
      p.mms[pid] = std::move(mm);
    }
  }
  auto get = [&](const char* name, google::protobuf::Message* m) {
    auto it = in.stored.find(name);
    return it != in.stored.end() && Decode(it->second.bytes, m);
  };
  if (get(kFilesImage, &p.files)) Say("ValidateFileObjects", ValidateFileObjects(p.files));
  if (get(kShmemTableImage, &p.shmem)) Say("ValidateShmem", ValidateShmem(p));
  p.has_ipc = get(kIpcImage, &p.ipc);
  Say("ValidateIpc", ValidateIpc(p));
  Say("ValidateFileOwners", ValidateFileOwners(p));
  // A network image set: netns.img alone.
  if (auto it = in.stored.find(net::kNetNsImage); it != in.stored.end()) {
    std::map<std::string, Stored> one;
    one.emplace(it->first, it->second);
    img::Inventory inv;
    inv.set_format_version(kImageFormatVersion);
    img::ImageEntry* e = inv.add_images();
    e->set_name(it->first);
    e->set_size(it->second.size());
    e->set_xxh3(it->second.xxh3());
    MemReader r(one, inv);
    auto v = net::ValidateNetImage(r);
    Say("ValidateNetImage", v);
    if (v) Say("ShowNetImage", net::ShowNetImage(r, in.flags & kJson));
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  SetLogLevel(LogLevel::kError);
  // Strings that are not UTF-8 are refused with a line of log each: not for the fuzzer.
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  atexit(Cleanup);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  Input in;
  Split(data, size, &in);
  AddBlobs(&in);
  img::Inventory inv;
  bool inv_ok = MakeInventory(in, &inv);
  if (in.flags & kDir) {
    // The set in files, read by the directory reader. Names that would leave the
    // directory are not written (the reader would open files elsewhere on this machine).
    const std::string& dir = SetDir();
    EmptyDir(dir);
    bool safe = true;
    for (auto& e : inv.images()) safe &= SafeName(e.name());
    if (safe) {
      for (auto& [name, s] : in.stored)
        if (!WriteFile(dir + "/" + name, s)) abort();
      Stored i;
      i.bytes = inv_ok ? FrameMessage(inv) : in.inventory;
      if (!WriteFile(dir + "/" + kInventoryName, i)) abort();
      auto r = OpenDirImageSet(dir);
      Say("OpenDirImageSet", r);
      if (r) RunSet(**r, in.flags);
    }
  } else if (inv_ok && inv.format_version() == kImageFormatVersion) {
    MemReader r(in.stored, inv);
    RunSet(r, in.flags);
  }
  RunValidators(in);
  return 0;
}

#else  // KLEAP_FUZZ_MAKE_SEEDS: inputs from image sets, and one made here

namespace {

struct Writer {
  std::string dir;
  int n = 0;
  bool Put(const std::string& tag, const std::string& bytes) {
    std::string path = dir + "/seed-" + tag + "-" + std::to_string(n++);
    FILE* f = fopen(path.c_str(), "wb");
    if (!f || fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || fclose(f) != 0) {
      perror(path.c_str());
      return false;
    }
    return true;
  }
};

void Record(std::string* out, Kind k, const std::string& payload) {
  size_t len = std::min<size_t>(payload.size(), 0xffff);
  out->push_back(char(k));
  out->push_back(char(len & 0xff));
  out->push_back(char(len >> 8));
  out->append(payload, 0, len);
}

bool ReadWhole(const std::string& path, std::string* out) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) return false;
  char buf[65536];
  size_t n;
  out->clear();
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
  fclose(f);
  return true;
}

// The payload of an image file (its frame off), or the whole file for raw records.
std::string Payload(const std::string& file, bool raw) {
  if (raw || file.size() < 12) return file;
  return file.substr(12);
}

// One image set as inputs: in each layout the flags ask for.
bool FromSet(const std::string& set, Writer& w) {
  std::string tag = set.substr(set.find_last_of('/') + 1);
  std::string inv_file, pstree_file;
  if (!ReadWhole(set + "/" + kInventoryName, &inv_file)) {
    fprintf(stderr, "%s: no inventory\n", set.c_str());
    return false;
  }
  img::Inventory inv;
  if (!Decode(inv_file, &inv)) {
    fprintf(stderr, "%s: bad inventory\n", set.c_str());
    return false;
  }
  std::set<std::string> names;
  for (auto& e : inv.images()) names.insert(e.name());
  img::PsTree tree;
  if (names.count(kPsTreeImage) && ReadWhole(set + "/" + kPsTreeImage, &pstree_file))
    (void)Decode(pstree_file, &tree);
  img::MountTable mounts;
  std::string mounts_file;
  if (names.count(kMountsName) && ReadWhole(set + "/" + kMountsName, &mounts_file))
    (void)Decode(mounts_file, &mounts);

  struct Img {
    Kind kind;
    std::string name;
  };
  std::vector<Img> order;
  auto want = [&](Kind k, const std::string& name) {
    if (names.count(name)) order.push_back({k, name});
  };
  want(kPsTreeRec, kPsTreeImage);
  for (auto& t : tree.tasks())
    if (!t.zombie()) {
      want(kCoreRec, CoreImage(t.pid()));
      want(kFdTableRec, FdTableImage(t.pid()));
      if (!t.vm_share_with()) {
        want(kMmRec, MmImage(t.pid()));
        want(kPagemapRec, PagemapImage(t.pid()));
      }
    }
  want(kFilesRec, kFilesImage);
  want(kShmemRec, kShmemTableImage);
  want(kIpcRec, kIpcImage);
  want(kNetNsRec, net::kNetNsImage);
  want(kMountsRec, kMountsName);
  for (auto& m : mounts.mounts())
    if (!m.content().empty()) want(kTmpfsRec, m.content());

  // Image files, less the bytes no check reads (a thread's xstate, the vDSO's text),
  // which only slow the fuzzer down.
  std::vector<std::pair<Kind, std::string>> files;
  for (auto& i : order) {
    std::string f;
    if (!ReadWhole(set + "/" + i.name, &f)) {
      fprintf(stderr, "%s/%s: can't read\n", set.c_str(), i.name.c_str());
      return false;
    }
    if (i.kind == kCoreRec) {
      img::TaskCore core;
      if (Decode(f, &core)) {
        for (auto& th : *core.mutable_threads()) th.clear_xstate();
        f = FrameMessage(core);
      }
    } else if (i.kind == kFilesRec) {
      img::FileTable ft;  // a full pipe holds more than a record
      if (Decode(f, &ft)) {
        for (auto& p : *ft.mutable_pipes())
          if (p.data().size() > 1024) p.mutable_data()->resize(1024);
        f = FrameMessage(ft);
      }
    } else if (i.kind == kMmRec) {
      img::MmImage mm;
      if (Decode(f, &mm)) {
        mm.clear_vdso();
        f = FrameMessage(mm);
      }
    }
    if (f.size() > 0xffff) {
      fprintf(stderr, "%s/%s: too large for a record\n", set.c_str(), i.name.c_str());
      return false;
    }
    files.push_back({i.kind, std::move(f)});
  }
  // The entries of the images rewritten above, made right for the layout that keeps them.
  for (size_t k = 0; k < order.size(); ++k)
    for (auto& e : *inv.mutable_images())
      if (e.name() == order[k].name) {
        const std::string& f = files[k].second;
        e.set_size(f.size());
        e.set_xxh3(XXH3_64bits(f.data(), f.size()));
      }
  img::Inventory bare = inv;  // the entries are made right by the target
  bare.clear_images();
  std::string bare_payload = bare.SerializeAsString();
  std::string full_payload = inv.SerializeAsString();

  // The flags of each layout written, and whether it carries the inventory's entries.
  struct Layout {
    uint8_t flags;
    bool inventory, entries;
  };
  const Layout layouts[] = {
      {0, true, false},
      {0, false, false},
      {kRaw, true, false},
      {kDir, true, false},
      {kKeepEntries, true, true},
      {kInspect, true, false},
      {kInspect | kJson, true, false},
      {kValidate, true, false},
  };
  for (const Layout& l : layouts) {
    std::string in(1, char(l.flags));
    bool raw = l.flags & kRaw;
    if (l.inventory)
      Record(
          &in, kInventoryRec,
          raw ? FrameMessage(l.entries ? inv : bare) : (l.entries ? full_payload : bare_payload));
    for (auto& [k, f] : files) Record(&in, k, Payload(f, raw));
    if (!w.Put(tag + "-" + std::to_string(l.flags), in)) return false;
  }
  return true;
}

// A set made here, when no dump is at hand: a session leader with a thread and a child,
// and a zombie; an anonymous and a file mapping with pages; fds on /dev/null, a pipe and
// a memfd; a SysV semaphore set.
bool MadeHere(Writer& w) {
  img::PsTree tree;
  tree.set_root_pid(100);
  auto task = [&](int pid, int ppid, std::vector<int> threads) {
    img::PsTask* t = tree.add_tasks();
    t->set_pid(pid);
    t->set_ppid(ppid);
    t->set_sid(100);
    t->set_pgid(100);
    t->set_comm("seed");
    t->add_tids(pid);
    for (int tid : threads) t->add_tids(tid);
    return t;
  };
  task(100, 0, {105});
  task(101, 100, {});
  img::PsTask* z = task(102, 100, {});
  z->set_zombie(true);
  z->set_exit_status(3 << 8);

  img::FileTable files;
  img::FileObject* null = files.add_files();
  null->set_id(1);
  null->mutable_reg()->set_path("/dev/null");
  null->mutable_reg()->set_flags(O_RDWR);
  null->mutable_reg()->set_mode(S_IFCHR | 0666);
  img::Pipe* pipe = files.add_pipes();
  pipe->set_id(1);
  pipe->set_size(65536);
  pipe->set_data("abc");
  for (int end = 0; end < 2; ++end) {
    img::FileObject* p = files.add_files();
    p->set_id(2 + uint64_t(end));
    p->mutable_pipe()->set_pipe_id(1);
    p->mutable_pipe()->set_flags(end ? O_WRONLY : O_RDONLY);
  }
  img::FileObject* mfd = files.add_files();
  mfd->set_id(4);
  mfd->mutable_memfd()->set_shmem_id(2);
  mfd->mutable_memfd()->set_flags(O_RDWR);

  img::ShmemTable shmem;
  img::ShmemObject* anon = shmem.add_objects();
  anon->set_id(1);
  anon->set_kind(img::ShmemObject::ANON_SHARED);
  anon->set_size(8192);
  anon->set_blob(ShmemImage(1));
  img::PageRun* ar = anon->add_runs();
  ar->set_vaddr(0);
  ar->set_nr_pages(1);
  img::ShmemObject* memfd = shmem.add_objects();
  memfd->set_id(2);
  memfd->set_kind(img::ShmemObject::MEMFD);
  memfd->set_size(5000);
  memfd->set_name("seed");
  memfd->set_mode(S_IFREG | 0600);
  memfd->set_blob(ShmemImage(2));
  img::PageRun* mr = memfd->add_runs();
  mr->set_vaddr(4096);
  mr->set_nr_pages(1);

  img::IpcNamespace ipc;
  img::SemSet* sem = ipc.add_sems();
  sem->set_id(0);
  sem->mutable_perm()->set_mode(0600);
  sem->add_values(1);
  sem->add_values(0);
  ipc.set_sem("32000 1024000000 500 32000");

  std::string in(1, '\0');
  Record(&in, kPsTreeRec, tree.SerializeAsString());
  for (int pid : {100, 101}) {
    img::TaskCore core;
    core.set_pid(pid);
    for (auto& t : tree.tasks())
      if (t.pid() == pid)
        for (int tid : t.tids()) core.add_threads()->set_tid(tid);
    core.set_cwd("/");
    core.set_root("/");
    core.set_umask(022);
    if (pid == 101) {
      img::SemUndo* u = core.add_sem_undo();
      u->set_semid(0);
      u->set_semnum(1);
      u->set_adj(1);
    }
    Record(&in, kCoreRec, core.SerializeAsString());
    img::FdTable fds;
    fds.set_pid(pid);
    for (int fd = 0; fd < 3; ++fd) {
      img::FdEntry* e = fds.add_fds();
      e->set_fd(fd);
      e->set_file_id(1);
    }
    img::FdEntry* e = fds.add_fds();
    e->set_fd(pid == 100 ? 3 : 4);
    e->set_file_id(pid == 100 ? 2 : 3);
    if (pid == 100) {
      img::FdEntry* m = fds.add_fds();
      m->set_fd(5);
      m->set_file_id(4);
    }
    Record(&in, kFdTableRec, fds.SerializeAsString());
    img::MmImage mm;
    mm.set_pid(pid);
    mm.set_exe_path("/bin/true");
    auto vma = [&](uint64_t start, uint64_t end, img::Vma::Kind kind) {
      img::Vma* v = mm.add_vmas();
      v->set_start(start);
      v->set_end(end);
      v->set_prot(PROT_READ | PROT_WRITE);
      v->set_kind(kind);
      return v;
    };
    vma(0x400000, 0x402000, img::Vma::FILE_PRIVATE)->set_path("/bin/true");
    vma(0x600000, 0x604000, img::Vma::ANON_PRIVATE);
    if (pid == 100) vma(0x700000, 0x702000, img::Vma::ANON_SHARED)->set_shmem_id(1);
    Record(&in, kMmRec, mm.SerializeAsString());
    img::Pagemap pm;
    pm.set_pid(pid);
    pm.set_blob(PagesImage(pid));
    img::PageRun* r = pm.add_runs();
    r->set_vaddr(0x600000);
    r->set_nr_pages(2);
    Record(&in, kPagemapRec, pm.SerializeAsString());
  }
  Record(&in, kFilesRec, files.SerializeAsString());
  Record(&in, kShmemRec, shmem.SerializeAsString());
  Record(&in, kIpcRec, ipc.SerializeAsString());
  return w.Put("made", in) && w.Put("made-dir", std::string(1, char(kDir)) + in.substr(1));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR [IMAGE_SET_DIR...]\n", argv[0]);
    return 2;
  }
  Writer w{argv[1]};
  if (!MadeHere(w)) return 1;
  int bad = 0;
  for (int i = 2; i < argc; ++i) bad += !FromSet(argv[i], w);
  return bad ? 1 : 0;
}

#endif
