#include "emu/shmem.h"

#include <sys/mman.h>

#include <algorithm>

#include "emu/log.h"
#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/sys.h"

namespace emu {

ShmemObject::ShmemObject(Machine* machine, uint64_t nr_pages)
    : machine_(machine), nr_pages_(nr_pages) {
  // Zero-filled on demand: a large object costs only the entries touched.
  void* p = sys::Mmap(nullptr, std::max<uint64_t>(nr_pages, 1) * sizeof(uint32_t),
                      PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  pages_ = p == MAP_FAILED ? nullptr : static_cast<std::atomic<uint32_t>*>(p);
}

ShmemObject::~ShmemObject() {
  if (pages_ != nullptr) sys::Munmap(pages_, std::max<uint64_t>(nr_pages_, 1) * sizeof(uint32_t));
}

Pfn ShmemObject::Add(uint64_t index, Pfn pfn) {
  uint32_t expected = 0;
  if (pages_[index].compare_exchange_strong(expected, static_cast<uint32_t>(ToU64(pfn)),
                                            std::memory_order_acq_rel)) {
    nr_cached_.fetch_add(1, std::memory_order_relaxed);
    return pfn;
  }
  return Pfn{expected};
}

void ShmemObject::Put() {
  if (vma_refs_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // Linux: shmem_evict_inode() -> shmem_truncate_range(): no VMA names the
  // object, so no PTE maps its pages; the cache's references go.
  if (nr_cached_.load(std::memory_order_relaxed) == 0) return;
  for (uint64_t i = 0; i < nr_pages_; i++) {
    const uint32_t pfn = pages_[i].exchange(0, std::memory_order_acq_rel);
    if (pfn == 0) continue;
    nr_cached_.fetch_sub(1, std::memory_order_relaxed);
    EMU_BUG_ON(machine_->mem_map().page(Pfn{pfn}).mapcount.load() != 0);
    machine_->PutPage(Pfn{pfn});
  }
  if (FramePool* pool = machine_->frame_pool()) pool->Flush();
}

void ShmemObject::AddSpace(AddressSpace* as) {
  SpinLockHolder l(&lock_);
  if (std::find(spaces_.begin(), spaces_.end(), as) == spaces_.end()) spaces_.push_back(as);
}

void ShmemObject::RemoveSpace(AddressSpace* as) {
  SpinLockHolder l(&lock_);
  spaces_.erase(std::remove(spaces_.begin(), spaces_.end(), as), spaces_.end());
}

size_t ShmemObject::Spaces(const Page&, size_t from, AddressSpace** out, size_t max) {
  SpinLockHolder l(&lock_);
  size_t n = 0;
  for (size_t i = from; i < spaces_.size() && n < max; i++) out[n++] = spaces_[i];
  return n;
}

void ShmemObject::AddressesIn(const Page& page, AddressSpace& as,
                              absl::FunctionRef<void(const Vma&, VirtAddr)> fn)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  // Linux: rmap_walk_file() over the i_mmap interval tree; ours looks
  // through the address space's VMAs for those naming this object.
  for (const auto& [start, v] : as.vmas()) {
    if (v.file != this || page.index < v.pgoff) continue;
    const uint64_t off = page.index - v.pgoff;
    if (off >= ((v.end - v.start) >> kPageShift)) continue;
    fn(v, v.start + (off << kPageShift));
  }
}

}  // namespace emu
