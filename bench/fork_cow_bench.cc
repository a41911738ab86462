// fork_cow_bench: what an emulated fork costs per resident page, and what the
// copy-on-write faults after it cost, per fault mode, next to the kernel's
// fork() and first writes of the same memory measured in the same run.
//
// One run of each side, on a fresh mapping of --sizes, every page written
// first (resident, untimed):
//   fork         emu: AddressSpace::Fork(); kernel: fork(), until it returns
//                in the parent (the child blocks reading a pipe)
//   cow_fault    the parent writes one byte to every page, ascending, while
//                the child is alive: every write is a copy-on-write fault
//   reuse_fault  then the child writes one byte to every page: each frame is
//                mapped once now, so it is reused without a copy (emu: timed
//                here; kernel: timed in the child and sent back on a pipe)
//   exit         emu: the child address space destroyed; kernel: the child
//                told to _exit(0) until waitpid() returns (so a wake-up of
//                each process is included)
// All four are ns per page (p50 over --reps after one warm-up; lower is
// better), ratio = emu p50 / kernel p50. Emu and kernel alternate inside one
// repetition loop (which goes first flips each repetition), so machine noise
// lands on both.
//
// The kernel side runs with no emu machine alive in the process: fork() of a
// process with a userfaultfd-registered arena and emulator threads would
// measure those too. So every emu run creates its machine (16 GiB arena) and
// destroys it after; the machine's frame pool (a memfd, created by the first
// fork of a machine) is created before the timed fork.
//
// Both sides check what happened: emu's vmstat must count fork_shared_pages,
// cow_page and pgreuse equal to the pages of each run, and on both sides the
// child must still read the parent's bytes from before its writes. A mismatch
// is reported and the exit status is 1. The table prints the counters' totals
// after each mode; --json adds them (over the runs of that size) to each row.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

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
#include "fault/host_backends.h"
#include "fault/machine_factory.h"

