// dirty_bench: seed 001's dirty tracking of shared file mappings (issue 7,
// "Files and dirty tracking": Machine::OpenFile, AddressSpace::MmapFile and
// Msync) against the kernel's own mmap(MAP_SHARED) of a file with the same
// contents, measured in the same run. Each side maps its own copy of the
// file (created in --dir, fsync'ed before its run, unlinked once mapped).
//
// How the files are written sets the host page cache's folio size, and the
// kernel's mapping dirties and writes back whole folios (ext4 with large
// folios: a write() of 1 MiB makes folios of up to 1 MiB, and a dirtied
// 4 KiB page of a MAP_SHARED mapping then costs 1 MiB of device writes).
// Emu tracks 4 KiB pages and writes each with pwrite into its file's host
// page cache: the folio is accounted dirty whole, but only the written
// block goes to the device. So parts 1 and 2 run once per --folios variant:
// 4k (files written 4 KiB at a time: 4 KiB folios, the kernel's granularity
// equal to emu's) and large (1 MiB at a time: what a file copied with big
// writes gets). Columns: "dirtied" = /proc/self/io write_bytes / 4 KiB over
// the stretch (pages the host's page cache accounted dirty for the side's
// file, whole folios); "dev" = pages written to the block device that holds
// --dir over the stretch (/sys/dev/block/MAJ:MIN/stat: the whole device,
// so other writers on it count too; "-" on a file system without one).
//
// Three parts, each a table (or, with --json, one JSON object per row):
//
//  1. Random writes plus a periodic msync. A file of --file-mib (default 256)
//     mapped shared read-write, every page read once first (untimed: each
//     page is then cached and mapped clean, so read-only), then --writes
//     random 8-byte writes (mt19937_64 from --seed; the same on both sides)
//     with msync(MS_SYNC) of the whole mapping after every --sync-every
//     writes and once at the end. Timed: the loop (total) and its msync calls
//     alone. Pages written: emu's pgwriteback; dirtied and dev for both.
//     Faults: emu's pgfault; the kernel's ru_minflt. The kernel side runs
//     first, then emu (one run each).
//
//  2. msync cost on a large mapping with few dirty pages. --map-mib (default
//     1024) mapped and every page read once (cached, mapped clean); one timed
//     msync(MS_SYNC) with nothing dirty (the fixed cost), then for each of
//     --dirty (percent of the pages, default 0.1,1,10) and each of --reps
//     repetitions: a random set of that many distinct pages written (8 bytes
//     each, untimed) and one timed msync(MS_SYNC) of the whole mapping; the
//     two sides take turns going first. Then emu alone: another such set and
//     a timed MS_ASYNC (emu writes the pages with pwrite but skips fdatasync;
//     the kernel's MS_ASYNC writes nothing, so it has no peer), which shows
//     emu's own cost without the device. Reported: p50 time, emu's
//     pgwriteback, dirtied and dev (of the last call),
//     time per dirty page, and that time per dirty page relative to the first
//     --dirty row (1.00 everywhere: the cost is proportional to the dirty
//     pages, the target of the issue). Last, what emu's Writeback pays for
//     the clean pages of the range: MS_ASYNC with one dirty page, the first
//     of the mapping and then the last (Writeback stops after the last dirty
//     page), the difference divided by the pages in between.
//
//  3. Write tracking: emu's two modes (MachineOptions::dirty_tracking) on a
//     shared mapping of a --wp-mib file, every page read first (mapped
//     clean), then rounds of --sync-every random 8-byte writes: "fault"
//     (seed 001: every first write to a clean page is a fault the emulator
//     handles) and "async" (the writes go through; after each round one
//     harvest of the file, as writeback does first); after each round
//     nr_dirty must be the pages written, and an untimed MS_ASYNC cleans
//     them. The cost per written page is (writes + harvest) / pages
//     written. Next to them the kernel's primitive, where it works: a native
//     private anonymous mapping of --wp-mib (default 256), every page written,
//     registered with a userfaultfd having UFFD_FEATURE_WP_ASYNC and
//     write-protected; then rounds of --sync-every random 8-byte writes (the
//     write-protect faults are resolved in the kernel) and one PAGEMAP_SCAN
//     ioctl on /proc/self/pagemap (PAGE_IS_WRITTEN, PM_SCAN_WP_MATCHING) that
//     returns the written pages and protects them again. The pages it returns
//     must be exactly the pages written in the round.
//
// Data checks: after parts 1 and 2 (before any munmap, so msync alone put
// the data there), the emu file and the kernel file are read back through
// descriptors of their own and compared page by page: "mismatch" counts the
// pages that differ and must be 0; part 1 also counts the emu file's pages
// that differ from the initial contents, which must be the pages written.
// Emu's counters must agree with the runs: every dirtied page written back
// (pgdirty = pgwriteback = pgmkclean, pgmkclean 0 with dirty tracking
// "async", nr_dirty 0 after each msync), and in
// part 2 pgwriteback = the pages of each set.
//
// Sizes that do not fit in MemAvailable (3x the file + 1 GiB: emu's frames,
// the emu file's and the kernel file's page cache) are skipped with the
// reason printed.
//
// Exit status: 0; 1 when an emulator call fails, a counter contradicts a run
// (named on stderr) or the data check finds a mismatch; 2 for a bad option.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/harness.h"
#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/shmem.h"
#include "emu/vmstat.h"
#include "fault/host_backends.h"
#include "fault/machine_factory.h"

namespace emu::bench {
namespace {

constexpr char kProg[] = "dirty_bench";
constexpr uint64_t kArenaBytes = uint64_t{16} << 30;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr int64_t kMaxSizeMiB = 8192;
constexpr size_t kWordsPerPage = kHostPageSize / sizeof(uint64_t);

// The kernel's uapi for part 3 (linux/userfaultfd.h and linux/fs.h of 6.7;
// Debian 12's headers are 6.1): stable ABI, so written out here.
constexpr uint64_t kUffdFeatureWpUnpopulated = uint64_t{1} << 13;
constexpr uint64_t kUffdFeatureWpAsync = uint64_t{1} << 15;
constexpr int kUffdUserModeOnly = 1;
struct PageRegion {
  uint64_t start, end, categories;
};
struct PmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted,
      category_mask, category_anyof_mask, return_mask;
};
static_assert(sizeof(PmScanArg) == 96);
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr uint64_t kPageIsWritten = uint64_t{1} << 1;
constexpr uint64_t kPmScanWpMatching = uint64_t{1} << 0;
constexpr uint64_t kPmScanCheckWpasync = uint64_t{1} << 1;

// How a run's files are written, which sets the host page cache's folio
// size (ext4 with large folios: a write() of N bytes makes folios of up to N
// bytes, and the kernel dirties and writes back whole folios).
struct FolioSpec {
  const char* name;    // --folios, JSON
  const char* label;   // table
  size_t write_pages;  // pages per write() when the file is made
};
constexpr FolioSpec kFolioSpecs[] = {
    {"4k", "4k", 1},
    {"large", "large", 256},
};
constexpr int kNrFolioSpecs = 2;

struct Options {
  FaultMode mode = FaultMode::kUffdSigbus;
  bool part[3] = {true, true, true};
  int64_t file_mib = 256;
  int64_t writes = 1000000;
  int64_t sync_every = 10000;
  int64_t map_mib = 1024;
  std::vector<double> dirty_pct = {0.1, 1, 10};
  int64_t reps = 3;
  int64_t wp_mib = 256;
  int64_t wp_rounds = 10;
  int64_t seed = 1;
  std::vector<int> folios = {0, 1};  // kFolioSpecs indices
  std::string dir;
  std::string file_io = MachineOptions{}.file_io;
  std::string dirty_tracking = MachineOptions{}.dirty_tracking;
  bool json = false;
  bool quick = false;
};

struct Context {
  Options o;
  std::string config;  // MachineOptions::ToString()
  bool ok = true;      // false after a failure
  // Part 1's sync tracking cost per page dirtied by a write fault (the write
  // loop without its msync calls, divided by its faults), for part 3's
  // comparison; NaN if not run. From the first --folios variant.
  double emu_sync_ns_per_page = std::nan("");
  double kernel_sync_ns_per_page = std::nan("");
  const char* sync_folios = "";
  // Part 3: emu's tracking cost per written page with dirty_tracking fault
  // and async; NaN if not run.
  double emu_wp_ns[2] = {std::nan(""), std::nan("")};
};

struct Result {
  bool ok = true;
  std::string why;
  static Result Ok() { return {}; }
  static Result Fail(std::string w) { return {false, std::move(w)}; }
};

std::string Msg(const absl::Status& s) { return s.ToString(); }
std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }
unsigned long long U(uint64_t v) { return static_cast<unsigned long long>(v); }
std::string ModeName(FaultMode m) { return std::string(FaultModeName(m)); }
VirtAddr Addr(const void* p) { return reinterpret_cast<VirtAddr>(p); }

void Failed(Context& ctx, const std::string& where, const std::string& why) {
  std::fprintf(stderr, "%s: %s: %s\n", kProg, where.c_str(), why.c_str());
  ctx.ok = false;
}

