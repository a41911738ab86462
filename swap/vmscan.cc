// Reclaim: the lists, isolation, shrink_page_list, kswapd and direct reclaim.
// Swap-in and the swap cache's fault-side rules are in swap_in.cc.
#include "swap/vmscan.h"

#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <new>

#include "absl/strings/str_cat.h"
#include "emu/checksum.h"
#include "emu/log.h"
#include "emu/mm.h"
#include "emu/pool.h"
#include "emu/status.h"
#include "emu/sys.h"

namespace emu {

// One isolated page on its way through ShrinkList.
struct Vmscan::Victim {
  Pfn pfn;
  AddressSpace* as;
  VirtAddr addr;
  enum State : uint8_t {
    kSkip,      // nothing more to do here (already put back or released)
    kClean,     // clean swap-cache page: drop without I/O
    kVerify,    // checksummed swap-cache page: clean if its checksum matches
    kWrite,     // written out to `slot`
    kWriteErr,  // the write failed
    kDiscardVolatile,  // in a volatile VMA (seed 003): dropped, no I/O
    kDiscardLazy,      // lazily freed (MADV_FREE) and clean: dropped, no I/O
  } state;
  enum Verdict : uint8_t {
    kKeep,      // state says what happens
    kActivate,  // referenced: back to the active list (state kSkip)
    kRotate,    // busy or nowhere to write: back to the inactive list (state kSkip)
  } verdict;
  uint64_t slot;
  uint64_t pte;   // the PTE value reclaim left (to detect any change since)
  uint64_t orig;  // kWrite, kVerify: the PTE before reclaim write-protected it
  bool avoided;   // a discard: the page would have been written to swap
};

namespace {

constexpr int kBatch = 64;  // = SWAP_CLUSTER_MAX * 2

inline uint64_t Load(std::atomic<uint64_t>* e) { return e->load(std::memory_order_acquire); }

// Shared memory's pages stay off the lists (it is not swapped); a file's
// pages are on them.
inline bool OffLists(const Page& page) { return page.Test(kPgShmem) && !page.Test(kPgFile); }

// Whether a page reclaim puts back belongs on a list: a mapped page, or a
// file's page while its cache holds it (mapped or not; Linux keeps unmapped
// page cache on the file LRU).
inline bool Listed(const Page& page) {
  if (page.Test(kPgFile)) return page.refcount.load(std::memory_order_relaxed) > 1;
  return !page.Test(kPgShmem) && page.mapcount.load(std::memory_order_relaxed) > 0;
}

void FutexWaitTimeout(std::atomic<uint32_t>* word, uint32_t expected, long ns) {
  timespec ts{0, ns};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, &ts,
          nullptr, 0);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Vmscan>> Vmscan::Create(Machine* machine) {
  const MachineOptions& o = machine->options();
  std::unique_ptr<SwapDevice> swap;
  if (!o.no_swap) {
    SwapOptions so;
    so.path = o.swap_path;
    so.dir = o.swap_dir;
    so.size_bytes = o.swap_bytes ? o.swap_bytes : std::max<uint64_t>(2 * o.mem_limit, 64 << 20);
    so.direct_io = o.swap_direct_io;
    so.queue_depth = o.swap_queue_depth;
    so.read_poll_us = o.swap_read_poll_us;
    auto dev = SwapDevice::Open(so);
    if (!dev.ok()) return dev.status();
    swap = std::move(*dev);
    Log(Component::kEmu).info("swap: {}", swap->description());
  }
  ReclaimPolicy policy = o.reclaim_policy == "fifo" ? ReclaimPolicy::kFifo : ReclaimPolicy::kLru;
  std::unique_ptr<Vmscan> v(new Vmscan(machine, std::move(swap), policy));
  v->nr_buffers_ = std::min<int>(kNrBuffers, 2 * static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)) + 4);
  size_t bytes = size_t{static_cast<size_t>(v->nr_buffers_)} * kMaxRa * kPageSize;
  void* p = sys::Mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return ErrnoError(errno, "swap-in buffers");
  v->buffers_ = static_cast<char*>(p);
  v->free_buffers_.store(v->nr_buffers_ == 64 ? ~uint64_t{0} : (uint64_t{1} << v->nr_buffers_) - 1);
  Vmscan* raw = v.get();
  if (int rc = StartThread(&v->kswapd_, [raw] { raw->KswapdLoop(); }); rc != 0) {
    return ErrnoError(rc, "reclaim: start kswapd");
  }
  v->kswapd_started_ = true;
  return v;
}

Vmscan::Vmscan(Machine* machine, std::unique_ptr<SwapDevice> swap, ReclaimPolicy policy)
    : machine_(machine),
      mem_map_(machine->mem_map()),
      swap_(std::move(swap)),
      policy_(policy),
      limit_pages_(machine->options().mem_limit >> kPageShift),
      // Linux sizes the watermarks from min_free_kbytes; ours are a fixed
      // share of the limit: kswapd starts below 1/32 free and stops at 1/16,
      // so that faults rarely have to reclaim (and write) themselves.
      wmark_low_(std::max<uint64_t>(64, limit_pages_ / 32)),
      wmark_high_(std::max<uint64_t>(128, limit_pages_ / 16)) {}

Vmscan::~Vmscan() {
  stop_.store(true);
  kswapd_wake_.fetch_add(1);
  FutexWakeAll(&kswapd_wake_);
  if (kswapd_started_) pthread_join(kswapd_, nullptr);
  if (buffers_ != nullptr) sys::Munmap(buffers_, size_t{static_cast<size_t>(nr_buffers_)} * kMaxRa * kPageSize);
}

uint64_t Vmscan::free_pages() const {
  uint64_t used = mem_map_.nr_used();
  return used >= limit_pages_ ? 0 : limit_pages_ - used;
}

// ---- The lists ----

void Vmscan::ListAddHead(List& l, Pfn pfn) {
  Page& p = mem_map_.page(pfn);
  uint32_t n = static_cast<uint32_t>(ToU64(pfn));
  p.lru_prev = 0;
  p.lru_next = l.head;
  if (l.head != 0) mem_map_.page(Pfn{l.head}).lru_prev = n;
  l.head = n;
  if (l.tail == 0) l.tail = n;
}

