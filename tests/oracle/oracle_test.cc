// Oracle tests: the kernel is the specification. The same operations are
// applied to a kernel mapping and to an emu mapping, and every observable
// result is compared: return values and errnos, the bytes an access reads,
// and whether an access ends in SIGSEGV (with its si_addr and si_code).
//
// Reproducing a failure: every run prints its seed. Run one seed with
//   EMU_TEST_SEED=<seed> oracle_test "Oracle: a random*"
// (decimal or 0x hex). EMU_ORACLE_STEPS=<n> changes the number of operations
// per seed (default kSteps), for longer fuzzing runs; EMU_ORACLE_KEEP=<i,j,..>
// runs only those steps of the sequence, to shrink a failing one.
//
// Signal handling: an access that may crash runs under a sigsetjmp probe. Its
// SIGSEGV/SIGBUS handler must be in place BEFORE a machine is created: emu
// puts its dispatcher in front of whatever handler it finds and forwards to it
// the signals that are not emulator faults (fault/machine_factory.h), among
// them every fault of the kernel-side region. The probe only siglongjmps while
// armed; otherwise it restores the default action and re-raises. An access
// that never completes (emu resolving a fault without making the access
// possible) trips a SIGALRM watchdog, which prints the operations so far and
// exits with status 1.
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "emu/status.h"
#include "test_util.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif

