// Pinned pages (AddressSpace::PinUserPages, = pin_user_pages): a pin makes
// its page exclusive and keeps it the page mapped at its address (seed 002),
// whatever reclaim, fork or a later write fault do; FOLL_FORCE and
// FOLL_NOZERO as Linux has them (seed 004).
#include <sys/mman.h>

#include <cstring>

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

VirtAddr A(const void* p) { return reinterpret_cast<VirtAddr>(p); }

char* In(const AddressSpace& to, const AddressSpace& from, const char* p) {
  return reinterpret_cast<char*>(to.window().start + (A(p) - from.window().start));
}

MachineOptions Limited() {
  MachineOptions o;
  o.mem_limit = uint64_t{8} << 20;
  o.swap_bytes = uint64_t{64} << 20;
  return o;
}

TEST_CASE("Pin: a write pin breaks COW first, and fork leaves the pinned page with its owner",
          "[pin]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  char* p = MapAnon(parent, 4 * kPageSize);
  std::memset(p, 1, 4 * kPageSize);
  auto child = parent.Fork();
  REQUIRE(child.ok());
  Pfn shared = parent.GetPte(A(p)).pfn();
  Pfn pin;
  REQUIRE(*parent.PinUserPages(A(p), 1, kGupWrite, &pin) == 1);
  CHECK(pin != shared);  // copied before it was pinned
  CHECK(parent.GetPte(A(p)).pfn() == pin);
  CHECK(parent.GetPte(A(p)).write());
  CHECK(m.vmstat().Get(VmEvent::k_cow_page) == 1);
  // A second fork: the child gets its own copy now; the pinned page stays
  // the parent's, writable, and sees the parent's writes.
  auto child2 = parent.Fork();
  REQUIRE(child2.ok());
  CHECK(parent.GetPte(A(p)).pfn() == pin);
  CHECK(parent.GetPte(A(p)).write());
  char* c2 = In(**child2, parent, p);
  CHECK((*child2)->GetPte(A(c2)).pfn() != pin);
  p[0] = 9;
  CHECK(static_cast<const char*>(m.FrameData(pin))[0] == 9);
  CHECK(c2[0] == 1);
  CHECK(In(**child, parent, p)[0] == 1);
  RequireMachineInvariants(m);
  parent.UnpinUserPages(&pin, 1);
  RequireMachineInvariants(m);
}

TEST_CASE("Pin: reclaim holding the page lock never forces a copy of a pinned page (seed 002)",
          "[pin][swap]") {
  FaultMode mode = GENERATE(FaultMode::kUffdSigbus, FaultMode::kUffdThread);
  auto env = MakeEnv(mode, Limited());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 1024;
  char* p = MapAnon(as, kPages * kPageSize);
  std::memset(p, 2, kPages * kPageSize);
  Pfn pin;
  REQUIRE(*as.PinUserPages(A(p), 1, kGupWrite, &pin) == 1);
  // Reclaim passes: the pinned page is kept (activated), and ageing it
  // write-protects it (write sampling), so the next write faults.
  for (int i = 0; i < 8 && as.GetPte(A(p)).write(); i++) (void)test::ShrinkSettled(m);
  REQUIRE(as.GetPte(A(p)).present());
  REQUIRE(as.GetPte(A(p)).pfn() == pin);
  REQUIRE_FALSE(as.GetPte(A(p)).write());
  // Reclaim holds the page lock at the moment of the write fault.
  Page& page = m.mem_map().page(pin);
  REQUIRE(page.TryLock());
  const uint64_t cow = m.vmstat().Get(VmEvent::k_cow_page);
  p[1] = 3;
  page.Unlock();
  CHECK(as.GetPte(A(p)).pfn() == pin);  // reused, not copied
  CHECK(m.vmstat().Get(VmEvent::k_cow_page) == cow);
  CHECK(static_cast<const char*>(m.FrameData(pin))[1] == 3);  // the pin sees the write
  RequireMachineInvariants(m);
  as.UnpinUserPages(&pin, 1);
  (void)test::ShrinkSettled(m);
  CHECK(p[1] == 3);
  RequireMachineInvariants(m);
}

