// The process-wide SIGBUS/SIGSEGV dispatcher. It resolves faults on machines'
// arenas in the faulting thread and forwards every other signal, with its
// original siginfo, to the handler that was installed before emu's.
#ifndef EMU_FAULT_SIGNALS_H_
#define EMU_FAULT_SIGNALS_H_

#include <signal.h>

#include "absl/status/status.h"
#include "emu/types.h"

namespace emu {

class Machine;

// Adds `machine` to the dispatcher (installing it on first use).
// ENOSPC when kMaxMachines are registered.
absl::Status RegisterSignalMachine(Machine* machine);
void UnregisterSignalMachine(Machine* machine);

// The program's view of SIGSEGV and SIGBUS while emu's dispatcher is
// installed (the preload's sigaction and signal): `act` (if not null) becomes
// the handler emu forwards to, and *oldact (if not null) receives the one it
// replaces, as sigaction(2) would report it. Returns false, changing nothing,
// when `sig` is not one emu dispatches or no machine has installed it.
bool ChainSigaction(int sig, const struct sigaction* act, struct sigaction* oldact);

// Called (in signal context) just before a signal is forwarded with its
// default action, which usually ends the process: the preload writes its
// statistics there. `fn` must be async-signal-safe.
void SetBeforeDefaultAction(void (*fn)(int sig));

// A forked child's fault that its parent read from the child's userfaultfd
// (handler-thread mode, until the child has handler threads of its own;
// Machine's fork protocol) arrives as SIGBUS with si_code SI_QUEUE, this
// si_errno, and the address in si_addr; the dispatcher resolves it in the
// faulting thread.
inline constexpr int kChildFaultRead = 0x454d5530;   // "EMU0"
inline constexpr int kChildFaultWrite = 0x454d5531;  // "EMU1"

// Writes a one-line reason for a fatal fault to stderr. async-signal-safe.
void ReportFatalFault(VirtAddr addr, unsigned fault_result);

}  // namespace emu

#endif  // EMU_FAULT_SIGNALS_H_