void Vmscan::ListAddTail(List& l, Pfn pfn) {
  Page& p = mem_map_.page(pfn);
  uint32_t n = static_cast<uint32_t>(ToU64(pfn));
  p.lru_next = 0;
  p.lru_prev = l.tail;
  if (l.tail != 0) mem_map_.page(Pfn{l.tail}).lru_next = n;
  l.tail = n;
  if (l.head == 0) l.head = n;
}

void Vmscan::ListDel(List& l, Pfn pfn) {
  Page& p = mem_map_.page(pfn);
  if (p.lru_prev != 0) {
    mem_map_.page(Pfn{p.lru_prev}).lru_next = p.lru_next;
  } else {
    l.head = p.lru_next;
  }
  if (p.lru_next != 0) {
    mem_map_.page(Pfn{p.lru_next}).lru_prev = p.lru_prev;
  } else {
    l.tail = p.lru_prev;
  }
  p.lru_prev = p.lru_next = 0;
}

void Vmscan::LruDelLocked(Page& page, Pfn pfn) {
  uint32_t f = page.flags.load(std::memory_order_relaxed);
  if (!(f & kPgLru)) return;
  if (f & kPgActive) {
    ListDel(active_, pfn);
    nr_active_.fetch_sub(1, std::memory_order_relaxed);
  } else {
    ListDel(inactive_, pfn);
    nr_inactive_.fetch_sub(1, std::memory_order_relaxed);
  }
  page.flags.fetch_and(~(kPgLru | kPgActive), std::memory_order_relaxed);
}

void Vmscan::LruAddLocked(Page& page, Pfn pfn, bool active) {
  ListAddHead(active ? active_ : inactive_, pfn);
  (active ? nr_active_ : nr_inactive_).fetch_add(1, std::memory_order_relaxed);
  page.flags.fetch_or(kPgLru | (active ? kPgActive : 0), std::memory_order_relaxed);
}

void Vmscan::LruAdd(Pfn pfn) {
  Page& page = mem_map_.page(pfn);
  SpinLockHolder l(&lru_lock_);
  if (page.Test(kPgUnevictable | kPgLru) || OffLists(page)) return;
  // Linux (>= 5.9): new anonymous pages start on the inactive list (file
  // pages always have).
  LruAddLocked(page, pfn, false);
}

void Vmscan::Mlocked(Pfn pfn) {
  Page& page = mem_map_.page(pfn);
  SpinLockHolder l(&lru_lock_);
  LruDelLocked(page, pfn);
}

bool Vmscan::SwapDuplicate(uint64_t entry) { return swap_->Duplicate(entry); }

bool Vmscan::DropSwapCache(Pfn pfn) {
  Page& page = mem_map_.page(pfn);
  if (!page.Test(kPgSwapCache)) return true;
  if (!page.TryLock()) return false;
  if (page.Test(kPgWriteback)) {
    page.Unlock();
    return false;
  }
  DropSwapCacheLocked(pfn);
  page.Unlock();
  return true;
}

void Vmscan::DropSwapCacheLocked(Pfn pfn) {
  Page& page = mem_map_.page(pfn);
  if (!page.Test(kPgSwapCache)) return;
  // Linux: delete_from_swap_cache().
  page.flags.fetch_and(~kPgSwapCache, std::memory_order_relaxed);
  swap_->ClearCache(page.private_);
  page.private_ = 0;
}

void Vmscan::LazyFree(Pfn pfn) {
  Page& page = mem_map_.page(pfn);
  SpinLockHolder l(&lru_lock_);
  // An isolated page goes back where reclaim puts it; an unevictable one
  // stays off the lists.
  if (!page.Test(kPgLru)) return;
  LruDelLocked(page, pfn);
  ListAddTail(inactive_, pfn);
  nr_inactive_.fetch_add(1, std::memory_order_relaxed);
  page.flags.fetch_or(kPgLru, std::memory_order_relaxed);
}

void Vmscan::Munlocked(Pfn pfn) {
  Page& page = mem_map_.page(pfn);
  SpinLockHolder l(&lru_lock_);
  // Shared memory's pages are not on the lists (not swapped yet).
  if (page.Test(kPgLru | kPgIsolated | kPgUnevictable) || OffLists(page)) return;
  if (page.refcount.load(std::memory_order_relaxed) == 0) return;
  LruAddLocked(page, pfn, false);
}

void Vmscan::FreePage(Pfn pfn) {
  Page& page = mem_map_.page(pfn);
  {
    SpinLockHolder l(&lru_lock_);
    LruDelLocked(page, pfn);
  }
  if (page.Test(kPgSwapCache)) {
    // Linux: delete_from_swap_cache() as the last reference goes.
    swap_->ClearCache(page.private_);
  }
  mem_map_.Free(pfn);
}

void Vmscan::Putback(Pfn pfn, bool active) {
  Page& page = mem_map_.page(pfn);
  {
    SpinLockHolder l(&lru_lock_);
    page.flags.fetch_and(~kPgIsolated, std::memory_order_relaxed);
    if (!page.Test(kPgUnevictable) && Listed(page)) LruAddLocked(page, pfn, active);
  }
  page.Unlock();
  machine_->PutPage(pfn);
}

void Vmscan::Release(Pfn pfn) {
  Page& page = mem_map_.page(pfn);
  {
    SpinLockHolder l(&lru_lock_);
    page.flags.fetch_and(~kPgIsolated, std::memory_order_relaxed);
  }
  page.Unlock();
  machine_->PutPage(pfn);
}

// ---- Reclaim ----

bool Vmscan::LockSpace(AddressSpace* as, AddressSpace* held) {
  // A fork in progress: its child copies this address space as it is.
  if (as->forking()) return false;
  if (as == held) return true;
  return as->mmap_lock()->TryReadLock();
}

void Vmscan::UnlockSpace(AddressSpace* as, AddressSpace* held) {
  if (as != held) as->mmap_lock()->ReadUnlock();
}

