// Creates a Machine with the fault source its options ask for. The entry
// point of the library:
//
//   emu::MachineOptions opts;                   // uffd SIGBUS mode, fault-around 16
//   auto machine = emu::CreateMachine(opts);    // absl::StatusOr<unique_ptr<Machine>>
//   auto as = (*machine)->CreateAddressSpace();
//   auto p = (*as)->Mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
//   char* mem = reinterpret_cast<char*>(*p);    // faults are decided by emu
//
// Signal handlers: the machine installs SIGBUS/SIGSEGV handlers and forwards
// what is not an emulator fault to the handlers installed before it, so
// install your own first.
#ifndef EMU_FAULT_MACHINE_FACTORY_H_
#define EMU_FAULT_MACHINE_FACTORY_H_

#include <memory>

#include "absl/status/statusor.h"
#include "emu/machine.h"

namespace emu {

absl::StatusOr<std::unique_ptr<Machine>> CreateMachine(const MachineOptions& options = {});

}  // namespace emu

#endif  // EMU_FAULT_MACHINE_FACTORY_H_
