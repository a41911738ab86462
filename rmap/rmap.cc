#include "rmap/rmap.h"

#include <sys/mman.h>

#include <cerrno>
#include <set>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "emu/mm.h"
#include "emu/shmem.h"
#include "emu/status.h"

namespace emu {

std::unique_ptr<RmapMethod> NewAnonVmaRmap();
std::unique_ptr<RmapMethod> NewAnonMmRmap();

absl::StatusOr<std::unique_ptr<RmapMethod>> CreateRmapMethod(std::string_view name) {
  if (name == "anon_vma") return NewAnonVmaRmap();
  if (name == "anonmm") return NewAnonMmRmap();
  return ErrnoError(EINVAL, absl::StrCat("rmap method '", std::string(name), "': want anon_vma or anonmm"));
}

RmapWalkStats RmapWalk(Machine& m, Pfn pfn,
                       absl::FunctionRef<bool(AddressSpace&, const Vma&, VirtAddr,
                                              std::atomic<uint64_t>*)>
                           fn) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  RmapWalkStats stats;
  Page& page = m.mem_map().page(pfn);
  // A shared memory object's page: its object is its reverse map (the
  // i_mmap walk); an anonymous frame: the machine's method.
  RmapAnchor* method = page.Test(kPgShmem)
                           ? static_cast<RmapAnchor*>(static_cast<ShmemObject*>(page.anchor))
                           : m.rmap();
  if (method == nullptr || !page.Test(kPgPool) || page.anchor == nullptr) return stats;
  // The walk's own reference: fn may drop the last mapping's (try_to_unmap),
  // and the page, its anchor and its index must stay until the walk ends.
  if (!page.GetUnlessZero()) return stats;
  bool go = true;
  // The candidates a batch at a time, with no rmap lock held while each is
  // visited (fn may make system calls). A member that leaves between two
  // batches may make the walk skip another one: the caller sees fewer
  // mappings (try_to_unmap: kAgain), never a stale one.
  constexpr size_t kBatch = 32;
  AddressSpace* spaces[kBatch];
  for (size_t from = 0; go;) {
    size_t n = method->Spaces(page, from, spaces, kBatch);
    if (n == 0) break;
    from += n;
    for (size_t i = 0; i < n && go; i++) {
      AddressSpace& as = *spaces[i];
      // Linux: rmap_walk_anon() with try-locks (folio_lock_anon_vma_read's
      // rwc->try_lock): reclaim never waits for an address space here.
      if (!as.mmap_lock()->TryReadLock()) {
        stats.busy++;
        continue;
      }
      method->AddressesIn(page, as, [&](const Vma& vma, VirtAddr addr) {
        if (!go) return;
        std::atomic<uint64_t>* e = as.page_table().Walk(addr, false);
        if (e == nullptr) return;
        Pte pte(e->load(std::memory_order_acquire));
        // Linux: page_vma_mapped_walk(): this PTE maps this page.
        if (!pte.present() || pte.special() || pte.pfn() != pfn) return;
        stats.found++;
        go = fn(as, vma, addr, e);
      });
      as.mmap_lock()->ReadUnlock();
    }
  }
  m.PutPage(pfn);
  return stats;
}

int PageReferenced(Machine& m, Pfn pfn, RmapWalkStats* stats) {
  int referenced = 0;
  RmapWalkStats s = RmapWalk(m, pfn, [&](AddressSpace& as, const Vma&, VirtAddr addr,
                                         std::atomic<uint64_t>* e) {
    // Linux: folio_referenced_one() -> ptep_clear_flush_young_notify().
    SpinLockHolder l(as.page_table().Ptl(addr));
    Pte pte(e->load(std::memory_order_relaxed));
    if (pte.present() && !pte.locked() && pte.pfn() == pfn && pte.young()) {
      e->store(pte.WithYoung(false).raw(), std::memory_order_release);
      referenced++;
    }
    return true;
  });
  if (stats != nullptr) *stats = s;
  return referenced;
}

