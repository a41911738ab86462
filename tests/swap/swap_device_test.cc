// The swap device: the slot allocator and swap_map against a reference model,
// the io_uring backend (threads, O_DIRECT and buffered, signal context), Open's
// errors, and FaultInjectingSwapIo.
#include "swap/swap_device.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "emu/status.h"
#include "emu/types.h"
#include "swap/swap_io.h"

namespace emu {
namespace {

constexpr int kSkip = 77;  // CTest SKIP_RETURN_CODE
constexpr uint64_t kMiB = uint64_t{1} << 20;

uint64_t TestSeed() {
  const char* s = std::getenv("EMU_TEST_SEED");
  return s != nullptr ? std::strtoull(s, nullptr, 0) : 20240611;
}

// Opens a device; exits 77 (skipped, never a pass) where io_uring is disabled.
std::unique_ptr<SwapDevice> OpenOrSkip(const SwapOptions& o) {
  auto d = SwapDevice::Open(o);
  if (!d.ok()) {
    const int err = ToErrno(d.status());
    if ((err == ENOSYS || err == EPERM) &&
        d.status().message().find("io_uring") != std::string_view::npos) {
      std::fprintf(stderr, "SKIP: io_uring unavailable: %s\n", d.status().ToString().c_str());
      std::exit(kSkip);
    }
  }
  INFO("Open: " << d.status().ToString());
  REQUIRE(d.ok());
  return std::move(*d);
}

std::unique_ptr<SwapDevice> OpenSize(uint64_t bytes, int read_poll_us = 0) {
  SwapOptions o;
  o.size_bytes = bytes;
  o.read_poll_us = read_poll_us;
  return OpenOrSkip(o);
}

void RequireInvariants(const SwapDevice& d) {
  absl::Status s = d.CheckInvariants();
  INFO(s.ToString());
  REQUIRE(s.ok());
}

// Page-aligned buffers of whole pages.
struct PageBuf {
  explicit PageBuf(size_t nr_pages)
      : p(static_cast<char*>(std::aligned_alloc(kPageSize, nr_pages * kPageSize))) {
    std::memset(p, 0, nr_pages * kPageSize);
  }
  ~PageBuf() { std::free(p); }
  PageBuf(const PageBuf&) = delete;
  PageBuf& operator=(const PageBuf&) = delete;
  char* p;
};

uint64_t Word(uint64_t slot, uint64_t w, uint64_t tag) {
  return (slot * 0x9E3779B97F4A7C15ull) ^ (w * 0xBF58476D1CE4E5B9ull) ^ tag;
}
void Fill(void* buf, uint64_t slot, uint32_t nr_pages, uint64_t tag) {
  auto* words = static_cast<uint64_t*>(buf);
  constexpr uint64_t kWords = kPageSize / 8;
  for (uint64_t i = 0; i < nr_pages * kWords; i++)
    words[i] = Word(slot + i / kWords, i % kWords, tag);
}
// Number of pages of `buf` that do not hold the pattern.
uint32_t BadPages(const void* buf, uint64_t slot, uint32_t nr_pages, uint64_t tag) {
  auto* words = static_cast<const uint64_t*>(buf);
  constexpr uint64_t kWords = kPageSize / 8;
  uint32_t bad = 0;
  for (uint32_t p = 0; p < nr_pages; p++) {
    for (uint64_t w = 0; w < kWords; w++) {
      if (words[p * kWords + w] != Word(slot + p, w, tag)) {
        bad++;
        break;
      }
    }
  }
  return bad;
}

int64_t Full(uint32_t nr_pages) { return int64_t{nr_pages} * static_cast<int64_t>(kPageSize); }

// ---- The allocator and swap_map ----

TEST_CASE("AllocRun: successive runs are contiguous and ascending, and a full device gives 0",
          "[swap][alloc]") {
  auto d = OpenSize(4 * kMiB);  // 1024 slots, 4 clusters
  REQUIRE(d->nr_slots() == 1024);
  const uint32_t n = GENERATE(1u, 7u, 100u, 256u);
  INFO("run length " << n);
  uint64_t expect = 0, total = 0, first = 0;
  for (;;) {
    const uint32_t got = d->AllocRun(n, &first);
    if (got == 0) break;
    REQUIRE(first == expect);  // adjacent to the previous run, across clusters too
    REQUIRE(got == std::min<uint64_t>(n, d->nr_slots() - first));
    expect = first + got;
    total += got;
  }
  REQUIRE(total == d->nr_slots());
  REQUIRE(d->nr_free() == 0);
  REQUIRE(d->nr_used() == d->nr_slots());
  REQUIRE(d->AllocRun(1, &first) == 0);
  RequireInvariants(*d);
}

TEST_CASE(
    "AllocRun: a new slot holds only the cache flag, and Duplicate and SetCache need a used slot",
    "[swap][alloc]") {
  auto d = OpenSize(kMiB);
  uint64_t first = 0;
  REQUIRE(d->AllocRun(4, &first) == 4);
  for (uint64_t s = first; s < first + 4; s++) {
    REQUIRE(d->HasCache(s));
    REQUIRE(d->Count(s) == 0);
  }
  REQUIRE(d->Duplicate(first));
  REQUIRE(d->Duplicate(first));
  REQUIRE(d->Count(first) == 2);
  REQUIRE(d->HasCache(first));
  // A free slot takes neither a reference nor the cache flag.
  const uint64_t free_slot = first + 10;
  REQUIRE_FALSE(d->Duplicate(free_slot));
  REQUIRE_FALSE(d->SetCache(free_slot));
  REQUIRE(d->Count(free_slot) == 0);
  REQUIRE_FALSE(d->HasCache(free_slot));
  // SetCache on a slot referenced only by PTEs.
  d->ClearCache(first);
  REQUIRE_FALSE(d->HasCache(first));
  REQUIRE(d->SetCache(first));
  REQUIRE(d->HasCache(first));
  REQUIRE_FALSE(d->SetCache(first));  // already set: false (swapcache_prepare's -EEXIST)
  int seen = 0;
  d->ForEachUsed([&](uint64_t slot, int count, bool cache) {
    seen++;
    REQUIRE(slot < first + 4);
    REQUIRE(cache);
    REQUIRE(count == (slot == first ? 2 : 0));
  });
  REQUIRE(seen == 4);
  RequireInvariants(*d);
}

TEST_CASE("Free and ClearCache free a slot only when both the count and the cache flag are gone",
          "[swap][alloc]") {
  auto d = OpenSize(kMiB);
  uint64_t s = 0;
  REQUIRE(d->AllocRun(1, &s) == 1);
  REQUIRE(d->nr_free() == d->nr_slots() - 1);
  SECTION("references dropped first, then the cache flag") {
    REQUIRE(d->Duplicate(s));
    REQUIRE(d->Duplicate(s));
    REQUIRE(d->Free(s) == 1);
    REQUIRE(d->Free(s) == 0);
    REQUIRE(d->HasCache(s));  // still held by the swap cache
    REQUIRE(d->nr_used() == 1);
    d->ClearCache(s);
  }
  SECTION("the cache flag dropped first, then the references") {
    REQUIRE(d->Duplicate(s));
    d->ClearCache(s);
    REQUIRE(d->Count(s) == 1);
    REQUIRE(d->nr_used() == 1);
    REQUIRE(d->Free(s) == 0);
  }
  REQUIRE(d->nr_used() == 0);
  REQUIRE(d->nr_free() == d->nr_slots());
  REQUIRE_FALSE(d->Duplicate(s));
  RequireInvariants(*d);
}

TEST_CASE("Retire: a retired slot is neither free nor used and is never allocated again",
          "[swap][alloc]") {
  auto d = OpenSize(kMiB);  // 256 slots, one cluster
  uint64_t first = 0;
  REQUIRE(d->AllocRun(8, &first) == 8);
  d->Retire(first + 3);   // a used slot (the write failed)
  d->Retire(first + 20);  // a free slot
  d->Retire(first + 20);  // twice: no change
  REQUIRE(d->nr_bad() == 2);
  REQUIRE(d->nr_used() == 7);
  REQUIRE(d->nr_free() == d->nr_slots() - 9);
  REQUIRE(d->Count(first + 3) == 0);
  REQUIRE_FALSE(d->HasCache(first + 3));
  REQUIRE_FALSE(d->Duplicate(first + 3));
  REQUIRE_FALSE(d->SetCache(first + 3));
  d->ClearCache(first + 3);  // on a retired slot: nothing
  RequireInvariants(*d);
  // Free everything and allocate the whole device again, several times over.
  for (uint64_t s = first; s < first + 8; s++) {
    if (s != first + 3) d->ClearCache(s);
  }
  for (int round = 0; round < 3; round++) {
    std::vector<uint64_t> got;
    uint64_t f = 0;
    while (uint32_t n = d->AllocRun(13, &f)) {
      for (uint64_t s = f; s < f + n; s++) {
        REQUIRE(s != first + 3);
        REQUIRE(s != first + 20);
        got.push_back(s);
      }
    }
    REQUIRE(got.size() == d->nr_slots() - 2);
    RequireInvariants(*d);
    for (uint64_t s : got) d->ClearCache(s);
  }
  REQUIRE(d->nr_bad() == 2);
}

TEST_CASE("AllocRun: with no wholly free cluster it hands out the holes of partly used ones",
          "[swap][alloc]") {
  auto d = OpenSize(2 * kMiB);  // 512 slots, 2 clusters
  uint64_t f = 0;
  while (d->AllocRun(256, &f) != 0) {
  }
  // Holes: every 5th slot, and a run of 10 in the second cluster.
  std::vector<bool> hole(d->nr_slots());
  for (uint64_t s = 0; s < d->nr_slots(); s += 5) hole[s] = true;
  for (uint64_t s = 300; s < 310; s++) hole[s] = true;
  uint64_t nr_holes = 0;
  for (uint64_t s = 0; s < d->nr_slots(); s++) {
    if (hole[s]) {
      d->ClearCache(s);
      nr_holes++;
    }
  }
  RequireInvariants(*d);
  uint64_t taken = 0;
  while (uint32_t n = d->AllocRun(8, &f)) {
    for (uint64_t s = f; s < f + n; s++) {
      REQUIRE(hole[s]);
      hole[s] = false;
    }
    taken += n;
  }
  REQUIRE(taken == nr_holes);
  REQUIRE(d->nr_free() == 0);
  RequireInvariants(*d);
}

// The reference model: per slot, PTE references, the cache flag, retired.
struct ModelSlot {
  int count = 0;
  bool cache = false;
  bool bad = false;
  bool used() const { return !bad && (count > 0 || cache); }
};

// Allocates every slot this process can get (runs of up to a cluster);
// returns them.
std::vector<uint64_t> AllocAll(SwapDevice& d) {
  std::vector<uint64_t> got;
  uint64_t first;
  while (uint32_t n = d.AllocRun(kSwapClusterPages, &first)) {
    for (uint32_t i = 0; i < n; i++) got.push_back(first + i);
  }
  return got;
}

TEST_CASE("Sharing: a forked process's slots are never handed out by the other, and come back "
          "when it is gone",
          "[swap][fork]") {
  auto d = OpenSize(4 * kMiB);  // 1024 slots
  const uint64_t nslots = d->nr_slots();
  // The parent holds 300 slots: swap PTE references, the cache flag gone.
  std::vector<uint64_t> mine;
  uint64_t first;
  while (mine.size() < 300) {
    uint32_t n = d->AllocRun(static_cast<uint32_t>(std::min<size_t>(64, 300 - mine.size())), &first);
    REQUIRE(n > 0);
    for (uint32_t i = 0; i < n; i++) {
      REQUIRE(d->Duplicate(first + i));
      d->ClearCache(first + i);
      mine.push_back(first + i);
    }
  }
  const int idx = d->ForkReserve();
  REQUIRE(idx > 0);
  int ready[2], go[2];
  REQUIRE(pipe(ready) == 0);
  REQUIRE(pipe(go) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // The child: no Catch2 here, exit codes say what failed.
    if (!d->ForkAttach(idx).ok()) _exit(10);
    // Its page tables name every other slot of the parent's, one of them
    // twice; the recount makes that the child's swap_map and holds.
    d->RecountBegin();
    for (size_t i = 0; i < mine.size(); i += 2) d->RecountRef(mine[i]);
    d->RecountRef(mine[0]);
    d->RecountEnd();
    if (d->Count(mine[0]) != 2 || d->recount_unheld() != 0) _exit(18);
    for (size_t i = 1; i < mine.size(); i += 2) {
      if (d->Held(mine[i]) || d->Count(mine[i]) != 0) _exit(19);
    }
    if (!d->CheckInvariants().ok()) _exit(20);
    char c = 1;
    if (write(ready[1], &c, 1) != 1) _exit(11);
    for (size_t i = 2; i < mine.size(); i += 2) {
      if (!d->Held(mine[i]) || d->Count(mine[i]) != 1) _exit(12);
    }
    // Everything the parent does not hold, and nothing it does.
    std::vector<uint64_t> got = AllocAll(*d);
    if (got.size() != nslots - mine.size()) _exit(13);
    for (uint64_t s : got) {
      if (std::find(mine.begin(), mine.end(), s) != mine.end()) _exit(14);
    }
    if (!d->CheckInvariants().ok()) _exit(15);
    c = 2;
    if (write(ready[1], &c, 1) != 1) _exit(16);
    if (read(go[0], &c, 1) != 1) _exit(17);
    _exit(0);
  }
  char c = 0;
  REQUIRE(read(ready[0], &c, 1) == 1);
  REQUIRE(c == 1);
  d->ForkDone(idx, true);
  REQUIRE(read(ready[0], &c, 1) == 1);
  REQUIRE(c == 2);
  CHECK(d->nr_sharers() == 2);
  // The parent lets its references go: its own swap_map frees them, but the
  // child still holds those its recount kept, and everything else too; the
  // ones the child gave up are free for anyone.
  for (uint64_t s : mine) CHECK(d->Free(s) == 0);
  for (size_t i = 0; i < mine.size(); i++) CHECK(d->HeldByAnyone(mine[i]) == (i % 2 == 0));
  CHECK(d->nr_free() == nslots);
  std::vector<uint64_t> back = AllocAll(*d);
  CHECK(back.size() == mine.size() / 2);
  for (uint64_t s : back) d->ClearCache(s);
  CHECK(d->ReapGone() == 0);  // the child is alive
  // The child exits: its share comes back.
  REQUIRE(write(go[1], &c, 1) == 1);
  int st;
  REQUIRE(waitpid(pid, &st, 0) == pid);
  INFO("child status " << st);
  REQUIRE(WIFEXITED(st));
  REQUIRE(WEXITSTATUS(st) == 0);
  CHECK(d->ReapGone() == 1);
  CHECK(d->nr_sharers() == 1);
  CHECK(AllocAll(*d).size() == nslots);
  CHECK(d->CheckInvariants().ok());
  for (int fd : {ready[0], ready[1], go[0], go[1]}) close(fd);
}

TEST_CASE("Sharing: a reservation the child never took is dropped with its bits", "[swap][fork]") {
  auto d = OpenSize(1 * kMiB);
  std::vector<uint64_t> got = AllocAll(*d);
  REQUIRE(got.size() == d->nr_slots());
  const int idx = d->ForkReserve();
  REQUIRE(idx > 0);
  for (uint64_t s : got) d->ClearCache(s);  // all free in our swap_map again
  // Still reserved for the child: not ours to hand out.
  CHECK(AllocAll(*d).empty());
  d->ForkDone(idx, false);
  CHECK(d->nr_sharers() == 1);
  std::vector<uint64_t> again = AllocAll(*d);
  CHECK(again.size() == d->nr_slots());
  CHECK(d->CheckInvariants().ok());
}

TEST_CASE("Sharing: at most kMaxSharers live processes, then ForkReserve says no", "[swap][fork]") {
  auto d = OpenSize(1 * kMiB);
  std::vector<int> idx;
  for (int i = 1; i < SwapDevice::kMaxSharers; i++) {
    int k = d->ForkReserve();
    REQUIRE(k > 0);
    idx.push_back(k);
  }
  // Reservations of a live process (this one) are not reaped.
  CHECK(d->ForkReserve() == -1);
  for (int k : idx) d->ForkDone(k, false);
  CHECK(d->nr_sharers() == 1);
}

TEST_CASE("swap_map: a random sequence of alloc/dup/free/clear/retire matches a reference model",
          "[swap][alloc][random]") {
  const uint64_t seed = TestSeed();
  INFO("seed " << seed << " (EMU_TEST_SEED)");
  std::mt19937_64 rng(seed);
  // 556 slots: two whole clusters and a partial one.
  auto d = OpenSize(kMiB + 300 * kPageSize);
  REQUIRE(d->nr_slots() == 556);
  std::vector<ModelSlot> m(d->nr_slots());
  std::vector<uint64_t> used;  // candidates, may hold stale entries
  auto pick = [&]() -> uint64_t {
    if (used.empty() || rng() % 8 == 0) return rng() % d->nr_slots();
    return used[rng() % used.size()];
  };
  for (int step = 0; step < 20000; step++) {
    INFO("step " << step);
    const int op = static_cast<int>(rng() % 100);
    if (op < 25) {
      uint64_t first = 0;
      const uint32_t n = 1 + static_cast<uint32_t>(rng() % 64);
      const uint32_t got = d->AllocRun(n, &first);
      uint64_t nr_model_free = 0;
      for (auto& x : m) nr_model_free += !x.used() && !x.bad;
      if (nr_model_free == 0) REQUIRE(got == 0);
      if (nr_model_free > 0) REQUIRE(got >= 1);
      REQUIRE(got <= n);
      for (uint64_t s = first; s < first + got; s++) {
        REQUIRE_FALSE(m[s].used());
        REQUIRE_FALSE(m[s].bad);
        m[s].cache = true;
        used.push_back(s);
      }
    } else if (op < 50) {
      const uint64_t s = pick();
      const bool ok = m[s].used() && m[s].count < kSwapMapMax;
      REQUIRE(d->Duplicate(s) == ok);
      if (ok) m[s].count++;
    } else if (op < 75) {
      const uint64_t s = pick();
      if (m[s].used() && m[s].count > 0) {
        REQUIRE(d->Free(s) == --m[s].count);
      }
    } else if (op < 90) {
      const uint64_t s = pick();
      if (m[s].bad || (m[s].used() && m[s].cache)) {
        d->ClearCache(s);
        m[s].cache = false;
      } else if (m[s].used()) {
        REQUIRE(d->SetCache(s));
        m[s].cache = true;
      } else {
        REQUIRE_FALSE(d->SetCache(s));
      }
    } else if (op < 92) {
      const uint64_t s = pick();
      d->Retire(s);
      m[s] = ModelSlot{0, false, true};
    } else {
      const uint64_t s = pick();
      REQUIRE(d->Count(s) == (m[s].bad ? 0 : m[s].count));
      REQUIRE(d->HasCache(s) == (!m[s].bad && m[s].cache));
    }
    if (used.size() > 4096) {
      std::erase_if(used, [&](uint64_t s) { return !m[s].used(); });
    }
    uint64_t nfree = 0, nused = 0, nbad = 0;
    for (auto& x : m) {
      nbad += x.bad;
      nused += x.used();
      nfree += !x.bad && !x.used();
    }
    REQUIRE(d->nr_free() == nfree);
    REQUIRE(d->nr_used() == nused);
    REQUIRE(d->nr_bad() == nbad);
    if (step % 16 == 0) RequireInvariants(*d);
  }
  uint64_t seen = 0;
  d->ForEachUsed([&](uint64_t s, int count, bool cache) {
    seen++;
    REQUIRE(m[s].used());
    REQUIRE(count == m[s].count);
    REQUIRE(cache == m[s].cache);
  });
  REQUIRE(seen == d->nr_used());
  RequireInvariants(*d);
}

// ---- I/O through the io_uring backend ----

std::string FsName(const std::string& dir) {
  struct statfs sf {};
  if (statfs(dir.c_str(), &sf) != 0) return "unknown";
  if (sf.f_type == EXT4_SUPER_MAGIC) return "ext4";
  if (sf.f_type == TMPFS_MAGIC) return "tmpfs";
  return "other";
}

std::string DefaultDir() {
  const char* t = std::getenv("TMPDIR");
  return (t != nullptr && t[0] != '\0') ? t : "/var/tmp";
}

// Writes a pattern to `nr_slots` slots from `nr_threads` threads with
// multi-page ops in batches, reads every run back from another thread, and
// checks it. Returns the number of bad pages; failures of ops are counted too.
uint64_t WriteReadVerify(SwapDevice& d, int nr_threads, uint64_t slots_per_thread, uint64_t tag) {
  struct Run {
    uint64_t first;
    uint32_t n;
  };
  std::vector<std::vector<Run>> runs(nr_threads);
  std::atomic<uint64_t> errors{0};
  constexpr int kBatch = 8;
  auto writer = [&](int t) {
    std::mt19937 rng(static_cast<uint32_t>(tag) + t);
    std::vector<std::unique_ptr<PageBuf>> bufs;
    for (int i = 0; i < kBatch; i++) bufs.push_back(std::make_unique<PageBuf>(32));
    SwapIoOp ops[kBatch];
    int nops = 0;
    uint64_t done = 0;
    for (;;) {
      uint64_t first = 0;
      const uint32_t n = done < slots_per_thread ? d.AllocRun(1 + rng() % 32, &first) : 0;
      if (n > 0) {
        Fill(bufs[nops]->p, first, n, tag);
        ops[nops] = SwapIoOp{first, n, bufs[nops]->p, 0};
        nops++;
        runs[t].push_back(Run{first, n});
        done += n;
      }
      if (nops == kBatch || (n == 0 && nops > 0)) {
        d.io().Write(ops, nops);
        for (int i = 0; i < nops; i++) errors += ops[i].result != Full(ops[i].nr_pages);
        nops = 0;
      }
      if (n == 0) break;
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < nr_threads; t++) threads.emplace_back(writer, t);
  for (auto& th : threads) th.join();
  threads.clear();
  std::atomic<uint64_t> bad{0};
  auto reader = [&](int t) {
    const auto& mine = runs[(t + 1) % nr_threads];  // another thread's writes
    std::vector<std::unique_ptr<PageBuf>> bufs;
    for (int i = 0; i < kBatch; i++) bufs.push_back(std::make_unique<PageBuf>(32));
    for (size_t base = 0; base < mine.size(); base += kBatch) {
      SwapIoOp ops[kBatch];
      const int nops = static_cast<int>(std::min<size_t>(kBatch, mine.size() - base));
      for (int i = 0; i < nops; i++) {
        std::memset(bufs[i]->p, 0, 32 * kPageSize);
        ops[i] = SwapIoOp{mine[base + i].first, mine[base + i].n, bufs[i]->p, 0};
      }
      d.io().Read(ops, nops);
      for (int i = 0; i < nops; i++) {
        errors += ops[i].result != Full(ops[i].nr_pages);
        bad += BadPages(bufs[i]->p, ops[i].slot, ops[i].nr_pages, tag);
      }
    }
  };
  for (int t = 0; t < nr_threads; t++) threads.emplace_back(reader, t);
  for (auto& th : threads) th.join();
  // The runs of all threads are disjoint.
  std::vector<bool> owned(d.nr_slots());
  uint64_t overlaps = 0, total = 0;
  for (auto& r : runs) {
    for (auto& run : r) {
      for (uint64_t s = run.first; s < run.first + run.n; s++) {
        overlaps += owned[s];
        owned[s] = true;
        total++;
      }
    }
  }
  INFO("slots written " << total);
  CHECK(total >= nr_threads * slots_per_thread);
  CHECK(overlaps == 0);
  CHECK(errors == 0);
  return bad;
}

TEST_CASE(
    "io_uring: multi-page writes from 4 threads read back intact (tmpfile in $TMPDIR or "
    "/var/tmp, O_DIRECT on ext4)",
    "[swap][io][threads]") {
  auto d = OpenSize(64 * kMiB);
  const std::string fs = FsName(DefaultDir());
  INFO("device: " << d->description() << " on " << fs);
  WARN("swap I/O mode: " << d->description() << " on " << fs);
  if (fs == "ext4") REQUIRE(d->direct_io());
  REQUIRE(WriteReadVerify(*d, 4, 3000, TestSeed()) == 0);
  RequireInvariants(*d);
}

TEST_CASE("io_uring: reads that poll for their completion (a window from 1 us, which mostly "
          "times out, to 10 ms) read back intact from 4 threads",
          "[swap][io][threads]") {
  const int poll_us = GENERATE(1, 200, 10000);
  INFO("read poll " << poll_us << " us");
  auto d = OpenSize(64 * kMiB, poll_us);
  REQUIRE(WriteReadVerify(*d, 4, 1000, TestSeed()) == 0);
  RequireInvariants(*d);
}

TEST_CASE("io_uring: a read poll window outside 0 to 10 ms is EINVAL", "[swap][io]") {
  for (int bad : {-1, kMaxReadPollUs + 1}) {
    auto io = CreateUringSwapIo(/*fd=*/0, 8, 1, bad);
    REQUIRE_FALSE(io.ok());
    CHECK(ToErrno(io.status()) == EINVAL);
  }
}

TEST_CASE("io_uring: buffered I/O works where O_DIRECT is not used (tmpfs /dev/shm, or asked for)",
          "[swap][io]") {
  SwapOptions o;
  o.size_bytes = 16 * kMiB;
  const bool on_shm = GENERATE(true, false);
  if (on_shm) {
    o.dir = "/dev/shm";  // tmpfs: O_DIRECT refused before Linux 6.6, accepted since
  } else {
    o.direct_io = false;
  }
  auto d = OpenOrSkip(o);
  INFO("device: " << d->description());
  WARN("swap I/O mode on " << (on_shm ? "/dev/shm" : "default dir, direct_io=false") << ": "
                           << d->description());
  if (!on_shm) REQUIRE_FALSE(d->direct_io());
  const bool says_direct = d->description().find("O_DIRECT") != std::string::npos &&
                           d->description().find("buffered") == std::string::npos;
  REQUIRE(says_direct == d->direct_io());
  REQUIRE(WriteReadVerify(*d, 2, 1000, TestSeed() + 1) == 0);
}

// ---- Open's errors ----

TEST_CASE("Open: a nonexistent directory fails with ENOENT and names the directory",
          "[swap][open]") {
  SwapOptions o;
  o.size_bytes = 4 * kMiB;
  o.dir = "/nonexistent-emu-swap-dir/sub";
  auto d = SwapDevice::Open(o);
  REQUIRE_FALSE(d.ok());
  INFO(d.status().ToString());
  REQUIRE(ToErrno(d.status()) == ENOENT);
  REQUIRE(d.status().message().find(o.dir) != std::string_view::npos);
}

TEST_CASE("Open: an unwritable directory fails with EACCES and names the directory",
          "[swap][open]") {
  char tmpl[] = "/tmp/emu-swap-ro-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  REQUIRE(chmod(dir.c_str(), 0500) == 0);
  // Root ignores permissions: try as `nobody` in a child, which reports
  // through its exit code (0 pass, 1 wrong errno, 2 message, 3 opened, 77 skip).
  std::fflush(nullptr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (geteuid() == 0 &&
        (chmod(dir.c_str(), 0700) != 0 || setgid(65534) != 0 || setuid(65534) != 0)) {
      _exit(kSkip);
    }
    SwapOptions o;
    o.size_bytes = 4 * kMiB;
    o.dir = dir;
    auto d = SwapDevice::Open(o);
    if (d.ok()) _exit(3);
    if (ToErrno(d.status()) != EACCES) _exit(1);
    if (d.status().message().find(dir) == std::string_view::npos) _exit(2);
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  rmdir(dir.c_str());
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == kSkip) {
    std::fprintf(stderr, "SKIP: cannot drop privileges to test EACCES\n");
    std::exit(kSkip);
  }
  REQUIRE(WEXITSTATUS(status) == 0);
}

TEST_CASE("Open: a size under 1 MiB is EINVAL, and a size is rounded down to whole pages",
          "[swap][open]") {
  SwapOptions o;
  o.size_bytes = kMiB - 1;
  auto d = SwapDevice::Open(o);
  REQUIRE_FALSE(d.ok());
  INFO(d.status().ToString());
  REQUIRE(ToErrno(d.status()) == EINVAL);
  REQUIRE(d.status().message().find("1 MiB") != std::string_view::npos);
  auto ok = OpenSize(kMiB + kPageSize + 100);
  REQUIRE(ok->nr_slots() == 257);
  RequireInvariants(*ok);
}

TEST_CASE("Open: fallocate on a filesystem without room fails with ENOSPC", "[swap][open]") {
  struct statvfs sv {};
  if (statvfs("/dev/shm", &sv) != 0 || FsName("/dev/shm") != "tmpfs" || sv.f_blocks == 0) {
    std::fprintf(stderr, "SKIP: needs /dev/shm as a tmpfs with a size limit\n");
    std::exit(kSkip);
  }
  SwapOptions o;
  o.dir = "/dev/shm";
  o.size_bytes = 2 * uint64_t{sv.f_blocks} * sv.f_frsize + 64 * kMiB;  // tmpfs checks up front
  auto d = SwapDevice::Open(o);
  REQUIRE_FALSE(d.ok());
  INFO(d.status().ToString());
  REQUIRE(ToErrno(d.status()) == ENOSPC);
  REQUIRE(d.status().message().find("/dev/shm") != std::string_view::npos);
}

TEST_CASE("Open: a path option creates (or truncates) the file with mode 0600 and its size",
          "[swap][open]") {
  char tmpl[] = "/var/tmp/emu-swap-path-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string path = std::string(tmpl) + "/swapfile";
  const bool exists = GENERATE(false, true);
  if (exists) {  // a file that was there, wider open and bigger
    int fd = open(path.c_str(), O_CREAT | O_WRONLY, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(fchmod(fd, 0644) == 0);
    REQUIRE(ftruncate(fd, 32 * kMiB) == 0);
    close(fd);
  }
  {
    SwapOptions o;
    o.path = path;
    o.size_bytes = 2 * kMiB;
    auto d = OpenOrSkip(o);
    INFO(d->description());
    REQUIRE(d->description().find(path) != std::string::npos);
    struct stat st {};
    REQUIRE(stat(path.c_str(), &st) == 0);
    REQUIRE((st.st_mode & 07777) == 0600);
    REQUIRE(uint64_t(st.st_size) == 2 * kMiB);
    REQUIRE(WriteReadVerify(*d, 1, 200, 7) == 0);
  }
  unlink(path.c_str());
  rmdir(tmpl);
}

// ---- FaultInjectingSwapIo ----

// Replaces the device's backend by a FaultInjectingSwapIo around it.
FaultInjectingSwapIo* InjectFaults(SwapDevice& d) {
  auto fi = std::make_unique<FaultInjectingSwapIo>(d.TakeIo());
  FaultInjectingSwapIo* p = fi.get();
  REQUIRE(d.ReplaceIo(std::move(fi)) == nullptr);
  return p;
}

TEST_CASE("FaultInjectingSwapIo: EIO on reads of a slot range fails only the ops touching it",
          "[swap][inject]") {
  auto d = OpenSize(4 * kMiB);
  FaultInjectingSwapIo* fi = InjectFaults(*d);
  PageBuf buf(16);
  SwapIoOp w[4];
  for (int i = 0; i < 4; i++) {
    Fill(buf.p + i * 4 * kPageSize, 100 + i * 4, 4, 1);
    w[i] = SwapIoOp{uint64_t(100 + i * 4), 4, buf.p + i * 4 * kPageSize, 0};
  }
  d->io().Write(w, 4);
  for (auto& op : w) REQUIRE(op.result == Full(4));
  fi->AddRule({SwapFaultRule::kRead, 107, 109, EIO});  // inside op 1, across ops 1 and 2
  std::memset(buf.p, 0, 16 * kPageSize);
  SwapIoOp r[4];
  for (int i = 0; i < 4; i++)
    r[i] = SwapIoOp{uint64_t(100 + i * 4), 4, buf.p + i * 4 * kPageSize, 0};
  d->io().Read(r, 4);
  REQUIRE(r[0].result == Full(4));
  REQUIRE(r[1].result == -EIO);
  REQUIRE(r[2].result == -EIO);
  REQUIRE(r[3].result == Full(4));
  REQUIRE(BadPages(buf.p, 100, 4, 1) == 0);
  REQUIRE(BadPages(buf.p + 12 * kPageSize, 112, 4, 1) == 0);
  REQUIRE(fi->nr_injected() == 2);
  // Writes are not matched by a read rule; ClearRules lifts it.
  Fill(w[1].buf, 104, 4, 3);
  d->io().Write(w + 1, 1);
  REQUIRE(w[1].result == Full(4));
  fi->ClearRules();
  d->io().Read(r + 1, 1);
  REQUIRE(r[1].result == Full(4));
  REQUIRE(BadPages(r[1].buf, 104, 4, 3) == 0);
}

TEST_CASE("FaultInjectingSwapIo: ENOSPC on write leaves the slot's old contents",
          "[swap][inject]") {
  auto d = OpenSize(4 * kMiB);
  FaultInjectingSwapIo* fi = InjectFaults(*d);
  PageBuf buf(1);
  Fill(buf.p, 5, 1, 1);
  SwapIoOp op{5, 1, buf.p, 0};
  d->io().Write(&op, 1);
  REQUIRE(op.result == Full(1));
  fi->AddRule({SwapFaultRule::kWrite, 0, 10, -ENOSPC});  // -errno works as well
  Fill(buf.p, 5, 1, 2);
  d->io().Write(&op, 1);
  REQUIRE(op.result == -ENOSPC);
  fi->ClearRules();
  d->io().Read(&op, 1);
  REQUIRE(op.result == Full(1));
  REQUIRE(BadPages(buf.p, 5, 1, 1) == 0);
}

TEST_CASE("FaultInjectingSwapIo: a short transfer moves the first half and reports its bytes",
          "[swap][inject]") {
  auto d = OpenSize(4 * kMiB);
  FaultInjectingSwapIo* fi = InjectFaults(*d);
  PageBuf buf(8);
  Fill(buf.p, 40, 8, 1);
  SwapIoOp op{40, 8, buf.p, 0};
  d->io().Write(&op, 1);
  REQUIRE(op.result == Full(8));
  Fill(buf.p, 40, 8, 2);
  fi->AddRule({SwapFaultRule::kWrite, 40, 41, 0, 1});
  d->io().Write(&op, 1);
  REQUIRE(op.result == Full(4));
  std::memset(buf.p, 0, 8 * kPageSize);
  d->io().Read(&op, 1);
  REQUIRE(op.result == Full(8));
  REQUIRE(BadPages(buf.p, 40, 4, 2) == 0);                  // the half written
  REQUIRE(BadPages(buf.p + 4 * kPageSize, 44, 4, 1) == 0);  // the rest untouched
  // A one-page op: no page moves, 0 bytes.
  fi->AddRule({SwapFaultRule::kRead, 40, 41, 0, 1});
  SwapIoOp one{40, 1, buf.p, 0};
  d->io().Read(&one, 1);
  REQUIRE(one.result == 0);
}

TEST_CASE("FaultInjectingSwapIo: a rule with times=N fails N matching ops and then expires",
          "[swap][inject]") {
  auto d = OpenSize(4 * kMiB);
  FaultInjectingSwapIo* fi = InjectFaults(*d);
  PageBuf buf(1);
  fi->AddRule({SwapFaultRule::kWrite, 7, 8, EIO, 3});
  SwapIoOp other{8, 1, buf.p, 0};
  d->io().Write(&other, 1);  // does not match: does not count
  REQUIRE(other.result == Full(1));
  for (int i = 0; i < 3; i++) {
    SwapIoOp op{7, 1, buf.p, 0};
    d->io().Write(&op, 1);
    REQUIRE(op.result == -EIO);
  }
  SwapIoOp op{7, 1, buf.p, 0};
  d->io().Write(&op, 1);
  REQUIRE(op.result == Full(1));
  REQUIRE(fi->nr_injected() == 3);
  // Expired rules make room: many more than kMaxRules over time.
  for (int i = 0; i < 4 * FaultInjectingSwapIo::kMaxRules; i++) {
    fi->AddRule({SwapFaultRule::kRead, 0, 1, EIO, 1});
    SwapIoOp r{0, 1, buf.p, 0};
    d->io().Read(&r, 1);
    REQUIRE(r.result == -EIO);
  }
}

// ---- Signal context ----

SwapIo* g_sig_io = nullptr;
void* g_sig_buf = nullptr;
std::atomic<int64_t> g_sig_read{0}, g_sig_write{0};

void SwapInHandler(int) {
  // What the SIGBUS handler does on a swap-in: a 1-page read; and a write.
  SwapIoOp op{3, 1, g_sig_buf, 0};
  g_sig_io->Read(&op, 1);
  g_sig_read.store(op.result);
  SwapIoOp w{9, 1, g_sig_buf, 0};
  g_sig_io->Write(&w, 1);
  g_sig_write.store(w.result);
}

TEST_CASE("io_uring: Read and Write run inside a signal handler", "[swap][io][signal]") {
  auto d = OpenSize(4 * kMiB);
  PageBuf buf(1);
  Fill(buf.p, 3, 1, 5);
  SwapIoOp op{3, 1, buf.p, 0};
  d->io().Write(&op, 1);
  REQUIRE(op.result == Full(1));
  std::memset(buf.p, 0, kPageSize);
  g_sig_io = &d->io();
  g_sig_buf = buf.p;
  struct sigaction sa {
  }, old{};
  sa.sa_handler = SwapInHandler;
  sigemptyset(&sa.sa_mask);
  REQUIRE(sigaction(SIGUSR1, &sa, &old) == 0);
  REQUIRE(raise(SIGUSR1) == 0);
  REQUIRE(sigaction(SIGUSR1, &old, nullptr) == 0);
  REQUIRE(g_sig_read.load() == Full(1));
  REQUIRE(g_sig_write.load() == Full(1));
  REQUIRE(BadPages(buf.p, 3, 1, 5) == 0);
  // The handler's write (slot 9, the same bytes) landed.
  std::memset(buf.p, 0, kPageSize);
  SwapIoOp back{9, 1, buf.p, 0};
  d->io().Read(&back, 1);
  REQUIRE(back.result == Full(1));
  REQUIRE(BadPages(buf.p, 3, 1, 5) == 0);
}

}  // namespace
}  // namespace emu
