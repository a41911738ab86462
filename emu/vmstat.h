// Event counters of a machine, named after /proc/vmstat where Linux has the
// event. Incremented with relaxed atomics from any context, including signal
// handlers (async-signal-safe).
#ifndef EMU_VMSTAT_H_
#define EMU_VMSTAT_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

namespace emu {

#define EMU_VM_EVENTS(X)                                                              \
  X(pgfault, "faults decided by the emulator (all kinds)")                            \
  X(pgfault_read, "read faults on missing pages")                                     \
  X(pgfault_write, "write faults on missing pages")                                   \
  X(pgfault_wp, "write faults on present, write-protected pages")                     \
  X(pgfault_spurious, "faults already resolved by another thread or a retry")         \
  X(pgfault_sigsegv, "faults forwarded as SIGSEGV (no VMA or bad access)")            \
  X(zero_page_map, "PTEs pointed at the shared zero page")                            \
  X(cow_zero, "copy-on-write from the zero page")                                     \
  X(pgreuse, "write faults that reused the mapped page (no copy)")                    \
  X(fault_around_pages, "neighbouring pages installed by fault-around")               \
  X(pgalloc, "exclusive anonymous pages allocated")                                   \
  X(pgfree, "pages freed")                                                            \
  X(populate_pages, "pages made present by MAP_POPULATE, mlock and FaultInPages")     \
  X(zap_pages, "PTEs cleared by munmap and MADV_DONTNEED")                            \
  X(mremap_moves, "mremap calls that moved a range")                                  \
  X(host_install_calls, "host page-install calls (uffd ioctls or mprotect runs)")     \
  X(host_vma_merges, "blocks made uniform to stay under the host VMA limit")          \
  X(fault_ns_sigbus, "time spent resolving faults in uffd SIGBUS mode (ns)")          \
  X(fault_ns_thread, "time spent resolving faults in uffd handler-thread mode (ns)")  \
  X(fault_ns_sigsegv, "time spent resolving faults in SIGSEGV mode (ns)")            \
  X(pgmajfault, "faults that needed swap I/O")                                        \
  X(pswpin, "pages read from swap (including readahead)")                            \
  X(pswpout, "pages written to swap")                                                 \
  X(swap_ra, "pages read ahead of a swap-in fault")                                   \
  X(pgscan, "pages scanned by reclaim")                                               \
  X(pgsteal, "pages reclaimed")                                                       \
  X(pgsteal_clean, "clean swap-cache pages reclaimed without I/O")                    \
  X(pgactivate, "pages moved to the active list (referenced)")                        \
  X(pgdeactivate, "pages moved to the inactive list")                                 \
  X(pgrotated, "pages put back on the inactive list (busy, or write redirtied them)") \
  X(wp_sample, "pages write-protected to observe the next write (reference sampling)") \
  X(kswapd_wake, "wakeups of the background reclaimer")                               \
  X(allocstall, "allocations that reclaimed in the faulting thread (direct reclaim)")  \
  X(swap_free_on_reuse, "swap slots freed by a write to a swap-cache page (try_to_free_swap)") \
  X(swap_cache_writable, "pages read back from swap mapped writable with their slot's checksum") \
  X(swap_csum_clean, "checksummed swap-cache pages reclaim found unchanged (no I/O)")  \
  X(swap_csum_dirty, "checksummed swap-cache pages reclaim found changed (written)")   \
  X(swap_write_errors, "failed swap writes (slot retired, page kept)")               \
  X(swap_read_errors, "failed swap reads (SIGBUS to the faulting thread)")            \
  X(oom, "faults that found no frame even after reclaim")                             \
  X(fork, "address spaces forked (AddressSpace::Fork)")                               \
  X(fork_shared_pages, "present pages a fork shared between parent and child")        \
  X(cow_page, "copy-on-write copies of a shared page (a write fault)")                \
  X(pin_pages, "pages pinned (PinUserPages)")                                          \
  X(fork_copied_pages, "pages a fork copied for the child instead of sharing (pinned, or over the host VMA budget)") \
  X(pool_unshare_blocks, "2 MiB blocks whose shared frames a write fault copied at once (host VMA budget)") \
  X(pgvolatile_marked, "pages in ranges marked volatile (MADV_VOLATILE; no page is touched)") \
  X(volatile_unmark, "volatile VMAs whose mark a fault cleared")                       \
  X(pgvolatile, "volatile pages discarded instead of swapped (seed 003's PGVOLATILE)") \
  X(pglazyfree, "pages made lazily freeable by MADV_FREE")                            \
  X(pglazyfreed, "lazily freed pages discarded by reclaim")                           \
  X(discard_refault, "discarded pages (volatile or lazily freed) a fault brought back, fault-around included") \
  X(swapout_avoided, "dirty pages discarded rather than written to swap")            \
  X(swapin_avoided, "swapped-out volatile pages discarded at their fault, not read") \
  X(shmem_alloc, "pages of shared memory objects (MAP_SHARED|MAP_ANONYMOUS) made") \
  X(file_read, "pages of emulated files read in at their first fault")                \
  X(pgdirty, "clean pages of shared file mappings dirtied by a write fault (seed 001)") \
  X(pgmkclean, "PTEs write-protected by page_mkclean before writeback")               \
  X(pgharvest, "pages found written by a harvest (dirty tracking 'async')")           \
  X(harvest_scans, "PAGEMAP_SCAN harvests of host-tracked writes")                     \
  X(pgwriteback, "dirty file pages written back")                                     \
  X(pgwriteback_background, "of pgwriteback: by the flusher above the background threshold") \
  X(pgwriteback_periodic, "of pgwriteback: by the flusher, dirty longer than dirty_expire_ms") \
  X(pgwriteback_reclaim, "of pgwriteback: by reclaim, before dropping the page (nr_vmscan_write)") \
  X(dirty_throttle, "write faults that waited above the dirty threshold (balance_dirty_pages)") \
  X(dirty_throttle_us, "microseconds write faults waited above the dirty threshold") \
  X(pgsteal_file, "file pages reclaim dropped (clean, or written back first)")        \
  X(file_truncated, "pages a truncate dropped from a file's page cache")

enum class VmEvent : int {
#define EMU_VM_EVENT_ENUM(name, doc) k_##name,
  EMU_VM_EVENTS(EMU_VM_EVENT_ENUM)
#undef EMU_VM_EVENT_ENUM
      kCount
};

inline constexpr int kNrVmEvents = static_cast<int>(VmEvent::kCount);

// Name and one-line description of `e`.
std::string_view VmEventName(VmEvent e);
std::string_view VmEventDoc(VmEvent e);

class VmStat {
 public:
  // async-signal-safe.
  void Add(VmEvent e, uint64_t n = 1) {
    counters_[static_cast<int>(e)].value.fetch_add(n, std::memory_order_relaxed);
  }
  uint64_t Get(VmEvent e) const {
    return counters_[static_cast<int>(e)].value.load(std::memory_order_relaxed);
  }
  std::array<uint64_t, kNrVmEvents> Snapshot() const;
  void Reset();

 private:
  // Each counter on its own cache line: faulting threads on different CPUs
  // bump different counters most of the time.
  struct alignas(64) Counter {
    std::atomic<uint64_t> value{0};
  };
  std::array<Counter, kNrVmEvents> counters_;
};

}  // namespace emu

#endif  // EMU_VMSTAT_H_