namespace emu::test {
namespace {

constexpr size_t kPage = kPageSize;
constexpr size_t kWindowPages = 64;  // pages in each side's region
constexpr size_t kGuardPages = 16;   // kernel side: PROT_NONE guards around the region
constexpr int kSteps = 1000;         // operations per seed
const uint64_t kDefaultSeeds[] = {1, 2, 3, 0x5eed0004, 20240605, 777};

// ---------------------------------------------------------------------------
// The access probe.

struct ProbeState {
  sigjmp_buf jb;
  volatile sig_atomic_t armed = 0;
  volatile int signo = 0;
  volatile int code = 0;
  volatile uintptr_t addr = 0;
};
ProbeState g_probe;

void ProbeHandler(int sig, siginfo_t* info, void*) {
  if (!g_probe.armed) {
    // Not a probed access: a real crash. Let it kill the process as it would
    // have without us.
    static const char msg[] = "oracle_test: unexpected SIGSEGV/SIGBUS outside a probe\n";
    ssize_t ignored = write(2, msg, sizeof(msg) - 1);
    (void)ignored;
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  g_probe.armed = 0;
  g_probe.signo = sig;
  g_probe.code = info->si_code;
  g_probe.addr = reinterpret_cast<uintptr_t>(info->si_addr);
  siglongjmp(g_probe.jb, 1);
}

bool IsProbe(const struct sigaction& sa) {
  return (sa.sa_flags & SA_SIGINFO) && sa.sa_sigaction == ProbeHandler;
}

struct sigaction g_emu_segv, g_emu_bus;  // emu's dispatcher, chained to the probe
bool g_emu_chained = false;

bool SameAction(const struct sigaction& a, const struct sigaction& b) {
  return (a.sa_flags & SA_SIGINFO) == (b.sa_flags & SA_SIGINFO) &&
         ((a.sa_flags & SA_SIGINFO) ? a.sa_sigaction == b.sa_sigaction
                                    : a.sa_handler == b.sa_handler);
}

// Call before MakeEnv(): makes sure faults that are not the emulator's reach
// the probe, either directly or through emu's dispatcher that chains to it.
void InstallProbeBeforeMachine() {
  struct sigaction segv {};
  struct sigaction bus {};
  REQUIRE(sigaction(SIGSEGV, nullptr, &segv) == 0);
  REQUIRE(sigaction(SIGBUS, nullptr, &bus) == 0);
  const bool ok_segv = IsProbe(segv) || (g_emu_chained && SameAction(segv, g_emu_segv));
  const bool ok_bus = IsProbe(bus) || (g_emu_chained && SameAction(bus, g_emu_bus));
  if (ok_segv && ok_bus) return;
  // Something (a test framework) replaced the chain: start it again from the
  // probe; the next machine puts emu's dispatcher in front of it.
  struct sigaction sa {};
  sa.sa_sigaction = ProbeHandler;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  REQUIRE(sigaction(SIGSEGV, &sa, nullptr) == 0);
  REQUIRE(sigaction(SIGBUS, &sa, nullptr) == 0);
  g_emu_chained = false;
}

// Call after MakeEnv(): emu must have put its dispatcher in front of the probe.
void CheckDispatcherAfterMachine() {
  REQUIRE(sigaction(SIGSEGV, nullptr, &g_emu_segv) == 0);
  REQUIRE(sigaction(SIGBUS, nullptr, &g_emu_bus) == 0);
  REQUIRE_FALSE(IsProbe(g_emu_segv));
  REQUIRE_FALSE(IsProbe(g_emu_bus));
  g_emu_chained = true;
}

std::unique_ptr<Env> MakeOracleEnv(FaultMode mode) {
  InstallProbeBeforeMachine();
  auto env = MakeEnv(mode);
  CheckDispatcherAfterMachine();
  return env;
}

// A watchdog for accesses: an emulator that resolves a fault without making
// the access possible (a fault loop) would hang the test. SIGALRM then prints
// the operations so far and ends the process; it cannot siglongjmp, as the
// loop may be inside emu's handler holding an emulator lock.
constexpr unsigned kAccessTimeoutS = 10;
std::string g_history;  // appended between accesses only

void AlarmHandler(int) {
  static const char msg[] =
      "oracle_test: an access did not complete within the watchdog time (a fault loop?)\n"
      "operations so far (the last one hung):\n";
  ssize_t ignored = write(2, msg, sizeof(msg) - 1);
  ignored = write(2, g_history.data(), g_history.size());
  (void)ignored;
  _exit(1);
}

void InstallWatchdog() {
  struct sigaction sa {};
  sa.sa_handler = AlarmHandler;
  sigemptyset(&sa.sa_mask);
  REQUIRE(sigaction(SIGALRM, &sa, nullptr) == 0);
}

struct Access {
  bool faulted = false;
  int signo = 0;
  int code = 0;
  uintptr_t addr = 0;
};

// Reads `n` bytes at `p` into `out`, or writes `value` at `p`, surviving a
// SIGSEGV/SIGBUS. Arguments go through globals: nothing live in registers
// across sigsetjmp.
volatile uint8_t* volatile g_acc_p;
uint8_t* volatile g_acc_out;
volatile size_t g_acc_n;
volatile bool g_acc_write;
volatile uint8_t g_acc_value;

__attribute__((noinline)) Access DoAccess(volatile uint8_t* p, size_t n, uint8_t* out, bool write,
                                          uint8_t value) {
  g_acc_p = p;
  g_acc_out = out;
  g_acc_n = n;
  g_acc_write = write;
  g_acc_value = value;
  g_probe.signo = 0;
  g_probe.code = 0;
  g_probe.addr = 0;
  if (sigsetjmp(g_probe.jb, 1) == 0) {
    alarm(kAccessTimeoutS);
    g_probe.armed = 1;
    if (g_acc_write) {
      g_acc_p[0] = g_acc_value;
    } else {
      for (size_t i = 0; i < g_acc_n; i++) g_acc_out[i] = g_acc_p[i];
    }
    g_probe.armed = 0;
    alarm(0);
    return Access{};
  }
  alarm(0);
  return Access{true, g_probe.signo, g_probe.code, g_probe.addr};
}

// ---------------------------------------------------------------------------
// Names for messages.

std::string ErrName(int err) {
  if (err == 0) return "0";
  const char* n = strerrorname_np(err);
  return n ? n : std::to_string(err);
}

std::string ProtName(int prot) {
  if (prot == PROT_NONE) return "NONE";
  std::string s;
  auto add = [&](int bit, const char* name) {
    if (prot & bit) {
      if (!s.empty()) s += "|";
      s += name;
      prot &= ~bit;
    }
  };
  add(PROT_READ, "R");
  add(PROT_WRITE, "W");
  add(PROT_EXEC, "X");
  add(PROT_GROWSDOWN, "GROWSDOWN");
  add(PROT_GROWSUP, "GROWSUP");
  if (prot) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%s%#x", s.empty() ? "" : "|", prot);
    s += buf;
  }
  return s;
}

std::string FlagsName(int flags) {
  std::string s;
  switch (flags & MAP_TYPE) {
    case MAP_PRIVATE:
      s = "PRIVATE";
      break;
    case MAP_SHARED:
      s = "SHARED";
      break;
    case MAP_SHARED_VALIDATE:
      s = "SHARED_VALIDATE";
      break;
    default:
      s = "NOTYPE";
      break;
  }
  flags &= ~MAP_TYPE;
  auto add = [&](int bit, const char* name) {
    if (flags & bit) {
      s += "|";
      s += name;
      flags &= ~bit;
    }
  };
  add(MAP_ANONYMOUS, "ANON");
  add(MAP_FIXED, "FIXED");
  add(MAP_FIXED_NOREPLACE, "FIXED_NOREPLACE");
  add(MAP_POPULATE, "POPULATE");
  add(MAP_LOCKED, "LOCKED");
  add(MAP_NORESERVE, "NORESERVE");
  if (flags) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "|%#x", flags);
    s += buf;
  }
  return s;
}

std::string AdviceName(int advice) {
  switch (advice) {
    case MADV_NORMAL:
      return "NORMAL";
    case MADV_RANDOM:
      return "RANDOM";
    case MADV_SEQUENTIAL:
      return "SEQUENTIAL";
    case MADV_WILLNEED:
      return "WILLNEED";
    case MADV_DONTNEED:
      return "DONTNEED";
    default:
      return std::to_string(advice);
  }
}

// A byte offset into the region as "<pages>p[+<bytes>]" (or a raw number
// when it is not small).
std::string OffName(uint64_t off) {
  if (off > (uint64_t{1} << 40)) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%#llx", static_cast<unsigned long long>(off));
    return buf;
  }
  std::string s = std::to_string(off / kPage) + "p";
  if (off % kPage) s += "+" + std::to_string(off % kPage);
  return s;
}

