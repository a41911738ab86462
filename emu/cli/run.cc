// `emu run [options] -- PROGRAM ARGS...`: runs an unmodified program with
// its memory on the emulator (libemu-preload.so), under a memory limit with
// swap, and summarizes what its memory did.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "emu/cli/cli.h"
#include "emu/machine.h"
#include "fault/host_backends.h"

namespace emu::cli {
namespace {

struct RunOptions {
  MachineOptions machine;
  std::vector<std::pair<std::string, std::string>> env;  // EMU_* for the preload
  std::string stats_path;
  std::string trace_path;
  std::string summary_path;  // empty: stderr
  bool summary = true;
  std::string preload;
  std::vector<std::string> program;
};

int UsageError(const std::string& msg) {
  std::fprintf(stderr, "emu run: %s\nUsage: emu run [options] -- PROGRAM [ARGS...] (see emu --help)\n",
               msg.c_str());
  return 2;
}

// Where libemu-preload.so is: $EMU_PRELOAD, next to the build tree's emu
// binary, or the install's lib directory.
std::string FindPreload() {
  if (const char* p = getenv("EMU_PRELOAD"); p != nullptr && *p) return p;
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return "";
  self[n] = 0;
  std::string dir = self;
  dir = dir.substr(0, dir.rfind('/'));
  for (const char* rel : {"/../../preload/libemu-preload.so", "/../lib/libemu-preload.so",
                          "/libemu-preload.so"}) {
    std::string cand = dir + rel;
    if (access(cand.c_str(), R_OK) == 0) return cand;
  }
  return "";
}

// Resolves PROGRAM as a shell does: a name with a slash is used as is, else
// searched in $PATH. Returns 0, or the shell's status for the failure (127
// not found, 126 not executable) with a message.
int ResolveProgram(const std::string& name, std::string* path, std::string* why) {
  auto check = [&](const std::string& p) -> int {
    struct stat st;
    if (stat(p.c_str(), &st) != 0) return 127;
    if (S_ISDIR(st.st_mode) || access(p.c_str(), X_OK) != 0) return 126;
    return 0;
  };
  if (name.find('/') != std::string::npos) {
    int r = check(name);
    if (r == 127) *why = absl::StrCat(name, ": No such file or directory");
    if (r == 126) *why = absl::StrCat(name, ": Permission denied");
    *path = name;
    return r;
  }
  const char* env = getenv("PATH");
  std::string paths = env ? env : "/usr/local/bin:/usr/bin:/bin";
  int best = 127;
  std::stringstream ss(paths);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    std::string cand = (dir.empty() ? "." : dir) + "/" + name;
    int r = check(cand);
    if (r == 0) {
      *path = cand;
      return 0;
    }
    if (r == 126 && best == 127) {
      best = 126;
      *path = cand;
    }
  }
  *why = best == 127 ? absl::StrCat(name, ": command not found")
                     : absl::StrCat(*path, ": Permission denied");
  return best;
}

bool ParseArgs(const std::vector<std::string>& args, RunOptions* o, int* status) {
  *status = 2;
  size_t i = 0;
  auto value = [&](const std::string& flag, std::string* out) {
    if (i + 1 >= args.size()) {
      UsageError(absl::StrCat(flag, " needs a value"));
      return false;
    }
    *out = args[++i];
    return true;
  };
  auto size = [&](const std::string& flag, const std::string& v, uint64_t* out) {
    auto s = ParseSize(v);
    if (!s.ok()) {
      UsageError(absl::StrCat(flag, " ", v, ": ", s.status().message()));
      return false;
    }
    *out = *s;
    return true;
  };
  // Ranges are MachineOptions::Validate()'s to check.
  auto number = [&](const std::string& flag, const std::string& v, int* out) {
    char* end;
    long n = strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != 0 || n < INT32_MIN || n > INT32_MAX) {
      UsageError(absl::StrCat(flag, " ", v, ": not a number"));
      return false;
    }
    *out = static_cast<int>(n);
    return true;
  };
  for (; i < args.size(); i++) {
    const std::string& a = args[i];
    std::string v;
    if (a == "--") {
      i++;
      break;
    }
    if (a.empty() || a[0] != '-') break;
    if (a == "--mem-limit") {
      if (!value(a, &v) || !size(a, v, &o->machine.mem_limit)) return false;
      o->env.emplace_back("EMU_MEM_LIMIT", v);
    } else if (a == "--swap-file") {
      if (!value(a, &o->machine.swap_path)) return false;
      o->env.emplace_back("EMU_SWAP_FILE", o->machine.swap_path);
    } else if (a == "--swap-dir") {
      if (!value(a, &o->machine.swap_dir)) return false;
      o->env.emplace_back("EMU_SWAP_DIR", o->machine.swap_dir);
    } else if (a == "--swap-size") {
      if (!value(a, &v) || !size(a, v, &o->machine.swap_bytes)) return false;
      o->env.emplace_back("EMU_SWAP_SIZE", v);
    } else if (a == "--no-swap") {
      o->machine.no_swap = true;
      o->env.emplace_back("EMU_NO_SWAP", "1");
    } else if (a == "--mode") {
      if (!value(a, &v)) return false;
      if (!ParseFaultMode(v, &o->machine.fault_mode)) {
        UsageError(absl::StrCat("--mode ", v, ": expected sigbus, thread or sigsegv"));
        return false;
      }
      o->env.emplace_back("EMU_FAULT_MODE", v);
    } else if (a == "--fault-around") {
      if (!value(a, &v) || !number(a, v, &o->machine.fault_around_pages)) return false;
      o->env.emplace_back("EMU_FAULT_AROUND", v);
    } else if (a == "--zero-page") {
      if (!value(a, &v)) return false;
      if (v != "on" && v != "off") {
        UsageError(absl::StrCat("--zero-page ", v, ": expected on or off"));
        return false;
      }
      o->machine.zero_page = v == "on";
      o->env.emplace_back("EMU_ZERO_PAGE", v);
    } else if (a == "--policy") {
      if (!value(a, &o->machine.reclaim_policy)) return false;
      o->env.emplace_back("EMU_POLICY", o->machine.reclaim_policy);
    } else if (a == "--readahead") {
      if (!value(a, &v) || !number(a, v, &o->machine.swap_readahead_pages)) return false;
      o->env.emplace_back("EMU_READAHEAD", v);
    } else if (a == "--swap-cache-checksum") {
      if (!value(a, &v)) return false;
      if (v != "on" && v != "off") {
        UsageError(absl::StrCat("--swap-cache-checksum ", v, ": expected on or off"));
        return false;
      }
      o->machine.swap_cache_checksum = v == "on";
      o->env.emplace_back("EMU_SWAP_CACHE_CHECKSUM", v);
    } else if (a == "--swap-poll-us") {
      if (!value(a, &v) || !number(a, v, &o->machine.swap_read_poll_us)) return false;
      o->env.emplace_back("EMU_SWAP_POLL_US", v);
    } else if (a == "--madv-free") {
      if (!value(a, &v)) return false;
      if (v != "linux" && v != "volatile") {
        UsageError(absl::StrCat("--madv-free ", v, ": expected linux or volatile"));
        return false;
      }
      o->env.emplace_back("EMU_MADV_FREE", v);
    } else if (a == "--arena") {
      if (!value(a, &v) || !size(a, v, &o->machine.arena_bytes)) return false;
      o->env.emplace_back("EMU_ARENA", v);
    } else if (a == "--stats") {
      if (!value(a, &o->stats_path)) return false;
    } else if (a == "--trace") {
      if (!value(a, &o->trace_path)) return false;
    } else if (a == "--summary") {
      if (!value(a, &o->summary_path)) return false;
      if (o->summary_path == "-") o->summary_path.clear();
    } else if (a == "--no-summary") {
      o->summary = false;
    } else if (a == "--log") {
      if (!value(a, &v)) return false;
      o->env.emplace_back("EMU_LOG", v);
    } else if (a == "--preload") {
      if (!value(a, &o->preload)) return false;
    } else {
      UsageError(absl::StrCat("unknown option ", a));
      return false;
    }
  }
  o->program.assign(args.begin() + static_cast<long>(std::min(i, args.size())), args.end());
  if (o->program.empty()) {
    // The embedded default: emu's own workload, under half its size.
    o->program = {"/proc/self/exe", "workload", "--size", "256M"};
    if (o->machine.mem_limit == 0) {
      o->machine.mem_limit = uint64_t{128} << 20;
      o->env.emplace_back("EMU_MEM_LIMIT", "128M");
    }
  }
  *status = 0;
  return true;
}

