// Block I/O for swap: a SwapIo moves whole 4 KiB slots between memory and the
// swap file. The io_uring backend is the real one; FaultInjectingSwapIo wraps
// any backend for tests of the error paths.
//
// Everything a SwapIo does on the I/O path is async-signal-safe: it runs inside
// the SIGBUS handler of a faulting thread (swap-in) as well as in reclaim.
#ifndef EMU_SWAP_SWAP_IO_H_
#define EMU_SWAP_SWAP_IO_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "emu/pool.h"
#include "emu/sync.h"

namespace emu {

// One request: nr_pages contiguous 4 KiB slots starting at `slot`, to/from `buf`
// (page aligned, nr_pages*kPageSize bytes). `result` gets bytes transferred or -errno.
struct SwapIoOp {
  uint64_t slot = 0;
  uint32_t nr_pages = 0;
  void* buf = nullptr;
  int64_t result = 0;
};

// A swap backend. Read/Write issue all `n` ops, wait for all of them, and fill
// each op's result (nr_pages * kPageSize on success). Thread-safe,
// async-signal-safe (no malloc, no locks but emu SpinLocks or atomics, no
// logging), never throws. An op with result != nr_pages * kPageSize failed.
class SwapIo {
 public:
  virtual ~SwapIo() = default;
  // Backends live in the emulator's own memory (emu/pool.h): one created in
  // a forked child under the preload would otherwise come from the
  // program's heap, i.e. emulated memory that reclaim may take away from
  // under the threads that use it.
  static void* operator new(size_t bytes) { return PoolAlloc(bytes); }
  static void operator delete(void* p, size_t bytes) { PoolFree(p, bytes); }
  virtual void Read(SwapIoOp* ops, int n) = 0;
  virtual void Write(SwapIoOp* ops, int n) = 0;
};

// io_uring (liburing) over the open file descriptor `fd`, which must outlive
// the backend (the backend does not close it). Byte offset of a slot: slot *
// kPageSize.
//
// A pool of `nr_rings` rings, each with `queue_depth` entries and its own busy
// flag. A caller takes a free ring (try-lock, round robin from a rotating
// start; sched_yield when all are busy), submits up to queue_depth ops at a
// time, waits for all of its completions on that ring (io_uring_wait_cqe is
// retried on -EINTR), and releases the ring. So a thread always waits for its
// own I/O, and a batch of writes really goes out with queue depth.
//
// A short transfer is retried once for the remainder; if it is still short,
// result is the bytes done (the caller treats anything but full as an error).
//
// Because a ring is only ever try-locked, a signal handler that interrupts a
// thread holding a ring takes another one; with nr_rings >= 2 it cannot
// deadlock on its own thread.
//
// A reader (a swap-in: the faulting thread, or the handler thread it waits
// for) polls its ring's completion queue for up to `read_poll_us` before it
// sleeps in io_uring_enter. A sleeping vCPU halts, and the completion then
// has to wake it: on the 2-vCPU VM we measure on (no guest halt-polling),
// polling took the swap-in p50 from 102 to 80 us (SIGBUS mode) and from 146
// to 117 us (handler threads); see docs/DESIGN.md. It costs CPU: the poller
// holds its CPU for the I/O's duration, up to the window. Writes (reclaim)
// never poll.
//
// Errors: EINVAL for a bad argument, or the errno of io_uring_queue_init
// (ENOSYS or EPERM where io_uring is disabled, ENOMEM).
inline constexpr int kMaxReadPollUs = 10000;
absl::StatusOr<std::unique_ptr<SwapIo>> CreateUringSwapIo(int fd, int queue_depth, int nr_rings,
                                                          int read_poll_us = 0);

// Synchronous pread/pwrite on `fd`, one call per op (retried for the rest
// of a short transfer). Constructing it allocates nothing: a forked child
// uses it until it has rings of its own (SwapDevice::ForkAttach).
class PsyncSwapIo final : public SwapIo {
 public:
  explicit PsyncSwapIo(int fd) : fd_(fd) {}
  void Read(SwapIoOp* ops, int n) override { Do(/*write=*/false, ops, n); }
  void Write(SwapIoOp* ops, int n) override { Do(/*write=*/true, ops, n); }

 private:
  void Do(bool write, SwapIoOp* ops, int n);
  const int fd_;
};

// Test wrapper: which ops fail, and how.
struct SwapFaultRule {
  enum Op { kRead, kWrite } op;
  uint64_t slot_begin, slot_end;  // ops touching any slot in [begin, end) match
  // The errno to report (EIO or -EIO alike: the op's result is -|error|), or 0
  // for a short transfer: the first nr_pages/2 pages are transferred (possibly
  // none) and result is that many bytes.
  int error;
  int times = -1;  // how many matches fail before the rule expires (-1: forever)
};

// Forwards to `inner` except for ops a rule matches. Rules are checked in the
// order they were added; the first live rule that matches an op decides it.
// Consecutive unmatched ops are forwarded to `inner` as one batch.
class FaultInjectingSwapIo : public SwapIo {
 public:
  static constexpr int kMaxRules = 32;

  explicit FaultInjectingSwapIo(std::unique_ptr<SwapIo> inner);

  // Not from signal context. More than kMaxRules live rules is a bug.
  void AddRule(const SwapFaultRule& r);
  void ClearRules();
  // Ops failed (or shortened) so far.
  uint64_t nr_injected() const { return nr_injected_.load(std::memory_order_relaxed); }
  SwapIo& inner() { return *inner_; }

  // async-signal-safe.
  void Read(SwapIoOp* ops, int n) override { Do(SwapFaultRule::kRead, ops, n); }
  void Write(SwapIoOp* ops, int n) override { Do(SwapFaultRule::kWrite, ops, n); }

 private:
  void Do(SwapFaultRule::Op kind, SwapIoOp* ops, int n);
  void Forward(SwapFaultRule::Op kind, SwapIoOp* ops, int n);
  // Returns the matching rule's error (consuming one of its `times`), or
  // false when no rule matches.
  bool Match(SwapFaultRule::Op kind, const SwapIoOp& op, int* error);

  const std::unique_ptr<SwapIo> inner_;  // immutable after construction
  mutable SpinLock lock_;
  std::array<SwapFaultRule, kMaxRules> rules_ ABSL_GUARDED_BY(lock_);
  int nr_rules_ ABSL_GUARDED_BY(lock_) = 0;
  std::atomic<uint64_t> nr_injected_{0};
};

}  // namespace emu

#endif  // EMU_SWAP_SWAP_IO_H_
