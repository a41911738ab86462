// libemu-preload.so: runs an unmodified program's private anonymous memory
// on the emulator.
//
//   LD_PRELOAD=libemu-preload.so EMU_MEM_LIMIT=256M ./program
//
// What is routed (README "The preload" has the table and the reasons):
//  - mmap of private anonymous memory (not MAP_STACK, MAP_GROWSDOWN,
//    MAP_HUGETLB or MAP_32BIT), and munmap, mprotect, madvise, mremap, mlock
//    and munlock of ranges inside the emulator's window;
//  - brk/sbrk: an emulated program break at the bottom of the window;
//  - syscall(2) with those system-call numbers (tcmalloc uses it);
//  - sigaction/signal for SIGSEGV and SIGBUS: emu's dispatcher stays first
//    and forwards, with the original siginfo, what is not an emulator fault.
// libc's wrappers are redirected in place (preload/patch.h), which catches
// glibc malloc's internal calls; the same functions are also exported, so
// that an allocator that defines its own mmap (tcmalloc) loses to ours when
// this library comes first in LD_PRELOAD.
//
// Everything else (file and shared mappings, thread stacks, the dynamic
// loader's own mappings) stays native, outside the window.
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "emu/machine.h"
#include "emu/status.h"
#include "emu/sys.h"
#include "emu/trace.h"
#include "fault/host_backends.h"
#include "fault/machine_factory.h"
#include "fault/signals.h"
#include "preload/patch.h"
#include "preload/stats.h"

