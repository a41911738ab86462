// volatile_bench: volatile ranges (seed 003, kMadvVolatile) and Linux's lazy
// free (MADV_FREE) against MADV_DONTNEED, on the emulator and on the kernel,
// measured in the same run (issue 6, "Volatile ranges and lazy free").
//
// Three parts, each a table (or, with --json, one JSON object per row):
//
//  1. madvise cost by range size (--sizes, default 1 MiB .. 4 GiB). One call
//     on a range whose every page was written just before (untimed), p50 of
//     --reps calls (fewer for big ranges; one untimed warm-up below 1 GiB).
//     Rows: emu kMadvVolatile and emu MADV_DONTNEED on a machine without a
//     memory limit; emu MADV_FREE on a machine WITH a limit above the range
//     (without one MADV_FREE is a no-op; with it each page gets a clean,
//     write-protected PTE), no reclaim happens; the kernel's MADV_FREE and
//     MADV_DONTNEED on a native mapping of the same size. Each emu call gets
//     a fresh mapping: a volatile range written without a fault keeps its
//     mark, so marking the same range again would time a no-op. The methods
//     take turns inside each repetition (the first one rotates).
//     Columns: us per call, ns per page, the peer (the kernel's MADV_FREE for
//     volatile, the kernel's same advice for the others) and emu / peer.
//     Per size: emu DONTNEED / VOLATILE; the target is >= 100x at 1 GiB.
//     Volatile marking touches no page, so its time per call should not grow
//     with the range (it is lower at the smallest sizes only because writing
//     a small range leaves the emulator's own structures in the CPU caches).
//
//  2. Allocator churn without memory pressure. A heap of --chunks chunks of
//     --chunk-kib KiB, every page written, half of the chunks then freed.
//     Each of --iters iterations frees a random live chunk (advises it with
//     the method) and reuses a random free chunk (writes every page of it).
//     Methods: emu volatile, emu MADV_FREE without a limit (a no-op) and with
//     a limit well above the heap (no pressure, but the write-protect of lazy
//     free), emu DONTNEED, emu no advice, and the kernel's MADV_FREE,
//     DONTNEED and no advice. Columns: the timed time (advise + reuse writes
//     only), ns per reused page, faults per reused page (emu: the pgfault
//     delta; kernel: getrusage ru_minflt delta), the peer (the kernel's
//     MADV_FREE for volatile and MADV_FREE, its same advice for the rest) and
//     emu / peer. Target: reuse takes no fault with volatile.
//
//  3. The same churn under a memory limit: an emu machine with mem_limit half
//     the heap (at least 4 MiB) and a swap file of 4x the heap; methods
//     volatile, MADV_FREE, DONTNEED and a "no advice" baseline (the freed
//     chunk is left alone). Columns: time, ns per reused page, faults per
//     reused page, pswpout, pswpin, swap pages written + read relative to
//     no advice and to DONTNEED (DONTNEED avoids swap I/O too: it frees
//     everything), discards (pgvolatile + pglazyfreed), discard_refault,
//     swapout_avoided and swapin_avoided. No kernel peer here (that needs a
//     cgroup; swap_bench has one).
//
// Data checks in parts 2 and 3: every page of a chunk holds a tag of (page,
// the chunk's generation), written at each reuse. Before a chunk is freed
// and before it is reused each of its pages is looked at: it must hold its
// last tag or zeros (a freed chunk: its tag only with no advice, zeros only
// with DONTNEED). The loop looks without faulting: an emu page is read only
// when its PTE is present (a none or discarded PTE reads zeros, a swap PTE
// is left unchecked), a kernel page only when mincore() says it is resident;
// so the checks add no fault and no swap I/O of their own (barring a page
// reclaimed between the look and the read). After the loop and its
// counters every page is read for real. "mismatch" counts pages holding
// anything else: it must be 0. "live-zero" counts pages of live chunks
// (written since their last free) that read zeros: with volatile that is a
// documented property of seed 003 (a write after the advice that took no
// fault does not clear the mark, so reclaim may still discard it), printed
// and not a failure; with any other method it is one.
//
// Exit status: 0; 1 when an emulator call fails, a counter contradicts what
// a call must have done (named on stderr), or data is wrong; 2 for a bad
// option. Missed targets are printed (MISSED) and do not change the status.
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/harness.h"
#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/page_table.h"
#include "emu/vmstat.h"
#include "fault/host_backends.h"
#include "fault/machine_factory.h"

namespace emu::bench {
namespace {

constexpr char kProg[] = "volatile_bench";
constexpr uint64_t kArenaBytes = uint64_t{16} << 30;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr int64_t kMaxSizeMiB = 8192;  // a window of it and a granule fit the arena
constexpr int kRW = PROT_READ | PROT_WRITE;
constexpr int kNoAdvice = -1;
constexpr int64_t kTargetSizeMiB = 1024;  // where DONTNEED / VOLATILE is judged
constexpr double kTargetRatio = 100;
// The swap of the machines whose limit is well above what they map (part 1's
// MADV_FREE machine, part 2's MADV_FREE (limit)): never used.
constexpr uint64_t kSmallSwapBytes = 64 * kMiB;

struct Options {
  FaultMode mode = FaultMode::kUffdSigbus;
  std::vector<int64_t> sizes_mib = {1, 16, 256, 1024, 4096};
  int64_t reps = 0;  // 0: by size (RepsFor)
  int64_t chunks = 256;
  int64_t chunk_kib = 64;
  int64_t iters = 20000;
  int64_t seed = 1;
  bool part[3] = {true, true, true};
  bool json = false;
  bool quick = false;
};

struct Context {
  Options o;
  // MachineOptions::ToString() of the machine without a limit.
  std::string config;
  bool ok = true;  // false after a failure
  // Emu DONTNEED / VOLATILE at kTargetSizeMiB (NaN: not run).
  double target_ratio = std::nan("");
  // Part 1: emu kMadvVolatile p50 ns per call, by size (MiB), as run.
  std::vector<std::pair<int64_t, double>> volatile_ns;
};

// What a step ended with: ok, or a failure (the message says what was called
// and what happened).
struct Result {
  bool ok = true;
  std::string why;
  static Result Ok() { return {}; }
  static Result Fail(std::string w) { return {false, std::move(w)}; }
};

std::string Msg(const absl::Status& s) { return s.ToString(); }
unsigned long long U(uint64_t v) { return static_cast<unsigned long long>(v); }
std::string ModeName(FaultMode m) { return std::string(FaultModeName(m)); }

// a / b with three decimals, or "n/a".
std::string Ratio(double a, double b) {
  if (!(b > 0) || !std::isfinite(a)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f", a / b);
  return buf;
}

void Failed(Context& ctx, const std::string& where, const std::string& why) {
  std::fprintf(stderr, "%s: %s: %s\n", kProg, where.c_str(), why.c_str());
  ctx.ok = false;
}

const char* BuildKind() {
#if defined(NDEBUG) && defined(__OPTIMIZE__)
  return "optimized, NDEBUG";
#elif defined(__OPTIMIZE__)
  return "optimized, assertions on";
#else
  return "unoptimized (Debug)";
#endif
}

// MemAvailable from /proc/meminfo, in bytes (0 when unknown).
uint64_t MemAvailable() {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return 0;
  char line[256];
  unsigned long long kib = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "MemAvailable: %llu kB", &kib) == 1) break;
  }
  std::fclose(f);
  return static_cast<uint64_t>(kib) * 1024;
}

