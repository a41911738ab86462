#include "preload/stats.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "emu/machine.h"
#include "emu/vmstat.h"

namespace emu::preload {
namespace {

char g_dir[512];
bool g_enabled = false;
timespec g_start;
std::atomic<bool> g_written{false};

// A fixed buffer with append helpers; overflow truncates (never writes past).
struct Buf {
  char data[16384];
  size_t n = 0;
  void Put(const char* s, size_t len) {
    if (len > sizeof(data) - n) len = sizeof(data) - n;
    std::memcpy(data + n, s, len);
    n += len;
  }
  void Put(const char* s) { Put(s, std::strlen(s)); }
  void Put(std::string_view s) { Put(s.data(), s.size()); }
  void Num(uint64_t v) {
    char tmp[24];
    int i = 0;
    do {
      tmp[i++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (i > 0) Put(&tmp[--i], 1);
  }
  void Field(const char* key, uint64_t v, bool comma = true) {
    Put("\"");
    Put(key);
    Put("\":");
    Num(v);
    if (comma) Put(",");
  }
  void StrField(const char* key, const char* v) {
    Put("\"");
    Put(key);
    Put("\":\"");
    for (const char* p = v; *p; p++) {
      if (*p == '"' || *p == '\\') Put("\\");
      if (static_cast<unsigned char>(*p) >= 0x20) Put(p, 1);
    }
    Put("\",");
  }
};

Buf g_buf;   // one writer: g_written admits one
Buf g_path;

}  // namespace

void StatsStart(const char* dir) {
  clock_gettime(CLOCK_MONOTONIC, &g_start);
  if (dir == nullptr) return;
  size_t len = std::strlen(dir);
  if (len + 64 > sizeof(g_dir)) return;
  std::memcpy(g_dir, dir, len + 1);
  g_enabled = true;
}

void StatsRestartAfterFork() {
  clock_gettime(CLOCK_MONOTONIC, &g_start);
  g_written.store(false);
}

void WriteStats(const Machine& machine, int fatal_signal) {
  if (!g_enabled || g_written.exchange(true)) return;
  Buf& b = g_buf;
  b.n = 0;
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  uint64_t wall_ns = static_cast<uint64_t>(now.tv_sec - g_start.tv_sec) * 1000000000ull +
                     static_cast<uint64_t>(now.tv_nsec) - static_cast<uint64_t>(g_start.tv_nsec);
  char exe[256];
  ssize_t el = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  exe[el > 0 ? el : 0] = 0;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  b.Put("{");
  b.Field("pid", static_cast<uint64_t>(getpid()));
  b.Field("ppid", static_cast<uint64_t>(getppid()));
  b.StrField("exe", exe);
  b.StrField("fault_mode", std::string(FaultModeName(machine.options().fault_mode)).c_str());
  b.Field("mem_limit", machine.options().mem_limit);
  b.Field("wall_ns", wall_ns);
  b.Field("fatal_signal", static_cast<uint64_t>(fatal_signal));
  b.Field("maxrss_kb", static_cast<uint64_t>(ru.ru_maxrss));
  b.Put("\"vmstat\":{");
  for (int i = 0; i < kNrVmEvents; i++) {
    auto e = static_cast<VmEvent>(i);
    b.Put("\"");
    b.Put(VmEventName(e));
    b.Put("\":");
    b.Num(machine.vmstat().Get(e));
    b.Put(",");
  }
  auto& mm = const_cast<Machine&>(machine).mem_map();
  b.Field("nr_anon_pages", mm.nr_used());
  b.Field("peak_anon_pages", mm.peak_used(), false);
  b.Put("}}\n");

  Buf& path = g_path;
  path.n = 0;
  path.Put(g_dir);
  path.Put("/emu-stats.");
  path.Num(static_cast<uint64_t>(getpid()));
  path.Put(".json");
  path.Put("", 1);  // the terminating NUL
  int fd = open(path.data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;
  size_t off = 0;
  while (off < b.n) {
    ssize_t w = write(fd, b.data + off, b.n - off);
    if (w <= 0) break;
    off += static_cast<size_t>(w);
  }
  close(fd);
}

}  // namespace emu::preload
