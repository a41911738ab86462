// swap_bench: emu under a memory limit, swapping to a file, next to the Linux
// kernel doing the same work under the same limit in the same run (a cgroup v1
// memory.limit_in_bytes and a swap file in the same directory, so on the same
// disk).
//
// Every run is a forked child with a working set of --ratio times the limit.
// A fill pass writes every word of every page (a pattern of page and word
// index; timed, and reported in a table of its own), then the measured phase
// runs one pattern:
//   seq   --passes sequential passes, one 8-byte load per page, verified
//   rand  --accesses x pages uniform random page accesses, 1 in 4 a write of
//         word 0 (a new version), the others a load checked against it
//   zipf  the same count with Zipf skew (theta 0.99, YCSB's generator), the
//         hot ranks scattered over the working set by a fixed permutation
//   mt    4 threads, each owning every 4th page, uniform random as rand
// and a final pass checks every word of every page. A wrong word, a crash or a
// hang makes the row FAILED and the exit status 1. The access plan is built
// in the parent before the fork, so both sides replay the same accesses.
//
// Reported per (pattern, ratio, policy, readahead): the phase's time on each
// side and the ratio emu / kernel (lower is better); swap-out MB/s over the
// phase (pswpout x 4 KiB / time; kernel: /proc/vmstat, system-wide); swap-in
// latency p50/p99 over the slowest M accesses of the phase, M = that run's
// major faults (every access is timed with CLOCK_MONOTONIC); major faults
// (emu: vmstat pgmajfault; kernel: getrusage ru_majflt); peak memory. Emu's
// peak is the growth of the process's VmHWM over the run (a warm-up machine
// pages emu's code in first, so this is memory: frames plus emu's own
// metadata), next to mem_map's peak frames; the kernel's is the cgroup's
// memory.max_usage_in_bytes.
//
// Targets: seq ratio <= 1.0, rand/zipf/mt <= 1.5, emu peak <= limit + 5%.
// A missed target is reported, not an error.
//
// The kernel side needs root, the cgroup v1 memory controller at
// /sys/fs/cgroup/memory and swapon(2) permission; otherwise one line says why
// and only emu runs. The swap file and the cgroup are removed at exit, on
// errors and on SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGPIPE; what a SIGKILLed run
// left is removed by the next one.
#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/harness.h"
#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/vmstat.h"
#include "fault/machine_factory.h"
#include "swap/swap_device.h"
#include "swap/vmscan.h"

extern char** environ;

namespace emu::bench {
namespace {

constexpr char kProg[] = "swap_bench";
constexpr uint64_t kSeed = 0x5eed5a9ull;
constexpr size_t kPage = kHostPageSize;
constexpr size_t kWords = kPage / sizeof(uint64_t);
constexpr size_t kThreads = 4;
constexpr uint32_t kWriteBit = 0x80000000u;
constexpr double kZipfTheta = 0.99;
constexpr double kRssSlack = 0.05;
constexpr char kCgroupRoot[] = "/sys/fs/cgroup/memory";
constexpr double kMiB = 1024.0 * 1024.0;

enum class Pat { kSeq, kRand, kZipf, kMt };
struct PatSpec {
  Pat pat;
  const char* name;
  double target;  // largest time ratio emu / kernel
};
constexpr PatSpec kPats[] = {{Pat::kSeq, "seq", 1.0},
                             {Pat::kRand, "rand", 1.5},
                             {Pat::kZipf, "zipf", 1.5},
                             {Pat::kMt, "mt", 1.5}};

struct Variant {
  std::string policy;
  int readahead;
};

struct Options {
  uint64_t limit = uint64_t{256} << 20;
  uint64_t swap_bytes = 0;  // 0: twice the largest working set
  std::vector<double> ratios;
  std::vector<const PatSpec*> pats;
  std::vector<std::string> policies;
  std::vector<int> readaheads;
  std::vector<Variant> variants;
  int64_t passes = 2;
  double accesses = 2.0;  // random accesses per page
  int64_t reps = 1;
  int64_t timeout_s = 600;  // per child run
  std::string swap_dir;
  FaultMode mode = FaultMode::kUffdSigbus;
  int64_t poll_us = MachineOptions{}.swap_read_poll_us;
  bool csum = MachineOptions{}.swap_cache_checksum;
  bool json = false, quick = false, no_kernel = false;
};

// ---- The data: word w of page p after v writes to word 0 ----

inline uint64_t Word(uint64_t page, uint64_t word, uint32_t version) {
  return (page * 0x9E3779B97F4A7C15ull) ^ (word * 0xBF58476D1CE4E5B9ull) ^
         (uint64_t{version} << 40) ^ 0x5a5a5a5aull;
}

// ---- The plan: page indices per thread (kWriteBit set for a write) ----

struct Plan {
  const PatSpec* spec = nullptr;
  double ratio = 0;
  size_t pages = 0;
  std::vector<std::vector<uint32_t>> ops;  // one vector per thread
  size_t accesses() const {
    size_t n = 0;
    for (const auto& v : ops) n += v.size();
    return n;
  }
};

// Zipf ranks 0..n-1 (Gray et al., "Quickly generating billion-record
// synthetic databases", as YCSB's ZipfianGenerator).
class Zipf {
 public:
  Zipf(uint64_t n, double theta) : n_(n) {
    for (uint64_t i = 1; i <= n; i++) zetan_ += 1.0 / std::pow(static_cast<double>(i), theta);
    const double zeta2 = 1.0 + std::pow(0.5, theta);
    alpha_ = 1.0 / (1.0 - theta);
    eta_ = (1.0 - std::pow(2.0 / static_cast<double>(n), 1.0 - theta)) / (1.0 - zeta2 / zetan_);
    half_ = zeta2;
  }
  uint64_t Next(std::mt19937_64& rng) const {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    const double uz = u * zetan_;
    if (uz < 1.0) return 0;
    if (uz < half_) return 1;
    double r = static_cast<double>(n_) * std::pow(eta_ * u - eta_ + 1.0, alpha_);
    return std::min<uint64_t>(static_cast<uint64_t>(r), n_ - 1);
  }