std::string SigName(const Access& a) {
  if (!a.faulted) return "ok";
  std::string s = a.signo == SIGSEGV  ? "SIGSEGV"
                  : a.signo == SIGBUS ? "SIGBUS"
                                      : std::to_string(a.signo);
  if (a.signo == SIGSEGV) {
    s += a.code == SEGV_MAPERR   ? "/MAPERR"
         : a.code == SEGV_ACCERR ? "/ACCERR"
                                 : "/code=" + std::to_string(a.code);
  } else {
    s += "/code=" + std::to_string(a.code);
  }
  return s;
}

// ---------------------------------------------------------------------------
// Operations.

enum class OpKind {
  kMmap,
  kMunmap,
  kMprotect,
  kMadvise,
  kMlock,
  kMunlock,
  kRead,
  kWrite,
  kReadPage
};

struct Op {
  OpKind kind = OpKind::kRead;
  uint64_t off = 0;  // bytes from the region's start
  uint64_t len = 0;  // bytes
  int prot = 0;
  int flags = 0;
  int advice = 0;
  uint8_t value = 0;
};

std::string Describe(const Op& op) {
  std::ostringstream o;
  switch (op.kind) {
    case OpKind::kMmap:
      o << "mmap(" << OffName(op.off) << ", " << OffName(op.len) << ", " << ProtName(op.prot)
        << ", " << FlagsName(op.flags) << ")";
      break;
    case OpKind::kMunmap:
      o << "munmap(" << OffName(op.off) << ", " << OffName(op.len) << ")";
      break;
    case OpKind::kMprotect:
      o << "mprotect(" << OffName(op.off) << ", " << OffName(op.len) << ", " << ProtName(op.prot)
        << ")";
      break;
    case OpKind::kMadvise:
      o << "madvise(" << OffName(op.off) << ", " << OffName(op.len) << ", " << AdviceName(op.advice)
        << ")";
      break;
    case OpKind::kMlock:
      o << "mlock(" << OffName(op.off) << ", " << OffName(op.len) << ")";
      break;
    case OpKind::kMunlock:
      o << "munlock(" << OffName(op.off) << ", " << OffName(op.len) << ")";
      break;
    case OpKind::kRead:
      o << "read8(" << OffName(op.off) << ")";
      break;
    case OpKind::kWrite:
      o << "write8(" << OffName(op.off) << ", " << static_cast<int>(op.value) << ")";
      break;
    case OpKind::kReadPage:
      o << "readpage(" << OffName(op.off) << ")";
      break;
  }
  return o.str();
}

// splitmix64: the same sequence from a seed on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t Below(uint64_t n) { return Next() % n; }  // [0, n)
  bool Percent(unsigned p) { return Below(100) < p; }

 private:
  uint64_t s_;
};

// A range inside the region, mostly small, sometimes unaligned in start or
// length, sometimes empty. The rounded-out range never leaves the region.
void RandomRange(Rng& rng, Op* op) {
  uint64_t first = rng.Below(kWindowPages);
  uint64_t max_pages = kWindowPages - first;
  uint64_t pages;
  unsigned r = static_cast<unsigned>(rng.Below(100));
  if (r < 50) {
    pages = 1 + rng.Below(std::min<uint64_t>(4, max_pages));
  } else if (r < 85) {
    pages = 1 + rng.Below(std::min<uint64_t>(16, max_pages));
  } else {
    pages = 1 + rng.Below(max_pages);
  }
  op->off = first * kPage;
  op->len = pages * kPage;
  unsigned v = static_cast<unsigned>(rng.Below(100));
  if (v < 4) {
    op->len = 0;
  } else if (v < 9) {
    uint64_t skew = 1 + rng.Below(kPage - 1);  // unaligned start, same rounded end
    op->off += skew;
    op->len -= skew;
  } else if (v < 19) {
    op->len -= rng.Below(kPage);  // unaligned length, rounds up to the same end
  }
}

int RandomProt(Rng& rng) {
  unsigned r = static_cast<unsigned>(rng.Below(100));
  if (r < 18) return PROT_NONE;
  if (r < 45) return PROT_READ;
  if (r < 92) return PROT_READ | PROT_WRITE;
  if (r < 95) return PROT_WRITE;  // x86: write implies read
  if (r < 97) return PROT_READ | PROT_EXEC;
  if (r < 98) return PROT_EXEC;  // readable, or execute-only where the CPU has PKU
  return PROT_READ | PROT_WRITE | PROT_EXEC;
}

uint64_t RandomInPage(Rng& rng) {
  static const uint64_t kSpots[] = {0, 1, 64, 2048, 4095};
  if (rng.Percent(75)) return kSpots[rng.Below(std::size(kSpots))];
  return rng.Below(kPage);
}

