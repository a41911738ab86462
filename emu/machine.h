// Machine: one emulated machine. It owns the arena (a reservation of host
// virtual memory in which every page it serves lives), the fault source that
// catches accesses to it, the mem_map and frame accounting, and the vmstat
// counters. Address spaces are carved out of the arena.
//
// Create one with emu::CreateMachine() (fault/machine_factory.h), which wires
// in the fault source chosen by MachineOptions::fault_mode.
#ifndef EMU_MACHINE_H_
#define EMU_MACHINE_H_

#include <sys/types.h>

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <vector>
#include <string>

#include "absl/status/statusor.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"
#include "emu/fault_handler.h"
#include "emu/flusher.h"
#include "emu/frame_pool.h"
#include "emu/host_mmu.h"
#include "emu/mm.h"
#include "emu/page.h"
#include "emu/reclaim.h"
#include "emu/rmap.h"
#include "emu/shmem.h"
#include "emu/vmstat.h"
#include "swap/swap_io.h"

namespace emu {

struct MachineOptions {
  FaultMode fault_mode = FaultMode::kUffdSigbus;
  // Pages mapped around a read fault (and a sequential write fault), aligned
  // like Linux's fault_around_bytes; 1 disables fault-around.
  int fault_around_pages = 16;
  // Map the shared zero page on read faults of private anonymous memory.
  bool zero_page = true;
  // Host virtual memory reserved for all address spaces of the machine.
  uint64_t arena_bytes = uint64_t{64} << 30;
  // Frames the machine may hand out (0: one per arena page).
  uint64_t max_frames = 0;

  // The memory limit: bytes of resident frames (0: none). With a limit,
  // reclaim keeps the machine under it by writing pages to the swap device
  // and bringing them back on the next fault; without one nothing is
  // reclaimed. At least kMinMemLimit; overrides max_frames.
  uint64_t mem_limit = 0;
  // The swap device: a file at swap_path (created, mode 0600), or when empty
  // an unlinked O_TMPFILE in swap_dir (empty: $TMPDIR, else /var/tmp).
  std::string swap_path;
  std::string swap_dir;
  // Swap size in bytes (0: twice the limit, at least 64 MiB).
  uint64_t swap_bytes = 0;
  // Run under the limit with no swap at all: when the limit is reached and
  // nothing clean can be dropped, the faulting access gets SIGBUS.
  bool no_swap = false;
  // Try O_DIRECT on the swap file (falls back when the filesystem refuses).
  bool swap_direct_io = true;
  int swap_queue_depth = 64;
  // How long a swap-in polls for its read's completion before it sleeps,
  // in microseconds, 0..10000 (0: sleep at once). Polling keeps the
  // waiting CPU from halting, which on a VM makes the completion's wake-up
  // slow; it costs that CPU for up to this long per swap-in (swap/swap_io.h).
  int swap_read_poll_us = 200;
  // Pages read around a swap-in fault (1 disables swap readahead), 1..64.
  int swap_readahead_pages = 8;
  // A page read back from a slot nobody else references is mapped writable,
  // with its slot's checksum: reclaim drops it without I/O when the
  // checksum still matches (its PTE cannot show a write; Linux's hardware
  // dirty bit does). Off: mapped write-protected, and its first write is a
  // fault (the swap cache of seed 002).
  bool swap_cache_checksum = true;
  // Reclaim policy: "lru" (active/inactive lists, references from faults and
  // write-protect sampling, as Linux) or "fifo" (one list, no references).
  std::string reclaim_policy = "lru";
  // The reverse map of frames shared by AddressSpace::Fork (emu/rmap.h):
  // "anon_vma" or "anonmm".
  std::string rmap = "anon_vma";
  // Host VMAs (the whole process's, /proc/self/maps) past which shared
  // frames stop adding host mappings: a fork copies pages for the child
  // instead of sharing them, and a copy-on-write fault unshares its whole
  // 2 MiB block, whose copies merge into one host VMA. Well under
  // vm.max_map_count (65530 by default).
  int64_t pool_vma_budget = 24000;

