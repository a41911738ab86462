#include "swap/swap_io.h"

#include <liburing.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "emu/status.h"
#include "emu/types.h"

namespace emu {
namespace {

// The largest op: read(2)/write(2) move at most 0x7ffff000 bytes per call, and
// io_uring's len is 32 bits.
constexpr uint32_t kMaxOpPages = (1u << 31) / kPageSize - 1;

// One ring of the pool. `busy` is the ring's lock: taken with a try-lock
// (exchange), held from the first submission of a call to its last
// completion, never waited on.
// Differs from the brief's "one SpinLock per ring": emu::SpinLock has no
// TryLock, so the flag is a bare atomic with the same acquire/release order.
struct Ring {
  std::atomic<bool> busy{false};
  bool initialized = false;  // immutable after CreateUringSwapIo
  io_uring ring{};           // used only by the holder of `busy`
};

class UringSwapIo final : public SwapIo {
 public:
  UringSwapIo(int fd, int nr_rings, int read_poll_us)
      : fd_(fd),
        nr_rings_(nr_rings),
        read_poll_ns_(int64_t{read_poll_us} * 1000),
        rings_(nr_rings) {}
  ~UringSwapIo() override {
    for (int i = 0; i < nr_rings_; i++) {
      if (rings_[i].initialized) io_uring_queue_exit(&rings_[i].ring);
    }
  }

  absl::Status Init(int queue_depth) {
    for (int i = 0; i < nr_rings_; i++) {
      int ret = io_uring_queue_init(static_cast<unsigned>(queue_depth), &rings_[i].ring, 0);
      if (ret < 0) {
        return ErrnoError(-ret, absl::StrCat("swap: io_uring_queue_init(", queue_depth,
                                             ") for ring ", i, " of ", nr_rings_));
      }
      rings_[i].initialized = true;
    }
    // The kernel rounds entries up to a power of two; never put more in
    // flight than the caller asked for.
    depth_ = std::min<int>(queue_depth, static_cast<int>(rings_[0].ring.sq.ring_entries));
    return absl::OkStatus();
  }

  void Read(SwapIoOp* ops, int n) override { Do(/*write=*/false, ops, n); }
  void Write(SwapIoOp* ops, int n) override { Do(/*write=*/true, ops, n); }

 private:
  // async-signal-safe.
  Ring* Acquire() {
    uint32_t start = next_.fetch_add(1, std::memory_order_relaxed);
    for (;;) {
      for (int i = 0; i < nr_rings_; i++) {
        Ring* r = &rings_[(start + i) % static_cast<uint32_t>(nr_rings_)];
        if (!r->busy.load(std::memory_order_relaxed) &&
            !r->busy.exchange(true, std::memory_order_acquire)) {
          return r;
        }
      }
      sched_yield();
    }
  }

  // Queues ops[i] (or, when `retry`, the remainder after ops[i].result bytes).
  // async-signal-safe.
  void Prep(io_uring* ring, bool write, SwapIoOp* ops, int i, bool retry) {
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    EMU_BUG_ON(sqe == nullptr);  // never more than depth_ in flight
    const uint64_t done = retry ? static_cast<uint64_t>(ops[i].result) : 0;
    const uint64_t len = uint64_t{ops[i].nr_pages} * kPageSize - done;
    char* buf = static_cast<char*>(ops[i].buf) + done;
    const uint64_t off = ops[i].slot * kPageSize + done;
    if (write) {
      io_uring_prep_write(sqe, fd_, buf, static_cast<unsigned>(len), off);
    } else {
      io_uring_prep_read(sqe, fd_, buf, static_cast<unsigned>(len), off);
    }
    io_uring_sqe_set_data64(sqe, static_cast<uint64_t>(i));
  }

