// memstore-stress: writes a store of seeded random blobs, verifies it, or damages it.
//   memstore-stress write  --backend SPEC --size MIB --seed N [--create]
//   memstore-stress verify --backend SPEC --seed N
//   memstore-stress corrupt --backend SPEC
// Prints one JSON line; exit 0 on success.
#include <sys/resource.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "memstore/store.h"

using namespace kleap;
using namespace kleap::memstore;

namespace {

constexpr uint64_t kBlobMib = 16;

void Fill(uint64_t seed, uint64_t index, uint64_t* p, size_t words, uint64_t start_word) {
  for (size_t i = 0; i < words; ++i) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ull ^ (index << 40) ^ (start_word + i);
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    p[i] = x;
  }
}

long MaxRss() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

int Fail(const Error& e) {
  std::fprintf(stderr, "memstore-stress: %s\n", e.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(
        stderr,
        "usage: memstore-stress write|verify|corrupt --backend SPEC [--size MIB] [--seed N]\n");
    return 2;
  }
  std::string verb = argv[1], spec;
  uint64_t mib = 256, seed = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--backend"))
      spec = argv[i + 1];
    else if (!strcmp(argv[i], "--size"))
      mib = strtoull(argv[i + 1], nullptr, 10);
    else if (!strcmp(argv[i], "--seed"))
      seed = strtoull(argv[i + 1], nullptr, 10);
    else
      return std::fprintf(stderr, "memstore-stress: unknown option %s\n", argv[i]), 2;
  }
  if (spec.empty()) return std::fprintf(stderr, "memstore-stress: --backend is required\n"), 2;
  uint64_t create = verb == "write" && spec.rfind("dir:", 0) == 0 ? (mib + 64) << 20 : 0;
  auto region = verb == "write" ? Region::Create(spec, create) : Region::Open(spec);
  if (!region) return Fail(region.error());
  std::vector<uint64_t> buf((1 << 20) / 8);
  auto t0 = std::chrono::steady_clock::now();
  uint64_t bytes = 0;
  if (verb == "write") {
    auto w = StoreWriter::Begin(**region);
    if (!w) return Fail(w.error());
    for (uint64_t b = 0; b * kBlobMib < mib; ++b) {
      char name[32];
      snprintf(name, sizeof name, "blob-%04" PRIu64, b);
      auto bw = (*w)->CreateBlob(name);
      if (!bw) return Fail(bw.error());
      uint64_t n = std::min(kBlobMib, mib - b * kBlobMib) << 20;
      for (uint64_t off = 0; off < n; off += 1 << 20) {
        Fill(seed, b, buf.data(), buf.size(), off / 8);
        if (auto r = (*bw)->Write(buf.data(), 1 << 20); !r) return Fail(r.error());
      }
      if (auto r = (*bw)->Close(); !r) return Fail(r.error());
      bytes += n;
    }
    if (auto r = (*w)->Commit(); !r) return Fail(r.error());
  } else if (verb == "verify") {
    auto info = ReadInfo(**region);
    if (!info) return Fail(info.error());
    std::vector<uint64_t> want(buf.size());
    for (auto& blob : info->blobs) {
      uint64_t index = strtoull(blob.name.c_str() + 5, nullptr, 10);
      for (uint64_t off = 0; off < blob.size; off += 1 << 20) {
        size_t n = size_t(std::min<uint64_t>(1 << 20, blob.size - off));
        if (auto r = (*region)->Read(blob.offset + off, buf.data(), n); !r) return Fail(r.error());
        Fill(seed, index, want.data(), n / 8, off / 8);
        if (memcmp(buf.data(), want.data(), n) != 0)
          return Fail(Err(EBADMSG) << "blob " << blob.name << " differs from what seed " << seed
                                   << " wrote, near offset " << off);
      }
      if (auto r = VerifyBlob(**region, blob); !r) return Fail(r.error());
      bytes += blob.size;
    }
    if (info->blobs.empty()) return Fail(Err(ENOENT) << "the store holds no blobs");
  } else if (verb == "corrupt") {
    auto d = DamageOneBlob(**region);
    if (!d) return Fail(d.error());
    std::printf("{\"op\":\"corrupt\",\"blob\":\"%s\",\"offset\":%" PRIu64 "}\n", d->first.c_str(),
                d->second);
    return 0;
  } else {
    return std::fprintf(stderr, "memstore-stress: unknown command %s\n", verb.c_str()), 2;
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"op\":\"%s\",\"bytes\":%" PRIu64
              ",\"seconds\":%.6f,\"gbps\":%.3f,\"max_rss_kib\":%ld}\n",
              verb.c_str(), bytes, s, double(bytes) / s / 1e9, MaxRss());
  return 0;
}
