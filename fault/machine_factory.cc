#include "fault/machine_factory.h"

#include "fault/handle_fault.h"
#include "fault/host_backends.h"
#include "swap/vmscan.h"

namespace emu {

absl::StatusOr<std::unique_ptr<Machine>> CreateMachine(const MachineOptions& options) {
  auto factory = [&options](Machine* m, AddrRange arena)
      -> absl::StatusOr<std::unique_ptr<HostMmu>> {
    if (options.fault_mode == FaultMode::kSigsegv) return CreateSigsegvMmu(m, arena);
    return CreateUffdMmu(m, arena, options.fault_mode);
  };
  auto handler = [](Machine* m) -> std::unique_ptr<FaultHandler> {
    return std::make_unique<AnonFaultHandler>(m);
  };
  auto reclaim = [](Machine* m) -> absl::StatusOr<std::unique_ptr<PageReclaim>> {
    auto v = Vmscan::Create(m);
    if (!v.ok()) return v.status();
    return std::unique_ptr<PageReclaim>(std::move(*v));
  };
  return Machine::CreateWith(options, factory, handler, reclaim);
}

}  // namespace emu
