// The preload and `emu run` on a real program (preload_probe) with glibc's
// allocator: its memory is served by the emulator (the counters move),
// under a limit with swap, through system calls, signals, fork and exec; and
// emu run's exit statuses are the shell's.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include <catch2/catch.hpp>

#include "fault/host_backends.h"
#include "emu/host_mmu.h"

namespace {

struct Result {
  int status = -1;  // exit status, or 128 + signal
  std::string out;  // stdout and stderr
  std::string stats;
};


Result Run(const std::string& emu_args, const std::string& probe_args) {
  char dir[] = "/tmp/emu-preload-test.XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string stats = std::string(dir) + "/stats.json";
  std::string out = std::string(dir) + "/out";
  // A hang (a lost fork event was one) fails the test with status 124
  // rather than holding the suite until ctest's timeout.
  std::string cmd = "timeout -k 10 300 " + std::string(EMU_BIN) + " run --stats " + stats + " " +
                    emu_args + " -- " + PROBE_BIN + " " + probe_args + " >" + out + " 2>&1";
  int st = std::system(cmd.c_str());
  Result r;
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  std::stringstream so, ss;
  so << std::ifstream(out).rdbuf();
  ss << std::ifstream(stats).rdbuf();
  r.out = so.str();
  r.stats = ss.str();
  std::remove(stats.c_str());
  std::remove(out.c_str());
  rmdir(dir);
  return r;
}

// The first process's counter `name` in a stats file.
uint64_t Counter(const std::string& stats, const std::string& name) {
  size_t at = stats.find("\"" + name + "\":");
  if (at == std::string::npos) return 0;
  return std::strtoull(stats.c_str() + at + name.size() + 3, nullptr, 10);
}

const char* Modes() {
  std::string why;
  return emu::UffdAvailable(&why) ? nullptr : "userfaultfd unavailable";
}

std::string ModeArg(const std::string& mode) {
  if (mode != "sigsegv" && Modes() != nullptr) {
    std::fprintf(stderr, "SKIP: mode %s needs userfaultfd\n", mode.c_str());
    std::exit(77);
  }
  return "--mode " + mode;
}

TEST_CASE("Preload: glibc malloc (arenas, mmap chunks, realloc, brk) runs on the emulator",
          "[preload]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  Result r = Run(ModeArg(mode) + " --no-summary", "malloc 32");
  INFO(r.out);
  REQUIRE(r.status == 0);
  CHECK(Counter(r.stats, "pgfault") > 1000);        // its pages were faulted by emu
  CHECK(Counter(r.stats, "mremap_moves") >= 1);     // realloc moved the block
  CHECK(Counter(r.stats, "peak_anon_pages") >= 16384);
}

TEST_CASE("Preload: under a memory limit pages go to swap and come back intact", "[preload]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  Result r = Run(ModeArg(mode) + " --mem-limit 16M --no-summary", "malloc 24");
  INFO(r.out);
  REQUIRE(r.status == 0);
  CHECK(Counter(r.stats, "pswpout") > 0);
  CHECK(Counter(r.stats, "pswpin") > 0);
  CHECK(Counter(r.stats, "peak_anon_pages") <= 4096);
}

TEST_CASE("emu run: pages read back from swap come writable with a checksum unless "
          "--swap-cache-checksum off",
          "[preload][csum]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  Result on = Run(ModeArg(mode) + " --mem-limit 16M --summary -", "malloc 24");
  INFO(on.out);
  REQUIRE(on.status == 0);
  CHECK(Counter(on.stats, "swap_cache_writable") > 0);
  CHECK(Counter(on.stats, "swap_csum_clean") > 0);
  CHECK(on.out.find("swap cache") != std::string::npos);
  // (emu run hands the option to the preload as EMU_SWAP_CACHE_CHECKSUM.)
  Result off = Run(ModeArg(mode) + " --mem-limit 16M --no-summary --swap-cache-checksum off",
                   "malloc 24");
  INFO(off.out);
  REQUIRE(off.status == 0);
  CHECK(Counter(off.stats, "pswpin") > 0);
  CHECK(Counter(off.stats, "swap_cache_writable") == 0);
  CHECK(Counter(off.stats, "swap_csum_clean") == 0);
  CHECK(Run("--no-summary --swap-cache-checksum maybe", "exit 0").status == 2);
}

TEST_CASE("Preload: MADV_FREE frees lazily (Linux) or marks a volatile range (--madv-free)",
          "[preload][volatile]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  std::string semantics = GENERATE("linux", "volatile");
  Result r = Run(ModeArg(mode) + " --mem-limit 16M --no-summary --madv-free " + semantics,
                 "madvfree 8 " + semantics);
  INFO(r.out);
  REQUIRE(r.status == 0);
  if (semantics == "linux") {
    CHECK(Counter(r.stats, "pglazyfree") > 0);
    CHECK(Counter(r.stats, "pglazyfreed") > 0);
    CHECK(Counter(r.stats, "pgvolatile_marked") == 0);
  } else {
    CHECK(Counter(r.stats, "pgvolatile_marked") >= 2048);
    CHECK(Counter(r.stats, "pgvolatile") > 0);
    CHECK(Counter(r.stats, "pglazyfree") == 0);
  }
  Result bad = Run("--madv-free sometimes", "exit 0");
  CHECK(bad.status == 2);
}

TEST_CASE("Preload: the kernel reads and writes emulated memory as natively (thread mode)",
          "[preload]") {
  Result r = Run(ModeArg("thread") + " --mem-limit 8M --no-summary", "syscalls 16");
  INFO(r.out);
  REQUIRE(r.status == 0);
  CHECK(Counter(r.stats, "pswpin") > 0);
}

TEST_CASE("Preload: the program's SIGSEGV handler gets its own faults with their siginfo",
          "[preload]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  Result r = Run(ModeArg(mode) + " --no-summary", "signals");
  INFO(r.out);
  REQUIRE(r.status == 0);
}

// The stats record of the n-th process (0: the first to write one).
std::string Record(const std::string& stats, int n) {
  size_t at = 0;
  for (int i = 0; i <= n; i++) {
    at = stats.find("\"pid\"", i == 0 ? 0 : at + 1);
    if (at == std::string::npos) return "";
  }
  return stats.substr(at);
}

// Of two records, the forked child's (its ppid is the other's pid) and the parent's.
std::pair<std::string, std::string> ChildAndParent(const std::string& stats) {
  std::string a = Record(stats, 0), b = Record(stats, 1);
  if (Counter(b, "ppid") == Counter(a, "pid")) return {b, a};
  return {a, b};
}

int Records(const std::string& stats) {
  int n = 0;
  for (size_t at = stats.find("\"pid\""); at != std::string::npos; at = stats.find("\"pid\"", at + 1)) {
    n++;
  }
  return n;
}

TEST_CASE("Preload: under a limit a forked child stays on the emulator, swapped pages included",
          "[preload][fork]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  Result r = Run(ModeArg(mode) + " --mem-limit 8M --no-summary", "fork 16");
  INFO(r.out);
  INFO(r.stats);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("leaves the emulator") == std::string::npos);
  REQUIRE(Records(r.stats) == 2);
  // The child read the parent's swapped pages from the shared swap file and
  // swapped its own writes out and in under its own limit.
  auto [child, parent] = ChildAndParent(r.stats);
  REQUIRE(Counter(child, "ppid") == Counter(parent, "pid"));
  CHECK(Counter(parent, "pswpout") > 0);
  CHECK(Counter(child, "pswpin") > 0);
  CHECK(Counter(child, "pswpout") > 0);
  CHECK(Counter(child, "peak_anon_pages") <= 2048);
}

