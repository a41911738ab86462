// fault_latency_bench: what a page fault costs under emu, per 4 KiB page and
// per fault mode, next to the native kernel measured in the same run, and
// whether mapped memory then runs at native speed.
//
// Measurements (each on a fresh mapping, emu and native alternately inside
// one repetition loop so that machine noise lands on both):
//   random_first_touch_write     one byte written per page, shuffled order
//   random_first_touch_read      one byte read per page, shuffled (zero page;
//                                emu's fault-around maps 16 pages per fault)
//   sparse_random_read           one page read per aligned 16-page block,
//                                blocks shuffled: every read is a fault, so
//                                this is the per-fault cost of a zero-page read
//   write_after_read             all pages read first (untimed), then written
//                                in shuffled order: COW from the zero page
//   sequential_first_touch_read  ascending reads (emu: fault-around)
//   sequential_first_touch_write ascending writes
//   read_bandwidth, write_bandwidth  8-byte-word sums / memset over a fully
//                                populated region of at least 256 MiB (more
//                                than this host's 260 MiB L3 shared by two)
//
// Latencies are reported as us/page (min, p50 and max over repetitions);
// ratio = emu p50 / native p50 (lower is better). Bandwidths are GiB/s with
// ratio = emu / native (1.00 means native speed). faults/page counts the
// emulator's faults (vmstat pgfault) during the timed part; --json adds the
// emulator's own handler time per fault (vmstat fault_ns_<mode>).
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/vmstat.h"
#include "fault/machine_factory.h"

namespace emu::bench {
namespace {

constexpr char kProg[] = "fault_latency_bench";
constexpr uint64_t kSeed = 0x5eed5eedull;
constexpr uint64_t kArenaBytes = uint64_t{16} << 30;
constexpr uint64_t kWindowBytes = uint64_t{4} << 30;
constexpr double kBandwidthTolerance = 0.03;
constexpr int64_t kMinBandwidthPages = 65536;  // 256 MiB
constexpr int64_t kMaxPages = int64_t{1} << 20;  // 4 GiB: the window

enum class Kind {
  kRandomWrite,
  kRandomRead,
  kSparseRead,
  kWriteAfterRead,
  kSeqRead,
  kSeqWrite,
  kReadBandwidth,
  kWriteBandwidth,
};

struct Spec {
  Kind kind;
  const char* name;   // JSON name
  const char* label;  // table label
  bool bandwidth;
  double target;  // sigbus mode: the largest ratio (latency), the ratio +- tolerance (bandwidth)
};

constexpr Spec kSpecs[] = {
    {Kind::kRandomWrite, "random_first_touch_write", "random first-touch write", false, 2.4},
    {Kind::kRandomRead, "random_first_touch_read", "random first-touch read", false, 3.6},
    {Kind::kSparseRead, "sparse_random_read", "sparse random read (1/16)", false, 3.6},
    {Kind::kWriteAfterRead, "write_after_read", "write after read (COW)", false, 2.0},
    {Kind::kSeqRead, "sequential_first_touch_read", "sequential first-touch read", false, 0.5},
    {Kind::kSeqWrite, "sequential_first_touch_write", "sequential first-touch write", false, 1.0},
    {Kind::kReadBandwidth, "read_bandwidth", "read bandwidth", true, 1.0},
    {Kind::kWriteBandwidth, "write_bandwidth", "write bandwidth", true, 1.0},
};

struct Options {
  std::vector<FaultMode> modes;
  int64_t reps = 5;
  int64_t pages = 32768;
  int64_t bw_pages = 32768;  // bandwidth region: max(pages, 64 MiB) unless --quick
  int64_t passes = 2;        // bandwidth passes per repetition
  bool json = false;
  bool quick = false;
  int64_t fault_around = 16;  // MachineOptions::fault_around_pages
};

// ---- Where memory comes from ----

// The memory of one side of a comparison: the native kernel or an emulated
// address space. Map() returns nullptr after printing why.
class Side {
 public:
  virtual ~Side() = default;
  virtual char* Map(size_t bytes) = 0;
  virtual void Unmap(char* p, size_t bytes) = 0;
  // Faults the emulator decided so far, and the time its handlers spent on
  // them (0 for the kernel).
  virtual uint64_t Faults() const { return 0; }
  virtual uint64_t HandlerNs() const { return 0; }
};

class NativeSide : public Side {
 public:
  char* Map(size_t bytes) override {
    char* p = MapNative(bytes);
    if (p == nullptr) std::fprintf(stderr, "%s: native mmap: %s\n", kProg, std::strerror(errno));
    return p;
  }
  void Unmap(char* p, size_t bytes) override { UnmapNative(p, bytes); }
};

class EmuSide : public Side {
 public:
  EmuSide(Machine& machine, AddressSpace& as) : machine_(machine), as_(as) {}
  char* Map(size_t bytes) override {
    auto p = as_.Mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    if (!p.ok()) {
      std::fprintf(stderr, "%s: emu mmap: %s\n", kProg, std::string(p.status().message()).c_str());
      return nullptr;
    }
    return reinterpret_cast<char*>(*p);
  }
  void Unmap(char* p, size_t bytes) override {
    auto s = as_.Munmap(reinterpret_cast<VirtAddr>(p), bytes);
    if (!s.ok()) {
      std::fprintf(stderr, "%s: emu munmap: %s\n", kProg, std::string(s.message()).c_str());
    }
  }
  uint64_t Faults() const override { return machine_.vmstat().Get(VmEvent::k_pgfault); }
  uint64_t HandlerNs() const override {
    switch (machine_.options().fault_mode) {
      case FaultMode::kUffdSigbus: return machine_.vmstat().Get(VmEvent::k_fault_ns_sigbus);
      case FaultMode::kUffdThread: return machine_.vmstat().Get(VmEvent::k_fault_ns_thread);
      case FaultMode::kSigsegv: return machine_.vmstat().Get(VmEvent::k_fault_ns_sigsegv);
    }
    return 0;
  }