namespace emu::preload {
namespace {

// ---- State ----

// The process's emulated address space; null until start-up finished and in
// a child that left the emulator. Read lock-free by every intercepted call.
std::atomic<AddressSpace*> g_as{nullptr};
Machine* g_machine = nullptr;  // leaked at exit: threads may still run
AddrRange g_window;

// The program break (brk/sbrk): [g_brk_base, g_brk_cur), capped at g_brk_max.
pthread_mutex_t g_brk_mu = PTHREAD_MUTEX_INITIALIZER;
VirtAddr g_brk_base = 0, g_brk_cur = 0, g_brk_max = 0;

// Calls made while this thread is inside the emulator go to the kernel: they
// come from the emulator's own use of malloc, whose memory must not be
// served by the mm call that is in progress.
__attribute__((tls_model("initial-exec"))) thread_local int t_depth = 0;
struct Inside {
  Inside() { t_depth++; }
  ~Inside() { t_depth--; }
};

AddressSpace* Routing() {
  AddressSpace* as = g_as.load(std::memory_order_acquire);
  return t_depth == 0 && !sys::t_emulator_thread ? as : nullptr;
}

bool Overlaps(AddrRange w, VirtAddr a, size_t len) {
  VirtAddr end;
  if (__builtin_add_overflow(a, len, &end)) end = ~VirtAddr{0};
  return a < w.end && end > w.start;
}

long Fail(int err) {
  errno = err;
  return -1;
}

int FromStatus(const absl::Status& s) {
  if (s.ok()) return 0;
  errno = ToErrno(s);
  return -1;
}

long RawMremap(void* old, size_t old_len, size_t new_len, int flags, void* new_addr) {
  return sys::ToLibcRet(sys::RawSyscall6(SYS_mremap, reinterpret_cast<long>(old),
                                         static_cast<long>(old_len), static_cast<long>(new_len),
                                         flags, reinterpret_cast<long>(new_addr), 0));
}

bool Routable(int flags) {
  return (flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE &&
         !(flags & (MAP_STACK | MAP_GROWSDOWN | MAP_HUGETLB | MAP_32BIT));
}

// ---- The mmap family ----

void* DoMmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  AddressSpace* as = Routing();
  if (as == nullptr) return sys::Mmap(addr, len, prot, flags, fd, off);
  VirtAddr a = reinterpret_cast<VirtAddr>(addr);
  bool fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE);
  if (fixed && !Overlaps(g_window, a, len)) return sys::Mmap(addr, len, prot, flags, fd, off);
  if (!Routable(flags)) {
    if (!fixed) return sys::Mmap(addr, len, prot, flags, fd, off);  // placed outside the arena
    // A file or shared mapping placed over memory the program reserved from
    // the emulator (a JVM's class-data archive, a JIT's double mapping):
    // the kernel's, in a range the emulator keeps for it.
    if ((a & (kPageSize - 1)) || a < g_window.start || a + PageAlignUp(len) > g_window.end) {
      errno = (a & (kPageSize - 1)) ? EINVAL : ENOMEM;  // across the window's edge: not supported
      return MAP_FAILED;
    }
    const int native_flags = (flags & ~MAP_FIXED_NOREPLACE) | MAP_FIXED;
    Inside in;
    absl::Status s = as->MapForeign(a, len, flags & MAP_FIXED_NOREPLACE, [&] {
      void* p = sys::Mmap(addr, len, prot, native_flags, fd, off);
      return p == MAP_FAILED ? errno : 0;
    });
    if (!s.ok()) {
      errno = ToErrno(s);
      return MAP_FAILED;
    }
    return addr;
  }
  if (!fixed && !g_window.Contains(a)) a = 0;
  Inside in;
  auto r = as->Mmap(a, len, prot, flags, fd, off);
  if (!r.ok()) {
    errno = ToErrno(r.status());
    return MAP_FAILED;
  }
  return reinterpret_cast<void*>(*r);
}

// Splits [addr, addr+len) into the parts outside the window (to the kernel)
// and inside (to `inside`); returns the first error.
template <typename Native, typename Emulated>
int Split(void* addr, size_t len, Native&& native, Emulated&& inside) {
  VirtAddr a = reinterpret_cast<VirtAddr>(addr);
  VirtAddr end;
  AddressSpace* as = Routing();
  if (as == nullptr || len == 0 || (a & (kPageSize - 1)) ||
      __builtin_add_overflow(a, PageAlignUp(len), &end) || PageAlignUp(len) < len ||
      !Overlaps(g_window, a, len)) {
    return native(addr, len);
  }
  int ret = 0;
  int err = 0;
  auto note = [&](int r) {
    if (r != 0 && ret == 0) {
      ret = r;
      err = errno;
    }
  };
  if (a < g_window.start) note(native(addr, g_window.start - a));
  AddrRange in = AddrRange{a, end}.Intersect(g_window);
  {
    Inside guard;
    note(FromStatus(inside(as, in)));
  }
  if (end > g_window.end) note(native(reinterpret_cast<void*>(g_window.end), end - g_window.end));
  if (ret != 0) errno = err;
  return ret;
}

int DoMunmap(void* addr, size_t len) {
  return Split(
      addr, len, [](void* p, size_t n) { return sys::Munmap(p, n); },
      [](AddressSpace* as, AddrRange r) { return as->Munmap(r.start, r.len_bytes()); });
}

int DoMprotect(void* addr, size_t len, int prot) {
  return Split(
      addr, len, [prot](void* p, size_t n) { return sys::Mprotect(p, n, prot); },
      [prot](AddressSpace* as, AddrRange r) { return as->Mprotect(r.start, r.len_bytes(), prot); });
}

// EMU_MADV_FREE=volatile: the program's MADV_FREE marks the range volatile
// (seed 003) instead of Linux's lazy free. Set once at start-up.
bool g_free_as_volatile = false;

int DoMadvise(void* addr, size_t len, int advice) {
  // MADV_FREE rounds its length up, like every advice but our volatile one:
  // the range handed on is whole pages already.
  if (advice == kMadvVolatile) {
    // The program's own MADV_VOLATILE: its length rounds down (seed 003).
    if (len != 0 && len < kPageSize) {
      errno = EINVAL;
      return -1;
    }
    len &= ~(kPageSize - 1);
  } else if (advice == MADV_FREE && g_free_as_volatile) {
    advice = kMadvVolatile;
  }
  return Split(
      addr, len, [advice](void* p, size_t n) {
        return sys::Madvise(p, n, advice == kMadvVolatile ? MADV_FREE : advice);
      },
      [advice](AddressSpace* as, AddrRange r) {
        return as->Madvise(r.start, r.len_bytes(), advice);
      });
}

int DoMlock(const void* addr, size_t len, bool lock) {
  // mlock rounds the start down (Linux: do_mlock), so the split works on the
  // page-aligned range.
  VirtAddr a = reinterpret_cast<VirtAddr>(addr);
  VirtAddr start = a & kPageMask;
  size_t n = len + (a - start);
  long nr = lock ? SYS_mlock : SYS_munlock;
  return Split(
      reinterpret_cast<void*>(start), n,
      [nr](void* p, size_t m) {
        return static_cast<int>(sys::ToLibcRet(
            sys::RawSyscall6(nr, reinterpret_cast<long>(p), static_cast<long>(m), 0, 0, 0, 0)));
      },
      [lock](AddressSpace* as, AddrRange r) {
        return lock ? as->Mlock(r.start, r.len_bytes()) : as->Munlock(r.start, r.len_bytes());
      });
}

void* DoMremap(void* old, size_t old_len, size_t new_len, int flags, void* new_addr) {
  AddressSpace* as = Routing();
  VirtAddr a = reinterpret_cast<VirtAddr>(old);
  VirtAddr na = reinterpret_cast<VirtAddr>(new_addr);
  bool fixed = flags & MREMAP_FIXED;
  if (as == nullptr) {
    return reinterpret_cast<void*>(RawMremap(old, old_len, new_len, flags, new_addr));
  }
  if (!g_window.Contains(a)) {
    if (fixed && Overlaps(g_window, na, new_len)) {
      errno = EINVAL;  // native memory cannot move into the emulator's window
      return MAP_FAILED;
    }
    return reinterpret_cast<void*>(RawMremap(old, old_len, new_len, flags, new_addr));
  }
  Inside in;
  auto r = as->Mremap(a, old_len, new_len, flags, na);
  if (!r.ok()) {
    errno = ToErrno(r.status());
    return MAP_FAILED;
  }
  return reinterpret_cast<void*>(*r);
}

// ---- The program break ----

// Linux: mm/mmap.c brk(). Moves the break to `want`; false when it cannot.
bool SetBrkLocked(AddressSpace* as, VirtAddr want) {
  if (want < g_brk_base || want > g_brk_max) return false;
  VirtAddr old_top = PageAlignUp(g_brk_cur);
  VirtAddr new_top = PageAlignUp(want);
  Inside in;
  if (new_top > old_top) {
    auto r = as->Mmap(old_top, new_top - old_top, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE);
    if (!r.ok()) return false;
  } else if (new_top < old_top) {
    if (!as->Munmap(new_top, old_top - new_top).ok()) return false;
  }
  g_brk_cur = want;
  return true;
}

// A forked child that left the emulator (LeaveEmulator) keeps its break in
// the window, where malloc's heap already is: the window is plain memory
// there now, and the break moves by protection alone.
AddressSpace* g_left_as = nullptr;

bool SetBrkPlainLocked(VirtAddr want) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  if (want < g_brk_base || want > g_brk_max) return false;
  VirtAddr old_top = PageAlignUp(g_brk_cur);
  VirtAddr new_top = PageAlignUp(want);
  if (new_top > old_top) {
    for (const auto& [start, vma] : g_left_as->vmas()) {
      if (vma.start < new_top && vma.end > old_top) return false;  // mapped there
    }
    if (sys::Mprotect(reinterpret_cast<void*>(old_top), new_top - old_top, PROT_READ | PROT_WRITE) != 0) {
      return false;
    }
  } else if (new_top < old_top) {
    sys::Madvise(reinterpret_cast<void*>(new_top), old_top - new_top, MADV_DONTNEED);
    sys::Mprotect(reinterpret_cast<void*>(new_top), old_top - new_top, PROT_NONE);
  }
  g_brk_cur = want;
  return true;
}