TEST_CASE("Preload: fork while another thread's write faults are in flight loses no page",
          "[preload][fork]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  Result r = Run(ModeArg(mode) + " --mem-limit 8M --no-summary", "forkwrite 16");
  INFO(r.out);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("leaves the emulator") == std::string::npos);
}

TEST_CASE("Preload: a forked child's heap works when malloc's free lists run through swapped pages",
          "[preload][fork]") {
  // Before the child's first instruction touches them: glibc's fork and the
  // emulator's own set-up in the child allocate from those lists.
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  std::string share = GENERATE("1", "0");
  setenv("EMU_FORK_SHARE", share.c_str(), 1);
  Result r = Run(ModeArg(mode) + " --mem-limit 8M --swap-size 256M --no-summary", "forkheap 24");
  unsetenv("EMU_FORK_SHARE");
  INFO(mode << " EMU_FORK_SHARE=" << share << "\n" << r.out);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("leaves the emulator") == std::string::npos);
  // 6 children and the parent; the children of EMU_FORK_SHARE=0 leave the
  // emulator and write no record.
  CHECK(Records(r.stats) == (share == "1" ? 7 : 1));
}

TEST_CASE("Preload: two threads fork at once under a limit", "[preload][fork]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  Result r = Run(ModeArg(mode) + " --mem-limit 8M --swap-size 256M --no-summary", "forkthreads 16");
  INFO(mode << "\n" << r.out);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("leaves the emulator") == std::string::npos);
  CHECK(Records(r.stats) == 25);
}