TEST_CASE("Pin: reclaim never takes a pinned page", "[pin][swap]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode, Limited());
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  constexpr size_t kPages = 64;
  char* p = MapAnon(as, kPages * kPageSize);
  std::memset(p, 4, kPages * kPageSize);
  Pfn pins[kPages];
  REQUIRE(*as.PinUserPages(A(p), kPages, 0, pins) == kPages);
  (void)test::ShrinkSettled(m);
  (void)test::ShrinkSettled(m);
  for (size_t i = 0; i < kPages; i++) {
    Pte pte = as.GetPte(A(p + i * kPageSize));
    INFO("page " << i);
    CHECK(pte.present());
    CHECK(pte.pfn() == pins[i]);
  }
  RequireMachineInvariants(m);
  as.UnpinUserPages(pins, kPages);
  (void)test::ShrinkSettled(m);
  (void)test::ShrinkSettled(m);
  CHECK(as.nr_swap_ptes() > 0);
  CHECK(p[5 * kPageSize] == 4);
  RequireMachineInvariants(m);
}

TEST_CASE("Pin: FOLL_FORCE writes through a read-only private mapping by breaking COW",
          "[pin]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& parent = *env->as;
  Machine& m = *env->machine;
  char* p = MapAnon(parent, 2 * kPageSize);
  std::memset(p, 5, 2 * kPageSize);
  REQUIRE(parent.Mprotect(A(p), 2 * kPageSize, PROT_READ).ok());
  auto child = parent.Fork();
  REQUIRE(child.ok());
  char* c = In(**child, parent, p);
  Pfn shared = parent.GetPte(A(p)).pfn();
  Pfn pin;
  CHECK(ToErrno((*child)->PinUserPages(A(c), 1, kGupWrite, &pin).status()) == EFAULT);
  REQUIRE(*(*child)->PinUserPages(A(c), 1, kGupWrite | kGupForce, &pin) == 1);
  Pte cp = (*child)->GetPte(A(c));
  CHECK(cp.pfn() == pin);
  CHECK(pin != shared);
  CHECK_FALSE(cp.write());  // still a read-only mapping
  CHECK(m.mem_map().page(pin).mapcount.load() == 1);
  CHECK(m.mem_map().page(shared).mapcount.load() == 1);
  CHECK(static_cast<const char*>(m.FrameData(pin))[0] == 5);
  CHECK(c[0] == 5);
  RequireMachineInvariants(m);
  (*child)->UnpinUserPages(&pin, 1);
}

TEST_CASE("Pin: FOLL_NOZERO gives no page for a zero-page PTE (seed 004)", "[pin]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  char* p = MapAnon(as, 2 * kPageSize);
  REQUIRE(p[0] == 0);  // a zero-page PTE
  REQUIRE(as.GetPte(A(p)).special());
  Pfn got = Pfn{12345};
  REQUIRE(*as.PinUserPages(A(p), 1, kGupNoZero, &got) == 1);
  CHECK(got == kZeroPfn);
  CHECK(as.GetPte(A(p)).special());
  REQUIRE(*as.PinUserPages(A(p), 1, 0, &got) == 1);
  CHECK(got == kZeroPfn);  // the zero page, uncounted
  REQUIRE(*as.PinUserPages(A(p), 1, kGupWrite, &got) == 1);
  CHECK(got != kZeroPfn);
  CHECK_FALSE(as.GetPte(A(p)).special());
  as.UnpinUserPages(&got, 1);
  RequireMachineInvariants(as.machine());
}

TEST_CASE("Pin: a pinned page outlives munmap; bad requests fail as Linux's do", "[pin]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  Machine& m = *env->machine;
  char* p = MapAnon(as, 2 * kPageSize);
  std::memset(p, 6, 2 * kPageSize);
  Pfn pins[2];
  REQUIRE(*as.PinUserPages(A(p), 2, kGupWrite, pins) == 2);
  REQUIRE(as.Munmap(A(p), 2 * kPageSize).ok());
  CHECK(static_cast<const char*>(m.FrameData(pins[1]))[100] == 6);
  CHECK(m.mem_map().nr_used() == 2);
  as.UnpinUserPages(pins, 2);
  CHECK(m.mem_map().nr_used() == 0);
  CHECK((m.frame_pool() == nullptr || m.frame_pool()->nr_frames() == 0));
  char* q = MapAnon(as, kPageSize);
  CHECK(ToErrno(as.PinUserPages(A(q) + 1, 1, 0, pins).status()) == EINVAL);
  CHECK(ToErrno(as.PinUserPages(A(q), 1, 1u << 7, pins).status()) == EINVAL);
  CHECK(ToErrno(as.PinUserPages(A(q) + kPageSize, 1, 0, pins).status()) == EFAULT);
  // A range running into a hole pins what it can (Linux returns the count).
  auto partial = as.PinUserPages(A(q), 2, 0, pins);
  REQUIRE(partial.ok());
  CHECK(*partial == 1);
  as.UnpinUserPages(pins, 1);
  RequireMachineInvariants(m);
}

}  // namespace
}  // namespace emu
