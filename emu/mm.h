// AddressSpace: one emulated mm_struct. A Machine can hold many; each owns a
// window of the machine's arena, and everything it maps lies in that window.
//
// THE LOCK ORDER (the one place it is written down; mirrors Linux):
//
//   Flusher::pass_mu_             (Mutex; the flusher over a pass, invariant
//                                  checks over theirs; emu/flusher.h)
//   ShmemObject::truncate_mu_     (Mutex; one truncate of a file at a time)
//   Vmscan::lifetime_             (RwSem; reclaim passes read, teardown and
//                                  invariant checks write; swap/vmscan.h)
//   Machine::object_walk_lock_    (RwSem; writeback's page_mkclean and
//                                  truncate's zap read, an address space
//                                  leaving the objects' lists write, holding
//                                  nothing else)
//     AddressSpace::mmap_lock_    (RwSem, = mmap_lock; reclaim only try-locks
//                                  an address space other than the faulting
//                                  one; truncate takes it for write)
//       ShmemObject::io_lock_     (RwSem; a file's writes read, truncate's
//                                  ftruncate write with nothing under it)
//       ShmemObject::harvest_lock_ (RwSem, write only; a harvest of the
//                                  host's record of writes and the dirtying
//                                  of what it found, nothing under it)
//       PageTable::Ptl(addr)      (SpinLock, = the pte lock; one per leaf table)
//         MemMap::lock_           (SpinLock, = the zone lock of the buddy allocator)
//   Vmscan::lru_lock_ (= the lruvec lock), SwapDevice::swap_lock_ (= swap_lock),
//   PageTable::alloc_lock_ and Machine::lock_ are leaves: nothing is taken
//   under them. The page lock (Page kPgLocked) is only ever try-locked.
//   A fault that needs a frame may reclaim (direct reclaim) while holding its
//   own mmap_lock for read: hence lifetime_ comes first and other address
//   spaces are only try-locked.
//
// Rules:
//  - No emulator lock is held while touching managed memory from user mode.
//    A fault signal therefore never arrives in a thread that holds one, and
//    the fault path may take mmap_lock_ (for read) and a ptl in signal context.
//  - No SpinLock is held across a system call. A PTE whose host install is in
//    flight carries Pte::kLocked instead; a racing fault sees it and retries.
//  - mmap_lock_ held for write excludes every fault on this address space and
//    every reclaim pass over it (reclaim edits PTEs holding mmap_lock for read
//    and the ptl), so mmap/munmap/mprotect/madvise/mlock need no ptl to edit
//    PTEs; munmap, mprotect and mlock take it anyway for each present PTE they
//    change, which keeps one rule for readers: a present PTE changes under
//    its ptl.
#ifndef EMU_MM_H_
#define EMU_MM_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <sched.h>
#include <sys/types.h>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "emu/page.h"
#include "emu/page_table.h"
#include "emu/sync.h"
#include "emu/types.h"
#include "emu/vma.h"

namespace emu {

class FramePool;
struct Page;
class Machine;

// Our own advice values, beyond Linux's, live above 100.
// Seed 003's MADV_VOLATILE ("pages will disappear suddenly"): see Madvise.
inline constexpr int kMadvVolatile = 101;

// PinUserPages flags (Linux's FOLL_* for pin_user_pages).
inline constexpr unsigned kGupWrite = 1u << 0;   // FOLL_WRITE: the pin writes to the pages
inline constexpr unsigned kGupForce = 1u << 1;   // FOLL_FORCE: even through a read-only mapping
inline constexpr unsigned kGupNoZero = 1u << 2;  // FOLL_NOZERO (seed 004): no page for a zero-page PTE

// Invariants (CheckInvariants, with no fault or mm call in flight):
//  1. The VMA tree's invariants hold and every VMA lies inside window().
//  2. Every PTE that is not none lies inside a VMA, and none is kLocked. A
//     PTE that is neither none nor present is a swap PTE, found only on a
//     machine with a memory limit.
//  3. A special PTE maps the zero page (pfn 0) and is never writable. (It may
//     lie in a VM_LOCKED VMA, as in Linux: mlock of a PROT_NONE range fails to
//     populate it, and a later mprotect(PROT_READ) does not populate.)
//  4. A present, non-special PTE maps an anonymous Page. A page in place
//     (no kPgPool) has this address space as mapping, the page's address >>
//     kPageShift as index, and mapcount == refcount == 1. A page in the frame
//     pool (shared by Fork) may be mapped by PTEs of several address spaces;
//     Machine::CheckInvariants checks its mapcount against all of them. A
//     writable PTE never maps a page with mapcount > 1.
//  5. A writable PTE lies in a writable VMA. A writable PTE of a swap-cache
//     page is dirty (its slot is stale and dropped at the next chance); a
//     clean swap-cache page is write-protected in the host too, so reclaim
//     may drop it without I/O.
//  6. rss_anon(), nr_zero_ptes() and nr_swap_ptes() equal the counts of such PTEs.
//  7. In userfaultfd modes the host agrees: a none PTE is not present in the
//     host page table, a present PTE is present there (/proc/self/pagemap).
class AddressSpace {
 public:
  ~AddressSpace();
  AddressSpace(const AddressSpace&) = delete;
  AddressSpace& operator=(const AddressSpace&) = delete;

