#include "fault/handle_fault.h"

#include "emu/trace.h"

#include <sys/mman.h>

#include <unistd.h>

#include <cerrno>

#include "emu/machine.h"

namespace emu {
namespace {

// = the MachineOptions fault_around_pages maximum. Bounds the arrays the
// fault path keeps on the (possibly small, alternate) signal stack.
constexpr int kMaxRun = 64;

// The faulting thread's id: cached per thread, or set by a uffd handler
// thread for the thread it serves. initial-exec TLS: safe in signal context.
thread_local uint32_t tls_tid __attribute__((tls_model("initial-exec"))) = 0;
thread_local uint32_t tls_served_tid __attribute__((tls_model("initial-exec"))) = 0;

uint32_t FaultingTid() {
  if (tls_served_tid != 0) return tls_served_tid;
  if (tls_tid == 0) tls_tid = static_cast<uint32_t>(gettid());
  return tls_tid;
}

// Lock-free read of a PTE.
inline uint64_t Load(std::atomic<uint64_t>* e) { return e->load(std::memory_order_acquire); }


// Puts the new pages of `run` on the reclaim lists (Linux:
// folio_add_lru_vma()); a no-op without a memory limit.
void LruAddRun(Machine* machine, const Pfn* pfns, size_t n) {
  PageReclaim* reclaim = machine->reclaim();
  if (reclaim == nullptr) return;
  for (size_t i = 0; i < n; i++) reclaim->LruAdd(pfns[i]);
}

}  // namespace

void SetFaultingThread(uint32_t tid) { tls_served_tid = tid; }

namespace {

// Whether the CPU and kernel give PROT_EXEC-only mappings execute-only
// protection keys (CPUID.7.0:ECX PKU and OSPKE). Read once at load time, so
// the fault path (signal context) never runs a guarded static initializer.
bool ReadCpuExecuteOnly() {
  unsigned a, b, c, d;
  __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
  return (c & (1u << 3)) && (c & (1u << 4));
}
const bool kCpuHasExecuteOnly = ReadCpuExecuteOnly();

}  // namespace

bool ExecuteOnly(const Vma& vma, unsigned flags) {
  // A data access trapped by the fault source; populate and GUP-like
  // callers are the kernel's own accesses, which protection keys do not stop.
  return !(flags & (kFaultPopulate | kFaultExec)) && (vma.vm_flags & kVmProtMask) == kVmExec &&
         kCpuHasExecuteOnly;
}

namespace {
// mmap_lock for read, or during a fork (AddressSpace::BeginFork) the
// forking thread's write lock standing in for it.
class ABSL_SCOPED_LOCKABLE FaultLock {
 public:
  explicit FaultLock(AddressSpace& as) ABSL_SHARED_LOCK_FUNCTION(as.mmap_lock())
      ABSL_NO_THREAD_SAFETY_ANALYSIS : as_(as) {
    for (;;) {
      if (as.mmap_lock()->TryReadLock()) return;
      if (as.forking()) {
        as.fork_faults().fetch_add(1, std::memory_order_seq_cst);
        if (as.forking()) {
          borrowed_ = true;
          return;
        }
        as.fork_faults().fetch_sub(1, std::memory_order_seq_cst);
      }
      if (!as.forking()) {
        as.mmap_lock()->ReadLock();
        return;
      }
    }
  }
  ~FaultLock() ABSL_UNLOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (held_) Unlock();
  }
  // Drops the lock before the end of the scope.
  void Unlock() ABSL_UNLOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    held_ = false;
    if (borrowed_) {
      as_.fork_faults().fetch_sub(1, std::memory_order_seq_cst);
    } else {
      as_.mmap_lock()->ReadUnlock();
    }
  }
  FaultLock(const FaultLock&) = delete;
  FaultLock& operator=(const FaultLock&) = delete;
  // Whether this fault runs under a forking thread's write lock.
  bool borrowed() const { return borrowed_; }

 private:
  AddressSpace& as_;
  bool borrowed_ = false;
  bool held_ = true;
};
}  // namespace

unsigned AnonFaultHandler::HandleMmFault(AddressSpace& as, VirtAddr addr, unsigned flags) {
  unsigned ret = 0;
  bool unmarked = false;
  bool file_write = false;  // a write to a shared file mapping: may dirty a page
  // Counted first, as Linux's handle_mm_fault() does: in handler-thread mode
  // the faulting access goes on once its page is installed, and whoever it
  // tells must find the fault counted.
  VmStat& vmstat = machine_->vmstat();
  vmstat.Add(VmEvent::k_pgfault);
  for (;;) {
    bool unmark = false;
    FaultLock l(as);
    VmFault vmf{&as, nullptr, PageAlignDown(addr), flags, nullptr};
    vmf.vma = as.vmas().Lookup(addr);
    if (vmf.vma != nullptr && vmf.vma->foreign()) vmf.vma = nullptr;  // the kernel's fault
    if (vmf.vma == nullptr) {
      ret = kFaultSigsegv;
    } else if (!(flags & kFaultForce) &&
               ((flags & kFaultExec) ? !(vmf.vma->vm_flags & kVmExec)
                : vmf.write()         ? !vmf.vma->writable()
                                      : !(vmf.vma->vm_flags & kVmProtMask))) {
      ret = kFaultAccErr;  // Linux: mm/memory.c access_error() (x86)
      if (ExecuteOnly(*vmf.vma, flags)) ret |= kFaultPkuErr;
    } else if (ExecuteOnly(*vmf.vma, flags)) {
      // Linux (x86 with PKU): PROT_EXEC alone is execute-only memory, a
      // protection key that forbids data access; the kernel reports
      // SEGV_PKUERR.
      ret = kFaultAccErr | kFaultPkuErr;
    } else if (vmf.vma->is_volatile() && !unmarked && !l.borrowed()) {
      // Seed 003: the first fault in a volatile VMA clears its mark (under
      // mmap_lock for write), then takes the normal path. Any fault, not
      // only one on a discarded page: each one shows the range in use
      // again. (During a fork the mark stays: the forking thread holds the
      // write lock this fault borrows.)
      unmark = true;
    } else {
      ret = HandlePteFault(vmf);
      file_write = vmf.write() && vmf.vma->file != nullptr && (vmf.vma->vm_flags & kVmShared) &&
                   vmf.vma->file->backed();
    }
    if (!unmark) break;
    l.Unlock();
    as.UnmarkVolatile(addr);
    unmarked = true;
  }
  if (ret & (kFaultSigsegv | kFaultAccErr)) vmstat.Add(VmEvent::k_pgfault_sigsegv);
  // Linux: fault_dirty_shared_page() -> balance_dirty_pages_ratelimited(),
  // with mmap_lock released: above the dirty threshold the writer waits
  // for the flusher here.
  if (file_write && ret == kFaultOk) machine_->flusher().BalanceDirty();
  return ret;
}