// ---- Pages and their tags ----

// The tag of page `i` at generation `gen`: never zero.
uint64_t Tag(size_t i, uint32_t gen) {
  return ((i * 0x9E3779B97F4A7C15ull) ^ (uint64_t{gen} << 40)) | 1;
}

constexpr size_t kLastWord = kHostPageSize / 8 - 1;

// Writes the tags of pages [first, first + n) of `base`: the first word and
// (inverted) the last word of each, so a page torn in two shows.
__attribute__((noinline)) void FillPages(char* base, size_t first, size_t n, uint32_t gen) {
  for (size_t i = first; i < first + n; i++) {
    auto* w = reinterpret_cast<volatile uint64_t*>(base + i * kHostPageSize);
    w[0] = Tag(i, gen);
    w[kLastWord] = ~Tag(i, gen);
  }
}

enum class Seen { kIntact, kZero, kOther };

Seen Look(const char* base, size_t i, uint32_t gen, uint64_t* w0, uint64_t* w1) {
  auto* w = reinterpret_cast<const volatile uint64_t*>(base + i * kHostPageSize);
  *w0 = w[0];
  *w1 = w[kLastWord];
  if (*w0 == Tag(i, gen) && *w1 == ~Tag(i, gen)) return Seen::kIntact;
  if (*w0 == 0 && *w1 == 0) return Seen::kZero;
  return Seen::kOther;
}

// Pages of [0, n) holding something other than their tag (zeros allowed
// when `zero_ok`).
size_t CountBad(const char* base, size_t n, uint32_t gen, bool zero_ok) {
  size_t bad = 0;
  uint64_t a, b;
  for (size_t i = 0; i < n; i++) {
    Seen s = Look(base, i, gen, &a, &b);
    bad += s == Seen::kOther || (s == Seen::kZero && !zero_ok);
  }
  return bad;
}

// ---- Emulated machines ----

using Counters = std::array<uint64_t, kNrVmEvents>;

uint64_t D(const Counters& a, const Counters& b, VmEvent e) {
  return b[static_cast<int>(e)] - a[static_cast<int>(e)];
}

// A machine with one address space; the address space goes first.
struct Emu {
  std::unique_ptr<Machine> machine;
  std::unique_ptr<AddressSpace> as;
  Emu() = default;
  Emu(const Emu&) = delete;
  Emu& operator=(const Emu&) = delete;
  ~Emu() {
    as.reset();
    machine.reset();
  }
};

MachineOptions EmuOptions(FaultMode mode, uint64_t mem_limit, uint64_t swap_bytes) {
  MachineOptions mo;
  mo.fault_mode = mode;
  mo.arena_bytes = kArenaBytes;
  mo.mem_limit = mem_limit;  // 0: none
  mo.swap_bytes = swap_bytes;
  return mo;
}

Result MakeEmu(const MachineOptions& mo, uint64_t window_bytes, Emu* e) {
  auto m = CreateMachine(mo);
  if (!m.ok()) return Result::Fail("CreateMachine(" + mo.ToString() + "): " + Msg(m.status()));
  e->machine = std::move(*m);
  auto as = e->machine->CreateAddressSpace(window_bytes + Machine::kGranule);
  if (!as.ok()) return Result::Fail("CreateAddressSpace: " + Msg(as.status()));
  e->as = std::move(*as);
  return Result::Ok();
}

Result EmuMmap(AddressSpace& as, size_t bytes, char** out) {
  auto addr = as.Mmap(0, bytes, kRW, MAP_PRIVATE | MAP_ANONYMOUS);
  if (!addr.ok()) return Result::Fail("Mmap(" + std::to_string(bytes) + "): " + Msg(addr.status()));
  *out = reinterpret_cast<char*>(*addr);
  return Result::Ok();
}

VirtAddr Addr(const void* p) { return reinterpret_cast<VirtAddr>(p); }

// ---- Part 1: one madvise call by range size ----

enum MadvMethod {
  kMEmuVolatile,
  kMEmuDontneed,
  kMEmuFree,
  kMKernelFree,
  kMKernelDontneed,
  kNrMadvMethods
};

struct MadvSpec {
  const char* name;  // JSON
  const char* label;
  int advice;
  bool emu;
  int peer;  // a MadvMethod, or -1
};

constexpr MadvSpec kMadvSpecs[kNrMadvMethods] = {
    {"emu_volatile", "emu MADV_VOLATILE", kMadvVolatile, true, kMKernelFree},
    {"emu_dontneed", "emu MADV_DONTNEED", MADV_DONTNEED, true, kMKernelDontneed},
    {"emu_free", "emu MADV_FREE (limit)", MADV_FREE, true, kMKernelFree},
    {"kernel_free", "kernel MADV_FREE", MADV_FREE, false, -1},
    {"kernel_dontneed", "kernel MADV_DONTNEED", MADV_DONTNEED, false, -1},
};

// What each emu call must have done, from the machine's counters.
Result CheckEmuCall(const MadvSpec& spec, AddressSpace& as, size_t pages, const Counters& c0,
                    const Counters& c1) {
  auto bad = [&](const char* what, uint64_t got, uint64_t want) {
    return Result::Fail(std::string("Madvise(") + spec.label + ") of " + std::to_string(pages) +
                        " written pages: " + what + " " + std::to_string(got) + ", expected " +
                        std::to_string(want));
  };
  if (D(c0, c1, VmEvent::k_pgfault) != 0) {
    return bad("pgfault delta", D(c0, c1, VmEvent::k_pgfault), 0);
  }
  switch (spec.advice) {
    case kMadvVolatile:
      if (D(c0, c1, VmEvent::k_pgvolatile_marked) != pages) {
        return bad("pgvolatile_marked delta", D(c0, c1, VmEvent::k_pgvolatile_marked), pages);
      }
      if (as.rss_anon() != pages) return bad("rss_anon", as.rss_anon(), pages);
      break;
    case MADV_DONTNEED:
      if (D(c0, c1, VmEvent::k_zap_pages) != pages) {
        return bad("zap_pages delta", D(c0, c1, VmEvent::k_zap_pages), pages);
      }
      if (as.rss_anon() != 0) return bad("rss_anon", as.rss_anon(), 0);
      break;
    case MADV_FREE:
      if (D(c0, c1, VmEvent::k_pglazyfree) != pages) {
        return bad("pglazyfree delta", D(c0, c1, VmEvent::k_pglazyfree), pages);
      }
      break;
  }
  // The range was written right before: nothing may have been reclaimed.
  const uint64_t reclaimed = D(c0, c1, VmEvent::k_pgsteal);
  if (reclaimed != 0) return bad("pgsteal delta (reclaim ran: limit too small?)", reclaimed, 0);
  return Result::Ok();
}

