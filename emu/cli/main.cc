// The `emu` command: front end of the emulator.
#include <cstdio>
#include <string>
#include <vector>

#include "emu/cli/cli.h"
#include "emu_git_sha.h"

namespace {

constexpr char kUsage[] = R"(NAME
    emu - a userspace MMU emulator on real memory

SYNOPSIS
    emu demo [--mode MODE] [--size SIZE] [--threads N] [--fault-around N]
             [--zero-page on|off] [--arena SIZE] [--log SPEC]
    emu --help | --version

DESCRIPTION
    emu serves memory through its own software page tables: every page fault
    on memory it manages is decided by the emulator (zero page on read, a
    fresh page on write, copy-on-write from the zero page, fault-around) and
    then installed on genuine memory, so mapped pages run at native speed.

COMMANDS
    demo    Runs a built-in workload through the emulator (sparse reads,
            sequential and random writes, write-after-read, mprotect,
            MADV_DONTNEED, mlock, concurrent writers), verifies every byte,
            checks the model's invariants and prints the vmstat counters.

OPTIONS
    --mode MODE          fault source: sigbus (userfaultfd, resolved in the
                         faulting thread; default), thread (userfaultfd with
                         handler threads), sigsegv (mprotect + SIGSEGV, needs
                         no userfaultfd permission)
    --size SIZE          memory the workload maps (default 256M)
    --threads N          concurrent writer threads (default 2)
    --fault-around N     pages mapped around a fault, power of two 1..64
                         (default 16)
    --zero-page on|off   map the shared zero page on read faults (default on)
    --arena SIZE         host virtual memory reserved (default 64G)
    --log SPEC           log levels, e.g. info or fault=debug,emu=info
                         (also EMU_LOG)

EXIT STATUS
    0 on success, 1 when the workload found wrong data or a broken invariant,
    2 on bad usage or when the machine cannot be created.
)";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "--version") {
    std::printf("emu %s (%s)\n", EMU_VERSION, EMU_GIT_SHA);
    return 0;
  }
  if (args[0] == "demo") return emu::cli::DemoMain({args.begin() + 1, args.end()});
  std::fprintf(stderr, "emu: unknown command '%s' (try emu --help)\n", args[0].c_str());
  return 2;
}