long RawBrk(VirtAddr want) {
  if (g_left_as != nullptr) {
    pthread_mutex_lock(&g_brk_mu);
    if (want != 0) (void)SetBrkPlainLocked(want);
    long cur = static_cast<long>(g_brk_cur);
    pthread_mutex_unlock(&g_brk_mu);
    return cur;
  }
  return sys::RawSyscall6(SYS_brk, static_cast<long>(want), 0, 0, 0, 0, 0);
}

int DoBrk(void* addr) {
  AddressSpace* as = Routing();
  VirtAddr want = reinterpret_cast<VirtAddr>(addr);
  if (as == nullptr) return RawBrk(want) < static_cast<long>(want) ? static_cast<int>(Fail(ENOMEM)) : 0;
  pthread_mutex_lock(&g_brk_mu);
  bool ok = SetBrkLocked(as, want);
  pthread_mutex_unlock(&g_brk_mu);
  return ok ? 0 : static_cast<int>(Fail(ENOMEM));
}

void* DoSbrk(intptr_t inc) {
  AddressSpace* as = Routing();
  if (as == nullptr) {
    long cur = RawBrk(0);
    if (inc == 0) return reinterpret_cast<void*>(cur);
    long want = cur + inc;
    if (RawBrk(static_cast<VirtAddr>(want)) != want) {
      errno = ENOMEM;
      return reinterpret_cast<void*>(-1);
    }
    return reinterpret_cast<void*>(cur);
  }
  pthread_mutex_lock(&g_brk_mu);
  VirtAddr old = g_brk_cur;
  bool ok = inc == 0 || SetBrkLocked(as, old + inc);
  pthread_mutex_unlock(&g_brk_mu);
  if (!ok) {
    errno = ENOMEM;
    return reinterpret_cast<void*>(-1);
  }
  return reinterpret_cast<void*>(old);
}

