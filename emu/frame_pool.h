// FramePool: the memory of frames seen at more than one address (design
// direction 4). A frame shared after AddressSpace::Fork() cannot stay the
// kernel's anonymous page at one address: its bytes move into a memfd, and
// every address that maps it maps the memfd page there with
// mmap(MAP_SHARED|MAP_FIXED), write-protected while it is shared.
//
// Where a frame lives in the file: at its *identity offset* when that is free
// (the offset of the address it is placed at, from the arena's start), so
// that the frames of neighbouring addresses are neighbours in the file and
// their host mappings merge into one host VMA; otherwise at its *spill
// offset*, past the arena's span and unique to its pfn. The file is sparse:
// only frames in use take memory (a freed frame's page is punched out).
//
// Every method is async-signal-safe: the fault path places frames (COW) and
// frees them in signal context.
//
// Invariants:
//  1. An identity offset is held by at most one frame (identity bitmap).
//  2. A page with kPgPool has pool_off naming its frame's offset, which is
//     its identity offset (bit set) or its spill offset.
#ifndef EMU_FRAME_POOL_H_
#define EMU_FRAME_POOL_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "emu/sync.h"
#include "emu/types.h"

namespace emu {

class FramePool {
 public:
  // A pool for frames placed in `arena`, with pfns below `max_pages`.
  static absl::StatusOr<std::unique_ptr<FramePool>> Create(AddrRange arena, uint64_t max_pages);
  ~FramePool();
  FramePool(const FramePool&) = delete;
  FramePool& operator=(const FramePool&) = delete;

  int fd() const { return fd_; }

  // Chooses the offset of frame `pfn` about to be placed at `addr`: the
  // identity offset if no other frame holds it (and claims it), else the
  // spill offset of `pfn`.
  uint64_t Place(Pfn pfn, VirtAddr addr);
  // Whether `off` is the identity offset of `addr`.
  bool IsIdentity(uint64_t off, VirtAddr addr) const { return off == addr - arena_.start; }
  // Copies `len` bytes from `src` (memory the caller can read, possibly
  // another mapping of the pool) into the file at `off`. False with errno.
  bool Fill(uint64_t off, const void* src, size_t len);
  // The frame at `off` is no longer used: its memory goes back to the host
  // and, for an identity offset, the offset becomes free. Consecutive
  // offsets are punched out together (one fallocate per run, up to 2 MiB):
  // a release extends the pending run or punches it and starts another;
  // until it is punched an identity offset stays taken, and Place() punches
  // first if it picks a pending spill offset.
  void Release(uint64_t off);
  // Punches out the pending run now (the end of an munmap, say).
  void Flush();

  // The frame at `off`, read through the pool's own read-only view of the
  // file (outside the arena): the source of a copy-on-write copy.
  const void* view(uint64_t off) const { return view_ + off; }
  // The same, writable: where a file's page is read in (emu/shmem.h).
  void* writable_view(uint64_t off) const { return wview_ + off; }

  // Frames that hold memory in the file now.
  uint64_t nr_frames() const { return nr_frames_.load(std::memory_order_relaxed); }

 private:
  FramePool(AddrRange arena, uint64_t max_pages, int fd, std::atomic<uint64_t>* bits,
            size_t bits_bytes, const char* view, uint64_t size)
      : arena_(arena),
        max_pages_(max_pages),
        fd_(fd),
        identity_(bits),
        bits_bytes_(bits_bytes),
        view_(view),
        size_(size) {}

  const AddrRange arena_;
  const uint64_t max_pages_;
  const int fd_;
  // One bit per arena page: its identity offset is held. A MAP_NORESERVE
  // array touched as bits are first set; atomic bit operations, no lock.
  std::atomic<uint64_t>* const identity_;
  const size_t bits_bytes_;
  const char* const view_;  // the whole file, PROT_READ, MAP_SHARED
  char* wview_ = nullptr;   // the whole file, PROT_READ|PROT_WRITE, MAP_SHARED (set by Create)
  const uint64_t size_;     // of the file and the view
  std::atomic<uint64_t> nr_frames_{0};
  // Released frames not punched out yet: [pend_start_, pend_end_).
  SpinLock pend_lock_;
  uint64_t pend_start_ ABSL_GUARDED_BY(pend_lock_) = 0;
  uint64_t pend_end_ ABSL_GUARDED_BY(pend_lock_) = 0;
  static constexpr uint64_t kMaxPendingBytes = uint64_t{2} << 20;
  // Runs taken out of pending and being punched now: Place() waits for one
  // that holds the spill offset it picked, or the punch would zero the
  // frame placed there (a pfn freed and reused at once, as reclaim of file
  // pages does).
  struct Run {
    uint64_t start = 0, end = 0;
  };
  static constexpr int kMaxPunching = 64;
  Run punching_[kMaxPunching] ABSL_GUARDED_BY(pend_lock_);
  // A free slot of punching_ for [start, end), or -1 when all are in use.
  int BeginPunchLocked(uint64_t start, uint64_t end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(pend_lock_);
  // fallocate(PUNCH_HOLE) of [start, end), then the identity bits it
  // covers, then the slot is free again.
  void Punch(int slot, uint64_t start, uint64_t end);
};

}  // namespace emu

#endif  // EMU_FRAME_POOL_H_