TEST_CASE("Preload: many processes share one swap file (a fan at once, then 40 in sequence)",
          "[preload][fork]") {
  std::string mode = GENERATE("thread", "sigbus");
  Result r = Run(ModeArg(mode) + " --mem-limit 8M --no-summary", "forkmany 16");
  INFO(r.out);
  REQUIRE(r.status == 0);
  // More children than a swap device tracks at once (32) all stayed on the
  // emulator: the shares of those that exited came back.
  CHECK(r.out.find("leaves the emulator") == std::string::npos);
  CHECK(Records(r.stats) == 45);
}

TEST_CASE("Preload: a forked child forks again, and so does its child", "[preload][fork]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  const bool limit = GENERATE(false, true);
  Result r = Run(ModeArg(mode) + (limit ? " --mem-limit 8M" : "") + " --no-summary", "forkchain 12");
  INFO(mode << (limit ? " under a limit" : "") << "\n" << r.out);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("leaves the emulator") == std::string::npos);
  CHECK(Records(r.stats) == 15);  // 1 + 2 + 4 + 8 processes
}

TEST_CASE("Preload: a child that forks at once gets its own child set up", "[preload][fork]") {
  // In handler-thread mode the parent reads the child's fault descriptor
  // until the child says it is set up; the child's own fork event must not
  // be read there (its child then waited for its descriptor forever: 3 of 3
  // runs hung under a limit before ChildDone waited for the parent).
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  const bool limit = GENERATE(false, true);
  Result r = Run(ModeArg(mode) + (limit ? " --mem-limit 8M" : "") + " --no-summary", "forkrace 4");
  INFO(mode << (limit ? " under a limit" : "") << "\n" << r.out);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("leaves the emulator") == std::string::npos);
  CHECK(Records(r.stats) == 41);  // 1 + 20 children + 20 grandchildren
}

TEST_CASE("Preload: without a limit a forked child stays on the emulator", "[preload][fork]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  Result r = Run(ModeArg(mode) + " --no-summary", "fork 16");
  INFO(r.out);
  INFO(r.stats);
  REQUIRE(r.status == 0);
  // Two processes wrote statistics; the child counted faults of its own
  // (its writes to the inherited block and its new malloc).
  size_t second = r.stats.find("\"pid\"", r.stats.find("\"pid\"") + 1);
  REQUIRE(second != std::string::npos);
  uint64_t parent_faults = Counter(r.stats, "pgfault");
  uint64_t child_faults = Counter(r.stats.substr(second), "pgfault");
  CHECK(parent_faults > 0);
  CHECK(child_faults > 0);
}

TEST_CASE("Preload: file and shared mappings placed with MAP_FIXED over emulated memory",
          "[preload]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  Result r = Run(ModeArg(mode) + " --mem-limit 16M --no-summary", "foreign");
  INFO(r.out);
  REQUIRE(r.status == 0);
  // The anonymous memory around and after them was the emulator's.
  CHECK(Counter(r.stats, "pgfault") > 0);
}

TEST_CASE("Preload: mlockall keeps memory resident under a limit; MCL_FUTURE populates",
          "[preload]") {
  std::string mode = GENERATE("thread", "sigbus", "sigsegv");
  Result r = Run(ModeArg(mode) + " --mem-limit 16M --no-summary", "mlockall");
  INFO(r.out);
  REQUIRE(r.status == 0);
  CHECK(Counter(r.stats, "pswpout") > 0);
}