 private:
  uint64_t n_;
  double zetan_ = 0, alpha_ = 0, eta_ = 0, half_ = 0;
};

// `n` accesses to pages first + k * stride, k < count: uniform, or through
// `zipf` (then over all pages).
std::vector<uint32_t> RandomOps(size_t first, size_t stride, size_t count, size_t n, uint64_t seed,
                                const Zipf* zipf, const std::vector<uint32_t>* perm) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> ops(n);
  for (size_t i = 0; i < n; i++) {
    uint32_t page =
        zipf ? (*perm)[zipf->Next(rng)] : static_cast<uint32_t>(first + stride * (rng() % count));
    ops[i] = page | (rng() % 4 == 0 ? kWriteBit : 0);
  }
  return ops;
}

Plan MakePlan(const PatSpec& spec, double ratio, const Options& o) {
  Plan plan;
  plan.spec = &spec;
  plan.ratio = ratio;
  plan.pages = static_cast<size_t>(std::llround(ratio * static_cast<double>(o.limit) / kPage));
  const size_t n = static_cast<size_t>(o.accesses * static_cast<double>(plan.pages));
  switch (spec.pat) {
    case Pat::kSeq:
      plan.ops.emplace_back();
      for (int64_t pass = 0; pass < o.passes; pass++) {
        for (size_t p = 0; p < plan.pages; p++) plan.ops[0].push_back(static_cast<uint32_t>(p));
      }
      break;
    case Pat::kRand:
      plan.ops.push_back(RandomOps(0, 1, plan.pages, n, kSeed, nullptr, nullptr));
      break;
    case Pat::kZipf: {
      Zipf zipf(plan.pages, kZipfTheta);
      std::vector<uint32_t> perm = ShuffledOrder(plan.pages, kSeed + 1);
      plan.ops.push_back(RandomOps(0, 1, plan.pages, n, kSeed, &zipf, &perm));
      break;
    }
    case Pat::kMt: {
      // Thread t owns the pages p with p % kThreads == t: every thread then
      // finds the same share of its pages resident after the fill, and all
      // run at about the same pace to the end (with contiguous quarters,
      // the threads whose quarter the fill left resident finished at once
      // and the rest ran on a working set under the limit).
      for (size_t t = 0; t < kThreads; t++) {
        const size_t count = (plan.pages - t + kThreads - 1) / kThreads;
        plan.ops.push_back(
            RandomOps(t, kThreads, count, n / kThreads, kSeed + 10 + t, nullptr, nullptr));
      }
      break;
    }
  }
  return plan;
}

// ---- Small file helpers ----

bool WriteFile(const std::string& path, const std::string& text, int* err = nullptr) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  bool ok = fd >= 0 && write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  if (err) *err = ok ? 0 : errno;
  if (fd >= 0) close(fd);
  return ok;
}

std::string ReadFile(const std::string& path) {
  std::string out;
  FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

// The number after "key" at the start of a line of `text` (e.g. "pswpin 12",
// "VmHWM:  1234 kB"); 0 if absent.
uint64_t Field(const std::string& text, const std::string& key) {
  for (size_t pos = 0; pos < text.size();) {
    if (text.compare(pos, key.size(), key) == 0) {
      return std::strtoull(text.c_str() + pos + key.size(), nullptr, 10);
    }
    pos = text.find('\n', pos);
    if (pos == std::string::npos) break;
    pos++;
  }
  return 0;
}

uint64_t StatusBytes(const char* key) { return Field(ReadFile("/proc/self/status"), key) * 1024; }

// Resets VmHWM to the current RSS and returns that RSS.
int64_t ResetHwm() {
  if (!WriteFile("/proc/self/clear_refs", "5")) return -1;
  return static_cast<int64_t>(StatusBytes("VmRSS:"));
}

// ---- One run (in a forked child) ----

// What a child sends back through its pipe (plain data).
struct RunResult {
  bool ok = false;
  bool skipped = false;  // emu cannot run here (no userfaultfd permission): not a failure
  char error[256] = {};
  double fill_s = NAN, phase_s = NAN;
  double wall_s = NAN;  // the whole child, set by the parent
  uint64_t accesses = 0, majflt = 0, fill_pswpout = 0, pswpout = 0, pswpin = 0;
  uint64_t peak_bytes = 0;  // emu: mem_map peak; kernel: cgroup max usage
  int64_t hwm_bytes = -1;   // growth of VmHWM over the run (-1: unknown)
  double in_p50_us = NAN, in_p99_us = NAN;
  uint64_t bad_reads = 0, bad_pages = 0;
  uint64_t swap_ra = 0, pgsteal = 0, pgsteal_clean = 0, allocstall = 0, oom = 0;
  char swap_desc[128] = {};  // emu: the swap device
};

struct Snap {
  uint64_t majflt = 0, pswpin = 0, pswpout = 0;
};
using SnapFn = std::function<Snap()>;

// Everything the workload writes besides the working set, allocated and
// touched before the memory pressure starts (and, for the kernel, before the
// child joins the cgroup, so it is charged outside the limit).
struct Scratch {
  explicit Scratch(const Plan& plan) : versions(plan.pages, 0) {
    for (const auto& ops : plan.ops) lat.emplace_back(ops.size(), 0);
  }
  std::vector<uint32_t> versions;
  std::vector<std::vector<uint32_t>> lat;  // ns per access, per thread
};

__attribute__((noinline)) void FillPages(char* base, size_t pages) {
  for (size_t p = 0; p < pages; p++) {
    auto* w = reinterpret_cast<uint64_t*>(base + p * kPage);
    for (size_t i = 0; i < kWords; i++) w[i] = Word(p, i, 0);
  }
  ClobberMemory();
}

// Replays `ops`, timing each access; returns the number of bad reads.
__attribute__((noinline)) uint64_t RunOps(char* base, const std::vector<uint32_t>& ops,
                                          uint32_t* versions, uint32_t* lat) {
  uint64_t bad = 0, sum = 0;
  for (size_t i = 0; i < ops.size(); i++) {
    const uint32_t page = ops[i] & ~kWriteBit;
    auto* w = reinterpret_cast<volatile uint64_t*>(base + uint64_t{page} * kPage);
    const uint64_t t0 = NowNs();
    if (ops[i] & kWriteBit) {
      *w = Word(page, 0, ++versions[page]);
    } else {
      const uint64_t x = *w;
      sum += x;
      bad += x != Word(page, 0, versions[page]);
    }
    lat[i] = static_cast<uint32_t>(std::min<uint64_t>(NowNs() - t0, UINT32_MAX));
  }
  DoNotOptimize(sum);
  return bad;
}

// Checks every word of every page; returns the number of bad pages and
// describes the first in `error`.
uint64_t VerifyPages(const char* base, size_t pages, const uint32_t* versions, char* error,
                     size_t error_len) {
  uint64_t bad = 0;
  for (size_t p = 0; p < pages; p++) {
    auto* w = reinterpret_cast<const uint64_t*>(base + p * kPage);
    size_t i = 0;
    while (i < kWords && w[i] == Word(p, i, i == 0 ? versions[p] : 0)) i++;
    if (i == kWords) continue;
    if (bad++ == 0) {
      std::snprintf(error, error_len, "page %zu word %zu holds %#llx, want %#llx (version %u)", p,
                    i, static_cast<unsigned long long>(w[i]),
                    static_cast<unsigned long long>(Word(p, i, i == 0 ? versions[p] : 0)),
                    versions[p]);
    }
  }
  return bad;
}

// p50/p99 over the slowest `m` accesses of all threads.
void SwapInLatency(const Scratch& s, uint64_t m, RunResult* r) {
  std::vector<uint32_t> all;
  for (const auto& v : s.lat) all.insert(all.end(), v.begin(), v.end());
  m = std::min<uint64_t>(m, all.size());
  if (m == 0) return;
  std::nth_element(all.begin(), all.end() - static_cast<long>(m), all.end());
  std::vector<double> slow(all.end() - static_cast<long>(m), all.end());
  r->in_p50_us = Percentile(slow, 0.5) * 1e-3;
  r->in_p99_us = Percentile(slow, 0.99) * 1e-3;
}

// The fill pass, the measured phase and the check, on `base`.
// `rss0`: the RSS when VmHWM was reset (-1: unknown); the growth of VmHWM is
// taken before the latency statistics allocate.
void RunWorkload(const Plan& plan, char* base, Scratch& s, const SnapFn& snap, int64_t rss0,
                 RunResult* r) {
  const Snap s0 = snap();
  const uint64_t t0 = NowNs();
  FillPages(base, plan.pages);
  const uint64_t t1 = NowNs();
  const Snap s1 = snap();
  std::vector<uint64_t> bad(plan.ops.size(), 0);
  const uint64_t t2 = NowNs();
  if (plan.ops.size() == 1) {
    bad[0] = RunOps(base, plan.ops[0], s.versions.data(), s.lat[0].data());
  } else {
    std::vector<std::thread> threads;
    for (size_t t = 0; t < plan.ops.size(); t++) {
      threads.emplace_back(
          [&, t] { bad[t] = RunOps(base, plan.ops[t], s.versions.data(), s.lat[t].data()); });
    }
    for (auto& t : threads) t.join();
  }
  const uint64_t t3 = NowNs();
  const Snap s2 = snap();
  r->fill_s = static_cast<double>(t1 - t0) * 1e-9;
  r->phase_s = static_cast<double>(t3 - t2) * 1e-9;
  r->accesses = plan.accesses();
  r->fill_pswpout = s1.pswpout - s0.pswpout;
  r->pswpout = s2.pswpout - s1.pswpout;
  r->pswpin = s2.pswpin - s1.pswpin;
  r->majflt = s2.majflt - s1.majflt;
  for (uint64_t b : bad) r->bad_reads += b;
  r->bad_pages = VerifyPages(base, plan.pages, s.versions.data(), r->error, sizeof(r->error));
  if (rss0 >= 0) r->hwm_bytes = static_cast<int64_t>(StatusBytes("VmHWM:")) - rss0;
  SwapInLatency(s, r->majflt, r);
  r->ok = r->bad_pages == 0 && r->bad_reads == 0;
  if (!r->ok && r->bad_pages == 0) {
    std::snprintf(r->error, sizeof(r->error), "%llu reads saw a wrong word 0",
                  static_cast<unsigned long long>(r->bad_reads));
  }
}

// ---- The kernel peer: a cgroup v1 memory limit and a swap file ----

// What the signal handler must undo; plain buffers, async-signal-safe.
struct Cleanup {
  char cgroup[256];
  char swapfile[256];
  volatile sig_atomic_t swap_on;
  volatile pid_t child;
};
Cleanup g_cleanup;

// Async-signal-safe.
void UndoKernelPeer() {
  if (g_cleanup.swap_on) {
    swapoff(g_cleanup.swapfile);
    g_cleanup.swap_on = 0;
  }
  if (g_cleanup.swapfile[0]) unlink(g_cleanup.swapfile);
  g_cleanup.swapfile[0] = 0;
  for (int i = 0; g_cleanup.cgroup[0] && i < 100; i++) {  // EBUSY while the child's exit settles
    if (rmdir(g_cleanup.cgroup) == 0 || errno != EBUSY) break;
    timespec ts{0, 10 * 1000 * 1000};
    nanosleep(&ts, nullptr);
  }
  g_cleanup.cgroup[0] = 0;
}

void OnSignal(int sig) {
  pid_t c = g_cleanup.child;
  if (c > 0) {
    kill(c, SIGKILL);
    waitpid(c, nullptr, 0);
  }
  UndoKernelPeer();
  signal(sig, SIG_DFL);
  raise(sig);
}

std::string Errno(const std::string& what, int err) { return what + ": " + std::strerror(err); }

// What mkswap writes: a version 1 header in the first page (Linux:
// include/linux/swap.h union swap_header). For hosts without mkswap.
std::string WriteSwapHeader(const std::string& path, uint64_t bytes) {
  std::vector<char> page(kPage, 0);
  // version, last_page, nr_badpages
  const uint32_t info[3] = {1, static_cast<uint32_t>(bytes / kPage - 1), 0};
  std::memcpy(page.data() + 1024, info, sizeof(info));
  std::memcpy(page.data() + kPage - 10, "SWAPSPACE2", 10);
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  bool ok =
      fd >= 0 && pwrite(fd, page.data(), kPage, 0) == static_cast<ssize_t>(kPage) && fsync(fd) == 0;
  const int err = errno;
  if (fd >= 0) close(fd);
  return ok ? "" : Errno("write the swap header of " + path, err);
}

// mkswap PATH (stdout dropped), or the header written here when there is no
// mkswap; "" or why not.
std::string Mkswap(const std::string& path, uint64_t bytes) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  const char* argv[] = {"mkswap", path.c_str(), nullptr};
  pid_t pid;
  int err = posix_spawnp(&pid, "mkswap", &fa, nullptr, const_cast<char**>(argv), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (err == ENOENT) return WriteSwapHeader(path, bytes);
  if (err != 0) return Errno("mkswap", err);
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return "mkswap " + path + " failed";
  return "";
}

// Creates the swap file (mode 0600) of `bytes`: fallocate, or zeros written
// out when `zeros` (a filesystem whose unwritten extents swapon refuses).
std::string CreateSwapFile(const std::string& path, uint64_t bytes, bool zeros) {
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("create " + path, errno);
  std::snprintf(g_cleanup.swapfile, sizeof(g_cleanup.swapfile), "%s", path.c_str());
  std::string err;
  if (fchmod(fd, 0600) != 0) err = Errno("chmod " + path, errno);
  if (err.empty() && !zeros && fallocate(fd, 0, 0, static_cast<off_t>(bytes)) != 0) {
    err = Errno("fallocate " + path, errno);
  }
  std::vector<char> buf(zeros ? size_t{1} << 20 : 0, 0);
  for (uint64_t off = 0; err.empty() && zeros && off < bytes; off += buf.size()) {
    if (write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size())) {
      err = Errno("write " + path, errno);
    }
  }
  if (err.empty() && fsync(fd) != 0) err = Errno("fsync " + path, errno);
  close(fd);
  return err.empty() ? Mkswap(path, bytes) : err;
}

