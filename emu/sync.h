// Locks usable from the fault path, including signal context: they are built
// on atomics and futex(2) only, never allocate, and never call into libc
// functions that are not async-signal-safe. absl::Mutex is not used on the
// fault path because its slow path allocates per-thread state.
#ifndef EMU_SYNC_H_
#define EMU_SYNC_H_

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "absl/base/thread_annotations.h"

// Always-on assertion for broken invariants. async-signal-safe.
#define EMU_BUG_ON(cond)                                               \
  do {                                                                 \
    if (__builtin_expect(!!(cond), 0)) ::emu::BugOn(#cond, __FILE__, __LINE__); \
  } while (0)

#ifdef NDEBUG
#define EMU_DCHECK(cond) \
  do {                   \
  } while (0)
#else
#define EMU_DCHECK(cond) EMU_BUG_ON(!(cond))
#endif

namespace emu {

// Writes "emu: BUG: cond at file:line" with write(2) and aborts.
// async-signal-safe.
[[noreturn]] void BugOn(const char* cond, const char* file, int line);

// async-signal-safe.
inline void FutexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}
// async-signal-safe.
inline void FutexWakeAll(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr,
          nullptr, 0);
}

inline void CpuRelax() { __builtin_ia32_pause(); }

// A test-and-test-and-set spinlock that yields the CPU after a short spin (we
// run on 2 vCPUs: spinning against a preempted holder wastes a timeslice).
// Held only for a few loads and stores, never across a system call.
class ABSL_LOCKABLE SpinLock {
 public:
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    for (int spins = 0;; spins++) {
      if (!locked_.load(std::memory_order_relaxed) &&
          !locked_.exchange(true, std::memory_order_acquire)) {
        return;
      }
      if (spins < 64) {
        CpuRelax();
      } else {
        sched_yield();
      }
    }
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() { locked_.store(false, std::memory_order_release); }
  // In a forked child: the lock's holder may be a thread the child does not
  // have. Only with no other thread running.
  void ResetAfterFork() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    locked_.store(false, std::memory_order_relaxed);
  }

 private:
  std::atomic<bool> locked_{false};
};

class ABSL_SCOPED_LOCKABLE SpinLockHolder {
 public:
  explicit SpinLockHolder(SpinLock* l) ABSL_EXCLUSIVE_LOCK_FUNCTION(l) : l_(l) { l_->Lock(); }
  ~SpinLockHolder() ABSL_UNLOCK_FUNCTION() { l_->Unlock(); }
  SpinLockHolder(const SpinLockHolder&) = delete;
  SpinLockHolder& operator=(const SpinLockHolder&) = delete;

 private:
  SpinLock* l_;
};

// Reader/writer semaphore (= Linux rw_semaphore, as mmap_lock). Writers are
// preferred: a waiting writer stops new readers, so a stream of faults cannot
// starve mmap/munmap. Readers and writers sleep on futexes.
class ABSL_LOCKABLE RwSem {
 public:
  void ReadLock() ABSL_SHARED_LOCK_FUNCTION() {
    for (;;) {
      uint32_t s = state_.load(std::memory_order_relaxed);
      if ((s & (kWriter | kWriterWaiting)) == 0) {
        if (state_.compare_exchange_weak(s, s + kReader, std::memory_order_acquire)) return;
        continue;
      }
      FutexWait(&state_, s);
    }
  }
  // Takes the lock for reading if no writer holds or waits for it.
  bool TryReadLock() ABSL_SHARED_TRYLOCK_FUNCTION(true) {
    uint32_t s = state_.load(std::memory_order_relaxed);
    while ((s & (kWriter | kWriterWaiting)) == 0) {
      if (state_.compare_exchange_weak(s, s + kReader, std::memory_order_acquire)) return true;
    }
    return false;
  }
  void ReadUnlock() ABSL_UNLOCK_FUNCTION() {
    uint32_t prev = state_.fetch_sub(kReader, std::memory_order_release);
    if ((prev & kWriterWaiting) && (prev >> kReaderShift) == 1) FutexWakeAll(&state_);
  }
  void WriteLock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    for (;;) {
      uint32_t s = state_.load(std::memory_order_relaxed);
      if ((s & kWriter) == 0 && (s >> kReaderShift) == 0) {
        if (state_.compare_exchange_weak(s, (s | kWriter) & ~kWriterWaiting,
                                         std::memory_order_acquire)) {
          return;
        }
        continue;
      }
      if ((s & kWriterWaiting) == 0 &&
          !state_.compare_exchange_weak(s, s | kWriterWaiting, std::memory_order_relaxed)) {
        continue;
      }
      FutexWait(&state_, s | kWriterWaiting);
    }
  }
  void WriteUnlock() ABSL_UNLOCK_FUNCTION() {
    state_.fetch_and(~kWriter, std::memory_order_release);
    FutexWakeAll(&state_);
  }
  void AssertHeld() const ABSL_ASSERT_SHARED_LOCK() {
    EMU_DCHECK(state_.load(std::memory_order_relaxed) != 0);
  }
  void AssertWriteHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {
    EMU_DCHECK(state_.load(std::memory_order_relaxed) & kWriter);
  }

  // In a forked child: holders and waiters may be threads the child does
  // not have. Only with no other thread running.
  void ResetAfterFork() ABSL_NO_THREAD_SAFETY_ANALYSIS { state_.store(0, std::memory_order_relaxed); }

 private:
  static constexpr uint32_t kWriter = 1;
  static constexpr uint32_t kWriterWaiting = 2;
  static constexpr int kReaderShift = 2;
  static constexpr uint32_t kReader = 1u << kReaderShift;
  std::atomic<uint32_t> state_{0};
};

class ABSL_SCOPED_LOCKABLE ReadLockHolder {
 public:
  explicit ReadLockHolder(RwSem* s) ABSL_SHARED_LOCK_FUNCTION(s) : s_(s) { s_->ReadLock(); }
  ~ReadLockHolder() ABSL_UNLOCK_FUNCTION() { s_->ReadUnlock(); }
  ReadLockHolder(const ReadLockHolder&) = delete;
  ReadLockHolder& operator=(const ReadLockHolder&) = delete;

 private:
  RwSem* s_;
};

// A write lock that can be dropped before the end of its scope.
class ABSL_SCOPED_LOCKABLE ReleasableWriteLock {
 public:
  explicit ReleasableWriteLock(RwSem* s) ABSL_EXCLUSIVE_LOCK_FUNCTION(s) : s_(s) {
    s_->WriteLock();
  }
  ~ReleasableWriteLock() ABSL_UNLOCK_FUNCTION() {
    if (s_ != nullptr) s_->WriteUnlock();
  }
  void Release() ABSL_UNLOCK_FUNCTION() {
    s_->WriteUnlock();
    s_ = nullptr;
  }
  ReleasableWriteLock(const ReleasableWriteLock&) = delete;
  ReleasableWriteLock& operator=(const ReleasableWriteLock&) = delete;

 private:
  RwSem* s_;
};

class ABSL_SCOPED_LOCKABLE WriteLockHolder {
 public:
  explicit WriteLockHolder(RwSem* s) ABSL_EXCLUSIVE_LOCK_FUNCTION(s) : s_(s) { s_->WriteLock(); }
  ~WriteLockHolder() ABSL_UNLOCK_FUNCTION() { s_->WriteUnlock(); }
  WriteLockHolder(const WriteLockHolder&) = delete;
  WriteLockHolder& operator=(const WriteLockHolder&) = delete;

 private:
  RwSem* s_;
};

}  // namespace emu

#endif  // EMU_SYNC_H_
