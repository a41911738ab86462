// Swap-in (= do_swap_page + swapin_readahead) and the swap cache's rules at a
// write fault (seed 002: can_reuse_swap_page, try_to_free_swap).
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

#include "emu/checksum.h"
#include "emu/fault_handler.h"
#include "emu/mm.h"
#include "swap/vmscan.h"

namespace emu {
namespace {

inline uint64_t Load(std::atomic<uint64_t>* e) { return e->load(std::memory_order_acquire); }

}  // namespace

bool Vmscan::FollowsSwapIn(AddressSpace& as, VirtAddr prev) {
  std::atomic<uint64_t>* e = as.page_table().Walk(prev, false);
  if (e == nullptr) return false;
  Pte pte(Load(e));
  return pte.present() && !pte.special() && !pte.locked() && !pte.dirty() &&
         mem_map_.page(pte.pfn()).Test(kPgSwapCache);
}

void* Vmscan::AcquireBuffer() {
  for (;;) {
    uint64_t m = free_buffers_.load(std::memory_order_acquire);
    if (m == 0) {
      sched_yield();
      continue;
    }
    int i = __builtin_ctzll(m);
    if (free_buffers_.compare_exchange_weak(m, m & ~(uint64_t{1} << i),
                                            std::memory_order_acquire)) {
      return buffers_ + size_t{static_cast<size_t>(i)} * kMaxRa * kPageSize;
    }
  }
}

void Vmscan::ReleaseBuffer(void* buf) {
  size_t i = (static_cast<char*>(buf) - buffers_) / (kMaxRa * kPageSize);
  free_buffers_.fetch_or(uint64_t{1} << i, std::memory_order_release);
}

void Vmscan::WaitSwapIn(std::atomic<uint64_t>* pte, uint64_t locked_value) {
  // Sleep until the swap-in in flight publishes this PTE. Bounded, so that
  // a wakeup lost between the check and the sleep costs at most 1 ms.
  for (int i = 0; i < 1000; i++) {
    uint32_t seq = swapin_seq_.load(std::memory_order_acquire);
    if (Load(pte) != locked_value) return;
    timespec ts{0, 1000 * 1000};
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&swapin_seq_), FUTEX_WAIT_PRIVATE, seq, &ts,
            nullptr, 0);
  }
}

bool Vmscan::ReuseSwapPage(Pfn pfn) {
  Page& page = mem_map_.page(pfn);
  if (!page.Test(kPgSwapCache)) return true;
  // Linux (seed 002): can_reuse_swap_page_unlocked(): page_swapcount(page,
  // add_mapcount=1) == 1, i.e. this PTE is the only user of page and slot.
  uint64_t slot = page.private_;
  int users = page.mapcount.load(std::memory_order_acquire) + swap_->Count(slot);
  if (users != 1) return false;
  // can_reuse_swap_page_locked(): with the page lock, free the slot now (it
  // is about to be stale). Without it (reclaim holds it), reuse anyway; the
  // reclaimer sees the dirty PTE and drops the slot itself.
  if (page.TryLock()) {
    if (page.Test(kPgSwapCache) && !page.Test(kPgWriteback)) {
      // Linux: try_to_free_swap() -> delete_from_swap_cache().
      page.flags.fetch_and(~kPgSwapCache, std::memory_order_relaxed);
      swap_->ClearCache(page.private_);
      page.private_ = 0;
      machine_->vmstat().Add(VmEvent::k_swap_free_on_reuse);
    }
    page.Unlock();
  }
  return true;
}

void Vmscan::SwapFree(uint64_t entry) {
  // Linux: free_swap_and_cache(). No page holds a slot that only a swap PTE
  // names (a page read back keeps the slot only while mapped), so dropping
  // the reference is all there is.
  swap_->Free(entry);
}