  // Waits for a completion on `ring`: polls for up to `poll_ns` first
  // (yielding every kPollYieldNs), then sleeps. Returns like
  // io_uring_wait_cqe. async-signal-safe.
  static constexpr int64_t kPollYieldNs = 20000;
  static int WaitCqe(io_uring* ring, io_uring_cqe** cqe, int64_t poll_ns) {
    if (poll_ns > 0) {
      const int64_t start = NowNs();
      const int64_t deadline = start + poll_ns;
      int64_t next_yield = start + kPollYieldNs;
      int64_t now = start;
      do {
        // The completion of a read is posted by task work of this thread
        // (io_uring's default TWA_SIGNAL wakes a polling thread into the
        // kernel for it); peeking sees it once posted.
        if (io_uring_peek_cqe(ring, cqe) == 0) return 0;
        __builtin_ia32_pause();
        now = NowNs();
        if (now >= next_yield) {
          // Another thread that is ready on this CPU (kswapd, a thread of
          // the program) runs first: a poll must not cost it its turn.
          sched_yield();
          next_yield = now + kPollYieldNs;
        }
      } while (now < deadline);
    }
    return io_uring_wait_cqe(ring, cqe);
  }
  static int64_t NowNs() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return int64_t{t.tv_sec} * 1000000000 + t.tv_nsec;
  }

  // Submits what is queued on `ring` and reaps `nr` completions into `ops`
  // (user_data is the op's index), waiting as WaitCqe. A retry completion
  // adds to the bytes done, or replaces them with its -errno.
  // async-signal-safe.
  static void SubmitAndReap(io_uring* ring, SwapIoOp* ops, int nr, bool retry, int64_t poll_ns) {
    int reaped = 0;
    while (reaped < nr) {
      if (io_uring_sq_ready(ring) > 0) {
        int ret = io_uring_submit(ring);
        // EAGAIN/EBUSY: the kernel is short of resources or the CQ is full;
        // reaping (below) or yielding makes progress.
        EMU_BUG_ON(ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY);
      }
      const int in_flight = nr - reaped - static_cast<int>(io_uring_sq_ready(ring));
      if (in_flight == 0) {
        sched_yield();
        continue;
      }
      io_uring_cqe* cqe = nullptr;
      int ret = WaitCqe(ring, &cqe, poll_ns);
      if (ret == -EINTR || ret == -EAGAIN) continue;
      EMU_BUG_ON(ret < 0);
      do {
        SwapIoOp& op = ops[io_uring_cqe_get_data64(cqe)];
        const int res = cqe->res;
        io_uring_cqe_seen(ring, cqe);
        if (!retry || res < 0) {
          op.result = res;
        } else {
          op.result += res;
        }
        reaped++;
      } while (reaped < nr && io_uring_peek_cqe(ring, &cqe) == 0);
    }
  }

  // async-signal-safe.
  void Do(bool write, SwapIoOp* ops, int n) {
    if (n <= 0) return;
    Ring* r = Acquire();
    for (int base = 0; base < n; base += depth_) {
      SwapIoOp* chunk = ops + base;
      const int cnt = std::min(depth_, n - base);
      int queued = 0;
      for (int i = 0; i < cnt; i++) {
        EMU_BUG_ON(chunk[i].nr_pages > kMaxOpPages);
        EMU_DCHECK(PageAligned(reinterpret_cast<uintptr_t>(chunk[i].buf)));
        chunk[i].result = 0;
        if (chunk[i].nr_pages == 0) continue;
        Prep(&r->ring, write, chunk, i, /*retry=*/false);
        queued++;
      }
      const int64_t poll_ns = write ? 0 : read_poll_ns_;
      SubmitAndReap(&r->ring, chunk, queued, /*retry=*/false, poll_ns);
      // A short transfer (a signal, a filesystem quirk): once more for the rest.
      queued = 0;
      for (int i = 0; i < cnt; i++) {
        const int64_t full = int64_t{chunk[i].nr_pages} * static_cast<int64_t>(kPageSize);
        if (chunk[i].result > 0 && chunk[i].result < full) {
          Prep(&r->ring, write, chunk, i, /*retry=*/true);
          queued++;
        }
      }
      if (queued > 0) SubmitAndReap(&r->ring, chunk, queued, /*retry=*/true, poll_ns);
    }
    r->busy.store(false, std::memory_order_release);
  }

  const int fd_;  // not owned
  const int nr_rings_;
  const int64_t read_poll_ns_;
  int depth_ = 0;  // immutable after Init
  std::vector<Ring, PoolAllocator<Ring>> rings_;  // see SwapIo::operator new
  std::atomic<uint32_t> next_{0};  // where the next Acquire starts looking
};

}  // namespace

