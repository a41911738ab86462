#include "emu/mm.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "absl/strings/str_cat.h"
#include "emu/log.h"
#include "emu/machine.h"
#include "emu/status.h"
#include "emu/sys.h"

#ifndef PROT_SEM
#define PROT_SEM 0x8
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

namespace emu {
namespace {

constexpr int kKnownProt = PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM;

// Checks start alignment and computes the page-rounded end of [addr, addr+len).
// Returns false when the rounded range overflows.
bool RoundedEnd(VirtAddr addr, size_t len, VirtAddr* end) {
  size_t rounded = PageAlignUp(len);
  if (rounded < len) return false;
  return !__builtin_add_overflow(addr, rounded, end);
}

// Linux: mm/mlock.c do_mlock()/munlock(): the start rounds down, the length
// rounds up with wrap-around (so -1 becomes 0, a no-op), and a range that then
// wraps is EINVAL. Returns false for EINVAL.
bool MlockRange(VirtAddr addr, size_t len, AddrRange* r) {
  VirtAddr start = PageAlignDown(addr);
  size_t rounded = PageAlignUp(len + (addr - start));  // wraps like PAGE_ALIGN
  VirtAddr end = start + rounded;
  if (end < start) return false;
  *r = {start, end};
  return true;
}

}  // namespace

AddressSpace::~AddressSpace() {
  {
    WriteLockHolder l(&mmap_lock_);
    UnmapLocked(window_);
  }
  if (PageReclaim* reclaim = machine_->reclaim()) reclaim->ForgetAddressSpace(this);
  if (RmapMethod* rmap = machine_->rmap()) rmap->Exit(*this);
  machine_->ReleaseWindow(this);
}

size_t AddressSpace::nr_vmas() {
  ReadLockHolder l(&mmap_lock_);
  return vmas_.size();
}

Prot AddressSpace::HostProtFor(const Vma& vma, Pte pte) const {
  Prot prot = VmFlagsToProt(vma.vm_flags);
  if (!machine_->host().prot_encodes_ptes()) return prot;
  if (!pte.present()) return PROT_NONE;
  // x86 has no write-only pages: write implies read, so a write-protected
  // page of a PROT_WRITE mapping stays readable.
  if (!pte.write() && (prot & PROT_WRITE)) prot = (prot & ~PROT_WRITE) | PROT_READ;
  return prot;
}

absl::StatusOr<VirtAddr> AddressSpace::GetUnmappedAreaLocked(VirtAddr hint, size_t len) {
  if (len > window_.len_bytes()) return ErrnoError(ENOMEM, "mmap: larger than the window");
  if (hint != 0) {
    VirtAddr h = PageAlignUp(hint);
    AddrRange want{h, h + len};
    if (h >= window_.start && want.end <= window_.end && want.end > h && !vmas_.AnyOverlap(want)) {
      return h;
    }
  }
  // Top-down: the highest gap that fits.
  VirtAddr gap_end = window_.end;
  for (auto it = vmas_.end(); it != vmas_.begin();) {
    --it;
    const Vma& v = it->second;
    if (gap_end - v.end >= len) return gap_end - len;
    gap_end = v.start;
  }
  if (gap_end - window_.start >= len) return gap_end - len;
  return ErrnoError(ENOMEM, "mmap: no free range in the address space window");
}

void AddressSpace::ZapRangeLocked(AddrRange r) {
  MemMap& mem_map = machine_->mem_map();
  int64_t anon = 0, zero = 0, swap = 0;
  bool any = false, pooled = false;
  // First, while the host still maps every page: a pinned page in place
  // keeps its bytes (they move to the pool), and frames in the pool are
  // noted. Their host mappings go before any frame is freed (the order of
  // Linux's TLB gather): a frame freed first could be placed again at its
  // offset and show up here.
  pt_.ForEachEntry(r, [&](VirtAddr a, std::atomic<uint64_t>* e) {
    mmap_lock_.AssertWriteHeld();
    Pte pte(e->load(std::memory_order_relaxed));
    if (!pte.present() || pte.special()) return;
    Page& page = mem_map.page(pte.pfn());
    if (page.MaybePinned() && !page.Test(kPgPool)) KeepPinnedBytesLocked(page, pte.pfn(), a);
    pooled |= page.Test(kPgPool);
  });
  if (pooled) {
    HarvestBeforeUnmapLocked(r);
    UnpoolHostLocked(r);
  }
  // Linux: mm/memory.c zap_pte_range(). A page that reclaim has isolated
  // (its own reference) survives the zap and is freed by reclaim.
  pt_.ForEachEntry(r, [&](VirtAddr a, std::atomic<uint64_t>* e) {
    mmap_lock_.AssertWriteHeld();
    if (e->load(std::memory_order_relaxed) == 0) return;
    any = true;
    Pte pte;
    {
      SpinLockHolder l(pt_.Ptl(a));
      pte = Pte(e->load(std::memory_order_relaxed));
      e->store(0, std::memory_order_release);
    }
    EMU_BUG_ON(pte.locked());  // excluded by mmap_lock held for write
    if (pte.present() && pte.special()) {
      zero++;
    } else if (pte.present()) {
      Page& page = mem_map.page(pte.pfn());
      page.mapcount.fetch_sub(1, std::memory_order_acq_rel);
      machine_->PutPage(pte.pfn());
      anon++;
    } else if (pte.swap()) {
      machine_->reclaim()->SwapFree(pte.swap_entry());
      swap++;
    }
  });
  if (any && !pooled) machine_->host().Zap(r);
  if (pooled) machine_->frame_pool()->Flush();  // the frames freed here, punched together
  rss_anon_.fetch_sub(anon, std::memory_order_relaxed);
  nr_zero_ptes_.fetch_sub(zero, std::memory_order_relaxed);
  nr_swap_ptes_.fetch_sub(swap, std::memory_order_relaxed);
  machine_->vmstat().Add(VmEvent::k_zap_pages, anon + zero);
  machine_->vmstat().Add(VmEvent::k_pgfree, anon);
}

void AddressSpace::HarvestBeforeUnmapLocked(AddrRange r) {
  HostMmu& host = machine_->host();
  if (!host.tracks_writes()) return;
  for (VirtAddr a = r.start; a < r.end;) {
    const Vma* v = vmas_.FindVma(a);
    if (v == nullptr || v->start >= r.end) break;
    const AddrRange piece = v->range().Intersect(r);
    if (machine_->Tracked(*v)) {
      if (v->writable()) host.Protect(piece, VmFlagsToProt(v->vm_flags) & ~PROT_WRITE);
      v->file->HarvestMapping(*v, piece);
    }
    a = piece.end;
  }
}

void AddressSpace::HarvestObject(ShmemObject* file, uint64_t first, uint64_t last) {
  ReadLockHolder l(&mmap_lock_);
  for (const auto& [start, v] : vmas_) {
    if (v.file != file || !machine_->Tracked(v)) continue;
    const uint64_t lo = std::max(first, v.pgoff);
    const uint64_t hi = std::min(last, v.pgoff + v.range().nr_pages());
    if (lo >= hi) continue;
    file->HarvestMapping(v, {v.start + ((lo - v.pgoff) << kPageShift),
                             v.start + ((hi - v.pgoff) << kPageShift)});
  }
}

void AddressSpace::KeepPinnedBytesLocked(Page& page, Pfn pfn, VirtAddr a) {
  // Linux: a pinned page outlives its mapping. A page in place would lose
  // its bytes with the host's mapping: they move into the pool first, where
  // the pin's holder finds them (Machine::FrameData).
  absl::StatusOr<FramePool*> pool = machine_->EnsureFramePool();
  if (!pool.ok()) return;
  const uint64_t off = (*pool)->Place(pfn, a);
  if (!(*pool)->Fill(off, reinterpret_cast<const void*>(a), kPageSize)) {
    (*pool)->Release(off);
    return;
  }
  page.mapping = nullptr;
  page.anchor = nullptr;
  page.flags.fetch_and(~kPgCsum, std::memory_order_relaxed);  // pool_off takes its word
  page.pool_off = off;
  page.flags.fetch_or(kPgPool, std::memory_order_release);
}

void AddressSpace::UnpoolHostLocked(AddrRange r) {
  HostMmu& host = machine_->host();
  host.Reserve(r);  // PROT_NONE: right for none PTEs when the host encodes them
  if (host.prot_encodes_ptes()) return;
  for (VirtAddr a = r.start; a < r.end;) {
    const Vma* v = vmas_.FindVma(a);
    if (v == nullptr || v->start >= r.end) break;
    AddrRange piece = v->range().Intersect(r);
    if (!v->foreign()) host.Protect(piece, VmFlagsToProt(v->vm_flags));
    a = piece.end;
  }
}

void AddressSpace::UnmapLocked(AddrRange r) {
  r = r.Intersect(window_);
  if (r.empty()) return;
  // Native mappings go first: the arena's reservation takes their place, so
  // that the zap below never reaches a page of theirs.
  for (VirtAddr a = r.start; a < r.end;) {
    const Vma* v = vmas_.FindVma(a);
    if (v == nullptr || v->start >= r.end) break;
    AddrRange piece = v->range().Intersect(r);
    if (v->foreign()) machine_->host().Reserve(piece);
    a = piece.end;
  }
  ZapRangeLocked(r);
  vmas_.Erase(r);
  machine_->host().Protect(r, PROT_NONE);  // holes are PROT_NONE in the host
}

void AddressSpace::SyncHostProtLocked(const Vma& vma, AddrRange r) {
  HostMmu& host = machine_->host();
  if (!host.prot_encodes_ptes()) {
    host.Protect(r, VmFlagsToProt(vma.vm_flags));
    return;
  }
  // SIGSEGV mode: one mprotect per run of pages with equal host protection.
  VirtAddr run_start = r.start;
  Prot run_prot = -1;
  for (VirtAddr a = r.start; a < r.end; a += kPageSize) {
    std::atomic<uint64_t>* e = pt_.Walk(a, false);
    Prot p = HostProtFor(vma, Pte(e ? e->load(std::memory_order_relaxed) : 0));
    if (p != run_prot) {
      if (run_prot != -1) host.Protect({run_start, a}, run_prot);
      run_start = a;
      run_prot = p;
    }
  }
  if (run_prot != -1) host.Protect({run_start, r.end}, run_prot);
}

absl::StatusOr<VirtAddr> AddressSpace::Mmap(VirtAddr addr, size_t len, Prot prot, int flags,
                                            int fd, off_t off) {
  if (len == 0) return ErrnoError(EINVAL, "mmap: length 0");
  size_t rounded = PageAlignUp(len);
  if (rounded < len) return ErrnoError(ENOMEM, "mmap: length overflows");
  if (off & (kPageSize - 1)) return ErrnoError(EINVAL, "mmap: offset not page aligned");
  int type = flags & MAP_TYPE;
  if (type != MAP_PRIVATE && type != MAP_SHARED && type != MAP_SHARED_VALIDATE) {
    return ErrnoError(EINVAL, "mmap: need exactly one of MAP_PRIVATE, MAP_SHARED");
  }
  constexpr int kKnownFlags = MAP_TYPE | MAP_FIXED | MAP_ANONYMOUS | MAP_NORESERVE |
                              MAP_POPULATE | MAP_LOCKED | MAP_STACK | MAP_GROWSDOWN |
                              MAP_FIXED_NOREPLACE | MAP_NONBLOCK | MAP_DENYWRITE |
                              MAP_EXECUTABLE | MAP_HUGETLB | MAP_SYNC | MAP_32BIT;
  if ((flags & MAP_ANONYMOUS) && type == MAP_SHARED_VALIDATE) {
    // Linux: do_mmap() validates MAP_SHARED_VALIDATE only for files; an
    // anonymous mapping must be MAP_SHARED or MAP_PRIVATE.
    return ErrnoError(EINVAL, "mmap: MAP_SHARED_VALIDATE on anonymous memory");
  }
  if (type == MAP_SHARED_VALIDATE && (flags & ~kKnownFlags)) {
    return ErrnoError(EOPNOTSUPP, "mmap: unknown flags with MAP_SHARED_VALIDATE");
  }
  if (!(flags & MAP_ANONYMOUS)) {
    if (fd < 0) return ErrnoError(EBADF, "mmap: no file descriptor");
    if (fcntl(fd, F_GETFD) < 0) return ErrnoError(EBADF, "mmap: bad file descriptor");
    return ErrnoError(ENODEV, "mmap: file mappings are not emulated yet");
  }
  if (flags & MAP_HUGETLB) return ErrnoError(ENOMEM, "mmap: MAP_HUGETLB is not emulated");
  // MAP_SHARED|MAP_ANONYMOUS: a shared memory object of the mapping's size
  // (Linux: shmem_zero_setup()), its pages in the frame pool.
  ShmemObject* file = nullptr;
  if (type != MAP_PRIVATE) {
    if (flags & MAP_GROWSDOWN) return ErrnoError(EINVAL, "mmap: MAP_GROWSDOWN on shared memory");
    EMU_RETURN_IF_ERROR(machine_->EnsureFramePool().status());
    EMU_ASSIGN_OR_RETURN(file, machine_->CreateShmem(rounded >> kPageShift));
  }
  bool fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE);
  if (fixed && !PageAligned(addr)) return ErrnoError(EINVAL, "mmap: fixed address not aligned");

