// Helpers shared by the tests: fault-mode matrices, skips, fork reporting.
#ifndef EMU_TESTS_TEST_UTIL_H_
#define EMU_TESTS_TEST_UTIL_H_

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <catch2/catch.hpp>

#include "absl/functional/function_ref.h"
#include "emu/machine.h"
#include "fault/host_backends.h"
#include "emu/status.h"
#include "fault/machine_factory.h"

namespace emu::test {

inline constexpr int kSkip = 77;  // CTest SKIP_RETURN_CODE

// Exits with 77 (skipped) when `mode` needs userfaultfd and it is not usable
// here. Never reports a pass for a test that did not run.
inline void RequireMode(FaultMode mode) {
  if (mode == FaultMode::kSigsegv) return;
  std::string why;
  if (!UffdAvailable(&why)) {
    std::fprintf(stderr, "SKIP: fault mode %s needs userfaultfd: %s\n",
                 std::string(FaultModeName(mode)).c_str(), why.c_str());
    std::exit(kSkip);
  }
}

// GENERATE over every fault mode.
#define EMU_ALL_MODES() \
  GENERATE(::emu::FaultMode::kUffdSigbus, ::emu::FaultMode::kUffdThread, ::emu::FaultMode::kSigsegv)

struct Env {
  std::unique_ptr<Machine> machine;
  std::unique_ptr<AddressSpace> as;
  ~Env() {
    as.reset();  // address spaces go before their machine
    machine.reset();
  }
};

inline std::unique_ptr<Env> MakeEnv(FaultMode mode, MachineOptions opts = {}) {
  RequireMode(mode);
  opts.fault_mode = mode;
  if (opts.arena_bytes == MachineOptions{}.arena_bytes) opts.arena_bytes = uint64_t{8} << 30;
  auto env = std::make_unique<Env>();
  auto m = CreateMachine(opts);
  INFO("CreateMachine: " << m.status().ToString());
  REQUIRE(m.ok());
  env->machine = std::move(*m);
  auto as = env->machine->CreateAddressSpace(uint64_t{2} << 30);
  REQUIRE(as.ok());
  env->as = std::move(*as);
  return env;
}

inline char* MapAnon(AddressSpace& as, size_t len, int prot = PROT_READ | PROT_WRITE,
                     int flags = 0) {
  auto p = as.Mmap(0, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags);
  INFO("Mmap: " << p.status().ToString());
  REQUIRE(p.ok());
  return reinterpret_cast<char*>(*p);
}

// In handler-thread mode a faulting thread can go on before the handler
// has published its PTE: the kernel lets the access retry as soon as the
// host allows it (userfaultfd_must_wait no longer finds the page protected),
// which may come before the handler unlocks the PTE. The program sees the
// right memory; a test that reads the PTE or checks invariants right after
// the access waits for that moment to pass (5 s at most; a PTE locked for
// good still fails).
inline bool Settles(absl::FunctionRef<bool()> settled) {
  for (int i = 0; i < 5000; i++) {
    if (settled()) return true;
    usleep(1000);
  }
  return settled();
}

// The PTE at `addr` once no fault is changing it (see Settles).
inline Pte SettledPte(AddressSpace& as, VirtAddr addr) {
  Settles([&] { return !as.GetPte(addr).locked(); });
  return as.GetPte(addr);
}

// CheckInvariants of the machine, once no fault is publishing a PTE.
inline absl::Status SettledInvariants(absl::FunctionRef<absl::Status()> check) {
  absl::Status s;
  Settles([&] {
    s = check();
    return s.ok() || s.message().find("in flight") == absl::string_view::npos;
  });
  return s;
}

// Reclaims down to `target` pages once no fault is publishing a PTE.
// Reclaim passes over a PTE being published, so right after an access in
// handler-thread mode (see Settles) it could leave that page resident.
inline absl::Status ShrinkSettled(Machine& m, uint64_t target = 0) {
  (void)SettledInvariants([&] { return m.CheckInvariants(); });
  return m.reclaim()->ShrinkTo(target);
}

inline void RequireInvariants(AddressSpace& as) {
  absl::Status s = SettledInvariants([&] { return as.CheckInvariants(); });
  INFO(s.ToString());
  REQUIRE(s.ok());
  absl::Status mm = as.machine().mem_map().CheckInvariants();
  INFO(mm.ToString());
  REQUIRE(mm.ok());
}

inline uint64_t Stat(Machine& m, VmEvent e) { return m.vmstat().Get(e); }

// Counter `e` once it reaches `at_least`: in handler-thread mode the access a
// fault served can go on before the handler has counted it (see Settles).
inline uint64_t SettledStat(Machine& m, VmEvent e, uint64_t at_least) {
  Settles([&] { return Stat(m, e) >= at_least; });
  return Stat(m, e);
}

// Runs `fn` in a forked child and returns its wait status. The child reports
// only through its exit code and signals (cow.c style: no Catch2 there).
template <typename Fn>
int RunInChild(Fn&& fn) {
  fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    fn();
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

}  // namespace emu::test

#endif  // EMU_TESTS_TEST_UTIL_H_