// a / b with two decimals, or "n/a".
std::string Ratio(double a, double b) {
  if (!(b > 0) || !std::isfinite(a)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", a / b);
  return buf;
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

// A number from a /proc file's "key: value" line (MemAvailable in KiB,
// write_bytes in bytes); 0 when missing.
uint64_t ProcValue(const char* file, const char* key) {
  FILE* f = std::fopen(file, "r");
  if (f == nullptr) return 0;
  char line[256];
  unsigned long long v = 0;
  const size_t klen = std::strlen(key);
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::strncmp(line, key, klen) == 0 && line[klen] == ':') {
      v = std::strtoull(line + klen + 1, nullptr, 10);
      break;
    }
  }
  std::fclose(f);
  return v;
}

uint64_t MemAvailable() { return ProcValue("/proc/meminfo", "MemAvailable") * 1024; }

uint64_t MinorFaults() {
  rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_minflt) + static_cast<uint64_t>(ru.ru_majflt);
}

// Empty when `need` bytes fit in MemAvailable, else the reason to skip.
std::string NoRoom(uint64_t need) {
  const uint64_t avail = MemAvailable();
  if (avail == 0 || avail >= need) return {};
  return "MemAvailable " + std::to_string(avail / kMiB) + " MiB < " + std::to_string(need / kMiB) +
         " MiB needed";
}

// ---- Files ----

// The initial first word of page `i` (the rest of the page is zeros).
uint64_t InitialWord(size_t i) { return (uint64_t{0x5A} << 56) | (i * 0x9E3779B97F4A7C15ull >> 8); }
// The value of write number `seq` (never an initial word, never zero).
uint64_t WriteValue(uint64_t seq) {
  return (uint64_t{0xA5} << 56) | ((seq * 0xD1B54A32D192ED03ull) >> 8) | 1;
}

// A file made for one run, with a read-only descriptor of its own for the
// data check. Unlinked as soon as its side has opened it (Unlink), so that a
// run that dies leaves nothing behind; else when it goes.
struct TempFile {
  std::string path;
  int check_fd = -1;
  TempFile() = default;
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    Unlink();
    if (check_fd >= 0) close(check_fd);
  }
  void Unlink() {
    if (!path.empty()) unlink(path.c_str());
    path.clear();
  }
};