void Vmscan::RefillInactive(AddressSpace* held, int nr) {
  // Linux: mm/vmscan.c shrink_active_list(). Anonymous pages are
  // deactivated whether referenced or not; their young bit is cleared and,
  // with write sampling, a writable PTE is write-protected, so that a use
  // before they reach the inactive tail shows (the write fault sets young).
  struct Item {
    Pfn pfn;
    AddressSpace* as;
    VirtAddr addr;
  };
  Item items[kBatch];
  int n = 0;
  {
    SpinLockHolder l(&lru_lock_);
    while (n < nr && n < kBatch && active_.tail != 0) {
      Pfn pfn{active_.tail};
      Page& page = mem_map_.page(pfn);
      LruDelLocked(page, pfn);
      if (!page.GetUnlessZero()) continue;  // being freed: FreePage is not on a list now
      page.flags.fetch_or(kPgIsolated, std::memory_order_relaxed);
      // A frame in the pool has no single PTE (mapping is null): it moves
      // to the inactive list as it is; its young bits are read through the
      // reverse map when it reaches the inactive tail.
      items[n++] = Item{pfn, page.mapping, page.index << kPageShift};
    }
  }
  // By address space and address (insertion sort: no allocation, this may
  // run in signal context), so that each address space is locked once and
  // neighbours are write-protected with one call: every such call flushes
  // the TLB of each CPU running the process.
  for (int i = 1; i < n; i++) {
    Item x = items[i];
    int j = i;
    for (; j > 0 && (items[j - 1].as != x.as ? items[j - 1].as > x.as : items[j - 1].addr > x.addr); j--) {
      items[j] = items[j - 1];
    }
    items[j] = x;
  }
  HostMmu& host = machine_->host();
  const bool sample = !host.prot_encodes_ptes();
  for (int i = 0; i < n;) {
    AddressSpace* as = items[i].as;
    int j = i;
    while (j < n && items[j].as == as) j++;
    if (as != nullptr && LockSpace(as, held)) {
      as->mmap_lock()->AssertHeld();
      PageTable& pt = as->page_table();
      VirtAddr wp_start = 0, wp_end = 0;
      const Vma* wp_vma = nullptr;
      auto flush = [&] {
        if (wp_end > wp_start) {
          // Under mmap_lock: no munmap can put a different page there meanwhile.
          host.WriteProtect({wp_start, wp_end}, VmFlagsToProt(wp_vma->vm_flags));
          machine_->vmstat().Add(VmEvent::k_wp_sample, (wp_end - wp_start) >> kPageShift);
        }
        wp_start = wp_end = 0;
      };
      for (int k = i; k < j; k++) {
        const Item& x = items[k];
        if (mem_map_.page(x.pfn).mapcount.load(std::memory_order_acquire) <= 0) continue;
        std::atomic<uint64_t>* e = pt.Walk(x.addr, false);
        const Vma* vma = as->vmas().Lookup(x.addr);
        if (e == nullptr || vma == nullptr) continue;
        bool protect = false;
        {
          SpinLockHolder ptl(pt.Ptl(x.addr));
          Pte pte(Load(e));
          if (pte.present() && !pte.locked() && pte.pfn() == x.pfn) {
            protect = sample && pte.write();
            e->store(pte.WithYoung(false).WithWrite(protect ? false : pte.write()).raw(),
                     std::memory_order_release);
          }
        }
        if (!protect) continue;
        if (x.addr != wp_end || vma != wp_vma) {
          flush();
          wp_start = x.addr;
          wp_vma = vma;
        }
        wp_end = x.addr + kPageSize;
      }
      flush();
      UnlockSpace(as, held);
    }
    i = j;
  }
  for (int i = 0; i < n; i++) {
    Page& page = mem_map_.page(items[i].pfn);
    machine_->vmstat().Add(VmEvent::k_pgdeactivate);
    // Inactive head; not page-locked here, Putback only needs the flag.
    {
      SpinLockHolder l(&lru_lock_);
      page.flags.fetch_and(~kPgIsolated, std::memory_order_relaxed);
      if (!page.Test(kPgUnevictable | kPgLru) && Listed(page)) {
        LruAddLocked(page, items[i].pfn, false);
      }
    }
    machine_->PutPage(items[i].pfn);
  }
}

int Vmscan::Shrink(AddressSpace* held, int nr) {
  ReadLockHolder life(&lifetime_);
  int freed = 0;
  int scanned_total = 0;
  const uint64_t total = nr_active() + nr_inactive();
  while (freed < nr && scanned_total < static_cast<int64_t>(2 * total + kBatch)) {
    if (policy_ == ReclaimPolicy::kLru && nr_inactive() < nr_active()) {
      RefillInactive(held, kBatch);
    }
    Victim v[kBatch];
    int n = 0;
    {
      // Linux: isolate_lru_folios() from the inactive tail.
      SpinLockHolder l(&lru_lock_);
      int looked = 0;
      while (n < kBatch && inactive_.tail != 0 && looked < 2 * kBatch) {
        looked++;
        Pfn pfn{inactive_.tail};
        Page& page = mem_map_.page(pfn);
        LruDelLocked(page, pfn);
        if (!page.GetUnlessZero()) continue;  // being freed
        if (!page.TryLock()) {
          // Busy (a fault is freeing its slot): rotate, try it later.
          page.refcount.fetch_sub(1, std::memory_order_relaxed);
          LruAddLocked(page, pfn, false);
          continue;
        }
        page.flags.fetch_or(kPgIsolated, std::memory_order_relaxed);
        v[n++] = Victim{pfn, page.mapping, page.index << kPageShift, Victim::kSkip, Victim::kKeep,
                        0, 0, 0, false};
      }
    }
    if (n == 0) break;
    scanned_total += n;
    machine_->vmstat().Add(VmEvent::k_pgscan, n);
    // Frames in the pool go through the reverse map, one by one.
    int kept = 0;
    for (int i = 0; i < n; i++) {
      if (mem_map_.page(v[i].pfn).Test(kPgPool)) {
        freed += ShrinkPoolPage(v[i].pfn);
      } else {
        v[kept++] = v[i];
      }
    }
    if (kept > 0) freed += ShrinkList(held, v, kept);
  }
  return freed;
}

