// The swap device: a file, its swap_map and the slot allocator (Linux:
// mm/swapfile.c). See README.md in this folder for the picture and the locking.
#ifndef EMU_SWAP_SWAP_DEVICE_H_
#define EMU_SWAP_SWAP_DEVICE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "emu/sync.h"
#include "swap/swap_io.h"

namespace emu {

struct SwapOptions {
  std::string path;         // use/create this file (mode 0600); empty: an unlinked O_TMPFILE
                            // (mode 0600) in `dir`
  std::string dir;          // empty: $TMPDIR, else /var/tmp
  uint64_t size_bytes = 0;  // rounded down to whole pages; must be >= 1 MiB (else EINVAL)
  bool direct_io = true;    // try O_DIRECT; fall back to buffered I/O when the filesystem
                            // refuses it (EINVAL)
  int queue_depth = 64;
  int nr_rings = 0;  // 0: 2 x online CPUs, at least 4
  // How long a reader polls for its completion before it sleeps (swap_io.h).
  int read_poll_us = 0;
};

// A swap entry is the slot number (one device). Slot counts (swap_map[slot]):
// the number of swap PTEs that reference the slot, plus the flag kSwapHasCache
// while a page in memory holds the slot (the swap cache, = SWAP_HAS_CACHE);
// kSwapMapBad retires a slot forever.
inline constexpr uint16_t kSwapHasCache = 0x8000;   // = SWAP_HAS_CACHE
inline constexpr uint16_t kSwapMapBad = 0x7fff;     // = SWAP_MAP_BAD: never allocated again
inline constexpr uint16_t kSwapMapMax = 0x7ffe;     // the most PTE references per slot
inline constexpr uint32_t kSwapClusterPages = 256;  // = SWAPFILE_CLUSTER

// Linux: mm/swapfile.c, struct swap_info_struct.
// Differs: one device, no priorities, no swap count continuation (a count
// tops out at kSwapMapMax, and going past it is a bug), no per-CPU clusters
// (one current cluster per device), no discard.
//
// Slot states (swap_map[slot]):
//   0                  free
//   1..kSwapMapMax     in use: that many swap PTEs, no page in the swap cache
//   kSwapHasCache | c  in use: c swap PTEs (possibly 0) and a swap-cache page
//   kSwapMapBad        retired after a failed write; neither free nor used
//
// Invariants (CheckInvariants):
//  1. nr_free + nr_used + nr_bad == nr_slots, each equal to the count of such
//     slots in swap_map.
//  2. Each cluster's nr_free equals the free slots in it.
//  3. The free-cluster list holds exactly the wholly free clusters (nr_free ==
//     the cluster's size; a cluster with a retired slot never is), each once,
//     its links consistent.
//  4. The current cluster, if any, is a valid cluster, and the cursor lies in
//     [its first slot, its end].
//  5. This process's holder bit (see "Sharing" below) is set exactly on the
//     slots in use in its swap_map (retired slots aside).
//
// Locking: every field below the I/O backend is guarded by swap_lock_ (=
// swap_info_struct->lock), a leaf lock: nothing is taken under it. It is a
// SpinLock held for a few loads and stores, never across a system call or a
// callback that touches emulated memory, so a fault cannot interrupt its
// holder in the same thread. Everything but Open, the destructor,
// ReplaceIo/TakeIo and CheckInvariants is async-signal-safe.
class SwapDevice {
 public:
  // Creates (or truncates) the file, sizes it (fallocate where the filesystem
  // can, else ftruncate), probes O_DIRECT (open with it; if the open or a
  // 4 KiB aligned test pwrite fails with EINVAL, I/O is buffered), and creates
  // the io_uring backend. Errors carry the errno and name what failed:
  // EACCES/EROFS/ENOENT/ENOTDIR name the directory (or the path), EINVAL for a
  // size under 1 MiB, ENOSPC when fallocate finds the disk full.
  // Linux: mm/swapfile.c sys_swapon(), with mkswap folded in.
  static absl::StatusOr<std::unique_ptr<SwapDevice>> Open(const SwapOptions& options);
  ~SwapDevice();
  SwapDevice(const SwapDevice&) = delete;
  SwapDevice& operator=(const SwapDevice&) = delete;

  uint64_t nr_slots() const { return nr_slots_; }
  bool direct_io() const { return direct_io_; }  // whether O_DIRECT is in use
  // e.g. "unlinked tmpfile in /var/tmp, 1.0 GiB, O_DIRECT"
  const std::string& description() const { return description_; }