// One timed call of `spec` on a fresh emulated mapping of `pages`, every
// page written first; checks the counters and (volatile, MADV_FREE) that
// every page still holds its data and reading it takes no fault.
Result EmuMadvCall(Emu& e, const MadvSpec& spec, size_t pages, uint32_t gen, double* ns) {
  const size_t bytes = pages * kHostPageSize;
  AddressSpace& as = *e.as;
  char* p = nullptr;
  Result r = EmuMmap(as, bytes, &p);
  if (!r.ok) return r;
  FillPages(p, 0, pages, gen);
  const Counters c0 = e.machine->vmstat().Snapshot();
  const uint64_t t0 = NowNs();
  absl::Status s = as.Madvise(Addr(p), bytes, spec.advice);
  const uint64_t t1 = NowNs();
  const Counters c1 = e.machine->vmstat().Snapshot();
  *ns = static_cast<double>(t1 - t0);
  if (!s.ok()) {
    r = Result::Fail(std::string("Madvise(") + spec.label + ", " + std::to_string(bytes) +
                     " bytes): " + Msg(s));
  } else {
    r = CheckEmuCall(spec, as, pages, c0, c1);
  }
  if (r.ok && spec.advice != MADV_DONTNEED) {
    const size_t bad = CountBad(p, pages, gen, /*zero_ok=*/false);
    const uint64_t faults = D(c1, e.machine->vmstat().Snapshot(), VmEvent::k_pgfault);
    if (bad != 0 || faults != 0) {
      r = Result::Fail(std::string("after Madvise(") + spec.label + "), without reclaim, " +
                       std::to_string(bad) + " of " + std::to_string(pages) +
                       " pages lost their data and reading them took " + std::to_string(faults) +
                       " faults (want 0 and 0)");
    }
  }
  absl::Status u = as.Munmap(Addr(p), bytes);
  if (r.ok && !u.ok()) r = Result::Fail("Munmap: " + Msg(u));
  return r;
}

Result KernelMadvCall(const MadvSpec& spec, size_t pages, uint32_t gen, double* ns) {
  const size_t bytes = pages * kHostPageSize;
  char* p = MapNative(bytes);
  if (p == nullptr) return Result::Fail(std::string("native mmap: ") + std::strerror(errno));
  FillPages(p, 0, pages, gen);
  const uint64_t t0 = NowNs();
  const int rc = madvise(p, bytes, spec.advice);
  const uint64_t t1 = NowNs();
  const int err = errno;
  *ns = static_cast<double>(t1 - t0);
  Result r;
  if (rc != 0) {
    r = Result::Fail(std::string("kernel madvise(") + spec.label + "): " + std::strerror(err));
  } else if (spec.advice == MADV_FREE) {
    // The host may reclaim lazily freed pages (zeros) but nothing else.
    const size_t bad = CountBad(p, pages, gen, /*zero_ok=*/true);
    if (bad != 0) r = Result::Fail("kernel MADV_FREE: " + std::to_string(bad) + " pages changed");
  }
  UnmapNative(p, bytes);
  return r;
}

int64_t RepsFor(const Options& o, int64_t size_mib) {
  if (o.reps > 0) return o.reps;
  if (o.quick) return 3;
  if (size_mib <= 16) return 9;
  if (size_mib < 4096) return 5;
  return 3;
}

void PrintMadvHeader() {
  std::printf(
      "\npart 1: one madvise call on a range whose every page was just written (p50; a fresh "
      "emu mapping per call)\nemu MADV_FREE runs on a machine with a limit 1.25x the range + 64 "
      "MiB (no reclaim); ratio = emu / peer, lower is better\n\n");
  std::printf("%-9s %-24s %6s %12s %10s  %-22s %9s\n", "size", "method", "reps", "us/call",
              "ns/page", "peer", "ratio");
  std::fflush(stdout);
}

void ReportMadv(const Context& ctx, int64_t size_mib, int64_t reps, const Summary* s) {
  const double pages = static_cast<double>(size_mib) * (kMiB / kHostPageSize);
  for (int i = 0; i < kNrMadvMethods; i++) {
    const MadvSpec& spec = kMadvSpecs[i];
    const double ratio = spec.peer >= 0 ? s[i].p50 / s[spec.peer].p50 : std::nan("");
    if (ctx.o.json) {
      JsonLine j;
      j.Str("name", std::string("volatile_madvise_") + spec.name).Num("value", s[i].p50);
      j.Str("unit", "ns/call").Num("min", s[i].min).Num("max", s[i].max);
      j.Num("ns_per_page", s[i].p50 / pages).Int("size_mib", size_mib).Int("reps", reps);
      if (spec.peer >= 0) {
        j.Str("peer", kMadvSpecs[spec.peer].name).Num("peer_value", s[spec.peer].p50);
        j.Num("ratio", ratio);
      }
      j.Str("mode", ModeName(ctx.o.mode)).Str("git_sha", GitSha());
      j.Str("compiler", CompilerVersion()).Int("nproc", Nproc()).Str("config", ctx.config);
      j.Print();
      continue;
    }
    char size[32];
    std::snprintf(size, sizeof(size), "%lld MiB", static_cast<long long>(size_mib));
    std::printf("%-9s %-24s %6lld %12.2f %10.3f  %-22s %9s\n", i == 0 ? size : "", spec.label,
                static_cast<long long>(reps), s[i].p50 * 1e-3, s[i].p50 / pages,
                spec.peer >= 0 ? kMadvSpecs[spec.peer].label : "",
                spec.peer >= 0 ? Ratio(s[i].p50, s[spec.peer].p50).c_str() : "");
  }
  const double speedup = s[kMEmuDontneed].p50 / s[kMEmuVolatile].p50;
  if (ctx.o.json) {
    JsonLine j;
    j.Str("name", "volatile_madvise_dontneed_over_volatile").Num("value", speedup);
    j.Str("unit", "x").Int("size_mib", size_mib).Str("mode", ModeName(ctx.o.mode));
    j.Str("git_sha", GitSha()).Print();
  } else {
    std::printf("%-9s emu DONTNEED / VOLATILE = %.0fx\n", "", speedup);
  }
  std::fflush(stdout);
}

