#include "emu/pool.h"

#include <new>

#include "emu/sync.h"
#include "emu/sys.h"
#include "emu/types.h"

namespace emu {
namespace {

constexpr size_t kAlign = 16;
constexpr size_t kMaxPooled = 512;
constexpr size_t kClasses = kMaxPooled / kAlign;
constexpr size_t kSlabBytes = 64 * 1024;

struct FreeBlock {
  FreeBlock* next;
};

struct Pool {
  SpinLock lock;
  FreeBlock* free[kClasses] = {};
  char* slab_next = nullptr;
  char* slab_end = nullptr;
};

Pool& GetPool() {
  static Pool pool;  // constant-initialized: no guard, no allocation
  return pool;
}

size_t ClassOf(size_t bytes) { return (bytes + kAlign - 1) / kAlign - 1; }

}  // namespace

void* PoolAlloc(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes > kMaxPooled) {
    void* p = sys::Mmap(nullptr, PageAlignUp(bytes), PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;
  }
  size_t c = ClassOf(bytes);
  size_t size = (c + 1) * kAlign;
  Pool& pool = GetPool();
  SpinLockHolder l(&pool.lock);
  if (FreeBlock* b = pool.free[c]) {
    pool.free[c] = b->next;
    return b;
  }
  if (pool.slab_next == nullptr || pool.slab_end - pool.slab_next < static_cast<ptrdiff_t>(size)) {
    void* s = sys::Mmap(nullptr, kSlabBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
    if (s == MAP_FAILED) throw std::bad_alloc();
    pool.slab_next = static_cast<char*>(s);
    pool.slab_end = pool.slab_next + kSlabBytes;
  }
  void* p = pool.slab_next;
  pool.slab_next += size;
  return p;
}

void PoolResetAfterFork() { GetPool().lock.ResetAfterFork(); }

void PoolFree(void* p, size_t bytes) {
  if (p == nullptr) return;
  if (bytes == 0) bytes = 1;
  if (bytes > kMaxPooled) {
    sys::Munmap(p, PageAlignUp(bytes));
    return;
  }
  Pool& pool = GetPool();
  SpinLockHolder l(&pool.lock);
  auto* b = static_cast<FreeBlock*>(p);
  size_t c = ClassOf(bytes);
  b->next = pool.free[c];
  pool.free[c] = b;
}

}  // namespace emu
