// Page: the descriptor of a frame (= struct page), and the machine's mem_map
// with its frame allocator.
//
// A frame is the memory behind one emulated page. An exclusive private page
// lives in place: its bytes are the kernel's anonymous page at the address it
// is mapped at (design direction 3), so the descriptor records where that is
// (mapping + index) rather than owning bytes. Frames seen at more than one
// address (later: fork, MAP_SHARED) live in the memfd frame pool.
#ifndef EMU_PAGE_H_
#define EMU_PAGE_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "emu/sync.h"
#include "emu/types.h"

namespace emu {

class AddressSpace;

// Page flags (= enum pageflags); only the ones the model uses so far.
inline constexpr uint32_t kPgLocked = 1u << 0;      // PG_locked: someone is changing the page's identity
inline constexpr uint32_t kPgAnon = 1u << 1;        // PageAnon(): mapping is an AddressSpace/anon_vma
inline constexpr uint32_t kPgDirty = 1u << 2;       // PG_dirty: contents differ from any backing copy
inline constexpr uint32_t kPgReferenced = 1u << 3;  // PG_referenced
inline constexpr uint32_t kPgMlocked = 1u << 4;     // PG_mlocked: mapped in a VM_LOCKED vma, never reclaimed
inline constexpr uint32_t kPgReserved = 1u << 5;    // PG_reserved: the zero page
inline constexpr uint32_t kPgSwapCache = 1u << 6;   // PG_swapcache: holds swap slot `private_`
inline constexpr uint32_t kPgWriteback = 1u << 7;   // PG_writeback: being written to swap
inline constexpr uint32_t kPgLru = 1u << 8;         // PG_lru: on one of the reclaim lists
inline constexpr uint32_t kPgActive = 1u << 9;      // PG_active: on the active list
inline constexpr uint32_t kPgIsolated = 1u << 10;   // taken off the lists by reclaim (= isolated)
inline constexpr uint32_t kPgPool = 1u << 11;       // the frame lives in the FramePool at pool_off
// MADV_FREE (Linux: a lazyfree folio, !PG_swapbacked): reclaim discards the
// page without I/O while its PTE stays clean; a write makes the PTE dirty
// and the page is then swapped like any other. Only pages in place.
inline constexpr uint32_t kPgLazyFree = 1u << 12;
// A page of a shared memory object (emu/shmem.h, = PageSwapBacked without
// PageAnon): kPgPool too; anchor is the ShmemObject, index its page offset;
// the object's page cache holds a reference. Not on the reclaim lists (shared
// memory is not swapped yet) unless it is also kPgFile.
inline constexpr uint32_t kPgShmem = 1u << 13;
// A page of a file's page cache (a kPgShmem page of an object with a file
// behind it, Machine::OpenFile; Linux's file folio, !PageSwapBacked): on the
// reclaim lists from the time it enters the cache, mapped or not, and
// reclaimed by dropping it (written back first when dirty). kPgWriteback on
// such a page means a write to the file is in flight.
inline constexpr uint32_t kPgFile = 1u << 14;
// A swap-cache page read back from its slot and mapped writable (its slot
// referenced by no one else): `csum` is the checksum (emu/checksum.h) of the
// slot's bytes. Its PTE may be writable and clean with writes unseen, so
// reclaim write-protects it and compares the checksum before it takes the
// page for a clean copy of its slot (Linux learns the same from the
// hardware dirty bit). Meaningful only with kPgSwapCache; a page going into
// the FramePool loses it (csum shares its word with pool_off).
inline constexpr uint32_t kPgCsum = 1u << 15;
// Pages reclaim leaves alone (= the unevictable list).
inline constexpr uint32_t kPgUnevictable = kPgMlocked;

// A pin (pin_user_pages, AddressSpace::PinUserPages) adds kPinBias to the
// refcount, as Linux's GUP_PIN_COUNTING_BIAS does: a page whose refcount
// reaches it may be pinned, and reclaim, fork and the write fault keep its
// identity (Linux: folio_maybe_dma_pinned()).
inline constexpr int32_t kPinBias = 1024;

// Invariants:
//  1. A free page has flags == 0, refcount == 0, mapcount == 0, mapping == 0.
//  2. An allocated anonymous page has kPgAnon, refcount >= 1 and
//     mapcount <= refcount; mapcount counts the PTEs that map it.
//  3. The zero page (pfn 0) is kPgReserved, never counted (pte_special).
//  4. kPgSwapCache <=> private_ names a swap slot whose swap_map entry has
//     the cache flag (swap/swap_device.h); kPgWriteback implies kPgSwapCache.
//  5. kPgLru <=> the page is linked on a reclaim list through lru_prev/next.
//  6. kPgPool <=> the frame's bytes are in the machine's FramePool at
//     pool_off (emu/frame_pool.h), and every PTE that maps it maps that
//     file page in the host. Such a page may be mapped by several PTEs
//     (after AddressSpace::Fork), then mapcount counts them all and
//     anchor/index locate them through the machine's RmapMethod.
//     Without kPgPool the page lives in place and has at most one PTE.
// mapping/index are written by the owner of the page's PTE under that PTE's
// ptl (or under mmap_lock held for write), and read under it. private_ and
// kPgSwapCache/kPgWriteback change only under the page lock (kPgLocked, see
// TryLockPage). lru_prev/lru_next and kPgLru/kPgActive are guarded by the
// reclaim lists' lock.
struct Page {
  std::atomic<uint32_t> flags{0};
  std::atomic<int32_t> refcount{0};
  std::atomic<int32_t> mapcount{0};
  uint32_t next_free = 0;  // free-list link, valid only while free
  uint32_t lru_prev = 0;   // reclaim-list links (pfns; 0 ends a list)
  uint32_t lru_next = 0;
  // For an anonymous page: the AddressSpace that maps it (later the anon_vma),
  // and its linear page index (address >> kPageShift), as page->index.
  AddressSpace* mapping = nullptr;
  uint64_t index = 0;
  uint64_t private_ = 0;  // = page_private(): the swap slot while kPgSwapCache
  union {
    uint64_t pool_off = 0;  // where the frame lives in the FramePool, while kPgPool
    uint64_t csum;          // the slot's checksum, while kPgCsum (never with kPgPool)
  };
  // While kPgPool: the rmap anchor (an anon_vma or an anonmm, emu/rmap.h);
  // `index` is then the method's index, and `mapping` is null.
  void* anchor = nullptr;