bool WriteAll(int fd, const char* b, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, b, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    b += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool PreadAll(int fd, char* b, size_t len, off_t off) {
  while (len > 0) {
    ssize_t n = pread(fd, b, len, off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    b += n;
    off += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// A file of `pages` pages with their initial words, in `dir`, written
// `write_pages` pages per write() (the host's folio size follows), on disk
// (fsync) so that a run's msync waits only for what the run dirtied.
Result CreateFile(const std::string& dir, size_t pages, size_t write_pages, TempFile* f) {
  std::string tmpl = dir + "/dirty_bench.XXXXXX";
  int fd = mkstemp(tmpl.data());
  if (fd < 0) return Result::Fail(Errno(("mkstemp in " + dir).c_str()));
  f->path = tmpl;
  constexpr size_t kChunkPages = 256;
  std::vector<char> buf(kChunkPages * kHostPageSize, 0);
  Result r;
  for (size_t i = 0; i < pages && r.ok; i += kChunkPages) {
    const size_t n = std::min(kChunkPages, pages - i);
    for (size_t k = 0; k < n; k++) {
      const uint64_t w = InitialWord(i + k);
      std::memcpy(&buf[k * kHostPageSize], &w, sizeof(w));
    }
    for (size_t k = 0; k < n && r.ok; k += write_pages) {
      const size_t len = std::min(write_pages, n - k) * kHostPageSize;
      if (!WriteAll(fd, &buf[k * kHostPageSize], len)) r = Result::Fail(Errno("write"));
    }
  }
  if (r.ok && fsync(fd) != 0) r = Result::Fail(Errno("fsync"));
  close(fd);
  if (r.ok) {
    f->check_fd = open(f->path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f->check_fd < 0) r = Result::Fail(Errno("open for the data check"));
  }
  return r;
}

// Reads both files through descriptors of their own (not the sides'):
// pages of `a` that differ from `b` and from the initial contents.
Result CompareFiles(const TempFile& a, const TempFile& b, size_t pages, uint64_t* mismatch,
                    uint64_t* changed) {
  *mismatch = *changed = 0;
  const int fa = a.check_fd, fb = b.check_fd;
  constexpr size_t kChunkPages = 256;
  std::vector<char> ba(kChunkPages * kHostPageSize), bb(ba.size()), zero(kHostPageSize, 0);
  Result r;
  for (size_t i = 0; i < pages && r.ok; i += kChunkPages) {
    const size_t n = std::min(kChunkPages, pages - i);
    const off_t off = static_cast<off_t>(i * kHostPageSize);
    if (!PreadAll(fa, ba.data(), n * kHostPageSize, off) ||
        !PreadAll(fb, bb.data(), n * kHostPageSize, off)) {
      r = Result::Fail(Errno("pread for the data check"));
      break;
    }
    for (size_t k = 0; k < n; k++) {
      const char* pa = &ba[k * kHostPageSize];
      uint64_t w0;
      std::memcpy(&w0, pa, 8);
      *changed += w0 != InitialWord(i + k) || std::memcmp(pa + 8, zero.data(), kHostPageSize - 8);
      *mismatch += std::memcmp(pa, &bb[k * kHostPageSize], kHostPageSize) != 0;
    }
  }
  return r;
}

// ---- A shared mapping of a file, on emu or on the kernel ----

using Counters = std::array<uint64_t, kNrVmEvents>;

uint64_t D(const Counters& a, const Counters& b, VmEvent e) {
  return b[static_cast<int>(e)] - a[static_cast<int>(e)];
}

struct Mapping {
  char* base = nullptr;
  size_t bytes = 0;
  // Emu: the machine, its address space and the file's object.
  std::unique_ptr<Machine> machine;
  std::unique_ptr<AddressSpace> as;
  ShmemObject* file = nullptr;
  // Kernel: the descriptor.
  int fd = -1;

  bool emu() const { return as != nullptr; }
  size_t pages() const { return bytes / kHostPageSize; }
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    as.reset();  // address spaces go before their machine
    machine.reset();
    if (fd >= 0) {
      munmap(base, bytes);
      close(fd);
    }
  }
};

// `tracking`: MachineOptions::dirty_tracking, else --dirty-tracking's.
Result MapEmu(const Context& ctx, const std::string& path, size_t bytes, Mapping* m,
              const char* tracking = nullptr) {
  MachineOptions mo;
  mo.fault_mode = ctx.o.mode;
  mo.arena_bytes = kArenaBytes;
  mo.file_io = ctx.o.file_io;
  mo.dirty_tracking = tracking != nullptr ? tracking : ctx.o.dirty_tracking;
  auto machine = CreateMachine(mo);
  if (!machine.ok())
    return Result::Fail("CreateMachine(" + mo.ToString() + "): " + Msg(machine.status()));
  m->machine = std::move(*machine);
  auto as = m->machine->CreateAddressSpace(bytes + Machine::kGranule);
  if (!as.ok()) return Result::Fail("CreateAddressSpace: " + Msg(as.status()));
  m->as = std::move(*as);
  auto file = m->machine->OpenFile(path, /*writable=*/true);
  if (!file.ok()) return Result::Fail("OpenFile(writable): " + Msg(file.status()));
  m->file = *file;
  auto addr = m->as->MmapFile(0, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, m->file, 0);
  if (!addr.ok()) {
    return Result::Fail("MmapFile(" + std::to_string(bytes) +
                        ", MAP_SHARED): " + Msg(addr.status()));
  }
  m->base = reinterpret_cast<char*>(*addr);
  m->bytes = bytes;
  return Result::Ok();
}

Result MapKernel(const std::string& path, size_t bytes, Mapping* m) {
  m->fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (m->fd < 0) return Result::Fail(Errno("open"));
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
  if (p == MAP_FAILED) {
    close(m->fd);
    m->fd = -1;
    return Result::Fail(Errno("mmap(MAP_SHARED)"));
  }
  m->base = static_cast<char*>(p);
  m->bytes = bytes;
  return Result::Ok();
}

// msync of the whole mapping; empty, or what failed.
std::string Sync(Mapping& m, int flags) {
  if (m.emu()) {
    absl::Status s = m.as->Msync(Addr(m.base), m.bytes, flags);
    return s.ok()
               ? std::string()
               : "Msync(" + std::string(flags == MS_SYNC ? "MS_SYNC" : "MS_ASYNC") + "): " + Msg(s);
  }
  return msync(m.base, m.bytes, flags) == 0 ? std::string() : Errno("msync");
}

__attribute__((noinline)) void ReadEveryPage(const char* base, size_t pages) {
  uint64_t sum = 0;
  for (size_t i = 0; i < pages; i++)
    sum += *reinterpret_cast<const volatile uint64_t*>(base + i * kHostPageSize);
  DoNotOptimize(sum);
}

// The stat file of the block device that holds `dir` (sectors written are
// its 7th field), or "" where there is none (tmpfs, overlay).
std::string DeviceStatPath(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return {};
  std::string p = "/sys/dev/block/" + std::to_string(major(st.st_dev)) + ":" +
                  std::to_string(minor(st.st_dev)) + "/stat";
  return access(p.c_str(), R_OK) == 0 ? p : std::string();
}

// Set once by Main: the device stat file of --dir, or "".
std::string dev_stat_path;

// Sectors (512 B) written to --dir's device so far; 0 without one.
uint64_t DeviceSectorsWritten() {
  if (dev_stat_path.empty()) return 0;
  FILE* f = std::fopen(dev_stat_path.c_str(), "r");
  if (f == nullptr) return 0;
  unsigned long long v[7] = {};
  const int n = std::fscanf(f, "%llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                            &v[4], &v[5], &v[6]);
  std::fclose(f);
  return n == 7 ? v[6] : 0;
}

// What a side's counters said over a stretch of its run.
struct Probe {
  Counters emu{};
  uint64_t write_bytes = 0;
  uint64_t dev_sectors = 0;
  uint64_t faults = 0;
};

Probe Sample(const Mapping& m) {
  Probe p;
  if (m.emu()) p.emu = m.machine->vmstat().Snapshot();
  p.write_bytes = ProcValue("/proc/self/io", "write_bytes");
  p.dev_sectors = DeviceSectorsWritten();
  p.faults = MinorFaults();
  return p;
}

// Pages written to --dir's device between two probes (the whole device).
uint64_t DevPages(const Probe& a, const Probe& b) {
  return (b.dev_sectors - a.dev_sectors) * 512 / kHostPageSize;
}

// "-" without a device, else the number.
std::string DevText(uint64_t pages) {
  return dev_stat_path.empty() ? std::string("-") : std::to_string(pages);
}

// Emu's pages written back (pgwriteback) between two probes; 0 for the kernel.
uint64_t EmuWriteback(const Mapping& m, const Probe& a, const Probe& b) {
  return m.emu() ? D(a.emu, b.emu, VmEvent::k_pgwriteback) : 0;
}

// Pages this process dirtied in the host's page cache between two probes
// (/proc/self/io write_bytes, accounted in whole folios when they are
// dirtied): what the host writes back for the side's file. Emu's pwrite of
// a page into a large folio counts the folio, as the kernel's mapping does.
uint64_t HostPages(const Probe& a, const Probe& b) {
  return (b.write_bytes - a.write_bytes) / kHostPageSize;
}

uint64_t Faults(const Mapping& m, const Probe& a, const Probe& b) {
  if (m.emu()) return D(a.emu, b.emu, VmEvent::k_pgfault);
  return b.faults - a.faults;
}

// A fresh file of `pages`, mapped and every page read once: cached, clean.
Result Prepare(const Context& ctx, bool emu, size_t pages, const FolioSpec& folio, TempFile* f,
               Mapping* m, uint64_t* read_ns = nullptr) {
  Result r = CreateFile(ctx.o.dir, pages, folio.write_pages, f);
  if (r.ok)
    r = emu ? MapEmu(ctx, f->path, pages * kHostPageSize, m)
            : MapKernel(f->path, pages * kHostPageSize, m);
  f->Unlink();  // the side and the data check hold descriptors
  if (!r.ok) return r;
  const Probe p0 = Sample(*m);
  const uint64_t t0 = NowNs();
  ReadEveryPage(m->base, pages);
  if (read_ns != nullptr) *read_ns = NowNs() - t0;
  const Probe p1 = Sample(*m);
  if (emu && (D(p0.emu, p1.emu, VmEvent::k_file_read) != pages || m->file->nr_dirty() != 0)) {
    return Result::Fail("reading every page of a fresh mapping: file_read " +
                        std::to_string(D(p0.emu, p1.emu, VmEvent::k_file_read)) + ", nr_dirty " +
                        std::to_string(m->file->nr_dirty()) + "; expected " +
                        std::to_string(pages) + " and 0");
  }
  return Result::Ok();
}

// Emu's own account of a stretch in which every page dirtied was written
// back: empty, or what contradicts it.
std::string CheckWriteback(const Mapping& m, const Probe& a, const Probe& b, int64_t expect) {
  const uint64_t dirty = D(a.emu, b.emu, VmEvent::k_pgdirty);
  const uint64_t wb = D(a.emu, b.emu, VmEvent::k_pgwriteback);
  const uint64_t clean = D(a.emu, b.emu, VmEvent::k_pgmkclean);
  // With the host tracking writes, a harvest protects the pages again: no
  // page_mkclean.
  const bool tracked = m.machine->host().tracks_writes();
  if (dirty == wb && clean == (tracked ? 0 : wb) && m.file->nr_dirty() == 0 &&
      (expect < 0 || wb == static_cast<uint64_t>(expect))) {
    return {};
  }
  return "pgdirty " + std::to_string(dirty) + ", pgwriteback " + std::to_string(wb) +
         ", pgmkclean " + std::to_string(clean) + ", nr_dirty after " +
         std::to_string(m.file->nr_dirty()) + "; expected them equal" +
         (tracked ? std::string(" (pgmkclean 0: host tracking)") : std::string()) +
         (expect >= 0 ? " to " + std::to_string(expect) : std::string()) + " and nr_dirty 0";
}

void JsonCommon(JsonLine& j, const Context& ctx) {
  j.Str("mode", ModeName(ctx.o.mode)).Int("seed", ctx.o.seed).Str("git_sha", GitSha());
  j.Str("compiler", CompilerVersion()).Str("build", BuildKind()).Int("nproc", Nproc());
  j.Str("config", ctx.config);
}

void ReportSkip(const Context& ctx, const char* name, const std::string& why) {
  if (ctx.o.json) {
    JsonLine j;
    j.Str("name", name).Str("skipped", why);
    JsonCommon(j, ctx);
    j.Print();
  } else {
    std::printf("skipped: %s\n", why.c_str());
  }
  std::fflush(stdout);
}

// ---- Part 1: random writes plus a periodic msync ----

struct LoopResult {
  uint64_t total_ns = 0, msync_ns = 0, msyncs = 0, pgwriteback = 0, host_pages = 0, dev_pages = 0,
           faults = 0;
  uint64_t read_ns = 0;  // the first read of every page (emu: faults with fault-around, read in)
  std::string why;  // non-empty: a call failed
};

// --writes random 8-byte writes, msync(MS_SYNC) after every --sync-every and
// at the end.
__attribute__((noinline)) void RandomWrites(Mapping& m, const Options& o, LoopResult* out) {
  auto* words = reinterpret_cast<volatile uint64_t*>(m.base);
  const uint64_t nwords = m.bytes / sizeof(uint64_t);
  std::mt19937_64 rng(static_cast<uint64_t>(o.seed));
  const uint64_t t0 = NowNs();
  for (int64_t j = 0; j < o.writes; j++) {
    words[rng() % nwords] = WriteValue(static_cast<uint64_t>(j));
    if ((j + 1) % o.sync_every == 0 || j + 1 == o.writes) {
      const uint64_t s0 = NowNs();
      out->why = Sync(m, MS_SYNC);
      out->msync_ns += NowNs() - s0;
      out->msyncs++;
      if (!out->why.empty()) return;
    }
  }
  out->total_ns = NowNs() - t0;
}

// The distinct pages RandomWrites writes (the same generator, replayed).
uint64_t PagesTouched(size_t bytes, const Options& o) {
  std::vector<bool> seen(bytes / kHostPageSize);
  std::mt19937_64 rng(static_cast<uint64_t>(o.seed));
  uint64_t n = 0;
  for (int64_t j = 0; j < o.writes; j++) {
    const uint64_t page = (rng() % (bytes / 8)) / kWordsPerPage;
    if (!seen[page]) n++;
    seen[page] = true;
  }
  return n;
}

Result RunLoop(const Context& ctx, bool emu, size_t pages, const FolioSpec& folio, TempFile* f,
               Mapping* m, LoopResult* r) {
  Result res = Prepare(ctx, emu, pages, folio, f, m, &r->read_ns);
  if (!res.ok) return res;
  const Probe p0 = Sample(*m);
  RandomWrites(*m, ctx.o, r);
  const Probe p1 = Sample(*m);
  if (!r->why.empty()) return Result::Fail(r->why);
  r->pgwriteback = EmuWriteback(*m, p0, p1);
  r->host_pages = HostPages(p0, p1);
  r->dev_pages = DevPages(p0, p1);
  r->faults = Faults(*m, p0, p1);
  if (emu) {
    std::string bad = CheckWriteback(*m, p0, p1, -1);
    if (!bad.empty()) return Result::Fail("emu's counters over the loop: " + bad);
  }
  return Result::Ok();
}

void PrintLoopRow(const Context& ctx, const FolioSpec& folio, bool emu, const LoopResult& r,
                  const LoopResult* peer) {
  const double n = static_cast<double>(ctx.o.writes);
  const double total = static_cast<double>(r.total_ns), ms = static_cast<double>(r.msync_ns);
  const char* side = emu ? "emu" : "kernel";
  if (ctx.o.json) {
    JsonLine j;
    j.Str("name", std::string("dirty_random_writes_") + side).Str("folios", folio.name);
    j.Num("value", total / n).Str("unit", "ns/write").Num("total_s", total * 1e-9);
    j.Num("write_ns_per_write", (total - ms) / n).Num("msync_s", ms * 1e-9);
    j.Int("msyncs", static_cast<int64_t>(r.msyncs));
    if (emu) j.Int("pgwriteback", static_cast<int64_t>(r.pgwriteback));
    j.Int("host_pages_dirtied", static_cast<int64_t>(r.host_pages));
    if (!dev_stat_path.empty()) j.Int("dev_pages_written", static_cast<int64_t>(r.dev_pages));
    j.Int("faults", static_cast<int64_t>(r.faults));
    if (peer != nullptr) {
      j.Str("peer", "kernel").Num("peer_value", static_cast<double>(peer->total_ns) / n);
      j.Num("ratio", total / static_cast<double>(peer->total_ns));
      j.Num("msync_ratio", ms / static_cast<double>(peer->msync_ns));
    }
    j.Int("file_mib", ctx.o.file_mib)
        .Int("writes", ctx.o.writes)
        .Int("sync_every", ctx.o.sync_every);
    JsonCommon(j, ctx);
    j.Print();
    return;
  }
  std::printf("%-7s %-6s %8.3f %9.1f %9.1f %8.3f %6llu %9.3f %11s %9llu %9s %8llu\n", side,
              folio.label, total * 1e-9, total / n, (total - ms) / n, ms * 1e-9, U(r.msyncs),
              ms * 1e-6 / static_cast<double>(std::max<uint64_t>(r.msyncs, 1)),
              emu ? std::to_string(r.pgwriteback).c_str() : "-", U(r.host_pages),
              DevText(r.dev_pages).c_str(), U(r.faults));
}

// Part 1 with one kind of host folios.
void RunLoopVariant(Context& ctx, const FolioSpec& folio, size_t pages) {
  const Options& o = ctx.o;
  const std::string where = std::string("part 1, ") + folio.name + " folios, ";
  TempFile kfile, efile;
  Mapping km, em;
  LoopResult k, e;
  Result r = RunLoop(ctx, /*emu=*/false, pages, folio, &kfile, &km, &k);
  if (!r.ok) return Failed(ctx, where + "kernel", r.why);
  PrintLoopRow(ctx, folio, false, k, nullptr);
  r = RunLoop(ctx, /*emu=*/true, pages, folio, &efile, &em, &e);
  if (!r.ok) return Failed(ctx, where + "emu", r.why);
  PrintLoopRow(ctx, folio, true, e, &k);
  // The data, while both are still mapped: msync alone put it in the file.
  uint64_t mismatch = 0, changed = 0;
  r = CompareFiles(efile, kfile, pages, &mismatch, &changed);
  if (!r.ok) return Failed(ctx, where + "data check", r.why);
  const uint64_t touched = PagesTouched(pages * kHostPageSize, o);
  const double wn = static_cast<double>(o.writes);
  if (std::isnan(ctx.emu_sync_ns_per_page)) {
    ctx.emu_sync_ns_per_page =
        static_cast<double>(e.total_ns - e.msync_ns) / static_cast<double>(e.faults);
    ctx.kernel_sync_ns_per_page =
        static_cast<double>(k.total_ns - k.msync_ns) / static_cast<double>(k.faults);
    ctx.sync_folios = folio.name;
  }
  if (o.json) {
    JsonLine j;
    j.Str("name", "dirty_random_writes_data").Str("folios", folio.name);
    j.Int("mismatch", static_cast<int64_t>(mismatch))
        .Int("changed_pages", static_cast<int64_t>(changed));
    j.Int("pages_touched", static_cast<int64_t>(touched));
    j.Num("first_read_ns_per_page", static_cast<double>(e.read_ns) / static_cast<double>(pages));
    j.Num("peer_first_read_ns_per_page", static_cast<double>(k.read_ns) / static_cast<double>(pages));
    JsonCommon(j, ctx);
    j.Print();
  } else {
    std::printf("  first read of every page (untimed above): emu %.0f ns/page, kernel %.0f "
                "ns/page, emu / kernel %s\n",
                static_cast<double>(e.read_ns) / static_cast<double>(pages),
                static_cast<double>(k.read_ns) / static_cast<double>(pages),
                Ratio(static_cast<double>(e.read_ns), static_cast<double>(k.read_ns)).c_str());
    std::printf(
        "  emu / kernel (%s): total %s, ns/write w/o msync %s, msync %s; data read back: "
        "%llu pages mismatch, emu file pages changed %llu of %llu written\n",
        folio.name, Ratio(static_cast<double>(e.total_ns), static_cast<double>(k.total_ns)).c_str(),
        Ratio(static_cast<double>(e.total_ns - e.msync_ns) / wn,
              static_cast<double>(k.total_ns - k.msync_ns) / wn)
            .c_str(),
        Ratio(static_cast<double>(e.msync_ns), static_cast<double>(k.msync_ns)).c_str(),
        U(mismatch), U(changed), U(touched));
  }
  if (mismatch != 0 || changed != touched) {
    Failed(ctx, where + "data check",
           std::to_string(mismatch) + " pages of the emu file differ from the kernel's, and " +
               std::to_string(changed) + " pages changed where " + std::to_string(touched) +
               " were written");
  }
  std::fflush(stdout);
}

void PrintFolioNote() {
  std::printf(
      "folios: how the files were written, which sets the host page cache's folio size: 4k = "
      "4 KiB writes (4 KiB folios), large = 1 MiB writes (folios of up to 1 MiB: the kernel's "
      "mapping dirties and writes them whole; emu's pwrite of a page is accounted a whole folio "
      "dirty but writes one block)\n");
}

void RunLoopPart(Context& ctx) {
  const Options& o = ctx.o;
  const size_t pages = static_cast<size_t>(o.file_mib) * (kMiB / kHostPageSize);
  if (!o.json) {
    std::printf(
        "\npart 1: %lld random 8-byte writes to a %lld MiB shared file mapping (every page read "
        "first, untimed), msync(MS_SYNC) of the whole mapping every %lld writes and at the end\n"
        "pgwriteback: emu's pages written back; dirtied: /proc/self/io write_bytes / 4 KiB (pages "
        "the host page cache accounted dirty, whole folios); dev: pages written to the device "
        "(all writers); faults: emu pgfault, kernel ru_minflt\n",
        static_cast<long long>(o.writes), static_cast<long long>(o.file_mib),
        static_cast<long long>(o.sync_every));
    PrintFolioNote();
    std::printf("\n%-7s %-6s %8s %9s %9s %8s %6s %9s %11s %9s %9s %8s\n", "side", "folios",
                "total s", "ns/write", "w/o msync", "msync s", "msyncs", "ms/msync", "pgwriteback",
                "dirtied", "dev", "faults");
    std::fflush(stdout);
  }
  const std::string no_room = NoRoom(3 * pages * kHostPageSize + (uint64_t{1} << 30));
  if (!no_room.empty()) return ReportSkip(ctx, "dirty_random_writes", no_room);
  for (int f : o.folios) RunLoopVariant(ctx, kFolioSpecs[f], pages);
}

// ---- Part 2: msync cost by dirty pages ----

// The pages of one dirty set and the tag of their values.
struct DirtySet {
  std::vector<uint32_t> pages;
  uint64_t tag = 0;
};

// `n` distinct random pages: a partial Fisher-Yates over `order` (kept
// between calls, so each set is a fresh sample).
DirtySet PickSet(std::vector<uint32_t>& order, size_t n, std::mt19937_64& rng, uint64_t tag) {
  for (size_t i = 0; i < n; i++) {
    const size_t j = i + static_cast<size_t>(rng() % (order.size() - i));
    std::swap(order[i], order[j]);
  }
  return {std::vector<uint32_t>(order.begin(), order.begin() + static_cast<ptrdiff_t>(n)), tag};
}

__attribute__((noinline)) void WriteSet(char* base, const DirtySet& s) {
  for (uint32_t page : s.pages) {
    const uint64_t word = (page * 0x9E3779B97F4A7C15ull + s.tag) % kWordsPerPage;
    reinterpret_cast<volatile uint64_t*>(base + uint64_t{page} * kHostPageSize)[word] =
        WriteValue(s.tag * 0x100000000ull + page);
  }
}

struct SyncSample {
  double ns = 0;
  uint64_t pgwriteback = 0, host_pages = 0, dev_pages = 0;
};

// Writes `s` (untimed), then one timed msync of the whole mapping.
Result DirtyAndSync(Mapping& m, const DirtySet& s, int flags, SyncSample* out) {
  const Probe p0 = Sample(m);
  WriteSet(m.base, s);
  const uint64_t t0 = NowNs();
  std::string why = Sync(m, flags);
  const uint64_t t1 = NowNs();
  const Probe p1 = Sample(m);
  if (!why.empty()) return Result::Fail(why);
  out->ns = static_cast<double>(t1 - t0);
  out->pgwriteback = EmuWriteback(m, p0, p1);
  out->host_pages = HostPages(p0, p1);
  out->dev_pages = DevPages(p0, p1);
  if (m.emu()) {
    std::string bad = CheckWriteback(m, p0, p1, static_cast<int64_t>(s.pages.size()));
    if (!bad.empty()) {
      return Result::Fail("emu's counters over " + std::to_string(s.pages.size()) +
                          " dirtied pages and one msync: " + bad);
    }
  }
  return Result::Ok();
}

enum SyncRow { kRowKernel, kRowEmu, kRowEmuAsync, kNrSyncRows };
constexpr const char* kSyncRowName[kNrSyncRows] = {"kernel", "emu", "emu_async"};
constexpr const char* kSyncRowLabel[kNrSyncRows] = {"kernel MS_SYNC", "emu MS_SYNC",
                                                    "emu MS_ASYNC"};

struct SyncStats {
  Summary ns;
  SyncSample last;  // the counters of the last call
};

void PrintSyncRow(const Context& ctx, const FolioSpec& folio, const std::string& dirty, size_t n,
                  int row, const SyncStats& s, const SyncStats* peer) {
  const double per = n > 0 ? s.ns.p50 / static_cast<double>(n) : std::nan("");
  if (ctx.o.json) {
    JsonLine j;
    j.Str("name", std::string("dirty_msync_") + kSyncRowName[row]).Str("folios", folio.name);
    j.Num("value", s.ns.p50).Str("unit", "ns/call").Num("min", s.ns.min).Num("max", s.ns.max);
    j.Str("dirty_pct", dirty).Int("dirty_pages", static_cast<int64_t>(n));
    if (row != kRowKernel) j.Int("pgwriteback", static_cast<int64_t>(s.last.pgwriteback));
    j.Int("host_pages_dirtied", static_cast<int64_t>(s.last.host_pages));
    if (!dev_stat_path.empty()) j.Int("dev_pages_written", static_cast<int64_t>(s.last.dev_pages));
    j.Num("ns_per_dirty_page", per);
    if (peer != nullptr) {
      j.Str("peer", "kernel").Num("peer_value", peer->ns.p50).Num("ratio", s.ns.p50 / peer->ns.p50);
    }
    j.Int("map_mib", ctx.o.map_mib).Int("reps", ctx.o.reps);
    JsonCommon(j, ctx);
    j.Print();
    return;
  }
  char per_buf[32] = "";
  if (n > 0) std::snprintf(per_buf, sizeof(per_buf), "%.2f", per * 1e-3);
  std::printf("%-6s %-6s %8zu  %-14s %9.3f %11s %9llu %9s %9s %10s\n", folio.label, dirty.c_str(),
              n, kSyncRowLabel[row], s.ns.p50 * 1e-6,
              row != kRowKernel ? std::to_string(s.last.pgwriteback).c_str() : "-",
              U(s.last.host_pages), DevText(s.last.dev_pages).c_str(), per_buf,
              peer != nullptr ? Ratio(s.ns.p50, peer->ns.p50).c_str() : "");
}

// One fraction's repetitions: both sides' MS_SYNC, then emu's MS_ASYNC.
Result RunFraction(Mapping& km, Mapping& em, size_t n, int64_t reps, std::vector<uint32_t>& order,
                   std::mt19937_64& rng, uint64_t* tag, std::array<SyncStats, kNrSyncRows>* st) {
  Mapping* side[2] = {&km, &em};
  std::vector<double> ns[kNrSyncRows];
  for (int64_t rep = 0; rep < reps; rep++) {
    DirtySet set = PickSet(order, n, rng, (*tag)++);
    for (int k = 0; k < 2; k++) {
      const int s = static_cast<int>((rep + k) % 2);  // kRowKernel or kRowEmu
      SyncSample out;
      Result r = DirtyAndSync(*side[s], set, MS_SYNC, &out);
      if (!r.ok) return Result::Fail(std::string(kSyncRowLabel[s]) + ": " + r.why);
      ns[s].push_back(out.ns);
      (*st)[s].last = out;
    }
    if (n == 0) continue;
    // Emu's MS_ASYNC: another set; the kernel gets the same writes (its file
    // must match) and both are synced, untimed, after.
    DirtySet async_set = PickSet(order, n, rng, (*tag)++);
    SyncSample out;
    Result r = DirtyAndSync(em, async_set, MS_ASYNC, &out);
    if (!r.ok) return Result::Fail("emu MS_ASYNC: " + r.why);
    ns[kRowEmuAsync].push_back(out.ns);
    (*st)[kRowEmuAsync].last = out;
    WriteSet(km.base, async_set);
    for (Mapping* m : side) {
      std::string why = Sync(*m, MS_SYNC);
      if (!why.empty()) return Result::Fail("the msync after MS_ASYNC: " + why);
    }
  }
  for (int i = 0; i < kNrSyncRows; i++) (*st)[i].ns = Summarize(ns[i]);
  return Result::Ok();
}

// Emu's Writeback walk: MS_ASYNC with one dirty page, the first of the
// mapping or the last (the walk stops at the last dirty page), p50 of
// `reps` each; the kernel's mapping gets the same writes. ns per clean page
// visited = (last - first) / (pages - 1).
Result MeasureWalk(Mapping& km, Mapping& em, int64_t reps, uint64_t* tag, double* first_ns,
                   double* last_ns) {
  std::vector<double> ns[2];
  for (int64_t rep = 0; rep < reps; rep++) {
    for (int k = 0; k < 2; k++) {
      DirtySet set{{k == 0 ? 0u : static_cast<uint32_t>(em.pages() - 1)}, (*tag)++};
      SyncSample out;
      Result r = DirtyAndSync(em, set, MS_ASYNC, &out);
      if (!r.ok) return Result::Fail("emu MS_ASYNC of one dirty page: " + r.why);
      ns[k].push_back(out.ns);
      WriteSet(km.base, set);
    }
  }
  for (Mapping* m : {&km, &em}) {
    std::string why = Sync(*m, MS_SYNC);
    if (!why.empty()) return Result::Fail("the msync after the walk: " + why);
  }
  *first_ns = Percentile(ns[0], 0.5);
  *last_ns = Percentile(ns[1], 0.5);
  return Result::Ok();
}

// Part 2 with one kind of host folios.
void RunSyncVariant(Context& ctx, const FolioSpec& folio, size_t pages) {
  const Options& o = ctx.o;
  const std::string where = std::string("part 2, ") + folio.name + " folios, ";
  TempFile kfile, efile;
  Mapping km, em;
  Result r = Prepare(ctx, /*emu=*/false, pages, folio, &kfile, &km);
  if (!r.ok) return Failed(ctx, where + "kernel", r.why);
  r = Prepare(ctx, /*emu=*/true, pages, folio, &efile, &em);
  if (!r.ok) return Failed(ctx, where + "emu", r.why);
  std::vector<uint32_t> order = SequentialOrder(pages);
  std::mt19937_64 rng(static_cast<uint64_t>(o.seed));
  uint64_t tag = 1;
  // Rows: the clean msync first, then each dirty fraction.
  std::vector<std::array<SyncStats, kNrSyncRows>> stats;
  std::vector<size_t> counts;
  for (size_t f = 0; f <= o.dirty_pct.size(); f++) {
    const double want = f == 0 ? 0 : static_cast<double>(pages) * o.dirty_pct[f - 1] / 100;
    const size_t n =
        f == 0 ? 0 : std::clamp<size_t>(static_cast<size_t>(std::llround(want)), 1, pages);
    std::array<SyncStats, kNrSyncRows> st;
    r = RunFraction(km, em, n, o.reps, order, rng, &tag, &st);
    if (!r.ok) return Failed(ctx, where + std::to_string(n) + " dirty pages", r.why);
    char dirty[32];
    if (n == 0) {
      std::snprintf(dirty, sizeof(dirty), "clean");
    } else {
      std::snprintf(dirty, sizeof(dirty), "%g%%", o.dirty_pct[f - 1]);
    }
    for (int i = 0; i < kNrSyncRows; i++) {
      if (n == 0 && i == kRowEmuAsync) continue;
      PrintSyncRow(ctx, folio, dirty, n, i, st[i], i == kRowKernel ? nullptr : &st[kRowKernel]);
    }
    stats.push_back(st);
    counts.push_back(n);
  }
  // Time per dirty page of each fraction relative to the first.
  if (stats.size() > 2) {
    if (!o.json) {
      std::printf(
          "  %s: us per dirty page relative to the %g%% row (1.00: proportional to "
          "dirty pages):\n",
          folio.name, o.dirty_pct[0]);
    }
    for (int i = 0; i < kNrSyncRows; i++) {
      std::string list;
      const double first = stats[1][i].ns.p50 / static_cast<double>(counts[1]);
      for (size_t f = 2; f < stats.size(); f++) {
        const double per = stats[f][i].ns.p50 / static_cast<double>(counts[f]);
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%s%g%% %s", list.empty() ? "" : ", ", o.dirty_pct[f - 1],
                      Ratio(per, first).c_str());
        list += buf;
        if (o.json) {
          JsonLine j;
          j.Str("name", std::string("dirty_msync_per_page_vs_first_") + kSyncRowName[i]);
          j.Str("folios", folio.name).Num("value", per / first).Str("unit", "x");
          j.Num("dirty_pct", o.dirty_pct[f - 1]).Num("first_dirty_pct", o.dirty_pct[0]);
          JsonCommon(j, ctx);
          j.Print();
        }
      }
      if (!o.json) std::printf("    %-14s %s\n", kSyncRowLabel[i], list.c_str());
    }
  }
  double first_ns = 0, last_ns = 0;
  r = MeasureWalk(km, em, std::max<int64_t>(o.reps, 9), &tag, &first_ns, &last_ns);
  if (!r.ok) return Failed(ctx, where + "walk", r.why);
  const double per_clean = (last_ns - first_ns) / static_cast<double>(pages - 1);
  if (o.json) {
    JsonLine j;
    j.Str("name", "dirty_msync_emu_walk").Str("folios", folio.name).Num("value", per_clean);
    j.Str("unit", "ns/clean page").Num("first_page_ns", first_ns).Num("last_page_ns", last_ns);
    j.Int("pages", static_cast<int64_t>(pages));
    JsonCommon(j, ctx);
    j.Print();
  } else {
    std::printf(
        "  emu Writeback walk (%s): MS_ASYNC of 1 dirty page, the first %.1f us, the last "
        "%.1f us: %.3f ns per clean page passed (%.1f us over %zu pages)\n",
        folio.name, first_ns * 1e-3, last_ns * 1e-3, per_clean, (last_ns - first_ns) * 1e-3, pages);
  }
  uint64_t mismatch = 0, changed = 0;
  r = CompareFiles(efile, kfile, pages, &mismatch, &changed);
  if (!r.ok) return Failed(ctx, where + "data check", r.why);
  if (o.json) {
    JsonLine j;
    j.Str("name", "dirty_msync_data").Str("folios", folio.name);
    j.Int("mismatch", static_cast<int64_t>(mismatch))
        .Int("changed_pages", static_cast<int64_t>(changed));
    JsonCommon(j, ctx);
    j.Print();
  } else {
    std::printf(
        "  data (%s): emu file vs kernel file, read back: %llu pages mismatch (%llu pages "
        "changed from the initial contents)\n",
        folio.name, U(mismatch), U(changed));
  }
  if (mismatch != 0) {
    Failed(ctx, where + "data check",
           std::to_string(mismatch) + " pages of the emu file differ from the kernel's");
  }
  std::fflush(stdout);
}

void RunSyncPart(Context& ctx) {
  const Options& o = ctx.o;
  const size_t pages = static_cast<size_t>(o.map_mib) * (kMiB / kHostPageSize);
  if (!o.json) {
    std::printf(
        "\npart 2: one msync of a %lld MiB shared file mapping, every page read first (cached, "
        "mapped clean), after writing 8 bytes to each of a random set of distinct pages (untimed)"
        "; p50 of %lld\npgwriteback, dirtied and dev as in part 1 (of the last call); emu "
        "MS_ASYNC: pwrite without "
        "fdatasync (the kernel's MS_ASYNC writes nothing: no peer); ratio = emu / kernel "
        "MS_SYNC\n",
        static_cast<long long>(o.map_mib), static_cast<long long>(o.reps));
    PrintFolioNote();
    std::printf("\n%-6s %-6s %8s  %-14s %9s %11s %9s %9s %9s %10s\n", "folios", "dirty", "pages",
                "side", "msync ms", "pgwriteback", "dirtied", "dev", "us/dirty", "emu/kernel");
    std::fflush(stdout);
  }
  const std::string no_room = NoRoom(3 * pages * kHostPageSize + (uint64_t{1} << 30));
  if (!no_room.empty()) return ReportSkip(ctx, "dirty_msync", no_room);
  for (int f : o.folios) RunSyncVariant(ctx, kFolioSpecs[f], pages);
}

// ---- Part 3: the kernel's WP_ASYNC + PAGEMAP_SCAN ----

// A userfaultfd with `features` (after UFFDIO_API), or -1 and the reason.
int OpenUffd(uint64_t features, uint64_t* got, std::string* why) {
  int fd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | kUffdUserModeOnly));
  if (fd < 0) {
    *why = Errno("userfaultfd");
    return -1;
  }
  uffdio_api api = {};
  api.api = UFFD_API;
  api.features = features;
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    *why = Errno("UFFDIO_API");
    close(fd);
    return -1;
  }
  *got = api.features;
  return fd;
}

