// A small-object allocator on memory the emulator maps for itself (emu/sys.h),
// for the containers that mm calls mutate (the VMA tree). Under the preload,
// malloc's own mmap/munmap/mremap calls are served by the emulator while
// malloc holds its arena lock, so these paths must never call malloc.
//
// Sizes up to kMaxPooled bytes come from per-size-class free lists filled
// from 64 KiB slabs that are never returned; larger blocks are mapped and
// unmapped one by one. Thread-safe; not async-signal-safe (a spin lock).
#ifndef EMU_POOL_H_
#define EMU_POOL_H_

#include <cstddef>

namespace emu {

void* PoolAlloc(size_t bytes);
void PoolFree(void* p, size_t bytes);
// A forked child (see SpinLock::ResetAfterFork).
void PoolResetAfterFork();

// A std allocator on PoolAlloc, for node-based containers.
template <typename T>
struct PoolAllocator {
  using value_type = T;
  PoolAllocator() = default;
  template <typename U>
  PoolAllocator(const PoolAllocator<U>&) {}  // NOLINT: rebinding is implicit
  T* allocate(size_t n) { return static_cast<T*>(PoolAlloc(n * sizeof(T))); }
  void deallocate(T* p, size_t n) { PoolFree(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const PoolAllocator<U>&) const { return true; }
};

}  // namespace emu

#endif  // EMU_POOL_H_
