// PageReclaim: what the core model and the fault path need from the memory
// limit, reclaim and swap (swap/). A machine has one when
// MachineOptions::mem_limit is set; without a limit nothing is ever reclaimed
// or swapped and the fault path allocates straight from the MemMap.
//
// Every method is async-signal-safe unless it says otherwise: the fault path
// calls them in signal context (SIGBUS and SIGSEGV modes).
#ifndef EMU_RECLAIM_H_
#define EMU_RECLAIM_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "emu/types.h"

namespace emu {

class AddressSpace;
struct Vma;

class PageReclaim {
 public:
  virtual ~PageReclaim() = default;

  // Allocates up to `n` frames into `out` (refcount 1, as MemMap::Alloc).
  // When fewer than `min` are free, reclaims in the calling thread (direct
  // reclaim) until `min` are available or nothing more can be reclaimed.
  // Wakes the background reclaimer below the low watermark. Returns how many
  // frames it got (possibly fewer than `min`: out of memory). `held` is the
  // address space whose mmap_lock the caller holds for read, or nullptr.
  virtual int AllocFrames(AddressSpace* held, Pfn* out, int n, int min) = 0;
  // A newly mapped anonymous page joins the reclaim lists (unless mlocked).
  virtual void LruAdd(Pfn pfn) = 0;
  // The page's refcount dropped to zero: takes it off the reclaim lists,
  // drops its swap-cache slot, frees the frame.
  virtual void FreePage(Pfn pfn) = 0;
  // A swap PTE was cleared (munmap, MADV_DONTNEED): drops its reference to
  // the slot (Linux: mm/swapfile.c free_swap_and_cache()).
  virtual void SwapFree(uint64_t entry) = 0;
  // A page became unevictable (mlocked, or about to move into the frame
  // pool: kPgUnevictable) or munlocked: it leaves or rejoins the reclaim
  // lists (it stays off while any kPgUnevictable flag remains).
  virtual void Mlocked(Pfn pfn) = 0;
  virtual void Munlocked(Pfn pfn) = 0;
  // MADV_FREE made the page lazily freeable (kPgLazyFree): it moves to the
  // inactive tail, the first candidates for reclaim (Linux: lru_lazyfree).
  virtual void LazyFree(Pfn pfn) = 0;
  // AddressSpace::Fork(), with reclaim blocked: one more swap PTE names
  // `entry` (Linux: swap_duplicate()). False when its count is at the
  // maximum (no count continuation here): the fork fails with ENOMEM.
  virtual bool SwapDuplicate(uint64_t entry) = 0;
  // A page stops being the copy of its swap slot (Linux:
  // delete_from_swap_cache()): AddressSpace::Fork() with reclaim blocked
  // (a page about to be shared), or a write fault on a page whose slot has
  // other users (swap PTEs of a forked address space, which keep the slot's
  // copy). Its PTE must be dirty from then on. False, changing nothing,
  // when the page lock is taken or the page is under writeback (the fault
  // retries). True for a page not in the cache.
  virtual bool DropSwapCache(Pfn pfn) = 0;
  // The same with the page lock already held by the caller (Fork).
  virtual void DropSwapCacheLocked(Pfn pfn) = 0;

  // Linux: mm/memory.c do_swap_page(). The fault at `addr` (page aligned) in
  // `vma` of `as` found the swap PTE `orig` at `pte`. The caller holds
  // mmap_lock for read. Returns a kFault* mask (emu/fault_handler.h).
  virtual unsigned DoSwapPage(AddressSpace& as, const Vma& vma, VirtAddr addr,
                              std::atomic<uint64_t>* pte, uint64_t orig, unsigned flags) = 0;
  // A write fault on the write-protected swap-cache page `pfn`, mapped once:
  // may it be reused without a copy? Linux (seed 002):
  // can_reuse_swap_page_{locked,unlocked}() decide by mapcount + swapcount,
  // never by whether the page lock could be taken; when it can be taken and
  // no writeback is in flight the slot is freed (try_to_free_swap), otherwise
  // the reclaimer drops the stale slot later.
  virtual bool ReuseSwapPage(Pfn pfn) = 0;
  // Waits (bounded) while the swap-in of `entry` by another thread is in
  // flight, so that racing faults sleep rather than spin.
  virtual void WaitSwapIn(std::atomic<uint64_t>* pte, uint64_t locked_value) = 0;

  // Not async-signal-safe from here on.
  // Waits until no reclaim pass holds a page of `as` (its pages are all
  // unmapped already); called as the address space goes away.
  virtual void ForgetAddressSpace(AddressSpace* as) = 0;
  // Holds reclaim off (background and direct) while invariants are checked;
  // a fault that needs reclaim meanwhile waits.
  virtual void BlockReclaim() = 0;
  virtual void UnblockReclaim() = 0;
  // Checks the swap_map against the references that exist: `refs` maps each
  // slot to the number of swap PTEs naming it, in every address space. The
  // caller holds BlockReclaim().
  // `cached` maps each slot held by a mapped page (kPgSwapCache) to the
  // number of such pages.
  virtual absl::Status CheckSwapRefs(const absl::flat_hash_map<uint64_t, int>& refs,
                                     const absl::flat_hash_map<uint64_t, int>& cached) = 0;
  // Reclaims until at most `target_pages` frames are in use (tests, tools).
  virtual absl::Status ShrinkTo(uint64_t target_pages) = 0;
  // Reads the page in swap slot `entry` into `page` with one synchronous
  // pread (for a forked child that leaves the emulator; never the fault
  // path). False on a short read or an error, errno set.
  virtual bool ReadSlot(uint64_t entry, void* page) = 0;
  // fork() of the whole process (the preload), so that the child stays on
  // the emulator under its own limit, sharing the swap file with the parent.
  // ForkPrepare: before fork(), with every address space's mmap_lock held
  // for write (reclaim refuses them then): readies the child's share of the
  // swap device when `share` (the child then stays on the emulator under
  // its own limit). Returns a token for ForkParent, or -1 when the child
  // gets no share (not asked for, or the device has no room for another
  // process).
  virtual int ForkPrepare(bool share) = 0;
  // In the parent after fork(): whether the child attached (ChildEarly took
  // the share); if not, the share is dropped.
  virtual void ForkParent(int token, bool attached) = 0;
  // In the child, first thing, with no other thread; async-signal-safe (it
  // may run in the child's first fault, before anything else): takes the
  // share reserved by ForkPrepare (or, without one, reads swap only), drops
  // what the parent's threads left half done (reclaim lists, isolated and
  // locked pages, pages under writeback, frames allocated by faults in
  // flight) and rebuilds the swap_map from the swap PTEs and swap-cache
  // pages of every address space, whose page tables Machine has fixed up
  // already. Returns whether the child holds a share of the swap device.
  virtual bool ChildEarly() = 0;
  // In the child, once it may allocate: its own I/O rings and kswapd.
  virtual absl::Status ChildLate() = 0;
  // A child that attached and then leaves the emulator (its swapped pages
  // read back) gives its share of the swap device up.
  virtual void ChildLeaveShare() = 0;
  // Gauges as "name value" lines (nr_swap_used, nr_active, ...).
  virtual std::string StatText() = 0;
  virtual uint64_t limit_pages() const = 0;
};

}  // namespace emu

#endif  // EMU_RECLAIM_H_