unsigned AnonFaultHandler::HandlePteFault(VmFault& vmf) {
  vmf.pte = vmf.as->page_table().Walk(vmf.address, true);
  if (vmf.pte == nullptr) return kFaultOom;
  uint64_t raw = Load(vmf.pte);
  Pte pte(raw);
  if (pte.locked()) {
    // Another thread is installing it; a swap-in can take a while (I/O), so
    // sleep until it is published rather than spin.
    if (pte.swap() && machine_->reclaim()) machine_->reclaim()->WaitSwapIn(vmf.pte, raw);
    return kFaultRetry;
  }
  if (vmf.vma->file != nullptr &&
      (pte.none() || (pte.present() && !pte.special() &&
                      machine_->mem_map().page(pte.pfn()).Test(kPgShmem)))) {
    // The object's page, or none yet (a private mapping's own copies are
    // anonymous pages and take the paths below).
    return DoSharedPage(vmf, raw);
  }
  if (pte.none()) return DoAnonymousPage(vmf);
  if (pte.discarded()) {
    // Reclaim discarded the page (a volatile or lazily freed one): it
    // comes back as a new page, as after MADV_DONTNEED, counted.
    {
      SpinLockHolder l(vmf.as->page_table().Ptl(vmf.address));
      if (Load(vmf.pte) != raw) return kFaultRetry;
      vmf.pte->store(0, std::memory_order_release);
    }
    machine_->vmstat().Add(VmEvent::k_discard_refault);
    return DoAnonymousPage(vmf);
  }
  if (pte.present()) {
    if ((vmf.flags & kFaultNoZero) && pte.special()) return BreakZeroPage(vmf, raw);
    if (vmf.write() && !pte.write()) return DoWpPage(vmf, raw);
    if (vmf.write() && !(vmf.flags & kFaultPopulate) && !machine_->host().prot_encodes_ptes()) {
      // A write trapped on a PTE that is writable: the host page kept a
      // write-protection the PTE no longer has (reclaim's reference sampling
      // racing mprotect). Make the host agree, or the access would trap forever.
      machine_->host().MakeWritable({vmf.address, vmf.address + kPageSize},
                                    VmFlagsToProt(vmf.vma->vm_flags));
    }
    // Already resolved (a racing thread, or a retried access).
    machine_->vmstat().Add(VmEvent::k_pgfault_spurious);
    NoteResolution(FaultResolution::kSpurious);
    return kFaultSpurious;
  }
  if (pte.swap() && machine_->reclaim() != nullptr) {
    return machine_->reclaim()->DoSwapPage(*vmf.as, *vmf.vma, vmf.address, vmf.pte, raw,
                                           vmf.flags);
  }
  return kFaultSigbus;
}

AddrRange AnonFaultHandler::FaultAroundRange(const VmFault& vmf, bool sequential) const {
  const int nr = machine_->options().fault_around_pages;
  AddrRange single{vmf.address, vmf.address + kPageSize};
  if (nr <= 1) return single;
  AddrRange window;
  if (!vmf.write() && !(vmf.flags & kFaultPopulate)) {
    // Linux: mm/memory.c do_fault_around(): an aligned window.
    VirtAddr start = vmf.address & ~(uintptr_t{static_cast<unsigned>(nr)} * kPageSize - 1);
    window = {start, start + nr * kPageSize};
  } else if (sequential) {
    window = {vmf.address, vmf.address + nr * kPageSize};
  } else {
    return single;
  }
  // Stay inside the VMA and the leaf table (one ptl).
  VirtAddr leaf = vmf.address & ~(PageTable::kLeafSpan - 1);
  window = window.Intersect(vmf.vma->range()).Intersect({leaf, leaf + PageTable::kLeafSpan});
  return window;
}

// Claims the run of none PTEs in `window` that contains vmf.address by
// marking them kLocked. Returns the claimed run (empty when the faulting PTE
// was no longer none).
static AddrRange ClaimNoneRun(VmFault& vmf, AddrRange window) {
  PageTable& pt = vmf.as->page_table();
  SpinLockHolder l(pt.Ptl(vmf.address));
  if (Load(vmf.pte) != 0) return {};
  VirtAddr start = vmf.address, end = vmf.address + kPageSize;
  std::atomic<uint64_t>* base = vmf.pte - ((vmf.address - window.start) >> kPageShift);
  auto entry = [&](VirtAddr a) { return base + ((a - window.start) >> kPageShift); };
  // A discarded neighbour (Pte::Discarded) reads as none: it joins the run.
  auto none = [](uint64_t v) { return v == 0 || v == Pte::kDiscarded; };
  while (start > window.start && none(Load(entry(start - kPageSize)))) start -= kPageSize;
  while (end < window.end && none(Load(entry(end)))) end += kPageSize;
  uint64_t discarded = 0;
  for (VirtAddr a = start; a < end; a += kPageSize) {
    discarded += Load(entry(a)) == Pte::kDiscarded;
    entry(a)->store(Pte::InstallLocked().raw(), std::memory_order_relaxed);
  }
  if (discarded != 0) vmf.as->machine().vmstat().Add(VmEvent::k_discard_refault, discarded);
  return {start, end};
}

template <typename Make>
static void PublishRun(VmFault& vmf, AddrRange run, Make&& make);

// A new frame `f` becomes page `index` of `obj`, placed in the pool for
// `addr` (its identity offset when free). Not in the cache yet.
static void MakeObjectPage(MemMap& mem_map, FramePool& pool, ShmemObject& obj, Pfn f,
                           uint64_t index, VirtAddr addr) {
  Page& page = mem_map.page(f);
  page.mapping = nullptr;
  page.anchor = &obj;
  page.index = index;
  page.pool_off = pool.Place(f, addr);
  page.flags.fetch_or(kPgShmem | kPgPool | (obj.backed() ? kPgFile : 0), std::memory_order_release);
}

// A new page went into the cache (its allocation reference is the cache's):
// the fault takes its own, and a file's page joins the reclaim lists, mapped
// or not (Linux: the file LRU); shared memory's stays off them.
static void CachedNewPage(Machine& m, ShmemObject& obj, Pfn f) {
  m.mem_map().page(f).refcount.fetch_add(1, std::memory_order_relaxed);
  if (obj.backed() && m.reclaim() != nullptr) m.reclaim()->LruAdd(f);
  m.vmstat().Add(obj.backed() ? VmEvent::k_file_read : VmEvent::k_shmem_alloc);
}

