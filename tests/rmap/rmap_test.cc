// Reverse maps of frames shared by AddressSpace::Fork(), for each method
// (anon_vma, anonmm): the walk finds exactly the PTEs that map a frame after
// any sequence of fork, write, MADV_DONTNEED, munmap, mremap, reclaim and
// exit; page_referenced and try_to_unmap act on every mapping.
#include <sys/mman.h>

#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "rmap/rmap.h"
#include "test_util.h"

namespace emu {
namespace {

using test::MakeEnv;
using test::MapAnon;

constexpr int kRW = PROT_READ | PROT_WRITE;

#define EMU_RMAP_METHODS() GENERATE(std::string("anon_vma"), std::string("anonmm"))

void RequireAll(Machine& m) {
  absl::Status s = test::SettledInvariants([&] { return m.CheckInvariants(); });
  INFO(s.ToString());
  REQUIRE(s.ok());
  absl::Status r = CheckRmap(m);
  INFO(r.ToString());
  REQUIRE(r.ok());
}

// The address spaces of a test and what each page of one region holds.
struct Proc {
  std::unique_ptr<AddressSpace> owned;  // null for the first (Env owns it)
  AddressSpace* as;
  char* base;
  std::vector<uint64_t> words;  // 0: never written since mapped (reads zero)
};

char* Translate(const AddressSpace& to, const AddressSpace& from, char* p) {
  return reinterpret_cast<char*>(to.window().start +
                                 (reinterpret_cast<VirtAddr>(p) - from.window().start));
}

TEST_CASE("Rmap: random fork, write, zap, mremap, reclaim and exit keep every walk exact",
          "[rmap]") {
  std::string method = EMU_RMAP_METHODS();
  FaultMode mode = GENERATE(FaultMode::kUffdSigbus, FaultMode::kSigsegv);
  MachineOptions o;
  o.rmap = method;
  o.arena_bytes = uint64_t{16} << 30;
  o.mem_limit = uint64_t{16} << 20;
  o.swap_bytes = uint64_t{64} << 20;
  auto env = MakeEnv(mode, o);
  Machine& m = *env->machine;
  constexpr size_t kPages = 256;
  INFO("method " << method << ", mode " << FaultModeName(mode));
  std::vector<Proc> procs;
  procs.push_back({nullptr, env->as.get(), MapAnon(*env->as, kPages * kPageSize), {}});
  procs[0].words.assign(kPages, 0);
  std::mt19937_64 rng(method == "anon_vma" ? 1 : 2);
  auto verify = [&] {
    for (size_t p = 0; p < procs.size(); p++) {
      for (size_t i = 0; i < kPages; i++) {
        uint64_t got = *reinterpret_cast<uint64_t*>(procs[p].base + i * kPageSize);
        if (got != procs[p].words[i]) {
          FAIL("process " << p << " page " << i << ": " << got << " != " << procs[p].words[i]);
        }
      }
    }
  };
  uint64_t next = 1;
  for (int step = 0; step < 160; step++) {
    Proc& pr = procs[rng() % procs.size()];
    const size_t page = rng() % kPages;
    const size_t len = 1 + rng() % 16;
    const int op = static_cast<int>(rng() % 8);
    INFO("step " << step << " op " << op << " process " << (&pr - &procs[0]) << " page " << page
                  << " len " << len);
    switch (op) {
      case 0:
        if (procs.size() < 6) {
          auto child = pr.as->Fork();
          REQUIRE(child.ok());
          AddressSpace* cas = child->get();
          procs.push_back({std::move(*child), cas, Translate(*cas, *pr.as, pr.base), pr.words});
        }
        break;
      case 1:
      case 2:
      case 3:
        for (size_t i = page; i < std::min(kPages, page + len); i++) {
          *reinterpret_cast<uint64_t*>(pr.base + i * kPageSize) = next;
          pr.words[i] = next++;
        }
        break;
      case 4: {
        size_t n = std::min(kPages - page, len);
        REQUIRE(pr.as->Madvise(reinterpret_cast<VirtAddr>(pr.base + page * kPageSize),
                               n * kPageSize, MADV_DONTNEED)
                    .ok());
        for (size_t i = page; i < page + n; i++) pr.words[i] = 0;
        break;
      }
      case 5: {
        // Move the whole region somewhere else in the window and back into
        // use (anon_vma keeps pgoff; anonmm copies shared frames).
        VirtAddr to = pr.as->window().start + ((1 + rng() % 60) << 24);
        if (to == reinterpret_cast<VirtAddr>(pr.base)) break;
        REQUIRE(pr.as->Munmap(to, kPages * kPageSize).ok());
        auto moved = pr.as->Mremap(reinterpret_cast<VirtAddr>(pr.base), kPages * kPageSize,
                                   kPages * kPageSize, MREMAP_MAYMOVE | MREMAP_FIXED, to);
        INFO(moved.status().ToString());
        REQUIRE(moved.ok());
        pr.base = reinterpret_cast<char*>(*moved);
        break;
      }
      case 6: {
        // What cannot go (frames in the pool are unevictable for now)
        // makes ShrinkTo fall short, not fail otherwise.
        absl::Status s = m.reclaim()->ShrinkTo(rng() % 2048);
        INFO(s.ToString());
        REQUIRE((s.ok() || s.code() == absl::StatusCode::kResourceExhausted));
        break;
      }
      case 7:
        if (&pr != &procs[0]) {
          size_t idx = &pr - &procs[0];
          procs.erase(procs.begin() + static_cast<long>(idx));
        }
        break;
    }
    RequireAll(m);
    verify();
  }
  CHECK(m.vmstat().Get(VmEvent::k_fork) > 0);
  procs.resize(1);
  RequireAll(m);
}

TEST_CASE("Rmap: page_referenced and try_to_unmap reach every mapping of a shared frame",
          "[rmap]") {
  std::string method = EMU_RMAP_METHODS();
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.rmap = method;
  o.arena_bytes = uint64_t{16} << 30;
  auto env = MakeEnv(mode, o);
  Machine& m = *env->machine;
  AddressSpace& parent = *env->as;
  char* p = MapAnon(parent, 4 * kPageSize);
  std::memset(p, 7, 4 * kPageSize);
  auto c1 = parent.Fork();
  REQUIRE(c1.ok());
  auto c2 = parent.Fork();
  REQUIRE(c2.ok());
  Pfn pfn = parent.GetPte(reinterpret_cast<VirtAddr>(p)).pfn();
  REQUIRE(m.mem_map().page(pfn).mapcount.load() == 3);
  int young = 0;
  for (AddressSpace* as : {&parent, c1->get(), c2->get()}) {
    young += as->GetPte(reinterpret_cast<VirtAddr>(Translate(*as, parent, p))).young();
  }
  RmapWalkStats stats;
  CHECK(PageReferenced(m, pfn, &stats) == young);
  CHECK(stats.found == 3);
  CHECK(PageReferenced(m, pfn) == 0);  // cleared

  // A mapping in a locked VMA keeps the frame: try_to_unmap fails there
  // (the walk may have unmapped others before it met it, as in Linux).
  // Read-only, so that mlock does not break COW (it populates writable
  // private memory for writing, as Linux does).
  char* c2p = Translate(**c2, parent, p);
  REQUIRE((*c2)->Mprotect(reinterpret_cast<VirtAddr>(c2p), kPageSize, PROT_READ).ok());
  REQUIRE((*c2)->Mlock(reinterpret_cast<VirtAddr>(c2p), kPageSize).ok());
  REQUIRE((*c2)->GetPte(reinterpret_cast<VirtAddr>(c2p)).pfn() == pfn);
  CHECK(TryToUnmap(m, pfn, [](AddressSpace&, VirtAddr) { return Pte(); }) == UnmapResult::kFail);
  CHECK((*c2)->GetPte(reinterpret_cast<VirtAddr>(c2p)).pfn() == pfn);
  RequireAll(m);
  REQUIRE((*c2)->Munlock(reinterpret_cast<VirtAddr>(c2p), kPageSize).ok());
  const uint64_t frames = m.frame_pool()->nr_frames();
  CHECK(TryToUnmap(m, pfn, [](AddressSpace&, VirtAddr) { return Pte(); }) ==
        UnmapResult::kSuccess);
  CHECK(m.frame_pool()->nr_frames() == frames - 1);
  REQUIRE((*c2)->Mprotect(reinterpret_cast<VirtAddr>(c2p), kPageSize, kRW).ok());
  RequireAll(m);
  // Every side now faults a fresh zero page there; the other pages are intact.
  for (AddressSpace* as : {&parent, c1->get(), c2->get()}) {
    char* q = Translate(*as, parent, p);
    CHECK(q[0] == 0);
    CHECK(q[kPageSize] == 7);
  }
  RequireAll(m);
}

TEST_CASE("Rmap: try_to_unmap leaves a writable mapping alone", "[rmap]") {
  std::string method = EMU_RMAP_METHODS();
  MachineOptions o;
  o.rmap = method;
  auto env = MakeEnv(FaultMode::kUffdSigbus, o);
  Machine& m = *env->machine;
  AddressSpace& parent = *env->as;
  char* p = MapAnon(parent, kPageSize);
  p[0] = 1;
  auto child = parent.Fork();
  REQUIRE(child.ok());
  Translate(**child, parent, p)[0] = 2;  // the child copies; the frame is the parent's alone
  p[0] = 3;                              // reused: writable again, and written
  Pfn pfn = parent.GetPte(reinterpret_cast<VirtAddr>(p)).pfn();
  REQUIRE(m.mem_map().page(pfn).Test(kPgPool));
  REQUIRE(parent.GetPte(reinterpret_cast<VirtAddr>(p)).write());
  CHECK(TryToUnmap(m, pfn, [](AddressSpace&, VirtAddr) { return Pte(); }) == UnmapResult::kAgain);
  CHECK(p[0] == 3);
  RequireAll(m);
}

TEST_CASE("Rmap: mremap of shared frames moves them (anon_vma) or copies them (anonmm)",
          "[rmap]") {
  std::string method = EMU_RMAP_METHODS();
  MachineOptions o;
  o.rmap = method;
  auto env = MakeEnv(FaultMode::kUffdSigbus, o);
  Machine& m = *env->machine;
  AddressSpace& parent = *env->as;
  constexpr size_t kPages = 16;
  char* p = MapAnon(parent, kPages * kPageSize);
  std::memset(p, 3, kPages * kPageSize);
  auto child = parent.Fork();
  REQUIRE(child.ok());
  auto moved = parent.Mremap(reinterpret_cast<VirtAddr>(p), kPages * kPageSize,
                             kPages * kPageSize, MREMAP_MAYMOVE | MREMAP_FIXED,
                             parent.window().start + (uint64_t{1} << 28));
  INFO(moved.status().ToString());
  REQUIRE(moved.ok());
  char* q = reinterpret_cast<char*>(*moved);
  CHECK(q[0] == 3);
  RequireAll(m);
  if (method == "anonmm") {
    CHECK(m.vmstat().Get(VmEvent::k_cow_page) == kPages);  // early COW
  } else {
    CHECK(m.vmstat().Get(VmEvent::k_cow_page) == 0);
    CHECK(m.mem_map().page(parent.GetPte(*moved).pfn()).mapcount.load() == 2);
  }
  q[0] = 4;
  CHECK(Translate(**child, parent, p)[0] == 3);
  RequireAll(m);
}

TEST_CASE("Rmap: an unknown method is EINVAL", "[rmap]") {
  MachineOptions o;
  o.rmap = "pte_chain";
  CHECK(ToErrno(o.Validate()) == EINVAL);
  CHECK(ToErrno(CreateRmapMethod("pte_chain").status()) == EINVAL);
}

}  // namespace
}  // namespace emu