Op RandomOp(Rng& rng, bool allow_lock) {
  Op op;
  unsigned r = static_cast<unsigned>(rng.Below(1000));
  if (r < 150) {
    op.kind = OpKind::kMmap;
    RandomRange(rng, &op);
    op.prot = RandomProt(rng);
    op.flags = MAP_PRIVATE | MAP_ANONYMOUS;
    op.flags |= rng.Percent(75) ? MAP_FIXED : MAP_FIXED_NOREPLACE;
    if (rng.Percent(10)) op.flags |= MAP_POPULATE;
    if (allow_lock && rng.Percent(5)) op.flags |= MAP_LOCKED;
    if (rng.Percent(30)) op.flags |= MAP_NORESERVE;
  } else if (r < 220) {
    op.kind = OpKind::kMunmap;
    RandomRange(rng, &op);
  } else if (r < 340) {
    op.kind = OpKind::kMprotect;
    RandomRange(rng, &op);
    op.prot = RandomProt(rng);
    if (rng.Percent(2)) op.prot |= PROT_GROWSDOWN;
  } else if (r < 420) {
    op.kind = OpKind::kMadvise;
    RandomRange(rng, &op);
    unsigned a = static_cast<unsigned>(rng.Below(100));
    if (a < 50) {
      op.advice = MADV_DONTNEED;
    } else if (a < 80) {
      op.advice = MADV_WILLNEED;
    } else if (a < 85) {
      op.advice = MADV_NORMAL;
    } else if (a < 90) {
      op.advice = MADV_RANDOM;
    } else if (a < 95) {
      op.advice = MADV_SEQUENTIAL;
    } else {
      op.advice = rng.Percent(50) ? 1000 : -1;  // not an advice
    }
  } else if (r < 460) {
    op.kind = allow_lock ? OpKind::kMlock : OpKind::kMunlock;
    RandomRange(rng, &op);
  } else if (r < 490) {
    op.kind = OpKind::kMunlock;
    RandomRange(rng, &op);
  } else if (r < 730) {
    op.kind = OpKind::kRead;
    op.off = rng.Below(kWindowPages) * kPage + RandomInPage(rng);
  } else if (r < 960) {
    op.kind = OpKind::kWrite;
    op.off = rng.Below(kWindowPages) * kPage + RandomInPage(rng);
    op.value = static_cast<uint8_t>(1 + rng.Below(255));
  } else {
    op.kind = OpKind::kReadPage;
    op.off = rng.Below(kWindowPages) * kPage;
  }
  return op;
}

// What one side observed.
struct Outcome {
  int err = 0;           // system calls: errno, 0 on success
  uint64_t ret_off = 0;  // mmap: the returned address minus the region base
  Access access;         // accesses
  std::vector<uint8_t> bytes;
};

int KernelErr(long rc) { return rc == -1 ? errno : 0; }

bool IsAccess(OpKind k) {
  return k == OpKind::kRead || k == OpKind::kWrite || k == OpKind::kReadPage;
}

// A memory access at base + op.off: the same on both sides, since emu's
// memory is used through ordinary pointers.
Outcome RunAccess(const Op& op, uintptr_t base) {
  Outcome out;
  auto* p = reinterpret_cast<volatile uint8_t*>(base + op.off);
  switch (op.kind) {
    case OpKind::kRead:
      out.bytes.resize(1);
      out.access = DoAccess(p, 1, out.bytes.data(), false, 0);
      break;
    case OpKind::kWrite:
      out.access = DoAccess(p, 1, nullptr, true, op.value);
      break;
    case OpKind::kReadPage:
      out.bytes.resize(kPage);
      out.access = DoAccess(p, kPage, out.bytes.data(), false, 0);
      break;
    default:
      break;
  }
  return out;
}

// The kernel side: the system calls themselves (not libc's or a sanitizer's
// wrappers).
Outcome RunOnKernel(const Op& op, uintptr_t base) {
  if (IsAccess(op.kind)) return RunAccess(op, base);
  Outcome out;
  uintptr_t a = base + op.off;
  switch (op.kind) {
    case OpKind::kMmap: {
      long rc = syscall(SYS_mmap, a, op.len, op.prot, op.flags, -1, 0);
      out.err = KernelErr(rc);
      if (rc != -1) out.ret_off = static_cast<uintptr_t>(rc) - base;
      break;
    }
    case OpKind::kMunmap:
      out.err = KernelErr(syscall(SYS_munmap, a, op.len));
      break;
    case OpKind::kMprotect:
      out.err = KernelErr(syscall(SYS_mprotect, a, op.len, op.prot));
      break;
    case OpKind::kMadvise:
      out.err = KernelErr(syscall(SYS_madvise, a, op.len, op.advice));
      break;
    case OpKind::kMlock:
      out.err = KernelErr(syscall(SYS_mlock, a, op.len));
      break;
    case OpKind::kMunlock:
      out.err = KernelErr(syscall(SYS_munlock, a, op.len));
      break;
    default:
      break;
  }
  return out;
}

Outcome RunOnEmu(const Op& op, AddressSpace& as, uintptr_t base) {
  if (IsAccess(op.kind)) return RunAccess(op, base);
  Outcome out;
  VirtAddr a = base + op.off;
  switch (op.kind) {
    case OpKind::kMmap: {
      absl::StatusOr<VirtAddr> r = as.Mmap(a, op.len, op.prot, op.flags, -1, 0);
      out.err = ToErrno(r.status());
      if (r.ok()) out.ret_off = *r - base;
      break;
    }
    case OpKind::kMunmap:
      out.err = ToErrno(as.Munmap(a, op.len));
      break;
    case OpKind::kMprotect:
      out.err = ToErrno(as.Mprotect(a, op.len, op.prot));
      break;
    case OpKind::kMadvise:
      out.err = ToErrno(as.Madvise(a, op.len, op.advice));
      break;
    case OpKind::kMlock:
      out.err = ToErrno(as.Mlock(a, op.len));
      break;
    case OpKind::kMunlock:
      out.err = ToErrno(as.Munlock(a, op.len));
      break;
    default:
      break;
  }
  return out;
}

