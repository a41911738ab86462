// Emulated files (Machine::OpenFile, AddressSpace::MmapFile, Msync): shared
// and private file mappings over a page cache in the frame pool, and seed
// 001's dirty tracking: what is written through a shared mapping is in the
// file after msync (read back through a descriptor of its own), msync
// writes only the dirty pages, no write is lost to a racing msync, two
// address spaces see each other's writes, and Linux's errors.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
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

uint64_t& W(char* p, size_t page) { return *reinterpret_cast<uint64_t*>(p + page * kPageSize); }


TEST_CASE("File mappings: shared writes reach the file at msync, and only dirty pages are written",
          "[file][dirty]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.dirty_tracking = EMU_TRACKING(mode);
  INFO("mode " << FaultModeName(mode) << " dirty_tracking " << o.dirty_tracking);
  auto env = MakeEnv(mode, o);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  NoteTracking(m, o.dirty_tracking);
  const bool tracked = Tracked(m);
  constexpr size_t kPages = 256;
  TempFile f(kPages, 100);
  ShmemObject* file = Open(m, f, true);
  char* p = MapFile(as, file, kPages * kPageSize, kRW, MAP_SHARED);
  // Reads see the file and dirty nothing; clean pages are mapped read-only
  // (seed 001), or writable with the host tracking their writes.
  for (size_t i = 0; i < kPages; i++) REQUIRE(W(p, i) == i + 100);
  CHECK(Stat(m, VmEvent::k_file_read) == kPages);
  CHECK(file->nr_dirty() == 0);
  CHECK(as.GetPte(A(p)).write() == tracked);
  RequireAll(m);
  // Writes to 10 pages: 10 dirty, each dirtied by one fault, or found by
  // one harvest with no fault at all.
  const uint64_t faults = Stat(m, VmEvent::k_pgfault);
  for (size_t i = 0; i < kPages; i += kPages / 10 + 1) W(p, i) = 5000 + i;
  if (tracked) {
    CHECK(Stat(m, VmEvent::k_pgfault) == faults);
    CHECK(file->nr_dirty() == 0);
    Harvest(file);
    CHECK(Stat(m, VmEvent::k_pgharvest) == 10);
  }
  const uint64_t dirtied = Stat(m, VmEvent::k_pgdirty);
  CHECK(file->nr_dirty() == dirtied);
  CHECK(dirtied == 10);
  CHECK(f.Word(0) == 100);  // not written back yet
  RequireAll(m);
  REQUIRE(as.Msync(A(p), kPages * kPageSize, MS_SYNC).ok());
  CHECK(Stat(m, VmEvent::k_pgwriteback) == dirtied);
  CHECK(file->nr_dirty() == 0);
  for (size_t i = 0; i < kPages; i++) {
    REQUIRE(f.Word(i) == (i % (kPages / 10 + 1) == 0 ? 5000 + i : i + 100));
  }
  // Cleaned pages are write-protected again (for the host's tracker, with
  // it): the next write dirties anew, and the next msync writes that page
  // alone.
  CHECK(as.GetPte(A(p)).write() == tracked);
  W(p, 1) = 77;
  Harvest(file);
  CHECK(file->nr_dirty() == 1);
  REQUIRE(as.Msync(A(p), kPages * kPageSize, MS_ASYNC).ok());
  CHECK(Stat(m, VmEvent::k_pgwriteback) == dirtied + 1);
  CHECK(f.Word(1) == 77);
  // A second msync with nothing dirty writes nothing.
  REQUIRE(as.Msync(A(p), kPages * kPageSize, MS_SYNC).ok());
  CHECK(Stat(m, VmEvent::k_pgwriteback) == dirtied + 1);
  RequireAll(m);
  // munmap of the last mapping writes what is still dirty (with host
  // tracking, what the host recorded is dirty first).
  W(p, 2) = 88;
  REQUIRE(as.Munmap(A(p), kPages * kPageSize).ok());
  CHECK(f.Word(2) == 88);
  RequireAll(m);
}