  // Dirty pages of emulated files (emu/flusher.h; Linux's vm.dirty_*):
  // above the background threshold the flusher writes them back; above the
  // dirty threshold a writer's fault waits for it (balance_dirty_pages).
  // The thresholds are shares of the memory limit (of the frames, without
  // one), or bytes when the *_bytes option is set.
  int dirty_background_ratio = 10;
  int dirty_ratio = 20;
  uint64_t dirty_background_bytes = 0;
  uint64_t dirty_bytes = 0;
  // The flusher wakes this often to write pages dirty for longer than
  // dirty_expire_ms (0: no periodic writeback).
  int dirty_writeback_ms = 5000;
  int dirty_expire_ms = 30000;
  // How emulated files read and write their pages: "psync" (pread/pwrite,
  // one page per call) or "uring" (io_uring batches; two rings per file).
  // psync by default: measured faster on buffered files (docs/DESIGN.md).
  std::string file_io = "psync";
  // How writes to shared file mappings dirty their pages: "fault" (seed
  // 001: a clean page is mapped read-only and its first write faults),
  // "async" (the host records writes, userfaultfd WP_ASYNC, and harvests
  // them in bulk with PAGEMAP_SCAN before writeback, reclaim and unmap; the
  // userfaultfd modes on Linux 6.7 or later), or "auto": async where the
  // host offers it, else fault. docs/DESIGN.md section 8 has the trade-off.
  std::string dirty_tracking = "auto";

  // Checks ranges; returns EINVAL with a message naming the bad option.
  absl::Status Validate() const;
  std::string ToString() const;
};

inline constexpr uint64_t kMinMemLimit = uint64_t{4} << 20;

// Parses "64G", "512M", "4096", "1.5G", "2T", "16k" (binary units).
absl::StatusOr<uint64_t> ParseSize(std::string_view s);

// Invariants:
//  1. The arena is granule aligned; each granule belongs to at most one
//     address space, recorded in granule_owner_.
//  2. Every live AddressSpace's window is a run of granules it owns.
class Machine {
 public:
  static constexpr uint64_t kGranule = uint64_t{1} << 30;  // address-space window unit
  static constexpr int kMaxGranules = 4096;

  using HostMmuFactory =
      std::function<absl::StatusOr<std::unique_ptr<HostMmu>>(Machine*, AddrRange arena)>;
  using FaultHandlerFactory = std::function<std::unique_ptr<FaultHandler>(Machine*)>;
  using ReclaimFactory =
      std::function<absl::StatusOr<std::unique_ptr<PageReclaim>>(Machine*)>;
  using RmapFactory = std::function<absl::StatusOr<std::unique_ptr<RmapMethod>>(Machine*)>;
  // Used by emu::CreateMachine(); prefer that. `reclaim_factory` is called
  // when options.mem_limit is set.
  static absl::StatusOr<std::unique_ptr<Machine>> CreateWith(
      const MachineOptions& options, const HostMmuFactory& host_factory,
      const FaultHandlerFactory& handler_factory,
      const ReclaimFactory& reclaim_factory = nullptr, const RmapFactory& rmap_factory = nullptr);
  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  // A new, empty address space whose window has `window_bytes` (rounded up to
  // whole granules; 0 = a quarter of the arena, at least one granule).
  // ENOMEM when the arena has no such free run.
  absl::StatusOr<std::unique_ptr<AddressSpace>> CreateAddressSpace(uint64_t window_bytes = 0);

  // The address space whose window contains `addr`, or nullptr.
  // async-signal-safe, lock-free.
  AddressSpace* FindAddressSpace(VirtAddr addr) const {
    if (!arena_.Contains(addr)) return nullptr;
    return granule_owner_[(addr - arena_.start) / kGranule].load(std::memory_order_acquire);
  }