  // The backend in use. async-signal-safe.
  SwapIo& io() {
    SwapIo* io = cur_io_.load(std::memory_order_acquire);
    EMU_BUG_ON(io == nullptr);
    return *io;
  }
  // Replaces the backend (tests: wrap the current one); returns the old one.
  // Not while I/O is in flight.
  std::unique_ptr<SwapIo> ReplaceIo(std::unique_ptr<SwapIo> io);
  // Hands out the current backend (for wrapping); io() still returns it
  // until ReplaceIo, which must follow while the caller keeps it alive.
  std::unique_ptr<SwapIo> TakeIo();

  // ---- The slot allocator and swap_map. async-signal-safe, thread-safe (one
  // SpinLock, swap_lock_), O(1) amortized except AllocRun's cluster scan.
  // Slot numbers >= nr_slots() are a bug.

  // Allocates a run of up to `n` contiguous free slots (0 < n <=
  // kSwapClusterPages), each with count kSwapHasCache; the caller then adds PTE
  // references with Duplicate. Returns the run length (0 when the device is
  // full, or n == 0) and the first slot in *first. Never returns a retired slot.
  // Clustered: a cursor in the current cluster hands out slots in ascending
  // order, so successive calls give adjacent runs; a run that reaches the end
  // of the current cluster continues into the next one if that is wholly free.
  // When the current cluster runs out: the head of the free-cluster list, else
  // a round-robin scan for a partially used cluster. A run stops early at a
  // used slot.
  // Linux: mm/swapfile.c get_swap_pages() / scan_swap_map_slots().
  // Differs: one cluster cursor per device, not per CPU; no SSD/rotational
  // distinction; runs may be shorter than asked for even with free slots left.
  uint32_t AllocRun(uint32_t n, uint64_t* first);

  // One more PTE reference. Returns false if the slot is free or bad, or
  // its count is at kSwapMapMax.
  // Linux: mm/swapfile.c swap_duplicate().
  bool Duplicate(uint64_t slot);

  // Drops one PTE reference (count - 1; the count must be > 0); the slot is
  // free again once neither a count nor the cache flag is left. Returns the new
  // count (without the cache flag).
  // Linux: mm/swapfile.c swap_free() / swap_entry_put().
  int Free(uint64_t slot);

  // Drops kSwapHasCache (which must be set) and frees the slot if no PTE
  // references it. On a retired slot: does nothing.
  // Linux: mm/swap_state.c delete_from_swap_cache() -> put_swap_folio().
  void ClearCache(uint64_t slot);

  // Sets kSwapHasCache on a slot that is in use (a page read back keeps its
  // slot). Returns false if the slot is free or bad, or already has a
  // swap-cache page (= swapcache_prepare()'s -EEXIST: after a fork, another
  // address space read the slot back first).
  bool SetCache(uint64_t slot);

  // PTE references (the count without the cache flag); 0 for free or bad slots.
  // Linux: mm/swapfile.c swap_count() / __swap_count().
  int Count(uint64_t slot) const;
  bool HasCache(uint64_t slot) const;

  // Retires a slot after a failed write: it becomes kSwapMapBad whatever its
  // state (the caller holds the only reference, the cache flag), is never
  // handed out again and is not counted as free. Retiring a bad slot does
  // nothing. Linux: SWAP_MAP_BAD is set by swapon for bad blocks.
  // Differs: Linux never retires a slot at run time.
  void Retire(uint64_t slot);

  uint64_t nr_free() const;  // free slots (excluding retired)
  uint64_t nr_used() const;  // slots with a count or the cache flag
  uint64_t nr_bad() const;

  // Checks invariants 1-4 (O(nr_slots)). Not async-signal-safe.
  absl::Status CheckInvariants() const;

  // For the caller's own invariant check: calls fn(slot, count, has_cache)
  // for each used slot, in ascending order, under swap_lock_: `fn` must not
  // call back into this device.
  template <typename Fn>
  void ForEachUsed(Fn&& fn) const {
    SpinLockHolder l(&swap_lock_);
    for (uint64_t s = 0; s < nr_slots_; s++) {
      const uint16_t v = swap_map_[s];
      if (v == 0 || v == kSwapMapBad) continue;
      fn(s, static_cast<int>(v & ~kSwapHasCache), (v & kSwapHasCache) != 0);
    }
  }

  // The swap file's descriptor (slot s at byte s * kPageSize).
  int fd() const { return fd_; }

