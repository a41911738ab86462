// Catch2 must not install its own SIGSEGV/SIGBUS handlers: the emulator owns
// them, and faults the tests provoke on purpose are checked in child processes.

#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