// One size of part 1: both emu machines live through its repetitions, with
// at most one range resident at a time.
bool RunMadvSize(Context& ctx, int64_t size_mib) {
  const size_t pages = static_cast<size_t>(size_mib) * (kMiB / kHostPageSize);
  const uint64_t bytes = static_cast<uint64_t>(size_mib) * kMiB;
  const uint64_t need = bytes + bytes / 4 + (uint64_t{1} << 30);
  const uint64_t avail = MemAvailable();
  if (avail != 0 && avail < need) {
    const std::string why = "MemAvailable " + std::to_string(avail / kMiB) + " MiB < " +
                            std::to_string(need / kMiB) + " MiB needed";
    if (ctx.o.json) {
      JsonLine()
          .Str("name", "volatile_madvise")
          .Int("size_mib", size_mib)
          .Str("skipped", why)
          .Print();
    } else {
      std::printf("%-9s skipped: %s\n", (std::to_string(size_mib) + " MiB").c_str(), why.c_str());
    }
    return true;
  }
  const std::string where = "part 1, " + std::to_string(size_mib) + " MiB";
  Emu plain, limit;
  Result r = MakeEmu(EmuOptions(ctx.o.mode, 0, 0), bytes, &plain);
  if (r.ok) {
    r = MakeEmu(EmuOptions(ctx.o.mode, bytes + bytes / 4 + 64 * kMiB, kSmallSwapBytes), bytes,
                &limit);
  }
  if (!r.ok) {
    Failed(ctx, where, r.why);
    return false;
  }
  const int64_t reps = RepsFor(ctx.o, size_mib);
  const int64_t warm = size_mib < 1024 ? 1 : 0;
  std::vector<double> ns[kNrMadvMethods];
  uint32_t gen = 1;
  for (int64_t rep = -warm; rep < reps; rep++) {
    for (int k = 0; k < kNrMadvMethods; k++) {
      const int m = static_cast<int>((rep + warm + k) % kNrMadvMethods);
      const MadvSpec& spec = kMadvSpecs[m];
      double v = 0;
      r = !spec.emu                  ? KernelMadvCall(spec, pages, gen++, &v)
          : spec.advice == MADV_FREE ? EmuMadvCall(limit, spec, pages, gen++, &v)
                                     : EmuMadvCall(plain, spec, pages, gen++, &v);
      if (!r.ok) {
        Failed(ctx, where, r.why);
        return false;
      }
      if (rep >= 0) ns[m].push_back(v);
    }
  }
  Summary s[kNrMadvMethods];
  for (int i = 0; i < kNrMadvMethods; i++) s[i] = Summarize(ns[i]);
  ReportMadv(ctx, size_mib, reps, s);
  ctx.volatile_ns.emplace_back(size_mib, s[kMEmuVolatile].p50);
  if (size_mib == kTargetSizeMiB) ctx.target_ratio = s[kMEmuDontneed].p50 / s[kMEmuVolatile].p50;
  return true;
}

void RunMadvPart(Context& ctx) {
  if (!ctx.o.json) PrintMadvHeader();
  for (int64_t size : ctx.o.sizes_mib) {
    if (!RunMadvSize(ctx, size)) return;
  }
  if (ctx.o.json) {
    JsonLine j;
    j.Str("name", "volatile_target_dontneed_over_volatile").Int("size_mib", kTargetSizeMiB);
    j.Num("value", ctx.target_ratio).Num("target", kTargetRatio);
    if (!std::isnan(ctx.target_ratio)) j.Bool("met", ctx.target_ratio >= kTargetRatio);
    j.Str("mode", ModeName(ctx.o.mode)).Str("git_sha", GitSha()).Print();
    return;
  }
  if (std::isnan(ctx.target_ratio)) {
    std::printf("target emu DONTNEED / VOLATILE >= %.0fx at 1 GiB: not measured (1 GiB not run)\n",
                kTargetRatio);
  } else {
    std::printf("target emu DONTNEED / VOLATILE >= %.0fx at 1 GiB: %.0fx, %s\n", kTargetRatio,
                ctx.target_ratio, ctx.target_ratio >= kTargetRatio ? "met" : "MISSED");
  }
  if (ctx.volatile_ns.size() >= 2) {
    // Marking touches no page: its time should not follow the range's pages.
    std::string list;
    double lo = ctx.volatile_ns[0].second, hi = lo;
    for (const auto& [size, ns] : ctx.volatile_ns) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "%s%lld MiB %.2f", list.empty() ? "" : ", ",
                    static_cast<long long>(size), ns * 1e-3);
      list += buf;
      lo = std::min(lo, ns);
      hi = std::max(hi, ns);
    }
    std::printf("emu MADV_VOLATILE us/call by size: %s (slowest / fastest x%.1f)\n", list.c_str(),
                hi / lo);
  }
  std::fflush(stdout);
}

// ---- Parts 2 and 3: allocator churn ----

// The heap of a churn run: `nchunks` chunks of `chunk_pages` pages from
// `base`, in an emulated address space (`as`) or a native mapping.
struct Heap {
  char* base = nullptr;
  size_t nchunks = 0;
  size_t chunk_pages = 0;
  AddressSpace* as = nullptr;  // nullptr: native
  int advice = kNoAdvice;
  std::vector<unsigned char> resident;  // mincore() of one chunk (native)

  size_t chunk_bytes() const { return chunk_pages * kHostPageSize; }
  char* chunk(size_t c) const { return base + c * chunk_bytes(); }
};

// Advises chunk `c`; empty, or what failed.
std::string Advise(Heap& h, size_t c) {
  if (h.advice == kNoAdvice) return {};
  if (h.as != nullptr) {
    absl::Status s = h.as->Madvise(Addr(h.chunk(c)), h.chunk_bytes(), h.advice);
    return s.ok() ? std::string() : "Madvise(chunk " + std::to_string(c) + "): " + Msg(s);
  }
  if (madvise(h.chunk(c), h.chunk_bytes(), h.advice) != 0) {
    return std::string("madvise: ") + std::strerror(errno);
  }
  return {};
}

// What a chunk's pages may hold when looked at.
enum class Want {
  kLive,        // its tag (zeros: live-zero)
  kFreeKept,    // freed with no advice: its tag
  kFreeZero,    // freed with DONTNEED: zeros
  kFreeEither,  // freed with volatile or MADV_FREE: its tag or zeros
};

struct Tally {
  uint64_t checked = 0, unchecked = 0, mismatches = 0, live_zero = 0;
  std::string first;  // the first mismatch
  void Add(const Tally& t) {
    checked += t.checked;
    unchecked += t.unchecked;
    mismatches += t.mismatches;
    live_zero += t.live_zero;
    if (first.empty()) first = t.first;
  }
};

// How one page is seen: read (`peek` false, or the page can be read without
// a fault), inferred zero (an emu none or discarded PTE), or not checked.
enum class Peek { kRead, kZero, kSkip };

Peek PeekPage(Heap& h, size_t c, size_t i) {
  if (h.as != nullptr) {
    const Pte pte = h.as->GetPte(Addr(h.chunk(c)) + i * kHostPageSize);
    if (pte.present() && !pte.locked()) return Peek::kRead;
    if (pte.none() || pte.discarded()) return Peek::kZero;
    return Peek::kSkip;  // on swap, or a fault in flight
  }
  return (h.resident[i] & 1) ? Peek::kRead : Peek::kSkip;
}

