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
// (pread into the pool). In a shared writable mapping a clean page is mapped
// read-only; the write fault marks it dirty (kPgDirty) and makes the PTE
// writable. Writeback (msync, fsync, the last VMA's going) takes a dirty
// page's flag, write-protects every PTE that maps it through the object's
// reverse map (page_mkclean), then writes it: a write after the flag is
// taken either lands before the write or faults and dirties it again, so no
// write is lost. A private mapping reads the page cache and copies on write.
//
// Invariants:
//  1. pages_[i] is 0 or the pfn of a frame with kPgShmem | kPgPool, anchor
//     this object and index i; the object holds one reference to it.
//  2. Every address space with a VMA of this object is in spaces_.
//  3. vma_refs_ counts the VMAs (in any address space) that name the object.
#ifndef EMU_SHMEM_H_
#define EMU_SHMEM_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "emu/rmap.h"
#include "emu/sync.h"
#include "emu/types.h"

namespace emu {

class Machine;

class ShmemObject final : public RmapAnchor {
 public:
  // Owned by the machine (Machine::CreateShmem).
  ShmemObject(Machine* machine, uint64_t nr_pages);
  ~ShmemObject() override;
  ShmemObject(const ShmemObject&) = delete;
  ShmemObject& operator=(const ShmemObject&) = delete;

  uint64_t nr_pages() const { return nr_pages_; }

  // A file's object: `fd` (the object owns it) of `size_bytes`, opened
  // read-write or read-only. Before any mapping.
  void SetBacking(int fd, uint64_t size_bytes, bool writable) {
    fd_ = fd;
    size_bytes_ = size_bytes;
    writable_ = writable;
  }
  bool backed() const { return fd_ >= 0; }
  // Whether a shared mapping may write it (a file opened read-only may not).
  bool may_write() const { return !backed() || writable_; }
  uint64_t size_bytes() const { return size_bytes_; }
  // Reads page `index` of the file into `dst` (a page; the part past the
  // end of the file stays as it is, zeros). async-signal-safe; false with
  // errno on a read error.
  bool ReadPage(uint64_t index, void* dst) const;
  // A write fault dirtied `page` (a page of this object): counts it.
  // async-signal-safe.
  void MarkDirty(Page& page);
  uint64_t nr_dirty() const { return nr_dirty_.load(std::memory_order_relaxed); }
  // Writes the dirty pages with index in [first, last) back to the file
  // (Linux: filemap_write_and_wait_range; each page cleaned with
  // page_mkclean first), then, with `wait`, fdatasync. The caller holds no
  // mmap_lock (the walk takes each address space's for read). Returns the
  // first error (EIO and friends from the file); pages that failed stay
  // dirty.
  absl::Status Writeback(uint64_t first, uint64_t last, bool wait);
  // False when the page cache's index could not be mapped (ENOMEM).
  bool ok() const { return pages_ != nullptr; }

  // The page cache. Lock-free and allocation-free (the fault path).
  // The frame at page offset `index`, or Pfn{0}.
  Pfn Find(uint64_t index) const {
    return Pfn{pages_[index].load(std::memory_order_acquire)};
  }
  // Installs `pfn` at `index` unless a frame is there already; returns the
  // frame there now (`pfn` if it went in).
  Pfn Add(uint64_t index, Pfn pfn);
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
  // Writes one page (its flag already taken) from the pool to the file.
  bool WritePage(uint64_t index, const Page& page);
  // Write-protects every PTE that maps `pfn` (seed 001's page_mkclean).
  void MkClean(Pfn pfn);

  Machine* const machine_;
  const uint64_t nr_pages_;
  int fd_ = -1;
  uint64_t size_bytes_ = 0;
  bool writable_ = true;
  std::atomic<uint64_t> nr_dirty_{0};
  std::atomic<uint32_t>* pages_;  // nr_pages_ entries, MAP_NORESERVE, zero = none
  // One bit per page: it may be dirty (set after kPgDirty by MarkDirty,
  // cleared before it by Writeback), so that writeback visits the dirty
  // pages, not the whole range.
  std::atomic<uint64_t>* dirty_bits_ = nullptr;
  std::atomic<int64_t> vma_refs_{0};
  std::atomic<uint64_t> nr_cached_{0};
  SpinLock lock_;
  std::vector<AddressSpace*> spaces_ ABSL_GUARDED_BY(lock_);
};

}  // namespace emu

#endif  // EMU_SHMEM_H_