  uint32_t vm_flags = ProtToVmFlags(prot);
  bool populate = flags & (MAP_POPULATE | MAP_LOCKED);
  if (flags & MAP_NORESERVE) vm_flags |= kVmNoReserve;
  if (flags & MAP_GROWSDOWN) vm_flags |= kVmGrowsDown;
  if (flags & MAP_LOCKED) vm_flags |= kVmLocked;
  if (file != nullptr) vm_flags |= kVmShared | kVmMayShare | kVmMayWrite;
  return InsertMapping(addr, rounded, flags, vm_flags, file, 0, populate);
}

absl::StatusOr<VirtAddr> AddressSpace::MmapFile(VirtAddr addr, size_t len, Prot prot, int flags,
                                                ShmemObject* file, off_t off) {
  if (len == 0) return ErrnoError(EINVAL, "mmap: length 0");
  size_t rounded = PageAlignUp(len);
  if (rounded < len) return ErrnoError(ENOMEM, "mmap: length overflows");
  if (off < 0 || (off & (kPageSize - 1))) return ErrnoError(EINVAL, "mmap: offset not page aligned");
  const int type = flags & MAP_TYPE;
  if (type != MAP_PRIVATE && type != MAP_SHARED && type != MAP_SHARED_VALIDATE) {
    return ErrnoError(EINVAL, "mmap: need exactly one of MAP_PRIVATE, MAP_SHARED");
  }
  if (flags & MAP_ANONYMOUS) return ErrnoError(EINVAL, "mmap: MAP_ANONYMOUS with a file");
  if (file == nullptr || !file->backed()) return ErrnoError(EBADF, "mmap: not an emulated file");
  if (flags & (MAP_HUGETLB | MAP_GROWSDOWN)) {
    return ErrnoError(EINVAL, "mmap: MAP_HUGETLB or MAP_GROWSDOWN with a file");
  }
  const bool fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE);
  if (fixed && !PageAligned(addr)) return ErrnoError(EINVAL, "mmap: fixed address not aligned");
  uint32_t vm_flags = ProtToVmFlags(prot);
  if (type != MAP_PRIVATE) {
    // Linux: do_mmap(): a shared writable mapping needs a file open for
    // writing; a shared read-only one of such a file may never become
    // writable (no VM_MAYWRITE).
    if ((prot & PROT_WRITE) && !file->may_write()) {
      return ErrnoError(EACCES, "mmap: MAP_SHARED with PROT_WRITE of a file opened read-only");
    }
    vm_flags |= kVmShared | kVmMayShare | (file->may_write() ? kVmMayWrite : 0);
  } else {
    vm_flags |= kVmMayWrite;
  }
  if (flags & MAP_NORESERVE) vm_flags |= kVmNoReserve;
  if (flags & MAP_LOCKED) vm_flags |= kVmLocked;
  return InsertMapping(addr, rounded, flags, vm_flags, file,
                       static_cast<uint64_t>(off) >> kPageShift, flags & (MAP_POPULATE | MAP_LOCKED));
}

absl::StatusOr<VirtAddr> AddressSpace::InsertMapping(VirtAddr addr, size_t rounded, int flags,
                                                     uint32_t vm_flags, ShmemObject* file,
                                                     uint64_t pgoff, bool populate) {
  const bool fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE);
  AddrRange range;
  {
    WriteLockHolder l(&mmap_lock_);
    // mlockall(MCL_FUTURE).
    vm_flags |= def_flags_;
    populate |= (def_flags_ & kVmLocked) && def_populate_;
    if (fixed) {
      VirtAddr end;
      if (__builtin_add_overflow(addr, rounded, &end) || addr < window_.start ||
          end > window_.end) {
        return ErrnoError(ENOMEM, "mmap: fixed range outside the address space window");
      }
      range = {addr, end};
      if (vmas_.AnyOverlap(range)) {
        if (flags & MAP_FIXED_NOREPLACE) return ErrnoError(EEXIST, "mmap: range is mapped");
        UnmapLocked(range);
      }
    } else {
      EMU_ASSIGN_OR_RETURN(VirtAddr start, GetUnmappedAreaLocked(addr, rounded));
      range = {start, start + rounded};
    }
    Vma vma = Vma::New(range.start, range.end, vm_flags);
    if (file != nullptr) {
      vma.pgoff = pgoff;
      vma.file = file;
      file->AddSpace(this);
    }
    vmas_.Insert(vma);
    SyncHostProtLocked(vma, range);
    vmas_.MergeAround(range);
  }
  Log(Component::kEmu).debug("mmap {} flags={:#x} vm_flags={:#x}", range, flags, vm_flags);
  if (populate) {
    // Linux ignores populate failures here (mm_populate); so do we.
    (void)Populate(range, (vm_flags & kVmLocked) != 0, /*stop_at_inaccessible=*/false);
  }
  return range.start;
}

