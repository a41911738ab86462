// ShmemObject: the memory behind a shared anonymous mapping (= a shmem
// inode and its address_space), or behind a file's mappings (Machine::
// OpenFile: = a regular file's inode and page cache; see "Files" below).
// MAP_SHARED|MAP_ANONYMOUS creates one; every
// VMA that maps it (the original, its splits, a forked child's copies, a
// moved range) names it in Vma::file, with Vma::pgoff the page offset of its
// start in the object. The object's pages are its page cache: frames in the
// machine's frame pool (emu/frame_pool.h), created zero-filled at their
// first fault (a hole in the pool's file reads as zeros) and kept, whoever
// maps them, until the last VMA that maps the object goes (Linux frees an
// unlinked shmem inode's pages with its last reference).
//
// It is also the object-based reverse map of its pages (seed 000's
// page->mapping/index for file pages, Linux's i_mmap walk): a page's
// anchor is the object and its index the page offset, and the walk visits
// every address space that maps the object, at vma->start + (index -
// vma->pgoff) pages in each VMA that covers the index.
//
// Files (seed 001): a file's page is read from the file at its first fault
// (pread into the pool), and it is on the reclaim lists (kPgFile): reclaim
// drops it, after writing it back when dirty, and a later fault reads it
// again. In a shared writable mapping a clean page is mapped
// read-only; the write fault marks it dirty (kPgDirty) and makes the PTE
// writable. Writeback (msync, fsync, the last VMA's going) takes a dirty
// page's flag, write-protects every PTE that maps it through the object's
// reverse map (page_mkclean), then writes it: a write after the flag is
// taken either lands before the write or faults and dirties it again, so no
// write is lost. With dirty tracking "async" the host records the writes
// instead (see Harvest below), and writeback harvests first. A private
// mapping reads the page cache and copies on write.
//
// Invariants:
//  1. pages_[i] is 0 or the pfn of a frame with kPgShmem | kPgPool, anchor
//     this object and index i; the object holds one reference to it. A
//     file's pages are kPgFile too, and none lies at or past nr_pages().
//  2. Every address space with a VMA of this object is in spaces_.
//  3. vma_refs_ counts the VMAs (in any address space) that name the object.
#ifndef EMU_SHMEM_H_
#define EMU_SHMEM_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "emu/rmap.h"
#include "emu/sync.h"
#include "swap/swap_io.h"
#include "emu/types.h"

namespace emu {

class Machine;

class ShmemObject final : public RmapAnchor {
 public:
  // Owned by the machine (Machine::CreateShmem). `capacity` pages of index
  // (at least nr_pages): how far a file may grow.
  ShmemObject(Machine* machine, uint64_t nr_pages, uint64_t capacity = 0);
  ~ShmemObject() override;
  ShmemObject(const ShmemObject&) = delete;
  ShmemObject& operator=(const ShmemObject&) = delete;

  // The object's size in pages (a file's: its size rounded up).
  uint64_t nr_pages() const { return nr_pages_.load(std::memory_order_acquire); }
  uint64_t capacity() const { return capacity_; }

  // A file's object: `fd` (the object owns it) of `size_bytes`, opened
  // read-write or read-only. Before any mapping.
  // `io` (may be null: pread/pwrite) moves its pages.
  void SetBacking(int fd, uint64_t size_bytes, bool writable, std::unique_ptr<SwapIo> io = nullptr);
  bool backed() const { return fd_ >= 0; }
  // Whether a shared mapping may write it (a file opened read-only may not).
  bool may_write() const { return !backed() || writable_; }
  uint64_t size_bytes() const { return size_bytes_.load(std::memory_order_acquire); }
  // A fault found its index past the end: the file may have grown behind
  // our back (another process). Takes the file's size again (fstat), never
  // shrinking it; true when `index` now lies inside. async-signal-safe.
  bool RefreshSize(uint64_t index);
  // Reads page `index` of the file into `dst` (a page; the part past the
  // end of the file stays as it is, zeros). async-signal-safe; false with
  // errno on a read error.
  bool ReadPage(uint64_t index, void* dst) const;
  // Reads pages index[i] into dst[i] for i < n (at most kWriteBatch):
  // neighbours in the file and in memory as one read (a pread, or an
  // io_uring op), their destination populated first; ok[i] says whether
  // page i was read. async-signal-safe.
  void ReadPages(const uint64_t* index, void* const* dst, int n, bool* ok) const;

