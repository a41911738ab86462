// `emu demo`: a built-in workload through the emulator, verified byte for byte.
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "emu/cli/cli.h"
#include "emu/log.h"
#include "rmap/rmap.h"
#include "emu/machine.h"
#include "emu/status.h"
#include "fault/machine_factory.h"

namespace emu::cli {
namespace {

struct DemoOptions {
  MachineOptions machine;
  uint64_t size = 256ull << 20;
  int threads = 2;
  bool limit_given = false;  // else the limit is half of --size
};

bool ParseArgs(const std::vector<std::string>& args, DemoOptions* o) {
  for (size_t i = 0; i < args.size(); i++) {
    const std::string& a = args[i];
    auto value = [&](const char* name) -> const std::string* {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "emu demo: %s needs a value\n", name);
        return nullptr;
      }
      return &args[++i];
    };
    const std::string* v = nullptr;
    if (a == "--mode") {
      if (!(v = value("--mode"))) return false;
      if (!ParseFaultMode(*v, &o->machine.fault_mode)) {
        std::fprintf(stderr, "emu demo: --mode '%s': want sigbus, thread or sigsegv\n", v->c_str());
        return false;
      }
    } else if (a == "--size" || a == "--arena") {
      if (!(v = value(a.c_str()))) return false;
      auto size = ParseSize(*v);
      if (!size.ok() || *size == 0) {
        std::fprintf(stderr, "emu demo: %s '%s' is not a size (e.g. 256M, 1G)\n", a.c_str(),
                     v->c_str());
        return false;
      }
      (a == "--size" ? o->size : o->machine.arena_bytes) = *size;
    } else if (a == "--mem-limit" || a == "--swap-size") {
      if (!(v = value(a.c_str()))) return false;
      auto size = ParseSize(*v);
      if (!size.ok()) {
        std::fprintf(stderr, "emu demo: %s '%s' is not a size (e.g. 64M, 0 for none)\n",
                     a.c_str(), v->c_str());
        return false;
      }
      if (a == "--mem-limit") {
        o->machine.mem_limit = *size;
        o->limit_given = true;
      } else {
        o->machine.swap_bytes = *size;
      }
    } else if (a == "--swap-dir" || a == "--swap-file") {
      if (!(v = value(a.c_str()))) return false;
      (a == "--swap-dir" ? o->machine.swap_dir : o->machine.swap_path) = *v;
    } else if (a == "--policy") {
      if (!(v = value("--policy"))) return false;
      o->machine.reclaim_policy = *v;
    } else if (a == "--rmap") {
      if (!(v = value("--rmap"))) return false;
      o->machine.rmap = *v;
    } else if (a == "--readahead") {
      if (!(v = value("--readahead"))) return false;
      if (!absl::SimpleAtoi(*v, &o->machine.swap_readahead_pages)) {
        std::fprintf(stderr, "emu demo: --readahead '%s' is not a number\n", v->c_str());
        return false;
      }
    } else if (a == "--swap-poll-us") {
      if (!(v = value("--swap-poll-us"))) return false;
      if (!absl::SimpleAtoi(*v, &o->machine.swap_read_poll_us)) {
        std::fprintf(stderr, "emu demo: --swap-poll-us '%s' is not a number\n", v->c_str());
        return false;
      }
    } else if (a == "--threads" || a == "--fault-around") {
      if (!(v = value(a.c_str()))) return false;
      int n;
      if (!absl::SimpleAtoi(*v, &n) || n < 1 || n > 1024) {
        std::fprintf(stderr, "emu demo: %s '%s': want a number from 1 to 1024\n", a.c_str(),
                     v->c_str());
        return false;
      }
      (a == "--threads" ? o->threads : o->machine.fault_around_pages) = n;
    } else if (a == "--swap-cache-checksum") {
      if (!(v = value("--swap-cache-checksum"))) return false;
      if (*v != "on" && *v != "off") {
        std::fprintf(stderr, "emu demo: --swap-cache-checksum '%s': want on or off\n", v->c_str());
        return false;
      }
      o->machine.swap_cache_checksum = *v == "on";
    } else if (a == "--zero-page") {
      if (!(v = value("--zero-page"))) return false;
      if (*v != "on" && *v != "off") {
        std::fprintf(stderr, "emu demo: --zero-page '%s': want on or off\n", v->c_str());
        return false;
      }
      o->machine.zero_page = *v == "on";
    } else if (a == "--log") {
      if (!(v = value("--log"))) return false;
      if (!SetLogLevels(*v)) {
        std::fprintf(stderr, "emu demo: --log '%s' does not parse (e.g. info, fault=debug)\n",
                     v->c_str());
        return false;
      }
    } else {
      std::fprintf(stderr, "emu demo: unknown option '%s' (try emu --help)\n", a.c_str());
      return false;
    }
  }
  return true;
}

