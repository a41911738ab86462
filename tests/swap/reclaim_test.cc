// The memory limit: reclaim to a swap device and back, with no byte lost.
//
// Every test runs a machine with a small limit (MachineOptions::mem_limit)
// and touches more memory than it, so pages really travel to the swap file
// and back; patterns are verified after each round trip, and the swap_map is
// checked against the swap PTEs that exist (Machine::CheckInvariants).
#include <setjmp.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "emu/checksum.h"
#include "swap/swap_io.h"
#include "swap/vmscan.h"
#include "test_util.h"

namespace emu {
namespace {

using test::MakeEnv;
using test::MapAnon;
using test::Stat;

constexpr uint64_t kLimit = uint64_t{8} << 20;  // 2048 frames
constexpr size_t kLimitPages = kLimit / kPageSize;

MachineOptions LimitOptions(int readahead = 8, const char* policy = "lru") {
  MachineOptions o;
  o.mem_limit = kLimit;
  o.swap_bytes = uint64_t{64} << 20;
  o.swap_readahead_pages = readahead;
  o.reclaim_policy = policy;
  return o;
}

[[maybe_unused]] Vmscan& Reclaim(Machine& m) { return *static_cast<Vmscan*>(m.reclaim()); }

void RequireMachineInvariants(Machine& m) {
  absl::Status s = test::SettledInvariants([&] { return m.CheckInvariants(); });
  INFO(s.ToString());
  REQUIRE(s.ok());
}

// The 8-byte word at `word` of page `page` in round `round`.
uint64_t Pattern(size_t page, size_t word, uint64_t round) {
  return (page * 0x9E3779B97F4A7C15ull) ^ (word * 0xBF58476D1CE4E5B9ull) ^ (round << 56) ^ 0x5a5a;
}

void FillPage(char* base, size_t page, uint64_t round) {
  auto* w = reinterpret_cast<uint64_t*>(base + page * kPageSize);
  for (size_t i = 0; i < kPageSize / 8; i++) w[i] = Pattern(page, i, round);
}

// What a bad page holds instead, for the failure message.
std::string Describe(const char* base, size_t page, uint64_t round, size_t pages) {
  auto* w = reinterpret_cast<const uint64_t*>(base + page * kPageSize);
  std::string out = "page " + std::to_string(page) + " round " + std::to_string(round);
  for (size_t q = 0; q < pages; q++) {
    for (uint64_t r = 0; r < 16; r++) {
      if (w[0] == Pattern(q, 0, r)) {
        return out + ": holds page " + std::to_string(q) + " round " + std::to_string(r);
      }
    }
  }
  return out + (w[0] == 0 ? ": starts with zeros" : ": holds something else");
}

// Returns the first bad word index of the page, or -1.
long CheckPage(const char* base, size_t page, uint64_t round) {
  auto* w = reinterpret_cast<const uint64_t*>(base + page * kPageSize);
  for (size_t i = 0; i < kPageSize / 8; i++) {
    if (w[i] != Pattern(page, i, round)) return static_cast<long>(i);
  }
  return -1;
}

TEST_CASE("Swap: a working set of 3x the limit survives sequential and random passes",
          "[swap]") {
  FaultMode mode = EMU_ALL_MODES();
  const char* policy = GENERATE("lru", "fifo");
  INFO("mode " << FaultModeName(mode) << ", policy " << policy);
  auto env = MakeEnv(mode, LimitOptions(8, policy));
  Machine& m = *env->machine;
  const size_t pages = 3 * kLimitPages;
  char* base = MapAnon(*env->as, pages * kPageSize);
  for (size_t p = 0; p < pages; p++) FillPage(base, p, 0);
  CHECK(Stat(m, VmEvent::k_pswpout) > 0);
  for (size_t p = 0; p < pages; p++) {
    if (CheckPage(base, p, 0) != -1) {
      INFO(Describe(base, p, 0, pages));
      REQUIRE(CheckPage(base, p, 0) == -1);
    }
  }
  // Random rewrites and rereads: pages go out and come back many times.
  std::mt19937_64 rng(42);
  std::vector<uint64_t> round(pages, 0);
  for (int i = 0; i < 6000; i++) {
    size_t p = rng() % pages;
    if (rng() % 2) {
      FillPage(base, p, ++round[p]);
    } else if (CheckPage(base, p, round[p]) != -1) {
      INFO(Describe(base, p, round[p], pages));
      REQUIRE(CheckPage(base, p, round[p]) == -1);
    }
  }
  for (size_t p = 0; p < pages; p++) {
    if (CheckPage(base, p, round[p]) != -1) {
      INFO(Describe(base, p, round[p], pages));
      REQUIRE(CheckPage(base, p, round[p]) == -1);
    }
  }
  CHECK(Stat(m, VmEvent::k_pswpin) > 0);
  CHECK(Stat(m, VmEvent::k_pgmajfault) > 0);
  CHECK(m.mem_map().peak_used() <= kLimitPages);
  RequireMachineInvariants(m);
}

TEST_CASE("Swap: several threads faulting under pressure each keep their data", "[swap]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  Machine& m = *env->machine;
  constexpr int kThreads = 4;
  const size_t per = kLimitPages;  // 4x the limit in all
  char* base = MapAnon(*env->as, kThreads * per * kPageSize);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&, t] {
      char* mine = base + t * per * kPageSize;
      std::mt19937_64 rng(t);
      std::vector<uint64_t> round(per, 0);
      for (size_t p = 0; p < per; p++) FillPage(mine, p, 0);
      for (int i = 0; i < 3000; i++) {
        size_t p = rng() % per;
        if (rng() % 3 == 0) {
          FillPage(mine, p, ++round[p]);
        } else if (CheckPage(mine, p, round[p]) != -1) {
          bad++;
        }
      }
      for (size_t p = 0; p < per; p++) {
        if (CheckPage(mine, p, round[p]) != -1) bad++;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(bad.load() == 0);
  CHECK(Stat(m, VmEvent::k_pswpin) > 0);
  CHECK(m.mem_map().peak_used() <= kLimitPages);
  RequireMachineInvariants(m);
}

}  // namespace
}  // namespace emu

namespace emu {
namespace {

// Swaps out every evictable page of the machine now.
void SwapOutAll(Machine& m) {
  absl::Status s = test::ShrinkSettled(m);
  INFO(s.ToString());
  REQUIRE(s.ok());
}

TEST_CASE("Swap: concurrent faults on one swapped page wait on one read", "[swap]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions(/*readahead=*/1));
  Machine& m = *env->machine;
  char* p = MapAnon(*env->as, 16 * kPageSize);
  for (size_t i = 0; i < 16; i++) FillPage(p, i, 7);
  SwapOutAll(m);
  REQUIRE(test::SettledPte(*env->as, reinterpret_cast<VirtAddr>(p + 5 * kPageSize)).swap());
  const uint64_t in0 = Stat(m, VmEvent::k_pswpin);
  constexpr int kThreads = 8;
  std::atomic<int> ready{0}, bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&] {
      ready++;
      while (ready.load() < kThreads) {
      }
      if (CheckPage(p, 5, 7) != -1) bad++;
    });
  }
  for (auto& t : threads) t.join();
  CHECK(bad.load() == 0);
  CHECK(test::SettledStat(m, VmEvent::k_pswpin, in0 + 1) - in0 == 1);
  RequireMachineInvariants(m);
}