  // Linux: mm/mmap.c do_mmap(). Anonymous private mappings, and shared
  // anonymous ones (MAP_SHARED|MAP_ANONYMOUS: a ShmemObject of the
  // mapping's size, emu/shmem.h, shared with forked address spaces; an
  // access past its end, after an mremap that grew it, is SIGBUS). `fd` and
  // `off` follow Linux's checks (file mappings arrive with the page cache).
  // Returns the start address.
  absl::StatusOr<VirtAddr> Mmap(VirtAddr addr, size_t len, Prot prot, int flags, int fd = -1,
                                off_t off = 0);
  // Linux: do_mmap() of a file: `file` from Machine::OpenFile, MAP_SHARED
  // or MAP_PRIVATE, from byte `off` (page aligned). EACCES for MAP_SHARED
  // with PROT_WRITE of a file opened read-only. An access past the end of
  // the file (beyond its last page) is SIGBUS. Shared writable mappings
  // track dirty pages (seed 001, emu/shmem.h); private ones copy on write.
  absl::StatusOr<VirtAddr> MmapFile(VirtAddr addr, size_t len, Prot prot, int flags,
                                    ShmemObject* file, off_t off);
  // Linux: mm/msync.c msync(): writes the dirty pages of the shared file
  // mappings in the range back (MS_ASYNC and MS_SYNC both write; MS_SYNC
  // also waits for the device, fdatasync). EINVAL for bad flags, ENOMEM for
  // a hole (after the rest is written), EBUSY for MS_INVALIDATE of a locked
  // range.
  absl::Status Msync(VirtAddr addr, size_t len, int flags);
  // A file shrank (ShmemObject::Truncate): unmaps every page of `file`
  // from page offset `first` on, in shared and private mappings alike
  // (Linux: unmap_mapping_range with even_cows). Takes mmap_lock for write.
  void ZapObjectFrom(ShmemObject* file, uint64_t first);
  // Dirty tracking "async": harvests the host's record of writes to the
  // pages [first, last) of `file` in this address space's shared mappings
  // of it (ShmemObject::HarvestMapping). Takes mmap_lock for read.
  void HarvestObject(ShmemObject* file, uint64_t first, uint64_t last);
  // Linux: mm/mmap.c do_munmap(). Unmapping a hole succeeds.
  // A native mapping inside the window (the preload: a program maps a file
  // or shared memory with MAP_FIXED over memory it reserved from the
  // emulator, as a JVM maps its class-data archive). Under mmap_lock the
  // emulated memory in [addr, addr+len) is unmapped (EEXIST instead with
  // `noreplace` if any is mapped), then `map_native` must map exactly that
  // range with MAP_FIXED and return 0 or an errno; the range becomes a
  // foreign VMA (kVmForeign): occupied, never faulted by the emulator.
  // munmap, or a mapping placed over it, puts the arena's reservation back
  // (HostMmu::Reserve); mprotect, madvise, mlock and munlock on it go to the
  // kernel; mremap of it is EINVAL (not emulated). If `map_native` fails, the
  // reservation is put back and its errno returned.
  absl::Status MapForeign(VirtAddr addr, size_t len, bool noreplace,
                          absl::FunctionRef<int()> map_native);
  absl::Status Munmap(VirtAddr addr, size_t len);
  // Linux: mm/mremap.c mremap(): shrink in place, grow in place when the
  // range after the VMA is free, else (MREMAP_MAYMOVE) move to a free range
  // or to `new_addr` (MREMAP_FIXED); MREMAP_DONTUNMAP leaves the old range
  // mapped and empty. Moving carries every PTE to the new address: present
  // pages are copied to their new host address (the kernel moves page
  // tables instead; our host pages are only reachable through the host's
  // own mapping), zero-page and swap PTEs move as they are.
  absl::StatusOr<VirtAddr> Mremap(VirtAddr old_addr, size_t old_len, size_t new_len, int flags,
                                  VirtAddr new_addr = 0);
  // Linux: mm/mprotect.c do_mprotect_pkey(). Applies VMA by VMA and stops with
  // ENOMEM at the first hole, as Linux does.
  absl::Status Mprotect(VirtAddr addr, size_t len, Prot prot);
  // Linux: mm/madvise.c do_madvise(): MADV_DONTNEED, MADV_WILLNEED, the
  // access-pattern hints MADV_NORMAL/RANDOM/SEQUENTIAL (accepted, no
  // effect), the fork ones, and:
  //  - MADV_FREE (Linux's lazy free, madvise_free_pte_range()): each page
  //    mapped here alone gets a clean, write-protected PTE and kPgLazyFree
  //    and goes to the inactive tail; reclaim discards it without I/O unless
  //    a write (which traps) dirtied it again. Swapped-out pages are freed
  //    at once, shared frames and zero pages are left alone. EINVAL on a
  //    VM_LOCKED range.
  //  - kMadvVolatile (seed 003's MADV_VOLATILE): marks the VMAs (kVmVolatile)
  //    and touches no page, so its cost does not grow with the range. The
  //    length rounds down (EINVAL if that leaves nothing of a non-zero
  //    length); EINVAL, changing nothing, if any part is VM_LOCKED or a
  //    native mapping. Reclaim may then discard a page of the range
  //    (swap/vmscan.h), which reads back as zeros; a page not discarded
  //    keeps its data and takes no fault. The first fault in the VMA (of
  //    any kind) clears the mark (UnmarkVolatile).
  // Mapped parts are advised even when the range has holes; the result is
  // then ENOMEM.
  absl::Status Madvise(VirtAddr addr, size_t len, int advice);
  // The fault layer, holding no lock: a fault at `addr` found its VMA
  // volatile. Clears the mark of that VMA and merges it with its
  // neighbours (seed 003: the VMA is in use again, later faults take the
  // normal path). The VMA's swap PTEs are discarded first (their slots are
  // freed, not read: the pages may be dropped and none is in memory), so a
  // fault on one finds it discarded.
  void UnmarkVolatile(VirtAddr addr);
  // Linux: mm/mlock.c do_mlock()/munlock(): VM_LOCKED, then populate real
  // pages (no zero page: GUP_FLAGS_IGNORE_ZERO, seed 004).
  absl::Status Mlock(VirtAddr addr, size_t len);
  absl::Status Munlock(VirtAddr addr, size_t len);
  // Linux: mm/mlock.c mlockall()/munlockall(). MCL_CURRENT locks every VMA
  // (and populates it unless MCL_ONFAULT); MCL_FUTURE makes later mmap and
  // brk mappings VM_LOCKED (mm->def_flags; populated unless MCL_ONFAULT).
  // EINVAL for no flags, unknown ones, or MCL_ONFAULT alone. munlockall
  // unlocks every VMA and clears MCL_FUTURE.
  absl::Status MlockAll(int flags);
  absl::Status MunlockAll();

