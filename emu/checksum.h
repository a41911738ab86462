// A page's checksum: how reclaim tells whether a page read back from swap
// and mapped writable still holds its slot's bytes (swap/README.md, "The
// swap cache's checksum").
#ifndef EMU_CHECKSUM_H_
#define EMU_CHECKSUM_H_

#include <cstdint>
#include <cstring>

#include "emu/types.h"

namespace emu {

// 64 bits over the kPageSize bytes at `p`. Four lanes each take every fourth
// 64-bit word through h = rotl(h ^ w, 29) * odd: for a fixed word that step
// is a bijection of h, and for a fixed h a bijection of w, so a change to
// any one word changes its lane's result; the lanes are folded with an odd
// multiplier, a bijection of each lane's value. A page that differs from
// its slot in one word is never taken for clean; other changes collide with
// a chance of about 2^-64. ~0.2 us a page. async-signal-safe.
inline uint64_t PageChecksum(const void* p) {
  constexpr uint64_t kMul = 0x9e3779b97f4a7c15ull;  // odd
  constexpr uint64_t kFold = 0xc2b2ae3d27d4eb4full;  // odd
  const unsigned char* b = static_cast<const unsigned char*>(p);
  uint64_t h0 = 0x243f6a8885a308d3ull, h1 = 0x13198a2e03707344ull;
  uint64_t h2 = 0xa4093822299f31d0ull, h3 = 0x082efa98ec4e6c89ull;
  auto step = [](uint64_t h, uint64_t w) {
    h ^= w;
    h = (h << 29) | (h >> 35);
    return h * kMul;
  };
  for (size_t off = 0; off < kPageSize; off += 32) {
    uint64_t w[4];
    std::memcpy(w, b + off, sizeof(w));
    h0 = step(h0, w[0]);
    h1 = step(h1, w[1]);
    h2 = step(h2, w[2]);
    h3 = step(h3, w[3]);
  }
  return ((h0 * kFold + h1) * kFold + h2) * kFold + h3;
}

}  // namespace emu

#endif  // EMU_CHECKSUM_H_