int Vmscan::ShrinkList(AddressSpace* held, Victim* v, int n) {
  // Victims come off the list in fault order, so neighbours in the batch
  // are usually neighbours in memory: group them by address space and
  // address, so that slots and host ranges coalesce.
  // Insertion sort: stable, in place, and it allocates nothing (this runs
  // in signal context; std::stable_sort takes a temporary buffer).
  auto before = [](const Victim& a, const Victim& b) {
    return a.as != b.as ? a.as < b.as : a.addr < b.addr;
  };
  for (int i = 1; i < n; i++) {
    Victim x = v[i];
    int j = i;
    for (; j > 0 && before(x, v[j - 1]); j--) v[j] = v[j - 1];
    v[j] = x;
  }
  SlotRun run;
  for (int i = 0; i < n;) {
    int j = i;
    while (j < n && v[j].as == v[i].as) j++;
    DecidePages(held, v + i, j - i, &run);
    i = j;
  }
  // Unused slots of the last run go back.
  for (; run.used < run.len; run.used++) swap_->ClearCache(run.first + run.used);
  WritePages(v, n);
  int freed = 0;
  for (int i = 0; i < n;) {
    int j = i;
    while (j < n && v[j].as == v[i].as) j++;
    freed += UnmapPages(held, v + i, j - i);
    i = j;
  }
  return freed;
}

void Vmscan::DecidePages(AddressSpace* held, Victim* v, int n, SlotRun* run) {
  AddressSpace* as = v[0].as;
  VmStat& vmstat = machine_->vmstat();
  if (!LockSpace(as, held)) {
    for (int k = 0; k < n; k++) Putback(v[k].pfn, false);
    vmstat.Add(VmEvent::k_pgrotated, n);
    return;
  }
  as->mmap_lock()->AssertHeld();
  HostMmu& host = machine_->host();
  PageTable& pt = as->page_table();
  // Pages to write are write-protected (PTE, then host, in runs) while
  // mmap_lock is held, so that no munmap+mmap can put another page under
  // a protection meant for this one.
  int wp_first = -1;
  auto flush_wp = [&](int end) {
    if (wp_first < 0) return;
    AddrRange r{v[wp_first].addr, v[end - 1].addr + kPageSize};
    as->mmap_lock()->AssertHeld();
    const Vma* vma = as->vmas().Lookup(r.start);
    if (!host.WriteProtect(r, VmFlagsToProt(vma->vm_flags))) {
      // Writes would go unseen: give these pages their PTEs back.
      for (int k = wp_first; k < end; k++) UndoWrite(v[k], pt);
    }
    wp_first = -1;
  };
  // Pages to verify (kVerify) are write-protected the same way first.
  auto protect = [](const Victim& x) {
    return x.state == Victim::kWrite || x.state == Victim::kVerify;
  };
  for (int k = 0; k < n; k++) {
    Victim& x = v[k];
    DecideOne(x, *as, run);
    bool joins = wp_first >= 0 && protect(v[k - 1]) && v[k - 1].addr + kPageSize == x.addr &&
                 as->vmas().Lookup(v[k - 1].addr) == as->vmas().Lookup(x.addr);
    if (!protect(x) || !joins) flush_wp(k);
    if (protect(x) && wp_first < 0) wp_first = k;
  }
  flush_wp(n);
  for (int k = 0; k < n; k++) {
    if (v[k].state == Victim::kVerify) VerifyOne(v[k], pt, run);
  }
  UnlockSpace(as, held);
  for (int k = 0; k < n; k++) {
    if (v[k].verdict == Victim::kActivate) {
      vmstat.Add(VmEvent::k_pgactivate);
      Putback(v[k].pfn, true);
    } else if (v[k].verdict == Victim::kRotate) {
      vmstat.Add(VmEvent::k_pgrotated);
      Putback(v[k].pfn, false);
    }
  }
}

void Vmscan::DecideOne(Victim& x, AddressSpace& as, SlotRun* run) {
  // Linux: shrink_folio_list() up to pageout(): referenced? mlocked?
  // clean swap cache (no I/O)? else add_to_swap() and write-protect.
  as.mmap_lock()->AssertHeld();  // by DecidePages
  Page& page = mem_map_.page(x.pfn);
  PageTable& pt = as.page_table();
  std::atomic<uint64_t>* e = pt.Walk(x.addr, false);
  const Vma* vma = as.vmas().Lookup(x.addr);
  if (page.mapcount.load(std::memory_order_acquire) == 0 || e == nullptr || vma == nullptr) {
    Release(x.pfn);  // unmapped meanwhile: our reference frees it
    return;
  }
  if (page.MaybePinned()) {
    // Linux: a pinned anonymous page cannot be unmapped (try_to_unmap_one
    // fails folio_try_share_anon_rmap_pte): keep it, activated.
    x.verdict = Victim::kActivate;
    return;
  }
  if (vma->locked()) {
    // Linux: try_to_unmap() meets VM_LOCKED and mlocks the page.
    page.flags.fetch_or(kPgMlocked, std::memory_order_relaxed);
    Release(x.pfn);
    return;
  }
  SpinLockHolder ptl(pt.Ptl(x.addr));
  Pte pte(Load(e));
  if (!pte.present() || pte.locked() || pte.pfn() != x.pfn) {
    x.verdict = Victim::kRotate;  // busy: a fault is changing it
    return;
  }
  const bool clean_copy = page.Test(kPgSwapCache) && !pte.dirty() && !pte.write();
  if (vma->is_volatile()) {
    // Seed 003: a volatile page is discarded, without promotion (being
    // referenced does not save it) and without I/O. Its PTE is not
    // write-protected: a write meanwhile may be lost, as the range allows.
    x.state = Victim::kDiscardVolatile;
    x.pte = pte.raw();
    x.avoided = !clean_copy;
    return;
  }
  if (policy_ == ReclaimPolicy::kLru && pte.young()) {
    // Linux: folio_check_references() -> activate.
    e->store(pte.WithYoung(false).raw(), std::memory_order_release);
    x.verdict = Victim::kActivate;
    return;
  }
  if (page.Test(kPgLazyFree)) {
    if (!pte.dirty()) {
      // Linux: try_to_unmap_one() discards a clean lazyfree folio. Its PTE
      // is write-protected (Madvise), so a write before the unmap shows.
      x.state = Victim::kDiscardLazy;
      x.pte = pte.raw();
      x.avoided = !clean_copy;
      return;
    }
    // Written since MADV_FREE: an ordinary page again (folio_set_swapbacked),
    // and in use: Linux's try_to_unmap_one() fails for it and
    // shrink_folio_list() activates it rather than swap it now.
    page.flags.fetch_and(~kPgLazyFree, std::memory_order_relaxed);
    x.verdict = Victim::kActivate;
    return;
  }
  if (page.Test(kPgSwapCache) && !pte.dirty() && page.Test(kPgCsum) && !page.Test(kPgPool)) {
    // Read back and mapped writable: a write may have gone unseen. Linux
    // reads the PTE's dirty bit here; we write-protect the page (with the
    // pages to write, DecidePages) and then compare its checksum with the
    // slot's (VerifyOne).
    x.state = Victim::kVerify;
    x.slot = page.private_;
    x.orig = pte.raw();
    x.pte = pte.Clean().raw();
    e->store(x.pte, std::memory_order_release);
    return;
  }
  if (page.Test(kPgSwapCache) && !pte.dirty() && !pte.write()) {
    x.state = Victim::kClean;
    x.slot = page.private_;
    x.pte = pte.raw();
    return;
  }
  if (swap_ == nullptr) {
    x.verdict = Victim::kRotate;  // nothing to write it to
    return;
  }
  uint64_t slot;
  if (!TakeSlot(run, &slot)) {  // swap full: keep the page
    x.verdict = Victim::kRotate;
    return;
  }
  if (page.Test(kPgSwapCache)) {
    // Written since it came back: its slot is stale (Linux would have freed
    // it at the write fault had the page lock been free).
    swap_->ClearCache(page.private_);
  }
  x.slot = slot;
  x.state = Victim::kWrite;
  page.private_ = x.slot;
  page.flags.fetch_and(~kPgCsum, std::memory_order_relaxed);
  page.flags.fetch_or(kPgSwapCache | kPgWriteback, std::memory_order_relaxed);
  x.orig = pte.raw();
  x.pte = pte.Clean().raw();
  e->store(x.pte, std::memory_order_release);
}