  // = trylock_page(): takes PG_locked if free. async-signal-safe.
  bool TryLock() {
    return !(flags.fetch_or(kPgLocked, std::memory_order_acquire) & kPgLocked);
  }
  void Unlock() { flags.fetch_and(~kPgLocked, std::memory_order_release); }
  bool Test(uint32_t f) const { return flags.load(std::memory_order_acquire) & f; }
  bool MaybePinned() const { return refcount.load(std::memory_order_acquire) >= kPinBias; }
  // = get_page_unless_zero(). async-signal-safe.
  bool GetUnlessZero() {
    int32_t c = refcount.load(std::memory_order_relaxed);
    while (c > 0) {
      if (refcount.compare_exchange_weak(c, c + 1, std::memory_order_acquire)) return true;
    }
    return false;
  }
};
static_assert(sizeof(Page) == 64);

// The machine's mem_map: an array of Page descriptors indexed by Pfn, and the
// allocator of frames. The array is reserved with MAP_NORESERVE and touched
// as pfns are first used.
//
// Invariants:
//  1. nr_free() + nr_used() == the number of pfns handed out at least once,
//     excluding the zero page.
//  2. Every pfn on the free list satisfies Page invariant 1.
class MemMap {
 public:
  static absl::StatusOr<MemMap*> Create(uint64_t max_pages);
  ~MemMap();
  MemMap(const MemMap&) = delete;
  MemMap& operator=(const MemMap&) = delete;

  // Allocates a frame for an anonymous page, refcount 1, mapcount 0.
  // Returns false when all max_pages frames are in use. async-signal-safe.
  bool Alloc(Pfn* out);
  // Frees `pfn`; its counts must have dropped to zero. async-signal-safe.
  void Free(Pfn pfn);

  Page& page(Pfn pfn) { return pages_[ToU64(pfn)]; }
  const Page& page(Pfn pfn) const { return pages_[ToU64(pfn)]; }
  uint64_t max_pages() const { return max_pages_; }
  uint64_t nr_used() const { return nr_used_.load(std::memory_order_relaxed); }
  uint64_t peak_used() const { return peak_used_.load(std::memory_order_relaxed); }

  absl::Status CheckInvariants();

  // A forked child's copy (see SpinLock::ResetAfterFork).
  void ResetLocksAfterFork() { lock_.ResetAfterFork(); }
  // One past the highest pfn ever handed out: every frame in use is below.
  uint64_t pfn_end() {
    SpinLockHolder l(&lock_);
    return next_unused_;
  }

 private:
  MemMap(Page* pages, uint64_t max_pages) : pages_(pages), max_pages_(max_pages) {}

  Page* const pages_;  // immutable after construction
  const uint64_t max_pages_;
  SpinLock lock_;
  uint32_t free_head_ ABSL_GUARDED_BY(lock_) = 0;  // 0: empty (pfn 0 is never free)
  uint64_t next_unused_ ABSL_GUARDED_BY(lock_) = 1;
  uint64_t nr_free_ ABSL_GUARDED_BY(lock_) = 0;
  std::atomic<uint64_t> nr_used_{0};
  std::atomic<uint64_t> peak_used_{0};
};

}  // namespace emu

#endif  // EMU_PAGE_H_
