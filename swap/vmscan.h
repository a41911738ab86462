// Vmscan: the memory limit. Reclaim lists (= the lruvec), background and
// direct reclaim (= kswapd and shrink_page_list), the swap cache and swap-in
// (= mm/swap_state.c, do_swap_page) over a SwapDevice.
//
// How a page leaves and comes back (the whole story is in docs/DESIGN.md):
//   mapped, dirty --reclaim: slot, PTE and host write-protected, written from
//   its own address--> PTE locked, host page dropped --> swap PTE
//   swap PTE --fault: read into a bounce buffer, installed write-protected-->
//   mapped, clean, in the swap cache (keeps its slot) --write fault-->
//   slot freed (try_to_free_swap), writable, dirty
//   mapped, clean, in the swap cache --reclaim--> swap PTE, no I/O
//
// Locks, in order after the core's (emu/mm.h): lifetime_ (RwSem; reclaim
// passes hold it for reading, address-space teardown and invariant checks for
// writing) > mmap_lock of a victim's address space (only ever try-locked:
// reclaim runs inside faults that hold their own) > ptl > lru_lock_ and the
// device's swap_lock (leaves, never nested). The page lock (kPgLocked) is only
// ever try-locked, so it orders against nothing.
#ifndef EMU_SWAP_VMSCAN_H_
#define EMU_SWAP_VMSCAN_H_

#include <array>
#include <atomic>
#include <memory>

#include "absl/status/statusor.h"
#include "emu/machine.h"
#include "emu/reclaim.h"
#include "emu/sync.h"
#include "swap/swap_device.h"

namespace emu {

// The most pages one swap-in reads (the fault and its readahead).
inline constexpr int kMaxRa = 64;

// Which pages reclaim takes first. Both keep pages on Page::lru_prev/next
// lists under Vmscan's lru_lock_; a policy only decides the moves.
enum class ReclaimPolicy {
  // Linux's two lists: new pages enter the inactive list; a page found
  // referenced (young) at the inactive tail is activated; when the inactive
  // list is shorter than the active one, pages move from the active tail to
  // the inactive head with their young bit cleared and, if writable, their
  // PTE write-protected (a write to them then marks them young again: the
  // references we can observe from userspace, see docs/DESIGN.md).
  kLru,
  // One list in fault order, references ignored: the baseline to compare with.
  kFifo,
};

class Vmscan : public PageReclaim {
 public:
  static absl::StatusOr<std::unique_ptr<Vmscan>> Create(Machine* machine);
  ~Vmscan() override;

  int AllocFrames(AddressSpace* held, Pfn* out, int n, int min) override;
  void LruAdd(Pfn pfn) override;
  void FreePage(Pfn pfn) override;
  void SwapFree(uint64_t entry) override;
  bool ReadSlot(uint64_t entry, void* page) override;
  void Mlocked(Pfn pfn) override;
  void Munlocked(Pfn pfn) override;
  void LazyFree(Pfn pfn) override;
  bool SwapDuplicate(uint64_t entry) override;
  bool DropSwapCache(Pfn pfn) override;
  void DropSwapCacheLocked(Pfn pfn) override;
  unsigned DoSwapPage(AddressSpace& as, const Vma& vma, VirtAddr addr,
                      std::atomic<uint64_t>* pte, uint64_t orig, unsigned flags) override;
  bool ReuseSwapPage(Pfn pfn) override;
  void WaitSwapIn(std::atomic<uint64_t>* pte, uint64_t locked_value) override;
  void ForgetAddressSpace(AddressSpace* as) override;
  // lifetime_ held across calls: outside the static analysis.
  void BlockReclaim() override ABSL_NO_THREAD_SAFETY_ANALYSIS;
  void UnblockReclaim() override ABSL_NO_THREAD_SAFETY_ANALYSIS;
  absl::Status CheckSwapRefs(const absl::flat_hash_map<uint64_t, int>& refs,
                             const absl::flat_hash_map<uint64_t, int>& cached) override;
  absl::Status ShrinkTo(uint64_t target_pages) override;
  std::string StatText() override;
  int ForkPrepare(bool share) override;
  void ForkParent(int token, bool attached) override;
  bool ChildEarly() override ABSL_NO_THREAD_SAFETY_ANALYSIS;
  absl::Status ChildLate() override;
  void ChildLeaveShare() override;
  uint64_t limit_pages() const override { return limit_pages_; }

  // The swap device, or nullptr with MachineOptions::no_swap (tests wrap its
  // I/O to inject faults).
  SwapDevice* swap_device() { return swap_.get(); }
  uint64_t nr_active() const { return nr_active_.load(std::memory_order_relaxed); }
  uint64_t nr_inactive() const { return nr_inactive_.load(std::memory_order_relaxed); }
  uint64_t free_pages() const;

 private:
  struct Victim;  // one isolated page on its way through ShrinkList
  struct List {
    uint32_t head = 0, tail = 0;  // pfns; 0: none
  };
  Vmscan(Machine* machine, std::unique_ptr<SwapDevice> swap, ReclaimPolicy policy);