TEST_CASE("File mappings: msync of part of a range writes the dirty pages in it, at word edges too",
          "[file][dirty]") {
  MachineOptions o;
  o.dirty_tracking = EMU_TRACKING(FaultMode::kUffdSigbus);
  INFO("dirty_tracking " << o.dirty_tracking);
  auto env = MakeEnv(FaultMode::kUffdSigbus, o);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  NoteTracking(m, o.dirty_tracking);
  constexpr size_t kPages = 300;
  TempFile f(kPages);
  ShmemObject* file = Open(m, f, true);
  char* p = MapFile(as, file, kPages * kPageSize, kRW, MAP_SHARED);
  for (size_t i = 0; i < kPages; i++) REQUIRE(W(p, i) == i);  // mapped clean first
  const size_t dirty[] = {0, 63, 64, 127, 128, 191, 255, 256, 299};
  for (size_t i : dirty) W(p, i) = 9000 + i;
  Harvest(file);
  CHECK(file->nr_dirty() == 9);
  // The first 128 pages: 0, 63, 64 and 127 only.
  REQUIRE(as.Msync(A(p), 128 * kPageSize, MS_SYNC).ok());
  CHECK(Stat(m, VmEvent::k_pgwriteback) == 4);
  CHECK(file->nr_dirty() == 5);
  CHECK(f.Word(127) == 9127);
  CHECK(f.Word(128) == 128);
  REQUIRE(as.Msync(A(p), kPages * kPageSize, MS_SYNC).ok());
  CHECK(Stat(m, VmEvent::k_pgwriteback) == 9);
  for (size_t i : dirty) CHECK(f.Word(i) == 9000 + i);
  CHECK(m.VmStatText().find("nr_dirty 0\n") != std::string::npos);
  RequireAll(m);
}

TEST_CASE("File mappings: two address spaces see each other's writes at once; a private "
          "mapping copies on write",
          "[file]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.dirty_tracking = EMU_TRACKING(mode);
  INFO("mode " << FaultModeName(mode) << " dirty_tracking " << o.dirty_tracking);
  auto env = MakeEnv(mode, o);
  AddressSpace& a = *env->as;
  Machine& m = *env->machine;
  auto other = m.CreateAddressSpace(uint64_t{2} << 30);
  REQUIRE(other.ok());
  AddressSpace& b = **other;
  constexpr size_t kPages = 16;
  TempFile f(kPages, 10);
  ShmemObject* file = Open(m, f, true);
  char* pa = MapFile(a, file, kPages * kPageSize, kRW, MAP_SHARED);
  char* pb = MapFile(b, file, kPages * kPageSize, kRW, MAP_SHARED);
  char* pp = MapFile(b, file, kPages * kPageSize, kRW, MAP_PRIVATE);
  W(pa, 3) = 33;
  CHECK(W(pb, 3) == 33);
  CHECK(W(pp, 3) == 33);  // not written privately yet: the page cache
  W(pb, 4) = 44;
  CHECK(W(pa, 4) == 44);
  // A private write: a copy, seen by nobody else, never written back.
  W(pp, 5) = 55;
  CHECK(W(pa, 5) == 15);
  CHECK(Stat(m, VmEvent::k_cow_page) == 1);
  W(pa, 5) = 56;
  CHECK(W(pp, 5) == 55);  // the copy stays
  RequireAll(m);
  REQUIRE(a.Msync(A(pa), kPages * kPageSize, MS_SYNC).ok());
  CHECK(f.Word(3) == 33);
  CHECK(f.Word(4) == 44);
  CHECK(f.Word(5) == 56);
  // A fork shares the shared mapping and the private mapping's cache pages.
  auto child = b.Fork();
  REQUIRE(child.ok());
  char* cb = reinterpret_cast<char*>((*child)->window().start + (A(pb) - b.window().start));
  char* cp = reinterpret_cast<char*>((*child)->window().start + (A(pp) - b.window().start));
  W(cb, 6) = 66;
  CHECK(W(pa, 6) == 66);
  CHECK(W(cp, 5) == 55);
  W(cp, 7) = 77;  // the child's own copy
  CHECK(W(pp, 7) == 17);
  CHECK(W(pa, 7) == 17);
  RequireAll(m);
  child->reset();
  other->reset();
  RequireAll(m);
}

