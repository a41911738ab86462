// Real faults stay real: an access the emulated MMU forbids ends in SIGSEGV
// with the right si_addr and si_code, exactly as without the emulator, and
// signals that are not emulator faults reach the program's own handler.
// Each access runs in a forked child that reports through a pipe and its exit
// status (cow.c style).
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

namespace emu {
namespace {

using test::MakeEnv;
using test::MapAnon;
using test::RunInChild;

struct Report {
  int signo;
  int code;
  uintptr_t addr;
};
int g_report_fd = -1;

// Exits with a raw exit_group: under ASan, _exit() is preceded by
// __asan_handle_no_return(), which may allocate, and a child forked from a
// multithreaded parent must not.
__attribute__((no_sanitize("address", "undefined"))) void ReportHandler(int sig, siginfo_t* info,
                                                                         void*) {
  Report r{sig, info->si_code, reinterpret_cast<uintptr_t>(info->si_addr)};
  ssize_t ignored = write(g_report_fd, &r, sizeof(r));
  (void)ignored;
  syscall(SYS_exit_group, 0);
}

// The program's handler must be in place before the first machine exists:
// emu forwards to the handler it found when it installed its own.
void InstallReportHandler() {
  static bool done = [] {
    struct sigaction sa {};
    sa.sa_sigaction = ReportHandler;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
    return true;
  }();
  (void)done;
}

// Runs `access` in a child and returns what its signal handler saw.
template <typename Fn>
Report Probe(Fn&& access) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  int status = RunInChild([&] {
    close(fds[0]);
    g_report_fd = fds[1];
    access();
    _exit(3);  // no signal
  });
  close(fds[1]);
  Report r{0, 0, 0};
  ssize_t n = read(fds[0], &r, sizeof(r));
  close(fds[0]);
  INFO("child status " << status);
  CHECK(WIFEXITED(status));
  if (n != sizeof(r)) r.signo = -WEXITSTATUS(status);
  return r;
}

TEST_CASE("An access to a PROT_NONE page ends in SIGSEGV/SEGV_ACCERR at the exact address",
          "[signal]") {
  InstallReportHandler();
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  char* p = MapAnon(*env->as, 4 * kPageSize, PROT_NONE);
  for (bool write : {false, true}) {
    INFO("mode " << FaultModeName(mode) << (write ? " write" : " read"));
    Report r = Probe([&] {
      volatile char* q = p + kPageSize + 123;
      if (write) {
        *q = 1;
      } else {
        (void)*q;
      }
    });
    CHECK(r.signo == SIGSEGV);
    CHECK(r.code == SEGV_ACCERR);
    CHECK(r.addr == reinterpret_cast<uintptr_t>(p + kPageSize + 123));
  }
}

TEST_CASE("A write to a read-only mapping ends in SIGSEGV/SEGV_ACCERR, also after a read",
          "[signal]") {
  InstallReportHandler();
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  char* p = MapAnon(*env->as, 4 * kPageSize, PROT_READ);
  CHECK(*static_cast<volatile char*>(p) == 0);  // zero page mapped
  for (int page : {0, 2}) {                      // mapped zero page, and a missing one
    INFO("mode " << FaultModeName(mode) << " page " << page);
    Report r = Probe([&] { *static_cast<volatile char*>(p + page * kPageSize + 5) = 1; });
    CHECK(r.signo == SIGSEGV);
    CHECK(r.code == SEGV_ACCERR);
    CHECK(r.addr == reinterpret_cast<uintptr_t>(p + page * kPageSize + 5));
  }
}

TEST_CASE("Executing a readable, writable, not executable page ends in SIGSEGV/SEGV_ACCERR",
          "[signal]") {
  // The signal handler retries a SIGSEGV whose access the VMA allows (the
  // host mid-change); an instruction fetch is never such an access.
  InstallReportHandler();
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  char* p = MapAnon(*env->as, kPageSize, PROT_READ | PROT_WRITE);
  p[0] = static_cast<char>(0xc3);  // ret
  INFO("mode " << FaultModeName(mode));
  Report r = Probe([&] { reinterpret_cast<void (*)()>(p)(); });
  CHECK(r.signo == SIGSEGV);
  CHECK(r.code == SEGV_ACCERR);
  CHECK(r.addr == reinterpret_cast<uintptr_t>(p));
}

TEST_CASE("An access to an unmapped hole of the address space ends in SIGSEGV/SEGV_MAPERR",
          "[signal]") {
  InstallReportHandler();
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  char* p = MapAnon(*env->as, 4 * kPageSize);
  REQUIRE(env->as->Munmap(reinterpret_cast<VirtAddr>(p) + kPageSize, kPageSize).ok());
  Report r = Probe([&] { *static_cast<volatile char*>(p + kPageSize + 8) = 1; });
  INFO("mode " << FaultModeName(mode));
  CHECK(r.signo == SIGSEGV);
  CHECK(r.code == SEGV_MAPERR);
  CHECK(r.addr == reinterpret_cast<uintptr_t>(p + kPageSize + 8));
}

TEST_CASE("A fault outside every machine reaches the program's handler untouched", "[signal]") {
  InstallReportHandler();
  FaultMode mode = EMU_ALL_MODES();
  auto env = MakeEnv(mode);
  void* outside = mmap(nullptr, kPageSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(outside != MAP_FAILED);
  Report r = Probe([&] { *static_cast<volatile char*>(outside) = 1; });
  CHECK(r.signo == SIGSEGV);
  CHECK(r.code == SEGV_ACCERR);
  CHECK(r.addr == reinterpret_cast<uintptr_t>(outside));
  munmap(outside, kPageSize);
}

TEST_CASE("Without a program handler, a bad access kills the process with SIGSEGV", "[signal]") {
  FaultMode mode = EMU_ALL_MODES();
  int status = 0;
  {
    auto env = MakeEnv(mode);
    char* p = MapAnon(*env->as, kPageSize, PROT_NONE);
    status = RunInChild([&] {
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      sigaction(SIGSEGV, &dfl, nullptr);  // this child: default action...
      sigaction(SIGBUS, &dfl, nullptr);
      MachineOptions o2;
      o2.fault_mode = mode;
      o2.arena_bytes = 1ull << 30;
      auto m2 = CreateMachine(o2);
      if (!m2.ok()) _exit(4);  // ...then a machine chains to it
      auto as2 = (*m2)->CreateAddressSpace();
      auto q = (*as2)->Mmap(0, kPageSize, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
      *reinterpret_cast<volatile char*>(*q) = 1;
      _exit(5);
    });
    (void)p;
  }
  INFO("mode " << FaultModeName(mode) << " status " << status);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGSEGV);
}

TEST_CASE("Running out of frames ends the faulting access in SIGBUS with a message",
          "[signal][oom]") {
  InstallReportHandler();
  FaultMode mode = EMU_ALL_MODES();
  test::RequireMode(mode);
  INFO("mode " << FaultModeName(mode));
  // The machine is built in the child: a forked child does not inherit
  // userfaultfd registrations, so the parent's machine would not serve it.
  uintptr_t want = 0;
  int pipefd[2];
  REQUIRE(pipe(pipefd) == 0);
  Report r = Probe([&] {
    MachineOptions opts;
    opts.fault_mode = mode;
    opts.arena_bytes = 1ull << 30;
    opts.max_frames = 8;
    auto m = CreateMachine(opts);
    if (!m.ok()) _exit(4);
    auto as = (*m)->CreateAddressSpace();
    auto p = (*as)->Mmap(0, 64 * kPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    if (!p.ok()) _exit(5);
    uintptr_t ninth = *p + 8 * kPageSize;
    ssize_t ignored = write(pipefd[1], &ninth, sizeof(ninth));
    (void)ignored;
    for (int i = 0; i < 64; i++) *reinterpret_cast<volatile char*>(*p + i * kPageSize) = 1;
  });
  REQUIRE(read(pipefd[0], &want, sizeof(want)) == sizeof(want));
  close(pipefd[0]);
  close(pipefd[1]);
  CHECK(r.signo == SIGBUS);
  CHECK(r.addr == want);
}

}  // namespace
}  // namespace emu