absl::Status AddressSpace::Msync(VirtAddr addr, size_t len, int flags) {
  // Linux: mm/msync.c.
  if (flags & ~(MS_ASYNC | MS_INVALIDATE | MS_SYNC)) return ErrnoError(EINVAL, "msync: bad flags");
  if ((flags & MS_ASYNC) && (flags & MS_SYNC)) {
    return ErrnoError(EINVAL, "msync: MS_ASYNC with MS_SYNC");
  }
  if (!PageAligned(addr)) return ErrnoError(EINVAL, "msync: address not aligned");
  VirtAddr end;
  if (!RoundedEnd(addr, len, &end)) return ErrnoError(ENOMEM, "msync: range overflows");
  struct Range {
    ShmemObject* file;
    uint64_t first, last;
  };
  std::vector<Range> ranges;
  bool hole = false;
  {
    ReadLockHolder l(&mmap_lock_);
    for (VirtAddr a = addr; a < end;) {
      const Vma* v = vmas_.FindVma(a);
      if (v == nullptr || v->start >= end) {
        hole = true;
        break;
      }
      if (v->start > a) hole = true;
      const AddrRange piece = v->range().Intersect({a, end});
      if ((flags & MS_INVALIDATE) && v->locked()) {
        return ErrnoError(EBUSY, "msync: MS_INVALIDATE of a locked range");
      }
      if (v->file != nullptr && (v->vm_flags & kVmShared)) {
        const uint64_t first = v->pgoff + ((piece.start - v->start) >> kPageShift);
        ranges.push_back({v->file, first, first + piece.nr_pages()});
      }
      a = piece.end;
    }
  }
  // With mmap_lock released, as Linux's vfs_fsync_range(): page_mkclean
  // takes each address space's for read.
  absl::Status status = absl::OkStatus();
  for (const Range& r : ranges) {
    absl::Status s = r.file->Writeback(r.first, r.last, (flags & MS_SYNC) != 0);
    if (status.ok()) status = s;
  }
  EMU_RETURN_IF_ERROR(status);
  if (hole) return ErrnoError(ENOMEM, "msync: range is not fully mapped");
  return absl::OkStatus();
}

void AddressSpace::ZapObjectFrom(ShmemObject* file, uint64_t first) {
  WriteLockHolder l(&mmap_lock_);
  std::vector<AddrRange> zap;
  for (const auto& [start, v] : vmas_) {
    if (v.file != file) continue;
    const uint64_t pages = v.range().nr_pages();
    if (v.pgoff + pages <= first) continue;
    const uint64_t skip = first > v.pgoff ? first - v.pgoff : 0;
    zap.push_back({v.start + (skip << kPageShift), v.end});
  }
  for (const AddrRange& r : zap) ZapRangeLocked(r);
}

absl::Status AddressSpace::MapForeign(VirtAddr addr, size_t len, bool noreplace,
                                      absl::FunctionRef<int()> map_native) {
  if (!PageAligned(addr)) return ErrnoError(EINVAL, "mmap: fixed address not aligned");
  VirtAddr end;
  if (len == 0 || !RoundedEnd(addr, len, &end)) return ErrnoError(EINVAL, "mmap: bad length");
  if (addr < window_.start || end > window_.end) {
    return ErrnoError(ENOMEM, "mmap: native range crosses the address space window");
  }
  const AddrRange range{addr, end};
  WriteLockHolder l(&mmap_lock_);
  if (vmas_.AnyOverlap(range)) {
    if (noreplace) return ErrnoError(EEXIST, "mmap: range is mapped");
    UnmapLocked(range);
  }
  if (int err = map_native(); err != 0) {
    machine_->host().Reserve(range);
    return ErrnoError(err, "mmap: native mapping inside the window");
  }
  vmas_.Insert(Vma::New(range.start, range.end, kVmForeign));
  vmas_.MergeAround(range);
  Log(Component::kEmu).debug("mmap {} native, inside the window", range);
  return absl::OkStatus();
}

absl::Status AddressSpace::Munmap(VirtAddr addr, size_t len) {
  if (!PageAligned(addr)) return ErrnoError(EINVAL, "munmap: address not aligned");
  VirtAddr end;
  if (len == 0 || !RoundedEnd(addr, len, &end)) return ErrnoError(EINVAL, "munmap: bad length");
  WriteLockHolder l(&mmap_lock_);
  UnmapLocked({addr, end});
  return absl::OkStatus();
}

template <typename Fn>
absl::Status AddressSpace::ApplyToVmasLocked(AddrRange r, Fn&& change) {
  VirtAddr a = r.start;
  absl::Status status = absl::OkStatus();
  while (a < r.end) {
    const Vma* v = vmas_.Lookup(a);
    if (v == nullptr) {
      status = ErrnoError(ENOMEM, "range is not fully mapped");
      break;
    }
    AddrRange piece = v->range().Intersect({a, r.end});
    auto it = vmas_.SplitAround(piece);
    status = change(it->second);
    if (!status.ok()) break;
    a = piece.end;
  }
  vmas_.MergeAround(r);
  return status;
}

absl::StatusOr<VirtAddr> AddressSpace::Mremap(VirtAddr old_addr, size_t old_len, size_t new_len,
                                              int flags, VirtAddr new_addr) {
  // Linux: mm/mremap.c, the argument checks in their order.
  constexpr int kKnown = MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP;
  if (flags & ~kKnown) return ErrnoError(EINVAL, "mremap: unknown flags");
  if ((flags & MREMAP_FIXED) && !(flags & MREMAP_MAYMOVE)) {
    return ErrnoError(EINVAL, "mremap: MREMAP_FIXED without MREMAP_MAYMOVE");
  }
  if ((flags & MREMAP_DONTUNMAP) && (!(flags & MREMAP_MAYMOVE) || old_len != new_len)) {
    return ErrnoError(EINVAL, "mremap: MREMAP_DONTUNMAP needs MREMAP_MAYMOVE and equal lengths");
  }
  if (!PageAligned(old_addr)) return ErrnoError(EINVAL, "mremap: address not aligned");
  size_t old_rounded = PageAlignUp(old_len);
  size_t new_rounded = PageAlignUp(new_len);
  if (old_rounded < old_len || new_rounded < new_len || new_rounded == 0) {
    return ErrnoError(EINVAL, "mremap: bad length");
  }
  old_len = old_rounded;
  new_len = new_rounded;
  const bool fixed = flags & MREMAP_FIXED;
  const bool dontunmap = flags & MREMAP_DONTUNMAP;
  VirtAddr old_end;
  if (__builtin_add_overflow(old_addr, old_len, &old_end)) {
    return ErrnoError(EINVAL, "mremap: range overflows");
  }
  ReleasableWriteLock l(&mmap_lock_);
  if (const Vma* v = vmas_.Lookup(old_addr); v != nullptr && v->foreign()) {
    return ErrnoError(EINVAL, "mremap: native mappings inside the window are not moved");
  }
  if (fixed) {
    VirtAddr new_end;
    if (!PageAligned(new_addr)) return ErrnoError(EINVAL, "mremap: new address not aligned");
    if (__builtin_add_overflow(new_addr, new_len, &new_end) || new_addr < window_.start ||
        new_end > window_.end) {
      return ErrnoError(EINVAL, "mremap: new range outside the address space window");
    }
    if (old_addr < new_end && new_addr < old_end) {
      return ErrnoError(EINVAL, "mremap: old and new ranges overlap");
    }
    UnmapLocked({new_addr, new_end});
    if (old_len > new_len) {
      UnmapLocked({old_addr + new_len, old_end});
      old_len = new_len;
      old_end = old_addr + old_len;
    }
  } else if (old_len >= new_len && !dontunmap) {
    if (old_len > new_len) UnmapLocked({old_addr + new_len, old_end});
    return old_addr;
  }
  // Linux: vma_to_resize().
  const Vma* vma = vmas_.Lookup(old_addr);
  if (vma == nullptr) return ErrnoError(EFAULT, "mremap: no mapping at the old address");
  if (old_len == 0) {
    return ErrnoError(EINVAL, "mremap: old_len 0 duplicates only shared mappings");
  }
  if (old_end > vma->end) return ErrnoError(EFAULT, "mremap: old range spans mappings");
  if (vma->locked() && new_len > old_len &&
      machine_->reclaim() != nullptr &&
      (new_len - old_len) / kPageSize > machine_->reclaim()->limit_pages()) {
    return ErrnoError(EAGAIN, "mremap: locked memory beyond the memory limit");
  }
  const uint32_t vm_flags = vma->vm_flags;
  // The page offset of old_addr and the anon_vma: a moved range keeps them.
  const uint64_t old_pgoff = vma->pgoff + ((old_addr - vma->start) >> kPageShift);
  AnonVma* const anon_vma = vma->anon_vma;
  ShmemObject* const file = vma->file;
  if (!fixed && !dontunmap) {
    // Grow in place when the range after the VMA is free (Linux: vma_expandable()).
    VirtAddr grow_end;
    if (old_end == vma->end && !__builtin_add_overflow(old_addr, new_len, &grow_end) &&
        grow_end <= window_.end && !vmas_.AnyOverlap({old_end, grow_end})) {
      AddrRange delta{old_end, grow_end};
      Vma grown{delta.start, delta.end, vm_flags,
                old_pgoff + ((old_end - old_addr) >> kPageShift), anon_vma, file};
      vmas_.Insert(grown);
      SyncHostProtLocked(grown, delta);
      vmas_.MergeAround(delta);
      l.Release();
      if (vm_flags & kVmLocked) {
        (void)Populate(delta, /*nozero=*/true, /*stop_at_inaccessible=*/false);
      }
      return old_addr;
    }
    if (!(flags & MREMAP_MAYMOVE)) return ErrnoError(ENOMEM, "mremap: cannot grow in place");
  }
  if (!fixed) {
    EMU_ASSIGN_OR_RETURN(new_addr, GetUnmappedAreaLocked(0, new_len));
  }
  EMU_RETURN_IF_ERROR(MoveRangeLocked({old_addr, old_end}, Vma{old_addr, old_end, vm_flags, old_pgoff, anon_vma, file},
                                      new_addr, new_len, dontunmap));
  l.Release();
  if ((vm_flags & kVmLocked) && new_len > old_len) {
    (void)Populate({new_addr + old_len, new_addr + new_len}, /*nozero=*/true,
                   /*stop_at_inaccessible=*/false);
  }
  return new_addr;
}

