// The software page table: the truth about every emulated page. Hardware
// mappings (the host's page tables) are a cache of it (design direction 1).
//
// A four-level radix tree like x86-64's: 9 bits a level, 512 eight-byte
// entries a table, covering 48-bit virtual addresses. Upper levels hold
// pointers to the next table; the leaf level holds Ptes.
#ifndef EMU_PAGE_TABLE_H_
#define EMU_PAGE_TABLE_H_

#include <array>
#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "emu/sync.h"
#include "emu/types.h"

namespace emu {

// A software PTE. Layout (64 bits):
//   bit 0  present   bit 1 write   bit 2 dirty   bit 3 young
//   bit 4  special   (maps the shared zero page; no Page refcount, pte_special)
//   bit 5  locked    (emulator-internal: a host install is in flight; with
//                     swap set: a swap-in of that entry is in flight)
//   bit 6  swap      (not present; bits 12..63 hold a swap entry, the slot)
//   bit 7  discarded (alone: the page was discarded by reclaim, a volatile
//                     or lazily freed page, swap/vmscan.h; it behaves as none,
//                     and a fault on it counts a refault; = a pte marker)
//   bits 12..51      pfn when present
// A PTE is "none" when all bits are zero.
class Pte {
 public:
  static constexpr uint64_t kPresent = 1u << 0;
  static constexpr uint64_t kWrite = 1u << 1;
  static constexpr uint64_t kDirty = 1u << 2;
  static constexpr uint64_t kYoung = 1u << 3;
  static constexpr uint64_t kSpecial = 1u << 4;
  static constexpr uint64_t kLocked = 1u << 5;
  static constexpr uint64_t kSwap = 1u << 6;
  static constexpr uint64_t kDiscarded = 1u << 7;
  static constexpr int kPfnShift = 12;
  static constexpr uint64_t kPfnMask = ((uint64_t{1} << 40) - 1) << kPfnShift;

  constexpr Pte() = default;
  constexpr explicit Pte(uint64_t raw) : raw_(raw) {}

  // pte_mkspecial(pfn_pte(zero_pfn)): readable, never writable.
  static constexpr Pte ZeroPage() { return Pte(kPresent | kSpecial | kYoung); }
  static constexpr Pte Anon(Pfn pfn, bool write, bool dirty, bool young = true) {
    return Pte((ToU64(pfn) << kPfnShift) | kPresent | (young ? kYoung : 0) |
               (write ? kWrite : 0) | (dirty ? kDirty : 0));
  }
  static constexpr Pte InstallLocked() { return Pte(kLocked); }
  static constexpr Pte SwapEntry(uint64_t entry) { return Pte((entry << kPfnShift) | kSwap); }
  static constexpr Pte Discarded() { return Pte(kDiscarded); }

  constexpr uint64_t raw() const { return raw_; }
  constexpr bool none() const { return raw_ == 0; }
  constexpr bool present() const { return raw_ & kPresent; }
  constexpr bool write() const { return raw_ & kWrite; }
  constexpr bool dirty() const { return raw_ & kDirty; }
  constexpr bool young() const { return raw_ & kYoung; }
  constexpr bool special() const { return raw_ & kSpecial; }
  constexpr bool locked() const { return raw_ & kLocked; }
  constexpr bool swap() const { return raw_ & kSwap; }
  constexpr bool discarded() const { return raw_ == kDiscarded; }
  constexpr Pfn pfn() const { return Pfn{(raw_ & kPfnMask) >> kPfnShift}; }
  constexpr uint64_t swap_entry() const { return raw_ >> kPfnShift; }

  constexpr Pte WithWrite(bool w) const { return Pte(w ? raw_ | kWrite : raw_ & ~kWrite); }
  constexpr Pte WithDirty() const { return Pte(raw_ | kDirty); }
  constexpr Pte WithYoung(bool y) const { return Pte(y ? raw_ | kYoung : raw_ & ~kYoung); }
  constexpr Pte WithLocked() const { return Pte(raw_ | kLocked); }
  constexpr Pte Clean() const { return Pte(raw_ & ~(kDirty | kWrite)); }

  friend constexpr bool operator==(Pte, Pte) = default;