TEST_CASE("Swap cache: a page read back keeps its slot until written, and goes again without I/O",
          "[swap]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  // Without the checksum: the page comes back write-protected (seed 002).
  MachineOptions o = LimitOptions(/*readahead=*/1);
  o.swap_cache_checksum = false;
  auto env = MakeEnv(mode, o);
  Machine& m = *env->machine;
  SwapDevice& dev = *Reclaim(m).swap_device();
  char* p = MapAnon(*env->as, 4 * kPageSize);
  const VirtAddr page = reinterpret_cast<VirtAddr>(p);
  for (size_t i = 0; i < 4; i++) FillPage(p, i, 1);
  SwapOutAll(m);
  REQUIRE(test::SettledPte(*env->as, page).swap());
  const uint64_t slot = test::SettledPte(*env->as, page).swap_entry();
  CHECK(dev.Count(slot) == 1);
  CHECK_FALSE(dev.HasCache(slot));

  // Read: mapped write-protected, clean, still holding the slot.
  REQUIRE(CheckPage(p, 0, 1) == -1);
  Pte pte = test::SettledPte(*env->as, page);
  REQUIRE(pte.present());
  CHECK_FALSE(pte.write());
  CHECK(dev.Count(slot) == 0);
  CHECK(dev.HasCache(slot));
  RequireMachineInvariants(m);

  // Reclaimed again: no write, the same slot.
  const uint64_t out0 = Stat(m, VmEvent::k_pswpout), clean0 = Stat(m, VmEvent::k_pgsteal_clean);
  SwapOutAll(m);
  CHECK(Stat(m, VmEvent::k_pswpout) == out0);
  CHECK(Stat(m, VmEvent::k_pgsteal_clean) > clean0);
  CHECK(test::SettledPte(*env->as, page).swap_entry() == slot);
  REQUIRE(CheckPage(p, 0, 1) == -1);

  // Written: the slot is freed (seed 002: mapcount + swapcount == 1, reuse,
  // try_to_free_swap), the page is writable and dirty.
  const uint64_t used0 = dev.nr_used(), freed0 = Stat(m, VmEvent::k_swap_free_on_reuse);
  FillPage(p, 0, 2);
  pte = test::SettledPte(*env->as, page);
  CHECK(pte.write());
  CHECK(pte.dirty());
  CHECK(Stat(m, VmEvent::k_swap_free_on_reuse) == freed0 + 1);
  CHECK(dev.nr_used() == used0 - 1);
  CHECK_FALSE(dev.HasCache(slot));
  RequireMachineInvariants(m);
  // And it goes out once more with the new data.
  SwapOutAll(m);
  REQUIRE(CheckPage(p, 0, 2) == -1);
  REQUIRE(CheckPage(p, 1, 1) == -1);
}

TEST_CASE("Page checksum: any change to one word of a page changes it", "[csum]") {
  std::mt19937_64 rng(11);
  std::vector<uint64_t> page(kPageSize / 8);
  for (uint64_t& w : page) w = rng();
  const uint64_t sum = PageChecksum(page.data());
  CHECK(PageChecksum(page.data()) == sum);
  for (size_t k = 0; k < page.size(); k++) {
    const uint64_t orig = page[k];
    for (uint64_t delta : {uint64_t{1}, uint64_t{1} << 63, ~uint64_t{0}, rng() | 1}) {
      page[k] = orig ^ delta;
      if (PageChecksum(page.data()) == sum) FAIL("word " << k << " changed by " << delta);
    }
    page[k] = orig;
  }
  // Two pages that differ only in where a word sits.
  std::vector<uint64_t> moved = page;
  std::swap(moved[0], moved[1]);
  CHECK(PageChecksum(moved.data()) != sum);
  std::vector<uint64_t> zeros(kPageSize / 8, 0), one(kPageSize / 8, 0);
  one[kPageSize / 8 - 1] = 1;
  CHECK(PageChecksum(zeros.data()) != PageChecksum(one.data()));
}

