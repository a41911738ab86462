// A page's checksum: how reclaim tells whether a page read back from swap
// and mapped writable still holds its slot's bytes (swap/README.md, "The
// swap cache's checksum").
#ifndef EMU_CHECKSUM_H_
#define EMU_CHECKSUM_H_

#include <cstdint>

#include "emu/types.h"

namespace emu {

// 64 bits over the kPageSize bytes at `p`. Four lanes each take every fourth
// 64-bit word through h = rotl(h ^ w, 29) * odd: for a fixed word that step
// is a bijection of h, and for a fixed h a bijection of w, so a change to
// any one word changes its lane's result; the lanes are folded with an odd
// multiplier, a bijection of each lane's value. A page that differs from
// its slot in one word is never taken for clean; other changes collide with
// a chance of about 2^-64. ~0.2 us a page. async-signal-safe.
//
// `p` is page aligned. Reclaim reads a program's page here while a thread
// of the program may be writing it: the host page is write-protected then,
// so the write traps and waits for the page table lock reclaim holds
// (Vmscan::VerifyOne). ThreadSanitizer cannot see that order (it records a
// store before the store traps), so these loads are left uninstrumented, as
// the kernel's own read of a page being written to swap is.
__attribute__((no_sanitize("thread"))) inline uint64_t PageChecksum(const void* p) {
  constexpr uint64_t kMul = 0x9e3779b97f4a7c15ull;  // odd
  constexpr uint64_t kFold = 0xc2b2ae3d27d4eb4full;  // odd
  using Word = uint64_t __attribute__((may_alias));
  const Word* w = static_cast<const Word*>(p);
  uint64_t h0 = 0x243f6a8885a308d3ull, h1 = 0x13198a2e03707344ull;
  uint64_t h2 = 0xa4093822299f31d0ull, h3 = 0x082efa98ec4e6c89ull;
  auto step = [](uint64_t h, uint64_t x) {
    h ^= x;
    h = (h << 29) | (h >> 35);
    return h * kMul;
  };
  for (size_t i = 0; i < kPageSize / sizeof(uint64_t); i += 4) {
    h0 = step(h0, w[i]);
    h1 = step(h1, w[i + 1]);
    h2 = step(h2, w[i + 2]);
    h3 = step(h3, w[i + 3]);
  }
  return ((h0 * kFold + h1) * kFold + h2) * kFold + h3;
}

}  // namespace emu

#endif  // EMU_CHECKSUM_H_
