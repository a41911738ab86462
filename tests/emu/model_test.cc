// Unit tests of the core model types: no fault source involved.
#include <sys/mman.h>

#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "emu/machine.h"
#include "emu/page.h"
#include "emu/page_table.h"
#include "emu/status.h"
#include "emu/sync.h"
#include "emu/vma.h"

namespace emu {
namespace {

TEST_CASE("Pte: encodings round-trip and the zero page is special and never writable", "[model]") {
  Pte none;
  CHECK(none.none());
  Pte anon = Pte::Anon(Pfn{123456}, true, true);
  CHECK(anon.present());
  CHECK(anon.write());
  CHECK(anon.dirty());
  CHECK_FALSE(anon.special());
  CHECK(anon.pfn() == Pfn{123456});
  CHECK_FALSE(anon.WithWrite(false).write());
  Pte zero = Pte::ZeroPage();
  CHECK(zero.present());
  CHECK(zero.special());
  CHECK_FALSE(zero.write());
  CHECK(zero.pfn() == kZeroPfn);
  Pte swp = Pte::SwapEntry(0xabcdef);
  CHECK_FALSE(swp.present());
  CHECK(swp.swap());
  CHECK(swp.swap_entry() == 0xabcdef);
  CHECK(Pte::InstallLocked().locked());
}

TEST_CASE("PageTable: walks allocate tables on demand and iteration skips missing ones",
          "[model]") {
  PageTable pt;
  const VirtAddr base = VirtAddr{1} << 40;
  CHECK(pt.Walk(base, false) == nullptr);
  auto* e = pt.Walk(base + 5 * kPageSize, true);
  REQUIRE(e != nullptr);
  e->store(Pte::ZeroPage().raw());
  auto* far = pt.Walk(base + (VirtAddr{3} << 39) + kPageSize, true);  // another root entry
  REQUIRE(far != nullptr);
  far->store(Pte::ZeroPage().raw());
  CHECK(pt.Walk(base + 5 * kPageSize, false) == e);
  int seen = 0, nonzero = 0;
  pt.ForEachEntry({base, base + (VirtAddr{4} << 39)}, [&](VirtAddr a, std::atomic<uint64_t>* x) {
    seen++;
    if (x->load() != 0) {
      nonzero++;
      CHECK((a == base + 5 * kPageSize || a == base + (VirtAddr{3} << 39) + kPageSize));
    }
  });
  CHECK(nonzero == 2);
  CHECK(seen == 2 * PageTable::kEntriesPerTable);  // only the two leaf tables exist
  CHECK(pt.Ptl(base) == pt.Ptl(base + PageTable::kLeafSpan - 1));
}

TEST_CASE("VmaTree: split at range edges, erase a middle part, merge equal neighbours back",
          "[model]") {
  VmaTree t;
  const VirtAddr b = 0x100000000;
  t.Insert({b, b + 16 * kPageSize, kVmRead | kVmWrite});
  REQUIRE(t.CheckInvariants().ok());
  auto it = t.SplitAround({b + 4 * kPageSize, b + 8 * kPageSize});
  CHECK(it->second.start == b + 4 * kPageSize);
  CHECK(t.size() == 3);
  it->second.vm_flags = kVmRead;
  t.MergeAround({b + 4 * kPageSize, b + 8 * kPageSize});
  CHECK(t.size() == 3);  // different flags stay apart
  it = t.SplitAround({b + 4 * kPageSize, b + 8 * kPageSize});
  it->second.vm_flags = kVmRead | kVmWrite;
  t.MergeAround({b + 4 * kPageSize, b + 8 * kPageSize});
  CHECK(t.size() == 1);  // merged back
  REQUIRE(t.CheckInvariants().ok());
  t.Erase({b + 2 * kPageSize, b + 3 * kPageSize});
  CHECK(t.size() == 2);
  CHECK(t.Lookup(b + 2 * kPageSize) == nullptr);
  CHECK(t.FindVma(b + 2 * kPageSize)->start == b + 3 * kPageSize);
  CHECK_FALSE(t.FullyMapped({b, b + 4 * kPageSize}));
  CHECK(t.FullyMapped({b + 3 * kPageSize, b + 16 * kPageSize}));
  REQUIRE(t.CheckInvariants().ok());
}

TEST_CASE("Vma: use_zero_page follows seed 004 (not locked, not shared)", "[model]") {
  CHECK(Vma{0, kPageSize, kVmRead | kVmWrite}.use_zero_page());
  CHECK_FALSE(Vma{0, kPageSize, kVmRead | kVmLocked}.use_zero_page());
  CHECK_FALSE(Vma{0, kPageSize, kVmRead | kVmShared}.use_zero_page());
  CHECK_FALSE(Vma{0, kPageSize, kVmRead | kVmMayShare}.use_zero_page());
}

TEST_CASE("MemMap: frames are handed out, freed, reused, and run out cleanly", "[model]") {
  auto mm = MemMap::Create(5);
  REQUIRE(mm.ok());
  std::unique_ptr<MemMap> m(*mm);
  std::vector<Pfn> got;
  Pfn p;
  while (m->Alloc(&p)) got.push_back(p);
  CHECK(got.size() == 4);  // pfn 0 is the zero page
  CHECK(m->nr_used() == 4);
  for (Pfn x : got) CHECK(x != kZeroPfn);
  m->page(got[1]).refcount = 0;
  m->Free(got[1]);
  REQUIRE(m->CheckInvariants().ok());
  REQUIRE(m->Alloc(&p));
  CHECK(p == got[1]);
  CHECK(m->peak_used() == 4);
  REQUIRE(m->CheckInvariants().ok());
}

TEST_CASE("ErrnoError: the exact errno survives the Status round trip", "[model]") {
  for (int err : {EINVAL, ENOMEM, EEXIST, EFAULT, EBADF, ENODEV, EAGAIN, EIO}) {
    absl::Status s = ErrnoError(err, "ctx");
    CHECK(ToErrno(s) == err);
    errno = 0;
    CHECK(ToLibc(s) == -1);
    CHECK(errno == err);
  }
  CHECK(ToErrno(absl::OkStatus()) == 0);
}

TEST_CASE("ParseSize: human sizes parse and garbage is rejected with EINVAL", "[model]") {
  CHECK(*ParseSize("4096") == 4096);
  CHECK(*ParseSize("16k") == 16384);
  CHECK(*ParseSize("256M") == 256ull << 20);
  CHECK(*ParseSize("64G") == 64ull << 30);
  CHECK(*ParseSize("1.5G") == 3ull << 29);
  CHECK(*ParseSize("2GiB") == 2ull << 30);
  CHECK(*ParseSize(" 1T ") == 1ull << 40);
  for (const char* bad : {"", "G", "abc", "-1G", "12Q", "1..5M"}) {
    INFO(bad);
    CHECK(ToErrno(ParseSize(bad).status()) == EINVAL);
  }
}

TEST_CASE("MachineOptions: bad fault-around, arena sizes, dirty limits, file I/O and dirty "
          "tracking are refused with EINVAL",
          "[model]") {
  MachineOptions o;
  CHECK(o.Validate().ok());
  o.fault_around_pages = 3;
  CHECK(ToErrno(o.Validate()) == EINVAL);
  o.fault_around_pages = 128;
  CHECK(ToErrno(o.Validate()) == EINVAL);
  o = MachineOptions{};
  o.arena_bytes = 12345;
  CHECK(ToErrno(o.Validate()) == EINVAL);
  // The dirty limits and the file I/O of emulated files.
  o = MachineOptions{};
  o.dirty_ratio = 0;
  CHECK(ToErrno(o.Validate()) == EINVAL);
  o = MachineOptions{};
  o.dirty_background_ratio = 101;
  CHECK(ToErrno(o.Validate()) == EINVAL);
  o = MachineOptions{};
  o.dirty_expire_ms = -1;
  CHECK(ToErrno(o.Validate()) == EINVAL);
  o = MachineOptions{};
  o.file_io = "aio";
  CHECK(ToErrno(o.Validate()) == EINVAL);
  o.file_io = "uring";
  CHECK(o.Validate().ok());
  // Dirty tracking: a known mode, and "async" only with a userfaultfd.
  o = MachineOptions{};
  o.dirty_tracking = "soft-dirty";
  CHECK(ToErrno(o.Validate()) == EINVAL);
  o.dirty_tracking = "async";
  CHECK(o.Validate().ok());
  o.fault_mode = FaultMode::kSigsegv;
  CHECK(ToErrno(o.Validate()) == EINVAL);
  o.dirty_tracking = "auto";
  CHECK(o.Validate().ok());
  FaultMode m;
  CHECK(ParseFaultMode("thread", &m));
  CHECK(m == FaultMode::kUffdThread);
  CHECK_FALSE(ParseFaultMode("uffd", &m));
}

TEST_CASE("RwSem: writers exclude readers and each other under contention", "[model][sync]") {
  RwSem sem;
  int64_t value = 0;  // guarded by sem
  std::atomic<bool> bad{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; t++) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 20000; i++) {
        if ((i + t) % 4 == 0) {
          WriteLockHolder l(&sem);
          value++;
          value++;
        } else {
          ReadLockHolder l(&sem);
          if (value % 2 != 0) bad = true;
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  CHECK_FALSE(bad.load());
  CHECK(value == 2 * 20000);
}

}  // namespace
}  // namespace emu

namespace emu {
namespace {

TEST_CASE("FramePool: identity offsets, spill offsets, and batched punches never hit a frame "
          "placed again",
          "[pool]") {
  constexpr uint64_t kArena = uint64_t{1} << 30;
  const AddrRange arena{uint64_t{1} << 40, (uint64_t{1} << 40) + kArena};
  auto pool_or = FramePool::Create(arena, 64);
  REQUIRE(pool_or.ok());
  FramePool& pool = **pool_or;
  char page[kPageSize];
  auto byte_at = [&](uint64_t off) { return static_cast<const char*>(pool.view(off))[0]; };

  // Identity: the offset of the address, taken until its release is punched.
  uint64_t a = pool.Place(Pfn{1}, arena.start + 5 * kPageSize);
  CHECK(a == 5 * kPageSize);
  CHECK(pool.IsIdentity(a, arena.start + 5 * kPageSize));
  std::memset(page, 'a', sizeof(page));
  REQUIRE(pool.Fill(a, page, kPageSize));
  pool.Release(a);  // pending
  uint64_t b = pool.Place(Pfn{2}, arena.start + 5 * kPageSize);
  CHECK(b == kArena + 2 * kPageSize);  // the identity offset is still taken: spill
  pool.Flush();
  CHECK(byte_at(a) == 0);  // punched
  CHECK(pool.Place(Pfn{3}, arena.start + 5 * kPageSize) == a);  // free again
  pool.Release(a);
  pool.Release(b);

  // A spill offset released and placed again before the punch: the punch
  // happens first, not after the new frame's bytes are in.
  uint64_t s = pool.Place(Pfn{7}, 0);  // outside the arena: spill
  CHECK(s == kArena + 7 * kPageSize);
  REQUIRE(pool.Fill(s, page, kPageSize));
  pool.Release(s);
  CHECK(pool.Place(Pfn{7}, 0) == s);
  std::memset(page, 'b', sizeof(page));
  REQUIRE(pool.Fill(s, page, kPageSize));
  pool.Release(pool.Place(Pfn{9}, 0));  // another release: the pending run moves on
  pool.Flush();
  CHECK(byte_at(s) == 'b');
  pool.Release(s);
  pool.Flush();
  CHECK(pool.nr_frames() == 0);
}

}  // namespace
}  // namespace emu
