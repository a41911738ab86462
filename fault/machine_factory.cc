#include "fault/machine_factory.h"

#include "fault/handle_fault.h"
#include "fault/host_backends.h"
#include "rmap/rmap.h"
#include "swap/swap_io.h"
#include "swap/vmscan.h"

namespace emu {

absl::StatusOr<std::unique_ptr<Machine>> CreateMachine(const MachineOptions& options) {
  // The machine keeps this factory (Machine::ChildLate, without fork events): it reads the
  // machine's own options, never the caller's.
  auto factory = [](Machine* m, AddrRange arena) -> absl::StatusOr<std::unique_ptr<HostMmu>> {
    FaultMode mode = m->options().fault_mode;
    if (mode == FaultMode::kSigsegv) return CreateSigsegvMmu(m, arena);
    return CreateUffdMmu(m, arena, mode);
  };
  auto handler = [](Machine* m) -> std::unique_ptr<FaultHandler> {
    return std::make_unique<AnonFaultHandler>(m);
  };
  auto reclaim = [](Machine* m) -> absl::StatusOr<std::unique_ptr<PageReclaim>> {
    auto v = Vmscan::Create(m);
    if (!v.ok()) return v.status();
    return std::unique_ptr<PageReclaim>(std::move(*v));
  };
  auto rmap = [](Machine* m) { return CreateRmapMethod(m->options().rmap); };
  auto m = Machine::CreateWith(options, factory, handler, reclaim, rmap);
  if (m.ok() && options.file_io == "uring") {
    // Emulated files read and write their pages with io_uring: a batch of
    // writeback goes out with queue depth (two rings: a fault's reclaim may
    // interrupt a thread that holds one).
    (*m)->set_file_io_factory([](int fd) { return CreateUringSwapIo(fd, 64, 2); });
  }
  return m;
}

}  // namespace emu
