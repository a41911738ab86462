// Flusher: writeback of emulated files' dirty pages in the background, and
// the dirty limits (Linux: mm/page-writeback.c and the bdi flusher threads,
// fs/fs-writeback.c wb_workfn).
//
// Seed 001 made dirty file pages visible (a write fault marks each one,
// ShmemObject::MarkDirty); this bounds how many there may be:
//  - nr_dirty and nr_writeback are counted machine-wide (the objects count
//    their own as well).
//  - Above the background threshold the flusher thread writes the oldest
//    dirtied objects back until the count is below it again
//    (wb_start_background_writeback); every dirty_writeback_ms it also
//    writes the objects dirtied longer than dirty_expire_ms ago
//    (wb_check_old_data_flush).
//  - Above the dirty threshold a writer is throttled: the write fault that
//    dirtied a page, its locks released, waits for the flusher to bring the
//    count under the threshold (balance_dirty_pages), at most kMaxPause per
//    fault, as Linux's MAX_PAUSE.
//
// The thread starts with the first file (Machine::OpenFile); a machine that
// maps no file has none.
#ifndef EMU_FLUSHER_H_
#define EMU_FLUSHER_H_

#include <pthread.h>

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace emu {

class Machine;

class Flusher {
 public:
  // A fault waits at most this long per dirtied page (Linux: MAX_PAUSE, 200 ms).
  static constexpr int64_t kMaxPauseNs = 200 * 1000 * 1000;

  explicit Flusher(Machine* machine);
  ~Flusher();
  Flusher(const Flusher&) = delete;
  Flusher& operator=(const Flusher&) = delete;

  // Starts the thread once. Not async-signal-safe.
  absl::Status Start();
  // Stops the thread (the machine's teardown); BalanceDirty stays callable.
  void Stop();

  // Linux's NR_FILE_DIRTY and NR_WRITEBACK over the machine. async-signal-safe.
  void AccountDirty(int64_t d) { nr_dirty_.fetch_add(static_cast<uint64_t>(d), std::memory_order_relaxed); }
  void AccountWriteback(int64_t d) {
    nr_writeback_.fetch_add(static_cast<uint64_t>(d), std::memory_order_relaxed);
  }
  uint64_t nr_dirty() const { return nr_dirty_.load(std::memory_order_relaxed); }
  uint64_t nr_writeback() const { return nr_writeback_.load(std::memory_order_relaxed); }
  uint64_t background_thresh() const { return background_thresh_; }
  uint64_t dirty_thresh() const { return dirty_thresh_; }

  // Pages were written back (ShmemObject::Writeback): wakes throttled writers.
  void Cleaned();
  // A write fault dirtied a file page; the caller holds no lock
  // (balance_dirty_pages_ratelimited). Kicks the flusher above the
  // background threshold and waits above the dirty one. async-signal-safe
  // (futex waits only).
  void BalanceDirty();
  // Wakes the flusher now.
  void Kick();
  // Held by the flusher over each pass; Machine::CheckInvariants holds it
  // to see the counts at rest.
  absl::Mutex* pass_mu() { return &pass_mu_; }

 private:
  void Loop();
  // One pass: background writeback while over the background threshold,
  // then the expired objects. Returns the pages written.
  uint64_t Pass(bool periodic);

  Machine* const machine_;
  uint64_t background_thresh_ = 0;  // set by the constructor, then read-only
  uint64_t dirty_thresh_ = 0;
  std::atomic<bool> busy_{false};     // the flusher is in a pass
  absl::Mutex pass_mu_;
  std::atomic<uint64_t> nr_dirty_{0};
  std::atomic<uint64_t> nr_writeback_{0};
  std::atomic<uint32_t> wake_{0};      // futex word: bumped to wake the flusher
  std::atomic<uint32_t> cleaned_{0};   // futex word: bumped when pages are written back
  std::atomic<int> throttled_{0};      // writers waiting on cleaned_
  std::atomic<bool> stop_{false};
  std::atomic<bool> started_{false};
  pthread_t thread_{};
};

}  // namespace emu

#endif  // EMU_FLUSHER_H_
