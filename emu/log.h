// One spdlog logger per component, levels from EMU_LOG ("fault=debug,swap=info"
// or a bare level for all). Never log in the fault path or in signal context:
// count in vmstat instead.
#ifndef EMU_LOG_H_
#define EMU_LOG_H_

#include <spdlog/spdlog.h>

namespace emu {

enum class Component { kEmu, kRmap, kSwap, kFault, kPreload, kCli };

// The logger of `c`, created on first use (writes to stderr).
spdlog::logger& Log(Component c);

// Re-reads levels from `spec` (the EMU_LOG syntax). Returns false and leaves
// levels alone when the spec does not parse.
bool SetLogLevels(std::string_view spec);

}  // namespace emu

#endif  // EMU_LOG_H_
