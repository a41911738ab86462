// The preload's statistics file: one JSON object per process, written at
// exit (or just before a fatal signal's default action) into the directory
// named by EMU_STATS_DIR as emu-stats.PID.json. `emu run` reads them back
// for its summary and --stats. Writing is async-signal-safe: no allocation,
// one static buffer, write(2).
#ifndef EMU_PRELOAD_STATS_H_
#define EMU_PRELOAD_STATS_H_

namespace emu {
class Machine;
namespace preload {

// Records the start time and where to write (nullptr: nowhere).
void StatsStart(const char* dir);

// A forked child that stays on the emulator: its own start time and file.
void StatsRestartAfterFork();

// Writes the file once per process; `fatal_signal` is the signal about to
// end it, or 0 at exit.
void WriteStats(const Machine& machine, int fatal_signal);

}  // namespace preload
}  // namespace emu

#endif  // EMU_PRELOAD_STATS_H_