bool Vmscan::TakeSlot(SlotRun* run, uint64_t* slot) {
  if (run->used == run->len) {
    run->len = swap_->AllocRun(kSwapClusterPages / 4, &run->first);
    run->used = 0;
    if (run->len == 0) return false;
  }
  *slot = run->first + run->used++;
  return true;
}

void Vmscan::VerifyOne(Victim& x, PageTable& pt, SlotRun* run) {
  // The host page is write-protected now (DecidePages): while the PTE is
  // still what reclaim left, a write traps and waits for this ptl, so the
  // bytes read here are the page's until UnmapPages sees the PTE again.
  Page& page = mem_map_.page(x.pfn);
  std::atomic<uint64_t>* e = pt.Walk(x.addr, false);
  SpinLockHolder ptl(pt.Ptl(x.addr));
  if (Load(e) != x.pte) {
    x.state = Victim::kClean;  // changed meanwhile: UnmapPages keeps it mapped
    return;
  }
  VmStat& vmstat = machine_->vmstat();
  if (PageChecksum(reinterpret_cast<const void*>(x.addr)) == page.csum) {
    x.state = Victim::kClean;  // the slot holds these bytes: no I/O
    vmstat.Add(VmEvent::k_swap_csum_clean);
    return;
  }
  // Written since it came back: the slot is stale; the page goes out like
  // any dirty page, to a new slot.
  vmstat.Add(VmEvent::k_swap_csum_dirty);
  page.flags.fetch_and(~kPgCsum, std::memory_order_relaxed);
  swap_->ClearCache(page.private_);
  uint64_t slot;
  if (!TakeSlot(run, &slot)) {
    // Swap full: the page stays, dirty (and write-protected, as the host is).
    page.flags.fetch_and(~kPgSwapCache, std::memory_order_relaxed);
    page.private_ = 0;
    e->store(Pte(x.pte).WithDirty().raw(), std::memory_order_release);
    x.state = Victim::kSkip;
    x.verdict = Victim::kRotate;
    return;
  }
  x.slot = slot;
  x.state = Victim::kWrite;
  page.private_ = slot;
  page.flags.fetch_or(kPgSwapCache | kPgWriteback, std::memory_order_relaxed);
}

void Vmscan::UndoWrite(Victim& x, PageTable& pt) {
  Page& page = mem_map_.page(x.pfn);
  {
    SpinLockHolder ptl(pt.Ptl(x.addr));
    std::atomic<uint64_t>* e = pt.Walk(x.addr, false);
    // Dirty, so that the page is never taken for a clean copy of its slot.
    if (Load(e) == x.pte) e->store(Pte(x.orig).WithDirty().raw(), std::memory_order_release);
  }
  page.flags.fetch_and(~(kPgSwapCache | kPgWriteback), std::memory_order_relaxed);
  swap_->ClearCache(x.slot);
  x.state = Victim::kSkip;
  x.verdict = Victim::kRotate;
}

void Vmscan::WritePages(Victim* v, int n) {
  // Straight from the pages' own addresses: they stay mapped, readable and
  // write-protected; a write now traps and redirties them.
  SwapIoOp ops[kBatch];
  int op_of[kBatch];
  int nops = 0;
  int prev = -1;
  for (int k = 0; k < n; k++) {
    if (v[k].state != Victim::kWrite) continue;
    if (prev >= 0 && v[prev].as == v[k].as && v[prev].addr + kPageSize == v[k].addr &&
        ops[nops - 1].slot + ops[nops - 1].nr_pages == v[k].slot) {
      ops[nops - 1].nr_pages++;
    } else {
      ops[nops++] = SwapIoOp{v[k].slot, 1, reinterpret_cast<void*>(v[k].addr), 0};
    }
    op_of[k] = nops - 1;
    prev = k;
  }
  if (nops == 0) return;
  swap_->io().Write(ops, nops);
  for (int k = 0; k < n; k++) {
    if (v[k].state != Victim::kWrite) continue;
    const SwapIoOp& op = ops[op_of[k]];
    if (op.result != static_cast<int64_t>(op.nr_pages) * static_cast<int64_t>(kPageSize)) {
      v[k].state = Victim::kWriteErr;
    }
  }
}

