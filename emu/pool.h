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

#include <pthread.h>

#include <cstddef>
#include <new>
#include <utility>

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

// Starts a thread running fn() with its start-up state in the pool, never
// in the program's heap: a forked child's emulator threads start while that
// heap may be swapped out, and a thread of ours must not fault on it (nor
// count a fault the child's trace has not started for). Returns 0 or
// pthread_create's error. The thread is joinable (*t).
template <typename Fn>
int StartThread(pthread_t* t, Fn fn) {
  struct Box {
    Fn fn;
    static void* Run(void* p) {
      Box* b = static_cast<Box*>(p);
      Fn f = std::move(b->fn);
      b->~Box();
      PoolFree(b, sizeof(Box));
      f();
      return nullptr;
    }
  };
  void* mem = PoolAlloc(sizeof(Box));
  Box* b = new (mem) Box{std::move(fn)};
  int rc = pthread_create(t, nullptr, &Box::Run, b);
  if (rc != 0) {
    b->~Box();
    PoolFree(mem, sizeof(Box));
  }
  return rc;
}

}  // namespace emu

#endif  // EMU_POOL_H_