struct WpRound {
  double write_ns = 0, scan_ns = 0;
  uint64_t faults = 0, written = 0, harvested = 0, regions = 0;
};

// Harvests the written pages of [base, base + bytes) and write-protects
// them again; marks them in `found`.
Result Scan(int pagemap, char* base, size_t bytes, std::vector<PageRegion>& vec,
            std::vector<bool>& found, WpRound* r) {
  PmScanArg arg = {};
  arg.size = sizeof(arg);
  arg.flags = kPmScanWpMatching | kPmScanCheckWpasync;
  arg.start = Addr(base);
  arg.end = Addr(base) + bytes;
  arg.vec = Addr(vec.data());
  arg.vec_len = vec.size();
  arg.category_mask = kPageIsWritten;
  arg.return_mask = kPageIsWritten;
  for (;;) {
    const long n = ioctl(pagemap, kPagemapScan, &arg);
    if (n < 0) return Result::Fail(Errno("ioctl(PAGEMAP_SCAN)"));
    r->regions++;  // one scan
    for (long i = 0; i < n; i++) {
      for (uint64_t a = vec[i].start; a < vec[i].end; a += kHostPageSize) {
        found[(a - Addr(base)) / kHostPageSize] = true;
        r->harvested++;
      }
    }
    if (arg.walk_end >= arg.end) return Result::Ok();
    if (arg.walk_end <= arg.start) return Result::Fail("PAGEMAP_SCAN made no progress");
    arg.start = arg.walk_end;
  }
}