// ---- The summary ----

// One process's stats file: a flat JSON object with one nested "vmstat".
struct ProcStats {
  std::string raw;
  std::map<std::string, uint64_t> num;
  std::map<std::string, std::string> str;
};

ProcStats ParseStats(const std::string& text) {
  ProcStats s;
  s.raw = text;
  size_t i = 0;
  while ((i = text.find('"', i)) != std::string::npos) {
    size_t k = text.find('"', i + 1);
    if (k == std::string::npos) break;
    std::string key = text.substr(i + 1, k - i - 1);
    if (k + 1 >= text.size() || text[k + 1] != ':') {
      i = k + 1;
      continue;
    }
    size_t v = k + 2;
    if (v < text.size() && text[v] == '"') {
      size_t e = text.find('"', v + 1);
      while (e != std::string::npos && text[e - 1] == '\\') e = text.find('"', e + 1);
      if (e == std::string::npos) break;
      s.str[key] = text.substr(v + 1, e - v - 1);
      i = e + 1;
    } else if (v < text.size() && text[v] == '{') {
      i = v + 1;
    } else {
      s.num[key] = std::strtoull(text.c_str() + v, nullptr, 10);
      i = v;
    }
  }
  return s;
}

std::string Mib(uint64_t bytes) { return absl::StrFormat("%.1f MiB", bytes / 1048576.0); }