unsigned AnonFaultHandler::DoSharedPage(VmFault& vmf, uint64_t orig) {
  // Linux: do_read_fault() / do_cow_fault() / do_shared_fault() over the
  // object's page cache (shmem_fault, filemap_fault), and for a write to a
  // write-protected PTE of the object's page: wp_page_shared() (seed 001:
  // the page is dirtied, the PTE made writable) or, in a private mapping,
  // wp_page_copy().
  Pte pte(orig);
  const Vma& vma = *vmf.vma;
  ShmemObject& obj = *vma.file;
  HostMmu& host = machine_->host();
  MemMap& mem_map = machine_->mem_map();
  const Prot prot = VmFlagsToProt(vma.vm_flags);
  const bool shared = vma.vm_flags & kVmShared;
  const bool writable = vma.writable();
  const AddrRange page_range{vmf.address, vmf.address + kPageSize};
  PageTable& pt = vmf.as->page_table();
  FramePool& pool = *machine_->frame_pool();  // made with the object
  // FOLL_FORCE may not write through a read-only shared mapping (Linux:
  // check_vma_flags(): only a COW mapping).
  if (vmf.write() && !writable && shared) return kFaultAccErr;
  if (pte.present()) {
    if (!vmf.write() || pte.write()) {
      machine_->vmstat().Add(VmEvent::k_pgfault_spurious);
      NoteResolution(FaultResolution::kSpurious);
      return kFaultSpurious;
    }
    machine_->vmstat().Add(VmEvent::k_pgfault_wp);
    {
      SpinLockHolder l(pt.Ptl(vmf.address));
      if (Load(vmf.pte) != orig) return kFaultRetry;
      vmf.pte->store(pte.WithLocked().raw(), std::memory_order_relaxed);
    }
    Page& page = mem_map.page(pte.pfn());
    if (!shared) return CopyObjectPage(vmf, orig);
    obj.MarkDirty(page);  // before the PTE is writable: writeback sees it
    // A page whose writes the host tracks needs no host change: the host
    // lets writes through as the VMA allows.
    const bool ok = machine_->Tracked(vma) || host.MakeWritable(page_range, prot);
    {
      SpinLockHolder l(pt.Ptl(vmf.address));
      vmf.pte->store(ok ? pte.WithWrite(true).WithDirty().WithYoung(true).raw() : orig,
                     std::memory_order_release);
    }
    if (!ok) return kFaultSigbus;
    machine_->vmstat().Add(VmEvent::k_pgreuse);
    NoteResolution(FaultResolution::kReuse);
    return kFaultOk;
  }
  if (!pte.none()) return kFaultSigbus;  // no swap PTE of an object's page yet
  const uint64_t index = vma.pgoff + ((vmf.address - vma.start) >> kPageShift);
  if (index >= obj.nr_pages() && !obj.RefreshSize(index)) {
    // Past the object's end (the file's last page, a truncated file, or a
    // shared mapping mremap grew): Linux's SIGBUS. A file another process
    // made longer is looked at again first.
    NoteResolution(FaultResolution::kSigbus);
    return kFaultSigbus;
  }
  if (!vmf.write()) {
    const AddrRange window = FaultAroundRange(vmf, false);
    if (window.nr_pages() > 1) return DoObjectFaultAround(vmf, window);
  }
  {
    SpinLockHolder l(pt.Ptl(vmf.address));
    if (Load(vmf.pte) != 0) return kFaultRetry;
    vmf.pte->store(Pte::InstallLocked().raw(), std::memory_order_relaxed);
  }
  auto unclaim = [&] {
    SpinLockHolder l(pt.Ptl(vmf.address));
    vmf.pte->store(0, std::memory_order_release);
  };
  // With a reference of this fault's: reclaim may drop a file's page from
  // the cache at any time until it is mapped.
  Pfn pfn = obj.GetPage(index);
  if (ToU64(pfn) == 0) {
    // A new page of the object: a frame at a fresh pool offset, which reads
    // as zeros (a hole in the pool's file), then a file's bytes.
    Pfn fresh;
    if (machine_->AllocFrames(vmf.as, &fresh, 1, 1) != 1) {
      unclaim();
      return kFaultOom;
    }
    MakeObjectPage(mem_map, pool, obj, fresh, index, vmf.address);
    const Page& page = mem_map.page(fresh);
    if (obj.backed() && !obj.ReadPage(index, pool.writable_view(page.pool_off))) {
      machine_->FreePage(fresh);
      unclaim();
      NoteResolution(FaultResolution::kSigbus);
      return kFaultSigbus;  // Linux: a read error in filemap_fault is SIGBUS
    }
    pfn = obj.Add(index, fresh);  // its allocation reference is the cache's
    if (pfn != fresh) {
      machine_->FreePage(fresh);  // another fault was first
      unclaim();
      return kFaultRetry;
    }
    CachedNewPage(*machine_, obj, fresh);
  }
  Page& page = mem_map.page(pfn);
  if (!shared && vmf.write()) {
    // A write to a private mapping: its own copy at once (do_cow_fault).
    // This fault's reference is the one CopyObjectPage drops.
    page.mapcount.fetch_add(1, std::memory_order_acq_rel);
    return CopyObjectPage(vmf, Pte::Anon(pfn, false, false).WithLocked().raw(),
                          /*mapped=*/false);
  }
  // A shared writable mapping maps a clean file page read-only, so that its
  // first write is seen (seed 001); a write fault dirties it now. With the
  // host tracking writes (dirty tracking "async"), it is mapped writable
  // and the host records its writes; a write fault dirties it at once all
  // the same (a populate or a pin may write it without the host seeing).
  const bool tracked = machine_->Tracked(vma);
  const bool map_writable = shared && writable && (tracked || !obj.backed() || vmf.write());
  const bool dirty = map_writable && (!tracked || vmf.write());
  // The mapping counts before the page is dirtied: reclaim's page_mkclean,
  // which cannot see a PTE being installed, then finds fewer PTEs than the
  // count and keeps the page dirty.
  page.mapcount.fetch_add(1, std::memory_order_acq_rel);  // with this fault's reference
  if (dirty) obj.MarkDirty(page);
  machine_->AddPoolVmas(2);
  if (!(tracked ? host.MapPoolTracked(page_range, pool.fd(), page.pool_off, prot)
                : host.MapPool(page_range, pool.fd(), page.pool_off, prot, map_writable))) {
    const int err = errno;
    page.mapcount.fetch_sub(1, std::memory_order_acq_rel);
    machine_->PutPage(pfn);
    host.Reserve(page_range);
    if (!host.prot_encodes_ptes()) host.Protect(page_range, prot);
    unclaim();
    return err == ENOMEM ? kFaultHostLimit : kFaultSigbus;
  }
  {
    SpinLockHolder l(pt.Ptl(vmf.address));
    vmf.pte->store(Pte::Anon(pfn, map_writable, /*dirty=*/map_writable && !tracked).raw(),
                   std::memory_order_release);
  }
  vmf.as->AddRssAnon(1);
  machine_->vmstat().Add(vmf.write() ? VmEvent::k_pgfault_write : VmEvent::k_pgfault_read);
  NoteResolution(FaultResolution::kNewPage);
  return kFaultOk;
}