TEST_CASE("File mappings: Linux's errors: EACCES, SIGBUS past the end, bad msync", "[file]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.dirty_tracking = EMU_TRACKING(mode);
  INFO("mode " << FaultModeName(mode) << " dirty_tracking " << o.dirty_tracking);
  auto env = MakeEnv(mode, o);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  TempFile f(2, 0, 100);  // two pages and 100 bytes: three pages mapped
  ShmemObject* ro = Open(m, f, false);
  CHECK(ToErrno(as.MmapFile(0, kPageSize, kRW, MAP_SHARED, ro, 0).status()) == EACCES);
  char* r = MapFile(as, ro, 4 * kPageSize, PROT_READ, MAP_SHARED);
  CHECK(ToErrno(as.Mprotect(A(r), kPageSize, kRW)) == EACCES);
  // A private writable mapping of a read-only file is fine.
  char* pr = MapFile(as, ro, kPageSize, kRW, MAP_PRIVATE);
  W(pr, 0) = 9;
  CHECK(f.Word(0) == 0);
  // The third page holds the last 100 bytes, zeros after; the fourth is
  // past the end of the file: SIGBUS (EFAULT for a fault-in).
  CHECK(as.FaultInPages(A(r) + 2 * kPageSize, kPageSize, false).ok());
  CHECK(r[2 * kPageSize + 200] == 0);
  CHECK(ToErrno(as.FaultInPages(A(r) + 3 * kPageSize, kPageSize, false)) == EFAULT);
  CHECK(ToErrno(as.MmapFile(0, kPageSize, PROT_READ, MAP_SHARED, ro, 100).status()) == EINVAL);
  CHECK(ToErrno(as.Msync(A(r), kPageSize, MS_SYNC | MS_ASYNC)) == EINVAL);
  CHECK(ToErrno(as.Msync(A(r) + 1, kPageSize, MS_SYNC)) == EINVAL);
  CHECK(ToErrno(m.OpenFile("/nonexistent/emu-file", false).status()) == ENOENT);
  CHECK(ToErrno(m.OpenFile("/tmp", false).status()) == ENODEV);
  RequireAll(m);
}

