// The interface between the core model and the fault layer (fault/): the
// core calls into it to populate pages (MAP_POPULATE, mlock, FaultInPages),
// the fault sources call it for every fault they catch.
#ifndef EMU_FAULT_HANDLER_H_
#define EMU_FAULT_HANDLER_H_

#include <cstdint>

#include "emu/types.h"

namespace emu {

class AddressSpace;

// = FAULT_FLAG_*.
inline constexpr unsigned kFaultWrite = 1u << 0;    // FAULT_FLAG_WRITE
inline constexpr unsigned kFaultNoZero = 1u << 1;   // do not map the zero page (GUP_FLAGS_IGNORE_ZERO, seed 004)
inline constexpr unsigned kFaultPopulate = 1u << 2;  // from populate/GUP, not a trap: no fault-around
inline constexpr unsigned kFaultRemote = 1u << 3;    // from a handler thread on behalf of the faulting one
inline constexpr unsigned kFaultExec = 1u << 5;      // an instruction fetch (SIGSEGV mode reports it)
inline constexpr unsigned kFaultForce = 1u << 4;     // FOLL_FORCE: a write into a read-only private VMA
                                                     // breaks COW; the PTE stays read-only

// = vm_fault_t: a bitmask, so the fault path never builds a Status.
inline constexpr unsigned kFaultOk = 0;
inline constexpr unsigned kFaultRetry = 1u << 0;    // VM_FAULT_RETRY: state changed, try the access again
inline constexpr unsigned kFaultOom = 1u << 1;      // VM_FAULT_OOM
inline constexpr unsigned kFaultSigbus = 1u << 2;   // VM_FAULT_SIGBUS
inline constexpr unsigned kFaultSigsegv = 1u << 3;  // bad access: no VMA (SEGV_MAPERR) ...
inline constexpr unsigned kFaultAccErr = 1u << 4;   // ... or forbidden by the VMA's protection (SEGV_ACCERR)
inline constexpr unsigned kFaultMajor = 1u << 5;     // VM_FAULT_MAJOR (I/O was needed)
inline constexpr unsigned kFaultSpurious = 1u << 6;  // nothing to do: already resolved
inline constexpr unsigned kFaultHostLimit = 1u << 7;  // the host refused with ENOMEM
inline constexpr unsigned kFaultSwapIoErr = 1u << 8;  // with kFaultSigbus: reading swap failed
inline constexpr unsigned kFaultPkuErr = 1u << 9;     // with kFaultAccErr: execute-only memory (SEGV_PKUERR)

class FaultHandler {
 public:
  virtual ~FaultHandler() = default;
  // Linux: mm/memory.c handle_mm_fault(). Takes the address space's
  // mmap_lock for read. async-signal-safe.
  virtual unsigned HandleMmFault(AddressSpace& as, VirtAddr addr, unsigned flags) = 0;
};

}  // namespace emu

#endif  // EMU_FAULT_HANDLER_H_