// The brk system call itself: returns the new break, or the old one when it
// cannot move.
long SysBrk(VirtAddr want) {
  AddressSpace* as = Routing();
  if (as == nullptr) return RawBrk(want);
  pthread_mutex_lock(&g_brk_mu);
  if (want != 0) (void)SetBrkLocked(as, want);
  long cur = static_cast<long>(g_brk_cur);
  pthread_mutex_unlock(&g_brk_mu);
  return cur;
}

// syscall(2): the memory system calls are routed, every other number goes to
// the kernel unchanged. Non-variadic on purpose: on x86-64 a variadic call
// passes its integer arguments where this function reads them.
// mlockall(2)/munlockall(2): the emulated part locks VMAs in the
// emulator's own PTEs (reclaim never takes their pages) and populates them;
// the kernel locks the rest, on fault (MCL_ONFAULT: a kernel populate would
// walk the arena too, and in thread mode a page it cannot get retries
// forever). The arena is then unlocked in the host again: a host range with
// VM_LOCKED refuses the MADV_DONTNEED every munmap and swap-out of emulated
// memory needs.
int DoMlockAll(int flags) {
  AddressSpace* as = Routing();
  auto native = [](long nr, long arg) {
    return static_cast<int>(sys::ToLibcRet(sys::RawSyscall6(nr, arg, 0, 0, 0, 0, 0)));
  };
  if (as == nullptr) return native(SYS_mlockall, flags);
  {
    Inside in;
    if (absl::Status s = as->MlockAll(flags); !s.ok()) {
      errno = ToErrno(s);
      return -1;
    }
  }
  int ret = native(SYS_mlockall, flags | MCL_ONFAULT);
  int err = errno;
  sys::RawSyscall6(SYS_munlock, static_cast<long>(g_window.start),
                   static_cast<long>(g_window.len_bytes()), 0, 0, 0, 0);
  errno = err;
  return ret;
}

int DoMunlockAll() {
  AddressSpace* as = Routing();
  if (as != nullptr) {
    Inside in;
    if (absl::Status s = as->MunlockAll(); !s.ok()) {
      errno = ToErrno(s);
      return -1;
    }
  }
  return static_cast<int>(sys::ToLibcRet(sys::RawSyscall6(SYS_munlockall, 0, 0, 0, 0, 0, 0)));
}

long DoSyscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6) {
  auto ptr = [](long v) { return reinterpret_cast<void*>(v); };
  switch (nr) {
    case SYS_mmap: {
      void* r = DoMmap(ptr(a1), static_cast<size_t>(a2), static_cast<int>(a3),
                       static_cast<int>(a4), static_cast<int>(a5), a6);
      return reinterpret_cast<long>(r);
    }
    case SYS_munmap: return DoMunmap(ptr(a1), static_cast<size_t>(a2));
    case SYS_mprotect: return DoMprotect(ptr(a1), static_cast<size_t>(a2), static_cast<int>(a3));
    case SYS_madvise: return DoMadvise(ptr(a1), static_cast<size_t>(a2), static_cast<int>(a3));
    case SYS_mremap:
      return reinterpret_cast<long>(DoMremap(ptr(a1), static_cast<size_t>(a2),
                                             static_cast<size_t>(a3), static_cast<int>(a4),
                                             ptr(a5)));
    case SYS_brk: return SysBrk(static_cast<VirtAddr>(a1));
    case SYS_mlock: return DoMlock(ptr(a1), static_cast<size_t>(a2), true);
    case SYS_munlock: return DoMlock(ptr(a1), static_cast<size_t>(a2), false);
    case SYS_mlockall: return DoMlockAll(static_cast<int>(a1));
    case SYS_munlockall: return DoMunlockAll();
    default: return sys::ToLibcRet(sys::RawSyscall6(nr, a1, a2, a3, a4, a5, a6));
  }
}

}  // namespace
}  // namespace emu::preload

// ---- The exported entry points ----

using namespace emu::preload;  // NOLINT: the C entry points below

