#include "emu/flusher.h"

#include <linux/futex.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "emu/log.h"
#include "emu/machine.h"
#include "emu/pool.h"
#include "emu/shmem.h"
#include "emu/status.h"
#include "emu/sync.h"
#include "emu/sys.h"

namespace emu {

namespace {

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
}

void FutexWaitTimeout(std::atomic<uint32_t>* word, uint32_t expected, int64_t ns) {
  timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, &ts,
          nullptr, 0);
}

// The pages the ratios are shares of: the memory limit, else the machine's
// frames, at most the host's memory (Linux: global_dirtyable_memory()).
uint64_t DirtyablePages(const MachineOptions& o) {
  if (o.mem_limit != 0) return o.mem_limit >> kPageShift;
  uint64_t frames = o.max_frames ? o.max_frames : (o.arena_bytes >> kPageShift);
  const long phys = sysconf(_SC_PHYS_PAGES);
  if (phys > 0) frames = std::min<uint64_t>(frames, static_cast<uint64_t>(phys));
  return frames;
}

uint64_t Thresh(uint64_t bytes, int ratio, uint64_t base) {
  const uint64_t pages = bytes != 0 ? bytes >> kPageShift : base * static_cast<uint64_t>(ratio) / 100;
  return std::max<uint64_t>(pages, 16);
}

// At most this many pages per object and turn, so that one large object
// does not hold the others back (Linux: MAX_WRITEBACK_PAGES, 1024).
constexpr uint64_t kChunk = 1024;

// Dirty tracking "async": the longest the flusher goes without a harvest.
constexpr int64_t kHarvestMs = 1000;

}  // namespace

Flusher::Flusher(Machine* machine) : machine_(machine) {
  const MachineOptions& o = machine->options();
  const uint64_t base = DirtyablePages(o);
  dirty_thresh_ = Thresh(o.dirty_bytes, o.dirty_ratio, base);
  background_thresh_ = Thresh(o.dirty_background_bytes, o.dirty_background_ratio, base);
  // Linux (domain_dirty_limits): a background threshold at or above the
  // dirty one is half of it.
  if (background_thresh_ >= dirty_thresh_) background_thresh_ = dirty_thresh_ / 2;
}

Flusher::~Flusher() { Stop(); }

void Flusher::Stop() {
  stop_.store(true);
  wake_.fetch_add(1);
  FutexWakeAll(&wake_);
  if (started_.exchange(false)) pthread_join(thread_, nullptr);
}

absl::Status Flusher::Start() {
  bool expected = false;
  if (!started_.compare_exchange_strong(expected, true)) return absl::OkStatus();
  if (int rc = StartThread(&thread_, [this] { Loop(); }); rc != 0) {
    started_.store(false);
    return ErrnoError(rc, "writeback: start the flusher");
  }
  Log(Component::kEmu).debug("flusher: background at {} pages, throttle at {} pages",
                             background_thresh_, dirty_thresh_);
  return absl::OkStatus();
}

void Flusher::Kick() {
  wake_.fetch_add(1, std::memory_order_release);
  FutexWakeAll(&wake_);
}

void Flusher::Cleaned() {
  cleaned_.fetch_add(1, std::memory_order_release);
  if (throttled_.load(std::memory_order_acquire) > 0) FutexWakeAll(&cleaned_);
}

void Flusher::BalanceDirty() {
  // Linux: balance_dirty_pages(). Between the thresholds the flusher is
  // woken (once: it writes until under the background threshold); above
  // the dirty one the writer waits for it.
  const uint64_t dirty = nr_dirty();
  if (dirty <= background_thresh_) return;
  if (!busy_.load(std::memory_order_relaxed)) Kick();
  if (dirty <= dirty_thresh_) return;
  VmStat& vmstat = machine_->vmstat();
  vmstat.Add(VmEvent::k_dirty_throttle);
  const uint64_t start = NowNs();
  throttled_.fetch_add(1, std::memory_order_acq_rel);
  for (uint64_t now = start; now - start < static_cast<uint64_t>(kMaxPauseNs); now = NowNs()) {
    const uint32_t seq = cleaned_.load(std::memory_order_acquire);
    if (nr_dirty() <= dirty_thresh_) break;
    if (!busy_.load(std::memory_order_relaxed)) Kick();
    FutexWaitTimeout(&cleaned_, seq, 10 * 1000 * 1000);
  }
  throttled_.fetch_sub(1, std::memory_order_acq_rel);
  vmstat.Add(VmEvent::k_dirty_throttle_us, (NowNs() - start) / 1000);
}