// Page `i`'s word that the checksum tests change: first, last and middle
// words all occur.
size_t ChangedWord(size_t i) { return (i * 37) % (kPageSize / 8); }

// Checks page `i`: round 1 everywhere, except ChangedWord(i) holding round 2
// when `changed`.
bool PageAsWritten(const char* base, size_t i, bool changed) {
  auto* w = reinterpret_cast<const uint64_t*>(base + i * kPageSize);
  for (size_t k = 0; k < kPageSize / 8; k++) {
    const uint64_t want = changed && k == ChangedWord(i) ? Pattern(i, k, 2) : Pattern(i, k, 1);
    if (w[k] != want) return false;
  }
  return true;
}

TEST_CASE("Swap cache checksum: a page read back is writable, and reclaim writes only the pages "
          "that changed",
          "[swap][csum]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions(/*readahead=*/1));  // checksum on: the default
  Machine& m = *env->machine;
  SwapDevice& dev = *Reclaim(m).swap_device();
  constexpr size_t kPages = 16;
  char* p = MapAnon(*env->as, kPages * kPageSize);
  auto at = [&](size_t i) { return reinterpret_cast<VirtAddr>(p + i * kPageSize); };
  for (size_t i = 0; i < kPages; i++) FillPage(p, i, 1);
  SwapOutAll(m);
  uint64_t slots[kPages];
  for (size_t i = 0; i < kPages; i++) {
    REQUIRE(test::SettledPte(*env->as, at(i)).swap());
    slots[i] = test::SettledPte(*env->as, at(i)).swap_entry();
  }

  // Read back: writable but clean, the slot still the page's.
  const uint64_t writable0 = Stat(m, VmEvent::k_swap_cache_writable);
  for (size_t i = 0; i < kPages; i++) REQUIRE(CheckPage(p, i, 1) == -1);
  CHECK(test::SettledStat(m, VmEvent::k_swap_cache_writable, writable0 + kPages) - writable0 ==
        kPages);
  for (size_t i = 0; i < kPages; i++) {
    Pte pte = test::SettledPte(*env->as, at(i));
    REQUIRE(pte.present());
    CHECK(pte.write());
    CHECK_FALSE(pte.dirty());
    CHECK(dev.HasCache(slots[i]));
  }
  RequireMachineInvariants(m);

  // One word of every other page changes: no fault sees it.
  const uint64_t faults0 = Stat(m, VmEvent::k_pgfault);
  for (size_t i = 0; i < kPages; i += 2) {
    reinterpret_cast<volatile uint64_t*>(p + i * kPageSize)[ChangedWord(i)] =
        Pattern(i, ChangedWord(i), 2);
  }
  CHECK(Stat(m, VmEvent::k_pgfault) == faults0);
  RequireMachineInvariants(m);

  // Reclaim compares checksums: the changed pages are written (to new
  // slots), the others dropped without I/O and keep their slots.
  const uint64_t out0 = Stat(m, VmEvent::k_pswpout);
  const uint64_t clean0 = Stat(m, VmEvent::k_swap_csum_clean);
  const uint64_t dirty0 = Stat(m, VmEvent::k_swap_csum_dirty);
  SwapOutAll(m);
  CHECK(Stat(m, VmEvent::k_swap_csum_dirty) - dirty0 == kPages / 2);
  CHECK(Stat(m, VmEvent::k_swap_csum_clean) - clean0 == kPages / 2);
  CHECK(Stat(m, VmEvent::k_pswpout) - out0 == kPages / 2);
  for (size_t i = 1; i < kPages; i += 2) {
    CHECK(test::SettledPte(*env->as, at(i)).swap_entry() == slots[i]);
  }
  RequireMachineInvariants(m);

  // Back once more: every byte as last written.
  for (size_t i = 0; i < kPages; i++) {
    INFO("page " << i);
    CHECK(PageAsWritten(p, i, i % 2 == 0));
  }
  RequireMachineInvariants(m);
}

TEST_CASE("Swap cache checksum: a write that went unseen survives a write-protect before reclaim",
          "[swap][csum]") {
  // mprotect (or reclaim's own write sampling) may write-protect a page
  // whose PTE never saw its write: the PTE is then read-only and clean, as
  // a true clean copy of the slot's is, and only the checksum tells.
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions(/*readahead=*/1));
  Machine& m = *env->machine;
  constexpr size_t kPages = 8;
  char* p = MapAnon(*env->as, kPages * kPageSize);
  const VirtAddr a = reinterpret_cast<VirtAddr>(p);
  for (size_t i = 0; i < kPages; i++) FillPage(p, i, 1);
  SwapOutAll(m);
  for (size_t i = 0; i < kPages; i++) REQUIRE(CheckPage(p, i, 1) == -1);
  for (size_t i = 0; i < kPages; i++) {
    reinterpret_cast<volatile uint64_t*>(p + i * kPageSize)[ChangedWord(i)] =
        Pattern(i, ChangedWord(i), 2);
  }
  REQUIRE(env->as->Mprotect(a, kPages * kPageSize, PROT_READ).ok());
  for (size_t i = 0; i < kPages; i++) {
    Pte pte = test::SettledPte(*env->as, a + i * kPageSize);
    CHECK_FALSE(pte.write());
    CHECK_FALSE(pte.dirty());
  }
  const uint64_t dirty0 = Stat(m, VmEvent::k_swap_csum_dirty);
  SwapOutAll(m);
  CHECK(Stat(m, VmEvent::k_swap_csum_dirty) - dirty0 == kPages);
  REQUIRE(env->as->Mprotect(a, kPages * kPageSize, PROT_READ | PROT_WRITE).ok());
  for (size_t i = 0; i < kPages; i++) {
    INFO("page " << i);
    CHECK(PageAsWritten(p, i, true));
  }
  RequireMachineInvariants(m);
}

