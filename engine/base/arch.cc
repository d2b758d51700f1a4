#include "engine/base/arch.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

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

namespace {

long RawCompatSyscall(long nr, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4) {
  long ret;
  asm volatile("int $0x80"
               : "=a"(ret)
               : "a"(nr), "b"(a1), "c"(a2), "d"(a3), "S"(a4)
               : "memory", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15");
  return ret;
}

// A kernel without IA-32 emulation (CONFIG_IA32_EMULATION=n, ia32_emulation=0) answers
// int $0x80 with SIGSEGV: a child tries it first.
bool CompatEntryWorks() {
  static const bool works = [] {
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) _exit(RawCompatSyscall(X86Arch::kGetpid, 0, 0, 0, 0) > 0 ? 0 : 1);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }();
  return works;
}

}  // namespace

long LocalCompatSyscall(long nr, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t a4) {
  if (!CompatEntryWorks()) return -ENOSYS;
  return RawCompatSyscall(nr, a1, a2, a3, a4);
}

char* LowPage() {
  static char* page = [] {
    void* p =
        mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    return p == MAP_FAILED ? nullptr : static_cast<char*>(p);
  }();
  return page;
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
