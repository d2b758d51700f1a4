// The vDSO across kernels. On the kernel the task was dumped on, the fresh vDSO that
// arch_prctl(ARCH_MAP_VDSO_*) maps is byte-identical and lands where the old one was.
// On another kernel it differs: the new vDSO goes to a free spot, and the old address
// gets a copy of the old vDSO whose exported functions jump to the new one. Pointers a
// program cached (glibc caches clock_gettime) and a syscall interrupted inside the old
// vDSO both keep working.
#include <elf.h>
#include <sys/mman.h>

#include <cstring>
#include <map>

#include "engine/base/log.h"
#include "engine/base/page.h"
#include "engine/mm.h"

namespace kleap {
namespace {

constexpr int kArchMapVdso32 = 0x2002, kArchMapVdso64 = 0x2003;

struct Block {
  uint64_t start = 0, end = 0;  // [vvar...][vdso]
  uint64_t vdso_start = 0, vdso_end = 0;
  std::vector<std::pair<uint64_t, uint64_t>> vvars;
};

template <class Ehdr, class Phdr, class Shdr, class Sym>
Result<std::map<std::string, uint64_t>> VdsoSymbolsT(const std::string& img) {
  std::map<std::string, uint64_t> out;
  auto in = [&](uint64_t off, uint64_t len) {
    return off <= img.size() && len <= img.size() - off;
  };
  if (!in(0, sizeof(Ehdr))) return Err(EINVAL) << "vdso: too short";
  Ehdr eh;
  memcpy(&eh, img.data(), sizeof eh);
  if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return Err(EINVAL) << "vdso: not an ELF image";
  uint64_t base = 0;
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Phdr ph;
    if (!in(eh.e_phoff + i * sizeof ph, sizeof ph))
      return Err(EINVAL) << "vdso: bad program header";
    memcpy(&ph, img.data() + eh.e_phoff + i * sizeof ph, sizeof ph);
    if (ph.p_type == PT_LOAD) {
      base = ph.p_vaddr - ph.p_offset;
      break;
    }
  }
  for (unsigned i = 0; i < eh.e_shnum; ++i) {
    Shdr sh;
    if (!in(eh.e_shoff + i * sizeof sh, sizeof sh))
      return Err(EINVAL) << "vdso: bad section header";
    memcpy(&sh, img.data() + eh.e_shoff + i * sizeof sh, sizeof sh);
    if (sh.sh_type != SHT_DYNSYM) continue;
    Shdr str;
    if (sh.sh_link >= eh.e_shnum || !in(eh.e_shoff + sh.sh_link * sizeof str, sizeof str))
      return Err(EINVAL) << "vdso: bad strtab";
    memcpy(&str, img.data() + eh.e_shoff + sh.sh_link * sizeof str, sizeof str);
    if (!in(sh.sh_offset, sh.sh_size) || !in(str.sh_offset, str.sh_size))
      return Err(EINVAL) << "vdso: bad dynsym";
    for (uint64_t off = 0; off + sizeof(Sym) <= sh.sh_size; off += sizeof(Sym)) {
      Sym s;
      memcpy(&s, img.data() + sh.sh_offset + off, sizeof s);
      if (s.st_shndx == SHN_UNDEF || s.st_name >= str.sh_size) continue;
      int type = s.st_info & 0xf;
      if (type != STT_FUNC) continue;
      const char* name = img.data() + str.sh_offset + s.st_name;
      size_t maxlen = str.sh_size - s.st_name;
      // Entry points must lie inside the image with room for a jump: images are untrusted.
      constexpr uint64_t kJumpRoom = sizeof(Sym) == sizeof(Elf64_Sym) ? 14 : 5;
      if (uint64_t(s.st_value) < base ||
          uint64_t(s.st_value) - base > img.size() - std::min<uint64_t>(img.size(), kJumpRoom) ||
          img.size() < kJumpRoom)
        return Err(EINVAL) << "vdso: symbol " << std::string(name, strnlen(name, maxlen))
                           << " lies outside the image";
      out[std::string(name, strnlen(name, maxlen))] = uint64_t(s.st_value) - base;
    }
  }
  if (out.empty()) return Err(EINVAL) << "vdso: no exported functions";
  return out;
}

Result<std::map<std::string, uint64_t>> VdsoSymbols(const std::string& img, ArchKind arch) {
  if (arch == ArchKind::kX86)
    return VdsoSymbolsT<Elf32_Ehdr, Elf32_Phdr, Elf32_Shdr, Elf32_Sym>(img);
  return VdsoSymbolsT<Elf64_Ehdr, Elf64_Phdr, Elf64_Shdr, Elf64_Sym>(img);
}

// Bounds of the whole [vvar...][vdso] block, once its parts are known.
Block Bounded(Block b) {
  b.start = b.vdso_start;
  b.end = b.vdso_end;
  for (auto& [s, e] : b.vvars) {
    b.start = std::min(b.start, s);
    b.end = std::max(b.end, e);
  }
  return b;
}

Block DumpedBlock(const img::MmImage& mm) {
  Block b;
  for (auto& v : mm.vmas()) {
    if (v.kind() == img::Vma::VDSO) {
      b.vdso_start = v.start();
      b.vdso_end = v.end();
    } else if (v.kind() == img::Vma::VVAR) {
      b.vvars.push_back({v.start(), v.end()});
    }
  }
  return Bounded(b);
}

Result<Block> LiveBlock(pid_t pid) {
  Block b;
  for (auto& m : KLEAP_TRY(ReadMaps(pid))) {
    if (m.path == "[vdso]") {
      b.vdso_start = m.start;
      b.vdso_end = m.end;
    } else if (m.path == "[vvar]" || m.path == "[vvar_vclock]") {
      b.vvars.push_back({m.start, m.end});
    }
  }
  if (!b.vdso_start) return Err(ENOENT) << "pid " << pid << ": no [vdso] after mapping it";
  return Bounded(b);
}

// A free range of `size` bytes in the dumped layout, searched downward from the top of
// the arch's address space.
Result<uint64_t> FreeRange(const img::MmImage& mm, uint64_t size, const ScratchPage& scratch,
                           ArchKind arch) {
  uint64_t top = arch == ArchKind::kX86 ? 0xf7000000ull : 0x7ff000000000ull;
  for (uint64_t a = (top - size) & ~uint64_t(0xfffff); a > 0x1000000; a -= 0x100000) {
    bool busy = a < scratch.base.addr() + ScratchPage::kSize && a + size > scratch.base.addr();
    for (auto& v : mm.vmas())
      if (a < v.end() && a + size > v.start()) busy = true;
    if (!busy) return a;
  }
  return Err(ENOMEM) << "no room for the new vDSO in task " << mm.pid();
}

Result<void> PutTrampolines(MmRestore& r, const Block& old, const Block& now,
                            const std::string& new_img, ArchKind arch) {
  const img::MmImage& mm = *r.mm;
  auto old_syms = KLEAP_TRY_CTX(VdsoSymbols(mm.vdso(), arch), "dumped vDSO");
  auto new_syms = KLEAP_TRY_CTX(VdsoSymbols(new_img, arch), "this kernel's vDSO");
  std::string page = mm.vdso();
  for (auto& [name, off] : old_syms) {
    auto it = new_syms.find(name);
    if (it == new_syms.end())
      return Err(ENOTSUP) << "task " << r.pid << ": the vDSO of this kernel has no " << name
                          << ", which the task may call";
    uint64_t target = now.vdso_start + it->second;
    uint64_t at = old.vdso_start + off;
    if (arch == ArchKind::kX86) {
      // jmp rel32
      if (off + 5 > page.size()) return Err(EINVAL) << "vdso: symbol " << name << " out of range";
      int32_t rel = int32_t(int64_t(target) - int64_t(at + 5));
      page[off] = char(0xe9);
      memcpy(&page[off + 1], &rel, 4);
    } else {
      // jmp *0(%rip); .quad target
      if (off + 14 > page.size()) return Err(EINVAL) << "vdso: symbol " << name << " out of range";
      const unsigned char jmp[6] = {0xff, 0x25, 0, 0, 0, 0};
      memcpy(&page[off], jmp, 6);
      memcpy(&page[off + 6], &target, 8);
    }
  }
  uint64_t len = old.vdso_end - old.vdso_start;
  auto& rs = *r.rs;
  uint64_t got = KLEAP_TRY(rs.Call(ArchKind::kX86_64, X64Arch::kMmap, old.vdso_start, len,
                                   PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                                   RemoteFd(-1), 0));
  if (got != old.vdso_start) return Err(EFAULT) << "vdso trampolines mapped at " << Hex(got);
  KLEAP_TRY(WriteRemote(r.pid, RemotePtr(old.vdso_start), page.data(), page.size()));
  KLEAP_TRY(
      rs.Call(ArchKind::kX86_64, X64Arch::kMprotect, old.vdso_start, len, PROT_READ | PROT_EXEC));
  KLOG(kDebug) << "task " << r.pid << ": vDSO proxied, " << old_syms.size() << " entry points from "
               << Hex(old.vdso_start) << " to " << Hex(now.vdso_start);
  return Ok();
}

}  // namespace