bool Gone(int pid) { return pid > 0 && kill(pid, 0) != 0 && errno == ESRCH; }

// Removes what a run killed by SIGKILL left behind: swap files
// emu-bench-PID.swap in /proc/swaps and cgroups emu-bench-PID whose PID is
// gone. Returns what it removed.
std::string RemoveStale() {
  std::string removed;
  const std::string swaps = ReadFile("/proc/swaps");
  for (size_t pos = swaps.find('\n'); pos != std::string::npos; pos = swaps.find('\n', pos)) {
    const std::string path = swaps.substr(pos + 1, swaps.find_first_of(" \t\n", pos + 1) - pos - 1);
    pos++;
    const size_t slash = path.rfind('/');
    int pid = 0;
    if (slash == std::string::npos ||
        std::sscanf(path.c_str() + slash + 1, "emu-bench-%d.swap", &pid) != 1 || !Gone(pid)) {
      continue;
    }
    if (swapoff(path.c_str()) == 0 && unlink(path.c_str()) == 0) removed += " " + path;
  }
  if (DIR* d = opendir(kCgroupRoot)) {
    while (dirent* e = readdir(d)) {
      int pid = 0;
      char tail = 0;
      if (std::sscanf(e->d_name, "emu-bench-%d%c", &pid, &tail) != 1 || !Gone(pid)) continue;
      const std::string dir = std::string(kCgroupRoot) + "/" + e->d_name;
      if (rmdir(dir.c_str()) == 0) removed += " " + dir;
    }
    closedir(d);
  }
  return removed;
}

struct KernelPeer {
  std::string unavailable;  // non-empty: why the kernel side does not run
  std::string cgroup, swapfile, note;