// Empty when both sides agree, else what differs.
std::string Compare(const Op& op, const Outcome& k, const Outcome& e, uintptr_t kbase,
                    uintptr_t ebase) {
  std::ostringstream o;
  if (!IsAccess(op.kind)) {
    if (k.err != e.err) {
      o << "errno: kernel " << ErrName(k.err) << ", emu " << ErrName(e.err);
    } else if (k.err == 0 && op.kind == OpKind::kMmap && k.ret_off != e.ret_off) {
      o << "mmap returned base+" << OffName(k.ret_off) << " on the kernel, base+"
        << OffName(e.ret_off) << " on emu";
    }
    return o.str();
  }
  const Access& ka = k.access;
  const Access& ea = e.access;
  if (ka.faulted != ea.faulted || ka.signo != ea.signo || ka.code != ea.code) {
    o << "access: kernel " << SigName(ka) << ", emu " << SigName(ea);
    return o.str();
  }
  if (ka.faulted) {
    uint64_t koff = ka.addr - kbase, eoff = ea.addr - ebase;
    if (koff != op.off || eoff != op.off) {
      o << "si_addr: kernel base+" << OffName(koff) << ", emu base+" << OffName(eoff)
        << ", accessed base+" << OffName(op.off);
    }
    return o.str();
  }
  for (size_t i = 0; i < k.bytes.size(); i++) {
    if (k.bytes[i] != e.bytes[i]) {
      o << "bytes differ at base+" << OffName(op.off + i) << ": kernel "
        << static_cast<int>(k.bytes[i]) << ", emu " << static_cast<int>(e.bytes[i]);
      break;
    }
  }
  return o.str();
}

std::string ResultName(const Op& op, const Outcome& out) {
  if (!IsAccess(op.kind)) {
    if (op.kind == OpKind::kMmap && out.err == 0) return "base+" + OffName(out.ret_off);
    return ErrName(out.err);
  }
  if (out.access.faulted) return SigName(out.access);
  if (op.kind == OpKind::kRead) return "ok " + std::to_string(out.bytes[0]);
  return "ok";
}

// ---------------------------------------------------------------------------
// The two sides.

// A region of the process's own address space: kWindowPages of hole between
// two PROT_NONE guards. It is placed far from where the kernel puts other
// mappings (top-down from mmap_base), so nothing else lands in its holes.
class KernelRegion {
 public:
  KernelRegion() {
    total_ = (kWindowPages + 2 * kGuardPages) * kPage;
    void* hint = reinterpret_cast<void*>(uintptr_t{0x2000} << 32);  // 32 TiB
    void* p = mmap(hint, total_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    REQUIRE(p != MAP_FAILED);
    reservation_ = static_cast<char*>(p);
    base_ = reinterpret_cast<uintptr_t>(reservation_) + kGuardPages * kPage;
    REQUIRE(munmap(reinterpret_cast<void*>(base_), kWindowPages * kPage) == 0);
  }
  ~KernelRegion() { munmap(reservation_, total_); }
  KernelRegion(const KernelRegion&) = delete;
  KernelRegion& operator=(const KernelRegion&) = delete;

  uintptr_t base() const { return base_; }

 private:
  char* reservation_ = nullptr;
  size_t total_ = 0;
  uintptr_t base_ = 0;
};

// An empty region of kWindowPages inside the address space's window.
uintptr_t EmuRegion(AddressSpace& as) {
  absl::StatusOr<VirtAddr> p =
      as.Mmap(0, kWindowPages * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
  INFO(p.status().ToString());
  REQUIRE(p.ok());
  REQUIRE(as.Munmap(*p, kWindowPages * kPage).ok());
  return *p;
}

// Whether this process may lock the whole region (RLIMIT_MEMLOCK or
// CAP_IPC_LOCK). Emu does not emulate the limit, so mlock is only compared
// where the kernel cannot refuse it for that reason.
bool CanLockRegion() {
  struct rlimit rl {};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0) return false;
  const rlim_t need = 4 * kWindowPages * kPage;
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
    if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need) {
      rl.rlim_cur = need;
      setrlimit(RLIMIT_MEMLOCK, &rl);
    }
  }
  if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 &&
      (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)) {
    return true;
  }
  // CAP_IPC_LOCK (bit 14) in the effective set?
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return false;
  char line[256];
  bool cap = false;
  while (std::fgets(line, sizeof(line), f)) {
    unsigned long long eff;
    if (std::sscanf(line, "CapEff: %llx", &eff) == 1) cap = (eff >> 14) & 1;
  }
  std::fclose(f);
  return cap;
}

// The last operations of `log` (all of them up to kHistoryLines).
constexpr size_t kHistoryLines = 120;
std::string History(const std::vector<std::string>& log) {
  std::string h;
  size_t first = log.size() > kHistoryLines ? log.size() - kHistoryLines : 0;
  if (first > 0) {
    h += "(" + std::to_string(first) + " earlier operations left out; rerun the seed)\n";
  }
  for (size_t i = first; i < log.size(); i++) h += log[i] + "\n";
  return h;
}

