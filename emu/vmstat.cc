#include "emu/vmstat.h"

namespace emu {
namespace {
constexpr std::array<std::string_view, kNrVmEvents> kNames = {
#define EMU_VM_EVENT_NAME(name, doc) #name,
    EMU_VM_EVENTS(EMU_VM_EVENT_NAME)
#undef EMU_VM_EVENT_NAME
};
constexpr std::array<std::string_view, kNrVmEvents> kDocs = {
#define EMU_VM_EVENT_DOC(name, doc) doc,
    EMU_VM_EVENTS(EMU_VM_EVENT_DOC)
#undef EMU_VM_EVENT_DOC
};
}  // namespace

std::string_view VmEventName(VmEvent e) { return kNames[static_cast<int>(e)]; }
std::string_view VmEventDoc(VmEvent e) { return kDocs[static_cast<int>(e)]; }

std::array<uint64_t, kNrVmEvents> VmStat::Snapshot() const {
  std::array<uint64_t, kNrVmEvents> out;
  for (int i = 0; i < kNrVmEvents; i++) out[i] = counters_[i].value.load(std::memory_order_relaxed);
  return out;
}

void VmStat::Reset() {
  for (auto& c : counters_) c.value.store(0, std::memory_order_relaxed);
}

}  // namespace emu
