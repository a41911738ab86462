// mmap/munmap/mprotect/madvise/mlock semantics of AddressSpace.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "test_util.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

namespace emu {
namespace {

using test::MakeEnv;
using test::MapAnon;
using test::RequireInvariants;

constexpr int kRW = PROT_READ | PROT_WRITE;
constexpr int kAnon = MAP_PRIVATE | MAP_ANONYMOUS;

VirtAddr A(const char* p) { return reinterpret_cast<VirtAddr>(p); }

TEST_CASE("Mmap: a free hint is honoured, a taken one is not, MAP_FIXED replaces contents",
          "[mm]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  VirtAddr hint = as.window().start + (uint64_t{1} << 20);
  auto a = as.Mmap(hint, 4 * kPageSize, kRW, kAnon);
  REQUIRE(a.ok());
  CHECK(*a == hint);
  auto b = as.Mmap(hint, 4 * kPageSize, kRW, kAnon);  // taken: placed elsewhere
  REQUIRE(b.ok());
  CHECK(*b != hint);
  auto unaligned_hint = as.Mmap(hint + 8 * kPageSize + 1, kPageSize, kRW, kAnon);
  REQUIRE(unaligned_hint.ok());
  CHECK(*unaligned_hint == hint + 9 * kPageSize);  // rounded up, as Linux does
  char* p = reinterpret_cast<char*>(*a);
  std::memset(p, 7, 4 * kPageSize);
  auto f = as.Mmap(hint + kPageSize, kPageSize, kRW, kAnon | MAP_FIXED);
  REQUIRE(f.ok());
  CHECK(*f == hint + kPageSize);
  CHECK(p[0] == 7);
  CHECK(p[kPageSize] == 0);  // replaced by a fresh mapping
  CHECK(p[2 * kPageSize] == 7);
  CHECK(as.rss_anon() == 3);
  auto nr = as.Mmap(hint, kPageSize, kRW, kAnon | MAP_FIXED_NOREPLACE);
  CHECK(ToErrno(nr.status()) == EEXIST);
  RequireInvariants(as);
}

TEST_CASE("Mmap: requests outside or larger than the window get ENOMEM", "[mm]") {
  auto env = MakeEnv(FaultMode::kSigsegv);
  AddressSpace& as = *env->as;
  CHECK(ToErrno(as.Mmap(0, as.window().len_bytes() + kPageSize, kRW, kAnon).status()) == ENOMEM);
  CHECK(ToErrno(as.Mmap(as.window().end, kPageSize, kRW, kAnon | MAP_FIXED).status()) == ENOMEM);
  CHECK(ToErrno(as.Mmap(as.window().end - kPageSize, 2 * kPageSize, kRW, kAnon | MAP_FIXED)
                    .status()) == ENOMEM);
  auto whole = as.Mmap(0, as.window().len_bytes(), PROT_NONE, kAnon);
  REQUIRE(whole.ok());
  CHECK(ToErrno(as.Mmap(0, kPageSize, kRW, kAnon).status()) == ENOMEM);  // window is full
  REQUIRE(as.Munmap(*whole, as.window().len_bytes()).ok());
  CHECK(ToErrno(as.Mmap(0, 0, kRW, kAnon).status()) == EINVAL);
  CHECK(ToErrno(as.Mmap(0, kPageSize, kRW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS).status()) ==
        EINVAL);
  CHECK(ToErrno(as.Mmap(0, kPageSize, kRW, MAP_PRIVATE).status()) == EBADF);
  RequireInvariants(as);
}

TEST_CASE("Munmap: a partial unmap splits the VMA and drops only its pages", "[mm]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  char* p = MapAnon(as, 16 * kPageSize);
  std::memset(p, 1, 16 * kPageSize);
  REQUIRE(as.Munmap(A(p) + 4 * kPageSize, 4 * kPageSize).ok());
  CHECK(as.nr_vmas() == 2);
  CHECK(as.rss_anon() == 12);
  CHECK(as.GetPte(A(p) + 4 * kPageSize).none());
  CHECK(p[3 * kPageSize] == 1);
  CHECK(p[8 * kPageSize] == 1);
  REQUIRE(as.Munmap(A(p) + 4 * kPageSize, 4 * kPageSize).ok());  // a hole: fine
  CHECK(ToErrno(as.Munmap(A(p) + 1, kPageSize)) == EINVAL);
  CHECK(ToErrno(as.Munmap(A(p), 0)) == EINVAL);
  REQUIRE(as.Mmap(A(p) + 4 * kPageSize, 4 * kPageSize, kRW, kAnon | MAP_FIXED).ok());
  CHECK(as.nr_vmas() == 1);  // merged back with both neighbours
  RequireInvariants(as);
}

TEST_CASE("Mprotect: a partial change splits the VMA, the reverse change merges it back",
          "[mm]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  char* p = MapAnon(as, 16 * kPageSize);
  std::memset(p, 3, 16 * kPageSize);
  REQUIRE(as.Mprotect(A(p) + 4 * kPageSize, 4 * kPageSize, PROT_READ).ok());
  CHECK(as.nr_vmas() == 3);
  CHECK_FALSE(as.GetPte(A(p) + 4 * kPageSize).write());
  CHECK(as.GetPte(A(p)).write());
  CHECK(p[5 * kPageSize] == 3);  // still readable
  REQUIRE(as.Mprotect(A(p) + 4 * kPageSize, 4 * kPageSize, PROT_NONE).ok());
  REQUIRE(as.Mprotect(A(p) + 4 * kPageSize, 4 * kPageSize, kRW).ok());
  CHECK(as.nr_vmas() == 1);
  p[5 * kPageSize] = 4;  // writable again, data kept across PROT_NONE
  CHECK(p[6 * kPageSize] == 3);
  CHECK(as.GetPte(A(p) + 4 * kPageSize).write());
  RequireInvariants(as);
}

TEST_CASE("Mprotect: a hole stops the change with ENOMEM after the mapped prefix", "[mm]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  char* p = MapAnon(as, 12 * kPageSize);
  REQUIRE(as.Munmap(A(p) + 4 * kPageSize, 4 * kPageSize).ok());
  CHECK(ToErrno(as.Mprotect(A(p), 12 * kPageSize, PROT_READ)) == ENOMEM);
  p[9 * kPageSize] = 1;  // after the hole: untouched, still writable
  Pte first = as.GetPte(A(p));
  CHECK_FALSE(first.write());
  CHECK(ToErrno(as.Mprotect(A(p) + 1, kPageSize, PROT_READ)) == EINVAL);
  CHECK(ToErrno(as.Mprotect(A(p), kPageSize, 0x10)) == EINVAL);
  CHECK(as.Mprotect(A(p), 0, PROT_READ).ok());
  CHECK(ToErrno(as.Mprotect(A(p), kPageSize, PROT_READ | PROT_GROWSDOWN)) == EINVAL);
  RequireInvariants(as);
}

TEST_CASE("Madvise: mapped parts are advised even across a hole, which gives ENOMEM", "[mm]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  char* p = MapAnon(as, 12 * kPageSize);
  std::memset(p, 9, 12 * kPageSize);
  REQUIRE(as.Munmap(A(p) + 4 * kPageSize, 4 * kPageSize).ok());
  CHECK(ToErrno(as.Madvise(A(p), 12 * kPageSize, MADV_DONTNEED)) == ENOMEM);
  CHECK(p[0] == 0);
  CHECK(p[10 * kPageSize] == 0);  // beyond the hole: also dropped
  CHECK(as.rss_anon() == 0);
  CHECK(ToErrno(as.Madvise(A(p), kPageSize, 12345)) == EINVAL);
  CHECK(ToErrno(as.Madvise(A(p), 0, 12345)) == EINVAL);  // advice is checked first
  CHECK(as.Madvise(A(p), 0, MADV_DONTNEED).ok());
  CHECK(as.Madvise(A(p), kPageSize, MADV_WILLNEED).ok());
  REQUIRE(as.Mlock(A(p), kPageSize).ok());
  CHECK(ToErrno(as.Madvise(A(p), kPageSize, MADV_DONTNEED)) == EINVAL);  // locked
  RequireInvariants(as);
}

TEST_CASE("Mlock: unaligned starts round down, holes give ENOMEM, munlock merges back",
          "[mm][mlock]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  char* p = MapAnon(as, 8 * kPageSize);
  REQUIRE(as.Mlock(A(p) + 10, kPageSize).ok());  // covers pages 0 and 1
  CHECK(as.rss_anon() == 2);
  CHECK(as.nr_vmas() == 2);
  REQUIRE(as.Munlock(A(p), 8 * kPageSize).ok());
  CHECK(as.nr_vmas() == 1);
  REQUIRE(as.Munmap(A(p) + 8 * kPageSize - kPageSize, kPageSize).ok());
  CHECK(ToErrno(as.Mlock(A(p), 8 * kPageSize)) == ENOMEM);
  CHECK(as.rss_anon() == 2);  // the mapped prefix is locked but, as in Linux, not populated
  CHECK(as.nr_vmas() == 1);   // ... and the whole prefix is one VM_LOCKED vma
  CHECK(as.Mlock(A(p), static_cast<size_t>(-1)).ok());  // length rounds to 0: no-op
  CHECK(ToErrno(as.Mlock(A(p), static_cast<size_t>(-4096))) == EINVAL);  // wraps
  char* none = MapAnon(as, 2 * kPageSize, PROT_NONE);
  CHECK(ToErrno(as.Mlock(A(none), 2 * kPageSize)) == ENOMEM);  // cannot populate PROT_NONE
  RequireInvariants(as);
}

TEST_CASE("MlockAll: MCL_CURRENT locks and populates every VMA, MCL_FUTURE later ones; "
          "munlockall undoes both",
          "[mm][mlock]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  CHECK(ToErrno(as.MlockAll(0)) == EINVAL);
  CHECK(ToErrno(as.MlockAll(MCL_ONFAULT)) == EINVAL);
  CHECK(ToErrno(as.MlockAll(0x100)) == EINVAL);
  char* p = MapAnon(as, 8 * kPageSize);
  char* none = MapAnon(as, 2 * kPageSize, PROT_NONE);
  REQUIRE(as.MlockAll(MCL_CURRENT).ok());
  CHECK(as.rss_anon() == 8);  // populated with real pages (no zero page); PROT_NONE skipped
  CHECK(as.GetPte(A(p)).present());
  CHECK(!as.GetPte(A(p)).special());
  CHECK(!as.GetPte(A(none)).present());
  // Not MCL_FUTURE: a new mapping is neither locked nor populated.
  char* q = MapAnon(as, 4 * kPageSize);
  CHECK(as.rss_anon() == 8);
  REQUIRE(as.MlockAll(MCL_FUTURE).ok());
  char* r = MapAnon(as, 4 * kPageSize);
  CHECK(as.rss_anon() == 12);  // populated at mmap
  REQUIRE(as.MlockAll(MCL_FUTURE | MCL_ONFAULT).ok());
  char* s = MapAnon(as, 4 * kPageSize);
  CHECK(as.rss_anon() == 12);  // locked on fault: not populated
  REQUIRE(as.MunlockAll().ok());
  char* t = MapAnon(as, 4 * kPageSize);
  CHECK(as.rss_anon() == 12);
  // After munlockall everything merges back into unlocked VMAs where the
  // protections agree; pages stay.
  REQUIRE(as.Munmap(A(q), 4 * kPageSize).ok());
  REQUIRE(as.Munmap(A(r), 4 * kPageSize).ok());
  REQUIRE(as.Munmap(A(s), 4 * kPageSize).ok());
  REQUIRE(as.Munmap(A(t), 4 * kPageSize).ok());
  CHECK(as.rss_anon() == 8);
  RequireInvariants(as);
}

TEST_CASE("MapForeign: a native mapping inside the window is the kernel's until unmapped",
          "[mm][foreign]") {
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  AddressSpace& as = *env->as;
  char* p = MapAnon(as, 16 * kPageSize);
  std::memset(p, 7, 16 * kPageSize);
  int fd = memfd_create("mm_ops_test", 0);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, 4 * kPageSize) == 0);
  char* mid = p + 4 * kPageSize;
  auto map_native = [&] {
    void* r = mmap(mid, 4 * kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    return r == MAP_FAILED ? errno : 0;
  };
  CHECK(ToErrno(as.MapForeign(A(mid), 4 * kPageSize, /*noreplace=*/true, map_native)) == EEXIST);
  REQUIRE(as.MapForeign(A(mid), 4 * kPageSize, /*noreplace=*/false, map_native).ok());
  CHECK(as.nr_vmas() == 3);
  CHECK(as.rss_anon() == 12);  // the emulated pages under it are gone
  mid[0] = 42;                 // the kernel's page: no emulator fault
  char byte = 0;
  REQUIRE(pread(fd, &byte, 1, 0) == 1);
  CHECK(byte == 42);
  CHECK(p[0] == 7);
  CHECK(p[8 * kPageSize] == 7);
  // The kernel's: mprotect and madvise reach it; mremap does not move it.
  REQUIRE(as.Mprotect(A(mid), 4 * kPageSize, PROT_READ).ok());
  REQUIRE(as.Madvise(A(mid), 4 * kPageSize, MADV_DONTNEED).ok());
  CHECK(mid[0] == 42);  // shared memory keeps its contents
  CHECK(ToErrno(as.Mremap(A(mid), 4 * kPageSize, 8 * kPageSize, MREMAP_MAYMOVE, 0).status()) ==
        EINVAL);
  // No emulated mapping is placed over it.
  for (int i = 0; i < 8; i++) {
    char* q = MapAnon(as, 4 * kPageSize);
    CHECK((q + 4 * kPageSize <= mid || q >= mid + 4 * kPageSize));
  }
  RequireInvariants(as);
  // Unmapped: the emulator's again, zeros on the next fault.
  REQUIRE(as.Munmap(A(mid), 4 * kPageSize).ok());
  auto again = as.Mmap(A(mid), 4 * kPageSize, kRW, kAnon | MAP_FIXED);
  REQUIRE(again.ok());
  CHECK(mid[0] == 0);
  mid[1] = 5;
  CHECK(as.GetPte(A(mid)).present());
  REQUIRE(pread(fd, &byte, 1, 0) == 1);
  CHECK(byte == 42);  // the file kept its byte; the range is no longer it
  close(fd);
  RequireInvariants(as);
}

}  // namespace
}  // namespace emu