  // Sets up the cgroup and the swap file, or says why not in `unavailable`.
  void Setup(uint64_t limit, uint64_t swap_bytes, const std::string& dir) {
    unavailable = TrySetup(limit, swap_bytes, dir);
    if (!unavailable.empty()) Teardown();
  }
  void Teardown() { UndoKernelPeer(); }

 private:
  std::string TrySetup(uint64_t limit, uint64_t swap_bytes, const std::string& dir) {
    if (geteuid() != 0) return "not root (needs a cgroup and swapon)";
    if (access((std::string(kCgroupRoot) + "/memory.limit_in_bytes").c_str(), F_OK) != 0) {
      return std::string("no cgroup v1 memory controller at ") + kCgroupRoot;
    }
    const std::string stale = RemoveStale();
    const std::string other = ReadFile("/proc/swaps");
    const size_t nl = other.find('\n');
    const std::string active = nl == std::string::npos ? "" : other.substr(nl + 1);
    note = active.empty() ? "no other swap active"
                          : "WARNING: other swap already active (ours has priority 32767; one at "
                            "the same priority would interleave with it): " +
                                active;
    while (!note.empty() && note.back() == '\n') note.pop_back();
    if (!stale.empty()) note += "; removed what a killed run left:" + stale;
    cgroup = std::string(kCgroupRoot) + "/emu-bench-" + std::to_string(getpid());
    if (mkdir(cgroup.c_str(), 0755) != 0) return Errno("mkdir " + cgroup, errno);
    std::snprintf(g_cleanup.cgroup, sizeof(g_cleanup.cgroup), "%s", cgroup.c_str());
    int err = 0;
    if (!WriteFile(cgroup + "/memory.limit_in_bytes", std::to_string(limit), &err)) {
      return Errno("set " + cgroup + "/memory.limit_in_bytes", err);
    }
    swapfile = dir + "/emu-bench-" + std::to_string(getpid()) + ".swap";
    std::string why = CreateSwapFile(swapfile, swap_bytes, /*zeros=*/false);
    if (!why.empty()) return why;
    const int flags = SWAP_FLAG_PREFER | (32767 & SWAP_FLAG_PRIO_MASK);
    int rc = swapon(swapfile.c_str(), flags);
    if (rc != 0 && errno == EINVAL) {  // maybe unwritten extents: write it out and retry
      why = CreateSwapFile(swapfile, swap_bytes, /*zeros=*/true);
      if (!why.empty()) return why;
      rc = swapon(swapfile.c_str(), flags);
    }
    if (rc != 0) {
      const int e = errno;
      return Errno("swapon " + swapfile, e) +
             (e == EPERM || e == EINVAL ? " (a container, or a filesystem without swap files?)"
                                        : "");
    }
    g_cleanup.swap_on = 1;
    return "";
  }
};

// ---- Running a child ----

// The pipe's write end, in a child; SendResult sends at most once.
int g_result_fd = -1;
bool g_result_sent = false;

void SendResult(const RunResult& r) {
  if (g_result_sent) return;
  g_result_sent = true;
  const char* p = reinterpret_cast<const char*>(&r);
  for (size_t done = 0; done < sizeof(r);) {
    ssize_t k = write(g_result_fd, p + done, sizeof(r) - done);
    if (k <= 0) return;
    done += static_cast<size_t>(k);
  }
}

void Fail(RunResult* r, const std::string& what) {
  r->ok = false;
  std::snprintf(r->error, sizeof(r->error), "%s", what.c_str());
}

// Reads the child's result from `fd` until `deadline`; false on a hang or EOF.
bool ReadResult(int fd, uint64_t deadline, RunResult* r, bool* hung) {
  auto* out = reinterpret_cast<char*>(r);
  size_t got = 0;
  while (got < sizeof(*r)) {
    const uint64_t now = NowNs();
    const int ms = now >= deadline ? 0 : static_cast<int>((deadline - now) / 1000000);
    pollfd pfd{fd, POLLIN, 0};
    int n = poll(&pfd, 1, ms);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {
      *hung = true;
      return false;
    }
    ssize_t k = read(fd, out + got, sizeof(*r) - got);
    if (k <= 0) return false;
    got += static_cast<size_t>(k);
  }
  return true;
}

// Waits for `pid` until `deadline`, then kills it. Returns the wait status.
int Reap(pid_t pid, uint64_t deadline, bool* hung) {
  int st = 0;
  while (waitpid(pid, &st, WNOHANG) != pid) {
    if (*hung || NowNs() >= deadline) {
      *hung = true;
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      break;
    }
    timespec ts{0, 5 * 1000 * 1000};
    nanosleep(&ts, nullptr);
  }
  return st;
}

// Forks; the child runs `fn`, which fills in a RunResult and may send it
// early (SendResult, before its teardown); otherwise it is sent when `fn`
// returns. A crash, a hang past `timeout_s` or a crash at teardown come back
// as a failed result.
RunResult RunInChild(const std::function<void(RunResult*)>& fn, int64_t timeout_s) {
  RunResult r;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    Fail(&r, Errno("pipe", errno));
    return r;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid == 0) {
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE}) signal(sig, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // a parent killed by SIGKILL takes the child along
    close(fds[0]);
    g_result_fd = fds[1];
    RunResult mine;
    fn(&mine);
    SendResult(mine);
    _exit(0);
  }
  close(fds[1]);
  if (pid < 0) {
    close(fds[0]);
    Fail(&r, Errno("fork", errno));
    return r;
  }
  g_cleanup.child = pid;
  const uint64_t start = NowNs();
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(timeout_s) * 1000000000ull;
  bool hung = false;
  const bool got = ReadResult(fds[0], deadline, &r, &hung);
  close(fds[0]);
  const int st = Reap(pid, deadline, &hung);
  g_cleanup.child = 0;
  char why[128];
  if (hung) {
    std::snprintf(why, sizeof(why), "hung (killed after %lld s)",
                  static_cast<long long>(timeout_s));
  } else if (WIFSIGNALED(st)) {
    std::snprintf(why, sizeof(why), "killed by signal %d (%s)", WTERMSIG(st),
                  strsignal(WTERMSIG(st)));
  } else {
    std::snprintf(why, sizeof(why), "exit status %d", WEXITSTATUS(st));
  }
  if (!got) {
    r = RunResult();
    Fail(&r, std::string("no result: ") + why);
  } else if (r.ok && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
    Fail(&r, std::string("after the run, at teardown: ") + why);
  }
  r.wall_s = static_cast<double>(NowNs() - start) * 1e-9;
  return r;
}

// A small machine under a 4 MiB limit that swaps 8 MiB out and back, so that
// the code of emu (and its libraries) is paged in before VmHWM is reset and
// the measured machine's VmHWM growth counts memory, not program text.
void WarmUp(MachineOptions mo) {
  mo.mem_limit = kMinMemLimit;
  mo.swap_bytes = uint64_t{16} << 20;
  auto machine = CreateMachine(mo);
  if (!machine.ok()) return;
  auto as = (*machine)->CreateAddressSpace(Machine::kGranule);
  if (!as.ok()) return;
  const size_t bytes = 2 * kMinMemLimit;
  auto p = (*as)->Mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  if (!p.ok()) return;
  char* base = reinterpret_cast<char*>(*p);
  std::vector<uint32_t> versions(bytes / kPage, 0);
  FillPages(base, bytes / kPage);
  char error[128];
  DoNotOptimize(VerifyPages(base, bytes / kPage, versions.data(), error, sizeof(error)));
  as->reset();
  machine->reset();
  malloc_trim(0);
}