// Emu's side of part 3: a shared mapping of a --wp-mib file with
// `tracking` (MachineOptions::dirty_tracking), every page read first (mapped
// clean), then the same rounds of random writes as the kernel's; after each
// round, with "async", one harvest of the whole file (what writeback does
// first); then nr_dirty must be the pages the round wrote, and an untimed
// MS_ASYNC cleans them for the next round.
Result EmuWpRounds(const Context& ctx, const char* tracking, std::vector<WpRound>* rounds) {
  const Options& o = ctx.o;
  const size_t pages = static_cast<size_t>(o.wp_mib) * (kMiB / kHostPageSize);
  TempFile f;
  Mapping m;
  Result r = CreateFile(o.dir, pages, 1, &f);
  if (r.ok) r = MapEmu(ctx, f.path, pages * kHostPageSize, &m, tracking);
  f.Unlink();
  if (!r.ok) return r;
  const bool tracked = m.machine->host().tracks_writes();
  if (tracked != (std::string(tracking) == "async")) {
    return Result::Fail(std::string("dirty tracking '") + tracking + "' but the host " +
                        (tracked ? "tracks" : "does not track") + " writes");
  }
  ReadEveryPage(m.base, pages);
  std::mt19937_64 rng(static_cast<uint64_t>(o.seed) + 3);
  auto* words = reinterpret_cast<volatile uint64_t*>(m.base);
  const uint64_t nwords = m.bytes / sizeof(uint64_t);
  for (int64_t round = 0; round < o.wp_rounds; round++) {
    WpRound w;
    std::vector<uint64_t> idx(static_cast<size_t>(o.sync_every));
    for (uint64_t& x : idx) x = rng() % nwords;
    std::vector<bool> written(pages);
    for (uint64_t x : idx) written[x / kWordsPerPage] = true;
    w.written = static_cast<uint64_t>(std::count(written.begin(), written.end(), true));
    const Probe p0 = Sample(m);
    const uint64_t t0 = NowNs();
    for (size_t j = 0; j < idx.size(); j++) words[idx[j]] = WriteValue(j);
    const uint64_t t1 = NowNs();
    if (tracked) m.file->Harvest(0, pages);
    const uint64_t t2 = NowNs();
    const Probe p1 = Sample(m);
    w.write_ns = static_cast<double>(t1 - t0);
    w.scan_ns = static_cast<double>(t2 - t1);
    w.faults = D(p0.emu, p1.emu, VmEvent::k_pgfault);
    w.harvested = tracked ? D(p0.emu, p1.emu, VmEvent::k_pgharvest) : w.faults;
    w.regions = D(p0.emu, p1.emu, VmEvent::k_harvest_scans);
    if (m.file->nr_dirty() != w.written) {
      return Result::Fail("round " + std::to_string(round) + ": nr_dirty " +
                          std::to_string(m.file->nr_dirty()) + " after " +
                          std::to_string(w.written) + " pages were written");
    }
    const std::string bad = Sync(m, MS_ASYNC);
    if (!bad.empty()) return Result::Fail(bad);
    rounds->push_back(w);
  }
  return Result::Ok();
}