  // Reclaims up to `nr` pages; returns how many frames it freed.
  // Linux: mm/vmscan.c shrink_lruvec().
  int Shrink(AddressSpace* held, int nr);
  // Linux: shrink_active_list(): ages up to `nr` pages from the active tail.
  void RefillInactive(AddressSpace* held, int nr);
  // Linux: shrink_page_list() over isolated pages; returns frames freed.
  // Three passes: decide and write-protect (per address space, under its
  // mmap_lock), write (no lock), unmap what did not change (mmap_lock again).
  struct SlotRun {
    uint64_t first = 0;
    uint32_t len = 0, used = 0;
  };
  int ShrinkList(AddressSpace* held, Victim* v, int n);
  // One isolated frame in the pool, through the reverse map (shrink_shared.cc);
  // returns the frames freed (0 or 1).
  int ShrinkPoolPage(Pfn pfn);
  // One isolated page of a file's page cache (kPgFile): written back if
  // dirty, unmapped and dropped (shrink_shared.cc); returns the frames freed.
  int ShrinkFilePage(Pfn pfn);
  void DecidePages(AddressSpace* held, Victim* v, int n, SlotRun* run);
  void DecideOne(Victim& x, AddressSpace& as, SlotRun* run);
  // A slot for a page to write, from `run` (refilled from the device).
  bool TakeSlot(SlotRun* run, uint64_t* slot);
  // A checksummed swap-cache page, write-protected now: unchanged -> a
  // clean copy of its slot; changed -> written to a new slot.
  void VerifyOne(Victim& x, PageTable& pt, SlotRun* run);
  void UndoWrite(Victim& x, PageTable& pt);
  void WritePages(Victim* v, int n);
  int UnmapPages(AddressSpace* held, Victim* v, int n);
  void WriteFailed(Victim& x, PageTable& pt, std::atomic<uint64_t>* e, bool same);
  void KeepMapped(Victim& x, std::atomic<uint64_t>* e);
  // Takes the victims' address space's mmap_lock for reading unless the
  // caller already holds it; false when it is contended.
  // (Conditional locking: callers assert the lock after a true return.)
  bool LockSpace(AddressSpace* as, AddressSpace* held) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  void UnlockSpace(AddressSpace* as, AddressSpace* held) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // Puts an isolated page back on a list (or leaves it off if mlocked) and
  // drops reclaim's reference and page lock.
  void Putback(Pfn pfn, bool active);
  void Release(Pfn pfn);  // unlock + put, no list change (page gone)

  void ListAddHead(List& l, Pfn pfn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lru_lock_);
  void ListAddTail(List& l, Pfn pfn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lru_lock_);
  void ListDel(List& l, Pfn pfn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lru_lock_);
  void LruDelLocked(Page& page, Pfn pfn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lru_lock_);
  void LruAddLocked(Page& page, Pfn pfn, bool active) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lru_lock_);

  // The kswapd thread: sleeps until free frames fall below the low
  // watermark, then reclaims until they reach the high one.
  void KswapdLoop();
  void WakeKswapd();

  // Whether the page at `prev` was read back from swap and not written
  // since: the fault after it continues a stream.
  bool FollowsSwapIn(AddressSpace& as, VirtAddr prev);
  // Bounce buffers for swap-in (kMaxRa pages each), handed out lock-free.
  void* AcquireBuffer();
  void ReleaseBuffer(void* buf);

  Machine* const machine_;
  MemMap& mem_map_;
  const std::unique_ptr<SwapDevice> swap_;  // nullptr: no swap
  const ReclaimPolicy policy_;
  const uint64_t limit_pages_;
  const uint64_t wmark_low_, wmark_high_;

  RwSem lifetime_;
  SpinLock lru_lock_;
  List active_ ABSL_GUARDED_BY(lru_lock_);
  List inactive_ ABSL_GUARDED_BY(lru_lock_);
  std::atomic<uint64_t> nr_active_{0}, nr_inactive_{0};  // written under lru_lock_

  pthread_t kswapd_{};
  bool kswapd_started_ = false;
  std::atomic<uint32_t> kswapd_wake_{0};  // futex word: a generation count
  std::atomic<bool> kswapd_running_{false};
  std::atomic<bool> stop_{false};
  int fork_token_ = -1;        // ForkPrepare's, read by the child
  uint64_t last_reap_ns_ = 0;  // kswapd's: when it last looked for sharers that are gone

  std::atomic<uint32_t> swapin_seq_{0};  // futex word: bumped when a swap-in publishes
  std::atomic<uint32_t> frames_freed_{0};  // futex word: bumped when reclaim frees frames
  // The last swap-in fault address of each thread (hashed by tid; a
  // collision only weakens the read-ahead hint).
  static constexpr int kNrStreams = 64;
  std::array<std::atomic<VirtAddr>, kNrStreams> last_swap_fault_{};

  static constexpr int kNrBuffers = 64;
  char* buffers_ = nullptr;  // kNrBuffers * kMaxRa pages, immutable mapping
  std::atomic<uint64_t> free_buffers_{0};  // bit i: buffer i is free
  int nr_buffers_ = 0;
};

}  // namespace emu

#endif  // EMU_SWAP_VMSCAN_H_