 private:
  uint64_t raw_ = 0;
};

// Invariants:
//  1. Every upper-level entry is 0 or points at a table allocated by this
//     PageTable; leaf entries are Ptes.
//  2. A table, once linked, stays linked until the PageTable is destroyed
//     (so lock-free walkers never see freed tables).
// Locking: tables are linked with compare-and-swap, so walks take no lock.
// A leaf entry is written under its ptl (Ptl(addr)), or under mmap_lock held
// for write with no fault in flight; it may be read without a lock (acquire).
class PageTable {
 public:
  static constexpr int kLevels = 4;
  static constexpr int kEntriesPerTable = 512;
  static constexpr uintptr_t kLeafSpan = uintptr_t{kEntriesPerTable} << kPageShift;  // 2 MiB

  PageTable() = default;
  ~PageTable();
  PageTable(const PageTable&) = delete;
  PageTable& operator=(const PageTable&) = delete;

  // The leaf entry for `addr`, allocating tables on the way when `alloc`.
  // Returns nullptr when a table is missing and !alloc, or allocation failed.
  // async-signal-safe (allocates tables with mmap(2)).
  std::atomic<uint64_t>* Walk(VirtAddr addr, bool alloc);

  // The pte lock covering `addr` (= pte_lockptr): one lock per leaf table,
  // hashed into a fixed array.
  SpinLock* Ptl(VirtAddr addr) {
    return &ptls_[(addr / kLeafSpan) % kNrPtls].lock;
  }

  // Calls fn(VirtAddr, std::atomic<uint64_t>*) for each leaf entry in `r` whose
  // table exists (possibly none Ptes). Tables that do not exist are skipped.
  template <typename Fn>
  void ForEachEntry(AddrRange r, Fn&& fn);

  // A forked child's copy: every ptl unlocked (see SpinLock::ResetAfterFork).
  void ResetLocksAfterFork() {
    for (auto& p : ptls_) p.lock.ResetAfterFork();
    alloc_lock_.ResetAfterFork();
  }

  // Number of tables allocated (all levels), for memory accounting.
  uint64_t nr_tables() const { return nr_tables_.load(std::memory_order_relaxed); }

 private:
  struct Table {
    std::atomic<uint64_t> e[kEntriesPerTable];
  };
  static_assert(sizeof(Table) == kPageSize);
  static constexpr int kNrPtls = 256;
  struct alignas(64) PaddedLock {
    SpinLock lock;
  };

  static int Index(VirtAddr a, int level) {  // level 0 = root
    return static_cast<int>((a >> (kPageShift + 9 * (kLevels - 1 - level))) & 511);
  }
  Table* AllocTable();  // async-signal-safe

  Table root_{};
  std::array<PaddedLock, kNrPtls> ptls_;
  // Tables are carved from chunks; the first page of a chunk links chunks.
  SpinLock alloc_lock_;
  void* chunk_head_ ABSL_GUARDED_BY(alloc_lock_) = nullptr;
  char* chunk_next_ ABSL_GUARDED_BY(alloc_lock_) = nullptr;
  char* chunk_end_ ABSL_GUARDED_BY(alloc_lock_) = nullptr;
  std::atomic<uint64_t> nr_tables_{1};
};

template <typename Fn>
void PageTable::ForEachEntry(AddrRange r, Fn&& fn) {
  VirtAddr a = r.start;
  while (a < r.end) {
    Table* t = &root_;
    int level = 0;
    for (; level < kLevels - 1; level++) {
      uint64_t next = t->e[Index(a, level)].load(std::memory_order_acquire);
      if (next == 0) break;
      t = reinterpret_cast<Table*>(next);
    }
    if (level < kLevels - 1) {  // skip the span of the missing table
      uintptr_t span = uintptr_t{1} << (kPageShift + 9 * (kLevels - 1 - level));
      VirtAddr next_a = (a & ~(span - 1)) + span;
      if (next_a <= a) return;
      a = next_a;
      continue;
    }
    VirtAddr leaf_end = (a & ~(kLeafSpan - 1)) + kLeafSpan;
    for (; a < r.end && a < leaf_end; a += kPageSize) fn(a, &t->e[Index(a, kLevels - 1)]);
  }
}

}  // namespace emu

#endif  // EMU_PAGE_TABLE_H_
