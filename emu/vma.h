// Virtual memory areas (= vm_area_struct) and the per-address-space tree of
// them (= the maple tree of an mm_struct).
#ifndef EMU_VMA_H_
#define EMU_VMA_H_

#include <cstdint>
#include <functional>
#include <map>

#include "absl/status/status.h"
#include "emu/pool.h"
#include "emu/types.h"

namespace emu {

// vm_flags, with Linux's names.
inline constexpr uint32_t kVmRead = 1u << 0;
inline constexpr uint32_t kVmWrite = 1u << 1;
inline constexpr uint32_t kVmExec = 1u << 2;
inline constexpr uint32_t kVmShared = 1u << 3;
// VM_MAYWRITE: a shared file mapping of a file opened read-only lacks it,
// and mprotect may not make it writable (EACCES).
inline constexpr uint32_t kVmMayWrite = 1u << 5;
inline constexpr uint32_t kVmMayShare = 1u << 7;
inline constexpr uint32_t kVmGrowsDown = 1u << 8;
inline constexpr uint32_t kVmLocked = 1u << 13;
inline constexpr uint32_t kVmDontCopy = 1u << 17;    // MADV_DONTFORK: not in a forked child
inline constexpr uint32_t kVmWipeOnFork = 1u << 25;  // MADV_WIPEONFORK: empty in a forked child
inline constexpr uint32_t kVmNoReserve = 1u << 21;
// Not Linux's: a native mapping (a file, shared memory) the program placed
// with MAP_FIXED inside the window (the preload). The emulator never faults
// it and keeps no PTEs for it; the range is occupied, and calls on it go to
// the kernel (AddressSpace::MapForeign).
inline constexpr uint32_t kVmForeign = 1u << 28;
// Seed 003's VM_VOLATILE (our bit: Linux never merged it): MADV_VOLATILE
// (AddressSpace::Madvise, kMadvVolatile) set it; reclaim may discard the
// VMA's pages instead of swapping them, and the first fault in the VMA clears
// it. Like the seed (VM_SPECIAL), a volatile VMA never merges, so that a fault
// clears the mark of no more than one advised range.
inline constexpr uint32_t kVmVolatile = 1u << 29;

inline constexpr uint32_t kVmProtMask = kVmRead | kVmWrite | kVmExec;

uint32_t ProtToVmFlags(Prot prot);
Prot VmFlagsToProt(uint32_t vm_flags);

// An anon_vma (rmap/anon_vma.h): the VMAs whose pages it anchors. Opaque here.
struct AnonVma;
// The object behind a shared mapping (emu/shmem.h).
class ShmemObject;

struct Vma {
  VirtAddr start = 0;
  VirtAddr end = 0;
  uint32_t vm_flags = 0;
  // = vm_pgoff: the page offset of `start`. A new anonymous mapping gets
  // start >> kPageShift; a split keeps the offsets of its pages, a moved
  // range (mremap) and a forked child's copy keep the original ones, so
  // that a page's rmap index (vm_pgoff + its page in the VMA) stays valid.
  uint64_t pgoff = 0;
  // = anon_vma: set when the VMA's pages are first shared (AddressSpace::
  // Fork with the anon_vma rmap method); shared by the forked copies.
  AnonVma* anon_vma = nullptr;
  // = vm_file: the shared memory object a MAP_SHARED mapping maps, pgoff
  // then being the page offset of `start` in it. Each VMA naming it holds a
  // reference (VmaTree takes and drops them).
  ShmemObject* file = nullptr;

  // A VMA with the offsets a new mapping of `start` gets.
  static Vma New(VirtAddr start, VirtAddr end, uint32_t vm_flags) {
    return Vma{start, end, vm_flags, start >> kPageShift, nullptr, nullptr};
  }

  AddrRange range() const { return {start, end}; }
  bool readable() const { return vm_flags & kVmRead; }
  bool writable() const { return vm_flags & kVmWrite; }
  bool locked() const { return vm_flags & kVmLocked; }
  bool foreign() const { return vm_flags & kVmForeign; }
  bool is_volatile() const { return vm_flags & kVmVolatile; }
  // Linux: mm/memory.c use_zero_page() (seed 004): private, not VM_LOCKED,
  // anonymous (no fault handler).
  bool use_zero_page() const { return !(vm_flags & (kVmLocked | kVmShared | kVmMayShare)); }
  // Two adjacent VMAs merge when their flags are equal, their page offsets
  // continue each other and their anon_vmas are compatible (Linux:
  // is_mergeable_anon_vma(): equal, or one has none yet); volatile ones never.
  bool CanMergeWith(const Vma& next) const {
    return end == next.start && vm_flags == next.vm_flags && !(vm_flags & kVmVolatile) &&
           file == next.file &&
           pgoff + ((end - start) >> kPageShift) == next.pgoff &&
           (anon_vma == next.anon_vma || anon_vma == nullptr || next.anon_vma == nullptr);
  }
};

// Invariants:
//  1. VMAs are page aligned, non-empty and do not overlap; keyed by start.
//  2. No two adjacent VMAs could merge (every mutation merges back).
// Locking: owned by an AddressSpace; mutated under its mmap_lock held for
// write, read under it held for read. Lookups do not allocate, so the fault
// path may use them in signal context.
class VmaTree {
 public:
  // Nodes come from the emulator's own pool (emu/pool.h), never malloc.
  using Map = std::map<VirtAddr, Vma, std::less<VirtAddr>,
                       PoolAllocator<std::pair<const VirtAddr, Vma>>>;

  // Linux: mm/mmap.c find_vma(): the first VMA with end > addr, or nullptr.
  const Vma* FindVma(VirtAddr addr) const;
  // The VMA containing addr, or nullptr.
  const Vma* Lookup(VirtAddr addr) const {
    const Vma* v = FindVma(addr);
    return v != nullptr && v->start <= addr ? v : nullptr;
  }
  bool AnyOverlap(AddrRange r) const;
  // True when every page of `r` is covered by some VMA.
  bool FullyMapped(AddrRange r) const;

  // Splits VMAs so that `r.start` and `r.end` are VMA boundaries (where they
  // fall inside one) and returns an iterator to the first VMA inside `r`.
  Map::iterator SplitAround(AddrRange r);
  // Removes every VMA part inside `r` (after SplitAround).
  void Erase(AddrRange r);
  // Inserts a VMA over a range that has no VMA.
  void Insert(const Vma& vma);
  // Merges adjacent compatible VMAs from the one before r.start through the
  // one after r.end (= vma_merge after mprotect/mlock/munmap).
  void MergeAround(AddrRange r);

  Map::iterator begin() { return map_.begin(); }
  Map::iterator end() { return map_.end(); }
  Map::const_iterator begin() const { return map_.begin(); }
  Map::const_iterator end() const { return map_.end(); }
  Map::iterator LowerBoundStart(VirtAddr a) { return map_.lower_bound(a); }
  size_t size() const { return map_.size(); }

  absl::Status CheckInvariants() const;

 private:
  Map map_;
};

}  // namespace emu

#endif  // EMU_VMA_H_