  const MachineOptions& options() const { return options_; }
  AddrRange arena() const { return arena_; }
  HostMmu& host() { return *host_; }
  // Whether writes to `v`'s pages are tracked by the host (dirty tracking
  // "async": a shared mapping of a file; HostMmu::MapPoolTracked).
  bool Tracked(const Vma& v) const;
  FaultHandler& fault_handler() { return *fault_handler_; }
  MemMap& mem_map() { return *mem_map_; }
  // The memory limit's reclaim and swap, or nullptr without a limit.
  PageReclaim* reclaim() { return reclaim_.get(); }
  // The reverse-map method (MachineOptions::rmap), or nullptr when the
  // machine was made without one (AddressSpace::Fork is then EINVAL).
  RmapMethod* rmap() { return rmap_.get(); }

  // Frames for the fault path and the model: up to `n` into `out`, at least
  // `min` if memory can be found (see PageReclaim::AllocFrames). Returns how
  // many. async-signal-safe.
  int AllocFrames(AddressSpace* held, Pfn* out, int n, int min) {
    if (reclaim_) return reclaim_->AllocFrames(held, out, n, min);
    int got = 0;
    while (got < n && mem_map_->Alloc(&out[got])) got++;
    return got;
  }
  // Drops one reference to `pfn` (= put_page()); frees the frame with the
  // last. async-signal-safe.
  void PutPage(Pfn pfn) {
    if (mem_map_->page(pfn).refcount.fetch_sub(1, std::memory_order_acq_rel) == 1) FreePage(pfn);
  }
  void FreePage(Pfn pfn) {
    Page& page = mem_map_->page(pfn);
    if (page.Test(kPgPool)) {
      frame_pool()->Release(page.pool_off);
      page.flags.fetch_and(~kPgPool, std::memory_order_relaxed);
    }
    if (reclaim_) {
      reclaim_->FreePage(pfn);
    } else {
      mem_map_->Free(pfn);
    }
  }
  // The pool of frames seen at more than one address (AddressSpace::Fork),
  // or nullptr before the first fork. async-signal-safe.
  FramePool* frame_pool() const { return frame_pool_.load(std::memory_order_acquire); }
  // Creates the pool on first use. Not async-signal-safe.
  absl::StatusOr<FramePool*> EnsureFramePool();
  // A new shared memory object of `nr_pages` (MAP_SHARED|MAP_ANONYMOUS),
  // owned by the machine: it lives as long as the machine (its pages go with
  // its last VMA). ENOMEM when its index cannot be mapped.
  absl::StatusOr<ShmemObject*> CreateShmem(uint64_t nr_pages, uint64_t capacity = 0);
  // How far an emulated file may grow past its size at OpenFile: 64 GiB.
  static constexpr uint64_t kFileGrowthPages = uint64_t{1} << 24;
  // An emulated file (emu/shmem.h "Files"): `path` opened read-write when
  // `writable`, else read-only, its pages cached in the frame pool when
  // mapped (AddressSpace::MmapFile). Owned by the machine like a shared
  // memory object. Linux's errors: ENOENT, EACCES, ENODEV for what is not a
  // regular file.
  absl::StatusOr<ShmemObject*> OpenFile(const std::string& path, bool writable);
  // Held for read by a walk over an object's address spaces outside reclaim
  // (ShmemObject::MkClean), for write while an address space leaves every
  // object's list (its last step): a walk never visits a freed one.
  RwSem* object_walk_lock() { return &object_walk_lock_; }
  // How emulated files do their I/O (io_uring: swap/swap_io.h), installed
  // by CreateMachine; without one a file uses pread/pwrite.
  using FileIoFactory = std::function<absl::StatusOr<std::unique_ptr<SwapIo>>(int fd)>;
  void set_file_io_factory(FileIoFactory f) { file_io_factory_ = std::move(f); }
  // Calls fn for every emulated file (objects with a file behind them).
  // Takes lock_: not for the fault path.
  void ForEachFile(absl::FunctionRef<void(ShmemObject*)> fn);
  // The dirty limits and the background writeback of files (emu/flusher.h).
  Flusher& flusher() { return *flusher_; }
  // The bytes of frame `pfn` (a pinned page's holder reads them here): at
  // its address for a page in place, in the pool's read-only view for a
  // frame in the pool. The caller keeps the page from going (a pin).
  const void* FrameData(Pfn pfn) {
    const Page& page = mem_map_->page(pfn);
    if (page.Test(kPgPool)) return frame_pool()->view(page.pool_off);
    return reinterpret_cast<const void*>(page.index << kPageShift);
  }
  // Every address space's invariants, then the swap_map against the swap
  // PTEs of all of them. Call with no fault or mm call in flight.
  absl::Status CheckInvariants();
  VmStat& vmstat() { return vmstat_; }
  const VmStat& vmstat() const { return vmstat_; }
  int nr_address_spaces() const { return nr_address_spaces_.load(); }
  // The native mappings inside the arena (kVmForeign VMAs of every address
  // space), sorted: a fault registration covers the arena but these. Call
  // with no mm call in flight (start-up, a forked child).
  std::vector<AddrRange> ForeignRanges() const ABSL_NO_THREAD_SAFETY_ANALYSIS;

