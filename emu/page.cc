#include "emu/page.h"

#include <sys/mman.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "emu/status.h"
#include "emu/sys.h"

namespace emu {

void BugOn(const char* cond, const char* file, int line) {
  char buf[512];
  size_t n = 0;
  auto put = [&](const char* s) {
    while (*s && n < sizeof(buf) - 1) buf[n++] = *s++;
  };
  char num[16];
  int k = 0;
  for (int v = line; v > 0 && k < 15; v /= 10) num[k++] = static_cast<char>('0' + v % 10);
  char rev[16];
  for (int i = 0; i < k; i++) rev[i] = num[k - 1 - i];
  rev[k] = 0;
  put("emu: BUG: ");
  put(cond);
  put(" at ");
  put(file);
  put(":");
  put(rev);
  put("\n");
  ssize_t ignored = write(2, buf, n);
  (void)ignored;
  abort();
}

absl::StatusOr<MemMap*> MemMap::Create(uint64_t max_pages) {
  if (max_pages < 2 || max_pages > (uint64_t{1} << 32)) {
    return ErrnoError(EINVAL, absl::StrCat("mem_map of ", max_pages, " pages"));
  }
  size_t bytes = PageAlignUp(max_pages * sizeof(Page));
  void* p = sys::Mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return ErrnoError(errno, "reserve mem_map");
  auto* pages = static_cast<Page*>(p);
  // Zero-filled memory is a valid array of free Page objects (all fields 0).
  auto* mm = new MemMap(pages, max_pages);
  pages[0].flags.store(kPgReserved, std::memory_order_relaxed);
  return mm;
}

MemMap::~MemMap() { sys::Munmap(pages_, PageAlignUp(max_pages_ * sizeof(Page))); }

bool MemMap::Alloc(Pfn* out) {
  uint64_t pfn;
  {
    SpinLockHolder l(&lock_);
    if (free_head_ != 0) {
      pfn = free_head_;
      free_head_ = pages_[pfn].next_free;
      nr_free_--;
    } else if (next_unused_ < max_pages_) {
      pfn = next_unused_++;
    } else {
      return false;
    }
  }
  Page& p = pages_[pfn];
  p.next_free = 0;
  p.flags.store(kPgAnon, std::memory_order_relaxed);
  p.refcount.store(1, std::memory_order_relaxed);
  p.mapcount.store(0, std::memory_order_relaxed);
  uint64_t used = nr_used_.fetch_add(1, std::memory_order_relaxed) + 1;
  uint64_t peak = peak_used_.load(std::memory_order_relaxed);
  while (used > peak && !peak_used_.compare_exchange_weak(peak, used, std::memory_order_relaxed)) {
  }
  *out = Pfn{pfn};
  return true;
}

void MemMap::Free(Pfn pfn) {
  uint64_t n = ToU64(pfn);
  EMU_BUG_ON(n == 0 || n >= max_pages_);
  Page& p = pages_[n];
  EMU_BUG_ON(p.mapcount.load(std::memory_order_relaxed) != 0);
  EMU_BUG_ON(p.flags.load(std::memory_order_relaxed) & kPgPool);  // Machine::FreePage releases it
  p.flags.store(0, std::memory_order_relaxed);
  p.refcount.store(0, std::memory_order_relaxed);
  p.mapping = nullptr;
  p.index = 0;
  p.private_ = 0;
  p.pool_off = 0;
  p.anchor = nullptr;
  p.lru_prev = p.lru_next = 0;
  nr_used_.fetch_sub(1, std::memory_order_relaxed);
  SpinLockHolder l(&lock_);
  p.next_free = free_head_;
  free_head_ = static_cast<uint32_t>(n);
  nr_free_++;
}

absl::Status MemMap::CheckInvariants() {
  SpinLockHolder l(&lock_);
  uint64_t handed_out = next_unused_ - 1;
  if (nr_free_ + nr_used() != handed_out) {
    return ErrnoError(EIO, absl::StrCat("mem_map: free ", nr_free_, " + used ", nr_used(),
                                        " != handed out ", handed_out));
  }
  uint64_t walked = 0;
  for (uint32_t pfn = free_head_; pfn != 0; pfn = pages_[pfn].next_free) {
    const Page& p = pages_[pfn];
    if (p.flags.load() != 0 || p.refcount.load() != 0 || p.mapcount.load() != 0 ||
        p.mapping != nullptr) {
      return ErrnoError(EIO, absl::StrCat("mem_map: free pfn ", pfn, " is not clean"));
    }
    if (++walked > nr_free_) return ErrnoError(EIO, "mem_map: free list cycle");
  }
  if (walked != nr_free_) return ErrnoError(EIO, "mem_map: free list length != nr_free");
  return absl::OkStatus();
}

}  // namespace emu
