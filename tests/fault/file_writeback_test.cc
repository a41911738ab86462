// Emulated files under pressure and over time (issue 7's second part):
// reclaim drops file pages (clean ones without I/O, dirty ones written back
// first) and a later fault reads them again; the flusher writes back above
// the background threshold and after dirty_expire_ms, and a writer above the
// dirty threshold waits for it; no write is lost to the flusher or to
// reclaim racing the writers; fsync; truncate while mapped and files that
// grow, against Linux's answers.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "fault/file_test_util.h"

namespace emu {
namespace {

using test::Harvest;
using test::MakeEnv;
using test::MapFile;
using test::NoteTracking;
using test::Tracked;
using test::Open;
using test::RequireAll;
using test::Stat;
using test::TempFile;

constexpr int kRW = PROT_READ | PROT_WRITE;

VirtAddr A(const void* p) { return reinterpret_cast<VirtAddr>(p); }

std::atomic<uint64_t>& W(char* p, size_t page) {
  return *reinterpret_cast<std::atomic<uint64_t>*>(p + page * kPageSize);
}


// No flusher activity unless a test asks for it.
MachineOptions Quiet(MachineOptions o = {}) {
  o.dirty_background_bytes = uint64_t{1} << 30;
  o.dirty_bytes = uint64_t{2} << 30;
  o.dirty_writeback_ms = 0;
  return o;
}

TEST_CASE("File writeback: reclaim drops clean file pages without I/O, writes dirty ones first, "
          "and faults read them again",
          "[file][reclaim]") {
  FaultMode mode = EMU_ALL_MODES();
  const bool swap = GENERATE(false, true);
  MachineOptions o = Quiet();
  o.dirty_tracking = EMU_TRACKING(mode);
  INFO("mode " << FaultModeName(mode) << (swap ? " with swap" : " without swap")
               << " dirty_tracking " << o.dirty_tracking);
  o.mem_limit = 8 << 20;  // 2048 frames
  o.no_swap = !swap;
  auto env = MakeEnv(mode, o);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  NoteTracking(m, o.dirty_tracking);
  constexpr size_t kPages = 4096;  // twice the limit
  TempFile f(kPages, 100);
  ShmemObject* file = Open(m, f);
  char* p = MapFile(as, file, kPages * kPageSize, kRW, MAP_SHARED);
  // Reads of twice the limit: clean pages are dropped, no byte is written.
  for (size_t i = 0; i < kPages; i++) REQUIRE(W(p, i).load() == i + 100);
  CHECK(Stat(m, VmEvent::k_pgsteal_file) > 0);
  CHECK(Stat(m, VmEvent::k_pgwriteback) == 0);
  CHECK(Stat(m, VmEvent::k_pswpout) == 0);
  CHECK(m.mem_map().nr_used() <= (o.mem_limit >> kPageShift));
  RequireAll(m);
  // Writes: every page dirtied; reclaim writes the ones it takes, then
  // drops them; the rest stay dirty until msync.
  for (size_t i = 0; i < kPages; i++) W(p, i).store(i + 7000);
  CHECK(Stat(m, VmEvent::k_pgwriteback_reclaim) > 0);
  CHECK(Stat(m, VmEvent::k_pswpout) == 0);  // a file page never goes to swap
  RequireAll(m);
  // Everything reads back as written: from memory, or read in again.
  const uint64_t reads = Stat(m, VmEvent::k_file_read);
  for (size_t i = 0; i < kPages; i++) REQUIRE(W(p, i).load() == i + 7000);
  CHECK(Stat(m, VmEvent::k_file_read) > reads);
  REQUIRE(as.Msync(A(p), kPages * kPageSize, MS_SYNC).ok());
  for (size_t i = 0; i < kPages; i += 97) REQUIRE(f.Word(i) == i + 7000);
  CHECK(file->nr_dirty() == 0);
  RequireAll(m);
  // A private mapping of the same file: its reads share the cache and are
  // reclaimed alike; its writes are anonymous copies (swapped, with swap).
  char* q = MapFile(as, file, kPages * kPageSize, kRW, MAP_PRIVATE);
  for (size_t i = 0; i < kPages; i++) REQUIRE(W(q, i).load() == i + 7000);
  if (swap) {
    for (size_t i = 0; i < kPages; i++) W(q, i).store(i + 1);
    for (size_t i = 0; i < kPages; i++) REQUIRE(W(q, i).load() == i + 1);
    for (size_t i = 0; i < kPages; i++) REQUIRE(W(p, i).load() == i + 7000);
  }
  RequireAll(m);
  REQUIRE(as.Munmap(A(q), kPages * kPageSize).ok());
  REQUIRE(as.Munmap(A(p), kPages * kPageSize).ok());
  CHECK(file->nr_cached() == 0);
  RequireAll(m);
}

TEST_CASE("File writeback: the flusher writes above the background threshold and after the "
          "expiry, and holds writers at the dirty threshold",
          "[file][dirty][flusher]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.dirty_tracking = EMU_TRACKING(mode);
  INFO("mode " << FaultModeName(mode) << " dirty_tracking " << o.dirty_tracking);
  o.dirty_background_bytes = 64 * kPageSize;
  o.dirty_bytes = 128 * kPageSize;
  o.dirty_writeback_ms = 50;
  o.dirty_expire_ms = 200;
  auto env = MakeEnv(mode, o);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  NoteTracking(m, o.dirty_tracking);
  REQUIRE(m.flusher().background_thresh() == 64);
  REQUIRE(m.flusher().dirty_thresh() == 128);
  constexpr size_t kPages = 2048;
  TempFile f(kPages);
  ShmemObject* file = Open(m, f);
  char* p = MapFile(as, file, kPages * kPageSize, kRW, MAP_SHARED);
  // One writer over 2048 pages: never more than the threshold and its own
  // next page dirty after its fault returns (each first write is a fault
  // with host tracking too).
  uint64_t most = 0;
  for (size_t i = 0; i < kPages; i++) {
    W(p, i).store(i + 1);
    most = std::max(most, m.flusher().nr_dirty());
  }
  INFO("most dirty seen " << most << ", throttled " << Stat(m, VmEvent::k_dirty_throttle));
  CHECK(most <= 128 + 1);
  CHECK(Stat(m, VmEvent::k_pgwriteback_background) > 0);
  // The flusher brings it under the background threshold.
  // (A page leaves nr_dirty as its write starts, and nr_writeback as it ends.)
  auto wait_for = [&](uint64_t dirty) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    auto done = [&] { return m.flusher().nr_dirty() <= dirty && m.flusher().nr_writeback() == 0; };
    while (!done() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return done();
  };
  CHECK(wait_for(64));
  // What is left below the background threshold waits for the expiry.
  CHECK(wait_for(0));
  // A page written just as the flusher cleaned it is written twice.
  CHECK(Stat(m, VmEvent::k_pgwriteback) >= kPages);
  // Writes to mapped clean pages: dirty at once (seed 001), or when the
  // flusher's next harvest finds them; written after the expiry either way.
  const uint64_t periodic = Stat(m, VmEvent::k_pgwriteback_periodic);
  const uint64_t harvested = Stat(m, VmEvent::k_pgharvest);
  for (size_t i = 0; i < 10; i++) W(p, i).store(i + 2);
  if (!Tracked(m)) CHECK(m.flusher().nr_dirty() == 10);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (Stat(m, VmEvent::k_pgwriteback_periodic) - periodic < 10 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  CHECK(wait_for(0));
  CHECK(Stat(m, VmEvent::k_pgwriteback_periodic) - periodic >= 10);
  if (Tracked(m)) CHECK(Stat(m, VmEvent::k_pgharvest) - harvested >= 10);  // the flusher's own
  for (size_t i = 0; i < kPages; i += 31) REQUIRE(f.Word(i) == (i < 10 ? i + 2 : i + 1));
  for (size_t i = 0; i < 10; i++) REQUIRE(f.Word(i) == i + 2);
  RequireAll(m);
  CHECK(m.VmStatText().find("dirty_threshold 128\n") != std::string::npos);
}

TEST_CASE("File writeback: dirty counts are exact", "[file][dirty]") {
  MachineOptions o = Quiet();
  o.file_io = GENERATE("psync", "uring");
  o.dirty_tracking = EMU_TRACKING(FaultMode::kUffdSigbus);
  INFO("file_io " << o.file_io << " dirty_tracking " << o.dirty_tracking);
  auto env = MakeEnv(FaultMode::kUffdSigbus, o);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  NoteTracking(m, o.dirty_tracking);
  auto other = m.CreateAddressSpace(uint64_t{2} << 30);
  REQUIRE(other.ok());
  constexpr size_t kPages = 512;
  TempFile f(kPages);
  TempFile g(kPages);
  ShmemObject* ff = Open(m, f);
  ShmemObject* fg = Open(m, g);
  char* a = MapFile(as, ff, kPages * kPageSize, kRW, MAP_SHARED);
  char* b = MapFile(**other, ff, kPages * kPageSize, kRW, MAP_SHARED);
  char* c = MapFile(as, fg, kPages * kPageSize, kRW, MAP_SHARED);
  // Writes through two mappings of one file count each page once.
  for (size_t i = 0; i < kPages; i += 3) W(a, i).store(1);
  for (size_t i = 0; i < kPages; i += 2) W(b, i).store(2);
  for (size_t i = 0; i < 100; i++) W(c, i).store(3);
  size_t want = 0;
  for (size_t i = 0; i < kPages; i++) want += i % 3 == 0 || i % 2 == 0;
  CHECK(ff->nr_dirty() == want);
  CHECK(fg->nr_dirty() == 100);
  CHECK(m.flusher().nr_dirty() == want + 100);
  CHECK(m.VmStatText().find("nr_dirty " + std::to_string(want + 100) + "\n") != std::string::npos);
  RequireAll(m);
  // msync of one mapping's half cleans that half of the file, for both.
  REQUIRE(as.Msync(A(a), kPages / 2 * kPageSize, MS_ASYNC).ok());
  size_t left = 0;
  for (size_t i = kPages / 2; i < kPages; i++) left += i % 3 == 0 || i % 2 == 0;
  CHECK(ff->nr_dirty() == left);
  CHECK(m.flusher().nr_dirty() == left + 100);
  CHECK(m.flusher().nr_writeback() == 0);
  REQUIRE(ff->Fsync().ok());
  REQUIRE(fg->Fsync().ok());
  CHECK(m.flusher().nr_dirty() == 0);
  CHECK(f.Word(0) == 2);
  CHECK(f.Word(3) == 1);
  CHECK(g.Word(99) == 3);
  RequireAll(m);
  // Writes to pages mapped clean, through both mappings: dirty at once with
  // the write fault; with host tracking, none until a harvest, which finds
  // each page once however many mappings wrote it.
  for (size_t i = 0; i < kPages; i++) REQUIRE(W(a, i).load() == W(b, i).load());
  const uint64_t faults = Stat(m, VmEvent::k_pgfault);
  for (size_t i = 0; i < kPages; i += 5) W(a, i).store(4);
  for (size_t i = 0; i < kPages; i += 10) W(b, i).store(5);
  const size_t rewritten = (kPages + 4) / 5;
  if (Tracked(m)) {
    CHECK(Stat(m, VmEvent::k_pgfault) == faults);
    CHECK(ff->nr_dirty() == 0);
    Harvest(ff);
  }
  CHECK(ff->nr_dirty() == rewritten);
  CHECK(m.flusher().nr_dirty() == rewritten);
  RequireAll(m);
  REQUIRE(as.Msync(A(a), kPages * kPageSize, MS_SYNC).ok());
  CHECK(ff->nr_dirty() == 0);
  CHECK(f.Word(10) == 5);
  CHECK(f.Word(5) == 4);
  RequireAll(m);
  other->reset();
}

// Writers race the flusher (tiny thresholds) and, with a limit, reclaim:
// every value stored before the final msync is in the file.
TEST_CASE("File writeback: no write is lost to the flusher or reclaim racing writers",
          "[file][dirty][race]") {
  FaultMode mode = EMU_ALL_MODES();
  const bool limit = GENERATE(false, true);
  MachineOptions o;
  o.dirty_tracking = EMU_TRACKING(mode);
  INFO("mode " << FaultModeName(mode) << (limit ? " under a limit" : "") << " dirty_tracking "
               << o.dirty_tracking);
  o.dirty_background_bytes = 16 * kPageSize;
  o.dirty_bytes = 32 * kPageSize;
  o.dirty_writeback_ms = 10;
  o.dirty_expire_ms = 10;
  if (limit) o.mem_limit = 4 << 20;  // 1024 frames
  auto env = MakeEnv(mode, o);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  const size_t pages = limit ? 1536 : 256;
  TempFile f(pages);
  ShmemObject* file = Open(m, f);
  char* p = MapFile(as, file, pages * kPageSize, kRW, MAP_SHARED);
  constexpr int kThreads = 4;
  const uint64_t kRounds = limit ? 8 : 40;  // under a limit each round reads pages in again
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; t++) {
    writers.emplace_back([&, t] {
      for (uint64_t round = 1; round <= kRounds; round++) {
        for (size_t i = t; i < pages; i += kThreads) W(p, i).store(round * 1000 + i);
      }
    });
  }
  for (auto& w : writers) w.join();
  REQUIRE(as.Msync(A(p), pages * kPageSize, MS_SYNC).ok());
  for (size_t i = 0; i < pages; i++) REQUIRE(f.Word(i) == kRounds * 1000 + i);
  for (size_t i = 0; i < pages; i++) REQUIRE(W(p, i).load() == kRounds * 1000 + i);
  CHECK(Stat(m, VmEvent::k_pgwriteback_background) + Stat(m, VmEvent::k_pgwriteback_periodic) > 0);
  if (limit) CHECK(Stat(m, VmEvent::k_pgsteal_file) > 0);
  RequireAll(m);
}

TEST_CASE("File writeback: truncate while mapped, and files that grow", "[file][truncate]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o = Quiet();
  o.dirty_tracking = EMU_TRACKING(mode);
  INFO("mode " << FaultModeName(mode) << " dirty_tracking " << o.dirty_tracking);
  auto env = MakeEnv(mode, o);
  AddressSpace& a = *env->as;
  Machine& m = *env->machine;
  auto other = m.CreateAddressSpace(uint64_t{2} << 30);
  REQUIRE(other.ok());
  AddressSpace& b = **other;
  constexpr size_t kPages = 8;
  TempFile f(kPages, 10);
  ShmemObject* file = Open(m, f);
  // Mappings longer than the file: room to grow into.
  constexpr size_t kLen = 16 * kPageSize;
  char* pa = MapFile(a, file, kLen, kRW, MAP_SHARED);
  char* pb = MapFile(b, file, kLen, kRW, MAP_SHARED);
  char* pp = MapFile(b, file, kLen, kRW, MAP_PRIVATE);
  for (size_t i = 0; i < kPages; i++) REQUIRE(W(pb, i).load() == i + 10);
  W(pa, 4).store(44);
  *reinterpret_cast<uint64_t*>(pa + 4 * kPageSize + 200) = 0xfeed;  // past the new end
  W(pa, 5).store(55);  // dirty, to be dropped unwritten
  W(pp, 6).store(66);  // a private copy past the new end
  CHECK(file->nr_dirty() == 2);
  RequireAll(m);

  // Shrink to 4 pages and 100 bytes (Linux: truncate_setsize).
  const uint64_t size = 4 * kPageSize + 100;
  REQUIRE(file->Truncate(size).ok());
  CHECK(f.Size() == size);
  CHECK(file->nr_pages() == 5);
  CHECK(file->nr_dirty() == 1);  // page 4 still dirty, page 5 dropped
  CHECK(Stat(m, VmEvent::k_file_truncated) >= 3);
  // Past the end: SIGBUS in every mapping, the private copy included.
  for (char* p : {pa, pb, pp}) {
    CHECK(ToErrno((p == pa ? a : b).FaultInPages(A(p) + 5 * kPageSize, kPageSize, false)) == EFAULT);
    CHECK(ToErrno((p == pa ? a : b).FaultInPages(A(p) + 6 * kPageSize, kPageSize, false)) == EFAULT);
  }
  // The last page: its bytes before the end stay, those after read zeros.
  CHECK(W(pb, 4).load() == 44);
  CHECK(*reinterpret_cast<uint64_t*>(pb + 4 * kPageSize + 200) == 0);
  RequireAll(m);
  REQUIRE(file->Fsync().ok());
  CHECK(f.Word(4) == 44);
  CHECK(f.Size() == size);  // the dropped dirty page was not written past the end

  // Grow to 10 pages: the new part reads zeros, then is written like any.
  REQUIRE(file->Truncate(10 * kPageSize).ok());
  CHECK(file->nr_pages() == 10);
  CHECK(W(pa, 5).load() == 0);
  CHECK(W(pp, 6).load() == 0);  // the private copy went with the truncate
  CHECK(*reinterpret_cast<uint64_t*>(pa + 4 * kPageSize + 200) == 0);
  W(pa, 9).store(99);
  REQUIRE(a.Msync(A(pa), kLen, MS_SYNC).ok());
  CHECK(f.Word(9) == 99);
  CHECK(f.Size() == 10 * kPageSize);
  CHECK(ToErrno(a.FaultInPages(A(pa) + 10 * kPageSize, kPageSize, false)) == EFAULT);

  // Another process makes the file longer: the mapping sees it at once.
  {
    int fd = open(f.path.c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    const uint64_t word = 1212;
    REQUIRE(pwrite(fd, &word, sizeof(word), 12 * kPageSize) == sizeof(word));
    close(fd);
  }
  CHECK(W(pb, 12).load() == 1212);
  CHECK(file->nr_pages() == 13);
  RequireAll(m);

  // Linux's errors: past what the object may grow to, and a read-only file.
  CHECK(ToErrno(file->Truncate((file->capacity() + 1) << kPageShift)) == EFBIG);
  auto ro = m.OpenFile(f.path, false);
  REQUIRE(ro.ok());
  CHECK(ToErrno((*ro)->Truncate(0)) == EINVAL);
  // Truncate to nothing: every page of every mapping is SIGBUS.
  REQUIRE(file->Truncate(0).ok());
  CHECK(file->nr_cached() == 0);
  CHECK(ToErrno(a.FaultInPages(A(pa), kPageSize, false)) == EFAULT);
  CHECK(ToErrno(b.FaultInPages(A(pp), kPageSize, true)) == EFAULT);
  RequireAll(m);
  other->reset();
}


// Dirty tracking "async": writes go to mapped pages without a fault, so
// every place a mapping moves, goes or changes must first make what the
// host recorded dirty pages: none of these writes may be lost.
TEST_CASE("File writeback: with host tracking, writes are dirty before their mapping moves, goes "
          "or changes",
          "[file][dirty][async]") {
  const FaultMode mode = GENERATE(FaultMode::kUffdSigbus, FaultMode::kUffdThread);
  MachineOptions o = Quiet();
  o.dirty_tracking = "auto";
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, o);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  if (!Tracked(m)) {
    std::fprintf(stderr, "SKIP: no userfaultfd WP_ASYNC + PAGEMAP_SCAN here (Linux 6.7)\n");
    std::exit(test::kSkip);
  }
  constexpr size_t kPages = 64;
  TempFile f(kPages);
  ShmemObject* file = Open(m, f);
  char* p = MapFile(as, file, kPages * kPageSize, kRW, MAP_SHARED);
  for (size_t i = 0; i < kPages; i++) REQUIRE(W(p, i).load() == i);  // mapped clean
  CHECK(as.GetPte(A(p)).write());
  // MADV_DONTNEED: the PTEs go, the cache keeps the page, dirty.
  W(p, 1).store(101);
  REQUIRE(as.Madvise(A(p), 8 * kPageSize, MADV_DONTNEED).ok());
  CHECK(file->nr_dirty() == 1);
  CHECK(W(p, 1).load() == 101);
  // mremap: a write before the move is dirty; one after it, at the new
  // address, is tracked there.
  W(p, 9).store(109);
  auto target = as.Mmap(0, 8 * kPageSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
  REQUIRE(target.ok());
  auto moved = as.Mremap(A(p) + 8 * kPageSize, 8 * kPageSize, 8 * kPageSize,
                         MREMAP_MAYMOVE | MREMAP_FIXED, *target);
  INFO(moved.status().ToString());
  REQUIRE(moved.ok());
  CHECK(file->nr_dirty() == 2);
  char* q = reinterpret_cast<char*>(*moved);  // pages 8..15 of the file
  CHECK(W(q, 1).load() == 109);
  W(q, 2).store(110);
  // mprotect: a write before PROT_READ stays recorded; one after PROT_WRITE
  // comes back is recorded too, without a fault.
  W(p, 20).store(120);
  REQUIRE(as.Mprotect(A(p) + 16 * kPageSize, 16 * kPageSize, PROT_READ).ok());
  CHECK(ToErrno(as.FaultInPages(A(p) + 21 * kPageSize, kPageSize, true)) == EFAULT);
  REQUIRE(as.Mprotect(A(p) + 16 * kPageSize, 16 * kPageSize, kRW).ok());
  CHECK(as.GetPte(A(p) + 21 * kPageSize).write());
  const uint64_t faults = Stat(m, VmEvent::k_pgfault);
  W(p, 21).store(121);
  CHECK(Stat(m, VmEvent::k_pgfault) == faults);  // recorded by the host, no fault
  Harvest(file);
  CHECK(file->nr_dirty() == 5);  // 1, 9, 10, 20, 21
  // A fork: the child's mapping of the same pages is tracked too.
  auto child = as.Fork();
  REQUIRE(child.ok());
  char* cp = reinterpret_cast<char*>((*child)->window().start + (A(p) - as.window().start));
  W(cp, 30).store(130);
  CHECK(W(p, 30).load() == 130);
  Harvest(file);
  CHECK(file->nr_dirty() == 6);
  // A page pinned for writing is dirty at once: its holder writes it
  // through the pool, not the mapping.
  Pfn pinned;
  auto got = as.PinUserPages(A(p) + 40 * kPageSize, 1, kGupWrite, &pinned);
  REQUIRE(got.ok());
  REQUIRE(*got == 1);
  CHECK(file->nr_dirty() == 7);
  as.UnpinUserPages(&pinned, 1);
  RequireAll(m);
  // The child goes: what it wrote since the last harvest is dirty first.
  W(cp, 31).store(131);
  child->reset();
  CHECK(file->nr_dirty() == 8);
  // Everything in the file after MS_SYNC of both pieces (pages 8..15 moved).
  REQUIRE(as.Msync(A(p), 8 * kPageSize, MS_SYNC).ok());
  REQUIRE(as.Msync(A(q), 8 * kPageSize, MS_SYNC).ok());
  REQUIRE(as.Msync(A(p) + 16 * kPageSize, (kPages - 16) * kPageSize, MS_SYNC).ok());
  CHECK(file->nr_dirty() == 0);
  for (size_t i : {1, 20, 21, 30, 31}) CHECK(f.Word(i) == 100 + i);
  CHECK(f.Word(9) == 109);
  CHECK(f.Word(10) == 110);
  // munmap: a write just before it is in the file when the last mapping
  // has gone (no harvest, no msync).
  W(q, 3).store(111);
  W(p, 50).store(150);
  REQUIRE(as.Munmap(A(q), 8 * kPageSize).ok());
  REQUIRE(as.Munmap(A(p), kPages * kPageSize).ok());
  CHECK(f.Word(11) == 111);
  CHECK(f.Word(50) == 150);
  RequireAll(m);
}

}  // namespace
}  // namespace emu
