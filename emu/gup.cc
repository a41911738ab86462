// Pins (= mm/gup.c pin_user_pages / unpin_user_pages) and what they promise
// (seed 002): a pinned anonymous page is exclusive to its address space and
// stays the page mapped at its address; reclaim and fork respect the pin
// (Page::MaybePinned), and the write fault reuses such a page whatever the
// page lock says.
#include <cerrno>

#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/status.h"

namespace emu {

absl::StatusOr<size_t> AddressSpace::PinUserPages(VirtAddr addr, size_t nr, unsigned gup_flags,
                                                  Pfn* pages) {
  if (gup_flags & ~(kGupWrite | kGupForce | kGupNoZero)) {
    return ErrnoError(EINVAL, "pin_user_pages: unknown flags");
  }
  if (!PageAligned(addr)) return ErrnoError(EINVAL, "pin_user_pages: address not aligned");
  const bool write = gup_flags & kGupWrite;
  const bool force = gup_flags & kGupForce;
  MemMap& mem_map = machine_->mem_map();
  auto fail = [&](size_t done, int err, const char* what) -> absl::StatusOr<size_t> {
    if (done > 0) return done;  // Linux: the pages pinned so far
    return ErrnoError(err, absl::StrCat("pin_user_pages: ", what));
  };
  for (size_t i = 0; i < nr; i++) {
    const VirtAddr a = addr + i * kPageSize;
    for (int attempt = 0;; attempt++) {
      if (attempt > 1000) return fail(i, EAGAIN, "the page keeps changing");
      unsigned fault = kFaultPopulate;
      {
        ReadLockHolder l(&mmap_lock_);
        const Vma* v = vmas_.Lookup(a);
        if (v == nullptr || v->foreign()) return fail(i, EFAULT, "no mapping");
        // Linux: check_vma_flags(): FOLL_FORCE writes only to private
        // mappings (all of ours), reads need VM_READ unless forced.
        if (write && !v->writable() && !force) return fail(i, EFAULT, "read-only mapping");
        if (write && !v->writable() && v->file != nullptr) {
          return fail(i, EFAULT, "forced write to a read-only shared mapping");
        }
        if (!write && !v->readable() && !force) return fail(i, EFAULT, "unreadable mapping");
        std::atomic<uint64_t>* e = pt_.Walk(a, false);
        Pte pte(e != nullptr ? e->load(std::memory_order_acquire) : 0);
        if (pte.present() && !pte.locked() && pte.special() && (!write || (gup_flags & kGupNoZero))) {
          pages[i] = kZeroPfn;  // the zero page: no count, no pin (seed 004)
          break;
        }
        if (pte.present() && !pte.locked() && !pte.special()) {
          Page& page = mem_map.page(pte.pfn());
          // Linux: gup_must_unshare() / can_follow_write_pte(): the page
          // must be this address space's own (not a shared frame, not the
          // copy of a swap slot others may name), and written-to for a write.
          // A page of a shared mapping is pinned as it is (it is shared).
          const bool exclusive = page.Test(kPgShmem) ? (v->vm_flags & kVmShared) != 0 :
                                 ((!page.Test(kPgPool) ||
                                   page.mapcount.load(std::memory_order_acquire) == 1) &&
                                  !page.Test(kPgSwapCache));
          const bool ok = exclusive && (!write || pte.write() || (force && !v->writable()));
          if (ok) {
            bool pinned = false;
            {
              SpinLockHolder ptl(pt_.Ptl(a));
              if (e->load(std::memory_order_relaxed) == pte.raw()) {
                page.refcount.fetch_add(kPinBias, std::memory_order_acq_rel);
                pages[i] = pte.pfn();
                pinned = true;
              }
            }
            if (!pinned) continue;
            // A file's page pinned for writing is dirtied now: the holder
            // writes it through the pool, where the host's tracking of the
            // mapping's writes (dirty tracking "async") does not look.
            if (write && machine_->Tracked(*v)) v->file->MarkDirty(page);
            break;
          }
        }
        // Fault it in, breaking COW: a write fault where the VMA allows
        // one, else a forced one (the PTE stays read-only).
        if (write || (pte.present() && !pte.special())) {
          fault |= kFaultWrite;
          if (!v->writable()) fault |= kFaultForce;
        }
      }
      unsigned ret = machine_->fault_handler().HandleMmFault(*this, a, fault);
      if (ret & kFaultOom) return fail(i, ENOMEM, "out of frames");
      if (ret & kFaultHostLimit) return fail(i, ENOMEM, "the host refused");
      if (ret & (kFaultSigsegv | kFaultAccErr | kFaultSigbus)) return fail(i, EFAULT, "fault failed");
    }
  }
  machine_->vmstat().Add(VmEvent::k_pin_pages, nr);
  return nr;
}

void AddressSpace::UnpinUserPages(const Pfn* pages, size_t nr) {
  for (size_t i = 0; i < nr; i++) {
    if (pages[i] == kZeroPfn) continue;
    Page& page = machine_->mem_map().page(pages[i]);
    EMU_BUG_ON(page.refcount.load(std::memory_order_relaxed) < kPinBias);
    // Linux: unpin_user_page() -> gup_put_folio(): the last reference may
    // go with the pin (the page was unmapped meanwhile).
    if (page.refcount.fetch_sub(kPinBias, std::memory_order_acq_rel) == kPinBias) {
      machine_->FreePage(pages[i]);
    }
  }
}

}  // namespace emu
