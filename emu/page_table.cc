#include "emu/page_table.h"
#include "emu/sys.h"

#include <sys/mman.h>

namespace emu {
namespace {
constexpr size_t kChunkBytes = 64 * kPageSize;
}

PageTable::~PageTable() {
  void* chunk = chunk_head_;  // no other thread can be here
  while (chunk != nullptr) {
    void* next = *static_cast<void**>(chunk);
    sys::Munmap(chunk, kChunkBytes);
    chunk = next;
  }
}

PageTable::Table* PageTable::AllocTable() {
  SpinLockHolder l(&alloc_lock_);
  if (chunk_next_ == chunk_end_) {
    void* c = sys::Mmap(nullptr, kChunkBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                   0);
    if (c == MAP_FAILED) return nullptr;
    *static_cast<void**>(c) = chunk_head_;
    chunk_head_ = c;
    chunk_next_ = static_cast<char*>(c) + kPageSize;
    chunk_end_ = static_cast<char*>(c) + kChunkBytes;
  }
  auto* t = reinterpret_cast<Table*>(chunk_next_);  // fresh mmap memory is zero
  chunk_next_ += kPageSize;
  nr_tables_.fetch_add(1, std::memory_order_relaxed);
  return t;
}

std::atomic<uint64_t>* PageTable::Walk(VirtAddr addr, bool alloc) {
  Table* t = &root_;
  for (int level = 0; level < kLevels - 1; level++) {
    std::atomic<uint64_t>& slot = t->e[Index(addr, level)];
    uint64_t next = slot.load(std::memory_order_acquire);
    if (next == 0) {
      if (!alloc) return nullptr;
      Table* fresh = AllocTable();
      if (fresh == nullptr) return nullptr;
      uint64_t expected = 0;
      if (slot.compare_exchange_strong(expected, reinterpret_cast<uint64_t>(fresh),
                                       std::memory_order_acq_rel)) {
        next = reinterpret_cast<uint64_t>(fresh);
      } else {
        next = expected;  // lost the race; the fresh table stays in its chunk unused
      }
    }
    t = reinterpret_cast<Table*>(next);
  }
  return &t->e[Index(addr, kLevels - 1)];
}

}  // namespace emu
