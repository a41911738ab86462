// Fault tracing: one fixed-size record per fault the emulator decides (time,
// thread, address, access, how it was resolved, latency), collected in
// per-thread buffers and written to a file in blocks. `emu trace summary`
// reads the file back. Recording is async-signal-safe (the SIGBUS/SIGSEGV
// fault path records from signal context): buffers come from mmap(2) and
// full ones go out with one write(2).
#ifndef EMU_TRACE_H_
#define EMU_TRACE_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "emu/types.h"

namespace emu {

// How a fault was resolved; the fault path notes it in NoteResolution().
enum class FaultResolution : uint8_t {
  kUnknown = 0,
  kZeroPage,   // read: the shared zero page mapped
  kNewPage,    // a fresh zeroed page
  kCowZero,    // write to a zero-page PTE: copy on write
  kReuse,      // write to a write-protected page that stays (no copy)
  kSwapIn,     // read back from swap (major)
  kSpurious,   // nothing to do: already resolved
  kRetry,      // state changed under the fault: the access is retried
  kSigsegv,    // no VMA or a forbidden access
  kSigbus,     // out of memory, a failed swap read, a host refusal
  kCow,        // write to a shared page: copy on write
  kCount,
};
std::string_view FaultResolutionName(FaultResolution r);

struct TraceRecord {
  uint64_t time_ns;     // CLOCK_MONOTONIC at the start of the fault
  uint64_t addr;        // faulting address
  uint32_t tid;         // faulting thread
  uint32_t latency_ns;  // time the emulator spent (saturates at ~4 s)
  uint8_t write;        // 1 for a write access
  uint8_t resolution;   // FaultResolution
  uint16_t reserved;
  uint32_t reserved2;
};
static_assert(sizeof(TraceRecord) == 32);

inline constexpr char kTraceMagic[16] = "EMU-FAULTTRACE1";

// The fault path's note of how the current fault is being resolved, read by
// the fault source right after HandleMmFault on the same thread.
extern thread_local FaultResolution t_fault_resolution __attribute__((tls_model("initial-exec")));
inline void NoteResolution(FaultResolution r) { t_fault_resolution = r; }

namespace trace {

// Opens (truncates) `path` and starts recording. EINVAL if already started.
absl::Status Start(const std::string& path);
inline std::atomic<bool> g_enabled{false};
inline bool Enabled() { return g_enabled.load(std::memory_order_relaxed); }
// Records one fault. async-signal-safe.
void Record(VirtAddr addr, uint32_t tid, bool write, unsigned fault_ret, uint64_t start_ns,
            uint64_t latency_ns);
// Writes every thread's buffered records (at exit).
void Flush();
// In a forked child of a process that records, with no other thread
// running: the records buffered so far are the parent's (it writes them),
// so they are dropped here, and the child records into its own `path`.
// Recording stops if `path` cannot be opened.
absl::Status RestartAfterFork(const std::string& path);

// Reads a trace file back.
absl::StatusOr<std::vector<TraceRecord>> Read(const std::string& path);
// The text of `emu trace summary`: counts and latency percentiles per kind
// of resolution, per access, the hottest address ranges, threads, duration.
std::string Summary(const std::vector<TraceRecord>& records, int top_ranges = 10);

}  // namespace trace
}  // namespace emu

#endif  // EMU_TRACE_H_