UnmapResult TryToUnmap(Machine& m, Pfn pfn,
                       absl::FunctionRef<Pte(AddressSpace&, VirtAddr)> replacement,
                       bool discard) {
  Page& page = m.mem_map().page(pfn);
  HostMmu& host = m.host();
  bool locked_vma = false, kept = false;
  RmapWalkStats s = RmapWalk(m, pfn, [&](AddressSpace& as, const Vma& vma, VirtAddr addr,
                                         std::atomic<uint64_t>* e) {
    // Linux: try_to_unmap_one(): an mlocked VMA keeps the page.
    if (vma.locked()) {
      locked_vma = true;
      return false;
    }
    PageTable& pt = as.page_table();
    // A file's page whose writes the host tracks (dirty tracking "async")
    // is writable without being dirty: what the host recorded decides.
    const bool tracked = !discard && m.Tracked(vma);
    const Prot prot = VmFlagsToProt(vma.vm_flags);
    Pte pte;
    {
      SpinLockHolder l(pt.Ptl(addr));
      pte = Pte(e->load(std::memory_order_relaxed));
      if (!pte.present() || pte.locked() || pte.pfn() != pfn) return true;
      // A writable PTE may have written the frame since the caller copied
      // it out; a pin (taken under this ptl) keeps the page mapped. Both
      // leave the page where it is.
      if ((pte.write() && !discard && !tracked) || (discard && !vma.is_volatile()) ||
          page.MaybePinned()) {
        kept = true;
        return true;
      }
      e->store(pte.WithLocked().raw(), std::memory_order_relaxed);  // claimed: faults retry
    }
    AddrRange r{addr, addr + kPageSize};
    auto put_back = [&] {
      SpinLockHolder l(pt.Ptl(addr));
      e->store(pte.raw(), std::memory_order_release);
    };
    if (tracked && pte.write()) {
      // Writes stop first (a write meanwhile traps and is retried), then
      // the host's record is read: a page written since the caller looked
      // is dirty and stays mapped, as a writable PTE does above.
      host.Protect(r, prot & ~PROT_WRITE);
      if (vma.file->HarvestMapping(vma, r) > 0) {
        host.Protect(r, prot);
        put_back();
        kept = true;
        return true;
      }
    }
    // The host drops its mapping of the file page: the arena's reservation
    // comes back, with the VMA's protection unless the host encodes PTEs.
    bool ok = host.Reserve(r) && (host.prot_encodes_ptes() || host.Protect(r, prot));
    if (!ok) {
      // Put the mapping back as it was (read-only: the page is shared).
      const int fd = m.frame_pool()->fd();
      if (tracked) {
        host.MapPoolTracked(r, fd, page.pool_off, prot);
      } else {
        host.MapPool(r, fd, page.pool_off, prot, pte.write());
      }
      put_back();
      return true;
    }
    Pte now = replacement(as, addr);
    {
      SpinLockHolder l(pt.Ptl(addr));
      e->store(now.raw(), std::memory_order_release);
    }
    as.AddRssAnon(-1);
    if (now.swap()) as.AddSwapPtes(1);
    page.mapcount.fetch_sub(1, std::memory_order_acq_rel);
    m.PutPage(pfn);
    return true;
  });
  if (locked_vma) return UnmapResult::kFail;
  if (!kept && page.mapcount.load(std::memory_order_acquire) == 0) return UnmapResult::kSuccess;
  (void)s;
  return UnmapResult::kAgain;
}

static absl::Status CheckRmapBlocked(Machine& m);

absl::Status CheckRmap(Machine& m) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  // Reclaim (kswapd) stays off: the PTEs and the walks are one snapshot.
  if (m.reclaim() != nullptr) m.reclaim()->BlockReclaim();
  absl::Status status = CheckRmapBlocked(m);
  if (m.reclaim() != nullptr) m.reclaim()->UnblockReclaim();
  return status;
}

static absl::Status CheckRmapBlocked(Machine& m) {
  using Where = std::pair<AddressSpace*, VirtAddr>;
  absl::flat_hash_map<uint64_t, std::set<Where>> ptes;
  m.ForEachSpaceUnlocked([&](AddressSpace* as) {
    as->page_table().ForEachEntry(as->window(), [&](VirtAddr a, std::atomic<uint64_t>* e) {
      Pte pte(e->load(std::memory_order_acquire));
      if (!pte.present() || pte.special()) return;
      if (m.mem_map().page(pte.pfn()).Test(kPgPool)) ptes[ToU64(pte.pfn())].insert({as, a});
    });
  });
  for (const auto& [pfn, want] : ptes) {
    std::set<Where> got;
    RmapWalkStats s = RmapWalk(m, Pfn{pfn}, [&](AddressSpace& as, const Vma&, VirtAddr a,
                                                std::atomic<uint64_t>*) {
      if (!got.insert({&as, a}).second) got.insert({nullptr, a});  // a duplicate shows
      return true;
    });
    if (s.busy != 0) return ErrnoError(EBUSY, "rmap check: an address space is busy");
    if (got != want) {
      return ErrnoError(EIO, absl::StrCat("rmap of pfn ", pfn, ": ", want.size(),
                                          " PTEs map it, the walk found ", got.size(),
                                          got.size() == want.size() ? " (other ones)" : ""));
    }
  }
  return absl::OkStatus();
}

}  // namespace emu