unsigned AnonFaultHandler::DoObjectFaultAround(VmFault& vmf, AddrRange window) {
  // Linux: do_fault_around() -> filemap_map_pages(), with the file's
  // readahead: the pages of the aligned window not mapped here yet are
  // mapped by this fault, a file's uncached ones read first (one read per
  // run, ShmemObject::ReadPages). Shared memory maps only the pages it holds (Linux's
  // fault-around never allocates) and makes the faulting one.
  const Vma& vma = *vmf.vma;
  ShmemObject& obj = *vma.file;
  MemMap& mem_map = machine_->mem_map();
  HostMmu& host = machine_->host();
  FramePool& pool = *machine_->frame_pool();
  const Prot prot = VmFlagsToProt(vma.vm_flags);
  // Read faults map a file's pages read-only (clean, seed 001), or
  // writable with the host tracking their writes (dirty tracking "async");
  // shared memory's shared writable mappings map them writable at once.
  const bool tracked = machine_->Tracked(vma);
  const bool map_writable =
      (vma.vm_flags & kVmShared) && vma.writable() && (tracked || !obj.backed());
  const bool dirty = map_writable && !tracked;
  auto index_of = [&](VirtAddr a) { return vma.pgoff + ((a - vma.start) >> kPageShift); };
  // Not past the object's end (the faulting page is inside it).
  const uint64_t end_index = obj.nr_pages();
  window.end = std::min<VirtAddr>(window.end, vma.start + ((end_index - vma.pgoff) << kPageShift));
  const AddrRange run = ClaimNoneRun(vmf, window);
  if (run.empty()) return kFaultRetry;
  constexpr int kMax = 64;
  const int n = static_cast<int>(run.nr_pages());
  EMU_BUG_ON(n > kMax);
  const int self = static_cast<int>((vmf.address - run.start) >> kPageShift);
  Pfn pfns[kMax];     // the page for each PTE of the run, with this fault's reference, or 0
  bool fresh[kMax];   // a frame made here, not in the cache yet
  int need = 0;
  for (int i = 0; i < n; i++) {
    pfns[i] = obj.GetPage(index_of(run.start + (uint64_t(i) << kPageShift)));
    fresh[i] = false;
    if (ToU64(pfns[i]) == 0 && (obj.backed() || i == self)) need++;
  }
  // Gives up: every reference back, every claimed PTE none again.
  auto abandon = [&](unsigned ret) {
    for (int i = 0; i < n; i++) {
      if (ToU64(pfns[i]) != 0) machine_->PutPage(pfns[i]);
    }
    PublishRun(vmf, run, [](VirtAddr) { return Pte(); });
    return ret;
  };
  Pfn frames[kMax];
  const bool self_cached = ToU64(pfns[self]) != 0;
  const int got = need > 0 ? machine_->AllocFrames(vmf.as, frames, need, self_cached ? 0 : 1) : 0;
  if (!self_cached && got == 0) return abandon(kFaultOom);
  // The frames: the faulting page's first, then its neighbours in order.
  int used = 0;
  auto make = [&](int i) {
    if (used >= got) return;
    const Pfn f = frames[used++];
    const VirtAddr addr = run.start + (uint64_t(i) << kPageShift);
    MakeObjectPage(mem_map, pool, obj, f, index_of(addr), addr);
    pfns[i] = f;
    fresh[i] = true;
  };
  if (!self_cached) make(self);
  for (int i = 0; i < n && obj.backed(); i++) {
    if (i != self && ToU64(pfns[i]) == 0) make(i);
  }
  bool self_failed = false;
  if (obj.backed()) {
    uint64_t idx[kMax];
    void* dst[kMax];
    int which[kMax];
    bool ok[kMax];
    int k = 0;
    for (int i = 0; i < n; i++) {
      if (!fresh[i]) continue;
      const Page& page = mem_map.page(pfns[i]);
      idx[k] = page.index;
      dst[k] = pool.writable_view(page.pool_off);
      which[k++] = i;
    }
    obj.ReadPages(idx, dst, k, ok);
    for (int j = 0; j < k; j++) {
      if (ok[j]) continue;
      const int i = which[j];
      machine_->FreePage(pfns[i]);
      pfns[i] = Pfn{0};
      fresh[i] = false;
      self_failed |= i == self;  // Linux: a read error in filemap_fault is SIGBUS
    }
  }
  // Into the cache: the allocation's reference is the cache's, and the
  // fault takes its own. A page another fault cached first is used instead.
  for (int i = 0; i < n; i++) {
    if (!fresh[i]) continue;
    const Pfn f = pfns[i];
    Page& page = mem_map.page(f);
    if (obj.Add(page.index, f) != f) {
      const uint64_t index = page.index;
      machine_->FreePage(f);
      pfns[i] = obj.GetPage(index);
      continue;
    }
    CachedNewPage(*machine_, obj, f);
  }
  if (self_failed) {
    NoteResolution(FaultResolution::kSigbus);
    return abandon(kFaultSigbus);
  }
  if (ToU64(pfns[self]) == 0) return abandon(kFaultRetry);
  // Counted as mapped before any page is dirtied (see DoSharedPage).
  for (int i = 0; i < n; i++) {
    if (ToU64(pfns[i]) == 0) continue;
    Page& page = mem_map.page(pfns[i]);
    page.mapcount.fetch_add(1, std::memory_order_acq_rel);
    if (dirty) obj.MarkDirty(page);
  }
  // One host mapping per stretch of the run that is contiguous in the pool
  // (new pages sit at their identity offsets, so a run read in is one).
  unsigned self_err = kFaultOk;
  int mapped = 0;
  for (int a = 0; a < n;) {
    if (ToU64(pfns[a]) == 0) {
      a++;
      continue;
    }
    int b = a + 1;
    while (b < n && ToU64(pfns[b]) != 0 &&
           mem_map.page(pfns[b]).pool_off == mem_map.page(pfns[b - 1]).pool_off + kPageSize) {
      b++;
    }
    const AddrRange r{run.start + (uint64_t(a) << kPageShift), run.start + (uint64_t(b) << kPageShift)};
    machine_->AddPoolVmas(2);
    const uint64_t off = mem_map.page(pfns[a]).pool_off;
    if (tracked ? host.MapPoolTracked(r, pool.fd(), off, prot)
                : host.MapPool(r, pool.fd(), off, prot, map_writable)) {
      mapped += b - a;
    } else {
      const int err = errno;
      for (int i = a; i < b; i++) {
        mem_map.page(pfns[i]).mapcount.fetch_sub(1, std::memory_order_acq_rel);
        machine_->PutPage(pfns[i]);
        if (i == self) self_err = err == ENOMEM ? kFaultHostLimit : kFaultSigbus;
        pfns[i] = Pfn{0};
      }
      host.Reserve(r);
      if (!host.prot_encodes_ptes()) host.Protect(r, prot);
    }
    a = b;
  }
  PublishRun(vmf, run, [&](VirtAddr a) {
    const Pfn pfn = pfns[(a - run.start) >> kPageShift];
    return ToU64(pfn) == 0 ? Pte() : Pte::Anon(pfn, map_writable, dirty);
  });
  if (self_err != kFaultOk) return self_err;
  vmf.as->AddRssAnon(mapped);
  VmStat& vmstat = machine_->vmstat();
  vmstat.Add(VmEvent::k_pgfault_read);
  vmstat.Add(VmEvent::k_fault_around_pages, static_cast<uint64_t>(mapped - 1));
  NoteResolution(FaultResolution::kNewPage);
  return kFaultOk;
}