  // ---- Dirty pages (seed 001) ----
  // A write fault dirtied `page` (a page of this object): counts it.
  // async-signal-safe.
  void MarkDirty(Page& page);
  // Dirty tracking "async" (MachineOptions::dirty_tracking): writes to a
  // shared mapping of a file go through without a fault and the host
  // records them (HostMmu::MapPoolTracked). A harvest dirties the pages
  // written since the last one and has the host watch them again, in one
  // step, so a write after it is recorded anew.
  // Every mapping of [first, last) (before writeback, the flusher's
  // turns). The caller holds no mmap_lock.
  void Harvest(uint64_t first, uint64_t last);
  // The mapping `r` of `v` (a tracked VMA of this object), whose address
  // space's mmap_lock the caller holds. Harvests of one object are
  // serialized, so that a page one harvest found written is dirty before
  // another (reclaim's) can find it clean. async-signal-safe.
  // Returns the pages found written.
  uint64_t HarvestMapping(const Vma& v, AddrRange r);
  // Takes `page`'s dirty flag (Linux: clear_page_dirty_for_io, before
  // page_mkclean); true when it was dirty. async-signal-safe.
  bool ClearDirty(Page& page);
  uint64_t nr_dirty() const { return nr_dirty_.load(std::memory_order_relaxed); }
  // When the object went from clean to dirty (CLOCK_MONOTONIC ns; Linux's
  // inode->dirtied_when), for the flusher's oldest-first order.
  uint64_t dirtied_when() const { return dirtied_when_.load(std::memory_order_relaxed); }
  // Writes one page whose dirty flag the caller took (and whose PTEs it
  // cleaned) to the file: kPgWriteback and nr_writeback while in flight.
  // False with errno on a write error. Not under any emulator lock but the
  // page lock.
  bool WriteOut(Page& page);
  // The same for up to kWriteBatch pages at once (one io_uring submission
  // with MachineOptions::file_io "uring", else a pwrite each): the pages
  // whose write failed are dirtied again. Returns the pages written;
  // *err gets the first failure's errno.
  static constexpr int kWriteBatch = 64;
  int WriteOutBatch(Page** pages, int n, int* err);
  // Writes the dirty pages with index in [first, last) back to the file
  // (Linux: filemap_write_and_wait_range; each page cleaned with
  // page_mkclean first), then, with `wait`, fdatasync. The caller holds no
  // mmap_lock (the walk takes each address space's for read). Returns the
  // first error (EIO and friends from the file); pages that failed stay
  // dirty. `written` (optional) counts the pages written.
  absl::Status Writeback(uint64_t first, uint64_t last, bool wait, uint64_t budget = UINT64_MAX,
                         uint64_t* written = nullptr);
  // The flusher's turn: up to `budget` dirty pages from where its last turn
  // stopped, wrapping around once (Linux: range_cyclic writeback from
  // mapping->writeback_index). Returns the pages written.
  uint64_t WritebackCyclic(uint64_t budget);
  // fsync(2) of the file: every dirty page, then fsync (data and metadata).
  absl::Status Fsync();
  // ftruncate(2) of the file (Linux: truncate_setsize + truncate_pagecache):
  // shrinking unmaps every mapping of the pages past the new end, private
  // copies included (a later access there is SIGBUS), and drops them from
  // the cache unwritten; the part of the last page past the end reads as
  // zeros. EFBIG past the object's capacity; the file's own errors.
  absl::Status Truncate(uint64_t size_bytes);

  // Invariant 1, the dirty count (nr_dirty() is the number of kPgDirty
  // pages in the cache), and no page past a file's end. Call with no fault
  // or mm call in flight and reclaim blocked.
  absl::Status CheckInvariants();

  // False when the page cache's index could not be mapped (ENOMEM).
  bool ok() const { return pages_ != nullptr; }