void CheckChunk(Heap& h, size_t c, uint32_t gen, Want want, bool peek, Tally* t) {
  if (peek && h.as == nullptr && mincore(h.chunk(c), h.chunk_bytes(), h.resident.data()) != 0) {
    t->unchecked += h.chunk_pages;
    return;
  }
  for (size_t i = 0; i < h.chunk_pages; i++) {
    const size_t idx = c * h.chunk_pages + i;
    uint64_t w0 = 0, w1 = 0;
    Seen s = Seen::kZero;
    const Peek how = peek ? PeekPage(h, c, i) : Peek::kRead;
    if (how == Peek::kSkip) {
      t->unchecked++;
      continue;
    }
    if (how == Peek::kRead) s = Look(h.base, idx, gen, &w0, &w1);
    t->checked++;
    bool bad = s == Seen::kOther;
    if (s == Seen::kZero && want == Want::kLive) t->live_zero++;
    if (s == Seen::kZero && want == Want::kFreeKept) bad = true;
    if (s == Seen::kIntact && want == Want::kFreeZero) bad = true;
    if (!bad) continue;
    t->mismatches++;
    if (t->first.empty()) {
      char buf[200];
      std::snprintf(buf, sizeof(buf),
                    "chunk %zu page %zu (%s, generation %u): words %#llx %#llx, tag %#llx", c, i,
                    want == Want::kLive ? "live" : "free", gen, U(w0), U(w1), U(Tag(idx, gen)));
      t->first = buf;
    }
  }
}

struct ChurnResult {
  uint64_t timed_ns = 0;  // advise + reuse writes
  uint64_t reused_pages = 0;
  uint64_t faults = 0;  // emu pgfault / kernel ru_minflt, over the loop
  Counters ev{};        // emu: counter deltas over the loop
  Tally loop, final;
};

uint64_t MinorFaults() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_minflt);
}

Want FreeWant(int advice) {
  if (advice == kNoAdvice) return Want::kFreeKept;
  if (advice == MADV_DONTNEED) return Want::kFreeZero;
  return Want::kFreeEither;
}

// The churn loop on `h` (mapped, untouched). `m`: the emu machine, or nullptr.
Result Churn(Heap& h, const Options& o, Machine* m, ChurnResult* out) {
  const Want free_want = FreeWant(h.advice);
  std::vector<uint32_t> gen(h.nchunks, 1);
  std::vector<uint32_t> order = ShuffledOrder(h.nchunks, static_cast<uint64_t>(o.seed));
  std::vector<uint32_t> live(order.begin() + h.nchunks / 2, order.end());
  std::vector<uint32_t> free_list(order.begin(), order.begin() + h.nchunks / 2);
  live.reserve(h.nchunks);
  free_list.reserve(h.nchunks);
  FillPages(h.base, 0, h.nchunks * h.chunk_pages, 1);
  for (uint32_t c : free_list) {
    std::string err = Advise(h, c);
    if (!err.empty()) return Result::Fail(err);
  }
  std::mt19937_64 rng(static_cast<uint64_t>(o.seed));
  const Counters c0 = m != nullptr ? m->vmstat().Snapshot() : Counters{};
  const uint64_t f0 = MinorFaults();
  for (int64_t it = 0; it < o.iters; it++) {
    // Free a random live chunk.
    size_t k = static_cast<size_t>(rng() % live.size());
    uint32_t c = live[k];
    CheckChunk(h, c, gen[c], Want::kLive, /*peek=*/true, &out->loop);
    const uint64_t t0 = NowNs();
    std::string err = Advise(h, c);
    const uint64_t t1 = NowNs();
    if (!err.empty()) return Result::Fail(err);
    live[k] = live.back();
    live.pop_back();
    free_list.push_back(c);
    // Reuse a random free chunk.
    k = static_cast<size_t>(rng() % free_list.size());
    c = free_list[k];
    CheckChunk(h, c, gen[c], free_want, /*peek=*/true, &out->loop);
    gen[c]++;
    const uint64_t t2 = NowNs();
    FillPages(h.base, c * h.chunk_pages, h.chunk_pages, gen[c]);
    const uint64_t t3 = NowNs();
    free_list[k] = free_list.back();
    free_list.pop_back();
    live.push_back(c);
    out->timed_ns += (t1 - t0) + (t3 - t2);
    out->reused_pages += h.chunk_pages;
  }
  const uint64_t f1 = MinorFaults();
  if (m != nullptr) {
    const Counters c1 = m->vmstat().Snapshot();
    for (int e = 0; e < kNrVmEvents; e++) out->ev[e] = c1[e] - c0[e];
    out->faults = out->ev[static_cast<int>(VmEvent::k_pgfault)];
  } else {
    out->faults = f1 - f0;
  }
  // Every page for real, after the counters.
  for (uint32_t c : live) CheckChunk(h, c, gen[c], Want::kLive, /*peek=*/false, &out->final);
  for (uint32_t c : free_list) CheckChunk(h, c, gen[c], free_want, false, &out->final);
  return Result::Ok();
}

struct ChurnSpec {
  const char* name;  // JSON
  const char* label;
  bool emu;
  int advice;
  int limit;  // emu: 0 none, 1 well above the heap, 2 half the heap
  int peer;   // index into the same table, or -1
};

// Part 2.
constexpr ChurnSpec kNoPressure[] = {
    {"emu_volatile", "emu MADV_VOLATILE", true, kMadvVolatile, 0, 5},
    {"emu_free", "emu MADV_FREE (no limit)", true, MADV_FREE, 0, 5},
    {"emu_free_limit", "emu MADV_FREE (limit)", true, MADV_FREE, 1, 5},
    {"emu_dontneed", "emu MADV_DONTNEED", true, MADV_DONTNEED, 0, 6},
    {"emu_none", "emu no advice", true, kNoAdvice, 0, 7},
    {"kernel_free", "kernel MADV_FREE", false, MADV_FREE, 0, -1},
    {"kernel_dontneed", "kernel MADV_DONTNEED", false, MADV_DONTNEED, 0, -1},
    {"kernel_none", "kernel no advice", false, kNoAdvice, 0, -1},
};
constexpr int kNrNoPressure = sizeof(kNoPressure) / sizeof(kNoPressure[0]);

// Part 3 (peer: no advice).
constexpr ChurnSpec kPressure[] = {
    {"emu_volatile", "emu MADV_VOLATILE", true, kMadvVolatile, 2, 3},
    {"emu_free", "emu MADV_FREE", true, MADV_FREE, 2, 3},
    {"emu_dontneed", "emu MADV_DONTNEED", true, MADV_DONTNEED, 2, 3},
    {"emu_none", "emu no advice", true, kNoAdvice, 2, -1},
};
constexpr int kNrPressure = sizeof(kPressure) / sizeof(kPressure[0]);
constexpr int kPressureDontneed = 2;

uint64_t HeapBytes(const Options& o) {
  return static_cast<uint64_t>(o.chunks) * static_cast<uint64_t>(o.chunk_kib) * 1024;
}

uint64_t PressureLimit(const Options& o) { return std::max(kMinMemLimit, HeapBytes(o) / 2); }