TEST_CASE("Swap cache checksum: a slot another address space references comes back "
          "write-protected",
          "[swap][csum]") {
  // After AddressSpace::Fork both address spaces' swap PTEs name the slot:
  // the first to read it back must not write unseen what the other still
  // expects in the slot.
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions(/*readahead=*/1));
  Machine& m = *env->machine;
  char* p = MapAnon(*env->as, 2 * kPageSize);
  const VirtAddr a = reinterpret_cast<VirtAddr>(p);
  FillPage(p, 0, 1);
  FillPage(p, 1, 1);
  SwapOutAll(m);
  auto forked = env->as->Fork();
  REQUIRE(forked.ok());
  std::unique_ptr<AddressSpace> child = std::move(*forked);
  const VirtAddr ca = child->window().start + (a - env->as->window().start);
  REQUIRE(test::SettledPte(*child, ca).swap());
  const uint64_t writable0 = Stat(m, VmEvent::k_swap_cache_writable);
  REQUIRE(CheckPage(p, 0, 1) == -1);  // the parent reads it back
  CHECK(Stat(m, VmEvent::k_swap_cache_writable) == writable0);
  CHECK_FALSE(test::SettledPte(*env->as, a).write());
  FillPage(p, 0, 2);  // a fault, which copies or takes the page
  REQUIRE(CheckPage(p, 0, 2) == -1);
  RequireMachineInvariants(m);
  // The child still sees the bytes of the moment of the fork, and so does
  // its next swap-in of the page.
  CHECK(CheckPage(reinterpret_cast<const char*>(ca), 0, 1) == -1);
  SwapOutAll(m);
  CHECK(CheckPage(reinterpret_cast<const char*>(ca), 0, 1) == -1);
  CHECK(CheckPage(p, 0, 2) == -1);
  RequireMachineInvariants(m);
}

TEST_CASE("Swap: a write fault on a swapped page takes it exclusively, slot freed", "[swap]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions(/*readahead=*/1));
  Machine& m = *env->machine;
  SwapDevice& dev = *Reclaim(m).swap_device();
  char* p = MapAnon(*env->as, kPageSize);
  FillPage(p, 0, 3);
  SwapOutAll(m);
  REQUIRE(dev.nr_used() == 1);
  reinterpret_cast<volatile uint64_t*>(p)[1] = Pattern(0, 1, 3);  // a write, same value
  Pte pte = test::SettledPte(*env->as, reinterpret_cast<VirtAddr>(p));
  CHECK(pte.write());
  CHECK(dev.nr_used() == 0);
  REQUIRE(CheckPage(p, 0, 3) == -1);
  RequireMachineInvariants(m);
}

TEST_CASE("Swap: mlocked pages are never reclaimed", "[swap]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  Machine& m = *env->machine;
  const size_t locked_pages = kLimitPages / 4;
  char* locked = MapAnon(*env->as, locked_pages * kPageSize);
  for (size_t i = 0; i < locked_pages; i++) FillPage(locked, i, 1);
  REQUIRE(env->as->Mlock(reinterpret_cast<VirtAddr>(locked), locked_pages * kPageSize).ok());
  char* mlocked_map = MapAnon(*env->as, 64 * kPageSize, PROT_READ | PROT_WRITE, MAP_LOCKED);
  const size_t pages = 2 * kLimitPages;
  char* other = MapAnon(*env->as, pages * kPageSize);
  for (int round = 0; round < 2; round++) {
    for (size_t i = 0; i < pages; i++) FillPage(other, i, round);
  }
  CHECK(Stat(m, VmEvent::k_pswpout) > 0);
  for (size_t i = 0; i < locked_pages; i++) {
    INFO("locked page " << i);
    REQUIRE(test::SettledPte(*env->as, reinterpret_cast<VirtAddr>(locked + i * kPageSize)).present());
  }
  for (size_t i = 0; i < 64; i++) {
    REQUIRE(test::SettledPte(*env->as, reinterpret_cast<VirtAddr>(mlocked_map + i * kPageSize)).present());
  }
  // What is left is locked: ShrinkTo(0) cannot succeed; check the counts.
  CHECK(test::ShrinkSettled(m).code() == absl::StatusCode::kResourceExhausted);
  for (size_t i = 0; i < locked_pages; i++) REQUIRE(CheckPage(locked, i, 1) == -1);
  CHECK(m.mem_map().nr_used() == locked_pages + 64);
  // munlock makes them evictable again.
  REQUIRE(env->as->Munlock(reinterpret_cast<VirtAddr>(locked), locked_pages * kPageSize).ok());
  CHECK(test::ShrinkSettled(m, 64).ok());
  CHECK(m.mem_map().nr_used() == 64);
  for (size_t i = 0; i < locked_pages; i++) REQUIRE(CheckPage(locked, i, 1) == -1);
  RequireMachineInvariants(m);
}