std::vector<uint64_t> Seeds() {
  if (const char* s = std::getenv("EMU_TEST_SEED"); s != nullptr && *s) {
    return {std::strtoull(s, nullptr, 0)};
  }
  return std::vector<uint64_t>(std::begin(kDefaultSeeds), std::end(kDefaultSeeds));
}

// EMU_ORACLE_KEEP="3,17,40": run only these steps of the sequence (the others
// are generated and skipped), to shrink a failing sequence by hand or script.
std::vector<bool> KeptSteps(int steps) {
  std::vector<bool> keep(steps, true);
  const char* s = std::getenv("EMU_ORACLE_KEEP");
  if (s == nullptr || *s == 0) return keep;
  keep.assign(steps, false);
  for (const char* p = s; *p;) {
    char* end;
    long i = std::strtol(p, &end, 10);
    if (end == p) break;
    if (i >= 0 && i < steps) keep[i] = true;
    p = *end ? end + 1 : end;
  }
  return keep;
}

int Steps() {
  if (const char* s = std::getenv("EMU_ORACLE_STEPS"); s != nullptr && *s) return std::atoi(s);
  return kSteps;
}

TEST_CASE(
    "Oracle: a random mmap/munmap/mprotect/madvise/mlock/access sequence behaves as on the kernel",
    "[oracle]") {
  const FaultMode mode = EMU_ALL_MODES();
  const uint64_t seed = GENERATE_COPY(from_range(Seeds()));
  const int steps = Steps();
  INFO("fault mode " << FaultModeName(mode) << ", seed " << seed
                     << " (rerun with EMU_TEST_SEED=" << seed << "), " << steps << " steps");

  auto env = MakeOracleEnv(mode);
  AddressSpace& as = *env->as;
  const bool allow_lock = CanLockRegion();
  if (!allow_lock)
    WARN("RLIMIT_MEMLOCK too small and no CAP_IPC_LOCK: mlock/MAP_LOCKED not compared");
  KernelRegion kregion;
  const uintptr_t kbase = kregion.base();
  const uintptr_t ebase = EmuRegion(as);
  RequireInvariants(as);

  InstallWatchdog();
  Rng rng(seed);
  std::vector<std::string> log;
  g_history.clear();
  const std::vector<bool> keep = KeptSteps(steps);
  for (int step = 0; step < steps; step++) {
    const Op op = RandomOp(rng, allow_lock);
    if (!keep[step]) continue;
    if (IsAccess(op.kind)) {
      g_history += "#" + std::to_string(step) + " " + Describe(op) + "  (fault mode " +
                   std::string(FaultModeName(mode)) + ", seed " + std::to_string(seed) + ")\n";
    }
    const Outcome k = RunOnKernel(op, kbase);
    const Outcome e = RunOnEmu(op, as, ebase);
    log.push_back("#" + std::to_string(step) + " " + Describe(op) + " -> kernel " +
                  ResultName(op, k) + ", emu " + ResultName(op, e));
    if (IsAccess(op.kind)) g_history.resize(g_history.rfind('#'));
    g_history += log.back() + "\n";
    const std::string diff = Compare(op, k, e, kbase, ebase);
    if (!diff.empty()) {
      INFO("operations so far (offsets from the region base, p = pages):\n" << History(log));
      INFO("step " << step << ": " << Describe(op) << ": " << diff);
      FAIL("emu differs from the kernel");
    }
    // The history only when an invariant is about to fail (it is long).
    const bool bad = !as.CheckInvariants().ok() || !as.machine().mem_map().CheckInvariants().ok();
    INFO((bad ? "operations so far:\n" + History(log) : std::string()));
    RequireInvariants(as);
  }
}

// ---------------------------------------------------------------------------
// Bad inputs, one call each, on a fixed layout.

// The layout (pages of a 16-page region):
//   [0,4) R|W   [4,6) hole   [6,10) R|W, mlocked   [10,12) R   [12,14) NONE   [14,16) hole
constexpr size_t kTablePages = 16;

struct Sides {
  uintptr_t kbase;
  uintptr_t ebase;
  AddressSpace* as;
};

