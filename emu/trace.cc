#include "emu/trace.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "emu/fault_handler.h"
#include "emu/status.h"
#include "emu/sync.h"
#include "emu/sys.h"

namespace emu {

thread_local FaultResolution t_fault_resolution __attribute__((tls_model("initial-exec"))) =
    FaultResolution::kUnknown;

std::string_view FaultResolutionName(FaultResolution r) {
  switch (r) {
    case FaultResolution::kZeroPage: return "zero-page";
    case FaultResolution::kNewPage: return "new-page";
    case FaultResolution::kCowZero: return "cow-zero";
    case FaultResolution::kReuse: return "reuse";
    case FaultResolution::kSwapIn: return "swap-in";
    case FaultResolution::kSpurious: return "spurious";
    case FaultResolution::kRetry: return "retry";
    case FaultResolution::kSigsegv: return "sigsegv";
    case FaultResolution::kSigbus: return "sigbus";
    case FaultResolution::kCow: return "cow";
    default: return "unknown";
  }
}

namespace trace {
namespace {

constexpr int kRecordsPerBuffer = 4096;  // 128 KiB per thread

struct Buffer {
  Buffer* next;  // all buffers ever made, for the final flush
  std::atomic<int> n;
  TraceRecord records[kRecordsPerBuffer];
};

int g_fd = -1;
std::atomic<Buffer*> g_buffers{nullptr};
thread_local Buffer* t_buffer __attribute__((tls_model("initial-exec"))) = nullptr;

void WriteOut(Buffer* b) {
  int n = b->n.load(std::memory_order_acquire);
  const char* p = reinterpret_cast<const char*>(b->records);
  size_t left = static_cast<size_t>(n) * sizeof(TraceRecord);
  while (left > 0) {
    ssize_t w = write(g_fd, p, left);
    if (w <= 0) break;
    p += w;
    left -= static_cast<size_t>(w);
  }
  b->n.store(0, std::memory_order_release);
}

Buffer* ThreadBuffer() {
  if (t_buffer != nullptr) return t_buffer;
  void* m = sys::Mmap(nullptr, sizeof(Buffer), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
  if (m == MAP_FAILED) return nullptr;
  auto* b = static_cast<Buffer*>(m);
  b->n.store(0, std::memory_order_relaxed);
  Buffer* head = g_buffers.load(std::memory_order_relaxed);
  do {
    b->next = head;
  } while (!g_buffers.compare_exchange_weak(head, b, std::memory_order_release));
  t_buffer = b;
  return b;
}

FaultResolution FromRet(unsigned ret) {
  if (ret & (kFaultSigsegv | kFaultAccErr)) return FaultResolution::kSigsegv;
  if (ret & (kFaultSigbus | kFaultOom | kFaultHostLimit)) return FaultResolution::kSigbus;
  if (ret & kFaultSpurious) return FaultResolution::kSpurious;
  if (ret & kFaultRetry) return FaultResolution::kRetry;
  if (ret & kFaultMajor) return FaultResolution::kSwapIn;
  return FaultResolution::kUnknown;
}

}  // namespace

absl::Status Start(const std::string& path) {
  if (g_fd >= 0) return ErrnoError(EINVAL, "trace: already started");
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("trace: open ", path));
  if (write(fd, kTraceMagic, sizeof(kTraceMagic)) != static_cast<ssize_t>(sizeof(kTraceMagic))) {
    close(fd);
    return ErrnoError(EIO, absl::StrCat("trace: write ", path));
  }
  g_fd = fd;
  g_enabled.store(true, std::memory_order_release);
  return absl::OkStatus();
}

void Record(VirtAddr addr, uint32_t tid, bool write, unsigned fault_ret, uint64_t start_ns,
            uint64_t latency_ns) {
  FaultResolution r = FromRet(fault_ret);
  if (r == FaultResolution::kUnknown) r = t_fault_resolution;
  t_fault_resolution = FaultResolution::kUnknown;
  Buffer* b = ThreadBuffer();
  if (b == nullptr) return;
  int n = b->n.load(std::memory_order_relaxed);
  TraceRecord& rec = b->records[n];
  rec.time_ns = start_ns;
  rec.addr = addr;
  rec.tid = tid;
  rec.latency_ns = latency_ns > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(latency_ns);
  rec.write = write ? 1 : 0;
  rec.resolution = static_cast<uint8_t>(r);
  rec.reserved = 0;
  rec.reserved2 = 0;
  b->n.store(n + 1, std::memory_order_release);
  if (n + 1 == kRecordsPerBuffer) WriteOut(b);
}

void Flush() {
  if (g_fd < 0) return;
  for (Buffer* b = g_buffers.load(std::memory_order_acquire); b != nullptr; b = b->next) {
    if (b->n.load(std::memory_order_acquire) > 0) WriteOut(b);
  }
}

absl::Status RestartAfterFork(const std::string& path) {
  if (g_fd < 0) return absl::OkStatus();
  g_enabled.store(false, std::memory_order_relaxed);
  close(g_fd);  // the child's copy: the parent's descriptor stays open
  g_fd = -1;
  for (Buffer* b = g_buffers.load(std::memory_order_acquire); b != nullptr; b = b->next) {
    b->n.store(0, std::memory_order_relaxed);
  }
  return Start(path);
}

absl::StatusOr<std::vector<TraceRecord>> Read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return ErrnoError(ENOENT, absl::StrCat("cannot open ", path));
  char magic[sizeof(kTraceMagic)];
  if (!f.read(magic, sizeof(magic)) || std::memcmp(magic, kTraceMagic, sizeof(magic)) != 0) {
    return ErrnoError(EINVAL, absl::StrCat(path, " is not an emu fault trace"));
  }
  std::vector<TraceRecord> out;
  TraceRecord r;
  while (f.read(reinterpret_cast<char*>(&r), sizeof(r))) out.push_back(r);
  std::sort(out.begin(), out.end(),
            [](const TraceRecord& a, const TraceRecord& b) { return a.time_ns < b.time_ns; });
  return out;
}

std::string Summary(const std::vector<TraceRecord>& records, int top_ranges) {
  std::string out;
  if (records.empty()) return "no faults recorded\n";
  uint64_t t0 = records.front().time_ns, t1 = records.back().time_ns;
  std::map<uint32_t, uint64_t> threads;
  for (const auto& r : records) threads[r.tid]++;
  absl::StrAppend(&out, absl::StrFormat("%zu faults over %.3f s from %zu thread(s)\n\n",
                                        records.size(), (t1 - t0) / 1e9, threads.size()));
  // Per resolution and access: count and latency percentiles.
  std::map<std::pair<int, int>, std::vector<uint32_t>> lat;
  for (const auto& r : records) lat[{r.resolution, r.write}].push_back(r.latency_ns);
  absl::StrAppend(&out, absl::StrFormat("%-10s %-6s %10s %9s %9s %9s %9s %9s\n", "resolved",
                                        "access", "faults", "p50 us", "p90 us", "p99 us",
                                        "max us", "total ms"));
  for (auto& entry : lat) {
    const std::pair<int, int>& key = entry.first;
    std::vector<uint32_t>& v = entry.second;
    std::sort(v.begin(), v.end());
    auto pct = [&](double p) {
      return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))] / 1e3;
    };
    uint64_t total = 0;
    for (uint32_t x : v) total += x;
    absl::StrAppend(&out, absl::StrFormat(
        "%-10s %-6s %10zu %9.1f %9.1f %9.1f %9.1f %9.1f\n",
        std::string(FaultResolutionName(static_cast<FaultResolution>(key.first))),
        key.second ? "write" : "read", v.size(), pct(0.5), pct(0.9), pct(0.99),
        v.back() / 1e3, total / 1e6));
  }
  // Hottest 2 MiB ranges by fault count.
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> ranges;  // start -> (faults, ns)
  for (const auto& r : records) {
    auto& e = ranges[r.addr & ~((uint64_t{2} << 20) - 1)];
    e.first++;
    e.second += r.latency_ns;
  }
  std::vector<std::pair<uint64_t, std::pair<uint64_t, uint64_t>>> hot(ranges.begin(), ranges.end());
  std::sort(hot.begin(), hot.end(),
            [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  absl::StrAppend(&out, "\nhottest 2 MiB ranges:\n");
  for (int i = 0; i < top_ranges && i < static_cast<int>(hot.size()); i++) {
    absl::StrAppend(&out, absl::StrFormat("  %#014x-%#014x %8llu faults %9.1f ms\n", hot[i].first,
                                          hot[i].first + (uint64_t{2} << 20),
                                          static_cast<unsigned long long>(hot[i].second.first),
                                          hot[i].second.second / 1e6));
  }
  return out;
}

}  // namespace trace
}  // namespace emu