extern "C" {
// Redirect targets for libc's wrappers (their ABI is the wrapper's).
void* emu_preload_mmap(void* a, size_t l, int p, int f, int fd, off_t o) {
  return DoMmap(a, l, p, f, fd, o);
}
int emu_preload_munmap(void* a, size_t l) { return DoMunmap(a, l); }
int emu_preload_mprotect(void* a, size_t l, int p) { return DoMprotect(a, l, p); }
int emu_preload_madvise(void* a, size_t l, int adv) { return DoMadvise(a, l, adv); }
void* emu_preload_mremap(void* a, size_t ol, size_t nl, int f, void* na) {
  return DoMremap(a, ol, nl, f, na);
}
int emu_preload_brk(void* a) { return DoBrk(a); }
void* emu_preload_sbrk(intptr_t inc) { return DoSbrk(inc); }
long emu_preload_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6) {
  return DoSyscall(nr, a1, a2, a3, a4, a5, a6);
}
int emu_preload_mlock(const void* a, size_t l) { return DoMlock(a, l, true); }
// _exit(2) skips atexit handlers; forked children end with it (Python's
// os._exit, servers): statistics are written first.
[[noreturn]] void emu_preload_exit(int status);
int emu_preload_munlock(const void* a, size_t l) { return DoMlock(a, l, false); }
int emu_preload_mlockall(int flags) { return DoMlockAll(flags); }
int emu_preload_munlockall() { return DoMunlockAll(); }

// The same, under libc's names, for callers that resolve them before libc
// (an allocator that defines its own mmap, when this library comes first).
__attribute__((visibility("default"))) void* mmap(void* a, size_t l, int p, int f, int fd,
                                                  off_t o) {
  return DoMmap(a, l, p, f, fd, o);
}
__attribute__((visibility("default"))) void* mmap64(void* a, size_t l, int p, int f, int fd,
                                                    off_t o) {
  return DoMmap(a, l, p, f, fd, o);
}
__attribute__((visibility("default"))) int munmap(void* a, size_t l) { return DoMunmap(a, l); }
__attribute__((visibility("default"))) int mprotect(void* a, size_t l, int p) {
  return DoMprotect(a, l, p);
}
__attribute__((visibility("default"))) int madvise(void* a, size_t l, int adv) {
  return DoMadvise(a, l, adv);
}
__attribute__((visibility("default"))) void* mremap(void* a, size_t ol, size_t nl, int f, ...) {
  void* na = nullptr;
  if (f & MREMAP_FIXED) {
    va_list ap;
    va_start(ap, f);
    na = va_arg(ap, void*);
    va_end(ap);
  }
  return DoMremap(a, ol, nl, f, na);
}
__attribute__((visibility("default"))) int brk(void* a) { return DoBrk(a); }
__attribute__((visibility("default"))) void* sbrk(intptr_t inc) { return DoSbrk(inc); }

// SIGSEGV and SIGBUS handlers the program installs are chained behind emu's
// dispatcher; everything else goes to libc.
int __sigaction(int sig, const struct sigaction* act, struct sigaction* oldact);
__attribute__((visibility("default"))) int sigaction(int sig, const struct sigaction* act,
                                                     struct sigaction* oldact) {
  if (emu::ChainSigaction(sig, act, oldact)) return 0;
  return __sigaction(sig, act, oldact);
}
__attribute__((visibility("default"))) sighandler_t signal(int sig, sighandler_t handler) {
  // BSD semantics, as glibc's signal(): restart, handler stays installed.
  struct sigaction sa {}, old {};
  sa.sa_handler = handler;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sig > 0 && sig < NSIG) sigaddset(&sa.sa_mask, sig);
  if (sigaction(sig, &sa, &old) != 0) return SIG_ERR;
  // sa_handler and sa_sigaction share storage.
  return old.sa_handler;
}
}  // extern "C"