absl::Status AddressSpace::MoveRangeLocked(AddrRange src, const Vma& src_vma, VirtAddr dst,
                                           size_t dst_len, bool dontunmap) {
  const uint32_t vm_flags = src_vma.vm_flags;
  const bool tracked = machine_->Tracked(src_vma);  // (src_vma may move with the tree's inserts)
  // Linux: move_vma() -> move_page_tables(). mmap_lock held for write keeps
  // faults and reclaim's PTE edits out; a page that reclaim holds isolated
  // keeps its reference and finds its PTE gone from the address it knew,
  // which it treats like any PTE that changed under it.
  HostMmu& host = machine_->host();
  MemMap& mem_map = machine_->mem_map();
  const Prot prot = VmFlagsToProt(vm_flags);
  AddrRange dst_range{dst, dst + dst_len};
  // anonmm finds a shared frame at one offset in every window: a moved one
  // gets its own copy here (Linus's early COW, seed 000). Its frames are
  // taken before anything moves, so that running out fails the call cleanly.
  RmapMethod* rmap = machine_->rmap();
  // (An object's pages move as they are: the object finds them by the
  // VMA's pgoff, which a move keeps.)
  const bool early_cow = rmap != nullptr && rmap->EarlyCowOnMove();
  std::vector<Pfn> cow_frames;
  if (early_cow) {
    size_t need = 0;
    pt_.ForEachEntry(src, [&](VirtAddr, std::atomic<uint64_t>* e) {
      Pte pte(e->load(std::memory_order_relaxed));
      if (!pte.present() || pte.special()) return;
      const Page& page = mem_map.page(pte.pfn());
      if (page.Test(kPgPool) && !page.Test(kPgShmem) &&
          page.mapcount.load(std::memory_order_acquire) > 1) {
        need++;
      }
    });
    cow_frames.resize(need);
    size_t got = 0;
    while (got < need && machine_->AllocFrames(nullptr, &cow_frames[got], 1, 1) == 1) got++;
    if (got < need) {
      for (size_t i = 0; i < got; i++) machine_->FreePage(cow_frames[i]);
      return ErrnoError(ENOMEM, "mremap: no frames to copy shared pages (anonmm early COW)");
    }
  }
  // Linux: copy_vma(): the new VMA keeps the page offsets and the anon_vma.
  Vma moved{dst_range.start, dst_range.end, vm_flags, src_vma.pgoff, src_vma.anon_vma,
            src_vma.file};
  vmas_.Insert(moved);
  const bool encodes = host.prot_encodes_ptes();
  if (!encodes) SyncHostProtLocked(moved, dst_range);
  // Writes the host recorded at the old address are dirty pages before
  // that mapping goes (dirty tracking "async").
  HarvestBeforeUnmapLocked(src);
  // The copy reads the old host pages: make them readable meanwhile.
  const bool unreadable = !(prot & PROT_READ);
  if (unreadable) host.Protect(src, PROT_READ);

  // Runs of equal kind are installed with one host call each. A frame in
  // the pool is mapped at its new address as it is (it may be shared).
  enum Kind { kNone, kZero, kAnonRo, kAnonRw, kPoolRo, kPoolRw };
  Kind run_kind = kNone;
  VirtAddr run_src = 0, run_end = 0;
  uint64_t run_off = 0;
  bool ok = true, any_pool = false;
  auto flush = [&] {
    if (run_kind == kNone) return;
    AddrRange to{dst + (run_src - src.start), dst + (run_end - src.start)};
    if (run_kind == kZero) {
      ok &= host.InstallZero(to, prot);
    } else if (run_kind == kPoolRo || run_kind == kPoolRw) {
      const int fd = machine_->frame_pool()->fd();
      ok &= tracked ? host.MapPoolTracked(to, fd, run_off, prot)
                    : host.MapPool(to, fd, run_off, prot, run_kind == kPoolRw);
      machine_->AddPoolVmas(2);
    } else {
      ok &= host.InstallCopy(to, reinterpret_cast<const void*>(run_src), prot,
                             run_kind == kAnonRw);
      // Drop each run's old copy at once: the move never holds both copies
      // of more than one run (resident memory stays within the limit).
      host.Zap({run_src, run_end});
    }
    run_kind = kNone;
  };
  bool any_present = false;
  pt_.ForEachEntry(src, [&](VirtAddr a, std::atomic<uint64_t>* e) {
    Pte pte(e->load(std::memory_order_relaxed));
    if (pte.raw() == 0) return;
    EMU_BUG_ON(pte.locked());  // excluded by mmap_lock held for write
    VirtAddr to = dst + (a - src.start);
    std::atomic<uint64_t>* ne = pt_.Walk(to, /*alloc=*/true);
    if (ne == nullptr) {
      ok = false;
      return;
    }
    Kind k = kNone;
    uint64_t off = 0;
    if (pte.present()) {
      any_present = true;
      k = pte.special() ? kZero : pte.write() ? kAnonRw : kAnonRo;
      if (!pte.special()) {
        Page& page = mem_map.page(pte.pfn());
        // Counted above; a fork elsewhere may have shared one more since,
        // and without a frame for it the frame moves as it is (the call
        // then fails with ENOMEM; anonmm's walk will not find it here).
        Pfn copy{0};
        const bool cow = page.Test(kPgPool) && !page.Test(kPgShmem) && early_cow &&
                         page.mapcount.load(std::memory_order_acquire) > 1 &&
                         (!cow_frames.empty() || machine_->AllocFrames(nullptr, &copy, 1, 1) == 1 ||
                          (ok = false));
        if (cow) {
          // The copy goes in now, on its own.
          flush();
          if (!cow_frames.empty()) {
            copy = cow_frames.back();
            cow_frames.pop_back();
          }
          const bool writable = vm_flags & kVmWrite;
          ok &= host.InstallCopy({to, to + kPageSize}, reinterpret_cast<const void*>(a), prot,
                                 writable);
          AddNewAnonRmap(mem_map.page(copy), this, moved, to);
          if (PageReclaim* reclaim = machine_->reclaim()) reclaim->LruAdd(copy);
          page.mapcount.fetch_sub(1, std::memory_order_acq_rel);
          machine_->PutPage(pte.pfn());
          any_pool = true;  // the old address mapped a file page
          pte = Pte::Anon(copy, writable, /*dirty=*/true);
          k = kNone;  // installed already: no run
          machine_->vmstat().Add(VmEvent::k_cow_page);
        } else if (page.Test(kPgPool)) {
          k = pte.write() ? kPoolRw : kPoolRo;
          off = page.pool_off;
          any_pool = true;
          if (early_cow && !page.Test(kPgShmem) &&
              page.mapcount.load(std::memory_order_acquire) == 1) {
            rmap->AnchorPage(page, *this, moved, to);  // mapped here only
          }
        } else {
          page.index = to >> kPageShift;
        }
      }
    }
    constexpr VirtAddr kMaxRunBytes = 512 * kPageSize;  // 2 MiB per host call
    const bool pool_gap = (k == kPoolRo || k == kPoolRw) && off != run_off + (a - run_src);
    if (k != run_kind || a != run_end || run_end - run_src >= kMaxRunBytes || pool_gap) flush();
    if (k != kNone) {
      if (run_kind == kNone) {
        run_src = a;
        run_off = off;
      }
      run_kind = k;
      run_end = a + kPageSize;
    }
    {
      SpinLockHolder l1(pt_.Ptl(a));
      e->store(0, std::memory_order_relaxed);
    }
    SpinLockHolder l2(pt_.Ptl(to));
    ne->store(pte.raw(), std::memory_order_release);
  });
  flush();
  // Frames taken for early COW that were not needed (another address space
  // dropped its mapping meanwhile) go back.
  for (Pfn unused : cow_frames) machine_->FreePage(unused);
  if (any_pool) {
    host.Reserve(src);  // no file page may stay mapped at the old address
  } else if (any_present) {
    host.Zap(src);
  }
  if (encodes) SyncHostProtLocked(moved, dst_range);
  vmas_.MergeAround(dst_range);
  if (dontunmap) {
    if (unreadable || encodes || any_pool) {
      const Vma* old = vmas_.Lookup(src.start);
      SyncHostProtLocked(*old, src);
    }
  } else {
    vmas_.Erase(src);
    host.Protect(src, PROT_NONE);
  }
  machine_->vmstat().Add(VmEvent::k_mremap_moves);
  if (!ok) return ErrnoError(ENOMEM, "mremap: the host refused the move");
  return absl::OkStatus();
}

