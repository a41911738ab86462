#include "fault/signals.h"

#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>

#include "emu/machine.h"
#include "emu/status.h"
#include "emu/trace.h"
#include "fault/handle_fault.h"

#ifndef SEGV_PKUERR
#define SEGV_PKUERR 4
#endif

// glibc's own entry point, which the preload does not interpose.
extern "C" int __sigaction(int sig, const struct sigaction* act, struct sigaction* oldact);

namespace emu {
namespace {

constexpr int kMaxMachines = 16;
std::atomic<Machine*> g_machines[kMaxMachines];
struct sigaction g_prev_segv, g_prev_bus;  // written once, before any dispatch
std::mutex g_install_mu;  // serializes (re)installation; never taken in a handler
std::atomic<bool> g_installed{false};
std::atomic<void (*)(int)> g_before_default{nullptr};

constexpr unsigned long kPfWrite = 1ul << 1;  // x86 page-fault error code: write access
constexpr unsigned long kPfInstr = 1ul << 4;  // x86 page-fault error code: instruction fetch

// The last address a thread's SIGSEGV was retried for (the host mid-change,
// see Dispatch) and how many times in a row: a bound, so that a lasting
// disagreement is reported rather than retried forever.
thread_local VirtAddr t_retry_addr __attribute__((tls_model("initial-exec"))) = 0;
thread_local int t_retry_count __attribute__((tls_model("initial-exec"))) = 0;
constexpr int kMaxHostRetries = 1000;

Machine* FindMachine(VirtAddr addr) {
  for (auto& slot : g_machines) {
    Machine* m = slot.load(std::memory_order_acquire);
    if (m != nullptr && m->arena().Contains(addr)) return m;
  }
  return nullptr;
}

void WriteStr(const char* s) {
  size_t n = 0;
  while (s[n]) n++;
  ssize_t ignored = write(2, s, n);
  (void)ignored;
}

void WriteHex(uintptr_t v) {
  char buf[19] = "0x";
  for (int i = 0; i < 16; i++) buf[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 15];
  buf[18] = 0;
  WriteStr(buf);
}

// Delivers `sig` to the handler installed before ours; with no such handler,
// restores the default action so that the signal kills the process as it
// would have without emu. `refault`: the faulting instruction will raise the
// same signal again when we return, so there is no need to raise it.
void Forward(int sig, siginfo_t* info, void* ctx, bool refault) {
  struct sigaction& stored = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
  const struct sigaction prev = stored;
  // sa_handler and sa_sigaction share their storage: SIG_DFL and SIG_IGN
  // are no handler whatever the flags say.
  const bool handler = prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN;
  if (handler) {
    // What the kernel does on delivery (Linux: signal_setup_done(),
    // handle_signal()): SA_RESETHAND puts the default back first; the
    // handler runs with its sa_mask blocked, and the signal itself unless
    // SA_NODEFER. The previous mask comes back when it returns (a handler
    // that siglongjmps restores its own).
    if (prev.sa_flags & SA_RESETHAND) stored.sa_handler = SIG_DFL;  // flags stay, as in Linux
    sigset_t block = prev.sa_mask, old;
    if (!(prev.sa_flags & SA_NODEFER)) sigaddset(&block, sig);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    if (prev.sa_flags & SA_SIGINFO) {
      prev.sa_sigaction(sig, info, ctx);
    } else {
      prev.sa_handler(sig);
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    return;
  }
  if (auto fn = g_before_default.load(std::memory_order_acquire)) fn(sig);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  __sigaction(sig, &dfl, nullptr);
  if (!refault) {
    // Queue it for this thread with the siginfo we decided on; it is
    // delivered (and kills) once this handler returns.
    syscall(SYS_rt_tgsigqueueinfo, getpid(), gettid(), sig, info);
  }
}

void Dispatch(int sig, siginfo_t* info, void* ctx) {
  int saved_errno = errno;
  VirtAddr addr = reinterpret_cast<VirtAddr>(info->si_addr);
  // A forked child's fault, read by the parent (kChildFaultRead/Write).
  const bool from_parent = sig == SIGBUS && info->si_code == SI_QUEUE &&
                           (info->si_errno == kChildFaultRead || info->si_errno == kChildFaultWrite);
  // si_code <= 0: sent by a process.
  Machine* m = info->si_code > 0 || from_parent ? FindMachine(addr) : nullptr;
  // A forked child's first fault sets the child up before anything else.
  if (m != nullptr) m->ChildEarlyIfPending();
  // A protection-key violation (an execute-only mapping read, on CPUs with
  // PKU) is the kernel's own verdict on the VMA's protection, never a fault
  // for the emulator: forward it as it is.
  if (m == nullptr || (sig == SIGSEGV && info->si_code == SEGV_PKUERR)) {
    Forward(sig, info, ctx, /*refault=*/info->si_code > 0);
    errno = saved_errno;
    return;
  }
  FaultMode mode = m->options().fault_mode;
  bool ours = (sig == SIGBUS && mode == FaultMode::kUffdSigbus) ||
              (sig == SIGSEGV && mode == FaultMode::kSigsegv) || from_parent;
  AddressSpace* as = m->FindAddressSpace(addr);
  unsigned ret;
  if (!ours) {
    // The kernel refused the access (uffd modes: a hole or a protection
    // violation); only the si_code needs the emulator's view.
    ret = kFaultAccErr;
    if (as == nullptr) {
      ret = kFaultSigsegv;
    } else {
      ReadLockHolder l(as->mmap_lock());
      const Vma* v = as->vmas().Lookup(addr);
      const unsigned long err = static_cast<ucontext_t*>(ctx)->uc_mcontext.gregs[REG_ERR];
      const bool write = err & kPfWrite;
      const bool allowed = write ? v != nullptr && v->writable()
                                 : v != nullptr && (v->vm_flags & kVmProtMask) != 0;
      if (v == nullptr) {
        ret = kFaultSigsegv;
      } else if (sig == SIGSEGV && !v->foreign() && !(err & kPfInstr) && allowed &&
                 !ExecuteOnly(*v, write ? kFaultWrite : 0)) {
        // The VMA allows the access: the host is between two mappings of
        // this page (a copy-on-write copy or try_to_unmap goes in while
        // the page is PROT_NONE, HostMmu::ReplaceWithCopy; this thread
        // waited for the mm call that was changing it). Retry it, a
        // bounded number of times in a row, unless the page's PTE is
        // claimed: then the emulator is in the middle of changing it (a
        // try_to_unmap stops writes to a page whose writes the host
        // tracks, reads what the host recorded, then unmaps it, and the
        // window lasts as long as the emulator is descheduled), and the
        // retry waits for it however long it takes.
        const VirtAddr page = PageAlignDown(addr);
        t_retry_count = t_retry_addr == page ? t_retry_count + 1 : 0;
        t_retry_addr = page;
        if (as->GetPte(page).locked()) t_retry_count = 0;
        if (t_retry_count < kMaxHostRetries) ret = kFaultRetry;
      }
    }
  } else if (as == nullptr) {
    ret = kFaultSigsegv;
  } else {
    auto* uc = static_cast<ucontext_t*>(ctx);
    unsigned flags = from_parent ? (info->si_errno == kChildFaultWrite ? kFaultWrite : 0)
                     : (uc->uc_mcontext.gregs[REG_ERR] & kPfWrite) ? kFaultWrite
                                                                   : 0;
    // SIGSEGV mode: executing a page of a VMA without PROT_EXEC is the
    // program's SEGV_ACCERR, not a fault to resolve (it would retry forever).
    if (!from_parent && (uc->uc_mcontext.gregs[REG_ERR] & kPfInstr)) flags |= kFaultExec;
    timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ret = m->fault_handler().HandleMmFault(*as, addr, flags);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (trace::Enabled()) {
      uint64_t start = t0.tv_sec * 1000000000ull + t0.tv_nsec;
      trace::Record(addr, static_cast<uint32_t>(gettid()), flags & kFaultWrite, ret, start,
                    t1.tv_sec * 1000000000ull + t1.tv_nsec - start);
    }
    m->vmstat().Add(mode == FaultMode::kSigsegv ? VmEvent::k_fault_ns_sigsegv
                                                : VmEvent::k_fault_ns_sigbus,
                    (t1.tv_sec - t0.tv_sec) * 1000000000ull + t1.tv_nsec - t0.tv_nsec);
  }
  if (ret & (kFaultSigsegv | kFaultAccErr)) {
    siginfo_t si = *info;
    si.si_signo = SIGSEGV;
    si.si_code = (ret & kFaultSigsegv)  ? SEGV_MAPERR
                 : (ret & kFaultPkuErr) ? SEGV_PKUERR
                                        : SEGV_ACCERR;
    Forward(SIGSEGV, &si, ctx, /*refault=*/sig == SIGSEGV);
  } else if (ret & (kFaultSigbus | kFaultOom | kFaultHostLimit)) {
    ReportFatalFault(addr, ret);
    siginfo_t si = *info;
    si.si_signo = SIGBUS;
    si.si_code = BUS_ADRERR;
    Forward(SIGBUS, &si, ctx, /*refault=*/false);
  } else if (ret & kFaultRetry) {
    sched_yield();  // another thread is installing this page
  }
  errno = saved_errno;
}

// Installs Dispatch for `sig` unless it is already there; the handler it
// displaces becomes the one signals are forwarded to. Called whenever a
// machine registers, so a handler someone installed after an earlier machine
// (a test framework, a runtime) is chained rather than lost.
void InstallHandler(int sig, struct sigaction* prev) {
  struct sigaction cur {};
  __sigaction(sig, nullptr, &cur);
  if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == Dispatch) return;
  struct sigaction sa {};
  sa.sa_sigaction = Dispatch;
  // SA_NODEFER: a forwarded handler may itself touch emulated memory.
  sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  *prev = cur;
  __sigaction(sig, &sa, nullptr);
}

}  // namespace

absl::Status RegisterSignalMachine(Machine* machine) {
  {
    std::lock_guard<std::mutex> l(g_install_mu);
    InstallHandler(SIGSEGV, &g_prev_segv);
    InstallHandler(SIGBUS, &g_prev_bus);
    g_installed.store(true, std::memory_order_release);
  }
  for (auto& slot : g_machines) {
    Machine* expected = nullptr;
    if (slot.compare_exchange_strong(expected, machine)) return absl::OkStatus();
  }
  return ErrnoError(ENOSPC, "too many machines in one process");
}

void UnregisterSignalMachine(Machine* machine) {
  for (auto& slot : g_machines) {
    Machine* expected = machine;
    slot.compare_exchange_strong(expected, nullptr);
  }
}

bool ChainSigaction(int sig, const struct sigaction* act, struct sigaction* oldact) {
  if ((sig != SIGSEGV && sig != SIGBUS) || !g_installed.load(std::memory_order_acquire)) {
    return false;
  }
  std::lock_guard<std::mutex> l(g_install_mu);
  struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
  if (oldact != nullptr) *oldact = prev;
  // A handler replaced while a forward reads it is read whole or torn only
  // between two handlers the program installed itself: acceptable, as for a
  // signal racing sigaction(2).
  if (act != nullptr) prev = *act;
  return true;
}

void SetBeforeDefaultAction(void (*fn)(int sig)) {
  g_before_default.store(fn, std::memory_order_release);
}

void ReportFatalFault(VirtAddr addr, unsigned fault_result) {
  WriteStr("emu: fatal fault at ");
  WriteHex(addr);
  WriteStr((fault_result & kFaultOom)
               ? ": out of memory: the memory limit is reached and nothing can be reclaimed "
                 "(swap full or absent, or every page locked), SIGBUS\n"
           : (fault_result & kFaultSwapIoErr)
               ? ": the page could not be read back from swap (I/O error), SIGBUS\n"
           : (fault_result & kFaultHostLimit)
               ? ": the host refused with ENOMEM (memory, page tables or VMAs: "
                 "vm.max_map_count), SIGBUS\n"
               : ": the host refused the page install, SIGBUS\n");
}

}  // namespace emu