unsigned Vmscan::DoSwapPage(AddressSpace& as, const Vma& vma, VirtAddr addr,
                            std::atomic<uint64_t>* pte, uint64_t orig, unsigned flags) {
  VmStat& vmstat = machine_->vmstat();
  HostMmu& host = machine_->host();
  PageTable& pt = as.page_table();
  const bool write = flags & kFaultWrite;
  // Linux: swap_vma_readahead(): the swap PTEs in an aligned window around
  // the fault, inside the VMA and this page table (one ptl). Their slots
  // are usually adjacent, since reclaim writes neighbours together.
  // The window adapts like Linux's (swapin_nr_pages(), swap_vma_ra_win()),
  // from what we can observe: a fault a little ahead of this thread's
  // previous swap fault, right after a page that came back from swap (still
  // clean in the swap cache), is a forward stream and reads the largest
  // window ahead; a fault near the previous one reads the aligned window
  // around it; a fault far from it (random access) reads only its page,
  // since read-ahead pages would only take frames (bench/swap: 9.6 pages
  // read per fault on a uniform pattern with fixed windows).
  const int ra = machine_->options().swap_readahead_pages;
  AddrRange window{addr, addr + kPageSize};
  std::atomic<VirtAddr>& last = last_swap_fault_[static_cast<uint32_t>(gettid()) % kNrStreams];
  const VirtAddr prev = last.exchange(addr, std::memory_order_relaxed);
  if (ra > 1) {
    VirtAddr leaf = addr & ~(PageTable::kLeafSpan - 1);
    VirtAddr start = addr & ~(uintptr_t{static_cast<unsigned>(ra)} * kPageSize - 1);
    VirtAddr end = start + ra * kPageSize;
    const uint64_t dist = prev <= addr ? addr - prev : prev - addr;
    if (prev < addr && dist <= kMaxRa * kPageSize && addr > vma.start &&
        FollowsSwapIn(as, addr - kPageSize)) {
      // Forward from this thread's previous swap fault, right after a page
      // read back: a stream. (The page before alone is no proof: a random
      // pattern leaves many pages read back and clean.)
      start = addr;
      end = addr + kMaxRa * kPageSize;
    } else if (dist > uint64_t{static_cast<unsigned>(ra)} * 2 * kPageSize) {
      start = addr;
      end = addr + kPageSize;
    }
    window = AddrRange{start, end}.Intersect(vma.range()).Intersect({leaf, leaf + PageTable::kLeafSpan});
  }
  std::atomic<uint64_t>* base = pte - ((addr - window.start) >> kPageShift);
  // Claim: the faulting PTE first, then its swapped neighbours.
  VirtAddr addrs[kMaxRa];
  uint64_t entries[kMaxRa];
  int n = 0;
  {
    SpinLockHolder ptl(pt.Ptl(addr));
    if (Load(pte) != orig) return kFaultRetry;
    for (VirtAddr a = window.start; a < window.end; a += kPageSize) {
      std::atomic<uint64_t>* e = base + ((a - window.start) >> kPageShift);
      Pte p(Load(e));
      if (!p.swap() || p.present() || p.locked()) continue;
      e->store(p.WithLocked().raw(), std::memory_order_relaxed);
      addrs[n] = a;
      entries[n] = p.swap_entry();
      n++;
    }
  }
  const int fi = [&] {
    for (int i = 0; i < n; i++) {
      if (addrs[i] == addr) return i;
    }
    return -1;
  }();
  EMU_BUG_ON(fi < 0);
  auto unclaim = [&](int i) {
    SpinLockHolder ptl(pt.Ptl(addr));
    (base + ((addrs[i] - window.start) >> kPageShift))
        ->store(Pte::SwapEntry(entries[i]).raw(), std::memory_order_release);
  };
  // Frames: the faulting page must get one; read-ahead only takes what is
  // free without more reclaim.
  Pfn pfns[kMaxRa];
  if (AllocFrames(&as, &pfns[fi], 1, 1) != 1) {
    for (int i = 0; i < n; i++) unclaim(i);
    swapin_seq_.fetch_add(1, std::memory_order_release);
    FutexWakeAll(&swapin_seq_);
    return kFaultOom;
  }
  bool have[kMaxRa] = {};
  have[fi] = true;
  for (int i = 0; i < n; i++) {
    if (i == fi) continue;
    // Read-ahead never takes the last free frames (nor reclaims for them).
    have[i] = free_pages() > wmark_low_ && mem_map_.Alloc(&pfns[i]);
  }
  int keep = 0;  // compact to the pages that got frames, in address order
  for (int i = 0; i < n; i++) {
    if (!have[i]) {
      unclaim(i);
      continue;
    }
    addrs[keep] = addrs[i];
    entries[keep] = entries[i];
    pfns[keep] = pfns[i];
    keep++;
  }
  int f = 0;
  while (addrs[f] != addr) f++;
  n = keep;

  // Read: one op per run of adjacent addresses with adjacent slots; page i
  // lands at buf + i pages.
  char* buf = static_cast<char*>(AcquireBuffer());
  SwapIoOp ops[kMaxRa];
  int op_of[kMaxRa];
  int nops = 0;
  for (int i = 0; i < n; i++) {
    if (i > 0 && addrs[i] == addrs[i - 1] + kPageSize && entries[i] == entries[i - 1] + 1) {
      ops[nops - 1].nr_pages++;
      op_of[i] = nops - 1;
      continue;
    }
    ops[nops] = SwapIoOp{entries[i], 1, buf + size_t{static_cast<size_t>(i)} * kPageSize, 0};
    op_of[i] = nops++;
  }
  swap_->io().Read(ops, nops);
  bool ok[kMaxRa];
  for (int i = 0; i < n; i++) {
    const SwapIoOp& op = ops[op_of[i]];
    ok[i] = op.result == static_cast<int64_t>(op.nr_pages) * static_cast<int64_t>(kPageSize);
  }

  // A write fault on a slot nobody else references takes the page
  // exclusively: writable, dirty, slot freed (Linux: do_swap_page() with
  // FAULT_FLAG_WRITE and can_reuse_swap_page). Every other page keeps its
  // slot (the swap cache), clean: mapped writable with the slot's checksum
  // when the slot is this PTE's alone (Linux maps such a page writable and
  // lets the hardware dirty bit tell; reclaim compares the checksum
  // instead), write-protected otherwise, and with the checksum off.
  const bool exclusive_write = write && vma.writable() && swap_->Count(entries[f]) == 1;
  const bool checksum = machine_->options().swap_cache_checksum && vma.writable();
  bool csummed[kMaxRa] = {};
  uint64_t csums[kMaxRa];
  for (int i = 0; i < n; i++) {
    if (checksum && ok[i] && !(exclusive_write && i == f) && swap_->Count(entries[i]) == 1) {
      csummed[i] = true;
      csums[i] = PageChecksum(buf + size_t{static_cast<size_t>(i)} * kPageSize);
    }
  }
  auto writable = [&](int i) { return (exclusive_write && i == f) || csummed[i]; };
  const Prot prot = VmFlagsToProt(vma.vm_flags);
  bool installed[kMaxRa] = {};
  for (int i = 0; i < n;) {
    if (!ok[i]) {
      i++;
      continue;
    }
    int j = i + 1;
    while (j < n && ok[j] && addrs[j] == addrs[j - 1] + kPageSize && writable(j) == writable(i)) {
      j++;
    }
    AddrRange run{addrs[i], addrs[j - 1] + kPageSize};
    const char* src = buf + size_t{static_cast<size_t>(i)} * kPageSize;
    if (host.InstallCopy(run, src, prot, writable(i))) {
      for (int k = i; k < j; k++) installed[k] = true;
    } else if (j - i > 1) {
      // The run spans host VMAs that did not merge: page by page.
      for (int k = i; k < j; k++) {
        installed[k] = host.InstallCopy({addrs[k], addrs[k] + kPageSize},
                                        buf + size_t{static_cast<size_t>(k)} * kPageSize, prot,
                                        writable(k));
      }
    }
    i = j;
  }
  ReleaseBuffer(buf);

  // Publish. Linux order (seed 002's comment on page_swapcount): the page
  // takes the slot into the swap cache before the PTE's reference goes.
  int mapped = 0;
  int nr_csummed = 0;
  Pfn added[kMaxRa];
  for (int i = 0; i < n; i++) {
    std::atomic<uint64_t>* e = base + ((addrs[i] - window.start) >> kPageShift);
    if (!installed[i]) {
      unclaim(i);
      mem_map_.Free(pfns[i]);
      continue;
    }
    Page& page = mem_map_.page(pfns[i]);
    page.mapping = &as;
    page.index = addrs[i] >> kPageShift;
    page.mapcount.store(1, std::memory_order_relaxed);
    if (vma.locked()) page.flags.fetch_or(kPgMlocked, std::memory_order_relaxed);
    Pte now;
    if (exclusive_write && i == f) {
      swap_->Free(entries[i]);
      now = Pte::Anon(pfns[i], true, true, true);
    } else if (!swap_->SetCache(entries[i])) {
      // After AddressSpace::Fork() another address space read this slot
      // back first and its page holds the swap cache. Differs: Linux would
      // map that page here too; a page in place has one address, so this
      // one is a private copy, dirty (no slot behind it), and writable if
      // it went in so.
      swap_->Free(entries[i]);
      now = Pte::Anon(pfns[i], csummed[i], true, /*young=*/i == f);
    } else if (csummed[i]) {
      page.private_ = entries[i];
      page.csum = csums[i];
      page.flags.fetch_or(kPgSwapCache | kPgCsum, std::memory_order_relaxed);
      swap_->Free(entries[i]);
      now = Pte::Anon(pfns[i], true, false, /*young=*/i == f);
      nr_csummed++;
    } else {
      page.private_ = entries[i];
      page.flags.fetch_or(kPgSwapCache, std::memory_order_relaxed);
      swap_->Free(entries[i]);
      now = Pte::Anon(pfns[i], false, false, /*young=*/i == f);
    }
    {
      SpinLockHolder ptl(pt.Ptl(addr));
      e->store(now.raw(), std::memory_order_release);
    }
    added[mapped++] = pfns[i];
  }
  for (int i = 0; i < mapped; i++) LruAdd(added[i]);
  as.AddRssAnon(mapped);
  as.AddSwapPtes(-mapped);
  swapin_seq_.fetch_add(1, std::memory_order_release);
  FutexWakeAll(&swapin_seq_);
  vmstat.Add(VmEvent::k_pswpin, mapped);
  if (nr_csummed > 0) vmstat.Add(VmEvent::k_swap_cache_writable, nr_csummed);
  if (mapped > 1) vmstat.Add(VmEvent::k_swap_ra, mapped - (installed[f] ? 1 : 0));
  if (!ok[f]) {
    vmstat.Add(VmEvent::k_swap_read_errors);
    return kFaultSigbus | kFaultSwapIoErr;
  }
  if (!installed[f]) return errno == ENOMEM ? kFaultHostLimit : kFaultSigbus;
  vmstat.Add(VmEvent::k_pgmajfault);
  vmstat.Add(write ? VmEvent::k_pgfault_write : VmEvent::k_pgfault_read);
  return kFaultMajor;
}

}  // namespace emu
