// Reclaim of frames in the pool (shared by AddressSpace::Fork): Linux's
// shrink_folio_list() for a folio mapped by several address spaces, through
// the reverse map (rmap/rmap.h): folio_referenced() over every mapping,
// add_to_swap() and pageout() of the frame's bytes from the pool, then
// try_to_unmap() turning every PTE into a swap PTE with one reference to the
// slot each. One page at a time, synchronously: such frames are few next to
// the pages in place, which go through ShrinkList's batches.
#include "emu/mm.h"
#include "emu/shmem.h"
#include "rmap/rmap.h"
#include "swap/vmscan.h"

namespace emu {

int Vmscan::ShrinkFilePage(Pfn pfn) {
  // Linux: shrink_folio_list() for a file folio: referenced through a
  // mapping -> activate; dirty -> pageout() (clear_page_dirty_for_io, whose
  // page_mkclean write-protects every PTE, then ->writepage); then
  // try_to_unmap() and __remove_mapping(). Clean pages go without I/O and
  // come back by a read of the file at their next fault.
  Page& page = mem_map_.page(pfn);
  auto& file = *static_cast<ShmemObject*>(page.anchor);
  VmStat& vmstat = machine_->vmstat();
  auto rotate = [&](bool active) {
    Putback(pfn, active);
    vmstat.Add(active ? VmEvent::k_pgactivate : VmEvent::k_pgrotated);
    return 0;
  };
  if (page.MaybePinned()) return rotate(true);
  if (page.mapcount.load(std::memory_order_acquire) > 0 &&
      PageReferenced(*machine_, pfn) > 0 && policy_ == ReclaimPolicy::kLru) {
    return rotate(true);
  }
  // Dirty tracking "async": what the host recorded for the page's
  // mappings makes it dirty first (the harvest also protects it again, so
  // a later write is recorded anew; TryToUnmap looks once more).
  if (page.mapcount.load(std::memory_order_acquire) > 0 && machine_->host().tracks_writes()) {
    RmapWalk(*machine_, pfn, [&](AddressSpace&, const Vma& vma, VirtAddr addr,
                                 std::atomic<uint64_t>*) {
      if (machine_->Tracked(vma)) vma.file->HarvestMapping(vma, {addr, addr + kPageSize});
      return true;
    });
  }
  if (page.Test(kPgDirty) && file.ClearDirty(page)) {
    // page_mkclean through the reverse map, try-locking each address space
    // (this may run in a fault that holds its own): a busy one keeps the
    // page dirty for a later pass.
    HostMmu& host = machine_->host();
    bool failed = false;
    RmapWalkStats seen = RmapWalk(*machine_, pfn, [&](AddressSpace& as, const Vma& vma,
                                                      VirtAddr addr, std::atomic<uint64_t>* e) {
      // Tracked by the host: the harvest above protected it again already.
      if (machine_->Tracked(vma)) return true;
      PageTable& pt = as.page_table();
      {
        SpinLockHolder l(pt.Ptl(addr));
        Pte pte(e->load(std::memory_order_relaxed));
        if (pte.locked()) {
          failed = true;  // a fault may be making it writable
          return false;
        }
        if (!pte.present() || pte.pfn() != pfn || !pte.write()) return true;
        e->store(pte.Clean().raw(), std::memory_order_release);
      }
      failed |= !host.WriteProtect({addr, addr + kPageSize}, VmFlagsToProt(vma.vm_flags));
      vmstat.Add(VmEvent::k_pgmkclean);
      return !failed;
    });
    // A PTE being installed (claimed, not present yet) is not visited, but
    // its mapping is counted before the page is dirtied (DoSharedPage).
    if (failed || seen.busy > 0 ||
        seen.found < page.mapcount.load(std::memory_order_acquire)) {
      file.MarkDirty(page);
      return rotate(false);
    }
    if (!file.WriteOut(page)) {
      file.MarkDirty(page);  // Linux: a failed ->writepage redirties the folio
      return rotate(true);
    }
    vmstat.Add(VmEvent::k_pgwriteback_reclaim);
  }
  if (page.mapcount.load(std::memory_order_acquire) > 0) {
    // A PTE written since is writable again, and try_to_unmap leaves it.
    UnmapResult r = TryToUnmap(*machine_, pfn, [](AddressSpace&, VirtAddr) { return Pte(); });
    if (r == UnmapResult::kFail) {
      page.flags.fetch_or(kPgMlocked, std::memory_order_relaxed);
      Release(pfn);
      return 0;
    }
    if (r != UnmapResult::kSuccess) return rotate(false);
  }
  // Reclaim's reference and the cache's, nobody else's: out of the cache.
  if (!file.RemoveFromCache(pfn, 1)) return rotate(false);
  {
    SpinLockHolder l(&lru_lock_);
    page.flags.fetch_and(~kPgIsolated, std::memory_order_relaxed);
  }
  page.Unlock();
  machine_->FreePage(pfn);  // the count is frozen at 0: the frame is ours
  if (FramePool* pool = machine_->frame_pool()) pool->Flush();
  vmstat.Add(VmEvent::k_pgsteal_file);
  vmstat.Add(VmEvent::k_pgsteal);
  return 1;
}

int Vmscan::ShrinkPoolPage(Pfn pfn) {
  Page& page = mem_map_.page(pfn);
  VmStat& vmstat = machine_->vmstat();
  if (page.Test(kPgFile)) return ShrinkFilePage(pfn);
  // TryToUnmap left mappings: an mlocked one keeps the frame off the lists,
  // else it goes back to the inactive list. No frame was freed.
  auto StillMapped = [&](UnmapResult r) {
    if (r == UnmapResult::kFail) {
      page.flags.fetch_or(kPgMlocked, std::memory_order_relaxed);
      Release(pfn);
    } else {
      Putback(pfn, false);
      vmstat.Add(VmEvent::k_pgrotated);
    }
    return 0;
  };
  if (page.mapcount.load(std::memory_order_acquire) == 0) {
    Release(pfn);  // unmapped meanwhile: our reference frees it
    return 1;
  }
  if (page.MaybePinned()) {
    Putback(pfn, true);  // pinned: it stays where it is
    vmstat.Add(VmEvent::k_pgactivate);
    return 0;
  }
  // Seed 003: a frame every mapping of which lies in a volatile VMA is
  // discarded, without I/O and whether referenced or not; one mapping
  // elsewhere (a forked address space that did not advise it) keeps it.
  bool all_volatile = true;
  RmapWalkStats seen = RmapWalk(*machine_, pfn, [&](AddressSpace&, const Vma& vma, VirtAddr,
                                                    std::atomic<uint64_t>*) {
    all_volatile &= vma.is_volatile();
    return all_volatile;
  });
  if (all_volatile && seen.busy == 0 && seen.found > 0) {
    const bool avoided = !page.Test(kPgSwapCache);
    UnmapResult r = TryToUnmap(*machine_, pfn, [](AddressSpace&, VirtAddr) {
      return Pte::Discarded();
    }, /*discard=*/true);
    if (r == UnmapResult::kSuccess) {
      if (page.Test(kPgSwapCache)) {
        page.flags.fetch_and(~kPgSwapCache, std::memory_order_relaxed);
        swap_->ClearCache(page.private_);
        page.private_ = 0;
      }
      Release(pfn);
      vmstat.Add(VmEvent::k_pgvolatile);
      if (avoided) vmstat.Add(VmEvent::k_swapout_avoided);
      vmstat.Add(VmEvent::k_pgsteal);
      return 1;
    }
    // A fault cleared a mark meanwhile, or a PTE was busy: what went is
    // discarded (its VMA allowed it), the rest stays mapped.
    return StillMapped(r);
  }
  if (swap_ == nullptr) {
    Putback(pfn, false);
    vmstat.Add(VmEvent::k_pgrotated);
    return 0;
  }
  // Referenced through any mapping: activate (Linux: folio_check_references).
  RmapWalkStats stats;
  if (PageReferenced(*machine_, pfn, &stats) > 0 && policy_ == ReclaimPolicy::kLru) {
    Putback(pfn, true);
    vmstat.Add(VmEvent::k_pgactivate);
    return 0;
  }
  // A frame in the pool is write-protected wherever it is mapped more than
  // once; the one writable mapping of a frame mapped once is write-protected
  // now, so that the bytes written below are the frame's until it goes (a
  // write meanwhile makes the PTE writable again, and try_to_unmap leaves a
  // writable PTE alone).
  HostMmu& host = machine_->host();
  bool protect_failed = false;
  RmapWalk(*machine_, pfn, [&](AddressSpace& as, const Vma& vma, VirtAddr addr,
                               std::atomic<uint64_t>* e) {
    PageTable& pt = as.page_table();
    {
      SpinLockHolder l(pt.Ptl(addr));
      Pte pte(e->load(std::memory_order_relaxed));
      if (!pte.present() || pte.locked() || pte.pfn() != pfn || !pte.write()) return true;
      e->store(pte.WithWrite(false).raw(), std::memory_order_release);
    }
    if (!host.WriteProtect({addr, addr + kPageSize}, VmFlagsToProt(vma.vm_flags))) {
      protect_failed = true;
    }
    return true;
  });
  uint64_t slot;
  if (protect_failed || swap_->AllocRun(1, &slot) != 1) {
    Putback(pfn, false);
    vmstat.Add(VmEvent::k_pgrotated);
    return 0;
  }
  if (page.Test(kPgSwapCache)) {
    // A slot from an earlier pass that unmapped only some mappings: the
    // swap PTEs it made keep it; the frame takes the new one.
    swap_->ClearCache(page.private_);
  }
  page.private_ = slot;
  page.flags.fetch_or(kPgSwapCache, std::memory_order_relaxed);
  SwapIoOp op{slot, 1, const_cast<void*>(machine_->frame_pool()->view(page.pool_off)), 0};
  swap_->io().Write(&op, 1);
  if (op.result != static_cast<int64_t>(kPageSize)) {
    // As WriteFailed: the slot is retired (never handed out again), the
    // frame stays dirty in memory.
    page.flags.fetch_and(~kPgSwapCache, std::memory_order_relaxed);
    page.private_ = 0;
    swap_->Retire(slot);
    vmstat.Add(VmEvent::k_swap_write_errors);
    Putback(pfn, false);
    return 0;
  }
  vmstat.Add(VmEvent::k_pswpout);
  UnmapResult r = TryToUnmap(*machine_, pfn, [&](AddressSpace&, VirtAddr) {
    swap_->Duplicate(slot);  // one reference per swap PTE (swap_duplicate)
    return Pte::SwapEntry(slot);
  });
  if (r == UnmapResult::kSuccess) {
    // The last mapping went: the frame leaves the swap cache and is freed
    // when reclaim's reference goes.
    page.flags.fetch_and(~kPgSwapCache, std::memory_order_relaxed);
    page.private_ = 0;
    swap_->ClearCache(slot);
    Release(pfn);
    vmstat.Add(VmEvent::k_pgsteal);
    return 1;
  }
  // Some mappings remain (busy, written again, or mlocked): the frame keeps
  // the slot as its swap cache, so the swap PTEs made and the frame agree.
  return StillMapped(r);
}

}  // namespace emu