namespace emu::preload {
namespace {

// ---- Start-up, fork, exit ----

void Warn(const std::string& msg) {
  std::string line = absl::StrCat("emu: ", msg, "\n");
  ssize_t ignored = write(2, line.data(), line.size());
  (void)ignored;
}

[[noreturn]] void Die(const std::string& msg) {
  Warn(absl::StrCat(msg, " (unset LD_PRELOAD to run without emu)"));
  _exit(2);
}

const char* Env(const char* name) {
  const char* v = getenv(name);
  return v != nullptr && *v != 0 ? v : nullptr;
}

uint64_t EnvSize(const char* name, uint64_t dflt) {
  const char* v = Env(name);
  if (v == nullptr) return dflt;
  auto s = ParseSize(v);
  if (!s.ok()) Die(absl::StrCat(name, "=", v, ": ", s.status().message()));
  return *s;
}

int EnvInt(const char* name, int dflt) {
  const char* v = Env(name);
  if (v == nullptr) return dflt;
  char* end;
  long n = strtol(v, &end, 10);
  if (*end != 0 || n < 0 || n > (1 << 20)) Die(absl::StrCat(name, "=", v, ": not a number"));
  return static_cast<int>(n);
}

MachineOptions OptionsFromEnv() {
  MachineOptions o;
  o.fault_mode = FaultMode::kUffdThread;  // transparent to system calls (README)
  if (const char* m = Env("EMU_FAULT_MODE")) {
    if (!ParseFaultMode(m, &o.fault_mode)) {
      Die(absl::StrCat("EMU_FAULT_MODE=", m, ": expected sigbus, thread or sigsegv"));
    }
  }
  o.fault_around_pages = EnvInt("EMU_FAULT_AROUND", o.fault_around_pages);
  if (const char* z = Env("EMU_ZERO_PAGE")) {
    std::string v = z;
    if (v == "on" || v == "1") {
      o.zero_page = true;
    } else if (v == "off" || v == "0") {
      o.zero_page = false;
    } else {
      Die(absl::StrCat("EMU_ZERO_PAGE=", v, ": expected on or off"));
    }
  }
  o.arena_bytes = EnvSize("EMU_ARENA", uint64_t{128} << 30);
  o.mem_limit = EnvSize("EMU_MEM_LIMIT", 0);
  if (const char* p = Env("EMU_SWAP_FILE")) o.swap_path = p;
  if (const char* d = Env("EMU_SWAP_DIR")) o.swap_dir = d;
  o.swap_bytes = EnvSize("EMU_SWAP_SIZE", 0);
  if (const char* s = Env("EMU_NO_SWAP")) o.no_swap = std::string(s) == "1";
  if (const char* p = Env("EMU_POLICY")) o.reclaim_policy = p;
  o.swap_readahead_pages = EnvInt("EMU_READAHEAD", o.swap_readahead_pages);
  o.swap_read_poll_us = EnvInt("EMU_SWAP_POLL_US", o.swap_read_poll_us);
  if (const char* c = Env("EMU_SWAP_CACHE_CHECKSUM")) {
    std::string v = c;
    if (v != "on" && v != "off") {
      Die(absl::StrCat("EMU_SWAP_CACHE_CHECKSUM=", v, ": expected on or off"));
    }
    o.swap_cache_checksum = v == "on";
  }
  if (const char* f = Env("EMU_MADV_FREE")) {
    std::string v = f;
    if (v != "linux" && v != "volatile") {
      Die(absl::StrCat("EMU_MADV_FREE=", v, ": expected linux or volatile"));
    }
    g_free_as_volatile = v == "volatile";
  }
  if (o.mem_limit == 0) {
    // Frames for every page of RAM, not of the arena: the mem_map is sized by it.
    long pages = sysconf(_SC_PHYS_PAGES);
    if (pages > 0) o.max_frames = std::min<uint64_t>(pages, o.arena_bytes >> kPageShift);
  }
  return o;
}

void WriteStatsAtExit() {
  trace::Flush();
  if (g_machine != nullptr) WriteStats(*g_machine, /*fatal_signal=*/0);
}

}  // namespace
}  // namespace emu::preload

extern "C" [[noreturn]] void emu_preload_exit(int status) {
  emu::trace::Flush();
  if (emu::preload::g_machine != nullptr) emu::preload::WriteStats(*emu::preload::g_machine, 0);
  for (;;) emu::sys::RawSyscall6(SYS_exit_group, status, 0, 0, 0, 0, 0);
}