std::string FormatProcess(const ProcStats& p) {
  auto n = [&](const char* k) {
    auto it = p.num.find(k);
    return it == p.num.end() ? uint64_t{0} : it->second;
  };
  std::string out;
  std::string exe = p.str.count("exe") ? p.str.at("exe") : "?";
  absl::StrAppend(&out, "emu: ", exe, " (pid ", n("pid"), "), mode ",
                  p.str.count("fault_mode") ? p.str.at("fault_mode") : "?", ", limit ",
                  n("mem_limit") ? Mib(n("mem_limit")) : std::string("none"), ", ",
                  absl::StrFormat("%.2f s", n("wall_ns") / 1e9), "\n");
  if (n("fatal_signal")) {
    absl::StrAppend(&out, "  ended by signal ", n("fatal_signal"), " (", strsignal(n("fatal_signal")),
                    ")\n");
  }
  absl::StrAppend(&out, absl::StrFormat(
      "  faults        %llu: read %llu, write %llu, write-protect %llu, spurious %llu, "
      "SIGSEGV %llu\n",
      n("pgfault"), n("pgfault_read"), n("pgfault_write"), n("pgfault_wp"),
      n("pgfault_spurious"), n("pgfault_sigsegv")));
  absl::StrAppend(&out, absl::StrFormat(
      "  pages         zero-page maps %llu, COW copies %llu (from the zero page), reused %llu, "
      "fault-around %llu, allocated %llu\n",
      n("zero_page_map"), n("cow_zero"), n("pgreuse"), n("fault_around_pages"), n("pgalloc")));
  absl::StrAppend(&out, absl::StrFormat(
      "  swap          in %llu pages (%llu major faults, %llu read ahead), out %llu pages; "
      "reclaimed %llu (%llu clean), direct-reclaim stalls %llu, OOM %llu\n",
      n("pswpin"), n("pgmajfault"), n("swap_ra"), n("pswpout"), n("pgsteal"),
      n("pgsteal_clean"), n("allocstall"), n("oom")));
  if (n("swap_cache_writable") > 0) {
    absl::StrAppend(&out, absl::StrFormat(
        "  swap cache    %llu pages read back writable with a checksum; at reclaim %llu "
        "unchanged (no I/O), %llu changed (written)\n",
        n("swap_cache_writable"), n("swap_csum_clean"), n("swap_csum_dirty")));
  }
  absl::StrAppend(&out, absl::StrFormat(
      "  discards      %llu pages (munmap, MADV_DONTNEED), mremap moves %llu\n",
      n("zap_pages"), n("mremap_moves")));
  if (n("pglazyfree") + n("pgvolatile_marked") > 0) {
    absl::StrAppend(&out, absl::StrFormat(
        "  lazy free     MADV_FREE %llu pages, %llu discarded; volatile marked %llu pages, "
        "%llu discarded; refaults %llu, swap-outs avoided %llu\n",
        n("pglazyfree"), n("pglazyfreed"), n("pgvolatile_marked"), n("pgvolatile"),
        n("discard_refault"), n("swapout_avoided")));
  }
  uint64_t fault_ns = n("fault_ns_sigbus") + n("fault_ns_thread") + n("fault_ns_sigsegv");
  uint64_t faults = n("pgfault");
  absl::StrAppend(&out, absl::StrFormat(
      "  resident      peak %s in emulated frames, process maxrss %s\n",
      Mib(n("peak_anon_pages") * kPageSize), Mib(n("maxrss_kb") * 1024)));
  absl::StrAppend(&out, absl::StrFormat("  fault time    %.3f s (%.1f us per fault)\n",
                                        fault_ns / 1e9,
                                        faults ? fault_ns / 1e3 / faults : 0.0));
  return out;
}