 private:
  Machine& machine_;
  AddressSpace& as_;
};

// ---- Access kernels ----

__attribute__((noinline)) void WritePages(char* base, const std::vector<uint32_t>& order) {
  for (uint32_t i : order) {
    *reinterpret_cast<volatile char*>(base + uint64_t{i} * kHostPageSize) = 1;
  }
}

__attribute__((noinline)) uint64_t ReadPages(const char* base, const std::vector<uint32_t>& order) {
  uint64_t sum = 0;
  for (uint32_t i : order) {
    sum += *reinterpret_cast<const volatile char*>(base + uint64_t{i} * kHostPageSize);
  }
  return sum;
}

__attribute__((noinline)) uint64_t SumWords(const char* p, size_t bytes) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(p);
  uint64_t sum = 0;
  for (size_t i = 0; i < bytes / sizeof(uint64_t); i++) sum += w[i];
  return sum;
}

__attribute__((noinline)) void FillBytes(char* p, size_t bytes, int value) {
  std::memset(p, value, bytes);
  DoNotOptimize(p);
  ClobberMemory();
}

// ---- One sample ----

struct Sample {
  double value = 0;                 // ns per page, or GiB/s
  double faults_per_page = 0;       // emulator faults in the timed part
  double handler_ns_per_fault = 0;  // emulator handler time per such fault
};

struct Orders {
  std::vector<uint32_t> sequential;
  std::vector<uint32_t> shuffled;
  std::vector<uint32_t> sparse;  // one page per aligned 16-page block, blocks shuffled
};

std::vector<uint32_t> SparseOrder(size_t pages, uint64_t seed) {
  std::vector<uint32_t> blocks = ShuffledOrder(pages / 16, seed);
  std::vector<uint32_t> out;
  out.reserve(blocks.size());
  for (uint32_t b : blocks) out.push_back(b * 16 + (b * 2654435761u >> 7) % 16);
  return out;
}

// Times one latency measurement on a fresh mapping of `orders` pages.
bool LatencyRun(Kind kind, Side& side, const Orders& orders, Sample* out) {
  const size_t pages = orders.sequential.size();
  const size_t bytes = pages * kHostPageSize;
  char* p = side.Map(bytes);
  if (p == nullptr) return false;
  if (kind == Kind::kWriteAfterRead) DoNotOptimize(ReadPages(p, orders.sequential));
  uint64_t sum = 0;
  const uint64_t f0 = side.Faults(), h0 = side.HandlerNs();
  const uint64_t t0 = NowNs();
  switch (kind) {
    case Kind::kRandomWrite:
    case Kind::kWriteAfterRead: WritePages(p, orders.shuffled); break;
    case Kind::kRandomRead: sum = ReadPages(p, orders.shuffled); break;
    case Kind::kSparseRead: sum = ReadPages(p, orders.sparse); break;
    case Kind::kSeqRead: sum = ReadPages(p, orders.sequential); break;
    case Kind::kSeqWrite: WritePages(p, orders.sequential); break;
    default: break;
  }
  const uint64_t t1 = NowNs();
  const uint64_t f1 = side.Faults(), h1 = side.HandlerNs();
  DoNotOptimize(sum);
  bool ok = true;
  if (sum != 0) {
    std::fprintf(stderr, "%s: fresh memory did not read as zeros (sum %llu)\n", kProg,
                 static_cast<unsigned long long>(sum));
    ok = false;
  }
  side.Unmap(p, bytes);
  const size_t touched = kind == Kind::kSparseRead ? orders.sparse.size() : pages;
  out->value = static_cast<double>(t1 - t0) / static_cast<double>(touched);
  out->faults_per_page = static_cast<double>(f1 - f0) / static_cast<double>(touched);
  out->handler_ns_per_fault = f1 > f0 ? static_cast<double>(h1 - h0) / static_cast<double>(f1 - f0) : 0;
  return ok;
}

// One read or write pass over populated memory; returns nanoseconds and
// adds the emulator faults it took to *faults.
uint64_t BandwidthPass(Kind kind, Side& side, char* p, size_t bytes, int value, uint64_t* faults) {
  const uint64_t f0 = side.Faults();
  const uint64_t t0 = NowNs();
  if (kind == Kind::kReadBandwidth) {
    DoNotOptimize(SumWords(p, bytes));
  } else {
    FillBytes(p, bytes, value);
  }
  const uint64_t t1 = NowNs();
  *faults += side.Faults() - f0;
  return t1 - t0;
}

// ---- One measurement, both sides ----

struct Row {
  const Spec* spec = nullptr;
  FaultMode mode = FaultMode::kUffdSigbus;
  Summary emu;     // us/page or GiB/s
  Summary native;  // same unit
  double faults_per_page = 0;
  double handler_us_per_fault = std::nan("");
  std::string skipped;  // non-empty: the mode could not run
  double ratio() const { return emu.p50 / native.p50; }
};

struct Collected {
  std::vector<double> emu, native, faults, handler_ns;
  void Add(const Sample& e, const Sample& n, double scale) {
    emu.push_back(e.value * scale);
    native.push_back(n.value * scale);
    faults.push_back(e.faults_per_page);
    handler_ns.push_back(e.handler_ns_per_fault);
  }
};

// Runs native and emu in the order that rep `r` gets: alternating which goes
// first, so neither side always runs on a cache (or a neighbour) the other
// just disturbed.
template <typename Fn>
bool BothSides(int64_t r, Fn&& run) {
  if (r % 2 == 0) return run(/*emu=*/false) && run(/*emu=*/true);
  return run(/*emu=*/true) && run(/*emu=*/false);
}

bool MeasureLatency(const Spec& spec, Side& emu, Side& native, const Orders& orders,
                    const Options& o, Collected* c) {
  for (int64_t r = -1; r < o.reps; r++) {  // r == -1: warm-up
    Sample e, n;
    bool ok = BothSides(r + 1, [&](bool is_emu) {
      return LatencyRun(spec.kind, is_emu ? emu : native, orders, is_emu ? &e : &n);
    });
    if (!ok) return false;
    if (r >= 0) c->Add(e, n, 1e-3);  // ns -> us
  }
  return true;
}

// Populates two regions of `bytes` in alternating 1 MiB chunks. Which region
// is populated first matters: here it got ~5% more read bandwidth (physical
// placement in the guest and host), whichever side it was. Interleaving gives
// both sides frames from the same mix.
void PopulateInterleaved(char* a, char* b, size_t bytes) {
  constexpr size_t kChunk = size_t{1} << 20;
  for (size_t off = 0; off < bytes; off += kChunk) {
    const size_t len = std::min(kChunk, bytes - off);
    FillBytes(a + off, len, 1);
    FillBytes(b + off, len, 1);
  }
}

// Each repetition runs `passes` passes over each side, chunk by chunk: the
// same 16 MiB chunk of native and emu memory back to back, the order flipping
// from chunk to chunk (ABBA), so that noise from other processes, which comes
// and goes over milliseconds, lands on both sides alike.
bool MeasureBandwidth(const Spec& spec, Side& emu, Side& native, const Options& o,
                      Collected* c) {
  constexpr size_t kChunk = size_t{16} << 20;
  const size_t bytes = static_cast<size_t>(o.bw_pages) * kHostPageSize;
  char* pe = emu.Map(bytes);
  char* pn = pe ? native.Map(bytes) : nullptr;
  if (pn == nullptr) {
    if (pe) emu.Unmap(pe, bytes);
    return false;
  }
  PopulateInterleaved(pe, pn, bytes);
  const double gib = static_cast<double>(bytes) * static_cast<double>(o.passes) / (1u << 30);
  for (int64_t r = -1; r < o.reps; r++) {
    uint64_t ns[2] = {0, 0}, faults[2] = {0, 0};  // [0] native, [1] emu
    int64_t step = r + 1;
    for (int64_t pass = 0; pass < o.passes; pass++) {
      for (size_t off = 0; off < bytes; off += kChunk, step++) {
        const size_t len = std::min(kChunk, bytes - off);
        for (int k = 0; k < 2; k++) {
          const int is_emu = static_cast<int>((step + k) % 2);
          ns[is_emu] += BandwidthPass(spec.kind, is_emu ? emu : native, (is_emu ? pe : pn) + off,
                                      len, static_cast<int>(pass + 2), &faults[is_emu]);
        }
      }
    }
    if (r < 0) continue;  // warm-up
    Sample e{gib / (static_cast<double>(ns[1]) * 1e-9),
             static_cast<double>(faults[1]) / static_cast<double>(o.passes * o.bw_pages)};
    Sample n{gib / (static_cast<double>(ns[0]) * 1e-9), 0};
    c->Add(e, n, 1.0);
  }
  emu.Unmap(pe, bytes);
  native.Unmap(pn, bytes);
  return true;
}

bool Measure(const Spec& spec, Side& emu, Side& native, const Orders& orders, const Options& o,
             Row* row) {
  Collected c;
  bool ok = spec.bandwidth ? MeasureBandwidth(spec, emu, native, o, &c)
                           : MeasureLatency(spec, emu, native, orders, o, &c);
  if (!ok) return false;
  row->emu = Summarize(c.emu);
  row->native = Summarize(c.native);
  row->faults_per_page = Summarize(c.faults).mean;
  if (row->faults_per_page > 0) row->handler_us_per_fault = Summarize(c.handler_ns).p50 * 1e-3;
  return true;
}

// ---- Output ----

struct Context {
  Options options;
  std::string config;  // MachineOptions::ToString() of the mode being run
  int fault_around = 0;
};

const char* Unit(const Spec& s) { return s.bandwidth ? "GiB/s" : "us/page"; }

bool HasTarget(const Row& r) { return r.mode == FaultMode::kUffdSigbus; }

bool Meets(const Row& r) {
  if (r.spec->bandwidth) return std::fabs(r.ratio() - r.spec->target) <= kBandwidthTolerance;
  return r.ratio() <= r.spec->target;
}

void PrintTableHeader(const Options& o) {
  std::printf("%s: git %s, %s, nproc %d, page %ld B, pages/run %lld (%lld MiB), reps %lld "
              "(+1 warm-up), seed %#llx; bandwidth over %lld MiB, %lld passes/rep\n",
              kProg, GitSha(), CompilerVersion(), Nproc(), HostPageSize(),
              static_cast<long long>(o.pages), static_cast<long long>(o.pages >> 8),
              static_cast<long long>(o.reps), static_cast<unsigned long long>(kSeed),
              static_cast<long long>(o.bw_pages >> 8), static_cast<long long>(o.passes));
  std::printf("latency: us/page, lower is better, ratio = emu p50 / native p50; "
              "bandwidth: GiB/s, ratio = emu / native\n\n");
  std::printf("%-29s %-7s %9s %9s %9s %10s %-7s %6s %9s  %s\n", "measurement", "mode", "emu p50",
              "min", "max", "native p50", "unit", "ratio", "faults/pg", "target (sigbus)");
  std::fflush(stdout);
}

void PrintTableRow(const Row& r) {
  if (!r.skipped.empty()) return;
  char target[48] = "-";
  if (HasTarget(r)) {
    if (r.spec->bandwidth) {
      std::snprintf(target, sizeof(target), "1.00+-%.2f %s", kBandwidthTolerance,
                    Meets(r) ? "meets" : "misses");
    } else {
      std::snprintf(target, sizeof(target), "<= %.1f %s", r.spec->target,
                    Meets(r) ? "meets" : "misses");
    }
  }
  const char* fmt = r.spec->bandwidth ? "%-29s %-7s %9.2f %9.2f %9.2f %10.2f %-7s %6.2f %9.3f  %s\n"
                                      : "%-29s %-7s %9.3f %9.3f %9.3f %10.3f %-7s %6.2f %9.3f  %s\n";
  std::printf(fmt, r.spec->label, std::string(FaultModeName(r.mode)).c_str(), r.emu.p50, r.emu.min,
              r.emu.max, r.native.p50, Unit(*r.spec), r.ratio(), r.faults_per_page, target);
  std::fflush(stdout);
}

void PrintJsonRow(const Row& r, const Context& ctx) {
  JsonLine j;
  j.Str("name", r.spec->name).Str("mode", std::string(FaultModeName(r.mode)));
  if (r.skipped.empty()) {
    j.Num("value", r.emu.p50);
  } else {
    j.Null("value");
  }
  j.Str("unit", Unit(*r.spec)).Str("peer", "native").Num("peer_value", r.native.p50);
  j.Num("ratio", r.skipped.empty() ? r.ratio() : std::nan(""));
  j.Num("min", r.emu.min).Num("max", r.emu.max);
  j.Num("peer_min", r.native.min).Num("peer_max", r.native.max);
  if (HasTarget(r)) {
    j.Num("target", r.spec->target);
    if (r.spec->bandwidth) j.Num("target_tolerance", kBandwidthTolerance);
    if (r.skipped.empty()) j.Bool("meets", Meets(r));
  } else {
    j.Null("target");
  }
  j.Num("faults_per_page", r.skipped.empty() ? r.faults_per_page : std::nan(""));
  j.Num("handler_us_per_fault", r.handler_us_per_fault);
  j.Int("pages", r.spec->bandwidth ? ctx.options.bw_pages : ctx.options.pages);
  j.Int("reps", ctx.options.reps);
  if (r.spec->bandwidth) j.Int("passes", ctx.options.passes);
  j.Str("git_sha", GitSha()).Str("compiler", CompilerVersion()).Int("nproc", Nproc());
  j.Int("fault_around", ctx.fault_around).Str("config", ctx.config);
  if (!r.skipped.empty()) j.Str("skipped", r.skipped);
  j.Print();
}

void Report(const Row& r, const Context& ctx) {
  if (ctx.options.json) {
    PrintJsonRow(r, ctx);
  } else {
    PrintTableRow(r);
  }
}

// Reports every measurement of `mode` as skipped.
void ReportSkipped(FaultMode mode, const std::string& why, const Context& ctx) {
  if (!ctx.options.json) {
    std::printf("%-29s %-7s skipped: %s\n", "(all)", std::string(FaultModeName(mode)).c_str(),
                why.c_str());
    std::fflush(stdout);
    return;
  }
  for (const Spec& spec : kSpecs) {
    Row r;
    r.spec = &spec;
    r.mode = mode;
    r.skipped = why;
    PrintJsonRow(r, ctx);
  }
}

// ---- One mode ----

void RunMode(FaultMode mode, const Orders& orders, Context& ctx) {
  MachineOptions mo;
  mo.fault_mode = mode;
  mo.arena_bytes = kArenaBytes;
  mo.fault_around_pages = static_cast<int>(ctx.options.fault_around);
  ctx.config = mo.ToString();
  ctx.fault_around = mo.fault_around_pages;
  auto machine = CreateMachine(mo);
  if (!machine.ok()) {
    ReportSkipped(mode, std::string(machine.status().message()), ctx);
    return;
  }
  auto as = (*machine)->CreateAddressSpace(kWindowBytes);
  if (!as.ok()) {
    ReportSkipped(mode, "address space: " + std::string(as.status().message()), ctx);
    return;
  }
  EmuSide emu(**machine, **as);
  NativeSide native;
  for (const Spec& spec : kSpecs) {
    Row row;
    row.spec = &spec;
    row.mode = mode;
    if (!Measure(spec, emu, native, orders, ctx.options, &row)) {
      row.skipped = "measurement failed (see above)";
      if (!ctx.options.json) {
        std::printf("%-29s %-7s failed (see stderr)\n", spec.label,
                    std::string(FaultModeName(mode)).c_str());
      }
    }
    Report(row, ctx);
  }
  as->reset();  // the address space goes before its machine
}

// ---- Options ----

void PrintHelp() {
  std::printf(
      "usage: %s [options]\n"
      "Per-page fault latency and steady-state bandwidth of memory served by emu,\n"
      "for each fault mode, next to the native kernel measured in the same run.\n\n"
      "  --mode M      sigbus, thread or sigsegv; repeatable or comma-separated\n"
      "                (default: all three)\n"
      "  --pages N     pages per latency run (default 32768 = 128 MiB); the bandwidth\n"
      "                region is the larger of this and 256 MiB (with --quick: this)\n"
      "  --reps N      timed repetitions after one warm-up (default 5)\n"
      "  --fault-around N  emu's fault-around pages, power of two 1..64 (default 16)\n"
      "  --quick       tiny sizes and 1 repetition (smoke test; explicit --pages/--reps win)\n"
      "  --json        one JSON object per line per (measurement, mode) instead of the table\n"
      "  --help        this text\n\n"
      "Targets (sigbus mode, ratio to native): random first-touch write <= 2.4, random\n"
      "first-touch read <= 3.6, write after read <= 2.0, sequential first-touch read <= 0.5,\n"
      "sequential first-touch write <= 1.0, bandwidth 1.00 +- 0.03. A missed target is\n"
      "reported, not an error: the exit status is 0 unless an option is bad (2).\n",
      kProg);
}

bool AddModes(ArgParser& args, std::vector<FaultMode>* modes) {
  std::string v;
  if (!args.Value(&v)) return false;
  for (const std::string& name : SplitCommas(v)) {
    FaultMode m;
    if (!ParseFaultMode(name, &m)) {
      args.Fail("--mode '%s': want sigbus, thread or sigsegv", name.c_str());
      return false;
    }
    if (std::find(modes->begin(), modes->end(), m) == modes->end()) modes->push_back(m);
  }
  return true;
}

// Returns 0 to run, 1 after --help, 2 on a bad option.
int ParseOptions(int argc, char** argv, Options* o) {
  ArgParser args(kProg, argc, argv);
  int64_t pages = -1, reps = -1;
  while (args.Next()) {
    if (args.Is("--help") || args.Is("-h")) {
      PrintHelp();
      return 1;
    } else if (args.Is("--json")) {
      o->json = args.NoValue();
    } else if (args.Is("--quick")) {
      o->quick = args.NoValue();
    } else if (args.Is("--reps")) {
      args.IntValue(1, 1000, &reps);
    } else if (args.Is("--pages")) {
      args.IntValue(16, kMaxPages / 2, &pages);
    } else if (args.Is("--mode")) {
      AddModes(args, &o->modes);
    } else if (args.Is("--fault-around")) {
      int64_t n = 0;
      if (args.IntValue(1, 64, &n)) {
        if ((n & (n - 1)) != 0) {
          args.Fail("--fault-around %lld: want a power of two", static_cast<long long>(n));
        }
        o->fault_around = n;
      }
    } else {
      args.Unknown();
    }
  }
  if (args.failed()) return 2;
  if (o->quick) {
    o->pages = 1024;
    o->reps = 1;
    o->passes = 1;
  }
  if (pages > 0) o->pages = pages;
  if (reps > 0) o->reps = reps;
  // Bandwidth over less than 256 MiB would measure the L3 cache (260 MiB here), not memory.
  o->bw_pages = o->quick ? o->pages : std::max<int64_t>(o->pages, kMinBandwidthPages);
  if (o->modes.empty()) {
    o->modes = {FaultMode::kUffdSigbus, FaultMode::kUffdThread, FaultMode::kSigsegv};
  }
  return 0;
}

int Main(int argc, char** argv) {
  Context ctx;
  int parsed = ParseOptions(argc, argv, &ctx.options);
  if (parsed != 0) return parsed == 1 ? 0 : 2;
  const uint64_t t0 = NowNs();
  Orders orders{SequentialOrder(ctx.options.pages), ShuffledOrder(ctx.options.pages, kSeed),
                SparseOrder(ctx.options.pages, kSeed)};
  if (!ctx.options.json) PrintTableHeader(ctx.options);
  for (FaultMode mode : ctx.options.modes) RunMode(mode, orders, ctx);
  if (!ctx.options.json) {
    std::printf("\ntotal %.1f s\n", static_cast<double>(NowNs() - t0) * 1e-9);
  }
  return 0;
}

}  // namespace
}  // namespace emu::bench

int main(int argc, char** argv) { return emu::bench::Main(argc, argv); }