  // Linux: kernel/fork.c dup_mm() -> mm/fork.c dup_mmap(): a new address
  // space, in a window of the same size, that sees this one's memory at the
  // same offsets. Present pages are shared copy-on-write through the frame
  // pool (emu/frame_pool.h), zero-page PTEs stay zero-page PTEs, swap PTEs
  // share their slot. As in Linux, VM_LOCKED and mlockall(MCL_FUTURE) are
  // not inherited; MADV_DONTFORK ranges are left out and MADV_WIPEONFORK
  // ranges start empty. Native mappings (MapForeign) are left out. ENOMEM
  // when the arena has no room for the child's window or the host refuses
  // a mapping; the child is then gone and this address space unchanged but
  // for pages that moved into the pool.
  absl::StatusOr<std::unique_ptr<AddressSpace>> Fork();

  // Linux: mm/gup.c pin_user_pages(): pins the `nr` pages from `addr` into
  // `pages` and returns how many (fewer when a later page fails; the error
  // when the first does: EFAULT for a hole or a forbidden access, ENOMEM).
  // A pinned page is exclusive to this address space first (a shared frame
  // is copied, as Linux unshares an anonymous page before a FOLL_PIN), then
  // keeps its identity: reclaim leaves it mapped, fork gives the child a
  // copy at once, and a later write fault reuses it. kGupWrite breaks COW
  // and makes the PTE writable; with kGupForce the write may go through a
  // read-only private mapping (COW broken, PTE stays read-only). A zero-page
  // PTE gives kZeroPfn, unpinned (the shared zero page has no count); with
  // kGupNoZero that means "no page", and without kGupWrite it is not
  // faulted in. Each pinned pfn must go back through UnpinUserPages.
  absl::StatusOr<size_t> PinUserPages(VirtAddr addr, size_t nr, unsigned gup_flags, Pfn* pages);
  void UnpinUserPages(const Pfn* pages, size_t nr);