  // fork() of the whole process (the preload; machine.cc says how the child
  // keeps its fault registration). In the parent: ForkPrepare before fork()
  // (first thing, before mmap_lock: it serializes forks; false: no socket
  // pair, the child then cannot be told apart from a
  // failed fork), ForkParent after it with PageReclaim::ForkPrepare's token:
  // hands the child its registration and returns; a thread waits for the
  // child's verdict (ChildDone) and passes it to PageReclaim::ForkParent.
  // The machine must outlive that thread (the preload never destroys it).
  bool ForkPrepare() ABSL_NO_THREAD_SAFETY_ANALYSIS;
  void ForkParent(int token) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // In the child, async-signal-safe and without allocating, first thing
  // (the signal handler calls it on the child's first fault; the preload's
  // atfork handler calls it in any case): takes the child's fault
  // registration, unlocks every lock the parent's threads may have held,
  // undoes what faults in flight in those threads left half done (swap-ins
  // keep their swap PTE), rebuilds the reclaim state and the swap_map under
  // a memory limit (PageReclaim::ChildEarly) and starts the counters from
  // zero. A no-op outside a forked child of a prepared fork.
  void ChildEarlyIfPending();
  // In the child, after ChildEarlyIfPending, allocating: the child's own
  // handler threads, I/O rings and kswapd. Then ChildDone tells the parent,
  // and returns once the parent has stopped reading the child's fault
  // descriptor (so that a fork of the child's raises its event where the
  // child reads it); a child that cannot stay calls ChildLeave (its share of
  // the swap device goes; its memory stops being registered) after reading
  // what it needs.
  absl::Status ChildLate();
  void ChildDone(char status);
  void ChildLeave();
  // Whether the child took a share of the swap device (ChildEarlyIfPending).
  bool child_attached() const { return child_attached_; }
  // Calls fn(AddressSpace*) once per live address space, without lock_:
  // for a forked child (no other thread) and for callers that keep windows
  // from changing.
  template <typename Fn>
  void ForEachSpaceUnlocked(Fn&& fn) const {
    for (size_t g = 0; g < granule_owner_.size(); g++) {
      AddressSpace* as = granule_owner_[g].load(std::memory_order_acquire);
      // Each space once, at its first granule.
      if (as != nullptr && (g == 0 || granule_owner_[g - 1].load(std::memory_order_relaxed) != as)) {
        fn(as);
      }
    }
  }

  // vmstat plus gauges (nr_anon_pages, nr_zero_ptes, peak_anon_pages, ...), as
  // "name value" lines like /proc/vmstat.
  std::string VmStatText() const;

 private:
  Machine(const MachineOptions& options, AddrRange arena);
  friend class AddressSpace;
  void ReleaseWindow(AddressSpace* as);

