// Many threads faulting concurrently, in one address space and across several,
// while another thread maps and unmaps: every byte read back is the byte
// written, and the invariants hold afterwards.
#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include "test_util.h"

namespace emu {
namespace {

using test::MakeEnv;
using test::MapAnon;
using test::RequireInvariants;

uint64_t Seed() {
  const char* s = std::getenv("EMU_TEST_SEED");
  return s ? std::strtoull(s, nullptr, 0) : 20261122;
}

uint8_t Value(uint64_t page, int round) { return static_cast<uint8_t>(page * 31 + round * 7) | 1; }

TEST_CASE("Concurrent faults on shared pages: racing readers and writers never lose a write",
          "[stress]") {
  FaultMode mode = EMU_ALL_MODES();
  uint64_t seed = Seed();
  INFO("mode " << FaultModeName(mode) << " seed " << seed);
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  constexpr int kThreads = 4;
  constexpr uint64_t kPages = 4096;
  char* shared = MapAnon(as, kPages * kPageSize);
  // Each thread owns the bytes at offset t of every page, so all threads fault
  // the same pages at the same time while their data stays checkable.
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; t++) {
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      for (int round = 0; round < 3; round++) {
        for (uint64_t i = 0; i < kPages; i++) {
          uint64_t page = rng() % kPages;
          volatile char* b = shared + page * kPageSize + t;
          if (rng() % 3 == 0) {
            (void)*b;  // read fault: zero page, or a racing write's page
          } else {
            *b = static_cast<char>(Value(page, 0));
          }
        }
      }
      for (uint64_t page = 0; page < kPages; page++) {
        uint8_t v = static_cast<uint8_t>(shared[page * kPageSize + t]);
        if (v != 0 && v != Value(page, 0)) bad++;
      }
    });
  }
  for (auto& th : ts) th.join();
  CHECK(bad.load() == 0);
  RequireInvariants(as);
}

TEST_CASE("Threads fault in several address spaces while another maps and unmaps", "[stress]") {
  FaultMode mode = EMU_ALL_MODES();
  uint64_t seed = Seed();
  INFO("mode " << FaultModeName(mode) << " seed " << seed);
  auto env = MakeEnv(mode);
  auto second = env->machine->CreateAddressSpace(uint64_t{1} << 30);
  REQUIRE(second.ok());
  AddressSpace* spaces[2] = {env->as.get(), second->get()};
  constexpr uint64_t kPages = 2048;
  char* regions[4];
  for (int t = 0; t < 4; t++) regions[t] = MapAnon(*spaces[t % 2], kPages * kPageSize);
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::thread churn([&] {
    std::mt19937_64 rng(seed);
    while (!stop.load()) {
      AddressSpace& as = *spaces[rng() % 2];
      size_t len = (1 + rng() % 32) * kPageSize;
      auto p = as.Mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      if (!p.ok()) {
        bad++;
        break;
      }
      *reinterpret_cast<volatile char*>(*p) = 1;
      if (!as.Mprotect(*p, kPageSize, PROT_READ).ok()) bad++;
      if (!as.Munmap(*p, len).ok()) bad++;
    }
  });
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; t++) {
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(seed * 7 + t);
      for (int round = 1; round <= 3; round++) {
        for (uint64_t i = 0; i < kPages; i++) {
          uint64_t page = rng() % kPages;
          regions[t][page * kPageSize + round] = static_cast<char>(Value(page, round));
        }
      }
      std::mt19937_64 check(seed * 7 + t);
      std::vector<uint8_t> want(kPages * 4, 0);
      for (int round = 1; round <= 3; round++) {
        for (uint64_t i = 0; i < kPages; i++) {
          uint64_t page = check() % kPages;
          want[page * 4 + round] = Value(page, round);
        }
      }
      for (uint64_t page = 0; page < kPages; page++) {
        for (int round = 1; round <= 3; round++) {
          if (static_cast<uint8_t>(regions[t][page * kPageSize + round]) != want[page * 4 + round]) {
            bad++;
          }
        }
      }
    });
  }
  for (auto& th : ts) th.join();
  stop = true;
  churn.join();
  CHECK(bad.load() == 0);
  RequireInvariants(*spaces[0]);
  RequireInvariants(*spaces[1]);
  second->reset();
}

TEST_CASE("Faults racing MADV_DONTNEED on the same pages see either the old data or zeros",
          "[stress]") {
  FaultMode mode = EMU_ALL_MODES();
  uint64_t seed = Seed();
  INFO("mode " << FaultModeName(mode) << " seed " << seed);
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  constexpr uint64_t kPages = 1024;
  constexpr int kWriters = 3;
  char* p = MapAnon(as, kPages * kPageSize);
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::thread zapper([&] {
    std::mt19937_64 rng(seed);
    while (!stop.load()) {
      uint64_t first = rng() % kPages;
      uint64_t n = 1 + rng() % std::min<uint64_t>(32, kPages - first);
      if (!as.Madvise(reinterpret_cast<VirtAddr>(p + first * kPageSize), n * kPageSize,
                      MADV_DONTNEED).ok()) {
        bad++;
      }
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> ts;
  for (int t = 0; t < kWriters; t++) {
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(seed * 13 + t);
      for (int i = 0; i < 20000; i++) {
        uint64_t page = rng() % kPages;
        volatile char* b = p + page * kPageSize + t;
        if (rng() % 2) {
          *b = static_cast<char>(Value(page, 0));
        } else {
          uint8_t v = static_cast<uint8_t>(*b);
          if (v != 0 && v != Value(page, 0)) bad++;
        }
      }
    });
  }
  for (auto& th : ts) th.join();
  stop = true;
  zapper.join();
  for (uint64_t page = 0; page < kPages; page++) {
    for (int t = 0; t < kWriters; t++) {
      uint8_t v = static_cast<uint8_t>(p[page * kPageSize + t]);
      if (v != 0 && v != Value(page, 0)) bad++;
    }
  }
  CHECK(bad.load() == 0);
  RequireInvariants(as);
}

}  // namespace
}  // namespace emu