  // Makes [addr, addr+len) present now, writable when `write` (Linux:
  // mm/gup.c fault_in_writeable()/fault_in_readable(), populate_vma_page_range()).
  // Call it before handing memory to a system call in the SIGBUS and SIGSEGV
  // modes, where a fault taken inside the kernel fails with EFAULT instead of
  // reaching the emulator. EFAULT for a hole or a forbidden access.
  absl::Status FaultInPages(VirtAddr addr, size_t len, bool write);

  // Software state of one page, for tests and tools.
  Pte GetPte(VirtAddr addr);

  AddrRange window() const { return window_; }
  Machine& machine() const { return *machine_; }
  uint64_t rss_anon() const { return rss_anon_.load(std::memory_order_relaxed); }
  uint64_t nr_zero_ptes() const { return nr_zero_ptes_.load(std::memory_order_relaxed); }
  uint64_t nr_swap_ptes() const { return nr_swap_ptes_.load(std::memory_order_relaxed); }
  size_t nr_vmas();

  // Holds reclaim off while it checks, unless the caller already does
  // (`reclaim_blocked`, Machine::CheckInvariants).
  absl::Status CheckInvariants(bool reclaim_blocked = false);
  // Calls fn(slot, false) for each swap PTE and fn(slot, true) for each
  // mapped swap-cache page in place (not frames in the pool, which may have
  // several PTEs). Allocates nothing (a forked child's set-up).
  void ForEachSwapRef(absl::FunctionRef<void(uint64_t slot, bool cache)> fn);
  // Adds, for each swap PTE, one reference to its slot in `refs`, and for
  // each mapped swap-cache page one to its slot in `cached`.
  void CollectSwapRefs(absl::flat_hash_map<uint64_t, int>* refs,
                       absl::flat_hash_map<uint64_t, int>* cached);
  // Adds, for each present PTE that maps a frame in the pool, one to that
  // pfn's entry in `maps`.
  void CollectPoolMaps(absl::flat_hash_map<uint64_t, int>* maps);

