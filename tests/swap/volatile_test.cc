// Volatile ranges (seed 003, AddressSpace::Madvise with kMadvVolatile) and
// Linux's lazy free (MADV_FREE) on the same machinery: reclaim discards such
// pages without swap I/O, a discarded page reads back as zeros, a page not
// discarded keeps its data and takes no fault, and nothing else is ever seen.
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "swap/vmscan.h"
#include "test_util.h"

namespace emu {
namespace {

using test::MakeEnv;
using test::MapAnon;
using test::Stat;

constexpr int kRW = PROT_READ | PROT_WRITE;

MachineOptions LimitOptions() {
  MachineOptions o;
  o.mem_limit = uint64_t{8} << 20;  // 2048 frames
  o.swap_bytes = uint64_t{64} << 20;
  o.swap_readahead_pages = 1;
  return o;
}

VirtAddr A(const void* p) { return reinterpret_cast<VirtAddr>(p); }

void RequireMachineInvariants(Machine& m) {
  absl::Status s = test::SettledInvariants([&] { return m.CheckInvariants(); });
  INFO(s.ToString());
  REQUIRE(s.ok());
}

void RequireOk(const absl::Status& s) {
  INFO(s.ToString());
  REQUIRE(s.ok());
}

uint64_t Word(size_t page, uint64_t tag) { return (page * 0x9E3779B97F4A7C15ull) ^ (tag << 48) ^ 1; }

void Fill(char* p, size_t pages, uint64_t tag, size_t first = 0) {
  for (size_t i = first; i < first + pages; i++) {
    auto* w = reinterpret_cast<uint64_t*>(p + i * kPageSize);
    w[0] = Word(i, tag);
    w[kPageSize / 8 - 1] = ~Word(i, tag);
  }
}

enum class Seen { kIntact, kZero, kOther };

Seen Look(const char* p, size_t page, uint64_t tag) {
  auto* w = reinterpret_cast<const volatile uint64_t*>(p + page * kPageSize);
  const uint64_t a = w[0], b = w[kPageSize / 8 - 1];
  if (a == Word(page, tag) && b == ~Word(page, tag)) return Seen::kIntact;
  if (a == 0 && b == 0) return Seen::kZero;
  // Reclaim may discard the page between the two reads (a page goes from
  // its data to zeros once, never back): then it reads zeros now.
  if ((a == Word(page, tag) && b == 0) && w[0] == 0 && w[kPageSize / 8 - 1] == 0) {
    return Seen::kZero;
  }
  return Seen::kOther;
}

// How many pages of [first, first + pages) are intact, zero, or neither.
struct Tally {
  size_t intact = 0, zero = 0, other = 0;
};
Tally Count(const char* p, size_t pages, uint64_t tag, size_t first = 0) {
  Tally t;
  for (size_t i = first; i < first + pages; i++) {
    switch (Look(p, i, tag)) {
      case Seen::kIntact: t.intact++; break;
      case Seen::kZero: t.zero++; break;
      case Seen::kOther: t.other++; break;
    }
  }
  return t;
}

void ShrinkAll(Machine& m) { (void)test::ShrinkSettled(m); }

TEST_CASE("Volatile: marking touches no page; without pressure the data stays, with no fault",
          "[volatile]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  const bool limit = GENERATE(false, true);
  auto env = MakeEnv(mode, limit ? LimitOptions() : MachineOptions{});
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 256;
  char* p = MapAnon(as, kPages * kPageSize);
  Fill(p, kPages, 1);
  std::vector<uint64_t> before(kPages);
  for (size_t i = 0; i < kPages; i++) before[i] = as.GetPte(A(p) + i * kPageSize).raw();
  const uint64_t faults = Stat(m, VmEvent::k_pgfault);
  RequireOk(as.Madvise(A(p), kPages * kPageSize, kMadvVolatile));
  CHECK(Stat(m, VmEvent::k_pgvolatile_marked) == kPages);
  for (size_t i = 0; i < kPages; i++) CHECK(as.GetPte(A(p) + i * kPageSize).raw() == before[i]);
  // Read and write it all: old data, no fault, the mark stays.
  Tally t = Count(p, kPages, 1);
  CHECK(t.intact == kPages);
  Fill(p, kPages, 2);
  CHECK(Stat(m, VmEvent::k_pgfault) == faults);
  CHECK(Stat(m, VmEvent::k_volatile_unmark) == 0);
  CHECK(Stat(m, VmEvent::k_pgvolatile) == 0);
  RequireMachineInvariants(m);

  // A large range, mostly never touched: one VMA split, no page visited.
  char* big = MapAnon(as, size_t{1} << 30);
  big[0] = 1;
  const size_t vmas = as.nr_vmas();
  RequireOk(as.Madvise(A(big) + kPageSize, (size_t{1} << 30) - 2 * kPageSize, kMadvVolatile));
  CHECK(as.nr_vmas() == vmas + 2);
  CHECK(Stat(m, VmEvent::k_pgvolatile_marked) == kPages + (size_t{1} << 18) - 2);
  CHECK(big[0] == 1);
  RequireMachineInvariants(m);
}

TEST_CASE("Volatile: Linux's errors: alignment, sub-page length, locked ranges, holes",
          "[volatile]") {
  auto env = MakeEnv(FaultMode::kSigsegv, LimitOptions());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  char* p = MapAnon(as, 16 * kPageSize);
  Fill(p, 16, 3);
  CHECK(as.Madvise(A(p) + 1, kPageSize, kMadvVolatile).code() == absl::StatusCode::kInvalidArgument);
  // Less than a page rounds down to nothing: EINVAL (seed: len_in && !len).
  CHECK(as.Madvise(A(p), 100, kMadvVolatile).code() == absl::StatusCode::kInvalidArgument);
  CHECK(Stat(m, VmEvent::k_pgvolatile_marked) == 0);
  // The length rounds down: 3 pages and a bit mark 3 pages.
  RequireOk(as.Madvise(A(p), 3 * kPageSize + 100, kMadvVolatile));
  CHECK(Stat(m, VmEvent::k_pgvolatile_marked) == 3);
  ShrinkAll(m);
  CHECK(Stat(m, VmEvent::k_pgvolatile) == 3);
  CHECK(Look(p, 3, 3) == Seen::kIntact);  // swapped, not discarded: not in the range
  // A VM_LOCKED piece anywhere: EINVAL, and nothing marked.
  RequireOk(as.Mlock(A(p) + 10 * kPageSize, 2 * kPageSize));
  const uint64_t marked = Stat(m, VmEvent::k_pgvolatile_marked);
  CHECK(as.Madvise(A(p) + 4 * kPageSize, 12 * kPageSize, kMadvVolatile).code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(Stat(m, VmEvent::k_pgvolatile_marked) == marked);
  // A hole: the mapped parts are marked, the result is ENOMEM.
  RequireOk(as.Munmap(A(p) + 6 * kPageSize, kPageSize));
  auto s = as.Madvise(A(p) + 4 * kPageSize, 6 * kPageSize, kMadvVolatile);
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Stat(m, VmEvent::k_pgvolatile_marked) == marked + 5);
  RequireMachineInvariants(m);
}

TEST_CASE("Volatile: reclaim discards without swap I/O, a discarded page reads zeros, and the "
          "first fault clears the mark",
          "[volatile]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  const bool no_swap = GENERATE(false, true);
  INFO("no_swap " << no_swap);
  MachineOptions o = LimitOptions();
  o.no_swap = no_swap;
  auto env = MakeEnv(mode, o);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 512, kMarked = 500;
  char* p = MapAnon(as, kPages * kPageSize, kRW);
  Fill(p, kPages, 4);
  const size_t vmas = as.nr_vmas();
  RequireOk(as.Madvise(A(p), kMarked * kPageSize, kMadvVolatile));
  CHECK(as.nr_vmas() == vmas + 1);
  const uint64_t out0 = Stat(m, VmEvent::k_pswpout);
  ShrinkAll(m);
  // The marked pages are discarded, the rest swapped (or, without swap, kept).
  CHECK(Stat(m, VmEvent::k_pswpout) == out0 + (no_swap ? 0 : kPages - kMarked));
  CHECK(Stat(m, VmEvent::k_pgvolatile) == kMarked);
  CHECK(Stat(m, VmEvent::k_swapout_avoided) == kMarked);
  CHECK(as.rss_anon() == (no_swap ? kPages - kMarked : 0));
  CHECK(as.GetPte(A(p)).discarded());
  RequireMachineInvariants(m);
  // The first access: zeros, a refault, the mark cleared and the VMA merged.
  CHECK(Look(p, 7, 4) == Seen::kZero);
  // That page and the discarded neighbours fault-around brought back with it.
  CHECK(Stat(m, VmEvent::k_discard_refault) >= 1);
  CHECK(Stat(m, VmEvent::k_discard_refault) <= static_cast<uint64_t>(o.fault_around_pages));
  CHECK(Stat(m, VmEvent::k_volatile_unmark) == 1);
  CHECK(as.nr_vmas() == vmas);
  CHECK(Count(p, kMarked, 4).zero == kMarked);
  CHECK(Count(p, kPages - kMarked, 4, kMarked).intact == kPages - kMarked);
  // An ordinary range again: written pages are swapped, not discarded.
  Fill(p, kPages, 5);
  ShrinkAll(m);
  if (!no_swap) {
    CHECK(Stat(m, VmEvent::k_pswpout) >= out0 + kPages);
    CHECK(Stat(m, VmEvent::k_pgvolatile) == kMarked);
    CHECK(Count(p, kPages, 5).intact == kPages);
  }
  RequireMachineInvariants(m);
}

TEST_CASE("Volatile: a swapped-out page in a volatile range is discarded by freeing its slot",
          "[volatile][swap]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  SwapDevice& dev = *static_cast<Vmscan*>(m.reclaim())->swap_device();
  constexpr size_t kPages = 64;
  char* p = MapAnon(as, kPages * kPageSize);
  Fill(p, kPages, 6);
  ShrinkAll(m);
  REQUIRE(as.nr_swap_ptes() == kPages);
  REQUIRE(dev.nr_used() == kPages);
  RequireOk(as.Madvise(A(p), kPages * kPageSize, kMadvVolatile));
  CHECK(dev.nr_used() == kPages);  // marking touches nothing
  const uint64_t in0 = Stat(m, VmEvent::k_pswpin);
  // The first fault: every swapped page of the range goes with its slot,
  // unread, and the mark goes too.
  CHECK(Look(p, 3, 6) == Seen::kZero);
  CHECK(Stat(m, VmEvent::k_pswpin) == in0);
  CHECK(Stat(m, VmEvent::k_swapin_avoided) == kPages);
  CHECK(Stat(m, VmEvent::k_volatile_unmark) == 1);
  CHECK(dev.nr_used() == 0);
  CHECK(as.nr_swap_ptes() == 0);
  CHECK(Count(p, kPages, 6).zero == kPages);
  CHECK(Stat(m, VmEvent::k_pswpin) == in0);
  RequireMachineInvariants(m);

  // A page read back from swap (clean, in the swap cache) in a range marked
  // again is discarded by reclaim with its slot.
  Fill(p, kPages, 7);
  ShrinkAll(m);
  REQUIRE(dev.nr_used() == kPages);
  CHECK(Count(p, kPages, 7).intact == kPages);  // read back: swap cache
  RequireOk(as.Madvise(A(p), kPages * kPageSize, kMadvVolatile));
  const uint64_t out0 = Stat(m, VmEvent::k_pswpout), vol0 = Stat(m, VmEvent::k_pgvolatile);
  ShrinkAll(m);
  CHECK(Stat(m, VmEvent::k_pswpout) == out0);
  CHECK(Stat(m, VmEvent::k_pgvolatile) - vol0 == kPages);
  CHECK(as.nr_swap_ptes() == 0);
  CHECK(dev.nr_used() == 0);
  RequireMachineInvariants(m);
}

TEST_CASE("Volatile: a frame shared after a fork is discarded only when every mapping is volatile",
          "[volatile][fork]") {
  FaultMode mode = EMU_ALL_MODES();
  std::string method = GENERATE(std::string("anon_vma"), std::string("anonmm"));
  INFO("mode " << FaultModeName(mode) << " rmap " << method);
  MachineOptions o = LimitOptions();
  o.rmap = method;
  auto env = MakeEnv(mode, o);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 256;
  char* p = MapAnon(parent, kPages * kPageSize);
  Fill(p, kPages, 7);
  auto forked = parent.Fork();
  REQUIRE(forked.ok());
  std::unique_ptr<AddressSpace> child = std::move(*forked);
  char* c = reinterpret_cast<char*>(child->window().start + (A(p) - parent.window().start));
  REQUIRE(m.frame_pool()->nr_frames() == kPages);

  // Only the parent marks: the frames are swapped, the child keeps its data.
  RequireOk(parent.Madvise(A(p), kPages * kPageSize, kMadvVolatile));
  ShrinkAll(m);
  ShrinkAll(m);
  CHECK(Stat(m, VmEvent::k_pgvolatile) == 0);
  CHECK(m.frame_pool()->nr_frames() == 0);
  CHECK(child->nr_swap_ptes() == kPages);
  CHECK(Count(c, kPages, 7).intact == kPages);
  Tally t = Count(p, kPages, 7);  // the parent may see zeros, nothing else
  CHECK(t.other == 0);
  CHECK(t.intact + t.zero == kPages);
  RequireMachineInvariants(m);

  // Both mark a fresh fork's frames: discarded, no I/O.
  Fill(p, kPages, 8);
  child.reset();
  forked = parent.Fork();
  REQUIRE(forked.ok());
  child = std::move(*forked);
  REQUIRE(m.frame_pool()->nr_frames() == kPages);
  RequireOk(parent.Madvise(A(p), kPages * kPageSize, kMadvVolatile));
  RequireOk(child->Madvise(A(c), kPages * kPageSize, kMadvVolatile));
  const uint64_t out0 = Stat(m, VmEvent::k_pswpout), vol0 = Stat(m, VmEvent::k_pgvolatile);
  ShrinkAll(m);
  CHECK(Stat(m, VmEvent::k_pswpout) == out0);
  CHECK(Stat(m, VmEvent::k_pgvolatile) - vol0 == kPages);
  CHECK(m.frame_pool()->nr_frames() == 0);
  CHECK(Count(p, kPages, 8).zero == kPages);
  CHECK(Count(c, kPages, 8).zero == kPages);
  RequireMachineInvariants(m);
}

TEST_CASE("Volatile: a pinned page is never discarded", "[volatile][pin]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 32;
  char* p = MapAnon(as, kPages * kPageSize);
  Fill(p, kPages, 9);
  Pfn pin{0};
  auto n = as.PinUserPages(A(p) + 5 * kPageSize, 1, kGupWrite, &pin);
  REQUIRE(n.ok());
  REQUIRE(*n == 1);
  RequireOk(as.Madvise(A(p), kPages * kPageSize, kMadvVolatile));
  ShrinkAll(m);
  CHECK(Stat(m, VmEvent::k_pgvolatile) == kPages - 1);
  CHECK(as.GetPte(A(p) + 5 * kPageSize).present());
  CHECK(as.GetPte(A(p) + 5 * kPageSize).pfn() == pin);
  CHECK(Look(p, 5, 9) == Seen::kIntact);
  as.UnpinUserPages(&pin, 1);
  RequireMachineInvariants(m);
}

TEST_CASE("Volatile: mremap keeps the mark, mlock clears it, and any fault clears it",
          "[volatile][mremap]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 64;
  char* p = MapAnon(as, kPages * kPageSize);
  char* dst = MapAnon(as, 2 * kPages * kPageSize);
  RequireOk(as.Munmap(A(dst), 2 * kPages * kPageSize));
  Fill(p, kPages, 10);
  RequireOk(as.Madvise(A(p), kPages * kPageSize, kMadvVolatile));
  auto moved = as.Mremap(A(p), kPages * kPageSize, 2 * kPages * kPageSize,
                         MREMAP_MAYMOVE | MREMAP_FIXED, A(dst));
  INFO(moved.status().ToString());
  REQUIRE(moved.ok());
  CHECK(Stat(m, VmEvent::k_volatile_unmark) == 0);
  ShrinkAll(m);
  CHECK(Stat(m, VmEvent::k_pgvolatile) == kPages);
  CHECK(Count(dst, kPages, 10).zero == kPages);
  CHECK(Stat(m, VmEvent::k_volatile_unmark) == 1);
  RequireMachineInvariants(m);

  // mlock: the mark goes, the pages are locked and stay.
  Fill(dst, kPages, 11);
  RequireOk(as.Madvise(A(dst), kPages * kPageSize, kMadvVolatile));
  RequireOk(as.Mlock(A(dst), kPages * kPageSize));
  ShrinkAll(m);
  CHECK(Stat(m, VmEvent::k_pgvolatile) == kPages);
  RequireOk(as.Munlock(A(dst), kPages * kPageSize));
  ShrinkAll(m);
  CHECK(Stat(m, VmEvent::k_pgvolatile) == kPages);
  CHECK(Count(dst, kPages, 11).intact == kPages);

  // A write fault on a zero-page PTE (a present page) clears it as well.
  char* z = MapAnon(as, 8 * kPageSize);
  CHECK(Count(z, 8, 0).zero == 8);  // read: zero-page PTEs
  RequireOk(as.Madvise(A(z), 8 * kPageSize, kMadvVolatile));
  const uint64_t unmarks = Stat(m, VmEvent::k_volatile_unmark);
  Fill(z, 1, 12);
  CHECK(Stat(m, VmEvent::k_volatile_unmark) == unmarks + 1);
  RequireMachineInvariants(m);
}

TEST_CASE("Lazy free (MADV_FREE): pages are discarded unless written again, swap is freed at once",
          "[volatile][lazyfree]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  SwapDevice& dev = *static_cast<Vmscan*>(m.reclaim())->swap_device();
  constexpr size_t kPages = 512;
  char* p = MapAnon(as, kPages * kPageSize);
  Fill(p, kPages, 13);
  REQUIRE(m.reclaim()->ShrinkTo(kPages / 2).ok());
  const uint64_t swapped = as.nr_swap_ptes();
  REQUIRE(swapped > 0);
  const uint64_t resident = as.rss_anon();
  RequireOk(as.Madvise(A(p), kPages * kPageSize, MADV_FREE));
  // Linux: a swap entry is freed by the call itself.
  CHECK(as.nr_swap_ptes() == 0);
  CHECK(dev.nr_used() == 0);
  CHECK(Stat(m, VmEvent::k_pglazyfree) == resident);
  RequireMachineInvariants(m);
  // Without pressure a lazily freed page keeps its data; a write keeps the
  // new data (it traps once: the PTE was made clean and write-protected).
  Tally t = Count(p, kPages, 13);
  CHECK(t.other == 0);
  CHECK(t.intact == resident);
  CHECK(t.zero == swapped);
  const size_t lazy_second = Count(p, kPages / 2, 13, kPages / 2).intact;
  Fill(p, kPages / 2, 14);
  const uint64_t out0 = Stat(m, VmEvent::k_pswpout);
  ShrinkAll(m);
  // The untouched half's resident pages were discarded without I/O (but
  // those the last window took with it); what was written went to swap.
  const uint64_t around = static_cast<uint64_t>(LimitOptions().fault_around_pages) - 1;
  CHECK(Stat(m, VmEvent::k_pglazyfreed) <= lazy_second);
  CHECK(Stat(m, VmEvent::k_pglazyfreed) + around >= lazy_second);
  CHECK(Stat(m, VmEvent::k_pswpout) - out0 >= kPages / 2);
  CHECK(Stat(m, VmEvent::k_pswpout) - out0 <= kPages / 2 + around);
  CHECK(Count(p, kPages / 2, 14).intact == kPages / 2);
  t = Count(p, kPages / 2, 13, kPages / 2);
  CHECK(t.other == 0);
  CHECK(t.zero >= kPages / 2 - around);
  RequireMachineInvariants(m);

  // MADV_DONTNEED stays exact: zeros at once.
  Fill(p, 4, 15);
  RequireOk(as.Madvise(A(p), 4 * kPageSize, MADV_DONTNEED));
  CHECK(Count(p, 4, 15).zero == 4);
}

TEST_CASE("Lazy free (MADV_FREE): a write takes the lazily freed pages around it in one fault",
          "[volatile][lazyfree]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 256;  // well under the limit: no reclaim
  char* p = MapAnon(as, kPages * kPageSize);
  Fill(p, kPages, 20);
  RequireOk(as.Madvise(A(p), kPages * kPageSize, MADV_FREE));
  CHECK(Stat(m, VmEvent::k_pglazyfree) == kPages);
  const uint64_t wp0 = Stat(m, VmEvent::k_pgfault_wp), reuse0 = Stat(m, VmEvent::k_pgreuse);
  Fill(p, kPages, 21);
  const uint64_t nr = static_cast<uint64_t>(LimitOptions().fault_around_pages);
  CHECK(Stat(m, VmEvent::k_pgfault_wp) - wp0 <= kPages / nr + 1);
  CHECK(Stat(m, VmEvent::k_pgreuse) - reuse0 == kPages);
  for (size_t i = 0; i < kPages; i++) {
    Pte pte = as.GetPte(A(p) + i * kPageSize);
    CHECK((pte.write() && pte.dirty()));
  }
  CHECK(Count(p, kPages, 21).intact == kPages);
  // Written again, they are ordinary pages: reclaim swaps them.
  ShrinkAll(m);
  CHECK(Stat(m, VmEvent::k_pglazyfreed) == 0);
  CHECK(Count(p, kPages, 21).intact == kPages);
  RequireMachineInvariants(m);
}

TEST_CASE("Lazy free (MADV_FREE): frames shared with a fork and pinned pages keep their data",
          "[volatile][lazyfree][fork]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 64;
  char* p = MapAnon(as, kPages * kPageSize);
  Fill(p, kPages, 16);
  auto forked = as.Fork();
  REQUIRE(forked.ok());
  std::unique_ptr<AddressSpace> child = std::move(*forked);
  char* q = MapAnon(as, 8 * kPageSize);
  Fill(q, 8, 17);
  Pfn pin{0};
  REQUIRE(*as.PinUserPages(A(q), 1, kGupWrite, &pin) == 1);
  RequireOk(as.Madvise(A(p), kPages * kPageSize, MADV_FREE));
  RequireOk(as.Madvise(A(q), 8 * kPageSize, MADV_FREE));
  CHECK(Stat(m, VmEvent::k_pglazyfree) == 7);
  ShrinkAll(m);
  ShrinkAll(m);
  CHECK(Stat(m, VmEvent::k_pglazyfreed) == 7);
  CHECK(Count(p, kPages, 16).intact == kPages);
  CHECK(Look(q, 0, 17) == Seen::kIntact);
  CHECK(Count(q, 7, 17, 1).zero == 7);
  as.UnpinUserPages(&pin, 1);
  RequireMachineInvariants(m);
}

TEST_CASE("Lazy free (MADV_FREE): without a memory limit it changes nothing", "[volatile][lazyfree]") {
  auto env = MakeEnv(FaultMode::kUffdSigbus);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  char* p = MapAnon(as, 64 * kPageSize);
  Fill(p, 64, 18);
  const uint64_t faults = Stat(m, VmEvent::k_pgfault);
  RequireOk(as.Madvise(A(p), 64 * kPageSize, MADV_FREE));
  Fill(p, 64, 19);
  CHECK(Stat(m, VmEvent::k_pgfault) == faults);
  CHECK(Count(p, 64, 19).intact == 64);
}

// An allocator's life: chunks are written, freed with the advice, reused.
// Under a limit of half the chunks, a page is always either what was last
// written to it or zeros (a discard), never anything else; with MADV_FREE a
// chunk in use is always exactly what was written.
TEST_CASE("Volatile and lazy free: an allocator-like churn sees its data intact or zero",
          "[volatile][lazyfree][churn]") {
  FaultMode mode = EMU_ALL_MODES();
  const int advice = GENERATE(int{MADV_FREE}, kMadvVolatile);
  INFO("mode " << FaultModeName(mode) << " advice " << advice);
  auto env = MakeEnv(mode, LimitOptions());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kChunks = 64, kChunkPages = 64;  // 16 MiB against an 8 MiB limit
  char* base = MapAnon(as, kChunks * kChunkPages * kPageSize);
  struct Chunk {
    bool live = false;
    uint64_t tag = 0;  // 0: never written (zeros)
  };
  std::vector<Chunk> chunks(kChunks);
  std::mt19937_64 rng(42 + advice);
  uint64_t next_tag = 1;
  size_t zeros_in_use = 0;
  for (int step = 0; step < 1500; step++) {
    const size_t k = rng() % kChunks;
    char* c = base + k * kChunkPages * kPageSize;
    Chunk& ch = chunks[k];
    for (size_t i = 0; i < kChunkPages; i++) {
      Seen s = ch.tag == 0 ? (Look(c, i, 0) == Seen::kZero ? Seen::kZero : Seen::kOther)
                           : Look(c, i, ch.tag);
      INFO("step " << step << " chunk " << k << " page " << i << " live " << ch.live);
      REQUIRE(s != Seen::kOther);
      if (ch.live && s == Seen::kZero && ch.tag != 0) {
        // A chunk in use: MADV_FREE keeps what was written after the call;
        // a volatile range keeps it only once a fault has cleared the mark.
        REQUIRE(advice == kMadvVolatile);
        zeros_in_use++;
      }
    }
    if (ch.live) {
      RequireOk(as.Madvise(A(c), kChunkPages * kPageSize, advice));
      ch.live = false;
    } else {
      ch.tag = next_tag++;
      Fill(c, kChunkPages, ch.tag);
      ch.live = true;
    }
  }
  CHECK(Stat(m, advice == MADV_FREE ? VmEvent::k_pglazyfreed : VmEvent::k_pgvolatile) > 0);
  WARN("discards " << Stat(m, VmEvent::k_pgvolatile) + Stat(m, VmEvent::k_pglazyfreed)
                   << ", refaults " << Stat(m, VmEvent::k_discard_refault) << ", swap-outs "
                   << Stat(m, VmEvent::k_pswpout) << ", pages in use found zero "
                   << zeros_in_use);
  RequireMachineInvariants(m);
}

// Threads fault in one volatile range at once while reclaim discards it:
// one of them clears the mark, none sees anything but its data or zeros.
TEST_CASE("Volatile: threads racing the first fault and reclaim", "[volatile][race]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr int kThreads = 4;
  constexpr size_t kPer = 256;  // 4 MiB in all, half the limit
  char* p = MapAnon(as, kThreads * kPer * kPageSize);
  for (int round = 1; round <= 20; round++) {
    Fill(p, kThreads * kPer, round);
    RequireOk(as.Madvise(A(p), kThreads * kPer * kPageSize, kMadvVolatile));
    std::atomic<bool> bad{false};
    std::atomic<bool> stop{false};
    std::thread reclaimer([&] {
      while (!stop.load()) (void)m.reclaim()->ShrinkTo(kThreads * kPer / 2);
    });
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; t++) {
      ts.emplace_back([&, t] {
        for (size_t i = t * kPer; i < (t + 1) * kPer; i++) {
          if (Look(p, i, round) == Seen::kOther) bad = true;
        }
      });
    }
    for (auto& t : ts) t.join();
    stop = true;
    reclaimer.join();
    REQUIRE_FALSE(bad.load());
    RequireMachineInvariants(m);
  }
  CHECK(Stat(m, VmEvent::k_volatile_unmark) <= 20);
}

}  // namespace
}  // namespace emu