TEST_CASE("Swap: reclaim of scattered pages gives each back to the host, and only those",
          "[swap]") {
  // Every other page is mlocked, so each reclaim batch holds single pages
  // apart: the host's zap of a batch (one vectored call in the userfaultfd
  // modes) takes many separate ranges.
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  Machine& m = *env->machine;
  const size_t pages = 512;
  char* base = MapAnon(*env->as, pages * kPageSize);
  for (size_t i = 0; i < pages; i++) FillPage(base, i, 3);
  for (size_t i = 0; i < pages; i += 2) {
    REQUIRE(env->as->Mlock(reinterpret_cast<VirtAddr>(base + i * kPageSize), kPageSize).ok());
  }
  CHECK(test::ShrinkSettled(m).code() == absl::StatusCode::kResourceExhausted);
  CHECK(m.mem_map().nr_used() == pages / 2);
  CHECK(Stat(m, VmEvent::k_pswpout) == pages / 2);
  std::vector<unsigned char> resident(pages);
  REQUIRE(mincore(base, pages * kPageSize, resident.data()) == 0);
  for (size_t i = 0; i < pages; i++) {
    INFO("page " << i);
    const Pte pte = test::SettledPte(*env->as, reinterpret_cast<VirtAddr>(base + i * kPageSize));
    CHECK(pte.present() == (i % 2 == 0));
    CHECK(pte.swap() == (i % 2 == 1));
    CHECK((resident[i] & 1) == (i % 2 == 0 ? 1 : 0));  // the host agrees
  }
  for (size_t i = 0; i < pages; i++) {
    if (CheckPage(base, i, 3) != -1) {
      INFO(Describe(base, i, 3, pages));
      REQUIRE(CheckPage(base, i, 3) == -1);
    }
  }
  CHECK(Stat(m, VmEvent::k_pswpin) > 0);
  RequireMachineInvariants(m);
}

TEST_CASE("Swap: zero-page PTEs cost no frame and are never swapped", "[swap]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  Machine& m = *env->machine;
  const size_t pages = 3 * kLimitPages;
  char* p = MapAnon(*env->as, pages * kPageSize);
  uint64_t sum = 0;
  for (size_t i = 0; i < pages; i++) sum += reinterpret_cast<volatile uint64_t*>(p + i * kPageSize)[0];
  CHECK(sum == 0);
  CHECK(env->as->nr_zero_ptes() == pages);
  CHECK(m.mem_map().nr_used() == 0);
  CHECK(Stat(m, VmEvent::k_pswpout) == 0);
  RequireMachineInvariants(m);
}

TEST_CASE("Swap: frames freed by reclaim read as zeros in another address space", "[swap]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions());
  Machine& m = *env->machine;
  const size_t pages = 2 * kLimitPages;
  char* p = MapAnon(*env->as, pages * kPageSize);
  for (size_t i = 0; i < pages; i++) FillPage(p, i, 9);
  auto as2 = m.CreateAddressSpace(uint64_t{1} << 30);
  REQUIRE(as2.ok());
  auto q = (*as2)->Mmap(0, pages * kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  REQUIRE(q.ok());
  auto* w = reinterpret_cast<volatile uint64_t*>(*q);
  size_t nonzero = 0;
  for (size_t i = 0; i < pages * kPageSize / 8; i += 61) {
    if (i % 512 == 0) w[i + 1] = 1;  // write faults take frames from the first space
    if (w[i] != 0) nonzero++;
  }
  CHECK(nonzero == 0);
  for (size_t i = 0; i < pages; i++) REQUIRE(CheckPage(p, i, 9) == -1);
  as2->reset();
  RequireMachineInvariants(m);
}

}  // namespace
}  // namespace emu