std::vector<ProcStats> ReadStatsDir(const std::string& dir) {
  std::vector<ProcStats> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return out;
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    if (std::strncmp(e->d_name, "emu-stats.", 10) == 0) names.push_back(e->d_name);
  }
  closedir(d);
  for (const std::string& name : names) {
    std::ifstream f(dir + "/" + name);
    std::stringstream ss;
    ss << f.rdbuf();
    std::string text = ss.str();
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    if (!text.empty()) out.push_back(ParseStats(text));
    unlink((dir + "/" + name).c_str());
  }
  rmdir(dir.c_str());
  std::sort(out.begin(), out.end(),
            [](const ProcStats& a, const ProcStats& b) { return a.num.at("pid") < b.num.at("pid"); });
  return out;
}

pid_t g_child = -1;
void ForwardSignal(int sig) {
  if (g_child > 0) kill(g_child, sig);
}

}  // namespace

int RunMain(const std::vector<std::string>& args) {
  RunOptions o;
  int status;
  if (!ParseArgs(args, &o, &status)) return status;
  if (absl::Status s = o.machine.Validate(); !s.ok()) return UsageError(std::string(s.message()));

  // Everything that can fail is checked before the program starts.
  if (o.preload.empty()) o.preload = FindPreload();
  if (o.preload.empty() || access(o.preload.c_str(), R_OK) != 0) {
    std::fprintf(stderr, "emu run: libemu-preload.so not found%s%s (set EMU_PRELOAD or --preload)\n",
                 o.preload.empty() ? "" : ": ", o.preload.c_str());
    return 2;
  }
  if (!o.machine.swap_path.empty()) {
    int fd = open(o.machine.swap_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
      std::fprintf(stderr, "emu run: cannot write the swap file %s: %s\n",
                   o.machine.swap_path.c_str(), strerror(errno));
      return 2;
    }
    close(fd);
  }
  if (!o.machine.swap_dir.empty()) {
    struct stat st;
    if (stat(o.machine.swap_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) ||
        access(o.machine.swap_dir.c_str(), W_OK | X_OK) != 0) {
      std::fprintf(stderr, "emu run: swap directory %s is not a writable directory\n",
                   o.machine.swap_dir.c_str());
      return 2;
    }
  }
  for (const std::string* path : {&o.stats_path, &o.summary_path, &o.trace_path}) {
    if (path->empty()) continue;
    int fd = open(path->c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      std::fprintf(stderr, "emu run: cannot write %s: %s\n", path->c_str(), strerror(errno));
      return 2;
    }
    close(fd);
  }
  if (o.machine.fault_mode != FaultMode::kSigsegv) {
    std::string why;
    if (!UffdAvailable(&why)) {
      std::fprintf(stderr, "emu run: warning: userfaultfd is not usable (%s); using SIGSEGV mode\n",
                   why.c_str());
      o.env.emplace_back("EMU_FAULT_MODE", "sigsegv");
    }
  }
  std::string path, why;
  if (o.program[0] == "/proc/self/exe") {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) o.program[0].assign(self, static_cast<size_t>(n));
  }
  if (int r = ResolveProgram(o.program[0], &path, &why); r != 0) {
    std::fprintf(stderr, "emu run: %s\n", why.c_str());
    return r;
  }
  const char* tmp = getenv("TMPDIR");
  std::string stats_dir = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/emu-run.XXXXXX");
  if (mkdtemp(stats_dir.data()) == nullptr) {
    std::fprintf(stderr, "emu run: cannot create a directory for statistics in %s: %s\n",
                 tmp && *tmp ? tmp : "/tmp", strerror(errno));
    return 2;
  }

  std::string preload_env = o.preload;
  if (const char* prev = getenv("LD_PRELOAD"); prev != nullptr && *prev) {
    preload_env = absl::StrCat(o.preload, " ", prev);  // ours first (tcmalloc)
  }
  pid_t child = fork();
  if (child < 0) {
    std::fprintf(stderr, "emu run: fork: %s\n", strerror(errno));
    return 2;
  }
  if (child == 0) {
    setenv("LD_PRELOAD", preload_env.c_str(), 1);
    setenv("EMU_STATS_DIR", stats_dir.c_str(), 1);
    if (!o.trace_path.empty()) {
      setenv("EMU_TRACE", o.trace_path.c_str(), 1);
      setenv("EMU_TRACE_ROOT_PID", std::to_string(getpid()).c_str(), 1);
    }
    for (const auto& [k, v] : o.env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> argv;
    for (std::string& a : o.program) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(path.c_str(), argv.data());
    int err = errno;
    std::fprintf(stderr, "emu run: %s: %s\n", path.c_str(), strerror(err));
    _exit(err == ENOENT ? 127 : 126);
  }
  g_child = child;
  // As system(3) and shells do: the terminal's SIGINT/SIGQUIT reach the
  // program directly; signals sent to emu alone are passed on.
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  for (int sig : {SIGTERM, SIGHUP, SIGUSR1, SIGUSR2}) signal(sig, ForwardSignal);
  int wstatus = 0;
  while (waitpid(child, &wstatus, 0) < 0 && errno == EINTR) {
  }

  std::vector<ProcStats> procs = ReadStatsDir(stats_dir);
  if (!o.stats_path.empty()) {
    std::ofstream f(o.stats_path, std::ios::trunc);
    f << "{\"program\":\"" << path << "\",\"exit_status\":"
      << (WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1)
      << ",\"signal\":" << (WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0) << ",\"processes\":[";
    for (size_t k = 0; k < procs.size(); k++) f << (k ? ",\n" : "\n") << procs[k].raw;
    f << "]}\n";
  }
  if (o.summary) {
    std::string text;
    for (const ProcStats& p : procs) text += FormatProcess(p);
    if (procs.empty()) text = "emu: no statistics (the program exited without running exit handlers)\n";
    if (o.summary_path.empty()) {
      std::fputs(text.c_str(), stderr);
    } else {
      std::ofstream(o.summary_path, std::ios::trunc) << text;
    }
  }
  if (WIFSIGNALED(wstatus)) {
    int sig = WTERMSIG(wstatus);
    std::fflush(nullptr);
    signal(sig, SIG_DFL);
    struct rlimit no_core {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);  // the program dumped its own core if it could
    kill(getpid(), sig);
    return 128 + sig;
  }
  return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 1;
}

}  // namespace emu::cli