  const MachineOptions options_;
  const AddrRange arena_;  // immutable
  std::unique_ptr<MemMap> mem_map_;
  std::unique_ptr<HostMmu> host_;
  std::unique_ptr<FaultHandler> fault_handler_;
  std::unique_ptr<PageReclaim> reclaim_;  // after host_: it is destroyed first
  std::unique_ptr<RmapMethod> rmap_;
  std::unique_ptr<Flusher> flusher_;
  FileIoFactory file_io_factory_;
  HostMmuFactory host_factory_;           // kept for ChildLate (no fork events)
  std::unique_ptr<FramePool> frame_pool_owner_;  // set once, under lock_
  std::atomic<FramePool*> frame_pool_{nullptr};
  VmStat vmstat_;
  mutable absl::Mutex lock_;  // serializes window allocation; never taken in the fault path
  std::vector<std::unique_ptr<ShmemObject>> shmem_ ABSL_GUARDED_BY(lock_);
  RwSem object_walk_lock_;
  // Written under lock_, read lock-free by the fault path.
  std::array<std::atomic<AddressSpace*>, kMaxGranules> granule_owner_{};
  std::atomic<int> nr_address_spaces_{0};
  // fork() state (ForkPrepare .. ChildDone). The child's copy of
  // fork_pending_ says that its set-up is still to do.
  SpinLock fork_lock_;  // ForkPrepare .. ForkParent
  std::atomic<bool> fork_pending_{false};
  pid_t fork_owner_ = 0;
  int fork_ctl_[2] = {-1, -1};  // [0] the parent's end, [1] the child's
  bool child_early_started_ = false;
  bool child_host_ok_ = true;
  bool child_attached_ = false;

 public:
  // SIGSEGV mode: an upper estimate of the host VMAs the fault path has
  // created by protecting runs of pages differently from their neighbours
  // (each protection boundary it adds is one more host VMA). Above
  // kHostVmaBudget faults make whole blocks uniform instead.
  static constexpr int64_t kHostVmaBudget = 24000;  // vm.max_map_count is 65530 by default
  std::atomic<int64_t>& host_vma_estimate() { return host_vma_estimate_; }

  // The process's host VMAs (lines of /proc/self/maps), or -1 when it cannot
  // be read. async-signal-safe (open, read, close).
  static int64_t CountHostVmas();
  // Shared frames' mappings (design direction 4): an estimate of the
  // process's host VMAs, measured at each fork and whenever it passes
  // MachineOptions::pool_vma_budget, raised by 2 for each pool mapping or
  // copy-on-write copy in between. async-signal-safe.
  void AddPoolVmas(int64_t n) { pool_vma_estimate_.fetch_add(n, std::memory_order_relaxed); }
  void ResyncPoolVmas() {
    int64_t n = CountHostVmas();
    if (n >= 0) pool_vma_estimate_.store(n, std::memory_order_relaxed);
    pool_vma_counted_.store(n >= 0 ? n : 0, std::memory_order_relaxed);
  }
  static constexpr int64_t kPoolVmaRecount = 256;
  // Counting /proc/self/maps costs in proportion to the VMAs, so a verdict
  // of "over" stands until the estimate has grown by kPoolVmaRecount more.
  bool OverPoolVmaBudget() {
    const int64_t est = pool_vma_estimate_.load(std::memory_order_relaxed);
    if (est <= options_.pool_vma_budget) return false;
    if (est < pool_vma_counted_.load(std::memory_order_relaxed) + kPoolVmaRecount) return true;
    ResyncPoolVmas();
    const int64_t now = pool_vma_estimate_.load(std::memory_order_relaxed);
    pool_vma_counted_.store(now, std::memory_order_relaxed);
    return now > options_.pool_vma_budget;
  }

 private:
  std::atomic<int64_t> host_vma_estimate_{0};
  std::atomic<int64_t> pool_vma_estimate_{0};
  std::atomic<int64_t> pool_vma_counted_{0};  // the estimate at the last count
};

}  // namespace emu

#endif  // EMU_MACHINE_H_