  // A fork in progress (the preload): the forking thread holds mmap_lock for
  // write from its atfork prepare handler to its parent handler, and glibc's
  // fork touches emulated memory in between (malloc's arena locks). Faults
  // meanwhile run under that write lock instead of taking it for read
  // (nothing else can change the address space), and reclaim leaves the
  // address space alone. BeginFork() after taking the write lock;
  // EndFork() before releasing it waits for those faults to finish.
  void BeginFork() { forking_.store(true, std::memory_order_seq_cst); }
  void EndFork() {
    forking_.store(false, std::memory_order_seq_cst);
    while (fork_faults_.load(std::memory_order_seq_cst) != 0) sched_yield();
  }
  bool forking() const { return forking_.load(std::memory_order_seq_cst); }
  // The forked child's copy: no fork in progress, no borrowed faults.
  void ResetForkAfterFork() {
    forking_.store(false, std::memory_order_relaxed);
    fork_faults_.store(0, std::memory_order_relaxed);
  }
  std::atomic<int>& fork_faults() { return fork_faults_; }

  // ---- For the fault layer (fault/) and reclaim (swap/) ----
  RwSem* mmap_lock() ABSL_LOCK_RETURNED(mmap_lock_) { return &mmap_lock_; }
  const VmaTree& vmas() const ABSL_SHARED_LOCKS_REQUIRED(mmap_lock_) { return vmas_; }
  // For RmapMethod::Fork (anon_vma_prepare sets Vma::anon_vma).
  VmaTree& MutableVmasForRmap() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_) { return vmas_; }
  PageTable& page_table() { return pt_; }
  // Accounting of PTEs the fault path installs. async-signal-safe.
  void AddRssAnon(int64_t n) { rss_anon_.fetch_add(n, std::memory_order_relaxed); }
  void AddZeroPtes(int64_t n) { nr_zero_ptes_.fetch_add(n, std::memory_order_relaxed); }
  void AddSwapPtes(int64_t n) { nr_swap_ptes_.fetch_add(n, std::memory_order_relaxed); }
  // Where the last fault run of faulting thread `tid` ended (a hint for
  // detecting sequential streams; collisions between threads only weaken it).
  std::atomic<VirtAddr>& FaultStream(uint32_t tid) { return fault_stream_[tid % kNrStreams]; }
  // The host protection of one page: the VMA's, reduced by the PTE's state
  // where the host encodes it (SIGSEGV mode).
  Prot HostProtFor(const Vma& vma, Pte pte) const;

 private:
  friend class Machine;
  AddressSpace(Machine* machine, AddrRange window) : machine_(machine), window_(window) {}