int Vmscan::UnmapPages(AddressSpace* held, Victim* v, int n) {
  bool any = false;
  for (int k = 0; k < n; k++) any |= v[k].state != Victim::kSkip;
  if (!any) return 0;
  AddressSpace* as = v[0].as;
  // A contended mmap_lock leaves the pages mapped, clean and in the swap
  // cache: a state they may stay in; the next pass takes them without I/O.
  const bool locked = LockSpace(as, held);
  PageTable& pt = as->page_table();
  int unmap[kBatch];
  int nunmap = 0;
  for (int k = 0; k < n; k++) {
    Victim& x = v[k];
    if (x.state == Victim::kSkip) continue;
    std::atomic<uint64_t>* e = locked ? pt.Walk(x.addr, false) : nullptr;
    bool same = false;
    if (e != nullptr && x.state == Victim::kDiscardVolatile) {
      // A fault may have cleared the mark since DecidePages (it holds
      // mmap_lock for write to do so, which excludes this pass now).
      as->mmap_lock()->AssertHeld();
      const Vma* vma = as->vmas().Lookup(x.addr);
      if (vma == nullptr || !vma->is_volatile()) e = nullptr;
    }
    if (e != nullptr) {
      SpinLockHolder ptl(pt.Ptl(x.addr));
      same = Load(e) == x.pte;
      // Locked: faults wait while the host page goes.
      if (same && x.state != Victim::kWriteErr) {
        e->store(Pte(x.pte).WithLocked().raw(), std::memory_order_relaxed);
      }
    }
    if (x.state == Victim::kWriteErr) {
      WriteFailed(x, pt, e, same);
    } else if (!same) {
      KeepMapped(x, e);
    } else {
      unmap[nunmap++] = k;
    }
  }
  // Drop the host pages (coalesced), then publish the swap PTEs.
  AddrRange runs[kBatch];
  int nruns = 0;
  for (int a = 0; a < nunmap;) {
    int b = a + 1;
    while (b < nunmap && v[unmap[b]].addr == v[unmap[b - 1]].addr + kPageSize) b++;
    runs[nruns++] = {v[unmap[a]].addr, v[unmap[b - 1]].addr + kPageSize};
    a = b;
  }
  machine_->host().ZapMany(runs, nruns);
  VmStat& vmstat = machine_->vmstat();
  for (int a = 0; a < nunmap; a++) {
    Victim& x = v[unmap[a]];
    Page& page = mem_map_.page(x.pfn);
    if (x.state == Victim::kDiscardVolatile || x.state == Victim::kDiscardLazy) {
      // Seed 003's try_to_zap_one(), Linux's lazyfree discard: the PTE is
      // left discarded (none to every reader), and the slot of a swap-cache
      // page goes with the page.
      if (page.Test(kPgSwapCache)) {
        page.flags.fetch_and(~kPgSwapCache, std::memory_order_relaxed);
        swap_->ClearCache(page.private_);
        page.private_ = 0;
      }
      {
        SpinLockHolder ptl(pt.Ptl(x.addr));
        pt.Walk(x.addr, false)->store(Pte::Discarded().raw(), std::memory_order_release);
      }
      as->AddRssAnon(-1);
      vmstat.Add(x.state == Victim::kDiscardVolatile ? VmEvent::k_pgvolatile
                                                     : VmEvent::k_pglazyfreed);
      if (x.avoided) vmstat.Add(VmEvent::k_swapout_avoided);
      vmstat.Add(VmEvent::k_pgsteal);
      page.mapcount.fetch_sub(1, std::memory_order_relaxed);
      machine_->PutPage(x.pfn);
      Release(x.pfn);
      continue;
    }
    // Linux: try_to_unmap_one(): swap_duplicate() before the rmap goes.
    // Differs: the page also leaves the swap cache before the swap PTE is
    // published. Linux keeps it cached until it is freed, and a racing
    // do_swap_page() finds it there; we have no lookup by slot (the frame's
    // bytes are already gone from the host), so a fault that sees the swap
    // PTE must find the slot held by nobody but that PTE.
    swap_->Duplicate(x.slot);
    page.flags.fetch_and(~(kPgSwapCache | kPgWriteback), std::memory_order_relaxed);
    swap_->ClearCache(x.slot);
    {
      SpinLockHolder ptl(pt.Ptl(x.addr));
      pt.Walk(x.addr, false)->store(Pte::SwapEntry(x.slot).raw(), std::memory_order_release);
    }
    as->AddRssAnon(-1);
    as->AddSwapPtes(1);
    vmstat.Add(x.state == Victim::kWrite ? VmEvent::k_pswpout : VmEvent::k_pgsteal_clean);
    vmstat.Add(VmEvent::k_pgsteal);
    page.mapcount.fetch_sub(1, std::memory_order_relaxed);
    // The mapping's reference, then reclaim's: the frame is free.
    machine_->PutPage(x.pfn);
    Release(x.pfn);
  }
  if (locked) UnlockSpace(as, held);
  if (nunmap > 0) {
    frames_freed_.fetch_add(1, std::memory_order_release);
    FutexWakeAll(&frames_freed_);
  }
  return nunmap;
}

void Vmscan::WriteFailed(Victim& x, PageTable& pt, std::atomic<uint64_t>* e, bool same) {
  // Linux: a failed swap write leaves the page dirty in memory
  // (end_swap_bio_write -> folio_redirty_for_writepage); we also retire the
  // slot, so it is never handed out again.
  Page& page = mem_map_.page(x.pfn);
  if (same || page.mapcount.load() > 0) {
    machine_->vmstat().Add(VmEvent::k_swap_write_errors);
    swap_->Retire(x.slot);
  } else {
    swap_->ClearCache(x.slot);  // it failed because the page was unmapped
  }
  page.flags.fetch_and(~(kPgSwapCache | kPgWriteback), std::memory_order_relaxed);
  if (same) {
    SpinLockHolder ptl(pt.Ptl(x.addr));
    if (Load(e) == x.pte) e->store(Pte(x.pte).WithDirty().raw(), std::memory_order_release);
  }
  Putback(x.pfn, true);
}

void Vmscan::KeepMapped(Victim& x, std::atomic<uint64_t>* e) {
  // Written to, unmapped or changed meanwhile. A page written again keeps
  // its now stale slot only until its next write fault or reclaim; drop it
  // now if the PTE shows the write.
  Page& page = mem_map_.page(x.pfn);
  if (x.state == Victim::kWrite) page.flags.fetch_and(~kPgWriteback, std::memory_order_relaxed);
  if (e != nullptr) {
    Pte now(Load(e));
    if (now.present() && now.pfn() == x.pfn && now.dirty() && page.Test(kPgSwapCache)) {
      page.flags.fetch_and(~kPgSwapCache, std::memory_order_relaxed);
      swap_->ClearCache(page.private_);
    }
  }
  machine_->vmstat().Add(VmEvent::k_pgrotated);
  if (page.mapcount.load() > 0) {
    Putback(x.pfn, true);
  } else {
    Release(x.pfn);
  }
}

