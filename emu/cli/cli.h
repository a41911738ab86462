#ifndef EMU_CLI_CLI_H_
#define EMU_CLI_CLI_H_

#include <string>
#include <vector>

namespace emu::cli {

// `emu demo [options]`; returns the process exit status.
int DemoMain(const std::vector<std::string>& args);

// `emu run [options] -- PROGRAM ARGS...`; returns the program's exit status
// (or ends by its signal).
int RunMain(const std::vector<std::string>& args);

// `emu workload [--size SIZE]`: the embedded default program of `emu run`.
int WorkloadMain(const std::vector<std::string>& args);

}  // namespace emu::cli

#endif  // EMU_CLI_CLI_H_
