// AddressSpace::Fork(): an emulated fork inside one machine (= mm/fork.c
// dup_mmap() with mm/memory.c copy_page_range()). The child's window is a
// different part of the arena, so the child sees the parent's memory at the
// same offset within its window.
//
// How pages are shared (design direction 4, emu/frame_pool.h): a present
// page that lives in place moves into the frame pool (its bytes are copied
// into the pool's file, and the parent's address maps the file page), and
// the child's address maps the same file page. Both PTEs are write-protected;
// the first write in either is a copy-on-write fault (fault/handle_fault.cc).
// Zero-page PTEs stay zero-page PTEs in both; swap PTEs are duplicated, and
// the slot's count goes up (= swap_duplicate()).
#include <sys/mman.h>

#include <cerrno>
#include <vector>

#include "absl/strings/str_cat.h"
#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/status.h"

namespace emu {

absl::StatusOr<std::unique_ptr<AddressSpace>> AddressSpace::Fork() {
  if (machine_->rmap() == nullptr) {
    return ErrnoError(EINVAL, "fork: the machine has no reverse-map method");
  }
  absl::StatusOr<FramePool*> pool = machine_->EnsureFramePool();
  if (!pool.ok()) return pool.status();
  absl::StatusOr<std::unique_ptr<AddressSpace>> child =
      machine_->CreateAddressSpace(window_.len_bytes());
  if (!child.ok()) return child.status();
  // Reclaim goes on meanwhile (blocking it here would deadlock with a
  // fault of this address space that holds mmap_lock and reclaims): it
  // cannot lock either address space while fork holds them, and a page it
  // has isolated (page-locked) is copied for the child rather than moved.
  absl::Status status;
  {
    WriteLockHolder l(&mmap_lock_);
    WriteLockHolder lc((*child)->mmap_lock());
    status = DupMmapLocked(**child, **pool);
  }
  if (!status.ok()) return status;  // the child's destructor drops what it got
  machine_->vmstat().Add(VmEvent::k_fork);
  return child;
}

absl::Status AddressSpace::DupMmapLocked(AddressSpace& child, FramePool& pool) {
  EMU_RETURN_IF_ERROR(machine_->rmap()->Fork(*this, child));
  machine_->ResyncPoolVmas();
  // Judged once per fork: past the budget every page is copied.
  const bool over_budget = machine_->OverPoolVmaBudget();
  // Linux: mlockall(MCL_FUTURE) and mlock are not inherited.
  child.def_flags_ = 0;
  child.def_populate_ = false;
  const VirtAddr delta = child.window_.start - window_.start;
  for (const auto& [start, v] : vmas_) {
    mmap_lock_.AssertHeld();
    // A native mapping belongs to this window's addresses only; MADV_DONTFORK
    // keeps a range out of the child (Linux: VM_DONTCOPY).
    if (v.foreign() || (v.vm_flags & kVmDontCopy)) continue;
    Vma cv{v.start + delta, v.end + delta, v.vm_flags & ~kVmLocked, v.pgoff, v.anon_vma, v.file};
    child.vmas_.Insert(cv);
    if (v.file != nullptr) v.file->AddSpace(&child);
    child.SyncHostProtLocked(cv, cv.range());
    // MADV_WIPEONFORK: the child's copy starts empty.
    if (v.vm_flags & kVmWipeOnFork) continue;
    EMU_RETURN_IF_ERROR(CopyPteRangeLocked(child, v, delta, pool, over_budget));
  }
  child.vmas_.MergeAround(child.window_);
  return absl::OkStatus();
}

bool AddressSpace::CopyPageForChildLocked(AddressSpace& child, const Vma& v, VirtAddr a,
                                        VirtAddr delta, Pte pte) {
  Pfn copy;
  if (machine_->AllocFrames(nullptr, &copy, 1, 1) != 1) return false;
  const VirtAddr to = a + delta;
  const bool writable = v.writable();
  if (!machine_->host().InstallCopy({to, to + kPageSize}, reinterpret_cast<const void*>(a),
                                    VmFlagsToProt(v.vm_flags), writable)) {
    machine_->FreePage(copy);
    return false;
  }
  Page& np = machine_->mem_map().page(copy);
  // The child's VMA is never VM_LOCKED (not inherited).
  AddNewAnonRmap(np, &child, Vma{to, to + kPageSize, v.vm_flags & ~kVmLocked}, to);
  if (PageReclaim* reclaim = machine_->reclaim()) reclaim->LruAdd(copy);
  std::atomic<uint64_t>* ce = child.pt_.Walk(to, /*alloc=*/true);
  if (ce == nullptr) {
    machine_->host().Zap({to, to + kPageSize});
    np.mapcount.store(0, std::memory_order_relaxed);
    machine_->PutPage(copy);
    return false;
  }
  {
    SpinLockHolder l(child.pt_.Ptl(to));
    ce->store(Pte::Anon(copy, writable, /*dirty=*/true, pte.young()).raw(),
              std::memory_order_release);
  }
  child.rss_anon_.fetch_add(1, std::memory_order_relaxed);
  machine_->vmstat().Add(VmEvent::k_pgalloc);
  machine_->vmstat().Add(VmEvent::k_fork_copied_pages);
  return true;
}

absl::Status AddressSpace::CopySharedPteRangeLocked(AddressSpace& child, const Vma& v,
                                                    VirtAddr delta, FramePool& pool) {
  // Linux: copy_present_pte() of a shared mapping: the same page in both,
  // writable as it was (no copy-on-write), a run of consecutive pool
  // offsets at a time for the host.
  HostMmu& host = machine_->host();
  MemMap& mem_map = machine_->mem_map();
  const Prot prot = VmFlagsToProt(v.vm_flags);
  absl::Status status;
  VirtAddr run_start = 0, run_end = 0;
  uint64_t run_off = 0;
  bool run_write = false;
  // A file's pages keep their writes tracked by the host in the child too
  // (dirty tracking "async").
  const bool tracked = machine_->Tracked(v);
  auto flush = [&] {
    if (run_end > run_start && status.ok()) {
      machine_->AddPoolVmas(2);
      const AddrRange r{run_start + delta, run_end + delta};
      if (!(tracked ? host.MapPoolTracked(r, pool.fd(), run_off, prot)
                    : host.MapPool(r, pool.fd(), run_off, prot, run_write))) {
        status = ErrnoError(errno, "fork: the host refused to map the child's shared pages");
      }
    }
    run_start = run_end = 0;
  };
  pt_.ForEachEntry(v.range(), [&](VirtAddr a, std::atomic<uint64_t>* e) {
    mmap_lock_.AssertWriteHeld();
    child.mmap_lock_.AssertWriteHeld();
    if (!status.ok()) return;
    Pte pte(e->load(std::memory_order_acquire));
    if (!pte.present()) return;  // shared memory has no swap PTEs yet
    EMU_BUG_ON(pte.locked());     // excluded by mmap_lock held for write
    Page& page = mem_map.page(pte.pfn());
    if (run_end != a || run_write != pte.write() ||
        run_off + (run_end - run_start) != page.pool_off) {
      flush();
      run_start = a;
      run_off = page.pool_off;
      run_write = pte.write();
    }
    run_end = a + kPageSize;
    std::atomic<uint64_t>* ce = child.pt_.Walk(a + delta, /*alloc=*/true);
    if (ce == nullptr) {
      status = ErrnoError(ENOMEM, "fork: page table");
      return;
    }
    page.refcount.fetch_add(1, std::memory_order_relaxed);
    page.mapcount.fetch_add(1, std::memory_order_relaxed);
    {
      SpinLockHolder l(child.pt_.Ptl(a + delta));
      ce->store(pte.raw(), std::memory_order_release);
    }
    child.rss_anon_.fetch_add(1, std::memory_order_relaxed);
    machine_->vmstat().Add(VmEvent::k_fork_shared_pages);
  });
  flush();
  return status;
}

absl::Status AddressSpace::CopyPteRangeLocked(AddressSpace& child, const Vma& v, VirtAddr delta,
                                              FramePool& pool, bool over_budget) {
  if (v.file != nullptr && (v.vm_flags & kVmShared)) {
    return CopySharedPteRangeLocked(child, v, delta, pool);
  }
  HostMmu& host = machine_->host();
  MemMap& mem_map = machine_->mem_map();
  PageReclaim* reclaim = machine_->reclaim();
  const Prot prot = VmFlagsToProt(v.vm_flags);
  // A run of pages handled by one host call each side: zero pages, or pool
  // frames at consecutive offsets (`fill`: their bytes still live in place
  // in this address space and go into the pool first).
  enum Kind { kNone, kZero, kPool };
  struct Run {
    Kind kind = kNone;
    VirtAddr start = 0, end = 0;
    uint64_t off = 0;
    bool fill = false;
    std::vector<Pfn> pfns;
  } run;
  absl::Status status;
  auto publish_child = [&](VirtAddr a, Pte pte) {
    std::atomic<uint64_t>* ce = child.pt_.Walk(a + delta, /*alloc=*/true);
    if (ce == nullptr) return false;
    SpinLockHolder l(child.pt_.Ptl(a + delta));
    ce->store(pte.raw(), std::memory_order_release);
    return true;
  };
  auto flush = [&] {
    if (run.kind == kPool && run.fill && !status.ok()) {
      // An earlier failure: this run's pages stay in place.
      for (size_t i = 0; i < run.pfns.size(); i++) {
        pool.Release(run.off + i * kPageSize);
        mem_map.page(run.pfns[i]).Unlock();
      }
    }
    if (run.kind == kNone || !status.ok()) {
      run.kind = kNone;
      return;
    }
    AddrRange r{run.start, run.end};
    AddrRange cr{run.start + delta, run.end + delta};
    if (run.kind == kZero) {
      if (!host.InstallZero(cr, prot)) {
        status = ErrnoError(errno, "fork: the host refused the child's zero pages");
      } else {
        for (VirtAddr a = r.start; a < r.end; a += kPageSize) {
          if (!publish_child(a, Pte::ZeroPage())) status = ErrnoError(ENOMEM, "fork: page table");
        }
        child.nr_zero_ptes_.fetch_add(r.nr_pages(), std::memory_order_relaxed);
      }
      run.kind = kNone;
      return;
    }
    // The parent's side first. Its pages are write-protected before their
    // bytes are copied, so that a thread writing meanwhile traps and waits
    // for mmap_lock instead of writing to a page already copied.
    if (!host.WriteProtect(r, prot)) {
      status = ErrnoError(errno, "fork: the host refused to write-protect the parent");
    } else if (run.fill && !pool.Fill(run.off, reinterpret_cast<const void*>(r.start),
                                      r.len_bytes())) {
      status = ErrnoError(errno, "fork: copying pages into the frame pool");
    } else if (run.fill && !host.MapPool(r, pool.fd(), run.off, prot, /*writable=*/false)) {
      status = ErrnoError(errno, "fork: the host refused to map the parent's pool frames");
    }
    if (run.fill) machine_->AddPoolVmas(2);
    if (!status.ok()) {
      // Frames placed for this run but never filled and mapped go back.
      for (size_t i = 0; run.fill && i < run.pfns.size(); i++) {
        pool.Release(run.off + i * kPageSize);
        mem_map.page(run.pfns[i]).Unlock();
      }
      run.kind = kNone;
      return;
    }
    for (size_t i = 0; i < run.pfns.size(); i++) {
      VirtAddr a = r.start + i * kPageSize;
      Page& page = mem_map.page(run.pfns[i]);
      std::atomic<uint64_t>* e = pt_.Walk(a, false);
      SpinLockHolder l(pt_.Ptl(a));
      Pte pte(e->load(std::memory_order_relaxed));
      if (run.fill) {
        machine_->rmap()->AnchorPage(page, *this, v, a);  // it locates the frame from now on
        page.mapping = nullptr;
        // Shared, it is dirty (its PTE says so below) and no longer lazily
        // freed: MADV_FREE leaves frames others map alone. Nor does it keep
        // a checksum (pool_off takes its word).
        page.flags.fetch_and(~(kPgLazyFree | kPgCsum), std::memory_order_relaxed);
        page.pool_off = run.off + i * kPageSize;
        page.flags.fetch_or(kPgPool, std::memory_order_release);
        page.Unlock();
      }
      e->store((run.fill ? pte.WithDirty() : pte).WithWrite(false).raw(), std::memory_order_release);
    }
    // Then the child's.
    machine_->AddPoolVmas(2);
    if (!host.MapPool(cr, pool.fd(), run.off, prot, /*writable=*/false)) {
      status = ErrnoError(errno, "fork: the host refused to map the child's pool frames");
      run.kind = kNone;
      return;
    }
    for (size_t i = 0; i < run.pfns.size(); i++) {
      VirtAddr a = r.start + i * kPageSize;
      Page& page = mem_map.page(run.pfns[i]);
      Pte pte(pt_.Walk(a, false)->load(std::memory_order_acquire));
      // Linux: copy_present_pte() -> folio_dup_file_rmap / page_dup_rmap.
      page.refcount.fetch_add(1, std::memory_order_relaxed);
      page.mapcount.fetch_add(1, std::memory_order_relaxed);
      if (!publish_child(a, pte)) status = ErrnoError(ENOMEM, "fork: page table");
      child.rss_anon_.fetch_add(1, std::memory_order_relaxed);
    }
    machine_->vmstat().Add(VmEvent::k_fork_shared_pages, run.pfns.size());
    run.kind = kNone;
  };

  pt_.ForEachEntry(v.range(), [&](VirtAddr a, std::atomic<uint64_t>* e) {
    mmap_lock_.AssertWriteHeld();
    child.mmap_lock_.AssertWriteHeld();
    if (!status.ok()) return;
    Pte pte(e->load(std::memory_order_acquire));
    if (pte.none() || pte.discarded()) {  // a discarded page: none in the child
      flush();
      return;
    }
    EMU_BUG_ON(pte.locked());  // excluded by mmap_lock held for write
    if (!pte.present()) {
      flush();
      // Linux: copy_nonpresent_pte() -> swap_duplicate().
      if (!reclaim->SwapDuplicate(pte.swap_entry())) {
        status = ErrnoError(ENOMEM, "fork: a swap slot's count is at its maximum");
        return;
      }
      if (!publish_child(a, pte)) {
        reclaim->SwapFree(pte.swap_entry());
        status = ErrnoError(ENOMEM, "fork: page table");
        return;
      }
      child.nr_swap_ptes_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (pte.special()) {
      if (run.kind != kZero || run.end != a) {
        flush();
        run.kind = kZero;
        run.start = a;
        run.pfns.clear();
      }
      run.end = a + kPageSize;
      return;
    }
    Pfn pfn = pte.pfn();
    Page& page = mem_map.page(pfn);
    // A page in place that reclaim holds (isolated, page-locked) cannot
    // move now: it too is copied for the child.
    const bool fill = !page.Test(kPgPool);
    const bool locked = fill && !page.TryLock();
    if (page.MaybePinned() || over_budget || locked) {
      if (fill && !locked) page.Unlock();
      // Linux: copy_present_page(): a pinned page stays the parent's, and
      // the child gets its copy now (seed 002: a pin keeps its page). Past
      // the host VMA budget every page is copied so, adding no mapping.
      flush();
      if (!CopyPageForChildLocked(child, v, a, delta, pte)) {
        status = ErrnoError(ENOMEM, "fork: no frame to copy a page for the child");
      }
      return;
    }
    uint64_t off;
    if (fill) {
      // The page leaves its place (locked until its run is mapped) and
      // stops being the copy of its swap slot (the PTEs become dirty). It
      // stays on the reclaim lists: reclaim finds its mappings through the
      // reverse map. Not under writeback: that holds the page lock.
      if (page.Test(kPgSwapCache)) {
        EMU_BUG_ON(page.Test(kPgWriteback));
        reclaim->DropSwapCacheLocked(pfn);
      }
      off = pool.Place(pfn, a);
    } else {
      off = page.pool_off;
    }
    if (run.kind != kPool || run.end != a || run.fill != fill ||
        run.off + (run.end - run.start) != off) {
      flush();
      run.kind = kPool;
      run.start = run.end = a;
      run.off = off;
      run.fill = fill;
      run.pfns.clear();
    }
    run.end = a + kPageSize;
    run.pfns.push_back(pfn);
  });
  flush();
  return status;
}

}  // namespace emu
