#include "engine/base/arch.h"

#include <elf.h>
#include <fcntl.h>
#include <unistd.h>

#include "engine/base/unique_fd.h"

namespace kleap {

std::string_view ArchName(ArchKind a) {
  switch (a) {
    case ArchKind::kX86_64:
      return "x86_64";
    case ArchKind::kX86:
      return "ia32";
  }
  return "unknown";
}

ElfClass ReadElfClass(const char* path) {
  UniqueFd fd(open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return ElfClass::kUnknown;
  unsigned char ident[EI_NIDENT];
  if (pread(fd.get(), ident, sizeof ident, 0) != EI_NIDENT) return ElfClass::kUnknown;
  if (ident[EI_MAG0] != ELFMAG0 || ident[EI_MAG1] != ELFMAG1 || ident[EI_MAG2] != ELFMAG2 ||
      ident[EI_MAG3] != ELFMAG3)
    return ElfClass::kUnknown;
  if (ident[EI_CLASS] == ELFCLASS32) return ElfClass::k32;
  if (ident[EI_CLASS] == ELFCLASS64) return ElfClass::k64;
  return ElfClass::kUnknown;
}

}  // namespace kleap