TEST_CASE("Preload: exec, system() and posix_spawn from an emulated process", "[preload]") {
  Result r = Run(ModeArg("thread") + " --no-summary", "exec");
  INFO(r.out);
  REQUIRE(r.status == 0);
}

TEST_CASE("emu run --trace records every fault; emu trace summary reads it back", "[preload][trace]") {
  std::string mode = GENERATE("thread", "sigbus");
  char dir[] = "/tmp/emu-trace-test.XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string trace = std::string(dir) + "/faults.trace";
  Result r = Run(ModeArg(mode) + " --mem-limit 16M --no-summary --trace " + trace, "malloc 24");
  INFO(r.out);
  REQUIRE(r.status == 0);
  std::string summary_file = std::string(dir) + "/summary";
  int st = std::system((std::string(EMU_BIN) + " trace summary " + trace + " >" + summary_file).c_str());
  REQUIRE(WEXITSTATUS(st) == 0);
  std::stringstream ss;
  ss << std::ifstream(summary_file).rdbuf();
  std::string text = ss.str();
  INFO(text);
  // Every fault the emulator decided is in the trace.
  CHECK(std::strtoull(text.c_str(), nullptr, 10) == Counter(r.stats, "pgfault"));
  CHECK(text.find("new-page") != std::string::npos);
  CHECK(text.find("swap-in") != std::string::npos);
  CHECK(text.find("hottest") != std::string::npos);
  int bad = std::system((std::string(EMU_BIN) + " trace summary /etc/hostname 2>/dev/null").c_str());
  CHECK(WEXITSTATUS(bad) == 2);
  std::remove(trace.c_str());
  std::remove(summary_file.c_str());
  rmdir(dir);
}

TEST_CASE("emu run --trace: a forked child records its own faults in FILE.PID", "[preload][trace]") {
  char dir[] = "/tmp/emu-trace-test.XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string trace = std::string(dir) + "/faults.trace";
  Result r = Run(ModeArg("thread") + " --mem-limit 8M --no-summary --trace " + trace, "fork 16");
  INFO(r.out);
  INFO(r.stats);
  REQUIRE(r.status == 0);
  REQUIRE(Records(r.stats) == 2);
  auto [child, parent] = ChildAndParent(r.stats);
  REQUIRE(Counter(child, "ppid") == Counter(parent, "pid"));
  auto count = [&](const std::string& file) {
    std::string out = std::string(dir) + "/summary";
    int st = std::system((std::string(EMU_BIN) + " trace summary " + file + " >" + out).c_str());
    std::stringstream ss;
    ss << std::ifstream(out).rdbuf();
    std::remove(out.c_str());
    return WEXITSTATUS(st) == 0 ? std::strtoull(ss.str().c_str(), nullptr, 10) : 0;
  };
  const std::string child_file = trace + "." + std::to_string(Counter(child, "pid"));
  CHECK(count(trace) == Counter(parent, "pgfault"));
  CHECK(Counter(child, "pgfault") > 0);
  CHECK(count(child_file) == Counter(child, "pgfault"));
  std::remove(trace.c_str());
  std::remove(child_file.c_str());
  rmdir(dir);
}

TEST_CASE("emu run: exit statuses and signals pass through; usage errors are 2", "[preload][run]") {
  CHECK(Run("--no-summary", "exit 42").status == 42);
  Result segv = Run("--no-summary", "segv");
  CHECK(segv.status == 128 + SIGSEGV);
  CHECK(Run("--bogus-option", "exit 0").status == 2);
  CHECK(Run("--mem-limit 3X", "exit 0").status == 2);
  CHECK(Run("--mem-limit 1M", "exit 0").status == 2);  // below the 4 MiB minimum
  CHECK(Run("--swap-file /nonexistent-dir/swap", "exit 0").status == 2);
  int nf = std::system((std::string(EMU_BIN) + " run -- emu-no-such-program 2>/dev/null").c_str());
  CHECK(WEXITSTATUS(nf) == 127);
  int nx = std::system((std::string(EMU_BIN) + " run -- /etc/hostname 2>/dev/null").c_str());
  CHECK(WEXITSTATUS(nx) == 126);
  Result sum = Run("", "malloc 8");
  CHECK(sum.status == 0);
  CHECK(sum.out.find("faults") != std::string::npos);
  CHECK(sum.out.find("peak") != std::string::npos);
}

}  // namespace