namespace emu::preload {
namespace {

void WriteStatsOnSignal(int sig) {
  trace::Flush();
  if (g_machine != nullptr) WriteStats(*g_machine, sig);
}

// EMU_TRACE=FILE: the process emu run started (EMU_TRACE_ROOT_PID) writes
// FILE, any other process (a forked child, a program it execs) FILE.PID.
std::string TraceFile() {
  const char* path = Env("EMU_TRACE");
  if (path == nullptr) return "";
  const char* root = Env("EMU_TRACE_ROOT_PID");
  if (root == nullptr || std::to_string(getpid()) != root) return absl::StrCat(path, ".", getpid());
  return path;
}

void StartTrace() {
  std::string file = TraceFile();
  if (file.empty()) return;
  if (absl::Status s = trace::Start(file); !s.ok()) Die(std::string(s.message()));
}

// fork(): the child stays on the emulator with its own fault registration
// (inherited: Machine's fork protocol, machine.cc) and, under a limit, its
// own limit, reclaim and kswapd, and a share of the parent's swap file (see
// SwapDevice's "Sharing"). From the prepare handler to the parent handler no
// mm call or reclaim pass changes the address space (faults still run:
// glibc's fork locks malloc's arenas in emulated memory), and the parent
// waits until the child is set up, so that no slot the child still needs is
// released under it. When the child cannot stay (the swap device is shared
// by SwapDevice::kMaxSharers live processes, EMU_FORK_SHARE=0, or its set-up
// fails), it reads its swapped pages back with pread while the parent still
// waits, and leaves the emulator.
bool ForkShare() {
  static const bool share = Env("EMU_FORK_SHARE") == nullptr || Env("EMU_FORK_SHARE")[0] != '0';
  return share;
}

int g_fork_token = -1;     // PageReclaim::ForkPrepare's
bool g_fork_traced = false;  // whether the child records its faults too

void PrepareFork() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  AddressSpace* as = g_as.load(std::memory_order_acquire);
  if (as == nullptr) return;
  // Forks one at a time (a thread of an earlier fork may still be handing
  // its child the registration), before mmap_lock.
  const bool ctl = g_machine->ForkPrepare();
  // Reclaim passes try-lock mmap_lock, so holding it for write keeps them
  // off this address space (and LockSpace refuses it while forking).
  as->mmap_lock()->WriteLock();
  as->BeginFork();
  g_fork_token = -1;
  g_fork_traced = trace::Enabled();
  if (PageReclaim* r = g_machine->reclaim(); r != nullptr) g_fork_token = r->ForkPrepare(ForkShare());
  // Without the socket pair the parent cannot tell whether the child set
  // itself up; it then assumes so (a reservation the child never took stays
  // until this process is gone).
  if (!ctl) Warn("fork: no socket pair for the child's set-up");
}

void ParentAfterFork() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  AddressSpace* as = g_as.load(std::memory_order_acquire);
  if (as == nullptr) return;
  // The address space is the parent's again first: handing the child its
  // registration starts a thread (malloc), whose faults may need reclaim,
  // which a fork in progress holds off.
  as->EndFork();
  as->mmap_lock()->WriteUnlock();
  g_machine->ForkParent(g_fork_token);
}

// The child cannot stay on the emulator: its swapped pages are read back
// into plain memory, and faults on the arena are the kernel's from now on.
void LeaveEmulator(AddressSpace* as) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  g_as.store(nullptr, std::memory_order_release);
  // The lock is a copy held by the thread that forked, which is this one;
  // nothing in the child takes it again.
  as->mmap_lock()->AssertHeld();
  // Its memory is plain memory from here on (the registration goes first,
  // so that the reads below land in it).
  g_machine->host().ChildDetach();
  const bool pull = g_machine->reclaim() != nullptr && as->nr_swap_ptes() > 0;
  bool encodes = g_machine->host().prot_encodes_ptes();
  bool failed = false;
  for (const auto& [start, vma] : as->vmas()) {
    if (vma.foreign()) continue;  // the kernel's already
    Prot prot = VmFlagsToProt(vma.vm_flags);
    // SIGSEGV mode keeps pages that are not present PROT_NONE in the host;
    // swap-in needs every page writable for the moment.
    if (encodes || pull) {
      sys::Mprotect(reinterpret_cast<void*>(vma.start), vma.end - vma.start,
                    prot | PROT_READ | PROT_WRITE);
    }
    if (pull) {
      as->page_table().ForEachEntry(vma.range(), [&](VirtAddr a, std::atomic<uint64_t>* e) {
        Pte pte(e->load(std::memory_order_relaxed));
        if (pte.present() || !pte.swap()) return;
        if (!g_machine->reclaim()->ReadSlot(pte.swap_entry(), reinterpret_cast<void*>(a))) {
          failed = true;
        }
      });
    }
    if (encodes || pull) {
      sys::Mprotect(reinterpret_cast<void*>(vma.start), vma.end - vma.start, prot);
    }
  }
  // Its slots are read: its share of the swap device goes (an attached
  // child gives it up itself; the parent drops a reservation never taken).
  const bool attached = g_machine->child_attached();
  g_machine->ChildLeave();
  g_machine->ChildDone(attached ? 2 : 0);
  if (failed) {
    Warn("fork: the child could not read some of its swapped-out pages back");
    _exit(127);
  }
  UnregisterSignalMachine(g_machine);
  g_machine = nullptr;
  g_left_as = as;  // the break stays in the window (RawBrk)
}