absl::StatusOr<std::unique_ptr<SwapIo>> CreateUringSwapIo(int fd, int queue_depth, int nr_rings,
                                                          int read_poll_us) {
  if (fd < 0 || queue_depth < 1 || queue_depth > 4096 || nr_rings < 1 || nr_rings > 1024 ||
      read_poll_us < 0 || read_poll_us > kMaxReadPollUs) {
    return ErrnoError(EINVAL, absl::StrCat("swap: CreateUringSwapIo(fd=", fd, ", queue_depth=",
                                           queue_depth, ", nr_rings=", nr_rings,
                                           ", read_poll_us=", read_poll_us, ")"));
  }
  auto io = std::make_unique<UringSwapIo>(fd, nr_rings, read_poll_us);
  EMU_RETURN_IF_ERROR(io->Init(queue_depth));
  return std::unique_ptr<SwapIo>(std::move(io));
}

// ---- FaultInjectingSwapIo ----

FaultInjectingSwapIo::FaultInjectingSwapIo(std::unique_ptr<SwapIo> inner)
    : inner_(std::move(inner)) {
  EMU_BUG_ON(inner_ == nullptr);
}

void FaultInjectingSwapIo::AddRule(const SwapFaultRule& r) {
  SpinLockHolder l(&lock_);
  // Expired rules make room.
  int kept = 0;
  for (int i = 0; i < nr_rules_; i++) {
    if (rules_[i].times != 0) rules_[kept++] = rules_[i];
  }
  nr_rules_ = kept;
  EMU_BUG_ON(nr_rules_ == kMaxRules);
  rules_[nr_rules_++] = r;
}

void FaultInjectingSwapIo::ClearRules() {
  SpinLockHolder l(&lock_);
  nr_rules_ = 0;
}

bool FaultInjectingSwapIo::Match(SwapFaultRule::Op kind, const SwapIoOp& op, int* error) {
  if (op.nr_pages == 0) return false;
  const uint64_t begin = op.slot, end = op.slot + op.nr_pages;
  SpinLockHolder l(&lock_);
  for (int i = 0; i < nr_rules_; i++) {
    SwapFaultRule& r = rules_[i];
    if (r.times == 0 || r.op != kind) continue;
    if (begin >= r.slot_end || r.slot_begin >= end) continue;
    if (r.times > 0) r.times--;
    *error = r.error;
    return true;
  }
  return false;
}

void FaultInjectingSwapIo::Forward(SwapFaultRule::Op kind, SwapIoOp* ops, int n) {
  if (kind == SwapFaultRule::kRead) {
    inner_->Read(ops, n);
  } else {
    inner_->Write(ops, n);
  }
}

void FaultInjectingSwapIo::Do(SwapFaultRule::Op kind, SwapIoOp* ops, int n) {
  int i = 0;
  while (i < n) {
    // [i, j): a run of ops no rule matches; ops[j] (if j < n) is matched.
    int j = i;
    int error = 0;
    while (j < n && !Match(kind, ops[j], &error)) j++;
    if (j > i) Forward(kind, ops + i, j - i);
    if (j == n) break;
    SwapIoOp& op = ops[j];
    nr_injected_.fetch_add(1, std::memory_order_relaxed);
    if (error != 0) {
      op.result = -static_cast<int64_t>(std::abs(error));
    } else {
      SwapIoOp half = op;
      half.nr_pages = op.nr_pages / 2;
      half.result = 0;
      if (half.nr_pages > 0) Forward(kind, &half, 1);
      op.result = half.result;
    }
    i = j + 1;
  }
}

void PsyncSwapIo::Do(bool write, SwapIoOp* ops, int n) {
  for (int i = 0; i < n; i++) {
    SwapIoOp& op = ops[i];
    const int64_t want = static_cast<int64_t>(op.nr_pages) * static_cast<int64_t>(kPageSize);
    int64_t done = 0;
    while (done < want) {
      char* buf = static_cast<char*>(op.buf) + done;
      const off_t off = static_cast<off_t>(op.slot * kPageSize + static_cast<uint64_t>(done));
      ssize_t r = write ? pwrite(fd_, buf, static_cast<size_t>(want - done), off)
                        : pread(fd_, buf, static_cast<size_t>(want - done), off);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        if (done == 0) done = -errno;
        break;
      }
      if (r == 0) break;
      done += r;
    }
    op.result = done;
  }
}

}  // namespace emu
