// The memory limit: reclaim to a swap device and back, with no byte lost.
//
// Every test runs a machine with a small limit (MachineOptions::mem_limit)
// and touches more memory than it, so pages really travel to the swap file
// and back; patterns are verified after each round trip, and the swap_map is
// checked against the swap PTEs that exist (Machine::CheckInvariants).
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

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
  absl::Status s = m.CheckInvariants();
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