// One part-3 row (p50 over rounds); returns the tracking cost per written
// page: (writes + scan) / pages written.
double PrintWpRow(const Context& ctx, const char* side, const std::vector<WpRound>& rounds) {
  const Options& o = ctx.o;
  std::vector<double> wns, sns, fl, wr, hv, rg;
  for (const WpRound& w : rounds) {
    wns.push_back(w.write_ns / static_cast<double>(o.sync_every));
    sns.push_back(w.scan_ns);
    fl.push_back(static_cast<double>(w.faults));
    wr.push_back(static_cast<double>(w.written));
    hv.push_back(static_cast<double>(w.harvested));
    rg.push_back(static_cast<double>(w.regions));
  }
  const double scan = Percentile(sns, 0.5), written = Percentile(wr, 0.5);
  const double per_page =
      (Percentile(wns, 0.5) * static_cast<double>(o.sync_every) + scan) / written;
  if (o.json) {
    JsonLine j;
    j.Str("name", std::string("dirty_wp_") + side).Num("value", per_page).Str("unit", "ns/page");
    j.Num("write_ns_per_write", Percentile(wns, 0.5)).Num("faults", Percentile(fl, 0.5));
    j.Num("pages_written", written).Num("harvested", Percentile(hv, 0.5));
    j.Num("scans", Percentile(rg, 0.5)).Num("scan_ns", scan);
    j.Num("scan_ns_per_page", scan / written).Int("wp_mib", o.wp_mib).Int("rounds", o.wp_rounds);
    JsonCommon(j, ctx);
    j.Print();
    return per_page;
  }
  std::printf("%-16s %14.1f %8.0f %13.0f %10.0f %8.0f %9.1f %12.1f %13.0f\n", side,
              Percentile(wns, 0.5), Percentile(fl, 0.5), written, Percentile(hv, 0.5),
              Percentile(rg, 0.5), scan * 1e-3, scan / written, per_page);
  std::fflush(stdout);
  return per_page;
}