namespace emu {
namespace {

// Wraps the machine's swap I/O in a FaultInjectingSwapIo and returns it.
FaultInjectingSwapIo& InjectFaults(Machine& m) {
  SwapDevice& dev = *Reclaim(m).swap_device();
  auto wrapped = std::make_unique<FaultInjectingSwapIo>(dev.TakeIo());
  FaultInjectingSwapIo& ref = *wrapped;
  dev.ReplaceIo(std::move(wrapped));
  return ref;
}

TEST_CASE("Swap I/O errors: a failed write keeps the page resident and retires the slot",
          "[swap][inject]") {
  FaultMode mode = EMU_ALL_MODES();
  int error = GENERATE(EIO, ENOSPC, 0);  // 0: a short write
  INFO("mode " << FaultModeName(mode) << ", error " << error);
  auto env = MakeEnv(mode, LimitOptions());
  Machine& m = *env->machine;
  SwapDevice& dev = *Reclaim(m).swap_device();
  FaultInjectingSwapIo& io = InjectFaults(m);
  // Every write to the first 64 slots fails; the rest work.
  io.AddRule({SwapFaultRule::kWrite, 0, 64, error, -1});
  const size_t pages = 2 * kLimitPages;
  char* p = MapAnon(*env->as, pages * kPageSize);
  for (size_t i = 0; i < pages; i++) FillPage(p, i, 4);
  for (size_t i = 0; i < pages; i++) {
    if (CheckPage(p, i, 4) != -1) {
      INFO(Describe(p, i, 4, pages));
      REQUIRE(CheckPage(p, i, 4) == -1);
    }
  }
  CHECK(io.nr_injected() > 0);
  CHECK(Stat(m, VmEvent::k_swap_write_errors) > 0);
  CHECK(dev.nr_bad() > 0);
  CHECK(dev.nr_bad() <= 64);
  CHECK(Stat(m, VmEvent::k_pswpout) > 0);  // the other slots still work
  RequireMachineInvariants(m);
}

// The program's SIGBUS handler, installed before a machine so that emu's
// handler goes in front of it and forwards fatal faults to it.
struct CatchSigbus {
  static inline sigjmp_buf jb;
  static inline volatile VirtAddr addr = 0;
  struct sigaction old {};
  CatchSigbus() {
    struct sigaction sa {};
    sa.sa_sigaction = [](int, siginfo_t* si, void*) {
      addr = reinterpret_cast<VirtAddr>(si->si_addr);
      siglongjmp(jb, 1);
    };
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGBUS, &sa, &old);
  }
  ~CatchSigbus() { sigaction(SIGBUS, &old, nullptr); }
};

TEST_CASE("Swap I/O errors: a failed read gives SIGBUS to the faulting access", "[swap][inject]") {
  // Handler-thread mode: see the SIGBUS test below; FaultInPages covers it.
  FaultMode mode = GENERATE(FaultMode::kUffdSigbus, FaultMode::kSigsegv, FaultMode::kUffdThread);
  int error = GENERATE(EIO, 0);  // 0: a short read
  INFO("mode " << FaultModeName(mode) << ", error " << error);
  CatchSigbus catcher;
  auto env = MakeEnv(mode, LimitOptions(/*readahead=*/1));
  Machine& m = *env->machine;
  char* p = MapAnon(*env->as, 8 * kPageSize);
  for (size_t i = 0; i < 8; i++) FillPage(p, i, 5);
  SwapOutAll(m);
  const VirtAddr bad = reinterpret_cast<VirtAddr>(p + 3 * kPageSize);
  const uint64_t slot = test::SettledPte(*env->as, bad).swap_entry();
  FaultInjectingSwapIo& io = InjectFaults(m);
  io.AddRule({SwapFaultRule::kRead, slot, slot + 1, error, -1});
  // The kernel's view (a system call's buffer): EFAULT.
  CHECK(ToErrno(env->as->FaultInPages(bad, 8, false)) == EFAULT);
  if (mode != FaultMode::kUffdThread) {
    bool got_sigbus = false;
    if (sigsetjmp(CatchSigbus::jb, 1) == 0) {
      volatile uint64_t v = reinterpret_cast<volatile uint64_t*>(bad)[0];
      (void)v;
    } else {
      got_sigbus = true;
    }
    CHECK(got_sigbus);
    CHECK(CatchSigbus::addr == bad);
  }
  CHECK(Stat(m, VmEvent::k_swap_read_errors) > 0);
  CHECK(test::SettledPte(*env->as, bad).swap());  // still on swap: a later read may succeed
  io.ClearRules();
  for (size_t i = 0; i < 8; i++) REQUIRE(CheckPage(p, i, 5) == -1);
  RequireMachineInvariants(m);
}

TEST_CASE("Swap full or absent: populating past the limit fails with ENOMEM", "[swap][oom]") {
  FaultMode mode = EMU_ALL_MODES();
  bool no_swap = GENERATE(true, false);
  INFO("mode " << FaultModeName(mode) << (no_swap ? ", no swap" : ", 1 MiB swap"));
  MachineOptions o = LimitOptions();
  o.no_swap = no_swap;
  o.swap_bytes = uint64_t{1} << 20;
  auto env = MakeEnv(mode, o);
  Machine& m = *env->machine;
  const size_t len = 3 * kLimitPages * kPageSize;
  char* p = MapAnon(*env->as, len);
  absl::Status s = env->as->FaultInPages(reinterpret_cast<VirtAddr>(p), len, /*write=*/true);
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Stat(m, VmEvent::k_oom) > 0);
  CHECK(m.mem_map().peak_used() <= kLimitPages);
  RequireMachineInvariants(m);
}

// Handler-thread mode is left out: there the SIGBUS is queued to the
// faulting thread from another thread, and a program that survives it (this
// test) may race a second report of the same fault.
TEST_CASE("Swap full or absent: the access that needs a frame gets SIGBUS", "[swap][oom]") {
  FaultMode mode = GENERATE(FaultMode::kUffdSigbus, FaultMode::kSigsegv);
  bool no_swap = GENERATE(true, false);
  INFO("mode " << FaultModeName(mode) << (no_swap ? ", no swap" : ", 1 MiB swap"));
  MachineOptions o = LimitOptions();
  o.no_swap = no_swap;
  o.swap_bytes = uint64_t{1} << 20;
  CatchSigbus catcher;
  auto env = MakeEnv(mode, o);
  Machine& m = *env->machine;
  char* p = MapAnon(*env->as, 3 * kLimitPages * kPageSize);
  size_t touched = 0;
  if (sigsetjmp(CatchSigbus::jb, 1) == 0) {
    for (; touched < 3 * kLimitPages; touched++) p[touched * kPageSize] = 1;
  }
  INFO("touched " << touched << " pages; oom " << Stat(m, VmEvent::k_oom) << " pswpout "
                  << Stat(m, VmEvent::k_pswpout) << " used " << m.mem_map().nr_used());
  CHECK(touched >= kLimitPages / 2);
  CHECK(touched < 3 * kLimitPages);
  CHECK(CatchSigbus::addr == reinterpret_cast<VirtAddr>(p + touched * kPageSize));
  CHECK(Stat(m, VmEvent::k_oom) > 0);
  CHECK(m.mem_map().peak_used() <= kLimitPages);
  RequireMachineInvariants(m);
}

}  // namespace
}  // namespace emu