  // ---- Sharing the device with forked processes (the preload's fork).
  //
  // After a fork both processes hold the swap PTEs the parent had, each in
  // its own copy of swap_map (the kernel copies it with the rest of memory),
  // and both go on allocating slots from the same file. What they share is a
  // holder mask per slot, in a MAP_SHARED region (a memfd) that every process
  // forked from the opener inherits: bit i is set while sharer i's own
  // swap_map has the slot in use. A slot is allocated only by claiming a mask
  // of 0 (compare-and-swap to the allocator's bit) and released by clearing
  // the bit, so no process hands out a slot another process still reads.
  // Counts (swap PTEs, the cache flag) stay private: a process's decisions
  // (reuse at a write fault, freeing) are about its own references, and its
  // frames are its own. Linux keeps one swap_map for all mms and swap_duplicate
  // raises its count at fork; ours is a count per process plus this mask.
  //
  // A sharer that is gone (exited, killed, or exec'd: the region's descriptor
  // is close-on-exec) is found by ReapGone, which clears its bits.
  static constexpr int kMaxSharers = 32;

  // Before fork(), with nothing allocating slots in this process (the caller
  // holds its address space's mmap_lock for write and reclaim refuses it):
  // reserves a sharer index for the child and sets its bit on every slot this
  // process holds (a superset of what the child will hold, since until the
  // fork only releases can happen). Returns the index, or -1 when all
  // kMaxSharers are taken by live processes. Not async-signal-safe.
  int ForkReserve();
  // In the parent after fork(): `attached` says whether the child took the
  // index (ForkAttach); if not (fork failed, or the child died first), the
  // reservation and its bits are dropped.
  void ForkDone(int index, bool attached);
  // In the child, first thing, with no other thread (async-signal-safe: it
  // may run in the child's first fault): takes sharer `index` and resets the
  // copied lock. I/O goes through synchronous pread/pwrite until
  // ChildRings; the parent's rings stay the parent's. Its bit stays on every
  // slot the parent held until the recount (RecountBegin..RecountEnd).
  absl::Status ForkAttach(int index);
  // Instead of ForkAttach, in a child without a share (none reserved): it
  // may read the slots its swap PTEs name while the parent waits for it,
  // allocates none, and changes no holder mask. async-signal-safe.
  void ForkDetach();
  // In the child, after ForkAttach or ForkDetach, once the parent's threads'
  // half-done work is undone: the copied swap_map is rebuilt from the
  // references that exist: RecountBegin, RecountRef for each swap PTE,
  // RecountCache for each mapped swap-cache page, RecountEnd. The copy
  // cannot be trusted as it is: a thread the child does not have may have
  // dropped a slot's reference in the parent before publishing the PTE that
  // replaces it (swap-in frees the slot, then maps the page), and the child
  // keeps that swap PTE. RecountEnd takes the child's bit off every slot it
  // does not use. async-signal-safe.
  void RecountBegin();
  void RecountRef(uint64_t slot);
  void RecountCache(uint64_t slot);
  void RecountEnd();
  // Slots the recount found referenced without the child's bit (a bug).
  uint64_t recount_unheld() const { return recount_unheld_; }
  // In the child, once it may allocate: io_uring rings of its own.
  absl::Status ChildRings();
  // A child that attached and then leaves the emulator (after reading its
  // swapped pages back) gives its share up: its bits and its entry.
  void LeaveShare();
  // Clears the bits of sharers that are gone; returns how many it reaped.
  // O(nr_slots) per reaped sharer, a stat(2) per live one. Not
  // async-signal-safe. Call from a thread (kswapd), not the fault path.
  int ReapGone();
  // Sharer index of this process and how many sharers are registered.
  int sharer() const { return me_; }
  int nr_sharers() const;
  // Whether this process's bit is set on `slot` (checks and tests).
  bool Held(uint64_t slot) const;
  // Whether any sharer holds `slot` (tests).
  bool HeldByAnyone(uint64_t slot) const;

 private:
  static constexpr uint32_t kNoCluster = UINT32_MAX;

  // Linux: struct swap_cluster_info (count and list linkage).
  struct Cluster {
    uint32_t nr_free = 0;  // free slots in the cluster
    bool on_free_list = false;
    uint32_t prev = kNoCluster;  // free-cluster list links
    uint32_t next = kNoCluster;
  };