void RunEmuWp(Context& ctx) {
  if (!ctx.o.json) {
    std::printf("%-16s %14s %8s %13s %10s %8s %9s %12s %13s\n", "p50 per round",
                "write ns/write", "faults", "pages written", "found", "scans", "scan us",
                "scan ns/page", "ns/page");
  }
  static constexpr const char* kModes[2] = {"fault", "async"};
  for (int k = 0; k < 2; k++) {
    const std::string name = std::string("emu ") + kModes[k];
    std::vector<WpRound> rounds;
    Result r = EmuWpRounds(ctx, kModes[k], &rounds);
    if (!r.ok) {
      // No tracker on this kernel: "async" cannot be made (EOPNOTSUPP).
      if (k == 1 && r.why.find("EOPNOTSUPP") != std::string::npos) {
        ReportSkip(ctx, "dirty_wp_emu_async", r.why);
        continue;
      }
      Failed(ctx, "part 3, " + name, r.why);
      continue;
    }
    ctx.emu_wp_ns[k] = PrintWpRow(ctx, name.c_str(), rounds);
  }
}

void RunWpPart(Context& ctx) {
  const Options& o = ctx.o;
  const size_t pages = static_cast<size_t>(o.wp_mib) * (kMiB / kHostPageSize);
  const size_t bytes = pages * kHostPageSize;
  if (!o.json) {
    std::printf(
        "\npart 3: write tracking, seed 001's write fault against the host's record of writes\n"
        "emu: a %lld MiB shared file mapping (every page read first, so mapped clean), rounds of "
        "the same random writes; 'fault' (dirty_tracking fault): each first write to a clean page "
        "is a fault the emulator handles; 'async' (dirty_tracking async): the writes go through "
        "and one harvest of the file (PAGEMAP_SCAN, what writeback does first) follows each "
        "round; nr_dirty must then be the pages written, and an untimed MS_ASYNC cleans them\n"
        "kernel primitive: %lld MiB private anonymous mapping (every page written "
        "first), userfaultfd UFFD_FEATURE_WP_ASYNC; %lld rounds of %lld random 8-byte writes, then "
        "one PAGEMAP_SCAN (PAGE_IS_WRITTEN, PM_SCAN_WP_MATCHING) harvesting the written pages and "
        "protecting them again (p50 over rounds)\n\n",
        static_cast<long long>(o.wp_mib), static_cast<long long>(o.wp_mib),
        static_cast<long long>(o.wp_rounds), static_cast<long long>(o.sync_every));
  }
  RunEmuWp(ctx);
  std::string no_room = NoRoom(bytes + (uint64_t{1} << 30));
  if (!no_room.empty()) return ReportSkip(ctx, "dirty_wp_async_kernel", no_room);
  uint64_t features = 0;
  std::string why;
  int probe = OpenUffd(0, &features, &why);
  if (probe < 0) return ReportSkip(ctx, "dirty_wp_async_kernel", "kernel primitive: " + why);
  close(probe);
  if (!(features & kUffdFeatureWpAsync)) {
    return ReportSkip(ctx, "dirty_wp_async_kernel",
                      "kernel primitive: UFFDIO_API does not offer UFFD_FEATURE_WP_ASYNC");
  }
  const int uffd =
      OpenUffd(kUffdFeatureWpAsync | (features & kUffdFeatureWpUnpopulated), &features, &why);
  if (uffd < 0) return ReportSkip(ctx, "dirty_wp_async_kernel", "kernel primitive: " + why);
  const int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  char* base = MapNative(bytes);
  Result r;
  std::vector<WpRound> rounds;
  if (pagemap < 0 || base == nullptr) {
    r = Result::Fail(Errno(pagemap < 0 ? "open /proc/self/pagemap" : "mmap"));
  } else {
    for (size_t i = 0; i < pages; i++) base[i * kHostPageSize] = 1;  // populated
    uffdio_register reg = {};
    reg.range = {Addr(base), bytes};
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    uffdio_writeprotect wp = {};
    wp.range = {Addr(base), bytes};
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
      r = Result::Fail(Errno("UFFDIO_REGISTER(WP)"));
    } else if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
      r = Result::Fail(Errno("UFFDIO_WRITEPROTECT"));
    }
    std::vector<PageRegion> vec(4096);
    std::mt19937_64 rng(static_cast<uint64_t>(o.seed) + 3);
    auto* words = reinterpret_cast<volatile uint64_t*>(base);
    for (int64_t round = 0; r.ok && round < o.wp_rounds; round++) {
      WpRound w;
      std::vector<uint64_t> idx(static_cast<size_t>(o.sync_every));
      for (uint64_t& x : idx) x = rng() % (bytes / 8);
      const uint64_t f0 = MinorFaults();
      const uint64_t t0 = NowNs();
      for (size_t j = 0; j < idx.size(); j++) words[idx[j]] = WriteValue(j);
      const uint64_t t1 = NowNs();
      w.faults = MinorFaults() - f0;
      std::vector<bool> written(pages), found(pages);
      for (uint64_t x : idx) written[x / kWordsPerPage] = true;
      w.written = static_cast<uint64_t>(std::count(written.begin(), written.end(), true));
      const uint64_t t2 = NowNs();
      r = Scan(pagemap, base, bytes, vec, found, &w);
      const uint64_t t3 = NowNs();
      w.write_ns = static_cast<double>(t1 - t0);
      w.scan_ns = static_cast<double>(t3 - t2);
      if (r.ok && found != written) {
        r = Result::Fail("round " + std::to_string(round) + ": PAGEMAP_SCAN returned " +
                         std::to_string(w.harvested) + " pages, " + std::to_string(w.written) +
                         " were written, not the same set");
      }
      rounds.push_back(w);
    }
  }
  if (base != nullptr) UnmapNative(base, bytes);
  if (pagemap >= 0) close(pagemap);
  close(uffd);
  if (!r.ok) return ReportSkip(ctx, "dirty_wp_async_kernel", "kernel primitive failed: " + r.why);
  const double per_page = PrintWpRow(ctx, "kernel", rounds);
  if (o.json) return;
  std::printf("every kernel round: PAGEMAP_SCAN returned exactly the pages written\n");
  std::printf("tracking cost per written page ((writes + scan) / pages written):");
  if (std::isfinite(ctx.emu_wp_ns[0])) std::printf(" emu fault %.0f ns", ctx.emu_wp_ns[0]);
  if (std::isfinite(ctx.emu_wp_ns[1])) std::printf(", emu async %.0f ns", ctx.emu_wp_ns[1]);
  std::printf(", kernel primitive %.0f ns", per_page);
  if (std::isfinite(ctx.emu_wp_ns[0]) && std::isfinite(ctx.emu_wp_ns[1])) {
    std::printf("; emu async / emu fault %s", Ratio(ctx.emu_wp_ns[1], ctx.emu_wp_ns[0]).c_str());
  }
  if (std::isfinite(ctx.emu_sync_ns_per_page)) {
    std::printf(
        "; part 1 (%s: write loop w/o msync / faults): emu %.0f ns, kernel %.0f ns",
        ctx.sync_folios, ctx.emu_sync_ns_per_page, ctx.kernel_sync_ns_per_page);
  }
  std::printf("\n");
  std::fflush(stdout);
}

// ---- Options ----