TEST_CASE("File mappings: a read fault maps its aligned window, reading the missing pages in "
          "one read per run; shared memory maps only what it holds",
          "[file][fault-around]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.file_io = GENERATE("psync", "uring");
  o.dirty_tracking = EMU_TRACKING(mode);
  INFO("mode " << FaultModeName(mode) << " file_io " << o.file_io << " dirty_tracking "
                << o.dirty_tracking);
  auto env = MakeEnv(mode, o);
  AddressSpace& a = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 40;
  TempFile f(kPages, 500);
  ShmemObject* file = Open(m, f, true);
  char* p = MapFile(a, file, 48 * kPageSize, kRW, MAP_SHARED);
  const uint64_t faults = Stat(m, VmEvent::k_pgfault);
  CHECK(W(p, 3) == 503);
  CHECK(Stat(m, VmEvent::k_pgfault) == faults + 1);
  CHECK(Stat(m, VmEvent::k_file_read) == 16);
  CHECK(Stat(m, VmEvent::k_fault_around_pages) == 15);
  for (size_t i = 0; i < 16; i++) {
    Pte pte = a.GetPte(A(p) + i * kPageSize);
    CHECK(pte.present());
    // Clean: the first write is seen (seed 001), or recorded by the host.
    CHECK(pte.write() == Tracked(m));
  }
  CHECK(a.GetPte(A(p) + 16 * kPageSize).none());
  for (size_t i = 0; i < 16; i++) REQUIRE(W(p, i) == 500 + i);
  CHECK(Stat(m, VmEvent::k_pgfault) == faults + 1);
  // The window stops at the end of the file; past it is SIGBUS.
  CHECK(W(p, 37) == 537);
  CHECK(Stat(m, VmEvent::k_file_read) == 24);
  CHECK(ToErrno(a.FaultInPages(A(p) + 40 * kPageSize, kPageSize, false)) == EFAULT);
  // A write still dirties one page.
  W(p, 33) = 1;
  Harvest(file);
  CHECK(file->nr_dirty() == 1);
  RequireAll(m);
  // Another address space: its window of cached pages, nothing read.
  auto other = m.CreateAddressSpace(uint64_t{2} << 30);
  REQUIRE(other.ok());
  char* q = MapFile(**other, file, kPages * kPageSize, PROT_READ, MAP_PRIVATE);
  const uint64_t around = Stat(m, VmEvent::k_fault_around_pages);
  CHECK(W(q, 5) == 505);
  CHECK(Stat(m, VmEvent::k_file_read) == 24);
  CHECK(Stat(m, VmEvent::k_fault_around_pages) > around);
  RequireAll(m);
  // Shared memory: fault-around maps the pages the object holds, and makes
  // only the faulting one.
  auto s = a.Mmap(0, 32 * kPageSize, kRW, MAP_SHARED | MAP_ANONYMOUS);
  REQUIRE(s.ok());
  char* sp = reinterpret_cast<char*>(*s);
  W(sp, 0) = 10;
  W(sp, 2) = 12;
  const uint64_t made = Stat(m, VmEvent::k_shmem_alloc);
  REQUIRE(a.Madvise(*s, 32 * kPageSize, MADV_DONTNEED).ok());
  CHECK(W(sp, 1) == 0);
  CHECK(Stat(m, VmEvent::k_shmem_alloc) == made + 1);
  CHECK(a.GetPte(*s).present());
  CHECK(a.GetPte(*s + 2 * kPageSize).present());
  CHECK(a.GetPte(*s + 3 * kPageSize).none());
  CHECK(W(sp, 0) == 10);
  CHECK(W(sp, 2) == 12);
  RequireAll(m);
  other->reset();
  RequireAll(m);
}

// Writers race msync: every value a writer stored before the last msync is
// in the file, so no write is lost between cleaning and writing a page.
TEST_CASE("File mappings: no write is lost to concurrent msync", "[file][dirty][race]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.dirty_tracking = EMU_TRACKING(mode);
  INFO("mode " << FaultModeName(mode) << " dirty_tracking " << o.dirty_tracking);
  auto env = MakeEnv(mode, o);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 64;
  TempFile f(kPages);
  ShmemObject* file = Open(m, f, true);
  char* p = MapFile(as, file, kPages * kPageSize, kRW, MAP_SHARED);
  std::atomic<bool> stop{false};
  std::thread syncer([&] {
    while (!stop.load()) CHECK(as.Msync(A(p), kPages * kPageSize, MS_ASYNC).ok());
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < 2; t++) {
    writers.emplace_back([&, t] {
      for (uint64_t round = 1; round <= 200; round++) {
        for (size_t i = t; i < kPages; i += 2) {
          reinterpret_cast<std::atomic<uint64_t>*>(p + i * kPageSize)
              ->store(round, std::memory_order_relaxed);
        }
      }
    });
  }
  for (auto& w : writers) w.join();
  stop = true;
  syncer.join();
  REQUIRE(as.Msync(A(p), kPages * kPageSize, MS_SYNC).ok());
  for (size_t i = 0; i < kPages; i++) REQUIRE(f.Word(i) == 200);
  CHECK(file->nr_dirty() == 0);
  RequireAll(m);
}

}  // namespace
}  // namespace emu
