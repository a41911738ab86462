// AddressSpace::Fork(): copy-on-write on genuine memory, in the manner of the
// kernel's mm selftest cow.c: nothing leaks from parent to child or from
// child to parent, for base pages, zero pages, swapped pages, after mremap
// and after partial munmap, and the frames in the pool are accounted for.
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "test_util.h"

namespace emu {
namespace {

using test::MakeEnv;
using test::MapAnon;

constexpr int kRW = PROT_READ | PROT_WRITE;

void RequireMachineInvariants(Machine& m) {
  absl::Status s = test::SettledInvariants([&] { return m.CheckInvariants(); });
  INFO(s.ToString());
  REQUIRE(s.ok());
}

// `p` of `from`, as the same offset in `to`'s window.
char* In(const AddressSpace& to, const AddressSpace& from, const char* p) {
  return reinterpret_cast<char*>(to.window().start +
                                 (reinterpret_cast<VirtAddr>(p) - from.window().start));
}

uint64_t Word(size_t page, uint64_t tag) { return (page * 0x9E3779B97F4A7C15ull) ^ tag; }

void Fill(char* p, size_t pages, uint64_t tag) {
  for (size_t i = 0; i < pages; i++) {
    auto* w = reinterpret_cast<uint64_t*>(p + i * kPageSize);
    w[0] = Word(i, tag);
    w[kPageSize / 8 - 1] = ~Word(i, tag);
  }
}

// The first page of `p` in [first, first + pages) that does not hold
// `tag`'s pattern, or -1.
long FirstBad(const char* p, size_t pages, uint64_t tag, size_t first = 0) {
  for (size_t i = first; i < first + pages; i++) {
    auto* w = reinterpret_cast<const uint64_t*>(p + i * kPageSize);
    if (w[0] != Word(i, tag) || w[kPageSize / 8 - 1] != ~Word(i, tag)) return static_cast<long>(i);
  }
  return -1;
}

std::unique_ptr<AddressSpace> ForkOf(AddressSpace& as) {
  auto child = as.Fork();
  INFO("Fork: " << child.status().ToString());
  REQUIRE(child.ok());
  return std::move(*child);
}

TEST_CASE("Fork: base pages are shared until written, and no write leaks either way",
          "[fork]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 64;
  char* p = MapAnon(parent, kPages * kPageSize);
  Fill(p, kPages, 1);
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  CHECK(m.vmstat().Get(VmEvent::k_fork_shared_pages) == kPages);
  CHECK(child->rss_anon() == kPages);
  CHECK(FirstBad(c, kPages, 1) == -1);
  RequireMachineInvariants(m);

  // The parent writes the even pages, the child the odd ones.
  for (size_t i = 0; i < kPages; i += 2) reinterpret_cast<uint64_t*>(p + i * kPageSize)[0] = 0xAA;
  for (size_t i = 1; i < kPages; i += 2) reinterpret_cast<uint64_t*>(c + i * kPageSize)[0] = 0xBB;
  for (size_t i = 0; i < kPages; i++) {
    uint64_t pw = reinterpret_cast<uint64_t*>(p + i * kPageSize)[0];
    uint64_t cw = reinterpret_cast<uint64_t*>(c + i * kPageSize)[0];
    INFO("page " << i);
    CHECK(pw == (i % 2 == 0 ? 0xAA : Word(i, 1)));
    CHECK(cw == (i % 2 == 1 ? 0xBB : Word(i, 1)));
  }
  CHECK(m.vmstat().Get(VmEvent::k_cow_page) == kPages);
  RequireMachineInvariants(m);
  // Every frame was copied away from on one side: the pool holds the
  // frames the other side still maps, each now mapped once.
  CHECK(m.frame_pool()->nr_frames() == kPages);

  // A write to a frame whose other mapping went away reuses it (seed 002).
  child.reset();
  uint64_t reuse = m.vmstat().Get(VmEvent::k_pgreuse);
  for (size_t i = 1; i < kPages; i += 2) reinterpret_cast<uint64_t*>(p + i * kPageSize)[1] = 0xCC;
  CHECK(m.vmstat().Get(VmEvent::k_pgreuse) - reuse == kPages / 2);
  CHECK(m.vmstat().Get(VmEvent::k_cow_page) == kPages);
  RequireMachineInvariants(m);
  REQUIRE(parent.Munmap(reinterpret_cast<VirtAddr>(p), kPages * kPageSize).ok());
  CHECK(m.frame_pool()->nr_frames() == 0);
  CHECK(m.mem_map().nr_used() == 0);
  RequireMachineInvariants(m);
}

TEST_CASE("Fork: zero-page PTEs stay zero-page PTEs in both", "[fork]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 32;
  char* p = MapAnon(parent, kPages * kPageSize);
  for (size_t i = 0; i < kPages; i++) CHECK(p[i * kPageSize] == 0);  // read: zero page
  REQUIRE(parent.nr_zero_ptes() == kPages);
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  CHECK(child->nr_zero_ptes() == kPages);
  CHECK(child->GetPte(reinterpret_cast<VirtAddr>(c)).special());
  CHECK(m.mem_map().nr_used() == 0);
  for (size_t i = 0; i < kPages; i++) CHECK(c[i * kPageSize] == 0);
  c[5] = 1;  // copy-on-write from the zero page, in the child only
  CHECK(p[5] == 0);
  p[kPageSize] = 2;
  CHECK(c[kPageSize] == 0);
  CHECK(m.vmstat().Get(VmEvent::k_cow_zero) == 2);
  RequireMachineInvariants(m);
}

TEST_CASE("Fork: chains and fans see the memory of the moment they were forked", "[fork]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.arena_bytes = uint64_t{16} << 30;
  auto env = MakeEnv(mode, o);
  Machine& m = *env->machine;
  constexpr size_t kPages = 16;
  char* p = MapAnon(*env->as, kPages * kPageSize);
  Fill(p, kPages, 100);
  // A chain: each generation forks the next, then overwrites its pages.
  // The first address space ends with tag 110, generation g < 3 with
  // 110 + g * 10, and generation 3 keeps what all of them started with.
  std::vector<std::unique_ptr<AddressSpace>> chain;
  AddressSpace* cur = env->as.get();
  for (int gen = 1; gen <= 3; gen++) {
    chain.push_back(ForkOf(*cur));
    Fill(In(*cur, *env->as, p), kPages, 100 + gen * 10);
    cur = chain.back().get();
  }
  CHECK(FirstBad(p, kPages, 110) == -1);
  for (int gen = 1; gen <= 3; gen++) {
    INFO("generation " << gen);
    uint64_t want = gen == 3 ? 100 : 110 + gen * 10;
    CHECK(FirstBad(In(*chain[gen - 1], *env->as, p), kPages, want) == -1);
  }
  RequireMachineInvariants(m);
  // The middle of a chain may go first.
  chain.erase(chain.begin());
  RequireMachineInvariants(m);
  // A fan: two children of the last generation; the first writes half.
  std::vector<std::unique_ptr<AddressSpace>> fan;
  for (int i = 0; i < 2; i++) fan.push_back(ForkOf(*cur));
  char* f0 = In(*fan[0], *env->as, p);
  Fill(f0, kPages / 2, 7);
  CHECK(FirstBad(f0, kPages / 2, 7) == -1);
  CHECK(FirstBad(f0, kPages / 2, 100, kPages / 2) == -1);
  CHECK(FirstBad(In(*fan[1], *env->as, p), kPages, 100) == -1);
  CHECK(FirstBad(In(*cur, *env->as, p), kPages, 100) == -1);
  RequireMachineInvariants(m);
  fan.clear();
  chain.clear();
  RequireMachineInvariants(m);
  // Only the first address space maps anything now.
  CHECK(m.mem_map().nr_used() == kPages);
}

TEST_CASE("Fork: swapped-out pages become shared swap entries", "[fork][swap]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.mem_limit = uint64_t{8} << 20;
  o.swap_bytes = uint64_t{64} << 20;
  auto env = MakeEnv(mode, o);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 1024;
  char* p = MapAnon(parent, kPages * kPageSize);
  Fill(p, kPages, 5);
  REQUIRE(m.reclaim()->ShrinkTo(kPages / 4).ok());
  REQUIRE(parent.nr_swap_ptes() > 0);
  const uint64_t swapped = parent.nr_swap_ptes();
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  CHECK(child->nr_swap_ptes() == swapped);
  RequireMachineInvariants(m);  // the swap_map counts both PTEs of each slot
  // The parent reads its pages back (they keep their slots as swap cache)
  // and writes half of them while the child's swap PTEs still name those
  // slots: the child reads the old data from the device.
  CHECK(FirstBad(p, kPages, 5) == -1);
  RequireMachineInvariants(m);
  Fill(p, kPages / 2, 50);
  CHECK(FirstBad(c, kPages, 5) == -1);
  CHECK(FirstBad(p, kPages / 2, 50) == -1);
  CHECK(FirstBad(p, kPages / 2, 5, kPages / 2) == -1);
  Fill(p, kPages / 2, 5);
  RequireMachineInvariants(m);
  REQUIRE(m.reclaim()->ShrinkTo(kPages / 4).ok());
  Fill(c, kPages, 6);
  CHECK(FirstBad(p, kPages, 5) == -1);
  CHECK(FirstBad(c, kPages, 6) == -1);
  RequireMachineInvariants(m);
  child.reset();
  CHECK(FirstBad(p, kPages, 5) == -1);
  RequireMachineInvariants(m);
}

TEST_CASE("Fork: reclaim swaps shared frames out through the reverse map", "[fork][swap]") {
  FaultMode mode = EMU_ALL_MODES();
  std::string method = GENERATE(std::string("anon_vma"), std::string("anonmm"));
  MachineOptions o;
  o.mem_limit = uint64_t{8} << 20;
  o.swap_bytes = uint64_t{64} << 20;
  o.rmap = method;
  auto env = MakeEnv(mode, o);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 512;
  char* p = MapAnon(parent, kPages * kPageSize);
  Fill(p, kPages, 21);
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  auto grandchild = ForkOf(*child);
  char* g = In(*grandchild, parent, p);
  REQUIRE(m.frame_pool()->nr_frames() == kPages);
  const uint64_t out0 = m.vmstat().Get(VmEvent::k_pswpout);
  // Twice: the first pass ages the frames (they start referenced).
  (void)test::ShrinkSettled(m);
  (void)test::ShrinkSettled(m);
  CHECK(m.frame_pool()->nr_frames() == 0);
  CHECK(m.vmstat().Get(VmEvent::k_pswpout) - out0 == kPages);  // once per frame, not per PTE
  CHECK(parent.nr_swap_ptes() == kPages);
  CHECK(grandchild->nr_swap_ptes() == kPages);
  RequireMachineInvariants(m);  // each slot counts three swap PTEs
  Fill(c, kPages / 2, 22);
  CHECK(FirstBad(p, kPages, 21) == -1);
  CHECK(FirstBad(g, kPages, 21) == -1);
  CHECK(FirstBad(c, kPages / 2, 22) == -1);
  CHECK(FirstBad(c, kPages / 2, 21, kPages / 2) == -1);
  RequireMachineInvariants(m);
}

TEST_CASE("Fork: past the host VMA budget a fork copies, and a write unshares its whole block",
          "[fork]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.pool_vma_budget = 0;  // every host VMA is over it
  auto env = MakeEnv(mode, o);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 64;
  char* p = MapAnon(parent, kPages * kPageSize);
  Fill(p, kPages, 40);
  auto child = ForkOf(parent);
  CHECK(m.vmstat().Get(VmEvent::k_fork_copied_pages) == kPages);
  CHECK(m.vmstat().Get(VmEvent::k_fork_shared_pages) == 0);
  CHECK(m.frame_pool()->nr_frames() == 0);
  char* c = In(*child, parent, p);
  CHECK(FirstBad(c, kPages, 40) == -1);
  Fill(c, kPages, 41);
  CHECK(FirstBad(p, kPages, 40) == -1);
  RequireMachineInvariants(m);
}

TEST_CASE("Fork: copying for the child at the memory limit reclaims without deadlock",
          "[fork][swap]") {
  // Every page is copied (budget 0) and the copies need frames beyond the
  // limit: fork's allocations reclaim (from another address space: the two
  // fork holds are locked) while a thread keeps faulting and reclaiming.
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.mem_limit = uint64_t{8} << 20;  // 2048 frames
  o.swap_bytes = uint64_t{64} << 20;
  o.pool_vma_budget = 0;
  o.arena_bytes = uint64_t{16} << 30;
  auto env = MakeEnv(mode, o);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  auto other = m.CreateAddressSpace(uint64_t{2} << 30);
  REQUIRE(other.ok());
  constexpr size_t kPages = 600, kOther = 1800;
  char* p = MapAnon(parent, kPages * kPageSize);
  char* q = MapAnon(**other, kOther * kPageSize);
  Fill(q, kOther, 61);
  Fill(p, kPages, 60);
  std::atomic<bool> stop{false};
  std::thread toucher([&] {
    for (size_t i = 0; !stop.load(); i = (i + 7) % kOther) {
      reinterpret_cast<volatile uint64_t*>(q + i * kPageSize)[1] = i;
    }
  });
  auto child = ForkOf(parent);
  stop = true;
  toucher.join();
  CHECK(m.vmstat().Get(VmEvent::k_fork_copied_pages) == kPages);
  char* c = In(*child, parent, p);
  CHECK(FirstBad(c, kPages, 60) == -1);
  CHECK(FirstBad(p, kPages, 60) == -1);
  CHECK(FirstBad(q, kOther, 61) == -1);
  RequireMachineInvariants(m);
  child.reset();
  other->reset();
}

TEST_CASE("Fork: scattered copy-on-write faults stay within the host VMA budget", "[fork]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  // Room for the fork's own mappings and a few dozen copies, not for one
  // host VMA per scattered copy.
  o.pool_vma_budget = Machine::CountHostVmas() + 120;
  auto env = MakeEnv(mode, o);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 4096;  // 16 MiB: eight 2 MiB blocks
  char* p = MapAnon(parent, kPages * kPageSize);
  Fill(p, kPages, 50);
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  REQUIRE(m.vmstat().Get(VmEvent::k_fork_shared_pages) == kPages);
  const int64_t before = Machine::CountHostVmas();
  // Every fourth page of the child: one host VMA split per copy without
  // the budget (about 2000 more host VMAs).
  for (size_t i = 0; i < kPages; i += 4) reinterpret_cast<uint64_t*>(c + i * kPageSize)[0] = 7;
  CHECK(m.vmstat().Get(VmEvent::k_pool_unshare_blocks) > 0);
  CHECK(Machine::CountHostVmas() < before + 400);
  CHECK(Machine::CountHostVmas() <= o.pool_vma_budget + 130);
  for (size_t i = 0; i < kPages; i++) {
    uint64_t w = reinterpret_cast<uint64_t*>(c + i * kPageSize)[0];
    INFO("page " << i);
    REQUIRE(w == (i % 4 == 0 ? 7 : Word(i, 50)));
  }
  CHECK(FirstBad(p, kPages, 50) == -1);
  RequireMachineInvariants(m);
}

TEST_CASE("Fork: mremap and partial munmap after a fork keep both sides apart", "[fork]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 32;
  char* p = MapAnon(parent, kPages * kPageSize);
  Fill(p, kPages, 9);
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  // The parent moves its range (shared frames keep being shared), the child
  // unmaps the middle.
  auto moved = parent.Mremap(reinterpret_cast<VirtAddr>(p), kPages * kPageSize,
                             2 * kPages * kPageSize, MREMAP_MAYMOVE);
  REQUIRE(moved.ok());
  char* q = reinterpret_cast<char*>(*moved);
  REQUIRE(child->Munmap(reinterpret_cast<VirtAddr>(c) + 8 * kPageSize, 8 * kPageSize).ok());
  RequireMachineInvariants(m);
  CHECK(FirstBad(q, kPages, 9) == -1);
  CHECK(FirstBad(c, 8, 9) == -1);
  Fill(q, kPages, 10);
  CHECK(FirstBad(c, 8, 9) == -1);
  CHECK(FirstBad(c, 16, 9, 16) == -1);
  Fill(c + 16 * kPageSize, 16, 11);
  CHECK(FirstBad(q, kPages, 10) == -1);
  RequireMachineInvariants(m);
  child.reset();
  REQUIRE(parent.Munmap(*moved, 2 * kPages * kPageSize).ok());
  CHECK(m.mem_map().nr_used() == 0);
  CHECK(m.frame_pool()->nr_frames() == 0);
  RequireMachineInvariants(m);
}

TEST_CASE("Fork: MADV_DONTFORK ranges are left out, MADV_WIPEONFORK ranges start empty",
          "[fork]") {
  auto env = MakeEnv(FaultMode::kUffdSigbus);
  AddressSpace& parent = *env->as;
  char* a = MapAnon(parent, 4 * kPageSize);
  char* b = MapAnon(parent, 4 * kPageSize);
  char* locked = MapAnon(parent, 4 * kPageSize);
  std::memset(a, 1, 4 * kPageSize);
  std::memset(b, 2, 4 * kPageSize);
  REQUIRE(parent.Madvise(reinterpret_cast<VirtAddr>(a), 4 * kPageSize, MADV_DONTFORK).ok());
  REQUIRE(parent.Madvise(reinterpret_cast<VirtAddr>(b), 4 * kPageSize, MADV_WIPEONFORK).ok());
  REQUIRE(parent.Mlock(reinterpret_cast<VirtAddr>(locked), 4 * kPageSize).ok());
  auto child = ForkOf(parent);
  // Left out: a hole in the child (its fault is SIGSEGV; FaultInPages says EFAULT).
  CHECK(ToErrno(child->FaultInPages(reinterpret_cast<VirtAddr>(In(*child, parent, a)), kPageSize,
                                    false)) == EFAULT);
  char* cb = In(*child, parent, b);
  CHECK(cb[0] == 0);
  CHECK(b[0] == 2);
  // mlock is not inherited: the child's range may be advised away.
  CHECK(child->Madvise(reinterpret_cast<VirtAddr>(In(*child, parent, locked)), 4 * kPageSize,
                       MADV_DONTNEED)
            .ok());
  CHECK(ToErrno(parent.Madvise(reinterpret_cast<VirtAddr>(locked), 4 * kPageSize, MADV_DONTNEED)) ==
        EINVAL);
  RequireMachineInvariants(*env->machine);
}

TEST_CASE("Fork: threads writing in parent and child at once see only their own writes",
          "[fork][threads]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& parent = *env->as;
  constexpr size_t kPages = 512;
  char* p = MapAnon(parent, kPages * kPageSize);
  Fill(p, kPages, 3);
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  std::atomic<int> bad{0};
  auto writer = [&](char* base, uint64_t tag, int t) {
    for (size_t i = t; i < kPages; i += 2) {
      auto* w = reinterpret_cast<uint64_t*>(base + i * kPageSize);
      if (w[0] != Word(i, 3)) bad++;
      w[0] = Word(i, tag);
      w[kPageSize / 8 - 1] = ~Word(i, tag);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; t++) {
    threads.emplace_back(writer, p, 30, t);
    threads.emplace_back(writer, c, 31, t);
  }
  for (auto& t : threads) t.join();
  CHECK(bad.load() == 0);
  CHECK(FirstBad(p, kPages, 30) == -1);
  CHECK(FirstBad(c, kPages, 31) == -1);
  RequireMachineInvariants(*env->machine);
}

TEST_CASE("Fork: a system call writing into a shared page copies it first", "[fork][syscall]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& parent = *env->as;
  char* p = MapAnon(parent, 2 * kPageSize);
  std::memset(p, 'x', 2 * kPageSize);
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  REQUIRE(write(fds[1], "hello", 5) == 5);
  // SIGBUS and SIGSEGV modes: a fault taken inside the kernel is EFAULT, so
  // memory handed to a system call is faulted in first (emu/mm.h).
  if (mode != FaultMode::kUffdThread) {
    REQUIRE(child->FaultInPages(reinterpret_cast<VirtAddr>(c), 5, true).ok());
  }
  REQUIRE(read(fds[0], c, 5) == 5);
  CHECK(std::memcmp(c, "hello", 5) == 0);
  CHECK(p[0] == 'x');
  close(fds[0]);
  close(fds[1]);
  RequireMachineInvariants(*env->machine);
}

}  // namespace
}  // namespace emu