Result RunChurn(const Context& ctx, const ChurnSpec& spec, ChurnResult* out) {
  const Options& o = ctx.o;
  const uint64_t heap_bytes = HeapBytes(o);
  Heap h;
  h.nchunks = static_cast<size_t>(o.chunks);
  h.chunk_pages = static_cast<size_t>(o.chunk_kib) * 1024 / kHostPageSize;
  h.advice = spec.advice;
  if (!spec.emu) {
    h.base = MapNative(heap_bytes);
    if (h.base == nullptr) return Result::Fail(std::string("native mmap: ") + std::strerror(errno));
    h.resident.resize(h.chunk_pages);
    Result r = Churn(h, o, nullptr, out);
    UnmapNative(h.base, heap_bytes);
    return r;
  }
  uint64_t limit = 0, swap = 0;
  if (spec.limit == 1) {
    limit = 2 * heap_bytes + 64 * kMiB;
    swap = kSmallSwapBytes;
  } else if (spec.limit == 2) {
    limit = PressureLimit(o);
    swap = 4 * heap_bytes;
  }
  Emu e;
  Result r = MakeEmu(EmuOptions(o.mode, limit, swap), heap_bytes, &e);
  if (r.ok) r = EmuMmap(*e.as, heap_bytes, &h.base);
  if (!r.ok) return r;
  h.as = e.as.get();
  r = Churn(h, o, e.machine.get(), out);
  if (!r.ok) return r;
  absl::Status inv = e.machine->CheckInvariants();
  if (!inv.ok()) return Result::Fail("Machine::CheckInvariants after the churn: " + Msg(inv));
  return Result::Ok();
}

double PerPage(uint64_t v, const ChurnResult& r) {
  return static_cast<double>(v) / static_cast<double>(std::max<uint64_t>(1, r.reused_pages));
}

uint64_t Ev(const ChurnResult& r, VmEvent e) { return r.ev[static_cast<int>(e)]; }
uint64_t SwapIo(const ChurnResult& r) {
  return Ev(r, VmEvent::k_pswpout) + Ev(r, VmEvent::k_pswpin);
}
uint64_t Discards(const ChurnResult& r) {
  return Ev(r, VmEvent::k_pgvolatile) + Ev(r, VmEvent::k_pglazyfreed);
}

// The checks every churn row must pass; prints failures.
void CheckChurn(Context& ctx, const char* part, const ChurnSpec& spec, const ChurnResult& r) {
  Tally all = r.loop;
  all.Add(r.final);
  const std::string where = std::string(part) + ", " + spec.label;
  if (all.mismatches != 0) {
    Failed(ctx, where,
           std::to_string(all.mismatches) + " pages held neither their tag nor " +
               "what the advice allows; first: " + all.first);
  }
  if (all.live_zero != 0 && spec.advice != kMadvVolatile) {
    Failed(
        ctx, where,
        std::to_string(all.live_zero) + " pages written since their chunk's last free read zeros");
  }
}

void JsonChurnCommon(JsonLine& j, const Context& ctx, const ChurnSpec& spec, const ChurnResult& r) {
  Tally all = r.loop;
  all.Add(r.final);
  j.Num("time_s", static_cast<double>(r.timed_ns) * 1e-9);
  j.Num("faults_per_page", PerPage(r.faults, r)).Int("faults", static_cast<int64_t>(r.faults));
  j.Int("reused_pages", static_cast<int64_t>(r.reused_pages));
  j.Int("mismatches", static_cast<int64_t>(all.mismatches));
  j.Int("live_zero", static_cast<int64_t>(all.live_zero));
  j.Int("checked_in_loop", static_cast<int64_t>(r.loop.checked));
  j.Int("unchecked_in_loop", static_cast<int64_t>(r.loop.unchecked));
  j.Int("chunks", ctx.o.chunks).Int("chunk_kib", ctx.o.chunk_kib).Int("iters", ctx.o.iters);
  j.Int("seed", ctx.o.seed).Str("mode", ModeName(ctx.o.mode)).Str("git_sha", GitSha());
  j.Str("compiler", CompilerVersion()).Int("nproc", Nproc());
  j.Str("side", spec.emu ? "emu" : "kernel");
}

void PrintNoPressureHeader(const Context& ctx) {
  std::printf(
      "\npart 2: allocator churn without pressure: %lld chunks of %lld KiB (half live), %lld "
      "iterations of: free a random live chunk (advise), reuse a random free chunk (write every "
      "page)\ntime = advise + reuse writes only; faults: emu pgfault, kernel ru_minflt; ratio = "
      "ns/page of emu / peer; emu MADV_FREE (limit): limit 2x the heap + 64 MiB\n\n",
      static_cast<long long>(ctx.o.chunks), static_cast<long long>(ctx.o.chunk_kib),
      static_cast<long long>(ctx.o.iters));
  std::printf("%-26s %8s %9s %11s  %-22s %8s %9s %9s\n", "method", "time s", "ns/page",
              "faults/page", "peer", "ratio", "mismatch", "live-zero");
  std::fflush(stdout);
}

void RunNoPressurePart(Context& ctx) {
  if (!ctx.o.json) PrintNoPressureHeader(ctx);
  ChurnResult res[kNrNoPressure];
  bool done[kNrNoPressure] = {};
  // Kernel rows first: a peer must be measured before the row that cites it
  // is printed, and no emu machine (threads, handlers) is alive for them.
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 0; i < kNrNoPressure; i++) {
      const ChurnSpec& spec = kNoPressure[i];
      if (spec.emu != (pass == 1)) continue;
      Result r = RunChurn(ctx, spec, &res[i]);
      if (!r.ok) {
        Failed(ctx, std::string("part 2, ") + spec.label, r.why);
        continue;
      }
      done[i] = true;
      CheckChurn(ctx, "part 2", spec, res[i]);
    }
  }
  for (int i = 0; i < kNrNoPressure; i++) {
    if (!done[i]) continue;
    const ChurnSpec& spec = kNoPressure[i];
    const ChurnResult& r = res[i];
    const double ns = PerPage(r.timed_ns, r);
    const bool peer = spec.peer >= 0 && done[spec.peer];
    const double peer_ns = peer ? PerPage(res[spec.peer].timed_ns, res[spec.peer]) : std::nan("");
    Tally all = r.loop;
    all.Add(r.final);
    if (ctx.o.json) {
      JsonLine j;
      j.Str("name", std::string("volatile_churn_") + spec.name).Num("value", ns);
      j.Str("unit", "ns/page");
      if (peer) {
        j.Str("peer", kNoPressure[spec.peer].name).Num("peer_value", peer_ns);
        j.Num("ratio", ns / peer_ns);
      }
      JsonChurnCommon(j, ctx, spec, r);
      j.Print();
    } else {
      std::printf("%-26s %8.3f %9.1f %11.3f  %-22s %8s %9llu %9llu\n", spec.label,
                  static_cast<double>(r.timed_ns) * 1e-9, ns, PerPage(r.faults, r),
                  peer ? kNoPressure[spec.peer].label : "", peer ? Ratio(ns, peer_ns).c_str() : "",
                  U(all.mismatches), U(all.live_zero));
    }
  }
  if (done[0] && ctx.o.json) {
    JsonLine j;
    j.Str("name", "volatile_target_reuse_no_faults").Num("value", PerPage(res[0].faults, res[0]));
    j.Str("unit", "faults/page").Num("target", 0).Bool("met", res[0].faults == 0);
    j.Str("mode", ModeName(ctx.o.mode)).Str("git_sha", GitSha()).Print();
  } else if (done[0]) {
    std::printf("target reuse without pressure takes no faults (volatile): %s (%llu faults)\n",
                res[0].faults == 0 ? "met" : "MISSED", U(res[0].faults));
  }
  std::fflush(stdout);
}

