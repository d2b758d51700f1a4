/* wl-mem: a large block of memory whose content is known.
 * `wl-mem STATEDIR [--mib N]` (default 512) maps N MiB of private anonymous memory,
 * fills it with 64-bit words that are a function of their index, and records the
 * checksum of the block in memory and in STATEDIR/checksum. A check (role `mem`)
 * recomputes the checksum and compares it with both records; when it differs it
 * names the first word that is not what it was written as. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "wl-vm.h"

static struct {
  uint64_t* words;
  size_t n;
  uint64_t sum;
} mem;

/* The word at index i: a bijective mix of i, so every word differs. */
static uint64_t word_at(uint64_t i) {
  uint64_t x = i + 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static uint64_t checksum(void) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < mem.n; i++) h = (h ^ mem.words[i]) * 0x100000001b3ull;
  return h;
}

static void check(void* arg, struct wl_check* c) {
  (void)arg;
  uint64_t now = checksum();
  char buf[64];
  uint64_t in_file = 0;
  if (wl_check(c, wlv_read_state("checksum", buf, sizeof buf) > 0, "cannot read %s/checksum: %s",
               wl_statedir, strerror(errno)))
    in_file = strtoull(buf, NULL, 16);
  wl_check(c, in_file == mem.sum, "%s/checksum says %016" PRIx64 ", memory recorded %016" PRIx64,
           wl_statedir, in_file, mem.sum);
  if (wl_check(c, now == mem.sum, "the checksum of %zu MiB is %016" PRIx64 ", was %016" PRIx64,
               mem.n >> 17, now, mem.sum))
    return;
  for (size_t i = 0; i < mem.n; i++)
    if (mem.words[i] != word_at(i)) {
      wl_check(c, 0, "first changed word at offset %zu: %016" PRIx64 ", written %016" PRIx64, i * 8,
               mem.words[i], word_at(i));
      break;
    }
}

int main(int argc, char** argv) {
  wl_init(argc, argv);
  unsigned long mib = 512;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc)
      mib = strtoul(argv[++i], NULL, 10);
    else
      wl_die("mem", "usage: wl-mem STATEDIR [--mib N]");
  }
  if (mib == 0 || mib > SIZE_MAX >> 21) wl_die("mem", "--mib %lu: out of range", mib);
  mem.n = (size_t)mib << 17;
  mem.words = mmap(NULL, mem.n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem.words == MAP_FAILED) wl_die("mem", "mmap %lu MiB: %s", mib, strerror(errno));
  for (size_t i = 0; i < mem.n; i++) mem.words[i] = word_at(i);
  mem.sum = checksum();
  char line[32];
  snprintf(line, sizeof line, "%016" PRIx64 "\n", mem.sum);
  if (wlv_write_state("checksum", line) != 0)
    wl_die("mem", "write %s/checksum: %s", wl_statedir, strerror(errno));
  wl_log("%lu MiB at %p, checksum %016" PRIx64, mib, (void*)mem.words, mem.sum);
  wlv_run_alone("mem", 100, NULL, check);
}