RunResult EmuRun(const Plan& plan, const Variant& v, const Options& o) {
  return RunInChild(
      [&](RunResult* r) {
        Scratch scratch(plan);
        MachineOptions mo;
        mo.mem_limit = o.limit;
        mo.swap_bytes = o.swap_bytes;
        mo.swap_dir = o.swap_dir;
        mo.swap_readahead_pages = v.readahead;
        mo.reclaim_policy = v.policy;
        mo.fault_mode = o.mode;
        mo.swap_read_poll_us = static_cast<int>(o.poll_us);
        mo.swap_cache_checksum = o.csum;
        WarmUp(mo);
        const int64_t rss0 = ResetHwm();
        auto machine = CreateMachine(mo);
        if (!machine.ok()) {
          r->skipped = absl::IsPermissionDenied(machine.status());
          return Fail(r, "CreateMachine: " + machine.status().ToString());
        }
        Machine& m = **machine;
        const size_t bytes = plan.pages * kPage;
        auto as = m.CreateAddressSpace(bytes + Machine::kGranule);
        if (!as.ok()) return Fail(r, "CreateAddressSpace: " + as.status().ToString());
        auto p = (*as)->Mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        if (!p.ok()) return Fail(r, "Mmap: " + p.status().ToString());
        VmStat& vm = m.vmstat();
        SnapFn snap = [&] {
          return Snap{vm.Get(VmEvent::k_pgmajfault), vm.Get(VmEvent::k_pswpin),
                      vm.Get(VmEvent::k_pswpout)};
        };
        RunWorkload(plan, reinterpret_cast<char*>(*p), scratch, snap, rss0, r);
        r->peak_bytes = m.mem_map().peak_used() * kPage;
        if (SwapDevice* dev = static_cast<Vmscan*>(m.reclaim())->swap_device()) {
          std::snprintf(r->swap_desc, sizeof(r->swap_desc), "%s", dev->description().c_str());
        }
        r->swap_ra = vm.Get(VmEvent::k_swap_ra);
        r->pgsteal = vm.Get(VmEvent::k_pgsteal);
        r->pgsteal_clean = vm.Get(VmEvent::k_pgsteal_clean);
        r->allocstall = vm.Get(VmEvent::k_allocstall);
        r->oom = vm.Get(VmEvent::k_oom);
        SendResult(*r);
        as->reset();  // the address space goes before its machine
        machine->reset();
      },
      o.timeout_s);
}

RunResult KernelRun(const Plan& plan, const KernelPeer& peer, const Options& o) {
  WriteFile(peer.cgroup + "/memory.max_usage_in_bytes", "0");
  const uint64_t oom0 = Field(ReadFile(peer.cgroup + "/memory.oom_control"), "oom_kill ");
  RunResult r = RunInChild(
      [&](RunResult* res) {
        Scratch scratch(plan);
        const int64_t rss0 = ResetHwm();
        int err = 0;
        if (!WriteFile(peer.cgroup + "/cgroup.procs", std::to_string(getpid()), &err)) {
          return Fail(res, Errno("join " + peer.cgroup, err));
        }
        const size_t bytes = plan.pages * kPage;
        char* base = MapNative(bytes);
        if (base == nullptr) return Fail(res, Errno("mmap", errno));
        SnapFn snap = [] {
          rusage ru;
          getrusage(RUSAGE_SELF, &ru);
          const std::string vmstat = ReadFile("/proc/vmstat");
          return Snap{static_cast<uint64_t>(ru.ru_majflt), Field(vmstat, "pswpin "),
                      Field(vmstat, "pswpout ")};
        };
        RunWorkload(plan, base, scratch, snap, rss0, res);
      },
      o.timeout_s);
  r.peak_bytes = Field(ReadFile(peer.cgroup + "/memory.max_usage_in_bytes"), "");
  const uint64_t oom1 = Field(ReadFile(peer.cgroup + "/memory.oom_control"), "oom_kill ");
  if (!r.ok && oom1 > oom0) {
    std::string e = std::string(r.error) + " (the cgroup OOM killer ran: swap too small?)";
    std::snprintf(r.error, sizeof(r.error), "%s", e.c_str());
  }
  return r;
}

// ---- Results ----

// One side of a row: its runs, one per repetition.
struct Cell {
  std::vector<RunResult> runs;
  bool present() const { return !runs.empty(); }
  // The first failed run (a skipped one counts, see failed()), or nullptr.
  const RunResult* failure() const {
    for (const auto& r : runs) {
      if (!r.ok) return &r;
    }
    return nullptr;
  }
  bool failed() const { return failure() != nullptr && !failure()->skipped; }
  bool good() const { return present() && failure() == nullptr; }
  // The median of `f` over the runs; NaN when absent or failed.
  double Med(const std::function<double(const RunResult&)>& f) const {
    if (!good()) return std::nan("");
    std::vector<double> v;
    for (const auto& r : runs) v.push_back(f(r));
    return Percentile(v, 0.5);
  }
};

double PhaseS(const RunResult& r) { return r.phase_s; }
double FillS(const RunResult& r) { return r.fill_s; }
double OutMBs(const RunResult& r) {
  return static_cast<double>(r.pswpout * kPage) / r.phase_s * 1e-6;
}
double FillOutMBs(const RunResult& r) {
  return static_cast<double>(r.fill_pswpout * kPage) / r.fill_s * 1e-6;
}
double InP50(const RunResult& r) { return r.in_p50_us; }
double InP99(const RunResult& r) { return r.in_p99_us; }
double Majflt(const RunResult& r) { return static_cast<double>(r.majflt); }
double PswpIn(const RunResult& r) { return static_cast<double>(r.pswpin); }
// Emu: the process's VmHWM growth (falls back on mem_map's peak); kernel:
// the cgroup's peak charge.
double PeakMiB(const RunResult& r) {
  return static_cast<double>(r.hwm_bytes >= 0 ? static_cast<uint64_t>(r.hwm_bytes) : r.peak_bytes) /
         kMiB;
}
double FramesMiB(const RunResult& r) { return static_cast<double>(r.peak_bytes) / kMiB; }
double KernelPeakMiB(const RunResult& r) { return static_cast<double>(r.peak_bytes) / kMiB; }

struct Row {
  const Plan* plan = nullptr;
  const Variant* variant = nullptr;
  Cell emu;
  const Cell* kernel = nullptr;
  double ratio() const { return emu.Med(PhaseS) / kernel->Med(PhaseS); }
  bool time_ok() const { return ratio() <= plan->spec->target; }
  bool peak_ok(uint64_t limit) const {
    const double cap = static_cast<double>(limit) * (1 + kRssSlack) / kMiB;
    return emu.Med(PeakMiB) <= cap && emu.Med(FramesMiB) <= cap;
  }
};

struct Context {
  Options o;
  KernelPeer peer;
  bool any_failed = false;
  std::string dir_note;
  std::string emu_swap;  // the first emu run's swap device
};

std::string Num(double v, const char* fmt) {
  if (!std::isfinite(v)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof(buf), fmt, v);
  return buf;
}

