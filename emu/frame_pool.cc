#include "emu/frame_pool.h"

#include <sched.h>

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "emu/status.h"
#include "emu/sync.h"
#include "emu/sys.h"

namespace emu {

absl::StatusOr<std::unique_ptr<FramePool>> FramePool::Create(AddrRange arena, uint64_t max_pages) {
  int fd = static_cast<int>(syscall(SYS_memfd_create, "emu-frames", MFD_CLOEXEC));
  if (fd < 0) return ErrnoError(errno, "memfd_create for the frame pool");
  // Identity offsets cover the arena; spill offsets follow, one per pfn.
  const uint64_t size = arena.len_bytes() + max_pages * kPageSize;
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    close(fd);
    return ErrnoError(err, absl::StrCat("size the frame pool to ", size, " bytes"));
  }
  size_t bits_bytes = PageAlignUp((arena.nr_pages() + 63) / 64 * sizeof(uint64_t));
  void* bits = sys::Mmap(nullptr, bits_bytes, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (bits == MAP_FAILED) {
    int err = errno;
    close(fd);
    return ErrnoError(err, "reserve the frame pool's identity bitmap");
  }
  void* view = sys::Mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_NORESERVE, fd, 0);
  void* wview = view == MAP_FAILED ? MAP_FAILED
                                   : sys::Mmap(nullptr, size, PROT_READ | PROT_WRITE,
                                               MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (view == MAP_FAILED || wview == MAP_FAILED) {
    int err = errno;
    if (view != MAP_FAILED) sys::Munmap(view, size);
    sys::Munmap(bits, bits_bytes);
    close(fd);
    return ErrnoError(err, "map the frame pool's views");
  }
  auto pool = std::unique_ptr<FramePool>(
      new FramePool(arena, max_pages, fd, static_cast<std::atomic<uint64_t>*>(bits), bits_bytes,
                    static_cast<const char*>(view), size));
  pool->wview_ = static_cast<char*>(wview);
  return pool;
}

FramePool::~FramePool() {
  sys::Munmap(const_cast<char*>(view_), size_);
  sys::Munmap(wview_, size_);
  sys::Munmap(identity_, bits_bytes_);
  close(fd_);
}

uint64_t FramePool::Place(Pfn pfn, VirtAddr addr) {
  nr_frames_.fetch_add(1, std::memory_order_relaxed);
  if (arena_.Contains(addr)) {
    uint64_t i = (addr - arena_.start) >> kPageShift;
    uint64_t bit = uint64_t{1} << (i % 64);
    if (!(identity_[i / 64].fetch_or(bit, std::memory_order_acq_rel) & bit)) {
      return addr - arena_.start;
    }
  }
  EMU_BUG_ON(ToU64(pfn) >= max_pages_);
  const uint64_t off = arena_.len_bytes() + ToU64(pfn) * kPageSize;
  // A punch must not reach a frame placed again (a pfn freed and reused
  // keeps its spill offset): a pending run that holds the offset is punched
  // now, and one being punched by another thread is waited for. Identity
  // offsets in either are still taken, so they never get here.
  for (;;) {
    int slot = -1;
    uint64_t start = 0, end = 0;
    bool busy = false;
    {
      SpinLockHolder l(&pend_lock_);
      for (const Run& r : punching_) busy |= off >= r.start && off < r.end;
      if (!busy && off >= pend_start_ && off < pend_end_) {
        slot = BeginPunchLocked(pend_start_, pend_end_);
        if (slot >= 0) {
          start = pend_start_;
          end = pend_end_;
          pend_start_ = pend_end_ = 0;
        } else {
          busy = true;
        }
      }
    }
    if (slot >= 0) Punch(slot, start, end);
    if (!busy) return off;
    sched_yield();
  }
}

int FramePool::BeginPunchLocked(uint64_t start, uint64_t end) {
  for (int i = 0; i < kMaxPunching; i++) {
    if (punching_[i].end == 0) {
      punching_[i] = Run{start, end};
      return i;
    }
  }
  return -1;
}

void FramePool::Punch(int slot, uint64_t start, uint64_t end) {
  // Punching the pages out frees their memory; nothing maps them any more.
  fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(start),
            static_cast<off_t>(end - start));
  for (uint64_t off = start; off < end && off < arena_.len_bytes(); off += kPageSize) {
    uint64_t i = off >> kPageShift;
    identity_[i / 64].fetch_and(~(uint64_t{1} << (i % 64)), std::memory_order_acq_rel);
  }
  SpinLockHolder l(&pend_lock_);
  punching_[slot] = Run{};
}

void FramePool::Flush() {
  for (;;) {
    int slot;
    uint64_t start, end;
    {
      SpinLockHolder l(&pend_lock_);
      if (pend_end_ <= pend_start_) return;
      slot = BeginPunchLocked(pend_start_, pend_end_);
      start = pend_start_;
      end = pend_end_;
      if (slot >= 0) pend_start_ = pend_end_ = 0;
    }
    if (slot >= 0) {
      Punch(slot, start, end);
      return;
    }
    sched_yield();
  }
}

bool FramePool::Fill(uint64_t off, const void* src, size_t len) {
  const char* p = static_cast<const char*>(src);
  while (len > 0) {
    ssize_t n = pwrite(fd_, p, len, static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = EIO;
      return false;
    }
    p += n;
    off += static_cast<uint64_t>(n);
    len -= static_cast<size_t>(n);
  }
  return true;
}

void FramePool::Release(uint64_t off) {
  nr_frames_.fetch_sub(1, std::memory_order_relaxed);
  for (;;) {
    int slot = -1;
    uint64_t start = 0, end = 0;
    {
      SpinLockHolder l(&pend_lock_);
      // Runs never cross the end of the identity span (Punch clears bits by
      // offset, and spill offsets start there).
      const bool extends = pend_end_ > pend_start_ && off == pend_end_ &&
                           pend_end_ - pend_start_ < kMaxPendingBytes &&
                           (off < arena_.len_bytes()) == (pend_start_ < arena_.len_bytes());
      if (extends) {
        pend_end_ += kPageSize;
        return;
      }
      const bool pending = pend_end_ > pend_start_;
      if (pending) slot = BeginPunchLocked(pend_start_, pend_end_);
      // With every slot punching, wait for one rather than lose track.
      if (!pending || slot >= 0) {
        start = pend_start_;
        end = pend_end_;
        pend_start_ = off;
        pend_end_ = off + kPageSize;
        if (!pending) return;
      }
    }
    if (slot >= 0) {
      Punch(slot, start, end);
      return;
    }
    sched_yield();
  }
}

}  // namespace emu
