// The process-wide SIGBUS/SIGSEGV dispatcher. It resolves faults on machines'
// arenas in the faulting thread and forwards every other signal, with its
// original siginfo, to the handler that was installed before emu's.
#ifndef EMU_FAULT_SIGNALS_H_
#define EMU_FAULT_SIGNALS_H_

#include "absl/status/status.h"
#include "emu/types.h"

namespace emu {

class Machine;

// Adds `machine` to the dispatcher (installing it on first use).
// ENOSPC when kMaxMachines are registered.
absl::Status RegisterSignalMachine(Machine* machine);
void UnregisterSignalMachine(Machine* machine);

// Writes a one-line reason for a fatal fault to stderr. async-signal-safe.
void ReportFatalFault(VirtAddr addr, unsigned fault_result);

}  // namespace emu

#endif  // EMU_FAULT_SIGNALS_H_