uint64_t Flusher::Pass(bool periodic) {
  uint64_t written = 0;
  std::vector<ShmemObject*> files;
  machine_->ForEachFile([&](ShmemObject* f) { files.push_back(f); });
  // Background writeback: the object dirtied longest ago first, a chunk at
  // a time, until the machine is under the background threshold.
  while (!stop_.load(std::memory_order_relaxed) && nr_dirty() > background_thresh_) {
    ShmemObject* oldest = nullptr;
    for (ShmemObject* f : files) {
      if (f->nr_dirty() > 0 && (oldest == nullptr || f->dirtied_when() < oldest->dirtied_when())) {
        oldest = f;
      }
    }
    if (oldest == nullptr) break;
    // Down to the threshold, not below: the rest waits for its expiry.
    const uint64_t over = nr_dirty() - std::min(nr_dirty(), background_thresh_);
    const uint64_t n = oldest->WritebackCyclic(std::clamp<uint64_t>(over, 1, kChunk));
    machine_->vmstat().Add(VmEvent::k_pgwriteback_background, n);
    written += n;
    if (n == 0) break;  // nothing could be written (errors): the next turn tries again
  }
  if (!periodic) return written;
  // Periodic writeback: what has been dirty for longer than dirty_expire_ms.
  const uint64_t expire = uint64_t(machine_->options().dirty_expire_ms) * 1000000;
  const uint64_t now = NowNs();
  for (ShmemObject* f : files) {
    if (stop_.load(std::memory_order_relaxed)) break;
    if (f->nr_dirty() == 0 || now - f->dirtied_when() < expire) continue;
    const uint64_t n = f->WritebackCyclic(UINT64_MAX);
    machine_->vmstat().Add(VmEvent::k_pgwriteback_periodic, n);
    written += n;
  }
  return written;
}

void Flusher::Loop() {
  sys::t_emulator_thread = true;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  const int period_ms = machine_->options().dirty_writeback_ms;
  // Dirty tracking "async": writes are dirty pages only once harvested, so
  // the flusher harvests every file at each wake, at least every
  // kHarvestMs, and the thresholds act on what it found.
  const bool harvest = machine_->host().tracks_writes();
  int64_t wait_ms = period_ms > 0 ? period_ms : 1000;
  if (harvest) wait_ms = std::min<int64_t>(wait_ms, kHarvestMs);
  uint64_t last_periodic = NowNs();
  uint32_t seen = wake_.load();
  while (!stop_.load()) {
    FutexWaitTimeout(&wake_, seen, wait_ms * 1000000);
    seen = wake_.load();
    if (stop_.load()) break;
    const uint64_t now = NowNs();
    const bool periodic = period_ms > 0 && now - last_periodic >= uint64_t(period_ms) * 1000000;
    if (periodic) last_periodic = now;
    if (!harvest && !periodic && nr_dirty() <= background_thresh_) continue;
    busy_.store(true, std::memory_order_relaxed);
    {
      absl::MutexLock l(&pass_mu_);
      if (harvest) {
        std::vector<ShmemObject*> files;  // as in Pass: no machine lock while harvesting
        machine_->ForEachFile([&](ShmemObject* f) { files.push_back(f); });
        for (ShmemObject* f : files) f->Harvest(0, f->nr_pages());
      }
      if (periodic || nr_dirty() > background_thresh_) Pass(periodic);
    }
    busy_.store(false, std::memory_order_relaxed);
    seen = wake_.load();
  }
}

}  // namespace emu
