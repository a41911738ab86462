// Basic vocabulary of the emulated MMU: addresses, ranges, page numbers,
// protections.
#ifndef EMU_TYPES_H_
#define EMU_TYPES_H_

#include <cstddef>
#include <cstdint>

#include <fmt/format.h>

namespace emu {

inline constexpr int kPageShift = 12;
inline constexpr uintptr_t kPageSize = uintptr_t{1} << kPageShift;
inline constexpr uintptr_t kPageMask = ~(kPageSize - 1);

// A virtual address inside an emulated address space. Emulated addresses are
// host addresses: memory served by emu is used through ordinary pointers.
using VirtAddr = uintptr_t;

inline constexpr bool PageAligned(uintptr_t v) { return (v & ~kPageMask) == 0; }
inline constexpr uintptr_t PageAlignDown(uintptr_t v) { return v & kPageMask; }
inline constexpr uintptr_t PageAlignUp(uintptr_t v) { return (v + kPageSize - 1) & kPageMask; }

// Half-open range [start, end) of virtual addresses.
struct AddrRange {
  VirtAddr start = 0;
  VirtAddr end = 0;

  constexpr uintptr_t len_bytes() const { return end - start; }
  constexpr size_t nr_pages() const { return (end - start) >> kPageShift; }
  constexpr bool empty() const { return end <= start; }
  constexpr bool Contains(VirtAddr a) const { return a >= start && a < end; }
  constexpr bool Overlaps(AddrRange o) const { return start < o.end && o.start < end; }
  constexpr AddrRange Intersect(AddrRange o) const {
    AddrRange r{start > o.start ? start : o.start, end < o.end ? end : o.end};
    if (r.end < r.start) r.end = r.start;
    return r;
  }
  friend constexpr bool operator==(AddrRange, AddrRange) = default;
};

// A page frame number: the index of a Page descriptor in the machine's
// mem_map. Pfn 0 is the shared zero page.
enum class Pfn : uint64_t {};
inline constexpr Pfn kZeroPfn{0};
inline constexpr uint64_t ToU64(Pfn p) { return static_cast<uint64_t>(p); }

// Protection bits, the values of PROT_READ/PROT_WRITE/PROT_EXEC.
using Prot = int;

}  // namespace emu

template <>
struct fmt::formatter<emu::AddrRange> : fmt::formatter<std::string_view> {
  auto format(emu::AddrRange r, format_context& ctx) const {
    return fmt::format_to(ctx.out(), "[{:#x},{:#x})", r.start, r.end);
  }
};
template <>
struct fmt::formatter<emu::Pfn> : fmt::formatter<std::string_view> {
  auto format(emu::Pfn p, format_context& ctx) const {
    return fmt::format_to(ctx.out(), "{}", emu::ToU64(p));
  }
};

#endif  // EMU_TYPES_H_