void ResetLayout(const Sides& s, bool lock_ok) {
  auto kmap = [&](size_t first, size_t n, int prot) {
    void* want = reinterpret_cast<void*>(s.kbase + first * kPage);
    void* p = mmap(want, n * kPage, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    REQUIRE(p == want);
  };
  auto emap = [&](size_t first, size_t n, int prot) {
    auto p = s.as->Mmap(s.ebase + first * kPage, n * kPage, prot,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
    INFO(p.status().ToString());
    REQUIRE(p.ok());
  };
  REQUIRE(munmap(reinterpret_cast<void*>(s.kbase), kTablePages * kPage) == 0);
  REQUIRE(s.as->Munmap(s.ebase, kTablePages * kPage).ok());
  kmap(0, 4, PROT_READ | PROT_WRITE);
  emap(0, 4, PROT_READ | PROT_WRITE);
  kmap(6, 4, PROT_READ | PROT_WRITE);
  emap(6, 4, PROT_READ | PROT_WRITE);
  if (lock_ok) {
    // The system call itself: sanitizer runtimes replace mlock() by a no-op.
    REQUIRE(syscall(SYS_mlock, s.kbase + 6 * kPage, 4 * kPage) == 0);
    REQUIRE(s.as->Mlock(s.ebase + 6 * kPage, 4 * kPage).ok());
  }
  kmap(10, 2, PROT_READ);
  emap(10, 2, PROT_READ);
  kmap(12, 2, PROT_NONE);
  emap(12, 2, PROT_NONE);
}

struct BadCase {
  const char* what;
  Op op;
  bool needs_lock = false;  // locks memory, or depends on the mlocked part of the layout
};

Op MakeOp(OpKind kind, uint64_t off, uint64_t len, int prot = 0, int flags = 0, int advice = 0) {
  Op op;
  op.kind = kind;
  op.off = off;
  op.len = len;
  op.prot = prot;
  op.flags = flags;
  op.advice = advice;
  return op;
}

TEST_CASE(
    "Oracle: bad arguments to mmap/munmap/mprotect/madvise/mlock fail with the kernel's errno",
    "[oracle]") {
  const FaultMode mode = EMU_ALL_MODES();
  auto env = MakeOracleEnv(mode);
  AddressSpace& as = *env->as;
  const bool lock_ok = CanLockRegion();
  KernelRegion kregion;  // kWindowPages >= kTablePages
  const Sides sides{kregion.base(), EmuRegion(as), &as};

  constexpr int kAnon = MAP_PRIVATE | MAP_ANONYMOUS;
  constexpr int kRW = PROT_READ | PROT_WRITE;
  const uint64_t P = kPage;
  const uint64_t kNeg = static_cast<uint64_t>(-4096L);
  const uint64_t kMinus1 = ~uint64_t{0};
  // clang-format off
  const BadCase cases[] = {
    {"munmap: unaligned address",             MakeOp(OpKind::kMunmap, 1, P)},
    {"munmap: length 0",                      MakeOp(OpKind::kMunmap, 0, 0)},
    {"munmap: length -4096 (overflows)",      MakeOp(OpKind::kMunmap, 0, kNeg)},
    {"munmap: length -1 (rounds to 0)",       MakeOp(OpKind::kMunmap, 0, kMinus1)},
    {"munmap: a hole",                        MakeOp(OpKind::kMunmap, 4 * P, 2 * P)},
    {"munmap: unaligned length",              MakeOp(OpKind::kMunmap, 14 * P, P + 1)},
    {"mmap: length 0",                        MakeOp(OpKind::kMmap, 4 * P, 0, kRW, kAnon | MAP_FIXED)},
    {"mmap: length -4096",                    MakeOp(OpKind::kMmap, 4 * P, kNeg, kRW, kAnon | MAP_FIXED)},
    {"mmap: length -1 (rounds to 0)",         MakeOp(OpKind::kMmap, 4 * P, kMinus1, kRW, kAnon | MAP_FIXED)},
    {"mmap: length -4096, not fixed",         MakeOp(OpKind::kMmap, 4 * P, kNeg, kRW, kAnon)},
    {"mmap: unknown prot bit 0x10 accepted",  MakeOp(OpKind::kMmap, 4 * P, P, PROT_READ | 0x10, kAnon | MAP_FIXED)},
    {"mmap: neither PRIVATE nor SHARED",      MakeOp(OpKind::kMmap, 4 * P, P, kRW, MAP_ANONYMOUS | MAP_FIXED)},
    {"mmap: SHARED_VALIDATE, anonymous",      MakeOp(OpKind::kMmap, 4 * P, P, kRW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS | MAP_FIXED)},
    {"mmap: SHARED_VALIDATE, anonymous, with an unknown flag",
                                              MakeOp(OpKind::kMmap, 4 * P, P, kRW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS | MAP_FIXED | 0x8000000)},
    {"mmap: fd -1 without MAP_ANONYMOUS",     MakeOp(OpKind::kMmap, 4 * P, P, kRW, MAP_PRIVATE | MAP_FIXED)},
    {"mmap: MAP_FIXED unaligned",             MakeOp(OpKind::kMmap, 4 * P + 8, P, kRW, kAnon | MAP_FIXED)},
    {"mmap: MAP_FIXED_NOREPLACE unaligned",   MakeOp(OpKind::kMmap, 4 * P + 8, P, kRW, kAnon | MAP_FIXED_NOREPLACE)},
    {"mmap: MAP_FIXED_NOREPLACE over a mapping", MakeOp(OpKind::kMmap, 0, 2 * P, kRW, kAnon | MAP_FIXED_NOREPLACE)},
    {"mmap: MAP_FIXED_NOREPLACE half over a mapping", MakeOp(OpKind::kMmap, 3 * P, 2 * P, kRW, kAnon | MAP_FIXED_NOREPLACE)},
    {"mmap: MAP_FIXED_NOREPLACE into a hole", MakeOp(OpKind::kMmap, 4 * P, 2 * P, kRW, kAnon | MAP_FIXED_NOREPLACE)},
    {"mprotect: unaligned address",           MakeOp(OpKind::kMprotect, 1, P, PROT_READ)},
    {"mprotect: length 0",                    MakeOp(OpKind::kMprotect, 0, 0, PROT_READ)},
    {"mprotect: length 0 in a hole",          MakeOp(OpKind::kMprotect, 4 * P, 0, PROT_READ)},
    {"mprotect: length -4096",                MakeOp(OpKind::kMprotect, 0, kNeg, PROT_READ)},
    {"mprotect: length -1 (rounds to 0)",     MakeOp(OpKind::kMprotect, 0, kMinus1, PROT_READ)},
    {"mprotect: unknown prot bit 0x10",       MakeOp(OpKind::kMprotect, 0, P, PROT_READ | 0x10)},
    {"mprotect: GROWSDOWN|GROWSUP",           MakeOp(OpKind::kMprotect, 0, P, PROT_READ | PROT_GROWSDOWN | PROT_GROWSUP)},
    {"mprotect: GROWSDOWN on a plain mapping", MakeOp(OpKind::kMprotect, 0, P, PROT_READ | PROT_GROWSDOWN)},
    {"mprotect: GROWSDOWN, a hole then a mapping", MakeOp(OpKind::kMprotect, 4 * P, 4 * P, PROT_READ | PROT_GROWSDOWN)},
    {"mprotect: GROWSDOWN over a hole only",  MakeOp(OpKind::kMprotect, 4 * P, 2 * P, PROT_READ | PROT_GROWSDOWN)},
    {"mprotect: starts in a hole",            MakeOp(OpKind::kMprotect, 4 * P, 4 * P, PROT_READ)},
    {"mprotect: runs into a hole",            MakeOp(OpKind::kMprotect, 2 * P, 4 * P, PROT_READ)},
    {"mprotect: spans a hole",                MakeOp(OpKind::kMprotect, 0, 8 * P, PROT_READ)},
    {"madvise: bad advice, length 0 (advice first)", MakeOp(OpKind::kMadvise, 0, 0, 0, 0, 1000)},
    {"madvise: bad advice, unaligned",        MakeOp(OpKind::kMadvise, 1, P, 0, 0, -1)},
    {"madvise: unaligned address",            MakeOp(OpKind::kMadvise, 1, P, 0, 0, MADV_DONTNEED)},
    {"madvise: length 0",                     MakeOp(OpKind::kMadvise, 0, 0, 0, 0, MADV_DONTNEED)},
    {"madvise: length 0 in a hole",           MakeOp(OpKind::kMadvise, 4 * P, 0, 0, 0, MADV_WILLNEED)},
    {"madvise: length -4096",                 MakeOp(OpKind::kMadvise, 0, kNeg, 0, 0, MADV_DONTNEED)},
    {"madvise: length -1 (rounds to 0)",      MakeOp(OpKind::kMadvise, 0, kMinus1, 0, 0, MADV_DONTNEED)},
    {"madvise: DONTNEED over a hole",         MakeOp(OpKind::kMadvise, 4 * P, 2 * P, 0, 0, MADV_DONTNEED)},
    {"madvise: WILLNEED spanning a hole",     MakeOp(OpKind::kMadvise, 2 * P, 4 * P, 0, 0, MADV_WILLNEED)},
    {"madvise: DONTNEED on an mlocked range", MakeOp(OpKind::kMadvise, 6 * P, 2 * P, 0, 0, MADV_DONTNEED), true},
    {"madvise: DONTNEED from a hole into an mlocked range", MakeOp(OpKind::kMadvise, 4 * P, 4 * P, 0, 0, MADV_DONTNEED), true},
    {"mlock: a hole",                         MakeOp(OpKind::kMlock, 4 * P, 2 * P), true},
    {"mlock: a PROT_NONE mapping",            MakeOp(OpKind::kMlock, 12 * P, 2 * P), true},
    {"mlock: R then PROT_NONE",               MakeOp(OpKind::kMlock, 10 * P, 4 * P), true},
    {"mlock: runs into a hole",               MakeOp(OpKind::kMlock, 2 * P, 4 * P), true},
    {"mlock: length 0",                       MakeOp(OpKind::kMlock, 4 * P, 0), true},
    {"mlock: unaligned address (rounded)",    MakeOp(OpKind::kMlock, 10, P), true},
    {"mlock: length -4096",                   MakeOp(OpKind::kMlock, 0, kNeg), true},
    {"mlock: length -1 (rounds to 0)",        MakeOp(OpKind::kMlock, 0, kMinus1), true},
    {"munlock: a hole",                       MakeOp(OpKind::kMunlock, 4 * P, 2 * P)},
    {"munlock: length 0",                     MakeOp(OpKind::kMunlock, 0, 0)},
    {"munlock: length -4096",                 MakeOp(OpKind::kMunlock, 0, kNeg)},
    {"munlock: length -1 (rounds to 0)",      MakeOp(OpKind::kMunlock, 0, kMinus1)},
  };
  // clang-format on

  for (const BadCase& c : cases) {
    if (c.needs_lock && !lock_ok) continue;
    ResetLayout(sides, lock_ok);
    RequireInvariants(as);
    const Outcome k = RunOnKernel(c.op, sides.kbase);
    const Outcome e = RunOnEmu(c.op, as, sides.ebase);
    const std::string diff = Compare(c.op, k, e, sides.kbase, sides.ebase);
    INFO("case | call | kernel | emu\n"
         << c.what << " | " << Describe(c.op) << " | " << ResultName(c.op, k) << " | "
         << ResultName(c.op, e));
    CHECK(diff == "");
    RequireInvariants(as);
  }
}

}  // namespace
}  // namespace emu::test