namespace emu {
namespace {

// The EFAULT contract (docs/DESIGN.md) for swapped-out pages: in handler-
// thread mode the kernel's own access is a fault like any other; in the
// SIGBUS and SIGSEGV modes it fails with EFAULT and consumes nothing, and
// FaultInPages() before the call makes it work.
TEST_CASE("Swap: system calls on swapped-out pages behave as on native memory", "[swap][syscall]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions(/*readahead=*/1));  // one page in at a time
  Machine& m = *env->machine;
  AddressSpace& as = *env->as;
  char* p = MapAnon(as, 4 * kPageSize);
  for (size_t i = 0; i < 4; i++) FillPage(p, i, 6);
  SwapOutAll(m);
  const bool transparent = mode == FaultMode::kUffdThread;
  auto swapped = [&](int i) { return as.GetPte(reinterpret_cast<VirtAddr>(p + i * kPageSize)).swap(); };
  REQUIRE(swapped(0));
  int fds[2];
  REQUIRE(pipe(fds) == 0);

  // write(2) from a swapped-out page.
  if (!transparent) {
    errno = 0;
    CHECK(write(fds[1], p, 64) == -1);
    CHECK(errno == EFAULT);
    REQUIRE(as.FaultInPages(reinterpret_cast<VirtAddr>(p), 64, /*write=*/false).ok());
  }
  REQUIRE(write(fds[1], p, 64) == 64);
  uint64_t got[8];
  REQUIRE(read(fds[0], got, 64) == 64);
  for (int w = 0; w < 8; w++) CHECK(got[w] == Pattern(0, w, 6));

  // read(2) into a swapped-out page: the write must land, none of the old
  // contents may come back over it.
  REQUIRE(swapped(1));
  uint64_t fresh[8];
  for (int w = 0; w < 8; w++) fresh[w] = ~Pattern(1, w, 6);
  REQUIRE(write(fds[1], fresh, 64) == 64);
  char* dst = p + kPageSize;
  if (!transparent) {
    errno = 0;
    CHECK(read(fds[0], dst, 64) == -1);
    CHECK(errno == EFAULT);  // and the pipe still holds the data
    REQUIRE(as.FaultInPages(reinterpret_cast<VirtAddr>(dst), 64, /*write=*/true).ok());
  }
  REQUIRE(read(fds[0], dst, 64) == 64);
  auto* w1 = reinterpret_cast<const uint64_t*>(dst);
  for (int w = 0; w < 8; w++) CHECK(w1[w] == fresh[w]);
  for (int w = 8; w < 512; w++) REQUIRE(w1[w] == Pattern(1, w, 6));

  // process_vm_readv/writev on this process.
  REQUIRE(swapped(2));
  REQUIRE(swapped(3));
  if (!transparent) {
    REQUIRE(as.FaultInPages(reinterpret_cast<VirtAddr>(p + 2 * kPageSize), 2 * kPageSize, true).ok());
  }
  uint64_t buf[16];
  iovec local{buf, sizeof(buf)}, remote{p + 2 * kPageSize, sizeof(buf)};
  REQUIRE(process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == sizeof(buf));
  for (int w = 0; w < 16; w++) CHECK(buf[w] == Pattern(2, w, 6));
  for (int w = 0; w < 16; w++) buf[w] = w;
  iovec remote3{p + 3 * kPageSize, sizeof(buf)};
  REQUIRE(process_vm_writev(getpid(), &local, 1, &remote3, 1, 0) == sizeof(buf));
  auto* w3 = reinterpret_cast<const uint64_t*>(p + 3 * kPageSize);
  for (int w = 0; w < 16; w++) CHECK(w3[w] == static_cast<uint64_t>(w));
  CHECK(w3[16] == Pattern(3, 16, 6));
  close(fds[0]);
  close(fds[1]);
  RequireMachineInvariants(m);
}

TEST_CASE("Memory limit options: bad values get clear errors", "[swap][options]") {
  MachineOptions o;
  o.mem_limit = uint64_t{1} << 20;  // below the 4 MiB minimum
  absl::Status s = o.Validate();
  CHECK(ToErrno(s) == EINVAL);
  CHECK_THAT(std::string(s.message()), Catch::Contains("at least 4 MiB"));
  o.mem_limit = kLimit;
  o.swap_readahead_pages = 0;
  CHECK(ToErrno(o.Validate()) == EINVAL);
  o.swap_readahead_pages = 8;
  for (int bad : {-1, 10001}) {
    o.swap_read_poll_us = bad;
    CHECK_THAT(std::string(o.Validate().message()), Catch::Contains("want 0 to 10000"));
    CHECK(ToErrno(o.Validate()) == EINVAL);
  }
  o.swap_read_poll_us = 0;
  CHECK(o.Validate().ok());
  o.reclaim_policy = "random";
  CHECK_THAT(std::string(o.Validate().message()), Catch::Contains("want lru or fifo"));
  CHECK(ToErrno(ParseSize("lots").status()) == EINVAL);
  CHECK(*ParseSize("256M") == uint64_t{256} << 20);

  // A swap directory that does not exist, or cannot be written.
  test::RequireMode(FaultMode::kSigsegv);
  MachineOptions bad = LimitOptions();
  bad.fault_mode = FaultMode::kSigsegv;
  bad.arena_bytes = uint64_t{1} << 30;
  bad.swap_dir = "/nonexistent/emu-swap";
  auto m = CreateMachine(bad);
  REQUIRE_FALSE(m.ok());
  CHECK_THAT(std::string(m.status().message()), Catch::Contains("/nonexistent/emu-swap"));
  bad.swap_dir = "";
  bad.swap_path = "/proc/emu-swap-file";
  m = CreateMachine(bad);
  REQUIRE_FALSE(m.ok());
  CHECK_THAT(std::string(m.status().message()), Catch::Contains("/proc/emu-swap-file"));
}

}  // namespace
}  // namespace emu