std::string Pair(double a, double b, const char* fmt) { return Num(a, fmt) + "/" + Num(b, fmt); }

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string RatioName(double ratio) { return Num(ratio, "%g") + "x"; }

void PrintHeader(const Context& c) {
  const Options& o = c.o;
  std::printf(
      "%s: git %s, %s, nproc %d, limit %.0f MiB, swap %.0f MiB per side in %s (%s), "
      "seq passes %lld, random accesses %.2f/page, reps %lld, emu mode %s, swap read poll "
      "%lld us, swap cache checksum %s\n",
      kProg, GitSha(), CompilerVersion(), Nproc(), static_cast<double>(o.limit) / kMiB,
      static_cast<double>(o.swap_bytes) / kMiB, o.swap_dir.c_str(), c.dir_note.c_str(),
      static_cast<long long>(o.passes), o.accesses, static_cast<long long>(o.reps),
      std::string(FaultModeName(o.mode)).c_str(), static_cast<long long>(o.poll_us),
      o.csum ? "on" : "off");
  if (!c.peer.unavailable.empty()) {
    std::printf("kernel peer unavailable: %s (emu runs alone; ratios are n/a)\n",
                c.peer.unavailable.c_str());
  } else {
    std::printf(
        "kernel peer: cgroup v1 %s, memory.limit_in_bytes %.0f MiB, swap file %s "
        "(priority 32767), vm.page-cluster %s, swappiness %s; %s\n",
        c.peer.cgroup.c_str(), static_cast<double>(o.limit) / kMiB, c.peer.swapfile.c_str(),
        Trim(ReadFile("/proc/sys/vm/page-cluster")).c_str(),
        Trim(ReadFile(c.peer.cgroup + "/memory.swappiness")).c_str(), c.peer.note.c_str());
  }
  std::printf(
      "time: the measured phase, s (after a fill pass); ratio = emu / kernel, lower is better; "
      "swap-out MB/s = pswpout x 4 KiB / phase time;\nswap-in p50/p99 us = over the slowest M "
      "timed accesses of the phase, M = its major faults; peak: emu = VmHWM growth of the "
      "process\n(frames = mem_map peak), kernel = cgroup memory.max_usage_in_bytes; each a/b is "
      "emu/kernel. Targets: seq <= 1.0, rand/zipf/mt <= 1.5, emu peak <= limit + 5%%.\n\n");
  std::printf("%-7s %-5s %-6s %3s %9s %9s %6s  %-12s %-13s %-14s %-14s %-13s %-7s %-30s\n",
              "pattern", "ws", "policy", "ra", "emu s", "kernel s", "ratio", "target",
              "swap-out MB/s", "swap-in p50 us", "swap-in p99 us", "majflt", "frames",
              "peak MiB (% of limit)");
  std::fflush(stdout);
}

void PrintRow(const Row& r, const Context& c) {
  const Options& o = c.o;
  std::printf("%-7s %-5s %-6s %3d ", r.plan->spec->name, RatioName(r.plan->ratio).c_str(),
              r.variant->policy.c_str(), r.variant->readahead);
  const RunResult* fe = r.emu.failure();
  const RunResult* fk = r.kernel->failure();
  if (fe != nullptr) {
    std::printf("%s (emu): %s\n", fe->skipped ? "SKIPPED" : "FAILED", fe->error);
    if (fk == nullptr) return void(std::fflush(stdout));
    std::printf("%-24s", "");
  }
  if (fk != nullptr) std::printf("FAILED (kernel): %s\n", fk->error);
  if (fe != nullptr || fk != nullptr) return void(std::fflush(stdout));
  const double limit_mib = static_cast<double>(o.limit) / kMiB;
  const double pe = r.emu.Med(PeakMiB), pk = r.kernel->Med(KernelPeakMiB);
  const std::string target = "<=" + Num(r.plan->spec->target, "%.1f") + " " +
                             (r.kernel->good() ? (r.time_ok() ? "met" : "MISSED") : "n/a");
  const std::string peak = Num(pe, "%.1f") + " (" + Num(pe / limit_mib * 100, "%.0f") + "%)/" +
                           Num(pk, "%.1f") + " (" + Num(pk / limit_mib * 100, "%.0f") + "%)" +
                           (r.peak_ok(o.limit) ? "" : " MISSED");
  std::printf("%9s %9s %6s  %-12s %-13s %-14s %-14s %-13s %-7s %s\n",
              Num(r.emu.Med(PhaseS), "%.3f").c_str(), Num(r.kernel->Med(PhaseS), "%.3f").c_str(),
              Num(r.ratio(), "%.2f").c_str(), target.c_str(),
              Pair(r.emu.Med(OutMBs), r.kernel->Med(OutMBs), "%.1f").c_str(),
              Pair(r.emu.Med(InP50), r.kernel->Med(InP50), "%.0f").c_str(),
              Pair(r.emu.Med(InP99), r.kernel->Med(InP99), "%.0f").c_str(),
              Pair(r.emu.Med(Majflt), r.kernel->Med(Majflt), "%.0f").c_str(),
              Num(r.emu.Med(FramesMiB), "%.1f").c_str(), peak.c_str());
  std::fflush(stdout);
}

// One JSON object per measurement of the row.
void PrintJson(const Row& r, const Context& c) {
  struct Metric {
    const char* name;
    const char* unit;
    std::function<double(const RunResult&)> emu, kernel;
  };
  const Metric metrics[] = {{"time", "s", PhaseS, PhaseS},
                            {"swapout", "MB/s", OutMBs, OutMBs},
                            {"swapin_p50", "us", InP50, InP50},
                            {"swapin_p99", "us", InP99, InP99},
                            {"majflt", "count", Majflt, Majflt},
                            {"pswpin", "pages", PswpIn, PswpIn},
                            {"peak_rss", "MiB", PeakMiB, KernelPeakMiB},
                            {"fill_time", "s", FillS, FillS},
                            {"fill_swapout", "MB/s", FillOutMBs, FillOutMBs}};
  const RunResult* fe = r.emu.failure();
  const RunResult* fk = r.kernel->failure();
  for (const Metric& m : metrics) {
    JsonLine j;
    const double e = r.emu.Med(m.emu), k = r.kernel->Med(m.kernel);
    j.Str("name", std::string("swap_") + r.plan->spec->name + "_" + RatioName(r.plan->ratio) + "_" +
                      m.name);
    j.Num("value", e).Str("unit", m.unit).Str("peer", "kernel").Num("peer_value", k);
    j.Num("ratio", e / k);
    if (std::strcmp(m.name, "time") == 0) {
      j.Num("target", r.plan->spec->target);
      if (r.emu.good() && r.kernel->good()) j.Bool("meets", r.time_ok());
    } else if (std::strcmp(m.name, "peak_rss") == 0) {
      j.Num("target", static_cast<double>(c.o.limit) * (1 + kRssSlack) / kMiB);
      if (r.emu.good()) j.Bool("meets", r.peak_ok(c.o.limit));
      j.Num("emu_frames_peak", r.emu.Med(FramesMiB));
    } else {
      j.Null("target");
    }
    j.Str("pattern", r.plan->spec->name).Num("ws_ratio", r.plan->ratio);
    j.Num("limit_mib", static_cast<double>(c.o.limit) / kMiB);
    j.Num("ws_mib", static_cast<double>(r.plan->pages * kPage) / kMiB);
    j.Num("swap_mib", static_cast<double>(c.o.swap_bytes) / kMiB);
    j.Str("policy", r.variant->policy).Int("readahead", r.variant->readahead);
    j.Str("mode", std::string(FaultModeName(c.o.mode))).Int("swap_poll_us", c.o.poll_us);
    j.Str("swap_cache_checksum", c.o.csum ? "on" : "off");
    j.Int("accesses", static_cast<int64_t>(r.plan->accesses())).Int("reps", c.o.reps);
    j.Str("swap_dir", c.o.swap_dir).Str("git_sha", GitSha()).Str("compiler", CompilerVersion());
    j.Int("nproc", Nproc());
    j.Num("emu_wall_s", r.emu.Med([](const RunResult& x) { return x.wall_s; }));
    j.Num("kernel_wall_s", r.kernel->Med([](const RunResult& x) { return x.wall_s; }));
    j.Num("kernel_hwm_mib", r.kernel->Med([](const RunResult& x) {
      return static_cast<double>(x.hwm_bytes) / kMiB;
    }));
    if (std::strcmp(m.name, "time") == 0 && r.emu.good()) {
      const RunResult& x = r.emu.runs[0];  // the first repetition, whole run (fill included)
      auto count = [&j](const char* key, uint64_t v) { j.Int(key, static_cast<int64_t>(v)); };
      count("emu_run_swap_ra", x.swap_ra);
      count("emu_run_pgsteal", x.pgsteal);
      count("emu_run_pgsteal_clean", x.pgsteal_clean);
      count("emu_run_allocstall", x.allocstall);
      count("emu_run_oom", x.oom);
      j.Str("emu_swap", x.swap_desc);
    }
    if (fe != nullptr) j.Str(fe->skipped ? "emu_skipped" : "emu_failed", fe->error);
    if (fk != nullptr) j.Str("kernel_failed", fk->error);
    if (!c.peer.unavailable.empty()) j.Str("peer_unavailable", c.peer.unavailable);
    j.Print();
  }
}