unsigned AnonFaultHandler::CopyObjectPage(VmFault& vmf, uint64_t locked, bool mapped) {
  // The PTE at vmf.address is claimed (kLocked). The object's page `locked`
  // names goes from this PTE (its mapping and reference), and an exclusive
  // copy in place takes it: the copy is an ordinary anonymous page.
  const Vma& vma = *vmf.vma;
  const Pte was = Pte(locked & ~Pte::kLocked);
  const Pfn old = was.pfn();
  MemMap& mem_map = machine_->mem_map();
  HostMmu& host = machine_->host();
  PageTable& pt = vmf.as->page_table();
  const Prot prot = VmFlagsToProt(vma.vm_flags);
  const AddrRange page_range{vmf.address, vmf.address + kPageSize};
  const void* src = machine_->frame_pool()->view(mem_map.page(old).pool_off);
  auto give_back = [&](unsigned ret) {
    SpinLockHolder l(pt.Ptl(vmf.address));
    vmf.pte->store(mapped ? was.raw() : 0, std::memory_order_release);
    if (!mapped) {
      mem_map.page(old).mapcount.fetch_sub(1, std::memory_order_acq_rel);
      machine_->PutPage(old);
    }
    return ret;
  };
  Pfn copy;
  if (machine_->AllocFrames(vmf.as, &copy, 1, 1) != 1) return give_back(kFaultOom);
  // A forced write into a read-only private mapping (FOLL_FORCE): the copy
  // is ours, its PTE stays read-only.
  const bool writable = vma.writable();
  const bool ok = mapped ? host.ReplaceWithCopy(page_range, src, prot)
                         : host.InstallCopy(page_range, src, prot, writable);
  if (!ok) {
    const int err = errno;
    machine_->FreePage(copy);
    return give_back(err == ENOMEM ? kFaultHostLimit : kFaultSigbus);
  }
  if (mapped && !writable) host.WriteProtect(page_range, prot);
  AddNewAnonRmap(mem_map.page(copy), vmf.as, vma, vmf.address);
  if (PageReclaim* reclaim = machine_->reclaim()) reclaim->LruAdd(copy);
  {
    SpinLockHolder l(pt.Ptl(vmf.address));
    vmf.pte->store(Pte::Anon(copy, writable, /*dirty=*/true).raw(), std::memory_order_release);
  }
  mem_map.page(old).mapcount.fetch_sub(1, std::memory_order_acq_rel);
  machine_->PutPage(old);
  if (!mapped) vmf.as->AddRssAnon(1);
  machine_->vmstat().Add(VmEvent::k_cow_page);
  machine_->vmstat().Add(VmEvent::k_pgalloc);
  NoteResolution(FaultResolution::kCow);
  return kFaultOk;
}

AddrRange AnonFaultHandler::ClaimLazyFreeRun(VmFault& vmf, uint64_t orig) {
  MemMap& mem_map = machine_->mem_map();
  // A write-protected, clean, lazily freed page in place, mapped here alone.
  auto lazy = [&](uint64_t raw) {
    Pte p(raw);
    if (!p.present() || p.special() || p.locked() || p.write() || p.dirty()) return false;
    const Page& page = mem_map.page(p.pfn());
    return page.Test(kPgLazyFree) && !page.Test(kPgPool | kPgSwapCache) && !page.MaybePinned();
  };
  const int nr = machine_->options().fault_around_pages;
  // Most write-protect faults are not on a lazily freed page: decided
  // without the ptl (the check below repeats under it).
  if (nr <= 1 || !lazy(orig)) return {};
  VirtAddr wstart = vmf.address & ~(uintptr_t{static_cast<unsigned>(nr)} * kPageSize - 1);
  VirtAddr leaf = vmf.address & ~(PageTable::kLeafSpan - 1);
  AddrRange window = AddrRange{wstart, wstart + nr * kPageSize}
                         .Intersect(vmf.vma->range())
                         .Intersect({leaf, leaf + PageTable::kLeafSpan});
  PageTable& pt = vmf.as->page_table();
  SpinLockHolder l(pt.Ptl(vmf.address));
  if (Load(vmf.pte) != orig || !lazy(orig)) return {};
  std::atomic<uint64_t>* base = vmf.pte - ((vmf.address - window.start) >> kPageShift);
  auto entry = [&](VirtAddr a) { return base + ((a - window.start) >> kPageShift); };
  VirtAddr start = vmf.address, end = vmf.address + kPageSize;
  while (start > window.start && lazy(Load(entry(start - kPageSize)))) start -= kPageSize;
  while (end < window.end && lazy(Load(entry(end)))) end += kPageSize;
  if (end - start == kPageSize) return {};  // alone: the ordinary reuse below
  for (VirtAddr a = start; a < end; a += kPageSize) {
    entry(a)->store(Load(entry(a)) | Pte::kLocked, std::memory_order_relaxed);
  }
  return {start, end};
}

// Gives back the claimed PTEs of `run` other than the faulting one and
// returns the one-page run that is still claimed.
static AddrRange ShrinkToFaultingPage(VmFault& vmf, AddrRange run) {
  PublishRun(vmf, run, [&](VirtAddr a) {
    return a == vmf.address ? Pte::InstallLocked() : Pte();
  });
  return {vmf.address, vmf.address + kPageSize};
}

// Sets the PTEs of a claimed run: `make(a)` gives each one's final value.
template <typename Make>
static void PublishRun(VmFault& vmf, AddrRange run, Make&& make) {
  PageTable& pt = vmf.as->page_table();
  std::atomic<uint64_t>* base = vmf.pte - ((vmf.address - run.start) >> kPageShift);
  SpinLockHolder l(pt.Ptl(vmf.address));
  for (VirtAddr a = run.start; a < run.end; a += kPageSize) {
    base[(a - run.start) >> kPageShift].store(make(a).raw(), std::memory_order_release);
  }
}

bool AnonFaultHandler::OverHostBudget() const {
  return machine_->host().prot_encodes_ptes() &&
         machine_->host_vma_estimate().load(std::memory_order_relaxed) > Machine::kHostVmaBudget;
}

void AnonFaultHandler::AccountHostBoundaries(const VmFault& vmf, AddrRange run, Prot old_prot,
                                             Prot new_prot) {
  if (!machine_->host().prot_encodes_ptes()) return;  // no shared atomic on the uffd path
  machine_->host_vma_estimate().fetch_add(BoundaryDelta(vmf, run, old_prot, new_prot),
                                          std::memory_order_relaxed);
}

int AnonFaultHandler::BoundaryDelta(const VmFault& vmf, AddrRange run, Prot old_prot,
                                    Prot new_prot) {
  auto prot_at = [&](VirtAddr a) -> int {
    if (!vmf.vma->range().Contains(a)) return -1;
    std::atomic<uint64_t>* e = vmf.as->page_table().Walk(a, false);
    return vmf.as->HostProtFor(*vmf.vma, Pte(e ? Load(e) : 0));
  };
  int delta = 0;
  for (int neighbour : {prot_at(run.start - kPageSize), prot_at(run.end)}) {
    if (neighbour == -1) continue;  // a VMA edge is a boundary anyway
    delta += (neighbour != new_prot) - (neighbour != old_prot);
  }
  return delta;
}

unsigned AnonFaultHandler::HostFailure(VmFault& vmf, int err) {
  if (err != ENOMEM) return kFaultSigbus;
  if (machine_->host().prot_encodes_ptes()) return MergeHostBlock(vmf);
  return kFaultHostLimit;
}