absl::Status AddressSpace::Mprotect(VirtAddr addr, size_t len, Prot prot) {
  if (!PageAligned(addr)) return ErrnoError(EINVAL, "mprotect: address not aligned");
  if (prot & ~(kKnownProt | PROT_GROWSDOWN | PROT_GROWSUP)) {
    return ErrnoError(EINVAL, "mprotect: unknown protection bits");
  }
  if ((prot & PROT_GROWSDOWN) && (prot & PROT_GROWSUP)) {
    return ErrnoError(EINVAL, "mprotect: PROT_GROWSDOWN with PROT_GROWSUP");
  }
  if (len == 0) return absl::OkStatus();
  VirtAddr end;
  if (!RoundedEnd(addr, len, &end)) return ErrnoError(ENOMEM, "mprotect: range overflows");
  std::vector<AddrRange> populate;
  ReleasableWriteLock l(&mmap_lock_);
  // Linux: do_mprotect_pkey() looks up the first VMA in the range before it
  // judges PROT_GROWS*: a hole is ENOMEM, a VMA that does not grow EINVAL.
  if (prot & (PROT_GROWSDOWN | PROT_GROWSUP)) {
    const Vma* v = vmas_.FindVma(addr);
    if (v == nullptr || v->start >= end) return ErrnoError(ENOMEM, "mprotect: range not mapped");
    if (!(v->vm_flags & kVmGrowsDown) || (prot & PROT_GROWSUP)) {
      return ErrnoError(EINVAL, "mprotect: PROT_GROWS* on a mapping that does not grow");
    }
  }
  uint32_t new_prot_flags = ProtToVmFlags(prot);
  absl::Status status = ApplyToVmasLocked({addr, end}, [&](Vma& vma) {
    mmap_lock_.AssertWriteHeld();
    // Linux: mprotect_fixup(): a shared mapping without VM_MAYWRITE (of a
    // file opened read-only) may not become writable.
    if ((new_prot_flags & kVmWrite) && (vma.vm_flags & kVmShared) &&
        !(vma.vm_flags & kVmMayWrite)) {
      return ErrnoError(EACCES, "mprotect: PROT_WRITE on a shared mapping of a read-only file");
    }
    if (vma.foreign()) {
      if (sys::Mprotect(reinterpret_cast<void*>(vma.start), vma.end - vma.start, prot) != 0) {
        return ErrnoError(errno, "mprotect of a native mapping");
      }
      return absl::OkStatus();
    }
    // Linux: mm/mprotect.c mprotect_fixup() populates a VM_LOCKED private
    // VMA that becomes writable, so its pages are real and stay resident.
    if (vma.locked() && !vma.writable() && (new_prot_flags & kVmWrite)) {
      populate.push_back(vma.range());
    }
    vma.vm_flags = (vma.vm_flags & ~kVmProtMask) | new_prot_flags;
    // Linux: mm/mprotect.c change_pte_range(): exclusive anonymous pages
    // follow the VMA's write permission; the zero page never becomes
    // writable, nor does a swap-cache page (can_change_pte_writable(): its
    // write fault must free the slot first).
    bool write = vma.writable();
    // A file's page in a shared mapping whose writes the host tracks
    // (dirty tracking "async") follows the VMA: the host's protection,
    // set below, keeps its record of writes.
    const bool tracked = machine_->Tracked(vma);
    MemMap& mem_map = machine_->mem_map();
    pt_.ForEachEntry(vma.range(), [&](VirtAddr a, std::atomic<uint64_t>* e) {
      Pte pte(e->load(std::memory_order_relaxed));
      if (!pte.present() || pte.special() || pte.write() == write) return;
      SpinLockHolder ptl(pt_.Ptl(a));
      pte = Pte(e->load(std::memory_order_relaxed));
      if (!pte.present() || pte.special() || pte.locked()) return;
      if (tracked) {
        e->store(pte.WithWrite(write).raw(), std::memory_order_release);
        return;
      }
      const Page& page = mem_map.page(pte.pfn());
      // Nor a lazily freed one: its next write must be seen (the PTE's
      // dirty bit is all that keeps reclaim from discarding it).
      if (write && page.Test(kPgSwapCache | kPgLazyFree)) return;
      // Nor a page cache page in a private mapping (it is copied on write),
      // nor a clean file page in a shared one (seed 001: its write must be
      // seen to dirty it).
      if (write && page.Test(kPgShmem) &&
          (!(vma.vm_flags & kVmShared) ||
           (vma.file->backed() && !page.Test(kPgDirty)))) {
        return;
      }
      // Nor a shared frame (Linux: only an exclusive anonymous page).
      if (write && page.Test(kPgPool) && page.mapcount.load(std::memory_order_acquire) > 1) return;
      e->store(pte.WithWrite(write).raw(), std::memory_order_release);
    });
    SyncHostProtLocked(vma, vma.range());
    return absl::OkStatus();
  });
  l.Release();
  for (AddrRange r : populate) (void)Populate(r, /*nozero=*/true, /*stop_at_inaccessible=*/false);
  return status;
}