namespace emu::bench {
namespace {

constexpr char kProg[] = "fork_cow_bench";
constexpr uint64_t kArenaBytes = uint64_t{16} << 30;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr int64_t kMaxSizeMiB = 4096;  // parent and child windows fit the arena

// The measurements of one run, in the order they happen.
enum Measurement { kFork, kCowFault, kReuseFault, kExit, kNrMeasurements };

struct Spec {
  const char* name;   // JSON name
  const char* label;  // table label
};

constexpr Spec kSpecs[kNrMeasurements] = {
    {"fork", "fork"},
    {"cow_fault", "COW fault (parent write)"},
    {"reuse_fault", "reuse fault (child write)"},
    {"exit", "exit (child teardown)"},
};

struct Options {
  std::vector<FaultMode> modes;
  std::vector<int64_t> sizes_mib = {16, 64, 256};
  int64_t reps = 5;
  bool json = false;
  bool quick = false;
};

// ---- Access kernels ----

__attribute__((noinline)) void WritePages(char* base, size_t pages, char value) {
  for (size_t i = 0; i < pages; i++) {
    *reinterpret_cast<volatile char*>(base + i * kHostPageSize) = value;
  }
}

// The number of pages whose first byte is not `value`.
__attribute__((noinline)) size_t CountOtherThan(const char* base, size_t pages, char value) {
  size_t bad = 0;
  for (size_t i = 0; i < pages; i++) {
    bad += *reinterpret_cast<const volatile char*>(base + i * kHostPageSize) != value;
  }
  return bad;
}

// Bytes written: 1 before the fork, 2 by the parent after it, 3 by the child.
constexpr char kBefore = 1, kParent = 2, kChild = 3;

// ---- One run ----

struct Sample {
  double ns_per_page[kNrMeasurements] = {};
};

// Emu's counters over one run.
struct Events {
  uint64_t fork_shared_pages = 0, cow_page = 0, pgreuse = 0;
  void Add(const Events& e) {
    fork_shared_pages += e.fork_shared_pages;
    cow_page += e.cow_page;
    pgreuse += e.pgreuse;
  }
};

Events ReadEvents(const Machine& m) {
  return {m.vmstat().Get(VmEvent::k_fork_shared_pages), m.vmstat().Get(VmEvent::k_cow_page),
          m.vmstat().Get(VmEvent::k_pgreuse)};
}

Events Delta(const Events& a, const Events& b) {
  return {b.fork_shared_pages - a.fork_shared_pages, b.cow_page - a.cow_page,
          b.pgreuse - a.pgreuse};
}

// What a run ended with: ok, a mode that cannot run here (skip), or a failure.
struct Result {
  enum Kind { kOk, kSkip, kFail } kind = kOk;
  std::string why;
  static Result Ok() { return {}; }
  static Result Skip(std::string w) { return {kSkip, std::move(w)}; }
  static Result Fail(std::string w) { return {kFail, std::move(w)}; }
};

double PerPage(uint64_t t0, uint64_t t1, size_t pages) {
  return static_cast<double>(t1 - t0) / static_cast<double>(pages);
}

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// One emulated run on its own machine, destroyed before returning.
Result EmuRun(FaultMode mode, size_t pages, Sample* out, Events* events) {
  const size_t bytes = pages * kHostPageSize;
  MachineOptions mo;
  mo.fault_mode = mode;
  mo.arena_bytes = kArenaBytes;
  auto machine = CreateMachine(mo);
  if (!machine.ok()) return Result::Skip("machine: " + Msg(machine.status()));
  Machine& m = **machine;
  auto pool = m.EnsureFramePool();  // once per machine, not part of a fork's cost
  if (!pool.ok()) return Result::Fail("frame pool: " + Msg(pool.status()));
  auto as = m.CreateAddressSpace(bytes);
  if (!as.ok()) return Result::Fail("address space: " + Msg(as.status()));
  AddressSpace& parent = **as;
  auto addr = parent.Mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  if (!addr.ok()) return Result::Fail("mmap: " + Msg(addr.status()));
  char* p = reinterpret_cast<char*>(*addr);
  WritePages(p, pages, kBefore);
  if (parent.rss_anon() != pages) {
    return Result::Fail("after writing " + std::to_string(pages) + " pages, rss_anon is " +
                        std::to_string(parent.rss_anon()));
  }

  const Events e0 = ReadEvents(m);
  const uint64_t t0 = NowNs();
  auto forked = parent.Fork();
  const uint64_t t1 = NowNs();
  if (!forked.ok()) return Result::Fail("fork: " + Msg(forked.status()));
  std::unique_ptr<AddressSpace> child = std::move(*forked);
  char* c = reinterpret_cast<char*>(child->window().start + (*addr - parent.window().start));

  const uint64_t t2 = NowNs();
  WritePages(p, pages, kParent);
  const uint64_t t3 = NowNs();
  const size_t child_stale = CountOtherThan(c, pages, kBefore);

  const uint64_t t4 = NowNs();
  WritePages(c, pages, kChild);
  const uint64_t t5 = NowNs();
  const size_t parent_stale = CountOtherThan(p, pages, kParent);
  const Events e1 = ReadEvents(m);

  const uint64_t t6 = NowNs();
  child.reset();
  const uint64_t t7 = NowNs();
  as->reset();  // address spaces go before their machine

  out->ns_per_page[kFork] = PerPage(t0, t1, pages);
  out->ns_per_page[kCowFault] = PerPage(t2, t3, pages);
  out->ns_per_page[kReuseFault] = PerPage(t4, t5, pages);
  out->ns_per_page[kExit] = PerPage(t6, t7, pages);
  *events = Delta(e0, e1);
  if (child_stale != 0 || parent_stale != 0) {
    return Result::Fail("emu: " + std::to_string(child_stale) +
                        " child pages lost the bytes from before the fork after the parent "
                        "wrote, and " + std::to_string(parent_stale) +
                        " parent pages changed when the child wrote");
  }
  return Result::Ok();
}

bool WriteAll(int fd, const void* buf, size_t len) {
  const char* b = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t n = write(fd, b, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    b += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool ReadAll(int fd, void* buf, size_t len) {
  char* b = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = read(fd, b, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    b += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// What the kernel's child sends back after its writes.
struct ChildReport {
  uint64_t reuse_ns = 0;
  uint64_t stale = 0;  // pages that did not read kBefore before its writes
};

// The forked child: waits for the parent's writes, checks it still sees its
// own bytes, writes every page (timed), reports, and waits to be told to exit.
[[noreturn]] void KernelChild(char* p, size_t pages, int go, int report) {
  char cmd;
  if (!ReadAll(go, &cmd, 1)) _exit(3);
  ChildReport r;
  r.stale = CountOtherThan(p, pages, kBefore);
  const uint64_t t0 = NowNs();
  WritePages(p, pages, kChild);
  r.reuse_ns = NowNs() - t0;
  if (!WriteAll(report, &r, sizeof(r))) _exit(4);
  ReadAll(go, &cmd, 1);  // EOF or a byte: exit either way
  _exit(0);
}

// One native run. Called with no emu machine alive.
Result KernelRun(size_t pages, Sample* out) {
  const size_t bytes = pages * kHostPageSize;
  char* p = MapNative(bytes);
  if (p == nullptr) return Result::Fail(std::string("native mmap: ") + std::strerror(errno));
  WritePages(p, pages, kBefore);
  int go[2], report[2];
  if (pipe2(go, O_CLOEXEC) != 0) {
    UnmapNative(p, bytes);
    return Result::Fail(std::string("pipe: ") + std::strerror(errno));
  }
  if (pipe2(report, O_CLOEXEC) != 0) {
    int err = errno;
    close(go[0]);
    close(go[1]);
    UnmapNative(p, bytes);
    return Result::Fail(std::string("pipe: ") + std::strerror(err));
  }
  std::fflush(nullptr);  // nothing buffered is written twice
  const uint64_t t0 = NowNs();
  const pid_t pid = fork();
  const uint64_t t1 = NowNs();
  if (pid == 0) {
    close(go[1]);
    close(report[0]);
    KernelChild(p, pages, go[0], report[1]);
  }
  close(go[0]);
  close(report[1]);
  Result result;
  ChildReport r;
  uint64_t t2 = 0, t3 = 0, t4 = 0, t5 = 0;
  if (pid < 0) {
    result = Result::Fail(std::string("fork: ") + std::strerror(errno));
  } else {
    t2 = NowNs();
    WritePages(p, pages, kParent);
    t3 = NowNs();
    const char cmd = 'w';
    if (!WriteAll(go[1], &cmd, 1) || !ReadAll(report[0], &r, sizeof(r))) {
      result = Result::Fail("kernel: the child did not report");
    }
    t4 = NowNs();
    close(go[1]);  // EOF: the child exits
    go[1] = -1;
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    t5 = NowNs();
    if (result.kind == Result::kOk && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
      result = Result::Fail("kernel: the child ended with status " + std::to_string(st));
    }
  }
  if (go[1] >= 0) close(go[1]);
  close(report[0]);
  const size_t parent_stale = CountOtherThan(p, pages, kParent);
  UnmapNative(p, bytes);
  if (result.kind != Result::kOk) return result;
  if (r.stale != 0 || parent_stale != 0) {
    return Result::Fail("kernel: " + std::to_string(r.stale) + " child pages and " +
                        std::to_string(parent_stale) + " parent pages held the wrong bytes");
  }
  out->ns_per_page[kFork] = PerPage(t0, t1, pages);
  out->ns_per_page[kCowFault] = PerPage(t2, t3, pages);
  out->ns_per_page[kReuseFault] = static_cast<double>(r.reuse_ns) / static_cast<double>(pages);
  out->ns_per_page[kExit] = PerPage(t4, t5, pages);
  return Result::Ok();
}

// ---- Output ----

struct Row {
  const Spec* spec = nullptr;
  FaultMode mode = FaultMode::kUffdSigbus;
  int64_t size_mib = 0;
  Summary emu;     // ns/page
  Summary kernel;  // ns/page
  Events events;    // emu's counters over every run of this size (warm-up included)
  uint64_t runs = 0;
  std::string skipped;  // non-empty: the mode could not run
  double ratio() const { return emu.p50 / kernel.p50; }
};

struct Context {
  Options options;
  std::string config;  // MachineOptions::ToString() of the mode being run
};

std::string ModeName(FaultMode m) { return std::string(FaultModeName(m)); }

void PrintTableHeader(const Options& o) {
  std::string sizes;
  for (int64_t s : o.sizes_mib) sizes += (sizes.empty() ? "" : ",") + std::to_string(s);
  std::printf("%s: git %s, %s, nproc %d, page %ld B, sizes %s MiB, reps %lld (+1 warm-up)\n",
              kProg, GitSha(), CompilerVersion(), Nproc(), HostPageSize(), sizes.c_str(),
              static_cast<long long>(o.reps));
  std::printf("ns per resident page (p50), lower is better; ratio = emu / kernel\n\n");
  std::printf("%-26s %8s %-7s %12s %15s %7s\n", "measurement", "size", "mode", "emu ns/page",
              "kernel ns/page", "ratio");
  std::fflush(stdout);
}

void PrintTableRow(const Row& r) {
  char size[32];
  std::snprintf(size, sizeof(size), "%lld MiB", static_cast<long long>(r.size_mib));
  std::printf("%-26s %8s %-7s %12.1f %15.1f %7.2f\n", r.spec->label, size,
              ModeName(r.mode).c_str(), r.emu.p50, r.kernel.p50, r.ratio());
  std::fflush(stdout);
}

void PrintJsonRow(const Row& r, const Context& ctx) {
  JsonLine j;
  j.Str("name", std::string("fork_cow_") + r.spec->name).Str("mode", ModeName(r.mode));
  if (r.skipped.empty()) {
    j.Num("value", r.emu.p50);
  } else {
    j.Null("value");
  }
  j.Str("unit", "ns/page").Str("peer", "kernel").Num("peer_value", r.kernel.p50);
  j.Num("ratio", r.skipped.empty() ? r.ratio() : std::nan(""));
  j.Num("min", r.emu.min).Num("max", r.emu.max);
  j.Num("peer_min", r.kernel.min).Num("peer_max", r.kernel.max);
  j.Int("size_mib", r.size_mib).Int("pages", r.size_mib * static_cast<int64_t>(kMiB / kHostPageSize));
  j.Int("reps", ctx.options.reps);
  j.Str("git_sha", GitSha()).Str("compiler", CompilerVersion()).Int("nproc", Nproc());
  j.Str("config", ctx.config);
  if (r.skipped.empty()) {
    // The counters that prove what the runs did: each equals runs x pages.
    j.Int("runs", static_cast<int64_t>(r.runs));
    j.Int("fork_shared_pages", static_cast<int64_t>(r.events.fork_shared_pages));
    j.Int("cow_page", static_cast<int64_t>(r.events.cow_page));
    j.Int("pgreuse", static_cast<int64_t>(r.events.pgreuse));
  } else {
    j.Str("skipped", r.skipped);
  }
  j.Print();
}

void Report(const Row& r, const Context& ctx) {
  if (ctx.options.json) {
    PrintJsonRow(r, ctx);
  } else if (r.skipped.empty()) {
    PrintTableRow(r);
  }
}

// Reports every measurement of `mode` as skipped.
void ReportSkipped(FaultMode mode, const std::string& why, const Context& ctx) {
  if (!ctx.options.json) {
    std::printf("%-26s %8s %-7s skipped: %s\n", "(all)", "", ModeName(mode).c_str(), why.c_str());
    std::fflush(stdout);
    return;
  }
  for (int64_t size : ctx.options.sizes_mib) {
    for (const Spec& spec : kSpecs) {
      Row r;
      r.spec = &spec;
      r.mode = mode;
      r.size_mib = size;
      r.skipped = why;
      PrintJsonRow(r, ctx);
    }
  }
}

// ---- One mode ----

// Runs the kernel and emu in the order that rep `r` gets: alternating which
// goes first, so neither side always runs on a cache the other just disturbed.
template <typename Fn>
Result BothSides(int64_t r, Fn&& run) {
  Result a = run(/*emu=*/r % 2 != 0);
  if (a.kind != Result::kOk) return a;
  return run(/*emu=*/r % 2 == 0);
}

// Returns false when the mode failed (not when it was skipped).
bool RunMode(FaultMode mode, Context& ctx) {
  MachineOptions mo;
  mo.fault_mode = mode;
  mo.arena_bytes = kArenaBytes;
  ctx.config = mo.ToString();
  if (mode != FaultMode::kSigsegv) {
    std::string why;
    if (!UffdAvailable(&why)) {
      ReportSkipped(mode, "userfaultfd is not usable here (" + why + ")", ctx);
      return true;
    }
  }
  const uint64_t pages_per_mib = kMiB / kHostPageSize;
  Events total;
  uint64_t expected = 0;
  for (int64_t size : ctx.options.sizes_mib) {
    const size_t pages = static_cast<size_t>(size) * pages_per_mib;
    std::vector<double> emu[kNrMeasurements], kernel[kNrMeasurements];
    Events size_events;
    uint64_t runs = 0;
    for (int64_t r = -1; r < ctx.options.reps; r++) {  // r == -1: warm-up
      Sample e, k;
      Events ev;
      Result res = BothSides(r + 1, [&](bool is_emu) {
        return is_emu ? EmuRun(mode, pages, &e, &ev) : KernelRun(pages, &k);
      });
      if (res.kind == Result::kSkip) {
        ReportSkipped(mode, res.why, ctx);
        return true;
      }
      if (res.kind == Result::kFail) {
        std::fprintf(stderr, "%s: %s, %lld MiB: %s\n", kProg, ModeName(mode).c_str(),
                     static_cast<long long>(size), res.why.c_str());
        return false;
      }
      size_events.Add(ev);
      runs++;
      if (ev.fork_shared_pages != pages || ev.cow_page != pages || ev.pgreuse != pages) {
        std::fprintf(stderr,
                     "%s: %s, %lld MiB: emu's counters do not match the run: "
                     "fork_shared_pages %llu, cow_page %llu, pgreuse %llu; expected %zu each "
                     "(pages resident at the fork, written by the parent, written by the child)\n",
                     kProg, ModeName(mode).c_str(), static_cast<long long>(size),
                     static_cast<unsigned long long>(ev.fork_shared_pages),
                     static_cast<unsigned long long>(ev.cow_page),
                     static_cast<unsigned long long>(ev.pgreuse), pages);
        return false;
      }
      if (r < 0) continue;
      for (int i = 0; i < kNrMeasurements; i++) {
        emu[i].push_back(e.ns_per_page[i]);
        kernel[i].push_back(k.ns_per_page[i]);
      }
    }
    for (int i = 0; i < kNrMeasurements; i++) {
      Row row;
      row.spec = &kSpecs[i];
      row.mode = mode;
      row.size_mib = size;
      row.emu = Summarize(emu[i]);
      row.kernel = Summarize(kernel[i]);
      row.events = size_events;
      row.runs = runs;
      Report(row, ctx);
    }
    total.Add(size_events);
    expected += runs * pages;
  }
  auto u = [](uint64_t v) { return static_cast<unsigned long long>(v); };
  if (!ctx.options.json) {
    std::printf("  %s vmstat over all runs: fork_shared_pages %llu, cow_page %llu, pgreuse %llu "
                "(expected %llu each: pages resident at fork, written by parent, by child)\n",
                ModeName(mode).c_str(), u(total.fork_shared_pages), u(total.cow_page),
                u(total.pgreuse), u(expected));
    std::fflush(stdout);
  }
  return true;
}

// ---- Options ----

void PrintHelp() {
  std::printf(
      "usage: %s [options]\n"
      "Emulated fork cost per resident page and the copy-on-write faults after it,\n"
      "for each fault mode, next to the kernel's fork() and first writes of the same\n"
      "memory measured in the same run.\n\n"
      "  --mode M      sigbus, thread or sigsegv; repeatable or comma-separated\n"
      "                (default: all three)\n"
      "  --sizes LIST  mapping sizes in MiB, comma-separated (default 16,64,256)\n"
      "  --reps N      timed repetitions after one warm-up (default 5)\n"
      "  --quick       8 MiB and 1 repetition (smoke test; explicit --sizes/--reps win)\n"
      "  --json        one JSON object per line per (measurement, size, mode), with\n"
      "                emu's counters over its runs, instead of the table\n"
      "  --help        this text\n\n"
      "Exit status: 0; 1 when a run fails or emu's counters (fork_shared_pages,\n"
      "cow_page, pgreuse) do not equal the pages of each run; 2 for a bad option.\n",
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

// Returns 0 to run, 1 after --help, 2 on a bad option.
int ParseOptions(int argc, char** argv, Options* o) {
  ArgParser args(kProg, argc, argv);
  int64_t reps = -1;
  std::vector<int64_t> sizes;
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
    } else if (args.Is("--sizes")) {
      ParseSizes(args, &sizes);
    } else if (args.Is("--mode")) {
      AddModes(args, &o->modes);
    } else {
      args.Unknown();
    }
  }
  if (args.failed()) return 2;
  if (o->quick) {
    o->sizes_mib = {8};
    o->reps = 1;
  }
  if (!sizes.empty()) o->sizes_mib = sizes;
  if (reps > 0) o->reps = reps;
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
  if (!ctx.options.json) PrintTableHeader(ctx.options);
  bool ok = true;
  for (FaultMode mode : ctx.options.modes) ok = RunMode(mode, ctx) && ok;
  if (!ctx.options.json) {
    std::printf("\ntotal %.1f s%s\n", static_cast<double>(NowNs() - t0) * 1e-9,
                ok ? "" : " (FAILED, see stderr)");
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace emu::bench

int main(int argc, char** argv) { return emu::bench::Main(argc, argv); }