Result<void> RestoreVdso(MmRestore& r) {
  const img::MmImage& mm = *r.mm;
  Block old = DumpedBlock(mm);
  if (!old.vdso_start) return Ok();  // the task had no vDSO
  if (mm.vdso().size() != old.vdso_end - old.vdso_start)
    return Err(EINVAL) << "mm image of task " << r.pid << ": vDSO bytes don't match its mapping";
  ArchKind arch = ArchKind(mm.arch());
  int op = arch == ArchKind::kX86 ? kArchMapVdso32 : kArchMapVdso64;
  auto& rs = *r.rs;
  std::string who = "task " + std::to_string(r.pid);

  KLEAP_TRY_CTX(rs.Call(ArchKind::kX86_64, X64Arch::kArchPrctl, uint64_t(op), old.start),
                who << ": map the vDSO");
  Block now = KLEAP_TRY(LiveBlock(r.pid));
  std::string new_img(now.vdso_end - now.vdso_start, '\0');
  KLEAP_TRY(ReadRemote(r.pid, RemotePtr(now.vdso_start), new_img.data(), new_img.size()));
  bool same = now.vdso_start == old.vdso_start && now.vdso_end == old.vdso_end &&
              now.vvars == old.vvars && new_img == mm.vdso();
  if (same && !r.force_vdso_proxy) return Ok();

  // Another kernel's vDSO: move it out of the way and proxy the old entry points.
  KLEAP_TRY(rs.Call(ArchKind::kX86_64, X64Arch::kMunmap, now.start, now.end - now.start));
  uint64_t at = KLEAP_TRY(FreeRange(mm, now.end - now.start, r.scratch, arch));
  uint64_t vdso_off = now.vdso_start - now.start;
  KLEAP_TRY_CTX(rs.Call(ArchKind::kX86_64, X64Arch::kArchPrctl, uint64_t(op), at),
                who << ": map the vDSO elsewhere");
  Block moved = KLEAP_TRY(LiveBlock(r.pid));
  if (moved.vdso_start != at + vdso_off)
    KLOG(kDebug) << who << ": vDSO landed at " << Hex(moved.vdso_start);
  for (auto& v : mm.vmas())
    if (moved.start < v.end() && moved.end > v.start() && v.kind() != img::Vma::VDSO &&
        v.kind() != img::Vma::VVAR)
      return Err(EFAULT) << who << ": the new vDSO at " << Hex(moved.start) << " overlaps mapping "
                         << Hex(v.start());
  return PutTrampolines(r, old, moved, new_img, arch);
}

}  // namespace kleap