unsigned AnonFaultHandler::MergeHostBlock(VmFault& vmf) {
  const Vma& vma = *vmf.vma;
  VirtAddr leaf = vmf.address & ~(PageTable::kLeafSpan - 1);
  AddrRange block = AddrRange{leaf, leaf + PageTable::kLeafSpan}.Intersect(vma.range());
  std::atomic<uint64_t>* base = vmf.pte - ((vmf.address - block.start) >> kPageShift);
  const size_t nr = block.nr_pages();
  const bool writable = vma.writable();
  MemMap& mem_map = machine_->mem_map();
  // Claim what changes: missing PTEs, and zero pages when the block becomes
  // writable. PTEs another thread is installing are left to it. Two bitmaps
  // and a chain of frames through Page::next_free (unused while a page is
  // allocated) keep the signal-stack footprint small.
  uint64_t claimed[PageTable::kEntriesPerTable / 64] = {};
  uint64_t was_zero[PageTable::kEntriesPerTable / 64] = {};
  auto test = [](const uint64_t* bits, size_t i) { return (bits[i / 64] >> (i % 64)) & 1; };
  size_t need = 0;
  {
    SpinLockHolder l(vmf.as->page_table().Ptl(vmf.address));
    for (size_t i = 0; i < nr; i++) {
      Pte pte(Load(&base[i]));
      if (!(pte.none() || (writable && pte.present() && pte.special()))) continue;
      claimed[i / 64] |= uint64_t{1} << (i % 64);
      if (pte.special()) was_zero[i / 64] |= uint64_t{1} << (i % 64);
      base[i].store(Pte::InstallLocked().raw(), std::memory_order_relaxed);
      need++;
    }
  }
  uint64_t chain = 0;  // pfns linked through Page::next_free; 0 ends it
  size_t got = 0;
  Pfn pfn;
  while (writable && got < need && machine_->AllocFrames(vmf.as, &pfn, 1, 1) == 1) {
    mem_map.page(pfn).next_free = static_cast<uint32_t>(chain);
    chain = ToU64(pfn);
    got++;
  }
  const Prot prot = VmFlagsToProt(vma.vm_flags);
  const Prot block_prot = writable ? prot : PROT_READ | (prot & PROT_EXEC);
  // Boundaries inside the block disappear; its edges may gain one each.
  int inside = 0;
  Prot prev = -1;
  for (size_t i = 0; i < nr; i++) {
    Prot p = test(claimed, i) ? (test(was_zero, i) ? PROT_READ : PROT_NONE)
                              : vmf.as->HostProtFor(vma, Pte(Load(&base[i])));
    if (prev != -1 && p != prev) inside++;
    prev = p;
  }
  bool ok = (!writable || got == need) && machine_->host().Protect(block, block_prot);
  int64_t new_anon = 0, zero_delta = 0;
  {
    SpinLockHolder l(vmf.as->page_table().Ptl(vmf.address));
    for (size_t i = 0; i < nr; i++) {
      if (!test(claimed, i)) continue;
      if (!ok) {
        base[i].store(test(was_zero, i) ? Pte::ZeroPage().raw() : 0, std::memory_order_release);
      } else if (!writable) {
        base[i].store(Pte::ZeroPage().raw(), std::memory_order_release);
        zero_delta++;
      } else {
        Pfn p{chain};
        Page& page = mem_map.page(p);
        chain = page.next_free;
        page.next_free = 0;
        AddNewAnonRmap(page, vmf.as, vma, block.start + i * kPageSize);
        base[i].store(Pte::Anon(p, true, false).raw(), std::memory_order_release);
        LruAddRun(machine_, &p, 1);
        new_anon++;
        if (test(was_zero, i)) zero_delta--;
      }
    }
  }
  if (!ok) {
    while (chain != 0) {
      Pfn p{chain};
      chain = mem_map.page(p).next_free;
      mem_map.page(p).next_free = 0;
      machine_->FreePage(p);
    }
    return got < need ? kFaultOom : kFaultHostLimit;
  }
  vmf.as->AddRssAnon(new_anon);
  vmf.as->AddZeroPtes(zero_delta);
  machine_->host_vma_estimate().fetch_add(2 - inside, std::memory_order_relaxed);
  machine_->vmstat().Add(VmEvent::k_pgalloc, new_anon);
  machine_->vmstat().Add(VmEvent::k_host_vma_merges);
  return kFaultOk;
}

unsigned AnonFaultHandler::DoAnonymousPage(VmFault& vmf) {
  const bool use_zero = !vmf.write() && !(vmf.flags & kFaultNoZero) &&
                        machine_->options().zero_page && vmf.vma->use_zero_page();
  // Write fault-around only for a thread that streams forward (readahead's
  // sequential detection); reads use Linux's aligned window always.
  std::atomic<VirtAddr>& stream = vmf.as->FaultStream(FaultingTid());
  const bool sequential = (vmf.flags & kFaultPopulate) ||
                          stream.load(std::memory_order_relaxed) == vmf.address;
  if (OverHostBudget() && !(vmf.flags & kFaultPopulate)) return MergeHostBlock(vmf);
  AddrRange run = ClaimNoneRun(vmf, FaultAroundRange(vmf, sequential));
  if (run.empty()) return kFaultRetry;
  stream.store(run.end, std::memory_order_relaxed);
  return use_zero ? InstallZeroRun(vmf, run) : InstallAnonRun(vmf, run);
}

unsigned AnonFaultHandler::InstallZeroRun(VmFault& vmf, AddrRange run) {
  HostMmu& host = machine_->host();
  VmStat& vmstat = machine_->vmstat();
  const Prot prot = VmFlagsToProt(vmf.vma->vm_flags);
  bool ok = host.InstallZero(run, prot);
  if (!ok && errno == ENOENT && run.nr_pages() > 1) {
    // The run spans two host VMAs that did not merge (e.g. different
    // anon_vmas after MAP_FIXED): userfaultfd installs within one VMA only.
    // Fall back to the faulting page.
    run = ShrinkToFaultingPage(vmf, run);
    ok = host.InstallZero(run, prot);
  }
  if (!ok) {
    int err = errno;
    PublishRun(vmf, run, [](VirtAddr) { return Pte(); });
    return HostFailure(vmf, err);
  }
  PublishRun(vmf, run, [](VirtAddr) { return Pte::ZeroPage(); });
  AccountHostBoundaries(vmf, run, PROT_NONE, PROT_READ | (prot & PROT_EXEC));
  vmf.as->AddZeroPtes(run.nr_pages());
  vmstat.Add(VmEvent::k_pgfault_read);
  vmstat.Add(VmEvent::k_zero_page_map, run.nr_pages());
  NoteResolution(FaultResolution::kZeroPage);
  vmstat.Add(VmEvent::k_fault_around_pages, run.nr_pages() - 1);
  return kFaultOk;
}

unsigned AnonFaultHandler::InstallAnonRun(VmFault& vmf, AddrRange run) {
  HostMmu& host = machine_->host();
  VmStat& vmstat = machine_->vmstat();
  const Prot prot = VmFlagsToProt(vmf.vma->vm_flags);
  const size_t nr = run.nr_pages();
  // Allocate frames first, shrinking the run to what the machine can give
  // (the faulting page must get one).
  MemMap& mem_map = machine_->mem_map();
  Pfn pfns[kMaxRun];
  const size_t first = (vmf.address - run.start) >> kPageShift;
  size_t got = static_cast<size_t>(machine_->AllocFrames(vmf.as, pfns, static_cast<int>(nr), 1));
  if (got < nr) {
    // Give the faulting page priority: keep [first, first + got) if possible.
    size_t keep_start = first + got <= nr ? first : nr - got;
    if (got == 0) {
      PublishRun(vmf, run, [](VirtAddr) { return Pte(); });
      return kFaultOom;
    }
    AddrRange kept{run.start + keep_start * kPageSize, run.start + (keep_start + got) * kPageSize};
    PublishRun(vmf, run, [&](VirtAddr a) { return kept.Contains(a) ? Pte::InstallLocked() : Pte(); });
    run = kept;
  }
  const bool writable = vmf.vma->writable();
  bool installed = host.InstallZeroed(run, prot);
  if (!installed && errno == ENOENT && run.nr_pages() > 1) {
    // As above: keep the faulting page's frame, free the others.
    size_t keep = (vmf.address - run.start) >> kPageShift;
    for (size_t i = 0; i < run.nr_pages(); i++) {
      if (i != keep) machine_->FreePage(pfns[i]);
    }
    pfns[0] = pfns[keep];
    run = ShrinkToFaultingPage(vmf, run);
    installed = host.InstallZeroed(run, prot);
  }
  if (!installed) {
    int err = errno;
    for (size_t i = 0; i < run.nr_pages(); i++) machine_->FreePage(pfns[i]);
    PublishRun(vmf, run, [](VirtAddr) { return Pte(); });
    return HostFailure(vmf, err);
  }
  PublishRun(vmf, run, [&](VirtAddr a) {
    Pfn pfn = pfns[(a - run.start) >> kPageShift];
    Page& page = mem_map.page(pfn);
    AddNewAnonRmap(page, vmf.as, *vmf.vma, a);
    return Pte::Anon(pfn, writable, vmf.write());
  });
  LruAddRun(machine_, pfns, run.nr_pages());
  AccountHostBoundaries(vmf, run, PROT_NONE, writable ? prot : prot & ~PROT_WRITE);
  vmf.as->AddRssAnon(run.nr_pages());
  vmstat.Add(vmf.write() ? VmEvent::k_pgfault_write : VmEvent::k_pgfault_read);
  vmstat.Add(VmEvent::k_pgalloc, run.nr_pages());
  NoteResolution(FaultResolution::kNewPage);
  vmstat.Add(VmEvent::k_fault_around_pages, run.nr_pages() - 1);
  return kFaultOk;
}