absl::Status AddressSpace::Madvise(VirtAddr addr, size_t len, int advice) {
  switch (advice) {
    case MADV_NORMAL:
    case MADV_RANDOM:
    case MADV_SEQUENTIAL:
    case MADV_WILLNEED:
    case MADV_DONTNEED:
    case MADV_FREE:
    // Hints Linux accepts on private anonymous memory and that change nothing
    // the emulator models (huge pages, core dumps, KSM, reclaim hints):
    // accepted on mapped ranges, like Linux. The fork-inheritance ones set
    // VM_DONTCOPY / VM_WIPEONFORK for AddressSpace::Fork().
    case MADV_HUGEPAGE:
    case MADV_NOHUGEPAGE:
    case MADV_DONTDUMP:
    case MADV_DODUMP:
    case MADV_MERGEABLE:
    case MADV_UNMERGEABLE:
    case MADV_DONTFORK:
    case MADV_DOFORK:
    case MADV_WIPEONFORK:
    case MADV_KEEPONFORK:
    case MADV_COLD:
    case MADV_PAGEOUT:
    case kMadvVolatile:
      break;
    default:
      return ErrnoError(EINVAL, absl::StrCat("madvise: advice ", advice, " is not supported"));
  }
  if (!PageAligned(addr)) return ErrnoError(EINVAL, "madvise: address not aligned");
  if (advice == kMadvVolatile) {
    // Seed 003: the length rounds down, so that no page past the advised
    // bytes may vanish.
    const size_t down = len & ~(kPageSize - 1);
    if (len != 0 && down == 0) return ErrnoError(EINVAL, "madvise: MADV_VOLATILE of less than a page");
    len = down;
  }
  VirtAddr end;
  if (!RoundedEnd(addr, len, &end)) return ErrnoError(EINVAL, "madvise: range overflows");
  if (len == 0) return absl::OkStatus();
  AddrRange r{addr, end};
  WriteLockHolder l(&mmap_lock_);
  if (advice == kMadvVolatile) EMU_RETURN_IF_ERROR(CheckVolatileLocked(r));
  bool hole = false, flags_changed = false;
  uint64_t marked = 0;
  VirtAddr a = r.start;
  while (a < r.end) {
    const Vma* v = vmas_.FindVma(a);
    if (v == nullptr || v->start >= r.end) {
      hole = true;
      break;
    }
    if (v->start > a) hole = true;
    AddrRange piece = v->range().Intersect(r);
    if (v->foreign()) {
      if (sys::Madvise(reinterpret_cast<void*>(piece.start), piece.len_bytes(), advice) != 0) {
        return ErrnoError(errno, "madvise of a native mapping");
      }
      a = piece.end;
      continue;
    }
    if (advice == MADV_DONTFORK || advice == MADV_DOFORK || advice == MADV_WIPEONFORK ||
        advice == MADV_KEEPONFORK || advice == kMadvVolatile) {
      // Linux: MADV_WIPEONFORK only on private anonymous memory.
      if (advice == MADV_WIPEONFORK && v->file != nullptr) {
        return ErrnoError(EINVAL, "madvise: MADV_WIPEONFORK on shared memory");
      }
      // Linux: mm/madvise.c madvise_update_vma(). Seed 003: MADV_VOLATILE
      // sets VM_VOLATILE and touches no page.
      uint32_t set = advice == MADV_DONTFORK     ? kVmDontCopy
                     : advice == MADV_WIPEONFORK ? kVmWipeOnFork
                     : advice == kMadvVolatile   ? kVmVolatile
                                                 : 0;
      uint32_t clear = advice == MADV_DOFORK      ? kVmDontCopy
                       : advice == MADV_KEEPONFORK ? kVmWipeOnFork
                                                   : 0;
      if (((v->vm_flags | set) & ~clear) != v->vm_flags) {
        if (set & ~v->vm_flags & kVmVolatile) marked += piece.nr_pages();
        auto it = vmas_.SplitAround(piece);
        it->second.vm_flags = (it->second.vm_flags | set) & ~clear;
        flags_changed = true;
      }
      a = piece.end;
      continue;
    }
    if (advice == MADV_DONTNEED || advice == MADV_FREE) {
      // Linux: mm/madvise.c madvise_dontneed_free_valid_vma().
      if (v->locked()) {
        return ErrnoError(EINVAL, advice == MADV_FREE ? "madvise: MADV_FREE on a locked range"
                                                      : "madvise: MADV_DONTNEED on a locked range");
      }
      if (advice == MADV_FREE) {
        // Linux: madvise_free_single_vma(): private anonymous memory only.
        if (v->file != nullptr) return ErrnoError(EINVAL, "madvise: MADV_FREE on shared memory");
        LazyFreeLocked(*v, piece);
      } else {
        ZapRangeLocked(piece);
        if (machine_->host().prot_encodes_ptes()) SyncHostProtLocked(*v, piece);
      }
    }
    // MADV_WILLNEED on anonymous memory only reads swap ahead (Linux:
    // madvise_willneed -> force_swapin_readahead); nothing is swapped yet.
    a = piece.end;
  }
  if (flags_changed) vmas_.MergeAround(r);  // volatile VMAs stay apart (Vma::CanMergeWith)
  machine_->vmstat().Add(VmEvent::k_pgvolatile_marked, marked);
  if (hole) return ErrnoError(ENOMEM, "madvise: range is not fully mapped");
  return absl::OkStatus();
}

absl::Status AddressSpace::CheckVolatileLocked(AddrRange r) {
  // The pieces are checked first, so that an EINVAL changes nothing.
  for (VirtAddr a = r.start; a < r.end;) {
    const Vma* v = vmas_.FindVma(a);
    if (v == nullptr || v->start >= r.end) break;
    if (v->locked()) return ErrnoError(EINVAL, "madvise: MADV_VOLATILE on a locked range");
    if (v->file != nullptr) return ErrnoError(EINVAL, "madvise: MADV_VOLATILE on shared memory");
    if (v->foreign()) return ErrnoError(EINVAL, "madvise: MADV_VOLATILE on a native mapping");
    a = v->end;
  }
  return absl::OkStatus();
}

void AddressSpace::UnmarkVolatile(VirtAddr addr) {
  WriteLockHolder l(&mmap_lock_);
  const Vma* v = vmas_.Lookup(addr);
  if (v == nullptr || !v->is_volatile()) return;  // another fault was first
  const AddrRange range = v->range();
  if (PageReclaim* reclaim = machine_->reclaim()) {
    // The range's pages on the swap device may go, and nothing in memory
    // holds them: they go now with their slots, unread, rather than be read
    // back once the mark is gone (the program is about to reuse the range).
    // One walk of the page tables that exist, once per mark.
    int64_t swap = 0;
    pt_.ForEachEntry(range, [&](VirtAddr a, std::atomic<uint64_t>* e) {
      mmap_lock_.AssertWriteHeld();
      Pte pte(e->load(std::memory_order_relaxed));
      if (!pte.swap() || pte.present()) return;
      EMU_BUG_ON(pte.locked());  // no fault is in flight under the write lock
      {
        SpinLockHolder ptl(pt_.Ptl(a));
        e->store(Pte::Discarded().raw(), std::memory_order_release);
      }
      reclaim->SwapFree(pte.swap_entry());
      swap++;
    });
    nr_swap_ptes_.fetch_sub(swap, std::memory_order_relaxed);
    machine_->vmstat().Add(VmEvent::k_pgvolatile, swap);
    machine_->vmstat().Add(VmEvent::k_swapin_avoided, swap);
  }
  auto it = vmas_.SplitAround(range);
  it->second.vm_flags &= ~kVmVolatile;
  vmas_.MergeAround(range);
  machine_->vmstat().Add(VmEvent::k_volatile_unmark);
}

void AddressSpace::LazyFreeLocked(const Vma& v, AddrRange r) {
  // Linux: mm/madvise.c madvise_free_pte_range(). Without a memory limit
  // nothing is ever reclaimed, so there is nothing to do: a lazily freed
  // page would keep its data until it is written again anyway.
  PageReclaim* reclaim = machine_->reclaim();
  if (reclaim == nullptr) return;
  MemMap& mem_map = machine_->mem_map();
  HostMmu& host = machine_->host();
  const Prot prot = VmFlagsToProt(v.vm_flags);
  int64_t swap = 0;
  uint64_t lazy = 0;
  VirtAddr wp_start = 0, wp_end = 0;
  auto flush = [&] {
    if (wp_end > wp_start && !host.WriteProtect({wp_start, wp_end}, prot)) {
      // Writes would go unseen: the pages are dirty again, never discarded.
      for (VirtAddr a = wp_start; a < wp_end; a += kPageSize) {
        std::atomic<uint64_t>* e = pt_.Walk(a, false);
        SpinLockHolder ptl(pt_.Ptl(a));
        Pte p(e->load(std::memory_order_relaxed));
        if (p.present()) e->store(p.WithWrite(true).WithDirty().raw(), std::memory_order_release);
      }
    }
    wp_start = wp_end = 0;
  };
  pt_.ForEachEntry(r, [&](VirtAddr a, std::atomic<uint64_t>* e) {
    mmap_lock_.AssertWriteHeld();
    Pte pte(e->load(std::memory_order_relaxed));
    EMU_BUG_ON(pte.locked());  // excluded by mmap_lock held for write
    if (pte.discarded() || pte.swap()) {
      // Linux: a swap entry is freed at once (free_swap_and_cache()).
      {
        SpinLockHolder ptl(pt_.Ptl(a));
        e->store(0, std::memory_order_release);
      }
      if (pte.swap()) {
        reclaim->SwapFree(pte.swap_entry());
        swap++;
      }
      return;
    }
    if (!pte.present() || pte.special()) return;
    Page& page = mem_map.page(pte.pfn());
    // A frame others map (Linux: folio_maybe_mapped_shared()) is left
    // alone, as is a pinned page: its holder may write it unseen.
    if (page.Test(kPgPool) || page.MaybePinned()) return;
    // A swap-cache page gives its slot up unless others use it (Linux:
    // folio_free_swap() fails, and the page is skipped).
    if (page.Test(kPgSwapCache) && !reclaim->ReuseSwapPage(pte.pfn())) return;
    {
      SpinLockHolder ptl(pt_.Ptl(a));
      e->store(pte.Clean().WithYoung(false).raw(), std::memory_order_release);
    }
    page.flags.fetch_or(kPgLazyFree, std::memory_order_relaxed);
    reclaim->LazyFree(pte.pfn());
    lazy++;
    if (pte.write()) {
      if (a != wp_end) flush();
      if (wp_end == 0) wp_start = a;
      wp_end = a + kPageSize;
    }
  });
  flush();
  nr_swap_ptes_.fetch_sub(swap, std::memory_order_relaxed);
  machine_->vmstat().Add(VmEvent::k_pglazyfree, lazy);
}

