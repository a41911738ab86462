// System calls that read or write memory served by emu, on every kind of page.
//
// In the handler-thread mode a fault the kernel takes on our memory is
// resolved like any other, so every call works on every page. In the SIGBUS
// and SIGSEGV modes a fault taken inside the kernel cannot be delivered to the
// emulator: the call fails with EFAULT and consumes nothing (Linux's
// behaviour for a userfaultfd SIGBUS range or a PROT_NONE page), and
// AddressSpace::FaultInPages() before the call makes it work. These tests pin
// down exactly that contract.
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>

#include "test_util.h"

namespace emu {
namespace {

using test::MakeEnv;
using test::MapAnon;
using test::RequireInvariants;

enum class Kind { kNeverTouched, kZeroPage, kWritten };
const char* Name(Kind k) {
  return k == Kind::kNeverTouched ? "never touched" : k == Kind::kZeroPage ? "zero page" : "written";
}

// Prepares one page of the given kind and returns it.
char* Prepare(AddressSpace& as, Kind kind) {
  char* p = MapAnon(as, kPageSize);
  if (kind == Kind::kZeroPage) {
    CHECK(*static_cast<volatile char*>(p) == 0);
  } else if (kind == Kind::kWritten) {
    std::memset(p, 'w', kPageSize);
  }
  return p;
}

bool KernelFaultsReachEmu(FaultMode mode) { return mode == FaultMode::kUffdThread; }

TEST_CASE("write(2) from emu memory: works where the kernel can read the page", "[syscall]") {
  FaultMode mode = EMU_ALL_MODES();
  Kind kind = GENERATE(Kind::kNeverTouched, Kind::kZeroPage, Kind::kWritten);
  INFO("mode " << FaultModeName(mode) << ", page " << Name(kind));
  auto env = MakeEnv(mode);
  char* p = Prepare(*env->as, kind);
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  ssize_t n = write(fds[1], p, 64);
  // A zero page or written page is present for reads in every mode.
  bool expect_ok = KernelFaultsReachEmu(mode) || kind != Kind::kNeverTouched;
  if (expect_ok) {
    CHECK(n == 64);
    char buf[64];
    REQUIRE(read(fds[0], buf, 64) == 64);
    CHECK(buf[0] == (kind == Kind::kWritten ? 'w' : 0));
  } else {
    CHECK(n == -1);
    CHECK(errno == EFAULT);
    REQUIRE(env->as->FaultInPages(reinterpret_cast<VirtAddr>(p), 64, false).ok());
    CHECK(write(fds[1], p, 64) == 64);
  }
  close(fds[0]);
  close(fds[1]);
  RequireInvariants(*env->as);
}

TEST_CASE("read(2) into emu memory: works where the kernel can write; EFAULT consumes nothing",
          "[syscall]") {
  FaultMode mode = EMU_ALL_MODES();
  Kind kind = GENERATE(Kind::kNeverTouched, Kind::kZeroPage, Kind::kWritten);
  INFO("mode " << FaultModeName(mode) << ", page " << Name(kind));
  auto env = MakeEnv(mode);
  char* p = Prepare(*env->as, kind);
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  REQUIRE(write(fds[1], "hello", 5) == 5);
  ssize_t n = read(fds[0], p + 100, 5);
  bool expect_ok = KernelFaultsReachEmu(mode) || kind == Kind::kWritten;
  if (!expect_ok) {
    CHECK(n == -1);
    CHECK(errno == EFAULT);
    REQUIRE(env->as->FaultInPages(reinterpret_cast<VirtAddr>(p) + 100, 5, true).ok());
    n = read(fds[0], p + 100, 5);  // the data is still in the pipe
  }
  CHECK(n == 5);
  CHECK(std::memcmp(p + 100, "hello", 5) == 0);
  CHECK(p[99] == (kind == Kind::kWritten ? 'w' : 0));
  close(fds[0]);
  close(fds[1]);
  RequireInvariants(*env->as);
}

TEST_CASE("process_vm_readv/writev on emu memory follow the same contract", "[syscall]") {
  FaultMode mode = EMU_ALL_MODES();
  Kind kind = GENERATE(Kind::kNeverTouched, Kind::kZeroPage, Kind::kWritten);
  INFO("mode " << FaultModeName(mode) << ", page " << Name(kind));
  auto env = MakeEnv(mode);
  char* p = Prepare(*env->as, kind);
  char local[16] = "from-local-buf";
  iovec lv{local, 16}, rv{p, 16};
  ssize_t w = process_vm_writev(getpid(), &lv, 1, &rv, 1, 0);
  bool writes_ok = KernelFaultsReachEmu(mode) || kind == Kind::kWritten;
  if (writes_ok) {
    CHECK(w == 16);
    CHECK(std::memcmp(p, local, 16) == 0);
  } else {
    CHECK(w == -1);
    CHECK(errno == EFAULT);
  }
  char back[16] = {};
  iovec bv{back, 16};
  ssize_t r = process_vm_readv(getpid(), &bv, 1, &rv, 1, 0);
  bool reads_ok = KernelFaultsReachEmu(mode) || kind != Kind::kNeverTouched;
  if (reads_ok) {
    CHECK(r == 16);
    CHECK(std::memcmp(back, p, 16) == 0);
  } else {
    CHECK(r == -1);
  }
  RequireInvariants(*env->as);
}

}  // namespace
}  // namespace emu