// Replaces the PTE at vmf.address, which still holds `orig`, by a real page.
// `host_op` makes the host agree; returns false on failure.
template <typename HostOp>
static unsigned ReplaceZeroPage(Machine* machine, VmFault& vmf, uint64_t orig, bool dirty,
                                HostOp&& host_op) {
  MemMap& mem_map = machine->mem_map();
  Pfn pfn;
  if (machine->AllocFrames(vmf.as, &pfn, 1, 1) != 1) return kFaultOom;
  PageTable& pt = vmf.as->page_table();
  {
    SpinLockHolder l(pt.Ptl(vmf.address));
    if (Load(vmf.pte) != orig) {
      machine->FreePage(pfn);
      return kFaultRetry;
    }
    // Locked, keeping the zero-page bits: a forked child that copies it now
    // puts the zero-page PTE back (Machine::ChildEarlyIfPending).
    vmf.pte->store(Pte(orig).WithLocked().raw(), std::memory_order_relaxed);
  }
  if (!host_op()) {
    int err = errno;
    machine->FreePage(pfn);
    SpinLockHolder l(pt.Ptl(vmf.address));
    vmf.pte->store(orig, std::memory_order_release);
    return err == ENOMEM ? kFaultHostLimit : kFaultSigbus;
  }
  Page& page = mem_map.page(pfn);
  AddNewAnonRmap(page, vmf.as, *vmf.vma, vmf.address);
  {
    SpinLockHolder l(pt.Ptl(vmf.address));
    vmf.pte->store(Pte::Anon(pfn, vmf.vma->writable(), dirty).raw(), std::memory_order_release);
  }
  LruAddRun(machine, &pfn, 1);
  vmf.as->AddZeroPtes(-1);
  vmf.as->AddRssAnon(1);
  machine->vmstat().Add(VmEvent::k_pgalloc);
  return kFaultOk;
}

unsigned AnonFaultHandler::DoWpPage(VmFault& vmf, uint64_t orig) {
  Pte pte(orig);
  HostMmu& host = machine_->host();
  const Prot prot = VmFlagsToProt(vmf.vma->vm_flags);
  AddrRange page{vmf.address, vmf.address + kPageSize};
  machine_->vmstat().Add(VmEvent::k_pgfault_wp);
  if (pte.special()) {
    if (vmf.flags & kFaultPopulate) return BreakZeroPage(vmf, orig);
    if (OverHostBudget()) return MergeHostBlock(vmf);
    // Copy-on-write from the zero page: the software PTE gets a fresh page;
    // the host lets the write through and the kernel copies the zero page on
    // the retried access (cheaper than zap + install, see docs/DESIGN.md).
    unsigned ret = ReplaceZeroPage(machine_, vmf, orig, /*dirty=*/true,
                                   [&] { return host.MakeWritable(page, prot); });
    if (ret == kFaultOk) {
      machine_->vmstat().Add(VmEvent::k_cow_zero);
      NoteResolution(FaultResolution::kCowZero);
      AccountHostBoundaries(vmf, page, PROT_READ | (prot & PROT_EXEC), prot);
    }
    if (ret == kFaultHostLimit && host.prot_encodes_ptes()) return MergeHostBlock(vmf);
    return ret;
  }
  if (!(vmf.flags & kFaultForce) && vmf.vma->writable()) {
    // A lazily freed page written again (MADV_FREE, then reuse): the
    // lazily freed neighbours in its aligned fault-around window are made
    // writable and dirty with it in one host call, as an allocator reusing
    // a chunk writes them next. They lose their laziness (reclaim will swap
    // them rather than drop them), as a page written again does; the kernel
    // takes no fault here at all (the hardware sets the dirty bit).
    AddrRange run = ClaimLazyFreeRun(vmf, orig);
    if (!run.empty()) {
      const bool ok = host.MakeWritable(run, prot);
      std::atomic<uint64_t>* base = vmf.pte - ((vmf.address - run.start) >> kPageShift);
      PublishRun(vmf, run, [&](VirtAddr a) {
        Pte was(Load(base + ((a - run.start) >> kPageShift)) & ~Pte::kLocked);
        return ok ? was.WithWrite(true).WithDirty().WithYoung(true) : was;
      });
      if (!ok) return kFaultSigbus;
      machine_->vmstat().Add(VmEvent::k_pgreuse, run.nr_pages());
      machine_->vmstat().Add(VmEvent::k_fault_around_pages, run.nr_pages() - 1);
      NoteResolution(FaultResolution::kReuse);
      return kFaultOk;
    }
  }
  // An exclusive page: reuse it, no copy. Linux: mm/memory.c do_wp_page()
  // as seed 002 has it: reuse when mapcount + swapcount is 1, decided
  // without needing the page lock, so a reclaim holding it at this moment
  // (or a pin) never forces a copy. A swap-cache page gives up its slot
  // here when it can (try_to_free_swap): it is about to differ from it.
  PageTable& pt = vmf.as->page_table();
  {
    SpinLockHolder l(pt.Ptl(vmf.address));
    if (Load(vmf.pte) != orig) return kFaultRetry;
    // Locked, keeping the page: a forked child that copies it now (another
    // thread may already write through the host) keeps the page, dirty.
    vmf.pte->store(pte.WithLocked().raw(), std::memory_order_relaxed);
  }
  // The PTE is claimed: the page can be neither unmapped nor freed now.
  Page& p = machine_->mem_map().page(pte.pfn());
  if (p.Test(kPgPool)) return WpPoolPage(vmf, orig);
  EMU_BUG_ON(p.mapcount.load(std::memory_order_relaxed) != 1);
  if (p.Test(kPgSwapCache) && !machine_->reclaim()->ReuseSwapPage(pte.pfn())) {
    // The slot has other users (swap PTEs of a forked address space): they
    // keep the slot's copy, and this page, clean until now, leaves the swap
    // cache and is this PTE's own (the copy Linux would make here exists
    // already, on the swap device).
    if (!machine_->reclaim()->DropSwapCache(pte.pfn())) {
      SpinLockHolder l(pt.Ptl(vmf.address));
      vmf.pte->store(orig, std::memory_order_release);
      return kFaultRetry;  // reclaim holds the page lock for a moment
    }
  }
  // A forced write (FOLL_FORCE) into a read-only VMA: the page is ours
  // now, and its PTE stays read-only.
  const bool writable = vmf.vma->writable();
  bool ok = !writable || host.MakeWritable(page, prot);
  {
    SpinLockHolder l(pt.Ptl(vmf.address));
    vmf.pte->store(ok ? pte.WithWrite(writable).WithDirty().WithYoung(true).raw() : orig,
                   std::memory_order_release);
  }
  if (!ok) return kFaultSigbus;
  machine_->vmstat().Add(VmEvent::k_pgreuse);
  NoteResolution(FaultResolution::kReuse);
  return kFaultOk;
}