// ---- Allocation, kswapd ----

int Vmscan::AllocFrames(AddressSpace* held, Pfn* out, int n, int min) {
  int got = 0;
  while (got < n && mem_map_.Alloc(&out[got])) got++;
  if (free_pages() < wmark_low_) WakeKswapd();
  if (got >= min) return got;
  // While kswapd is at work, wait a little for the frames it frees before
  // reclaiming here: a direct reclaim writes a batch and makes the faulting
  // thread wait for it.
  for (int wait = 0; wait < 4 && got < min && kswapd_running_.load(); wait++) {
    uint32_t seq = frames_freed_.load(std::memory_order_acquire);
    while (got < n && mem_map_.Alloc(&out[got])) got++;
    if (got >= min) return got;
    FutexWaitTimeout(&frames_freed_, seq, 500 * 1000);
    while (got < n && mem_map_.Alloc(&out[got])) got++;
  }
  if (got >= min) return got;
  // Linux: __alloc_pages_direct_reclaim().
  machine_->vmstat().Add(VmEvent::k_allocstall);
  for (int attempt = 0; attempt < 16 && got < min; attempt++) {
    int freed = Shrink(held, std::max(kBatch / 2, min - got));
    while (got < n && mem_map_.Alloc(&out[got])) got++;
    if (got >= min) break;
    if (freed == 0) {
      // Nothing reclaimable right now; kswapd or another thread may be
      // holding the victims. Give them a moment before giving up.
      if (attempt >= 3 && !kswapd_running_.load()) break;
      sched_yield();
    }
  }
  if (got < min) machine_->vmstat().Add(VmEvent::k_oom);
  return got;
}

void Vmscan::WakeKswapd() {
  if (kswapd_running_.load(std::memory_order_relaxed)) return;
  kswapd_wake_.fetch_add(1, std::memory_order_release);
  FutexWakeAll(&kswapd_wake_);
}

void Vmscan::KswapdLoop() {
  sys::t_emulator_thread = true;
  // kswapd takes no process signals (a program's handlers are not for it).
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  uint32_t seen = kswapd_wake_.load();
  while (!stop_.load()) {
    // Slots of processes that shared the device and are gone go back, once
    // a second at most (a stat(2) per sharer).
    if (swap_ != nullptr && swap_->nr_sharers() > 1) {
      timespec now;
      clock_gettime(CLOCK_MONOTONIC, &now);
      const uint64_t ns = uint64_t(now.tv_sec) * 1000000000 + uint64_t(now.tv_nsec);
      if (ns - last_reap_ns_ >= 1000000000) {
        last_reap_ns_ = ns;
        swap_->ReapGone();
      }
    }
    if (free_pages() >= wmark_low_) {
      FutexWaitTimeout(&kswapd_wake_, seen, 100 * 1000 * 1000);
      seen = kswapd_wake_.load();
      continue;
    }
    machine_->vmstat().Add(VmEvent::k_kswapd_wake);
    kswapd_running_.store(true);
    int idle = 0;
    while (!stop_.load() && free_pages() < wmark_high_ && idle < 3) {
      idle = Shrink(nullptr, kBatch) == 0 ? idle + 1 : 0;
    }
    kswapd_running_.store(false);
    if (idle >= 3) {  // nothing reclaimable: sleep until woken again
      FutexWaitTimeout(&kswapd_wake_, kswapd_wake_.load(), 10 * 1000 * 1000);
    }
    seen = kswapd_wake_.load();
  }
}

// ---- fork() of the process ----

int Vmscan::ForkPrepare(bool share) {
  fork_token_ = share && swap_ != nullptr ? swap_->ForkReserve() : -1;
  return fork_token_;
}

void Vmscan::ForkParent(int token, bool attached) {
  if (swap_ != nullptr && token >= 0) swap_->ForkDone(token, attached);
}

bool Vmscan::ChildEarly() {
  // Only this thread exists; every lock and in-between state of the
  // parent's other threads (kswapd, faults in flight) is rebuilt from the
  // page tables, which Machine::ChildEarly has fixed up already. Nothing
  // here allocates: it may run in the child's first fault.
  bool attached = false;
  if (swap_ != nullptr) {
    attached = fork_token_ >= 0 && swap_->ForkAttach(fork_token_).ok();
    if (!attached) swap_->ForkDetach();
  }
  lifetime_.ResetAfterFork();
  lru_lock_.ResetAfterFork();
  kswapd_running_.store(false);
  stop_.store(false);
  last_reap_ns_ = 0;
  free_buffers_.store(nr_buffers_ == 64 ? ~uint64_t{0} : (uint64_t{1} << nr_buffers_) - 1);
  {
    SpinLockHolder l(&lru_lock_);
    active_ = List{};
    inactive_ = List{};
    nr_active_.store(0);
    nr_inactive_.store(0);
    const uint64_t end = mem_map_.pfn_end();
    for (uint64_t n = 1; n < end; n++) {
      const Pfn pfn{n};
      Page& page = mem_map_.page(pfn);
      if (page.refcount.load() == 0 || page.Test(kPgReserved)) continue;
      const bool active = page.Test(kPgActive);
      page.flags.fetch_and(~(kPgLocked | kPgLru | kPgActive | kPgIsolated));
      page.lru_prev = page.lru_next = 0;
      // The swap_map is rebuilt below from what stays: the slots of pages
      // dropped here are simply not counted.
      if (page.Test(kPgWriteback)) {
        // Reclaim was writing it: the slot's bytes may be incomplete. The
        // page is in memory; it leaves the swap cache.
        page.flags.fetch_and(~(kPgWriteback | kPgSwapCache));
        page.private_ = 0;
      }
      bool mapped = false;
      if (AddressSpace* as = page.mapping; as != nullptr) {
        std::atomic<uint64_t>* e = as->page_table().Walk(page.index << kPageShift, false);
        if (e != nullptr) {
          Pte pte(Load(e));
          mapped = pte.present() && !pte.special() && !pte.locked() && pte.pfn() == pfn;
        }
      }
      if (!mapped) {
        // Allocated by a fault, or being freed, in a thread the child does
        // not have.
        page.flags.store(0);
        page.mapcount.store(0);
        page.refcount.store(0);
        mem_map_.Free(pfn);
        continue;
      }
      if (page.mapcount.load() <= 0) page.mapcount.store(1);
      page.refcount.store(page.mapcount.load());
      if (!page.Test(kPgUnevictable)) LruAddLocked(page, pfn, active);
    }
  }
  if (swap_ != nullptr) {
    // The references that exist now become the swap_map.
    swap_->RecountBegin();
    machine_->ForEachSpaceUnlocked([&](AddressSpace* as) {
      as->ForEachSwapRef([&](uint64_t slot, bool cache) {
        if (cache) {
          swap_->RecountCache(slot);
        } else {
          swap_->RecountRef(slot);
        }
      });
    });
    swap_->RecountEnd();
  }
  return attached;
}