  // The page cache. Lock-free and allocation-free (the fault path).
  // The frame at page offset `index`, or Pfn{0}. Without a reference: a
  // file's page may be reclaimed at any time; use GetPage.
  Pfn Find(uint64_t index) const {
    return Pfn{pages_[index].load(std::memory_order_acquire)};
  }
  // The frame at `index` with a reference taken, or Pfn{0} (Linux:
  // filemap_get_entry: a speculative get, then a check that the page is
  // still the one cached there).
  Pfn GetPage(uint64_t index);
  // Installs `pfn` at `index` unless a frame is there already; returns the
  // frame there now (`pfn` if it went in).
  Pfn Add(uint64_t index, Pfn pfn);
  // Reclaim: drops the unmapped, clean page `pfn` from the cache if nobody
  // holds it but the cache and `refs` more (Linux: __remove_mapping's
  // refcount freeze). The frame is left with refcount 0 for the caller to
  // free. False when it is in use, dirty, or gone.
  bool RemoveFromCache(Pfn pfn, int refs);
  // Pages in the cache now.
  uint64_t nr_cached() const { return nr_cached_.load(std::memory_order_relaxed); }

  // A VMA names the object (VmaTree: insert, split) or stops naming it
  // (erase, merge). The last Put frees every cached page: no VMA can map
  // them any more. Under the mmap_lock (write) of the VMA's address space.
  void Get() { vma_refs_.fetch_add(1, std::memory_order_relaxed); }
  void Put();
  int64_t vma_refs() const { return vma_refs_.load(std::memory_order_relaxed); }

  // The reverse map's membership: `as` maps (or may map) the object.
  // Allocates; not for the fault path.
  void AddSpace(AddressSpace* as);
  void RemoveSpace(AddressSpace* as);

  // RmapAnchor: the i_mmap walk.
  size_t Spaces(const Page& page, size_t from, AddressSpace** out, size_t max) override;
  void AddressesIn(const Page& page, AddressSpace& as,
                   absl::FunctionRef<void(const Vma&, VirtAddr)> fn) override;

 private:
  // Waits until no write of this object's pages is in flight.
  void WaitWriteback();
  // Write-protects every PTE that maps `pfn` (seed 001's page_mkclean).
  void MkClean(Pfn pfn);
  // Calls fn for every address space on the list, holding object_walk_lock
  // for read and no other lock (fn may take mmap_lock, make system calls).
  void ForEachSpace(absl::FunctionRef<void(AddressSpace&)> fn);
  // Drops the cached pages with index in [first, last), unwritten.
  void DropRange(uint64_t first, uint64_t last);
  // Zeros the bytes of the cached page holding byte `from` from there to
  // the page's end (nothing when `from` is page aligned or not cached).
  void ZeroTail(uint64_t from);

  Machine* const machine_;
  const uint64_t capacity_;
  std::atomic<uint64_t> nr_pages_;
  int fd_ = -1;
  std::unique_ptr<SwapIo> io_;  // io_uring over fd_, or null
  std::atomic<uint64_t> size_bytes_{0};
  bool writable_ = true;
  std::atomic<uint64_t> nr_dirty_{0};
  std::atomic<uint64_t> dirtied_when_{0};
  std::atomic<uint64_t> writeback_index_{0};  // the flusher's cursor
  std::atomic<uint32_t> nr_writeback_{0};     // WriteOut calls in flight
  std::atomic<uint32_t> writeback_done_{0};   // futex word: bumped as they reach 0
  // Writes to the file hold it for read, a truncate for write: no write
  // past the end lands after the file was shortened.
  RwSem io_lock_;
  // Held (for write) across a harvest and the dirtying of what it found;
  // under mmap_lock, a leaf.
  RwSem harvest_lock_;
  absl::Mutex truncate_mu_;  // one truncate at a time
  std::atomic<uint32_t>* pages_;  // capacity_ entries, MAP_NORESERVE, zero = none
  // One bit per page: it may be dirty (set after kPgDirty by MarkDirty,
  // cleared before it by Writeback), so that writeback visits the dirty
  // pages, not the whole range.
  std::atomic<uint64_t>* dirty_bits_ = nullptr;
  std::atomic<int64_t> vma_refs_{0};
  std::atomic<uint64_t> nr_cached_{0};
  std::atomic<uint64_t> high_water_{0};  // 1 + the highest index ever cached
  SpinLock lock_;
  std::vector<AddressSpace*> spaces_ ABSL_GUARDED_BY(lock_);
};

}  // namespace emu

#endif  // EMU_SHMEM_H_
