// Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, emu/shmem.h): one
// object's pages seen by every address space that maps it, through forks,
// mremap, MADV_DONTNEED and munmap; and its reverse map, the i_mmap walk,
// checked against the PTEs (rmap/rmap.h CheckRmap).
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "rmap/rmap.h"
#include "test_util.h"

namespace emu {
namespace {

using test::MakeEnv;
using test::Stat;

constexpr int kRW = PROT_READ | PROT_WRITE;
constexpr int kShared = MAP_SHARED | MAP_ANONYMOUS;

VirtAddr A(const void* p) { return reinterpret_cast<VirtAddr>(p); }

char* MapShared(AddressSpace& as, size_t len, int prot = kRW) {
  auto p = as.Mmap(0, len, prot, kShared);
  INFO("Mmap: " << p.status().ToString());
  REQUIRE(p.ok());
  return reinterpret_cast<char*>(*p);
}

char* In(const AddressSpace& to, const AddressSpace& from, const char* p) {
  return reinterpret_cast<char*>(to.window().start + (A(p) - from.window().start));
}

std::unique_ptr<AddressSpace> ForkOf(AddressSpace& as) {
  auto child = as.Fork();
  INFO("Fork: " << child.status().ToString());
  REQUIRE(child.ok());
  return std::move(*child);
}

void RequireAll(Machine& m) {
  absl::Status s = test::SettledInvariants([&] { return m.CheckInvariants(); });
  INFO(s.ToString());
  REQUIRE(s.ok());
  absl::Status r = CheckRmap(m);
  INFO(r.ToString());
  REQUIRE(r.ok());
}

uint64_t& Word(char* p, size_t page) { return *reinterpret_cast<uint64_t*>(p + page * kPageSize); }

TEST_CASE("Shared anonymous memory: forked address spaces see each other's writes at once",
          "[shmem][fork]") {
  FaultMode mode = EMU_ALL_MODES();
  const bool limit = GENERATE(false, true);
  INFO("mode " << FaultModeName(mode) << " limit " << limit);
  MachineOptions o;
  if (limit) {
    o.mem_limit = uint64_t{8} << 20;
    o.swap_bytes = uint64_t{64} << 20;
  }
  auto env = MakeEnv(mode, o);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 64;
  char* p = MapShared(parent, kPages * kPageSize);
  for (size_t i = 0; i < kPages / 2; i++) Word(p, i) = 1000 + i;  // half touched before the fork
  CHECK(Stat(m, VmEvent::k_shmem_alloc) == kPages / 2);
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  for (size_t i = 0; i < kPages / 2; i++) REQUIRE(Word(c, i) == 1000 + i);
  RequireAll(m);
  // Writes either way, to pages touched before the fork or not, are seen
  // by the other at once: one page, not a copy.
  for (size_t i = 0; i < kPages; i++) {
    if (i % 2) {
      Word(c, i) = 2000 + i;
    } else {
      Word(p, i) = 3000 + i;
    }
  }
  for (size_t i = 0; i < kPages; i++) {
    const uint64_t want = i % 2 ? 2000 + i : 3000 + i;
    REQUIRE(Word(p, i) == want);
    REQUIRE(Word(c, i) == want);
  }
  CHECK(Stat(m, VmEvent::k_shmem_alloc) == kPages);
  CHECK(Stat(m, VmEvent::k_cow_page) == 0);
  RequireAll(m);
  // A grandchild shares it too.
  auto grandchild = ForkOf(*child);
  char* g = In(*grandchild, parent, p);
  Word(g, 5) = 42;
  CHECK(Word(p, 5) == 42);
  RequireAll(m);
  // The last mapping's exit frees the object's pages.
  const uint64_t used = m.mem_map().nr_used();
  child.reset();
  grandchild.reset();
  CHECK(Word(p, 5) == 42);
  CHECK(m.mem_map().nr_used() == used);
  REQUIRE(parent.Munmap(A(p), kPages * kPageSize).ok());
  CHECK(m.mem_map().nr_used() == used - kPages);
  CHECK(m.frame_pool()->nr_frames() == 0);
  RequireAll(m);
}

TEST_CASE("Shared anonymous memory: MADV_DONTNEED keeps the data, munmap of one side keeps the "
          "other's, mremap keeps the sharing",
          "[shmem][mremap]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 32;
  char* p = MapShared(parent, kPages * kPageSize);
  for (size_t i = 0; i < kPages; i++) Word(p, i) = 7000 + i;
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  // Linux: MADV_DONTNEED on shared memory drops the PTEs; the object keeps
  // the pages, so they read back as they were.
  REQUIRE(parent.Madvise(A(p), kPages * kPageSize, MADV_DONTNEED).ok());
  CHECK(parent.rss_anon() == 0);
  for (size_t i = 0; i < kPages; i++) REQUIRE(Word(p, i) == 7000 + i);
  RequireAll(m);
  // Move the parent's mapping: the child still shares every page.
  auto moved = parent.Mremap(A(p), kPages * kPageSize, kPages * kPageSize, MREMAP_MAYMOVE |
                             MREMAP_FIXED, A(p) - 256 * kPageSize);
  INFO(moved.status().ToString());
  REQUIRE(moved.ok());
  char* q = reinterpret_cast<char*>(*moved);
  Word(c, 3) = 1;
  Word(q, 4) = 2;
  CHECK(Word(q, 3) == 1);
  CHECK(Word(c, 4) == 2);
  RequireAll(m);
  // Grown in place past the object: the new part is SIGBUS (EFAULT here).
  auto grown = parent.Mremap(A(q), kPages * kPageSize, 2 * kPages * kPageSize, 0);
  REQUIRE(grown.ok());
  CHECK(ToErrno(parent.FaultInPages(A(q) + kPages * kPageSize, kPageSize, false)) == EFAULT);
  CHECK(Word(q, kPages - 1) == 7000 + kPages - 1);
  // munmap of the child's half keeps the parent's.
  REQUIRE(child->Munmap(A(c), kPages / 2 * kPageSize).ok());
  for (size_t i = 0; i < kPages; i++) REQUIRE(Word(q, i) == (i == 3 ? 1 : i == 4 ? 2 : 7000 + i));
  RequireAll(m);
}

TEST_CASE("Shared anonymous memory: Linux's errors", "[shmem]") {
  auto env = MakeEnv(FaultMode::kSigsegv);
  AddressSpace& as = *env->as;
  char* p = MapShared(as, 8 * kPageSize);
  CHECK(ToErrno(as.Madvise(A(p), 8 * kPageSize, MADV_FREE)) == EINVAL);
  CHECK(ToErrno(as.Madvise(A(p), 8 * kPageSize, kMadvVolatile)) == EINVAL);
  CHECK(ToErrno(as.Madvise(A(p), 8 * kPageSize, MADV_WIPEONFORK)) == EINVAL);
  CHECK(as.Madvise(A(p), 8 * kPageSize, MADV_DONTFORK).ok());
  CHECK(ToErrno(as.Mmap(0, kPageSize, kRW, kShared | MAP_GROWSDOWN).status()) == EINVAL);
  // A forced write (FOLL_FORCE) may not go through a read-only shared mapping.
  char* ro = MapShared(as, kPageSize, PROT_READ);
  Pfn pin{0};
  CHECK(ToErrno(as.PinUserPages(A(ro), 1, kGupWrite | kGupForce, &pin).status()) == EFAULT);
}

TEST_CASE("Shared anonymous memory: a pinned page stays the page every mapping sees",
          "[shmem][pin]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  char* p = MapShared(parent, 4 * kPageSize);
  Word(p, 1) = 11;
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  Pfn pin{0};
  auto n = parent.PinUserPages(A(p) + kPageSize, 1, kGupWrite, &pin);
  INFO(n.status().ToString());
  REQUIRE(n.ok());
  REQUIRE(*n == 1);
  Word(c, 1) = 12;
  CHECK(*static_cast<const uint64_t*>(m.FrameData(pin)) == 12);
  CHECK(child->GetPte(A(c) + kPageSize).pfn() == pin);
  parent.UnpinUserPages(&pin, 1);
  RequireAll(m);
}

TEST_CASE("Shared anonymous memory: threads in two address spaces count in one word",
          "[shmem][race]") {
  FaultMode mode = EMU_ALL_MODES();
  INFO("mode " << FaultModeName(mode));
  auto env = MakeEnv(mode);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  char* p = MapShared(parent, 16 * kPageSize);
  auto child = ForkOf(parent);
  char* c = In(*child, parent, p);
  constexpr int kAdds = 100000;
  auto add = [&](char* base) {
    for (int i = 0; i < kAdds; i++) {
      // Each word on its own page: the first touch of each page faults too.
      reinterpret_cast<std::atomic<uint64_t>*>(base + (i % 16) * kPageSize)
          ->fetch_add(1, std::memory_order_relaxed);
    }
  };
  std::thread a(add, p), b(add, c), d(add, p), e(add, c);
  a.join();
  b.join();
  d.join();
  e.join();
  uint64_t sum = 0;
  for (size_t i = 0; i < 16; i++) sum += Word(p, i);
  CHECK(sum == 4u * kAdds);
  RequireAll(m);
}

// Random forks, writes, munmaps, mremaps and exits over private and shared
// mappings: every PTE that maps a frame in the pool is found by the walk
// from its page, and the walk finds nothing else (both anonymous methods
// beside the object's own walk).
TEST_CASE("Shared anonymous memory: the i_mmap walk stays exact through random sequences",
          "[shmem][rmap][random]") {
  FaultMode mode = GENERATE(FaultMode::kUffdSigbus, FaultMode::kSigsegv);
  std::string method = GENERATE(std::string("anon_vma"), std::string("anonmm"));
  INFO("mode " << FaultModeName(mode) << " rmap " << method);
  MachineOptions o;
  o.rmap = method;
  auto env = MakeEnv(mode, o);
  Machine& m = *env->machine;
  std::vector<std::unique_ptr<AddressSpace>> spaces;
  spaces.push_back(std::move(env->as));
  constexpr size_t kPages = 32;
  char* shared = MapShared(*spaces[0], kPages * kPageSize);
  auto priv = spaces[0]->Mmap(0, kPages * kPageSize, kRW, MAP_PRIVATE | MAP_ANONYMOUS);
  REQUIRE(priv.ok());
  const VirtAddr offs[2] = {A(shared) - spaces[0]->window().start, *priv - spaces[0]->window().start};
  std::mt19937_64 rng(7);
  for (int step = 0; step < 200; step++) {
    INFO("step " << step);
    AddressSpace& as = *spaces[rng() % spaces.size()];
    const VirtAddr base = as.window().start + offs[rng() % 2];
    const VirtAddr page = base + (rng() % kPages) * kPageSize;
    switch (rng() % 6) {
      case 0:
        if (spaces.size() < 4) spaces.push_back(ForkOf(as));
        break;
      case 1:
      case 2:
        if (as.FaultInPages(page, 8, true).ok()) {
          *reinterpret_cast<uint64_t*>(page) = step;
        }
        break;
      case 3:
        (void)as.Munmap(page, kPageSize);
        break;
      case 4:
        (void)as.Madvise(page, 2 * kPageSize, MADV_DONTNEED);
        break;
      case 5:
        if (spaces.size() > 1 && &as != spaces[0].get()) {
          for (auto it = spaces.begin(); it != spaces.end(); ++it) {
            if (it->get() == &as) {
              spaces.erase(it);
              break;
            }
          }
        }
        break;
    }
    RequireAll(m);
  }
  env->as = std::move(spaces[0]);
  spaces.clear();
}

}  // namespace
}  // namespace emu