void PrintPressureHeader(const Context& ctx) {
  const uint64_t heap = HeapBytes(ctx.o);
  std::printf(
      "\npart 3: the same churn under a memory limit: heap %.0f MiB, limit %.0f MiB, swap file "
      "%.0f MiB; emu only (no kernel peer: it needs a cgroup)\nswap I/O = pswpout + pswpin; "
      "io/none and io/dontneed = swap I/O relative to no advice and to DONTNEED; time/none = "
      "time relative to no advice\ndiscarded = pgvolatile + pglazyfreed (no I/O); "
      "out-avoid/in-avoid = swapout_avoided/swapin_avoided\n\n",
      static_cast<double>(heap) / kMiB, static_cast<double>(PressureLimit(ctx.o)) / kMiB,
      static_cast<double>(4 * heap) / kMiB);
  std::printf("%-18s %7s %8s %7s %8s %8s %7s %8s %9s %9s %8s %9s %8s %8s %9s\n", "method", "time s",
              "ns/page", "flt/pg", "pswpout", "pswpin", "io/none", "io/dntn", "time/none",
              "discarded", "refault", "out-avoid", "in-avoid", "mismatch", "live-zero");
  std::fflush(stdout);
}

void PrintPressureRow(const Context& ctx, const ChurnSpec& spec, const ChurnResult& r,
                      const ChurnResult* none, const ChurnResult* dontneed) {
  Tally all = r.loop;
  all.Add(r.final);
  const double ns = PerPage(r.timed_ns, r);
  const double io = static_cast<double>(SwapIo(r));
  const double io_none = none ? static_cast<double>(SwapIo(*none)) : std::nan("");
  const double io_dn = dontneed ? static_cast<double>(SwapIo(*dontneed)) : std::nan("");
  const double t_none = none ? static_cast<double>(none->timed_ns) : std::nan("");
  if (ctx.o.json) {
    JsonLine j;
    j.Str("name", std::string("volatile_pressure_") + spec.name).Num("value", ns);
    j.Str("unit", "ns/page").Str("peer", "emu_none");
    j.Num("peer_value", none ? PerPage(none->timed_ns, *none) : std::nan(""));
    j.Num("ratio", none ? static_cast<double>(r.timed_ns) / t_none : std::nan(""));
    j.Int("pswpout", static_cast<int64_t>(Ev(r, VmEvent::k_pswpout)));
    j.Int("pswpin", static_cast<int64_t>(Ev(r, VmEvent::k_pswpin)));
    j.Num("swap_io_vs_none", io / io_none).Num("swap_io_vs_dontneed", io / io_dn);
    j.Int("discarded", static_cast<int64_t>(Discards(r)));
    j.Int("pgvolatile", static_cast<int64_t>(Ev(r, VmEvent::k_pgvolatile)));
    j.Int("pglazyfreed", static_cast<int64_t>(Ev(r, VmEvent::k_pglazyfreed)));
    j.Int("discard_refault", static_cast<int64_t>(Ev(r, VmEvent::k_discard_refault)));
    j.Int("swapout_avoided", static_cast<int64_t>(Ev(r, VmEvent::k_swapout_avoided)));
    j.Int("swapin_avoided", static_cast<int64_t>(Ev(r, VmEvent::k_swapin_avoided)));
    j.Int("volatile_unmark", static_cast<int64_t>(Ev(r, VmEvent::k_volatile_unmark)));
    j.Int("pgmajfault", static_cast<int64_t>(Ev(r, VmEvent::k_pgmajfault)));
    j.Int("swap_ra", static_cast<int64_t>(Ev(r, VmEvent::k_swap_ra)));
    j.Int("pgsteal", static_cast<int64_t>(Ev(r, VmEvent::k_pgsteal)));
    j.Int("mem_limit", static_cast<int64_t>(PressureLimit(ctx.o)));
    JsonChurnCommon(j, ctx, spec, r);
    j.Print();
    return;
  }
  std::printf(
      "%-18s %7.3f %8.1f %7.3f %8llu %8llu %7s %8s %9s %9llu %8llu %9llu %8llu %8llu %9llu\n",
      spec.label, static_cast<double>(r.timed_ns) * 1e-9, ns, PerPage(r.faults, r),
      U(Ev(r, VmEvent::k_pswpout)), U(Ev(r, VmEvent::k_pswpin)), Ratio(io, io_none).c_str(),
      Ratio(io, io_dn).c_str(), Ratio(static_cast<double>(r.timed_ns), t_none).c_str(),
      U(Discards(r)), U(Ev(r, VmEvent::k_discard_refault)), U(Ev(r, VmEvent::k_swapout_avoided)),
      U(Ev(r, VmEvent::k_swapin_avoided)), U(all.mismatches), U(all.live_zero));
}

void RunPressurePart(Context& ctx) {
  if (!ctx.o.json) PrintPressureHeader(ctx);
  ChurnResult res[kNrPressure];
  bool done[kNrPressure] = {};
  for (int i = 0; i < kNrPressure; i++) {
    Result r = RunChurn(ctx, kPressure[i], &res[i]);
    if (!r.ok) {
      Failed(ctx, std::string("part 3, ") + kPressure[i].label, r.why);
      continue;
    }
    done[i] = true;
    CheckChurn(ctx, "part 3", kPressure[i], res[i]);
  }
  const int none = kNrPressure - 1;
  for (int i = 0; i < kNrPressure; i++) {
    if (!done[i]) continue;
    PrintPressureRow(ctx, kPressure[i], res[i], done[none] ? &res[none] : nullptr,
                     done[kPressureDontneed] ? &res[kPressureDontneed] : nullptr);
  }
  if (!ctx.o.json && done[0]) {
    Tally all = res[0].loop;
    all.Add(res[0].final);
    std::printf(
        "volatile live-zero (seed 003: a write after the advice that took no fault leaves the "
        "mark, so reclaim may still discard it): %llu of %llu pages checked\n",
        U(all.live_zero), U(all.checked));
  }
  std::fflush(stdout);
}

// ---- Options ----