namespace emu {
namespace {

// Random mm operations under memory pressure against a model of every
// page's contents; the swap_map must equal the swap PTEs after each burst.
TEST_CASE("Swap: random sequences keep data and swap_map counts exact", "[swap][random]") {
  FaultMode mode = EMU_ALL_MODES();
  uint64_t seed = 1;
  if (const char* s = std::getenv("EMU_TEST_SEED"); s != nullptr && *s) seed = std::strtoull(s, nullptr, 0);
  INFO("mode " << FaultModeName(mode) << ", seed " << seed << " (EMU_TEST_SEED)");
  auto env = MakeEnv(mode, LimitOptions(GENERATE(1, 8)));
  Machine& m = *env->machine;
  AddressSpace& as = *env->as;
  const size_t pages = 3 * kLimitPages;
  char* base = MapAnon(as, pages * kPageSize);
  const VirtAddr b = reinterpret_cast<VirtAddr>(base);
  // Model: -2 unmapped, -1 zero, else the round last written.
  std::vector<int64_t> round(pages, -1);
  std::vector<bool> writable(pages, true);
  std::vector<bool> locked(pages, false);
  std::mt19937_64 rng(seed);
  auto range = [&](size_t max_len) {
    size_t start = rng() % pages;
    size_t len = 1 + rng() % max_len;
    return std::pair<size_t, size_t>{start, std::min(pages, start + len)};
  };
  for (int step = 0; step < 1500; step++) {
    int op = static_cast<int>(rng() % 100);
    if (op < 45) {  // write a run of pages
      auto [s, e] = range(64);
      for (size_t p = s; p < e; p++) {
        if (round[p] == -2 || !writable[p]) continue;
        FillPage(base, p, static_cast<uint64_t>(++round[p]));
      }
    } else if (op < 80) {  // read and verify a run
      auto [s, e] = range(64);
      for (size_t p = s; p < e; p++) {
        if (round[p] == -2) continue;
        if (round[p] == -1) {
          auto* w = reinterpret_cast<volatile uint64_t*>(base + p * kPageSize);
          INFO("step " << step << " page " << p << " should be zero");
          REQUIRE(w[0] == 0);
          REQUIRE(w[511] == 0);
        } else if (CheckPage(base, p, static_cast<uint64_t>(round[p])) != -1) {
          INFO("step " << step << ": " << Describe(base, p, static_cast<uint64_t>(round[p]), pages));
          REQUIRE(CheckPage(base, p, static_cast<uint64_t>(round[p])) == -1);
        }
      }
    } else if (op < 85) {  // MADV_DONTNEED (fails on locked ranges; then nothing changes)
      auto [s, e] = range(256);
      (void)as.Madvise(b + s * kPageSize, (e - s) * kPageSize, MADV_DONTNEED);
      // Mapped parts are zapped across holes (ENOMEM at the end); a locked
      // VMA stops it with EINVAL.
      for (size_t p = s; p < e && !(round[p] != -2 && locked[p]); p++) {
        if (round[p] != -2) round[p] = -1;
      }
    } else if (op < 89) {  // munmap, then map fresh memory there again
      auto [s, e] = range(128);
      REQUIRE(as.Munmap(b + s * kPageSize, (e - s) * kPageSize).ok());
      for (size_t p = s; p < e; p++) {
        round[p] = -2;
        locked[p] = false;
      }
      if (rng() % 2) {
        auto r = as.Mmap(b + s * kPageSize, (e - s) * kPageSize, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
        REQUIRE(r.ok());
        for (size_t p = s; p < e; p++) {
          round[p] = -1;
          writable[p] = true;
          locked[p] = false;
        }
      }
    } else if (op < 93) {  // mprotect read-only or read-write
      auto [s, e] = range(256);
      bool rw = rng() % 2;
      absl::Status st = as.Mprotect(b + s * kPageSize, (e - s) * kPageSize,
                                    rw ? PROT_READ | PROT_WRITE : PROT_READ);
      // Stops at the first hole (ENOMEM): update only what it covered.
      for (size_t p = s; p < e && round[p] != -2; p++) writable[p] = rw;
      (void)st;
    } else if (op < 96) {  // mlock / munlock a small range
      auto [s, e] = range(32);
      bool lock = rng() % 2;
      if (lock) {
        (void)as.Mlock(b + s * kPageSize, (e - s) * kPageSize);
      } else {
        (void)as.Munlock(b + s * kPageSize, (e - s) * kPageSize);
      }
      for (size_t p = s; p < e && round[p] != -2; p++) locked[p] = lock;  // stops at a hole
    } else {  // reclaim hard
      (void)m.reclaim()->ShrinkTo(rng() % kLimitPages);
    }
    if (step % 100 == 99) {
      INFO("step " << step);
      RequireMachineInvariants(m);
    }
  }
  CHECK(Stat(m, VmEvent::k_pswpout) > 0);
  CHECK(Stat(m, VmEvent::k_pswpin) > 0);
  CHECK(m.mem_map().peak_used() <= kLimitPages);
  RequireMachineInvariants(m);
}

}  // namespace
}  // namespace emu

namespace emu {
namespace {

// Faults that swap pages in while reclaim unmaps their neighbours (and the
// pages just read back) over and over: a fault may see a swap PTE the
// instant it is published, while reclaim is still freeing the frame.
TEST_CASE("Swap: swap-ins racing a reclaimer that keeps unmapping", "[swap][race]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode, LimitOptions(GENERATE(1, 8)));
  Machine& m = *env->machine;
  const size_t pages = kLimitPages / 2;
  char* base = MapAnon(*env->as, pages * kPageSize);
  for (size_t p = 0; p < pages; p++) FillPage(base, p, 1);
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::thread reclaimer([&] {
    while (!stop.load()) (void)m.reclaim()->ShrinkTo(0);
  });
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; t++) {
    readers.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      // At least 3000 reads, and on until reclaim has dropped a page that
      // was read back (the race this test is about), for at most 20 s: on a
      // loaded machine the reclaimer may get little CPU.
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      for (int i = 0; i < 3000 || (Stat(m, VmEvent::k_pgsteal_clean) == 0 &&
                                   std::chrono::steady_clock::now() < deadline);
           i++) {
        size_t p = rng() % pages;
        if (CheckPage(base, p, 1) != -1) bad++;
      }
    });
  }
  for (auto& r : readers) r.join();
  stop.store(true);
  reclaimer.join();
  CHECK(bad.load() == 0);
  CHECK(Stat(m, VmEvent::k_pgsteal_clean) > 0);
  RequireMachineInvariants(m);
}

}  // namespace
}  // namespace emu