// The fill pass (a sequential write of the working set), from every run of
// one ratio and variant: time and swap-out MB/s.
void PrintFillTable(const std::vector<Row>& rows, const Context& c) {
  std::printf("\nfill pass (sequential write of the working set, every run): a/b is emu/kernel\n");
  std::printf("%-5s %-6s %3s %9s %9s %6s %-15s\n", "ws", "policy", "ra", "emu s", "kernel s",
              "ratio", "swap-out MB/s");
  for (double ratio : c.o.ratios) {
    for (const Variant& v : c.o.variants) {
      Cell e, k;  // kernel runs are shared by the variants: take them from the first
      for (const Row& r : rows) {
        if (r.plan->ratio != ratio) continue;
        if (r.variant == &v && r.emu.good()) {
          e.runs.insert(e.runs.end(), r.emu.runs.begin(), r.emu.runs.end());
        }
        if (r.variant == &c.o.variants[0] && r.kernel->good()) {
          k.runs.insert(k.runs.end(), r.kernel->runs.begin(), r.kernel->runs.end());
        }
      }
      std::printf("%-5s %-6s %3d %9s %9s %6s %-15s\n", RatioName(ratio).c_str(), v.policy.c_str(),
                  v.readahead, Num(e.Med(FillS), "%.3f").c_str(), Num(k.Med(FillS), "%.3f").c_str(),
                  Num(e.Med(FillS) / k.Med(FillS), "%.2f").c_str(),
                  Pair(e.Med(FillOutMBs), k.Med(FillOutMBs), "%.1f").c_str());
    }
  }
}

// ---- Running everything ----

// All variants of one (pattern, ratio), the kernel once per repetition;
// which side goes first alternates from repetition to repetition.
void RunConfig(const Plan& plan, Context& c, Cell* kernel, std::vector<Row>* rows) {
  const size_t first = rows->size();
  for (const Variant& v : c.o.variants) {
    Row r;
    r.plan = &plan;
    r.variant = &v;
    r.kernel = kernel;
    rows->push_back(r);
  }
  const bool have_kernel = c.peer.unavailable.empty();
  for (int64_t rep = 0; rep < c.o.reps; rep++) {
    if (have_kernel && rep % 2 == 0) kernel->runs.push_back(KernelRun(plan, c.peer, c.o));
    for (size_t i = 0; i < c.o.variants.size(); i++) {
      (*rows)[first + i].emu.runs.push_back(EmuRun(plan, c.o.variants[i], c.o));
    }
    if (have_kernel && rep % 2 == 1) kernel->runs.push_back(KernelRun(plan, c.peer, c.o));
  }
  for (size_t i = first; i < rows->size(); i++) {
    const Row& r = (*rows)[i];
    if (r.emu.failed() || r.kernel->failed()) c.any_failed = true;
    if (c.emu_swap.empty() && r.emu.good()) c.emu_swap = r.emu.runs[0].swap_desc;
    if (c.o.json) {
      PrintJson(r, c);
    } else {
      PrintRow(r, c);
    }
  }
}

// ---- Options ----

void PrintHelp() {
  std::printf(
      "usage: %s [options]\n"
      "emu under a memory limit with a swap file, next to the Linux kernel under the same\n"
      "limit (cgroup v1 memory.limit_in_bytes + a swap file in the same directory).\n\n"
      "  --limit SIZE     the memory limit (default 256M; --quick: 64M)\n"
      "  --ratio LIST     working sets as multiples of the limit (default 1.5,3)\n"
      "  --pattern LIST   seq, rand, zipf, mt (default all)\n"
      "  --policy P       lru, fifo or both (default lru)\n"
      "  --readahead LIST emu swap readahead pages, 1..64 (default 8; e.g. 1,8)\n"
      "  --passes N       sequential passes (default 2; --quick: 1)\n"
      "  --accesses X     random accesses per page (default 2; --quick: 0.25)\n"
      "  --swap SIZE      swap size of each side (default twice the largest working set)\n"
      "  --swap-dir DIR   where both swap files go (default $TMPDIR, else /var/tmp)\n"
      "  --mode M         emu's fault mode: sigbus, thread or sigsegv (default sigbus)\n"
      "  --swap-poll-us N how long emu's swap-in polls before it sleeps, 0..10000 (default\n"
      "                   200; 0 sleeps at once)\n"
      "  --swap-cache-checksum on|off\n"
      "                   map pages read back writable with their slot's checksum (default\n"
      "                   on) or write-protected (off)\n"

      "  --reps N         repetitions; medians are reported (default 1)\n"
      "  --timeout S      seconds a run may take before it counts as hung (default 600)\n"
      "  --no-kernel      run emu only\n"
      "  --quick          a small run (smoke test); explicit options win\n"
      "  --json           one JSON object per line per measurement instead of the tables\n\n"
      "Exit status: 0, or 1 when a run failed (crash, hang, data mismatch), 2 on a bad\n"
      "option. A missed target is reported, not an error.\n",
      kProg);
}

bool ParseList(ArgParser& args, const std::function<bool(const std::string&)>& add) {
  std::string v;
  if (!args.Value(&v)) return false;
  for (const std::string& item : SplitCommas(v)) {
    if (!add(item)) {
      args.Fail("%s: bad value '%s' (try --help)", args.flag().c_str(), item.c_str());
      return false;
    }
  }
  return true;
}