void PrintHelp() {
  std::printf(
      "usage: %s [options]\n"
      "Volatile ranges (kMadvVolatile) and lazy free (MADV_FREE) against MADV_DONTNEED,\n"
      "on the emulator and the kernel: (1) one madvise call by range size, (2) allocator\n"
      "churn without memory pressure, (3) the same churn under a memory limit.\n\n"
      "  --mode M        sigbus, thread or sigsegv (default sigbus)\n"
      "  --parts LIST    madvise, churn, pressure; comma-separated (default all)\n"
      "  --sizes LIST    part 1's range sizes in MiB (default 1,16,256,1024,4096; a\n"
      "                  size is skipped when MemAvailable is below 1.25x it + 1 GiB)\n"
      "  --reps N        part 1's timed calls per method and size (default 9 up to\n"
      "                  16 MiB, 5 up to 1 GiB, 3 above)\n"
      "  --chunks N      parts 2 and 3: chunks in the heap (default 256)\n"
      "  --chunk-kib N   their size in KiB, a multiple of 4 (default 64)\n"
      "  --iters N       churn iterations per method (default 20000)\n"
      "  --seed N        the churn's random choices (default 1)\n"
      "  --quick         sizes 1,16, 3 reps, 128 chunks, 1000 iterations (smoke test;\n"
      "                  explicit options win)\n"
      "  --json          one JSON object per line per row instead of the tables\n"
      "  --help          this text\n\n"
      "Exit status: 0; 1 when an emulator call fails, a counter contradicts what a\n"
      "call must have done, or data is wrong (see stderr); 2 for a bad option.\n"
      "Missed targets are printed and do not change the status.\n",
      kProg);
}

bool ParseSizes(ArgParser& args, std::vector<int64_t>* sizes) {
  std::string v;
  if (!args.Value(&v)) return false;
  sizes->clear();
  for (const std::string& s : SplitCommas(v)) {
    errno = 0;
    char* end = nullptr;
    long long n = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno != 0 || n < 1 || n > kMaxSizeMiB) {
      args.Fail("--sizes '%s': want whole numbers of MiB from 1 to %lld", s.c_str(),
                static_cast<long long>(kMaxSizeMiB));
      return false;
    }
    sizes->push_back(n);
  }
  return true;
}

bool ParseParts(ArgParser& args, bool* part) {
  std::string v;
  if (!args.Value(&v)) return false;
  static constexpr const char* kNames[3] = {"madvise", "churn", "pressure"};
  std::fill(part, part + 3, false);
  for (const std::string& s : SplitCommas(v)) {
    const auto* it = std::find_if(kNames, kNames + 3, [&](const char* n) { return s == n; });
    if (it == kNames + 3) {
      args.Fail("--parts '%s': want madvise, churn or pressure", s.c_str());
      return false;
    }
    part[it - kNames] = true;
  }
  return true;
}

// Returns 0 to run, 1 after --help, 2 on a bad option.
int ParseOptions(int argc, char** argv, Options* o) {
  ArgParser args(kProg, argc, argv);
  int64_t reps = -1, chunks = -1, chunk_kib = -1, iters = -1;
  std::vector<int64_t> sizes;
  while (args.Next()) {
    std::string v;
    if (args.Is("--help") || args.Is("-h")) {
      PrintHelp();
      return 1;
    } else if (args.Is("--json")) {
      o->json = args.NoValue();
    } else if (args.Is("--quick")) {
      o->quick = args.NoValue();
    } else if (args.Is("--mode")) {
      if (args.Value(&v) && !ParseFaultMode(v, &o->mode)) {
        args.Fail("--mode '%s': want sigbus, thread or sigsegv", v.c_str());
      }
    } else if (args.Is("--parts")) {
      ParseParts(args, o->part);
    } else if (args.Is("--sizes")) {
      ParseSizes(args, &sizes);
    } else if (args.Is("--reps")) {
      args.IntValue(1, 1000, &reps);
    } else if (args.Is("--chunks")) {
      args.IntValue(2, 1 << 20, &chunks);
    } else if (args.Is("--chunk-kib")) {
      if (args.IntValue(4, 1 << 20, &chunk_kib) && chunk_kib % 4 != 0) {
        args.Fail("--chunk-kib %lld: want a multiple of 4", static_cast<long long>(chunk_kib));
      }
    } else if (args.Is("--iters")) {
      args.IntValue(1, int64_t{1} << 32, &iters);
    } else if (args.Is("--seed")) {
      args.IntValue(0, INT64_MAX, &o->seed);
    } else {
      args.Unknown();
    }
  }
  if (args.failed()) return 2;
  if (o->quick) {
    o->sizes_mib = {1, 16};
    o->chunks = 128;
    o->iters = 1000;
  }
  if (!sizes.empty()) o->sizes_mib = sizes;
  if (reps > 0) o->reps = reps;
  if (chunks > 0) o->chunks = chunks;
  if (chunk_kib > 0) o->chunk_kib = chunk_kib;
  if (iters > 0) o->iters = iters;
  if (HeapBytes(*o) > (uint64_t{4} << 30)) {
    std::fprintf(stderr, "%s: --chunks x --chunk-kib: the heap may be at most 4 GiB\n", kProg);
    return 2;
  }
  return 0;
}

void PrintHeader(const Context& ctx) {
  const Options& o = ctx.o;
  std::printf(
      "%s: git %s, %s (%s), nproc %d, page %ld B, MemAvailable %llu MiB, mode %s, seed %lld\n",
      kProg, GitSha(), CompilerVersion(), BuildKind(), Nproc(), HostPageSize(),
      U(MemAvailable() / kMiB), ModeName(o.mode).c_str(), static_cast<long long>(o.seed));
  std::printf("emu machine: %s\n", ctx.config.c_str());
  std::fflush(stdout);
}

int Main(int argc, char** argv) {
  Context ctx;
  const int parsed = ParseOptions(argc, argv, &ctx.o);
  if (parsed != 0) return parsed == 1 ? 0 : 2;
  ctx.config = EmuOptions(ctx.o.mode, 0, 0).ToString();
  const uint64_t t0 = NowNs();
  if (!ctx.o.json) PrintHeader(ctx);
  std::string why;
  if (ctx.o.mode != FaultMode::kSigsegv && !UffdAvailable(&why)) {
    const std::string msg = "userfaultfd is not usable here (" + why + "); try --mode sigsegv";
    if (ctx.o.json) {
      JsonLine()
          .Str("name", "volatile")
          .Str("mode", ModeName(ctx.o.mode))
          .Str("skipped", msg)
          .Print();
    } else {
      std::printf("skipped: %s\n", msg.c_str());
    }
    return 0;
  }
  if (ctx.o.part[0]) RunMadvPart(ctx);
  if (ctx.o.part[1]) RunNoPressurePart(ctx);
  if (ctx.o.part[2]) RunPressurePart(ctx);
  if (!ctx.o.json) {
    std::printf("\ntotal %.1f s%s\n", static_cast<double>(NowNs() - t0) * 1e-9,
                ctx.ok ? "" : " (FAILED, see stderr)");
  }
  return ctx.ok ? 0 : 1;
}

}  // namespace
}  // namespace emu::bench

int main(int argc, char** argv) { return emu::bench::Main(argc, argv); }