class Phases {
 public:
  explicit Phases(const int* bad) : bad_(bad) {}
  template <typename Fn>
  void Run(const char* name, Fn&& fn) {
    int before = *bad_;
    auto t0 = std::chrono::steady_clock::now();
    fn();
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  %-34s %9.2f ms%s\n", name, ms, *bad_ != before ? "  WRONG DATA" : "");
  }

 private:
  const int* bad_;
};

uint8_t Pattern(uint64_t page) { return static_cast<uint8_t>(page * 131 + 7) | 1; }

}  // namespace

int DemoMain(const std::vector<std::string>& args) {
  DemoOptions o;
  if (!ParseArgs(args, &o)) return 2;
  o.size = (o.size + kPageSize - 1) & kPageMask;
  if (!o.limit_given) o.machine.mem_limit = std::max(o.size / 2, kMinMemLimit);
  if (absl::Status valid = o.machine.Validate(); !valid.ok()) {
    std::fprintf(stderr, "emu demo: %s\n", std::string(valid.message()).c_str());
    return 2;
  }
  if (o.machine.arena_bytes < 4 * o.size) {
    std::fprintf(stderr, "emu demo: --size %llu MiB needs an --arena of at least 4x that\n",
                 static_cast<unsigned long long>(o.size >> 20));
    return 2;
  }
  auto machine = CreateMachine(o.machine);
  if (!machine.ok()) {
    std::fprintf(stderr, "emu demo: cannot create the machine: %s\n",
                 std::string(machine.status().message()).c_str());
    int err = ToErrno(machine.status());
    if (o.machine.fault_mode != FaultMode::kSigsegv && (err == EPERM || err == EACCES)) {
      std::fprintf(stderr, "emu demo: without userfaultfd permission, try --mode sigsegv\n");
    }
    return 2;
  }
  Machine& m = **machine;
  auto as_or = m.CreateAddressSpace();
  if (!as_or.ok()) {
    std::fprintf(stderr, "emu demo: %s\n", std::string(as_or.status().message()).c_str());
    return 2;
  }
  AddressSpace& as = **as_or;
  std::printf("emu demo: %s, %llu MiB, %d threads\n", m.options().ToString().c_str(),
              static_cast<unsigned long long>(o.size >> 20), o.threads);
  auto p = as.Mmap(0, o.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  if (!p.ok()) {
    std::fprintf(stderr, "emu demo: mmap: %s\n", std::string(p.status().message()).c_str());
    return 2;
  }
  auto* mem = reinterpret_cast<volatile uint8_t*>(*p);
  const uint64_t pages = o.size / kPageSize;
  const uint64_t quarter = pages / 4;
  int bad = 0;
  Phases phases(&bad);

  phases.Run("sparse read (zero page)", [&] {
    uint64_t sum = 0;
    for (uint64_t i = 0; i < quarter; i += 4) sum += mem[i * kPageSize];
    if (sum != 0) bad++;
  });
  phases.Run("write after read (COW from zero)", [&] {
    for (uint64_t i = 0; i < quarter; i += 4) mem[i * kPageSize] = Pattern(i);
  });
  phases.Run("sequential first-touch write", [&] {
    for (uint64_t i = quarter; i < 2 * quarter; i++) mem[i * kPageSize] = Pattern(i);
  });
  phases.Run("random first-touch write", [&] {
    std::vector<uint64_t> order;
    for (uint64_t i = 2 * quarter; i < 3 * quarter; i++) order.push_back(i);
    std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
    for (uint64_t i : order) mem[i * kPageSize] = Pattern(i);
  });
  phases.Run("concurrent writers", [&] {
    std::vector<std::thread> ts;
    uint64_t per = quarter / o.threads;
    for (int t = 0; t < o.threads; t++) {
      ts.emplace_back([&, t] {
        for (uint64_t i = 3 * quarter + t * per; i < 3 * quarter + (t + 1) * per; i++) {
          mem[i * kPageSize] = Pattern(i);
        }
      });
    }
    for (auto& t : ts) t.join();
  });
  phases.Run("mprotect read-only + verify", [&] {
    if (!as.Mprotect(*p, quarter * kPageSize, PROT_READ).ok()) bad++;
    for (uint64_t i = 0; i < quarter; i++) {
      uint8_t want = (i % 4 == 0) ? Pattern(i) : 0;
      if (mem[i * kPageSize] != want) bad++;
    }
  });
  phases.Run("MADV_DONTNEED + verify zeros", [&] {
    VirtAddr start = *p + quarter * kPageSize;
    if (!as.Madvise(start, quarter * kPageSize / 2, MADV_DONTNEED).ok()) bad++;
    for (uint64_t i = quarter; i < quarter + quarter / 2; i++) {
      if (mem[i * kPageSize] != 0) bad++;
    }
  });
  phases.Run("mlock (populate real pages)", [&] {
    VirtAddr start = *p + 2 * quarter * kPageSize;
    if (!as.Mlock(start, quarter * kPageSize).ok()) bad++;
  });
  phases.Run("verify all", [&] {
    for (uint64_t i = quarter + quarter / 2; i < 3 * quarter; i++) {
      if (mem[i * kPageSize] != Pattern(i)) bad++;
    }
    uint64_t per = quarter / o.threads;
    for (uint64_t i = 3 * quarter; i < 3 * quarter + per * o.threads; i++) {
      if (mem[i * kPageSize] != Pattern(i)) bad++;
    }
  });
  phases.Run("fork + copy-on-write (emulated)", [&] {
    // A child address space sees the parent's memory; each writes half of
    // a range and sees only its own writes; the shared frames the child
    // leaves behind go when it does.
    auto child = as.Fork();
    if (!child.ok()) {
      std::fprintf(stderr, "emu demo: fork: %s\n", std::string(child.status().message()).c_str());
      bad++;
      return;
    }
    auto* cmem = reinterpret_cast<volatile uint8_t*>(*p - as.window().start +
                                                     (*child)->window().start);
    const uint64_t from = quarter + quarter / 2, to = 2 * quarter;
    for (uint64_t i = from; i < to; i++) {
      if (cmem[i * kPageSize] != Pattern(i)) bad++;
    }
    for (uint64_t i = from; i < to; i += 2) cmem[i * kPageSize] = static_cast<uint8_t>(~Pattern(i));
    for (uint64_t i = from + 1; i < to; i += 2) mem[i * kPageSize] = static_cast<uint8_t>(~Pattern(i));
    for (uint64_t i = from; i < to; i++) {
      const bool child_wrote = (i - from) % 2 == 0;
      if (cmem[i * kPageSize] != (child_wrote ? static_cast<uint8_t>(~Pattern(i)) : Pattern(i))) bad++;
      if (mem[i * kPageSize] != (child_wrote ? Pattern(i) : static_cast<uint8_t>(~Pattern(i)))) bad++;
    }
    if (m.reclaim() != nullptr) (void)m.reclaim()->ShrinkTo(quarter);  // shared frames too
    for (uint64_t i = from; i < to; i++) {
      if (cmem[i * kPageSize] != ((i - from) % 2 == 0 ? static_cast<uint8_t>(~Pattern(i)) : Pattern(i))) bad++;
    }
    absl::Status inv_fork = m.CheckInvariants();
    if (inv_fork.ok()) inv_fork = CheckRmap(m);  // every shared frame's walk is exact
    if (!inv_fork.ok()) {
      std::fprintf(stderr, "emu demo: after fork: %s\n", std::string(inv_fork.message()).c_str());
      bad++;
    }
    child->reset();
    for (uint64_t i = from + 1; i < to; i += 2) mem[i * kPageSize] = Pattern(i);
  });
  if (m.reclaim() != nullptr) {
    phases.Run("swap everything out, read back", [&] {
      // Everything but the mlocked quarter can go.
      if (!m.reclaim()->ShrinkTo(quarter).ok()) bad++;
      for (uint64_t i = quarter + quarter / 2; i < 2 * quarter; i++) {
        if (mem[i * kPageSize] != Pattern(i)) bad++;
      }
    });
  }
  absl::Status inv = m.CheckInvariants();
  std::printf("\nvmstat:\n");
  std::string text = m.VmStatText();
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    std::printf("  %s\n", text.substr(pos, nl - pos).c_str());
    pos = nl + 1;
  }
  uint64_t faults = m.vmstat().Get(VmEvent::k_pgfault);
  uint64_t ns = m.vmstat().Get(VmEvent::k_fault_ns_sigbus) +
                m.vmstat().Get(VmEvent::k_fault_ns_thread) +
                m.vmstat().Get(VmEvent::k_fault_ns_sigsegv);
  if (faults) std::printf("\nmean fault handling time: %.2f us\n", ns / 1000.0 / faults);
  std::printf("invariants: %s\n", inv.ok() ? "ok" : std::string(inv.message()).c_str());
  std::printf("data check: %s\n", bad == 0 ? "ok" : "FAILED");
  return (bad == 0 && inv.ok()) ? 0 : 1;
}

}  // namespace emu::cli