  SwapDevice(int fd, uint64_t nr_slots, bool direct_io, std::string description,
             std::unique_ptr<SwapIo> io, int queue_depth, int nr_rings, int read_poll_us);
  // The shared region: the sharer table, then one holder mask per slot.
  struct Sharer {
    std::atomic<int32_t> state;  // kFree, kReserved, kLive, kReaping
    std::atomic<int32_t> pid;
  };
  enum : int32_t { kFree = 0, kReserved = 1, kLive = 2, kReaping = 3 };
  struct Shared {
    Sharer sharers[kMaxSharers];
  };
  absl::Status MapShared();
  std::atomic<uint32_t>& holders(uint64_t slot) const { return holders_[slot]; }
  // 0 in a detached child (ForkDetach): it holds nothing.
  uint32_t my_bit() const { return me_ < 0 ? 0 : uint32_t{1} << me_; }
  // Takes a free-everywhere slot for this process; false if anyone holds it.
  bool Claim(uint64_t slot) const;
  // Whether sharer i (not this process) has gone away.
  bool Gone(int i) const;
  void ClearBitEverywhere(int i);

  uint64_t ClusterStart(uint32_t c) const { return uint64_t{c} * kSwapClusterPages; }
  uint64_t ClusterEnd(uint32_t c) const;  // one past its last slot
  uint32_t ClusterOf(uint64_t slot) const {
    return static_cast<uint32_t>(slot / kSwapClusterPages);
  }
  void ListAppendLocked(uint32_t c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(swap_lock_);
  void ListRemoveLocked(uint32_t c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(swap_lock_);
  // Picks a new current cluster with a free slot (requires nr_free_ > 0).
  void NextClusterLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(swap_lock_);
  // A free slot becomes used (kSwapHasCache) / a used slot becomes free.
  void TakeSlotLocked(uint64_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(swap_lock_);
  void ReleaseSlotLocked(uint64_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(swap_lock_);
  absl::Status CheckInvariantsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(swap_lock_);

  // Immutable after construction.
  const int fd_;
  const uint64_t nr_slots_;
  const uint32_t nr_clusters_;
  const bool direct_io_;
  const std::string description_;
  const int queue_depth_, nr_rings_, read_poll_us_;  // for the child's own rings (ForkAttach)
  int shared_fd_ = -1;                // the memfd (close-on-exec)
  uint64_t shared_ino_ = 0;           // its inode: how ReapGone recognizes a live sharer
  Shared* shared_ = nullptr;
  std::atomic<uint32_t>* holders_ = nullptr;  // nr_slots_ masks after *shared_
  size_t shared_bytes_ = 0;
  int me_ = 0;                        // this process's sharer index
  // Whether another process ever shared the device with this one: the
  // allocator then skips the free-cluster list (its clusters may be held
  // elsewhere) and gives up after one round of the clusters.
  std::atomic<bool> ever_shared_{false};
  // Changed only by ReplaceIo/TakeIo, which the caller serializes against all
  // I/O, and by a forked child's set-up. cur_io_ is io_, or sync_io_ in a
  // forked child until ChildRings.
  std::unique_ptr<SwapIo> io_;
  PsyncSwapIo sync_io_;
  std::atomic<SwapIo*> cur_io_{nullptr};
  uint64_t recount_unheld_ = 0;

  mutable SpinLock swap_lock_;  // = swap_info_struct->lock
  std::vector<uint16_t> swap_map_ ABSL_GUARDED_BY(swap_lock_);
  std::vector<Cluster> clusters_ ABSL_GUARDED_BY(swap_lock_);
  uint32_t free_head_ ABSL_GUARDED_BY(swap_lock_) = kNoCluster;  // wholly free clusters
  uint32_t free_tail_ ABSL_GUARDED_BY(swap_lock_) = kNoCluster;
  uint32_t cur_cluster_ ABSL_GUARDED_BY(swap_lock_) = kNoCluster;  // allocation cursor
  uint64_t cur_next_ ABSL_GUARDED_BY(swap_lock_) = 0;      // next slot to try in cur_cluster_
  uint32_t scan_cluster_ ABSL_GUARDED_BY(swap_lock_) = 0;  // where the partial scan resumes
  uint64_t nr_free_ ABSL_GUARDED_BY(swap_lock_) = 0;
  uint64_t nr_used_ ABSL_GUARDED_BY(swap_lock_) = 0;
  uint64_t nr_bad_ ABSL_GUARDED_BY(swap_lock_) = 0;
};

}  // namespace emu

#endif  // EMU_SWAP_SWAP_DEVICE_H_
