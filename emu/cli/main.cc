// The `emu` command: front end of the emulator.
#include <cstdio>
#include <string>
#include <vector>

#include "emu/cli/cli.h"
#include "emu/trace.h"
#include "emu_git_sha.h"

namespace {

constexpr char kUsage[] = R"(NAME
    emu - a userspace MMU emulator on real memory

SYNOPSIS
    emu run [options] [--] [PROGRAM [ARGS...]]
    emu workload [--size SIZE]
    emu trace summary FILE
    emu demo [--mode MODE] [--size SIZE] [--threads N] [--fault-around N]
             [--zero-page on|off] [--arena SIZE] [--mem-limit SIZE]
             [--swap-dir DIR | --swap-file PATH] [--swap-size SIZE]
             [--policy lru|fifo] [--readahead N] [--swap-poll-us N]
             [--swap-cache-checksum on|off]
             [--rmap anon_vma|anonmm] [--madv-free linux|volatile]
             [--log SPEC]
    emu --help | --version

DESCRIPTION
    emu serves memory through its own software page tables: every page fault
    on memory it manages is decided by the emulator (zero page on read, a
    fresh page on write, copy-on-write from the zero page, fault-around) and
    then installed on genuine memory, so mapped pages run at native speed.

COMMANDS
    run     Runs PROGRAM, unmodified, with its private anonymous memory
            (malloc's heap and mappings, brk, mmap) served by the emulator
            through libemu-preload.so: under --mem-limit pages go to swap
            and come back. The program's stdin, stdout and stderr are its
            own; its exit status, or the signal that ended it, is emu's.
            At exit emu prints a summary per process to stderr: faults by
            kind, zero-page maps, COW copies, swap in and out, discards,
            peak resident memory and time spent handling faults.

            Without PROGRAM, runs the embedded workload (emu workload,
            256M) under a limit of 128M.

            Run options (besides the machine options below):
            --stats FILE     also write every process's counters as JSON
            --trace FILE     record every fault (time, thread, address,
                             access, how it was resolved, latency) in
                             per-thread buffers; read it with emu trace
                             summary (a program the first one execs
                             writes FILE.PID)
            --summary FILE   write the summary to FILE ("-": stderr)
            --no-summary     print no summary
            --no-swap        run under the limit without swap: SIGBUS
                             when nothing can be reclaimed
            --preload PATH   libemu-preload.so to use (also EMU_PRELOAD)
            Default fault mode for run: thread (system calls that touch
            never-faulted memory work as natively). A forked child stays
            on the emulator, under a limit with its own limit and a share
            of the parent's swap file (up to 32 processes per swap file;
            past that, or with EMU_FORK_SHARE=0, it reads its swapped pages
            back and leaves the emulator). The same settings work without emu run as
            environment variables of the preload: EMU_MEM_LIMIT,
            EMU_SWAP_FILE, EMU_SWAP_DIR, EMU_SWAP_SIZE, EMU_NO_SWAP=1,
            EMU_FAULT_MODE, EMU_FAULT_AROUND, EMU_ZERO_PAGE, EMU_POLICY,
            EMU_READAHEAD, EMU_SWAP_POLL_US,
            EMU_SWAP_CACHE_CHECKSUM, EMU_ARENA, EMU_STATS_DIR,
            EMU_DISABLE=1.

    workload
            A plain program that reads memory it never wrote (zero page),
            writes it (copy on write), reads it back, reallocs it, forks
            and checks the child's view, and churns small allocations;
            exits 1 on any wrong byte. Meant for emu run.

    trace summary FILE
            Prints a fault trace's counts and latency percentiles per
            resolution (zero-page, new-page, cow-zero, reuse, swap-in,
            spurious, retry, sigsegv, sigbus) and access, and the hottest
            2 MiB address ranges.

    demo    Runs a built-in workload through the emulator (sparse reads,
            sequential and random writes, write-after-read, mprotect,
            MADV_DONTNEED, mlock, concurrent writers, an emulated fork with
            copy-on-write and reclaim of the shared frames) under a memory
            limit of half its size, so pages go to swap and come back;
            verifies every byte, checks the model's invariants (swap_map
            and reverse maps included) and prints the vmstat counters.

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
    --mem-limit SIZE     resident memory limit, at least 4M; 0 for none
                         (default half of --size)
    --swap-dir DIR       where the swap file (unlinked, mode 0600) goes
                         (default $TMPDIR, else /var/tmp)
    --swap-file PATH     use this file as the swap device instead
    --swap-size SIZE     swap size (default twice the limit, at least 64M)
    --policy lru|fifo    reclaim policy: Linux's active/inactive lists
                         (default) or one list in fault order
    --readahead N        pages read around a swap-in fault, 1..64 (default 8)
    --swap-poll-us N     how long a swap-in polls for its read before it
                         sleeps, 0..10000 microseconds (default 200; 0 never
                         polls): a waiting CPU that halts is slow to wake on
                         a VM; polling spends that CPU instead
    --swap-cache-checksum on|off
                         map a page read back from swap writable, with its
                         slot's checksum, when no one else references the
                         slot (default on): reclaim compares the checksum
                         and drops an unchanged page without writing it, so
                         its first write costs no fault. off: map it
                         write-protected; its first write is a fault that
                         frees the slot
    --rmap METHOD        how a frame shared by the emulated fork finds its
                         mappings: anon_vma (default) or anonmm
    --madv-free linux|volatile
                         what the program's MADV_FREE does (run): linux
                         (default) frees a page lazily unless it is written
                         again after the call; volatile marks the range as
                         MADV_VOLATILE does (seed 003: O(1), no fault while
                         memory lasts, but until the first fault in the range
                         even data written after the call may be discarded:
                         only for programs that never rely on memory they
                         gave back with MADV_FREE). A program may also pass
                         emu's own MADV_VOLATILE (101) to madvise itself.
    --log SPEC           log levels, e.g. info or fault=debug,emu=info
                         (also EMU_LOG)

EXIT STATUS
    run: the program's own status; 2 on bad usage or an unusable swap,
    stats or summary path (checked before the program starts); 127 when
    PROGRAM is not found, 126 when it is not executable, as shells do.
    demo: 0 on success, 1 when the workload found wrong data or a broken invariant,
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
  if (args[0] == "workload") return emu::cli::WorkloadMain({args.begin() + 1, args.end()});
  if (args[0] == "trace") {
    if (args.size() != 3 || args[1] != "summary") {
      std::fprintf(stderr, "usage: emu trace summary FILE\n");
      return 2;
    }
    auto records = emu::trace::Read(args[2]);
    if (!records.ok()) {
      std::fprintf(stderr, "emu trace: %s\n", std::string(records.status().message()).c_str());
      return 2;
    }
    std::fputs(emu::trace::Summary(*records).c_str(), stdout);
    return 0;
  }
  if (args[0] == "run") return emu::cli::RunMain({args.begin() + 1, args.end()});
  if (args[0] == "demo") return emu::cli::DemoMain({args.begin() + 1, args.end()});
  std::fprintf(stderr, "emu: unknown command '%s' (try emu --help)\n", args[0].c_str());
  return 2;
}