absl::Status AddressSpace::SetLockedLocked(AddrRange r, bool lock) {
  return ApplyToVmasLocked(r, [&](Vma& vma) {
    if (vma.foreign()) {
      long ret = sys::RawSyscall6(lock ? SYS_mlock : SYS_munlock, static_cast<long>(vma.start),
                                  static_cast<long>(vma.end - vma.start), 0, 0, 0, 0);
      return ret < 0 ? ErrnoError(static_cast<int>(-ret), "mlock of a native mapping")
                     : absl::OkStatus();
    }
    if (lock) {
      // Locked memory is memory in use: the volatile mark goes (the seed
      // silently left a volatile VMA unlocked, VM_SPECIAL).
      vma.vm_flags = (vma.vm_flags | kVmLocked) & ~kVmVolatile;
    } else {
      vma.vm_flags &= ~kVmLocked;
    }
    // Linux: mm/mlock.c mlock_folio()/munlock_folio(): mlocked pages leave
    // the reclaim lists (the unevictable list) and come back on munlock.
    // Pages that reclaim holds at this moment are caught by its own VM_LOCKED
    // check under mmap_lock.
    MemMap& mem_map = machine_->mem_map();
    PageReclaim* reclaim = machine_->reclaim();
    pt_.ForEachEntry(vma.range(), [&](VirtAddr a, std::atomic<uint64_t>* e) {
      SpinLockHolder ptl(pt_.Ptl(a));
      Pte pte(e->load(std::memory_order_relaxed));
      if (!pte.present() || pte.special() || pte.locked()) return;
      Page& page = mem_map.page(pte.pfn());
      uint32_t old = lock ? page.flags.fetch_or(kPgMlocked, std::memory_order_relaxed)
                          : page.flags.fetch_and(~kPgMlocked, std::memory_order_relaxed);
      if (reclaim != nullptr && lock && !(old & kPgMlocked)) reclaim->Mlocked(pte.pfn());
      if (reclaim != nullptr && !lock && (old & kPgMlocked)) reclaim->Munlocked(pte.pfn());
    });
    return absl::OkStatus();
  });
}

absl::Status AddressSpace::Mlock(VirtAddr addr, size_t len) {
  AddrRange r;
  if (!MlockRange(addr, len, &r)) return ErrnoError(EINVAL, "mlock: range wraps");
  if (r.empty()) return absl::OkStatus();
  {
    WriteLockHolder l(&mmap_lock_);
    // A hole: the VMAs before it stay locked, nothing is populated (Linux
    // returns before __mm_populate).
    EMU_RETURN_IF_ERROR(SetLockedLocked(r, true));
  }
  // Linux: __mm_populate() stops at an inaccessible (PROT_NONE) VMA and
  // mlock reports that as ENOMEM (__mlock_posix_error_return: EFAULT ->
  // ENOMEM, ENOMEM -> EAGAIN); the range stays locked.
  absl::Status populated = Populate(r, /*nozero=*/true, /*stop_at_inaccessible=*/true);
  if (populated.ok()) return populated;
  int err = ToErrno(populated);
  return ErrnoError(err == EFAULT ? ENOMEM : err == ENOMEM ? EAGAIN : err,
                    "mlock: could not populate the range");
}

absl::Status AddressSpace::Munlock(VirtAddr addr, size_t len) {
  AddrRange r;
  if (!MlockRange(addr, len, &r)) return ErrnoError(EINVAL, "munlock: range wraps");
  if (r.empty()) return absl::OkStatus();
  WriteLockHolder l(&mmap_lock_);
  return SetLockedLocked(r, false);
}

absl::Status AddressSpace::MlockAll(int flags) {
  if (flags == 0 || (flags & ~(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)) ||
      (flags & (MCL_CURRENT | MCL_FUTURE)) == 0) {
    return ErrnoError(EINVAL, "mlockall: bad flags");
  }
  {
    WriteLockHolder l(&mmap_lock_);
    if (flags & MCL_FUTURE) {
      def_flags_ |= kVmLocked;
      def_populate_ = !(flags & MCL_ONFAULT);
    } else {
      def_flags_ &= ~kVmLocked;
    }
    if (flags & MCL_CURRENT) EMU_RETURN_IF_ERROR(SetLockedAllLocked(true));
  }
  if ((flags & MCL_CURRENT) && !(flags & MCL_ONFAULT)) {
    // Linux: mm_populate(0, TASK_SIZE); errors are not reported.
    (void)Populate(window_, /*nozero=*/true, /*stop_at_inaccessible=*/false);
  }
  return absl::OkStatus();
}

absl::Status AddressSpace::MunlockAll() {
  WriteLockHolder l(&mmap_lock_);
  def_flags_ &= ~kVmLocked;
  return SetLockedAllLocked(false);
}

absl::Status AddressSpace::SetLockedAllLocked(bool lock) {
  // Linux: apply_mlockall_flags() walks every VMA; the tree changes under
  // the walk (splits, merges), so it goes by address.
  for (VirtAddr a = window_.start; a < window_.end;) {
    const Vma* v = vmas_.FindVma(a);
    if (v == nullptr) break;
    const AddrRange r = v->range();
    EMU_RETURN_IF_ERROR(SetLockedLocked(r, lock));
    a = r.end;
  }
  return absl::OkStatus();
}

absl::Status AddressSpace::Populate(AddrRange r, bool nozero, bool stop_at_inaccessible) {
  // Linux: mm/gup.c __mm_populate() / populate_vma_page_range(): write-fault
  // private writable VMAs, read-fault the rest; a PROT_NONE VMA fails the
  // walk with EFAULT (mlock) or is skipped (mmap's populate ignores errors).
  VirtAddr a = r.start;
  while (a < r.end) {
    uint32_t vm_flags;
    AddrRange piece;
    {
      ReadLockHolder l(&mmap_lock_);
      const Vma* v = vmas_.FindVma(a);
      if (v == nullptr || v->start >= r.end) break;
      piece = v->range().Intersect({std::max(a, v->start), r.end});
      vm_flags = v->vm_flags;
    }
    a = piece.end;
    if (vm_flags & kVmForeign) continue;  // the kernel's own (mlock populated it)
    if (!(vm_flags & (kVmRead | kVmWrite | kVmExec))) {
      if (stop_at_inaccessible) return ErrnoError(EFAULT, "populate: PROT_NONE mapping");
      continue;
    }
    unsigned flags = kFaultPopulate;
    if (vm_flags & kVmWrite) flags |= kFaultWrite;
    if (nozero || (vm_flags & kVmLocked)) flags |= kFaultNoZero;
    for (VirtAddr p = piece.start; p < piece.end; p += kPageSize) {
      // Linux: follow_page() first; fault only what is missing.
      Pte pte = GetPte(p);
      if (pte.present() && (!(flags & kFaultWrite) || pte.write()) &&
          !((flags & kFaultNoZero) && pte.special())) {
        continue;
      }
      unsigned ret = machine_->fault_handler().HandleMmFault(*this, p, flags);
      if (ret & kFaultOom) return ErrnoError(ENOMEM, "populate: out of frames");
      if (ret & kFaultHostLimit) return ErrnoError(ENOMEM, "populate: the host refused");
      if (ret & (kFaultSigsegv | kFaultAccErr | kFaultSigbus)) {
        return ErrnoError(EFAULT, "populate: fault failed");
      }
    }
    machine_->vmstat().Add(VmEvent::k_populate_pages, piece.nr_pages());
  }
  return absl::OkStatus();
}

absl::Status AddressSpace::FaultInPages(VirtAddr addr, size_t len, bool write) {
  if (len == 0) return absl::OkStatus();
  VirtAddr start = PageAlignDown(addr);
  VirtAddr end;
  if (!RoundedEnd(start, len + (addr - start), &end)) {
    return ErrnoError(EFAULT, "fault-in: range overflows");
  }
  unsigned flags = kFaultPopulate | (write ? unsigned{kFaultWrite} : 0u);
  for (VirtAddr p = start; p < end; p += kPageSize) {
    std::atomic<uint64_t>* e = pt_.Walk(p, false);
    Pte pte(e ? e->load(std::memory_order_acquire) : 0);
    if (pte.present() && (!write || pte.write())) continue;  // nothing to do
    unsigned ret = machine_->fault_handler().HandleMmFault(*this, p, flags);
    if (ret & (kFaultOom | kFaultHostLimit)) return ErrnoError(ENOMEM, "fault-in: out of memory");
    if (ret & (kFaultSigsegv | kFaultAccErr | kFaultSigbus)) {
      return ErrnoError(EFAULT, absl::StrCat("fault-in: bad access at ", p));
    }
  }
  return absl::OkStatus();
}