bool ParseDouble(const std::string& s, double lo, double hi, double* out) {
  char* end = nullptr;
  errno = 0;
  double d = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || errno != 0 || !(d >= lo && d <= hi)) return false;
  *out = d;
  return true;
}

bool SizeValue(ArgParser& args, uint64_t* out) {
  std::string v;
  if (!args.Value(&v)) return false;
  auto n = ParseSize(v);
  if (!n.ok() || *n < kMinMemLimit) {
    args.Fail("%s '%s': want a size of at least 4M (e.g. 256M, 1.5G)", args.flag().c_str(),
              v.c_str());
    return false;
  }
  *out = *n;
  return true;
}

bool ParseOne(ArgParser& args, Options* o, uint64_t* limit, int64_t* passes, double* acc,
              int64_t* timeout) {
  if (args.Is("--json")) return o->json = args.NoValue();
  if (args.Is("--quick")) return o->quick = args.NoValue();
  if (args.Is("--no-kernel")) return o->no_kernel = args.NoValue();
  if (args.Is("--limit")) return SizeValue(args, limit);
  if (args.Is("--swap")) return SizeValue(args, &o->swap_bytes);
  if (args.Is("--swap-dir")) return args.Value(&o->swap_dir);
  if (args.Is("--mode")) {
    std::string v;
    if (args.Value(&v) && !ParseFaultMode(v, &o->mode)) {
      args.Fail("--mode '%s': want sigbus, thread or sigsegv", v.c_str());
    }
    return !args.failed();
  }
  if (args.Is("--reps")) return args.IntValue(1, 100, &o->reps);
  if (args.Is("--swap-poll-us")) return args.IntValue(0, 10000, &o->poll_us);
  if (args.Is("--swap-cache-checksum")) {
    std::string v;
    if (args.Value(&v)) {
      if (v != "on" && v != "off") {
        args.Fail("--swap-cache-checksum '%s': want on or off", v.c_str());
      } else {
        o->csum = v == "on";
      }
    }
    return !args.failed();
  }
  if (args.Is("--passes")) return args.IntValue(1, 100, passes);
  if (args.Is("--timeout")) return args.IntValue(1, 86400, timeout);
  if (args.Is("--accesses")) {
    std::string v;
    if (args.Value(&v) && !ParseDouble(v, 0.01, 100, acc)) args.Fail("--accesses '%s'", v.c_str());
    return !args.failed();
  }
  if (args.Is("--ratio")) {
    return ParseList(args, [o](const std::string& s) {
      double d;
      return ParseDouble(s, 0.1, 64, &d) && (o->ratios.push_back(d), true);
    });
  }
  if (args.Is("--pattern")) {
    return ParseList(args, [o](const std::string& s) {
      for (const PatSpec& p : kPats) {
        if (s == p.name) return o->pats.push_back(&p), true;
      }
      return false;
    });
  }
  if (args.Is("--policy")) {
    return ParseList(args, [o](const std::string& s) {
      if (s == "both") return o->policies = {"lru", "fifo"}, true;
      return (s == "lru" || s == "fifo") && (o->policies.push_back(s), true);
    });
  }
  if (args.Is("--readahead")) {
    return ParseList(args, [o](const std::string& s) {
      double d;
      return ParseDouble(s, 1, 64, &d) && d == std::floor(d) &&
             (o->readaheads.push_back(static_cast<int>(d)), true);
    });
  }
  args.Unknown();
  return false;
}

// Returns 0 to run, 1 after --help, 2 on a bad option.
int ParseOptions(int argc, char** argv, Options* o) {
  ArgParser args(kProg, argc, argv);
  uint64_t limit = 0;
  int64_t passes = 0, timeout = 0;
  double acc = 0;
  while (args.Next()) {
    if (args.Is("--help") || args.Is("-h")) {
      PrintHelp();
      return 1;
    }
    ParseOne(args, o, &limit, &passes, &acc, &timeout);
  }
  if (args.failed()) return 2;
  if (o->quick) {
    o->limit = uint64_t{64} << 20;
    o->passes = 1;
    o->accesses = 0.25;
    o->timeout_s = 60;
  }
  if (limit) o->limit = limit;
  if (passes) o->passes = passes;
  if (acc > 0) o->accesses = acc;
  if (timeout) o->timeout_s = timeout;
  if (o->ratios.empty()) o->ratios = {1.5, 3};
  if (o->pats.empty()) {
    for (const PatSpec& p : kPats) o->pats.push_back(&p);
  }
  if (o->policies.empty()) o->policies = {"lru"};
  if (o->readaheads.empty()) o->readaheads = {8};
  for (const std::string& p : o->policies) {
    for (int ra : o->readaheads) o->variants.push_back({p, ra});
  }
  const double max_ratio = *std::max_element(o->ratios.begin(), o->ratios.end());
  if (o->swap_bytes == 0) {
    o->swap_bytes = static_cast<uint64_t>(2 * max_ratio * static_cast<double>(o->limit));
    o->swap_bytes = (o->swap_bytes + (1 << 20) - 1) & ~uint64_t{(1 << 20) - 1};
  }
  if (o->swap_dir.empty()) {
    const char* t = std::getenv("TMPDIR");
    o->swap_dir = t && *t ? t : "/var/tmp";
  }
  return 0;
}

std::string DirNote(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return Errno("stat", errno);
  return "dev " + std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
}

int Main(int argc, char** argv) {
  Context c;
  int parsed = ParseOptions(argc, argv, &c.o);
  if (parsed != 0) return parsed == 1 ? 0 : 2;
  c.dir_note = DirNote(c.o.swap_dir);
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE}) sigaction(sig, &sa, nullptr);
  const uint64_t t0 = NowNs();
  if (c.o.no_kernel) {
    c.peer.unavailable = "--no-kernel";
  } else {
    c.peer.Setup(c.o.limit, c.o.swap_bytes, c.o.swap_dir);
  }
  if (c.o.json && !c.peer.unavailable.empty()) {
    std::fprintf(stderr, "%s: kernel peer unavailable: %s\n", kProg, c.peer.unavailable.c_str());
  }
  if (!c.o.json) PrintHeader(c);
  std::vector<std::unique_ptr<Plan>> plans;
  std::vector<std::unique_ptr<Cell>> kernels;
  std::vector<Row> rows;
  rows.reserve(c.o.pats.size() * c.o.ratios.size() * c.o.variants.size());
  for (const PatSpec* spec : c.o.pats) {
    for (double ratio : c.o.ratios) {
      plans.push_back(std::make_unique<Plan>(MakePlan(*spec, ratio, c.o)));
      kernels.push_back(std::make_unique<Cell>());
      RunConfig(*plans.back(), c, kernels.back().get(), &rows);
    }
  }
  c.peer.Teardown();
  if (!c.o.json) {
    PrintFillTable(rows, c);
    std::printf("\nemu swap device: %s; kernel swap file: %s\n", c.emu_swap.c_str(),
                c.peer.unavailable.empty() ? c.peer.swapfile.c_str() : "n/a");
    std::printf("\ntotal %.1f s%s\n", static_cast<double>(NowNs() - t0) * 1e-9,
                c.any_failed ? "; some runs FAILED (see the rows)" : "");
  }
  return c.any_failed ? 1 : 0;
}

}  // namespace
}  // namespace emu::bench

int main(int argc, char** argv) { return emu::bench::Main(argc, argv); }