absl::Status Vmscan::ChildLate() {
  if (swap_ != nullptr) {
    if (swap_->recount_unheld() > 0) {
      Log(Component::kSwap).warn("fork: the child references {} swap slot(s) it did not hold",
                                 swap_->recount_unheld());
    }
    if (swap_->sharer() >= 0) EMU_RETURN_IF_ERROR(swap_->ChildRings());
  }
  // The parent's kswapd is not in the child: its handle names a thread of
  // another process, so it is overwritten, never joined.
  kswapd_started_ = false;
  if (int rc = StartThread(&kswapd_, [this] { KswapdLoop(); }); rc != 0) {
    return ErrnoError(rc, "fork: the child's kswapd");
  }
  kswapd_started_ = true;
  return absl::OkStatus();
}

void Vmscan::ChildLeaveShare() {
  if (swap_ != nullptr) swap_->LeaveShare();
}

// ---- Teardown, checks, stats ----

void Vmscan::ForgetAddressSpace(AddressSpace*) {
  // Every page of the address space is unmapped; a pass that isolated one
  // before that still holds lifetime_ and may look at the address space.
  lifetime_.WriteLock();
  lifetime_.WriteUnlock();
}

void Vmscan::BlockReclaim() { lifetime_.WriteLock(); }
void Vmscan::UnblockReclaim() { lifetime_.WriteUnlock(); }

absl::Status Vmscan::ShrinkTo(uint64_t target_pages) {
  for (int idle = 0; mem_map_.nr_used() > target_pages && idle < 4;) {
    idle = Shrink(nullptr, kBatch) == 0 ? idle + 1 : 0;
  }
  if (mem_map_.nr_used() > target_pages) {
    return ErrnoError(ENOMEM, absl::StrCat("reclaim: ", mem_map_.nr_used(),
                                           " frames still in use, wanted ", target_pages));
  }
  return absl::OkStatus();
}

absl::Status Vmscan::CheckSwapRefs(const absl::flat_hash_map<uint64_t, int>& refs,
                                   const absl::flat_hash_map<uint64_t, int>& cached) {
  absl::Status status = absl::OkStatus();
  for (const auto& [slot, n] : cached) {
    if (n != 1) return ErrnoError(EIO, absl::StrCat("slot ", slot, " cached by ", n, " pages"));
  }
  if (swap_ == nullptr) {
    if (!refs.empty() || !cached.empty()) status = ErrnoError(EIO, "swap references without swap");
  } else {
    status = swap_->CheckInvariants();
    uint64_t used = 0;
    swap_->ForEachUsed([&](uint64_t slot, int count, bool has_cache) {
      used++;
      if (!status.ok()) return;
      auto r = refs.find(slot);
      int want = r == refs.end() ? 0 : r->second;
      bool want_cache = cached.contains(slot);
      if (count != want || has_cache != want_cache) {
        status = ErrnoError(EIO, absl::StrCat("swap_map[", slot, "] = ", count,
                                              has_cache ? "+cache" : "", " but ", want,
                                              " swap PTEs", want_cache ? " and a cached page" : ""));
      }
    });
    for (const auto& [slot, n] : cached) {
      if (status.ok() && !swap_->HasCache(slot)) {
        status = ErrnoError(EIO, absl::StrCat("a page holds slot ", slot, " without its cache flag"));
      }
    }
    if (status.ok() && used != swap_->nr_used()) {
      status = ErrnoError(EIO, absl::StrCat("nr_used ", swap_->nr_used(), " but ", used, " used slots"));
    }
    if (status.ok()) {
      for (const auto& [slot, c] : refs) {
        if (swap_->Count(slot) != c) {
          status = ErrnoError(EIO, absl::StrCat("swap PTEs name slot ", slot, " ", c,
                                                " times but its count is ", swap_->Count(slot)));
          break;
        }
      }
    }
  }
  // Every page on a list is mapped and not mlocked; counts agree.
  if (status.ok()) {
    SpinLockHolder l(&lru_lock_);
    uint64_t na = 0, ni = 0;
    for (uint32_t p = active_.head; p != 0; p = mem_map_.page(Pfn{p}).lru_next) na++;
    for (uint32_t p = inactive_.head; p != 0; p = mem_map_.page(Pfn{p}).lru_next) ni++;
    if (na != nr_active() || ni != nr_inactive()) {
      status = ErrnoError(EIO, absl::StrCat("lru counts: active ", nr_active(), " vs ", na,
                                            ", inactive ", nr_inactive(), " vs ", ni));
    }
  }
  return status;
}

bool Vmscan::ReadSlot(uint64_t entry, void* page) {
  if (swap_ == nullptr) {
    errno = ENODEV;
    return false;
  }
  ssize_t n = pread(swap_->fd(), page, kPageSize, static_cast<off_t>(entry * kPageSize));
  if (n == static_cast<ssize_t>(kPageSize)) return true;
  if (n >= 0) errno = EIO;
  return false;
}

std::string Vmscan::StatText() {
  std::string out = absl::StrCat("mem_limit_pages ", limit_pages_, "\nnr_active_anon ",
                                 nr_active(), "\nnr_inactive_anon ", nr_inactive(), "\n");
  if (swap_) {
    absl::StrAppend(&out, "swap_slots ", swap_->nr_slots(), "\nswap_used ", swap_->nr_used(),
                    "\nswap_bad ", swap_->nr_bad(), "\n");
  }
  return out;
}

}  // namespace emu