unsigned AnonFaultHandler::WpPoolPage(VmFault& vmf, uint64_t orig) {
  Pte pte(orig);
  HostMmu& host = machine_->host();
  MemMap& mem_map = machine_->mem_map();
  PageTable& pt = vmf.as->page_table();
  const Prot prot = VmFlagsToProt(vmf.vma->vm_flags);
  AddrRange range{vmf.address, vmf.address + kPageSize};
  auto publish = [&](uint64_t v) {
    SpinLockHolder l(pt.Ptl(vmf.address));
    vmf.pte->store(v, std::memory_order_release);
  };
  Page& page = mem_map.page(pte.pfn());
  // Seed 002: reuse when this is the only mapping, decided by mapcount
  // alone (plus, for a frame in the swap cache, the slot's other users:
  // can_reuse_swap_page). A frame's mapcount only grows by a fork of an
  // address space that maps it, and this one cannot fork while its fault
  // holds mmap_lock.
  const bool writable = vmf.vma->writable();  // not with a forced write
  if (page.mapcount.load(std::memory_order_acquire) == 1 &&
      (!page.Test(kPgSwapCache) || machine_->reclaim()->ReuseSwapPage(pte.pfn()))) {
    bool ok = !writable || host.MakeWritable(range, prot);
    publish(ok ? pte.WithWrite(writable).WithDirty().WithYoung(true).raw() : orig);
    if (!ok) return kFaultSigbus;
    machine_->vmstat().Add(VmEvent::k_pgreuse);
    NoteResolution(FaultResolution::kReuse);
    return kFaultOk;
  }
  // Linux: mm/memory.c wp_page_copy(): this PTE gets an exclusive copy,
  // which lives in place again (reclaimable); the frame stays with the
  // others. Past the host VMA budget, the whole block's shared frames are
  // copied now, so that the copies merge into one host mapping.
  if (machine_->OverPoolVmaBudget()) UnsharePoolBlock(vmf);
  unsigned ret = CopyPoolPage(*vmf.as, *vmf.vma, vmf.address, vmf.pte, orig);
  if (ret == kFaultOk) NoteResolution(FaultResolution::kCow);
  return ret;
}

unsigned AnonFaultHandler::CopyPoolPage(AddressSpace& as, const Vma& vma, VirtAddr addr,
                                        std::atomic<uint64_t>* e, uint64_t orig) {
  Pte pte(orig);
  HostMmu& host = machine_->host();
  MemMap& mem_map = machine_->mem_map();
  PageTable& pt = as.page_table();
  const Prot prot = VmFlagsToProt(vma.vm_flags);
  AddrRange range{addr, addr + kPageSize};
  auto publish = [&](uint64_t v) {
    SpinLockHolder l(pt.Ptl(addr));
    e->store(v, std::memory_order_release);
  };
  Page& page = mem_map.page(pte.pfn());
  Pfn pfn;
  if (machine_->AllocFrames(&as, &pfn, 1, 1) != 1) {
    publish(orig);
    return kFaultOom;
  }
  FramePool* pool = machine_->frame_pool();
  if (!host.ReplaceWithCopy(range, pool->view(page.pool_off), prot)) {
    int err = errno;
    machine_->FreePage(pfn);
    // Put the shared frame back where it was, write-protected.
    bool back = host.MapPool(range, pool->fd(), page.pool_off, prot, /*writable=*/false);
    publish(orig);
    return back && err == ENOMEM ? kFaultHostLimit : kFaultSigbus;
  }
  machine_->AddPoolVmas(2);
  Page& copy = mem_map.page(pfn);
  AddNewAnonRmap(copy, &as, vma, addr);
  publish(Pte::Anon(pfn, vma.writable(), /*dirty=*/true).raw());
  LruAddRun(machine_, &pfn, 1);
  // Linux: folio_remove_rmap_pte() + folio_put() of the old frame, after
  // this address stopped mapping it.
  page.mapcount.fetch_sub(1, std::memory_order_acq_rel);
  machine_->PutPage(pte.pfn());
  machine_->vmstat().Add(VmEvent::k_cow_page);
  machine_->vmstat().Add(VmEvent::k_pgalloc);
  return kFaultOk;
}

void AnonFaultHandler::UnsharePoolBlock(VmFault& vmf) {
  // The faulting PTE is claimed by the caller; the others in its leaf table
  // and VMA that map frames in the pool (not pinned ones: they keep their
  // identity) are claimed and copied one by one. Each copy merges with the
  // copy before it into one host VMA.
  MemMap& mem_map = machine_->mem_map();
  PageTable& pt = vmf.as->page_table();
  VirtAddr leaf = vmf.address & ~(PageTable::kLeafSpan - 1);
  AddrRange block = AddrRange{leaf, leaf + PageTable::kLeafSpan}.Intersect(vmf.vma->range());
  std::atomic<uint64_t>* base = vmf.pte - ((vmf.address - block.start) >> kPageShift);
  int copied = 0;
  for (VirtAddr a = block.start; a < block.end; a += kPageSize) {
    if (a == vmf.address) continue;
    std::atomic<uint64_t>* e = base + ((a - block.start) >> kPageShift);
    uint64_t orig;
    {
      SpinLockHolder l(pt.Ptl(a));
      Pte pte(Load(e));
      if (!pte.present() || pte.special() || pte.locked()) continue;
      const Page& page = mem_map.page(pte.pfn());
      if (!page.Test(kPgPool) || page.MaybePinned() || page.Test(kPgSwapCache)) continue;
      orig = pte.raw();
      e->store(pte.WithLocked().raw(), std::memory_order_relaxed);
    }
    if (CopyPoolPage(*vmf.as, *vmf.vma, a, e, orig) != kFaultOk) break;
    copied++;
  }
  machine_->vmstat().Add(VmEvent::k_pool_unshare_blocks);
  machine_->ResyncPoolVmas();
  (void)copied;
}

unsigned AnonFaultHandler::BreakZeroPage(VmFault& vmf, uint64_t orig) {
  HostMmu& host = machine_->host();
  const Prot prot = VmFlagsToProt(vmf.vma->vm_flags);
  AddrRange page{vmf.address, vmf.address + kPageSize};
  return ReplaceZeroPage(machine_, vmf, orig, vmf.write(),
                         [&] { return host.Zap(page) && host.InstallZeroed(page, prot); });
}

}  // namespace emu