Pte AddressSpace::GetPte(VirtAddr addr) {
  std::atomic<uint64_t>* e = pt_.Walk(PageAlignDown(addr), false);
  return Pte(e ? e->load(std::memory_order_acquire) : 0);
}

void AddressSpace::ForEachSwapRef(absl::FunctionRef<void(uint64_t slot, bool cache)> fn) {
  ReadLockHolder l(&mmap_lock_);
  MemMap& mem_map = machine_->mem_map();
  pt_.ForEachEntry(window_, [&](VirtAddr, std::atomic<uint64_t>* e) {
    Pte pte(e->load(std::memory_order_acquire));
    if (pte.swap() && !pte.present()) {
      fn(pte.swap_entry(), false);
    } else if (pte.present() && !pte.special()) {
      const Page& page = mem_map.page(pte.pfn());
      // A frame in the pool may have several PTEs: Machine::CheckInvariants
      // counts its swap cache once.
      if (page.Test(kPgSwapCache) && !page.Test(kPgPool)) fn(page.private_, true);
    }
  });
}

void AddressSpace::CollectPoolMaps(absl::flat_hash_map<uint64_t, int>* maps) {
  MemMap& mem_map = machine_->mem_map();
  pt_.ForEachEntry(window_, [&](VirtAddr, std::atomic<uint64_t>* e) {
    Pte pte(e->load(std::memory_order_acquire));
    if (!pte.present() || pte.special() || pte.locked()) return;
    if (mem_map.page(pte.pfn()).Test(kPgPool)) (*maps)[ToU64(pte.pfn())]++;
  });
}

void AddressSpace::CollectSwapRefs(absl::flat_hash_map<uint64_t, int>* refs,
                                   absl::flat_hash_map<uint64_t, int>* cached) {
  ForEachSwapRef([&](uint64_t slot, bool cache) { (*(cache ? cached : refs))[slot]++; });
}

absl::Status AddressSpace::CheckInvariants(bool reclaim_blocked) {
  PageReclaim* reclaim = reclaim_blocked ? nullptr : machine_->reclaim();
  if (reclaim != nullptr) reclaim->BlockReclaim();
  absl::Status status;
  {
    ReadLockHolder l(&mmap_lock_);
    status = CheckInvariantsLocked();
  }
  if (reclaim != nullptr) reclaim->UnblockReclaim();
  return status;
}

absl::Status AddressSpace::CheckInvariantsLocked() {
  EMU_RETURN_IF_ERROR(vmas_.CheckInvariants());
  for (const auto& [start, v] : vmas_) {
    if (!window_.Contains(v.start) || v.end > window_.end) {
      return ErrnoError(EIO, absl::StrCat("vma ", v.start, " outside the window"));
    }
  }
  MemMap& mem_map = machine_->mem_map();
  int64_t anon = 0, zero = 0, swap = 0;
  absl::Status status = absl::OkStatus();
  auto fail = [&](VirtAddr a, std::string_view what) {
    if (status.ok()) status = ErrnoError(EIO, absl::StrCat("pte at ", a, ": ", std::string(what)));
  };
  pt_.ForEachEntry(window_, [&](VirtAddr a, std::atomic<uint64_t>* e) {
    mmap_lock_.AssertHeld();
    Pte pte(e->load(std::memory_order_acquire));
    if (pte.none()) return;
    const Vma* v = vmas_.Lookup(a);
    if (v == nullptr) return fail(a, "outside every vma");
    if (pte.locked()) return fail(a, "install still in flight");
    if (pte.discarded()) return;  // a marker: none to every reader
    if (!pte.present()) {
      if (!pte.swap()) return fail(a, "neither none, present, swap nor discarded");
      if (machine_->reclaim() == nullptr) return fail(a, "a swap PTE on a machine without swap");
      swap++;
      return;
    }
    if (pte.write() && !v->writable()) return fail(a, "writable in a read-only vma");
    if (pte.special()) {
      zero++;
      if (pte.pfn() != kZeroPfn || pte.write()) return fail(a, "bad zero-page pte");
      return;
    }
    anon++;
    const Page& page = mem_map.page(pte.pfn());
    uint32_t flags = page.flags.load();
    if ((flags & kPgShmem) ? page.anchor != v->file
                           : (v->file != nullptr && (v->vm_flags & kVmShared))) {
      return fail(a, "a shared mapping's PTE maps no page of its object, or another one does");
    }
    if (flags & kPgShmem) {
      // A page of the object: any number of PTEs.
      if (page.index != v->pgoff + ((a - v->start) >> kPageShift)) {
        return fail(a, "an object's page's index does not match its VMA's offset");
      }
      if (pte.write() && !(v->vm_flags & kVmShared)) {
        return fail(a, "writable PTE of a page cache page in a private mapping");
      }
      if (pte.write() && v->file->backed() && !(flags & kPgDirty) && !machine_->Tracked(*v)) {
        return fail(a, "writable PTE of a clean file page (a write would go unseen)");
      }
      return;
    }
    if (!(flags & kPgAnon)) return fail(a, "maps a page that is not anonymous");
    if (flags & kPgPool) {
      // Shared or once shared: Machine::CheckInvariants counts its PTEs.
      if (page.mapcount.load() < 1 || page.refcount.load() < page.mapcount.load()) {
        return fail(a, "pool frame with mapcount < 1 or refcount < mapcount");
      }
      if (pte.write() && page.mapcount.load() != 1) return fail(a, "writable PTE of a shared frame");
      if ((flags & kPgSwapCache) && pte.write() && !pte.dirty()) {
        return fail(a, "writable clean PTE of a pool frame in the swap cache");
      }
      if (machine_->reclaim() != nullptr && !(flags & kPgUnevictable) && !(flags & kPgLru)) {
        return fail(a, "evictable pool frame not on the reclaim lists");
      }
      return;
    }
    if (page.mapping != this || page.index != a >> kPageShift) {
      return fail(a, "page's mapping/index do not point back");
    }
    if (page.mapcount.load() != 1 || page.refcount.load() % kPinBias != 1) {
      return fail(a, "exclusive page with mapcount != 1 or refcount != 1 (+ pins)");
    }
    if ((flags & kPgSwapCache) && pte.write() && !pte.dirty() && !(flags & kPgCsum)) {
      return fail(a, "writable clean swap-cache page without a checksum (a write would be lost)");
    }
    if (flags & (kPgWriteback | kPgLocked)) return fail(a, "page still locked or under writeback");
    if ((flags & kPgLazyFree) && pte.write() && !pte.dirty()) {
      return fail(a, "writable clean lazily freed page (a write would be lost)");
    }
    if (machine_->reclaim() != nullptr && !(flags & kPgUnevictable) && !(flags & kPgLru)) {
      return fail(a, "evictable page not on the reclaim lists");
    }
  });
  EMU_RETURN_IF_ERROR(status);
  if (anon != static_cast<int64_t>(rss_anon()) || zero != static_cast<int64_t>(nr_zero_ptes()) ||
      swap != static_cast<int64_t>(nr_swap_ptes())) {
    return ErrnoError(EIO, absl::StrCat("counts: rss_anon ", rss_anon(), " vs ", anon,
                                        ", zero ptes ", nr_zero_ptes(), " vs ", zero,
                                        ", swap ptes ", nr_swap_ptes(), " vs ", swap));
  }
  if (!machine_->host().prot_encodes_ptes()) EMU_RETURN_IF_ERROR(CheckHostAgreementLocked());
  return absl::OkStatus();
}

absl::Status AddressSpace::CheckHostAgreementLocked() {
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::OkStatus();  // not readable here: nothing to compare with
  absl::Status status = absl::OkStatus();
  std::vector<uint64_t> buf;
  for (const auto& [start, v] : vmas_) {
    if (v.foreign()) continue;  // the kernel's pages, no PTEs of ours
    buf.resize(v.range().nr_pages());
    ssize_t want = static_cast<ssize_t>(buf.size() * sizeof(uint64_t));
    if (pread(fd, buf.data(), want, (v.start >> kPageShift) * sizeof(uint64_t)) != want) break;
    for (size_t i = 0; i < buf.size() && status.ok(); i++) {
      VirtAddr a = v.start + i * kPageSize;
      bool host_present = buf[i] >> 63;
      Pte pte = GetPte(a);
      if ((pte.none() || pte.discarded() || (pte.swap() && !pte.present())) && host_present) {
        status = ErrnoError(EIO, absl::StrCat("host maps ", a, " but its pte is none"));
      } else if (pte.present() && !host_present) {
        status = ErrnoError(EIO, absl::StrCat("pte at ", a, " is present but the host lost it"));
      }
    }
  }
  close(fd);
  return status;
}

}  // namespace emu