void ChildAfterFork() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  AddressSpace* as = g_as.load(std::memory_order_acquire);
  if (as == nullptr) return;
  // First, before anything allocates: the child's registration, locks and
  // page tables (unless its first fault did it already).
  g_machine->ChildEarlyIfPending();
  g_brk_mu = PTHREAD_MUTEX_INITIALIZER;  // its holder may be a thread not copied
  // Its trace records would interleave with the parent's in one file
  // (ChildEarlyIfPending stopped recording).
  const bool traced = g_fork_traced;
  // Memory our own set-up maps comes from the kernel.
  Inside inside;
  const char* why = nullptr;
  if (g_machine->reclaim() != nullptr && !g_machine->child_attached()) {
    why = ForkShare() ? "the swap device is shared by as many processes as it tracks"
                      : "EMU_FORK_SHARE=0";
  }
  absl::Status s = absl::OkStatus();
  if (why == nullptr) s = g_machine->ChildLate();
  if (why == nullptr && s.ok()) {
    g_machine->ChildDone(1);
    StatsRestartAfterFork();
    // Its own trace file (FILE.PID), as an exec'd program gets.
    if (traced) {
      if (absl::Status t = trace::RestartAfterFork(TraceFile()); !t.ok()) {
        Warn(absl::StrCat("fork: the child does not record its faults: ", t.message()));
      }
    }
    // The child's counters start here, with its records: nothing between
    // these stores touches emulated memory.
    const bool recording = trace::Enabled();
    trace::g_enabled.store(false, std::memory_order_relaxed);
    g_machine->vmstat().Reset();
    trace::g_enabled.store(recording, std::memory_order_relaxed);
    return;
  }
  if (why == nullptr || ForkShare()) {
    Warn(absl::StrCat("fork: the child leaves the emulator: ", why != nullptr ? why : s.message()));
  }
  as->mmap_lock()->WriteLock();
  LeaveEmulator(as);
}

__attribute__((constructor(101))) void Init() {
  if (Env("EMU_DISABLE") != nullptr) return;
  MachineOptions o = OptionsFromEnv();
  std::string why;
  if (o.fault_mode != FaultMode::kSigsegv && !UffdAvailable(&why)) {
    Warn(absl::StrCat("userfaultfd is not usable (", why, "): falling back to SIGSEGV mode"));
    o.fault_mode = FaultMode::kSigsegv;
  }
  if (absl::Status s = o.Validate(); !s.ok()) Die(std::string(s.message()));
  auto m = CreateMachine(o);
  if (!m.ok()) Die(absl::StrCat("cannot create the machine: ", m.status().message()));
  auto as = (*m)->CreateAddressSpace(o.arena_bytes);
  if (!as.ok()) Die(absl::StrCat("cannot create the address space: ", as.status().message()));
  g_machine = m->release();
  AddressSpace* space = as->release();
  g_window = space->window();
  g_brk_base = g_brk_cur = g_window.start;
  g_brk_max = g_window.start + g_window.len_bytes() / 4;
  SetQuietErrors(true);

  void* libc = dlopen("libc.so.6", RTLD_NOLOAD | RTLD_LAZY);
  struct Redirect {
    const char* name;
    void* to;
  } redirects[] = {
      {"mmap", reinterpret_cast<void*>(&emu_preload_mmap)},
      {"munmap", reinterpret_cast<void*>(&emu_preload_munmap)},
      {"mprotect", reinterpret_cast<void*>(&emu_preload_mprotect)},
      {"madvise", reinterpret_cast<void*>(&emu_preload_madvise)},
      {"mremap", reinterpret_cast<void*>(&emu_preload_mremap)},
      {"brk", reinterpret_cast<void*>(&emu_preload_brk)},
      {"sbrk", reinterpret_cast<void*>(&emu_preload_sbrk)},
      {"syscall", reinterpret_cast<void*>(&emu_preload_syscall)},
      {"mlock", reinterpret_cast<void*>(&emu_preload_mlock)},
      {"munlock", reinterpret_cast<void*>(&emu_preload_munlock)},
      {"mlockall", reinterpret_cast<void*>(&emu_preload_mlockall)},
      {"munlockall", reinterpret_cast<void*>(&emu_preload_munlockall)},
      {"_exit", reinterpret_cast<void*>(&emu_preload_exit)},
  };
  if (libc == nullptr) {
    Warn("libc.so.6 not found: only calls through the PLT are routed");
  } else {
    for (const Redirect& r : redirects) {
      if (absl::Status s = RedirectFunction(libc, r.name, r.to); !s.ok()) {
        Warn(absl::StrCat(s.message(), ": calls inside libc to it stay native"));
      }
    }
  }
  StartTrace();
  StatsStart(Env("EMU_STATS_DIR"));
  SetBeforeDefaultAction(&WriteStatsOnSignal);
  atexit(&WriteStatsAtExit);
  pthread_atfork(&PrepareFork, &ParentAfterFork, &ChildAfterFork);
  g_as.store(space, std::memory_order_release);
}

}  // namespace
}  // namespace emu::preload