  // Places a new VMA (Mmap, MmapFile): at `addr` when `flags` says fixed,
  // else a free range; then populates it if asked.
  absl::StatusOr<VirtAddr> InsertMapping(VirtAddr addr, size_t rounded, int flags,
                                         uint32_t vm_flags, ShmemObject* file, uint64_t pgoff,
                                         bool populate);
  // Finds a free range of `len` bytes, top-down (= arch_get_unmapped_area_topdown).
  absl::StatusOr<VirtAddr> GetUnmappedAreaLocked(VirtAddr hint, size_t len)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // Clears the PTEs of `r`, frees their pages, drops them from the host.
  void ZapRangeLocked(AddrRange r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // Dirty tracking "async", before the host mappings of `r` go (zap,
  // mremap): the tracked pieces stop taking writes (a write meanwhile
  // traps and is retried once the range is the emulator's again), then
  // their written pages are dirtied, so that no write is forgotten with
  // the mapping (Linux: zap_pte_range moves the PTE's dirty bit to the
  // folio).
  void HarvestBeforeUnmapLocked(AddrRange r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // Puts the arena's reservation back over `r`, where pool frames were
  // mapped (a file page left mapped would be found again by the host
  // without a fault), with the protection of the VMAs still there.
  void UnpoolHostLocked(AddrRange r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // A pinned page in place loses its mapping at `a`: its bytes move into
  // the pool first.
  void KeepPinnedBytesLocked(Page& page, Pfn pfn, VirtAddr a)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // Fork's halves (emu/fork.cc): every VMA, then one VMA's PTEs.
  absl::Status DupMmapLocked(AddressSpace& child, FramePool& pool)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_, child.mmap_lock_);
  absl::Status CopyPteRangeLocked(AddressSpace& child, const Vma& v, VirtAddr delta,
                                  FramePool& pool, bool over_budget)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_, child.mmap_lock_);
  // The same for a shared mapping (Vma::file): the child maps the same pages.
  absl::Status CopySharedPteRangeLocked(AddressSpace& child, const Vma& v, VirtAddr delta,
                                        FramePool& pool)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_, child.mmap_lock_);
  // The child's own copy of the page `pte` maps at `a` (in VMA `v`): a
  // pinned page, or any page past the host VMA budget.
  bool CopyPageForChildLocked(AddressSpace& child, const Vma& v, VirtAddr a, VirtAddr delta,
                            Pte pte) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_, child.mmap_lock_);
  // Unmaps `r` entirely: zap, remove VMAs, host protection PROT_NONE.
  void UnmapLocked(AddrRange r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // Brings host protection of `r` (inside one VMA) in line with the VMA and PTEs.
  void SyncHostProtLocked(const Vma& vma, AddrRange r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // Applies `change` to every VMA piece of `r` in order; stops with ENOMEM at
  // the first hole (mprotect/mlock semantics).
  template <typename Fn>
  absl::Status ApplyToVmasLocked(AddrRange r, Fn&& change)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // Moves the pages of `src` (inside a VMA: `src_vma` describes that part,
  // its flags, page offset and anon_vma) to a new VMA at `dst` of `dst_len`
  // bytes (>= src length); see Mremap.
  absl::Status MoveRangeLocked(AddrRange src, const Vma& src_vma, VirtAddr dst, size_t dst_len,
                               bool dontunmap) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // Madvise's kMadvVolatile: EINVAL if any VMA of `r` may not be marked.
  absl::Status CheckVolatileLocked(AddrRange r) ABSL_SHARED_LOCKS_REQUIRED(mmap_lock_);
  // Madvise's MADV_FREE on one VMA piece `r` of `v`.
  void LazyFreeLocked(const Vma& v, AddrRange r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // Sets or clears kVmLocked over r.
  absl::Status SetLockedLocked(AddrRange r, bool lock) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  // SetLockedLocked on every VMA (mlockall MCL_CURRENT, munlockall).
  absl::Status SetLockedAllLocked(bool lock) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mmap_lock_);
  absl::Status Populate(AddrRange r, bool nozero, bool stop_at_inaccessible);
  absl::Status CheckHostAgreementLocked() ABSL_SHARED_LOCKS_REQUIRED(mmap_lock_);
  absl::Status CheckInvariantsLocked() ABSL_SHARED_LOCKS_REQUIRED(mmap_lock_);

  Machine* const machine_;  // immutable
  const AddrRange window_;  // immutable
  RwSem mmap_lock_;
  VmaTree vmas_ ABSL_GUARDED_BY(mmap_lock_);
  PageTable pt_;  // see PageTable for its locking
  static constexpr int kNrStreams = 64;
  std::array<std::atomic<VirtAddr>, kNrStreams> fault_stream_{};  // hints, relaxed atomics
  std::atomic<int64_t> rss_anon_{0};
  std::atomic<int64_t> nr_zero_ptes_{0};
  std::atomic<int64_t> nr_swap_ptes_{0};
  std::atomic<bool> forking_{false};
  std::atomic<int> fork_faults_{0};
  // mlockall(MCL_FUTURE): flags every new mapping gets (= mm->def_flags),
  // and whether they are populated (not with MCL_ONFAULT). Under mmap_lock.
  uint32_t def_flags_ = 0;
  bool def_populate_ = false;
};

// Makes a freshly allocated frame the exclusive anonymous page mapped at
// `addr` of `vma` in `as`, in place. Linux: mm/rmap.c
// folio_add_new_anon_rmap(). Preconditions: the page's PTE is claimed
// (kLocked) by the caller, or its address space is write-locked.
inline void AddNewAnonRmap(Page& page, AddressSpace* as, const Vma& vma, VirtAddr addr) {
  page.mapping = as;
  page.index = addr >> kPageShift;
  page.mapcount.store(1, std::memory_order_relaxed);
  if (vma.locked()) page.flags.fetch_or(kPgMlocked, std::memory_order_relaxed);
}

}  // namespace emu

#endif  // EMU_MM_H_