void PrintHelp() {
  std::printf(
      "usage: %s [options]\n"
      "Dirty tracking of shared file mappings (seed 001) on the emulator next to the\n"
      "kernel's mmap(MAP_SHARED) of the same file contents: (1) random writes with a\n"
      "periodic msync, (2) msync cost by the number of dirty pages, (3) write tracking\n"
      "by fault against the host's record of writes (WP_ASYNC + PAGEMAP_SCAN), emu's\n"
      "two modes and the kernel's primitive.\n\n"
      "  --mode M          sigbus, thread or sigsegv (default sigbus)\n"
      "  --parts LIST      writes, msync, wp; comma-separated (default all)\n"
      "  --file-io IO      emu's file I/O: uring or psync (MachineOptions::file_io)\n"
      "  --dirty-tracking M  parts 1 and 2: emu's dirty tracking, fault, async or auto\n"
      "                    (MachineOptions::dirty_tracking; part 3 runs both)\n"
      "  --file-mib N      part 1's file (default 256)\n"
      "  --writes N        part 1's random writes (default 1000000)\n"
      "  --sync-every N    part 1: msync after every N writes; part 3: writes per\n"
      "                    round (default 10000)\n"
      "  --map-mib N       part 2's mapping (default 1024)\n"
      "  --dirty LIST      part 2's dirty fractions in percent (default 0.1,1,10)\n"
      "  --reps N          part 2's timed msync calls per fraction and side (default 3)\n"
      "  --folios LIST     parts 1 and 2: 4k, large; comma-separated (default both):\n"
      "                    the files are written with 4 KiB or 1 MiB writes, which\n"
      "                    sets the host page cache's folio size (ext4 dirties and\n"
      "                    writes back whole folios)\n"
      "  --wp-mib N        part 3's mapping (default 256)\n"
      "  --wp-rounds N     part 3's rounds (default 10)\n"
      "  --seed N          the random writes and sets (default 1)\n"
      "  --dir DIR         where the files go (default $TMPDIR, else /var/tmp)\n"
      "  --quick           16 MiB file, 20000 writes, msync every 2000, 64 MiB\n"
      "                    mapping, 1 rep, 16 MiB and 3 rounds for part 3 (smoke\n"
      "                    test; explicit options win)\n"
      "  --json            one JSON object per line per row instead of the tables\n"
      "  --help            this text\n\n"
      "Sizes that do not fit in MemAvailable (3x + 1 GiB) are skipped.\n"
      "Exit status: 0; 1 when an emulator call fails, a counter contradicts a run,\n"
      "or the files read back do not hold what was written (see stderr); 2 for a\n"
      "bad option.\n",
      kProg);
}

bool ParseParts(ArgParser& args, bool* part) {
  std::string v;
  if (!args.Value(&v)) return false;
  static constexpr const char* kNames[3] = {"writes", "msync", "wp"};
  std::fill(part, part + 3, false);
  for (const std::string& s : SplitCommas(v)) {
    const auto* it = std::find_if(kNames, kNames + 3, [&](const char* n) { return s == n; });
    if (it == kNames + 3) {
      args.Fail("--parts '%s': want writes, msync or wp", s.c_str());
      return false;
    }
    part[it - kNames] = true;
  }
  return true;
}

bool ParseFolios(ArgParser& args, std::vector<int>* out) {
  std::string v;
  if (!args.Value(&v)) return false;
  out->clear();
  for (const std::string& s : SplitCommas(v)) {
    int f = 0;
    while (f < kNrFolioSpecs && s != kFolioSpecs[f].name) f++;
    if (f == kNrFolioSpecs) {
      args.Fail("--folios '%s': want 4k or large", s.c_str());
      return false;
    }
    if (std::find(out->begin(), out->end(), f) == out->end()) out->push_back(f);
  }
  return true;
}

bool ParsePercents(ArgParser& args, std::vector<double>* out) {
  std::string v;
  if (!args.Value(&v)) return false;
  out->clear();
  for (const std::string& s : SplitCommas(v)) {
    errno = 0;
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || errno != 0 || !(d > 0) || d > 100) {
      args.Fail("--dirty '%s': want percentages above 0 and at most 100", s.c_str());
      return false;
    }
    out->push_back(d);
  }
  return true;
}

// Returns 0 to run, 1 after --help, 2 on a bad option.
int ParseOptions(int argc, char** argv, Options* o) {
  ArgParser args(kProg, argc, argv);
  int64_t file_mib = -1, writes = -1, sync_every = -1, map_mib = -1, reps = -1, wp_mib = -1,
          wp_rounds = -1;
  std::vector<double> dirty;
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
    } else if (args.Is("--file-io")) {
      if (args.Value(&v) && v != "uring" && v != "psync") {
        args.Fail("--file-io '%s': want uring or psync", v.c_str());
      }
      o->file_io = v;
    } else if (args.Is("--dirty-tracking")) {
      if (args.Value(&v) && v != "auto" && v != "fault" && v != "async") {
        args.Fail("--dirty-tracking '%s': want auto, fault or async", v.c_str());
      }
      o->dirty_tracking = v;
    } else if (args.Is("--parts")) {
      ParseParts(args, o->part);
    } else if (args.Is("--file-mib")) {
      args.IntValue(1, kMaxSizeMiB, &file_mib);
    } else if (args.Is("--writes")) {
      args.IntValue(1, int64_t{1} << 34, &writes);
    } else if (args.Is("--sync-every")) {
      args.IntValue(1, int64_t{1} << 34, &sync_every);
    } else if (args.Is("--map-mib")) {
      args.IntValue(1, kMaxSizeMiB, &map_mib);
    } else if (args.Is("--folios")) {
      ParseFolios(args, &o->folios);
    } else if (args.Is("--dirty")) {
      ParsePercents(args, &dirty);
    } else if (args.Is("--reps")) {
      args.IntValue(1, 1000, &reps);
    } else if (args.Is("--wp-mib")) {
      args.IntValue(1, kMaxSizeMiB, &wp_mib);
    } else if (args.Is("--wp-rounds")) {
      args.IntValue(1, 1000, &wp_rounds);
    } else if (args.Is("--seed")) {
      args.IntValue(0, INT64_MAX, &o->seed);
    } else if (args.Is("--dir")) {
      args.Value(&o->dir);
    } else {
      args.Unknown();
    }
  }
  if (args.failed()) return 2;
  if (o->quick) {
    o->file_mib = 16;
    o->writes = 20000;
    o->sync_every = 2000;
    o->map_mib = 64;
    o->reps = 1;
    o->wp_mib = 16;
    o->wp_rounds = 3;
  }
  if (file_mib > 0) o->file_mib = file_mib;
  if (writes > 0) o->writes = writes;
  if (sync_every > 0) o->sync_every = sync_every;
  if (map_mib > 0) o->map_mib = map_mib;
  if (!dirty.empty()) o->dirty_pct = dirty;
  if (reps > 0) o->reps = reps;
  if (wp_mib > 0) o->wp_mib = wp_mib;
  if (wp_rounds > 0) o->wp_rounds = wp_rounds;
  if (o->dir.empty()) {
    const char* t = std::getenv("TMPDIR");
    o->dir = t != nullptr && *t != '\0' ? t : "/var/tmp";
  }
  return 0;
}

int Main(int argc, char** argv) {
  Context ctx;
  const int parsed = ParseOptions(argc, argv, &ctx.o);
  if (parsed != 0) return parsed == 1 ? 0 : 2;
  const Options& o = ctx.o;
  MachineOptions mo;
  mo.fault_mode = o.mode;
  mo.arena_bytes = kArenaBytes;
  mo.file_io = o.file_io;
  mo.dirty_tracking = o.dirty_tracking;
  ctx.config = mo.ToString();
  dev_stat_path = DeviceStatPath(o.dir);
  const uint64_t t0 = NowNs();
  if (!o.json) {
    std::printf(
        "%s: git %s, %s (%s), nproc %d, page %ld B, MemAvailable %llu MiB, mode %s, seed %lld, "
        "files in %s (device stats: %s)\nemu machine: %s\n",
        kProg, GitSha(), CompilerVersion(), BuildKind(), Nproc(), HostPageSize(),
        U(MemAvailable() / kMiB), ModeName(o.mode).c_str(), static_cast<long long>(o.seed),
        o.dir.c_str(), dev_stat_path.empty() ? "none" : dev_stat_path.c_str(), ctx.config.c_str());
    std::fflush(stdout);
  }
  std::string why;
  const bool emu_ok = o.mode == FaultMode::kSigsegv || UffdAvailable(&why);
  if (!emu_ok) {
    ReportSkip(ctx, "dirty_emu",
               "userfaultfd is not usable here (" + why + "); try --mode sigsegv");
  } else {
    if (o.part[0]) RunLoopPart(ctx);
    if (o.part[1]) RunSyncPart(ctx);
  }
  if (o.part[2]) RunWpPart(ctx);  // no emu machine is alive now
  if (!o.json) {
    std::printf("\ntotal %.1f s%s\n", static_cast<double>(NowNs() - t0) * 1e-9,
                ctx.ok ? "" : " (FAILED, see stderr)");
  }
  return ctx.ok ? 0 : 1;
}

}  // namespace
}  // namespace emu::bench

int main(int argc, char** argv) { return emu::bench::Main(argc, argv); }
