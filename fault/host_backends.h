// The host MMUs (emu/host_mmu.h): userfaultfd and SIGSEGV+mprotect.
#ifndef EMU_FAULT_HOST_BACKENDS_H_
#define EMU_FAULT_HOST_BACKENDS_H_

#include <memory>

#include "absl/status/statusor.h"
#include "emu/host_mmu.h"

namespace emu {

class Machine;

// userfaultfd over the whole arena, registered MISSING|WP. In kUffdSigbus
// mode faults arrive as SIGBUS in the faulting thread (signals.cc); in
// kUffdThread mode handler threads read them from the descriptor.
absl::StatusOr<std::unique_ptr<HostMmu>> CreateUffdMmu(Machine* machine, AddrRange arena,
                                                       FaultMode mode);

// mprotect over the arena: a page that is not present is PROT_NONE, a zero
// page PROT_READ, a written page the VMA's protection. Faults arrive as SIGSEGV.
absl::StatusOr<std::unique_ptr<HostMmu>> CreateSigsegvMmu(Machine* machine, AddrRange arena);

// The arena's reservation mapped again over `r` (HostMmu::Reserve): PROT_NONE,
// and not VM_LOCKED even under mlockall(MCL_FUTURE) (the emulator's pages are
// locked in its own PTEs, and a locked host range refuses the zap). False
// when the mmap fails.
bool MapReservation(AddrRange r);

// Handler threads in kUffdThread mode: EMU_UFFD_HANDLERS, else one per
// online CPU. With more than one, thread i is pinned to CPU i.
int HandlerThreads();

// Whether userfaultfd with the features emu needs is usable here; the reason
// in *why when not.
bool UffdAvailable(std::string* why);

}  // namespace emu

#endif  // EMU_FAULT_HOST_BACKENDS_H_
