// mremap semantics of AddressSpace: shrink, grow in place, move (with
// present, zero-page and swapped-out pages), MREMAP_FIXED, MREMAP_DONTUNMAP,
// and Linux's errors, in every fault mode.
#include <sys/mman.h>

#include <cstring>

#include "test_util.h"

namespace emu {
namespace {

using test::MakeEnv;
using test::MapAnon;
using test::RequireInvariants;

constexpr int kRW = PROT_READ | PROT_WRITE;
constexpr size_t kP = kPageSize;

VirtAddr A(const char* p) { return reinterpret_cast<VirtAddr>(p); }
char* P(VirtAddr a) { return reinterpret_cast<char*>(a); }

void Fill(char* p, size_t pages, int seed) {
  for (size_t i = 0; i < pages; i++) std::memset(p + i * kP, seed + static_cast<int>(i), kP);
}
bool Check(const char* p, size_t pages, int seed) {
  for (size_t i = 0; i < pages; i++) {
    for (size_t b = 0; b < kP; b += 511) {
      if (p[i * kP + b] != static_cast<char>(seed + static_cast<int>(i))) return false;
    }
  }
  return true;
}

TEST_CASE("Mremap: shrink unmaps the tail, grow in place keeps the address", "[mm][mremap]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  // Placed low in the window, so that the range after it is free.
  auto at = as.Mmap(as.window().start + (uint64_t{1} << 30), 8 * kP, kRW,
                    MAP_PRIVATE | MAP_ANONYMOUS);
  REQUIRE(at.ok());
  char* p = P(*at);
  Fill(p, 8, 1);
  auto r = as.Mremap(A(p), 8 * kP, 4 * kP, 0);
  REQUIRE(r.ok());
  CHECK(*r == A(p));
  CHECK(as.GetPte(A(p) + 5 * kP).raw() == 0);
  CHECK(Check(p, 4, 1));
  auto g = as.Mremap(A(p), 4 * kP, 16 * kP, 0);
  INFO(g.status().ToString());
  REQUIRE(g.ok());
  CHECK(*g == A(p));
  CHECK(Check(p, 4, 1));
  for (size_t i = 4; i < 16; i++) CHECK(p[i * kP] == 0);  // fresh pages are zero
  p[15 * kP] = 7;
  CHECK(as.nr_vmas() == 1);
  RequireInvariants(as);
}

TEST_CASE("Mremap: moving keeps every kind of page", "[mm][mremap]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  auto at = as.Mmap(as.window().start + (uint64_t{1} << 30), 32 * kP, kRW,
                    MAP_PRIVATE | MAP_ANONYMOUS);
  REQUIRE(at.ok());
  char* p = P(*at);
  Fill(p, 8, 3);                            // pages 0-7 written
  volatile char sink = p[20 * kP];           // page 20 read: the zero page
  (void)sink;
  REQUIRE(as.GetPte(A(p) + 20 * kP).special());
  // Block the in-place growth with a neighbour right after the range.
  auto blocker = as.Mmap(A(p) + 32 * kP, kP, kRW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
  REQUIRE(blocker.ok());
  CHECK(as.Mremap(A(p), 32 * kP, 64 * kP, 0).status().code() ==
        absl::StatusCode::kResourceExhausted);  // ENOMEM without MAYMOVE
  auto m = as.Mremap(A(p), 32 * kP, 64 * kP, MREMAP_MAYMOVE);
  INFO(m.status().ToString());
  REQUIRE(m.ok());
  REQUIRE(*m != A(p));
  char* q = P(*m);
  CHECK(Check(q, 8, 3));
  CHECK(as.GetPte(*m + 20 * kP).special());
  CHECK(q[20 * kP] == 0);
  CHECK(as.GetPte(A(p)).raw() == 0);
  q[20 * kP] = 9;  // COW from the moved zero page
  CHECK(q[20 * kP] == 9);
  q[40 * kP] = 1;  // the grown part
  RequireInvariants(as);
  // The old range is gone: mapping it again gives zeros.
  auto again = as.Mmap(A(p), kP, kRW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE);
  REQUIRE(again.ok());
  CHECK(p[0] == 0);
}

TEST_CASE("Mremap: MREMAP_FIXED replaces the target, DONTUNMAP leaves an empty old range",
          "[mm][mremap]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  char* src = MapAnon(as, 4 * kP);
  char* dst = MapAnon(as, 8 * kP);
  Fill(src, 4, 20);
  Fill(dst, 8, 40);
  auto f = as.Mremap(A(src), 4 * kP, 4 * kP, MREMAP_MAYMOVE | MREMAP_FIXED, A(dst) + 2 * kP);
  REQUIRE(f.ok());
  CHECK(*f == A(dst) + 2 * kP);
  CHECK(Check(dst + 2 * kP, 4, 20));
  CHECK(Check(dst, 2, 40));
  CHECK(Check(dst + 6 * kP, 2, 46));
  RequireInvariants(as);

  char* d2 = MapAnon(as, 2 * kP);
  Fill(d2, 2, 60);
  auto du = as.Mremap(A(d2), 2 * kP, 2 * kP, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
  REQUIRE(du.ok());
  CHECK(Check(P(*du), 2, 60));
  INFO("old " << A(d2) << " new " << *du << " pte " << as.GetPte(A(d2)).raw());
  CHECK(d2[0] == 0);  // still mapped, now empty
  d2[0] = 1;
  RequireInvariants(as);
}

TEST_CASE("Mremap: errors are Linux's", "[mm][mremap]") {
  auto env = MakeEnv(FaultMode::kSigsegv);
  AddressSpace& as = *env->as;
  char* p = MapAnon(as, 4 * kP);
  auto err = [&](absl::StatusOr<VirtAddr> r) { return r.ok() ? 0 : ToErrno(r.status()); };
  CHECK(err(as.Mremap(A(p) + 1, kP, 2 * kP, MREMAP_MAYMOVE)) == EINVAL);
  CHECK(err(as.Mremap(A(p), kP, 0, MREMAP_MAYMOVE)) == EINVAL);
  CHECK(err(as.Mremap(A(p), kP, 2 * kP, MREMAP_FIXED, A(p) + 64 * kP)) == EINVAL);
  CHECK(err(as.Mremap(A(p), kP, 2 * kP, MREMAP_MAYMOVE | MREMAP_DONTUNMAP)) == EINVAL);
  CHECK(err(as.Mremap(A(p), kP, kP, 1 << 10)) == EINVAL);
  CHECK(err(as.Mremap(A(p), 0, kP, MREMAP_MAYMOVE)) == EINVAL);  // dup of private memory
  CHECK(err(as.Mremap(A(p) - 64 * kP, kP, 2 * kP, MREMAP_MAYMOVE)) == EFAULT);
  CHECK(err(as.Mremap(A(p), 8 * kP, 16 * kP, MREMAP_MAYMOVE)) == EFAULT);  // spans a hole
  CHECK(err(as.Mremap(A(p), 2 * kP, 2 * kP, MREMAP_MAYMOVE | MREMAP_FIXED, A(p) + kP)) ==
        EINVAL);  // overlap
  RequireInvariants(as);
}

TEST_CASE("Mremap: swapped-out and swap-cache pages move without I/O", "[mm][mremap][swap]") {
  FaultMode mode = EMU_ALL_MODES();
  MachineOptions o;
  o.mem_limit = uint64_t{8} << 20;
  o.swap_bytes = uint64_t{64} << 20;
  auto env = MakeEnv(mode, o);
  AddressSpace& as = *env->as;
  constexpr size_t kPages = 4096;  // 16 MiB: twice the limit
  char* p = MapAnon(as, kPages * kP);
  for (size_t i = 0; i < kPages; i++) std::memcpy(p + i * kP, &i, sizeof(i));
  REQUIRE(as.nr_swap_ptes() > 0);
  // kswapd may still be working toward its high watermark: hold reclaim off
  // so that the counts compare the move alone.
  env->machine->reclaim()->BlockReclaim();
  uint64_t swap_ptes = as.nr_swap_ptes();
  uint64_t reads = env->machine->vmstat().Get(VmEvent::k_pswpin);
  auto m = as.Mremap(A(p), kPages * kP, (kPages + 16) * kP, MREMAP_MAYMOVE);
  uint64_t swap_ptes_after = as.nr_swap_ptes();
  uint64_t reads_after = env->machine->vmstat().Get(VmEvent::k_pswpin);
  env->machine->reclaim()->UnblockReclaim();
  INFO(m.status().ToString());
  REQUIRE(m.ok());
  CHECK(swap_ptes_after == swap_ptes);
  CHECK(reads_after == reads);
  REQUIRE(env->machine->CheckInvariants().ok());
  char* q = P(*m);
  for (size_t i = 0; i < kPages; i++) {
    size_t v;
    std::memcpy(&v, q + i * kP, sizeof(v));
    if (v != i) FAIL("page " << i << " holds " << v);
  }
  REQUIRE(env->machine->CheckInvariants().ok());
}

}  // namespace
}  // namespace emu
