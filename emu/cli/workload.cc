// `emu workload`: the embedded default program of `emu run` (and of the
// README's first command). A plain program: it knows nothing of the
// emulator; run under `emu run --mem-limit` it shows the zero page, copy on
// write from it, swap out and in, mremap and the brk heap, a fork and
// MADV_FREE, and checks every byte it wrote.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "emu/cli/cli.h"
#include "emu/machine.h"

namespace emu::cli {
namespace {

constexpr size_t kPage = 4096;

uint64_t Word(size_t page, uint64_t seed) { return page * 0x9e3779b97f4a7c15ull + seed; }

bool Verify(const char* p, size_t pages, uint64_t seed, const char* what) {
  for (size_t i = 0; i < pages; i++) {
    uint64_t v;
    std::memcpy(&v, p + i * kPage, sizeof(v));
    if (v != Word(i, seed)) {
      std::printf("workload: FAILED: %s: page %zu holds %#llx\n", what, i,
                  static_cast<unsigned long long>(v));
      return false;
    }
  }
  return true;
}

}  // namespace

int WorkloadMain(const std::vector<std::string>& args) {
  uint64_t bytes = uint64_t{256} << 20;
  for (size_t i = 0; i + 1 < args.size(); i += 2) {
    if (args[i] == "--size") {
      auto s = ParseSize(args[i + 1]);
      if (!s.ok() || *s < (uint64_t{1} << 20)) {
        std::fprintf(stderr, "emu workload: bad --size %s\n", args[i + 1].c_str());
        return 2;
      }
      bytes = *s;
    }
  }
  size_t pages = bytes / kPage;
  std::printf("workload: %zu MiB through malloc\n", static_cast<size_t>(bytes >> 20));
  char* p = static_cast<char*>(std::malloc(bytes));
  if (p == nullptr) return 1;
  // 1. Reads of memory never written: the zero page.
  uint64_t sum = 0;
  for (size_t i = 0; i < pages; i++) sum += static_cast<unsigned char>(p[i * kPage + 8]);
  std::printf("workload: read every page first (zero page): sum %llu\n",
              static_cast<unsigned long long>(sum));
  if (sum != 0) return 1;
  // 2. Writes to those pages: copy on write from the zero page. 3. More than
  // the limit: the first pages go to swap.
  for (size_t i = 0; i < pages; i++) {
    uint64_t v = Word(i, 1);
    std::memcpy(p + i * kPage, &v, sizeof(v));
  }
  std::printf("workload: wrote every page (copy on write from the zero page)\n");
  // 4. Everything read back: swap in.
  if (!Verify(p, pages, 1, "after the first write pass")) return 1;
  std::printf("workload: verified every page (swap in of what went out)\n");
  // 5. realloc of a large block: mremap, the contents move with it.
  char* q = static_cast<char*>(std::realloc(p, bytes + bytes / 2));
  if (q == nullptr || !Verify(q, pages, 1, "after realloc")) return 1;
  std::printf("workload: realloc to %zu MiB kept the contents (mremap)\n",
              static_cast<size_t>((bytes + bytes / 2) >> 20));
  // 6. A fork: the child sees the parent's memory, swapped pages included.
  pid_t pid = fork();
  if (pid == 0) _exit(Verify(q, pages, 1, "in the forked child") ? 0 : 1);
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return 1;
  std::printf("workload: a forked child saw the same memory\n");
  // 7. Small allocations: malloc's brk heap, freed and reused.
  std::vector<char*> small;
  for (int round = 0; round < 4; round++) {
    for (int i = 0; i < 50000; i++) {
      small.push_back(static_cast<char*>(std::malloc(64 + (i % 200))));
      std::memset(small.back(), round, 64);
    }
    for (char* s : small) std::free(s);
    small.clear();
  }
  std::printf("workload: 200000 small allocations (the brk heap)\n");
  // 8. Memory given back lazily (MADV_FREE), half of it taken again, then
  // new memory: under a limit the half not taken again is dropped without
  // I/O (zeros), the half written again keeps its new data.
  char* f = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(q) + kPage - 1) & ~(kPage - 1));
  const size_t fpages = pages - 1, again = fpages / 2;
  if (madvise(f, fpages * kPage, MADV_FREE) != 0) return 1;
  for (size_t i = 0; i < again; i++) {
    uint64_t v = Word(i, 2);
    std::memcpy(f + i * kPage, &v, sizeof(v));
  }
  char* r = static_cast<char*>(std::malloc(bytes / 2));
  if (r == nullptr) return 1;
  for (size_t i = 0; i < bytes / 2; i += kPage) r[i] = 1;
  if (!Verify(f, again, 2, "written again after MADV_FREE")) return 1;
  // The rest holds what step 2 wrote (at q + j pages) or, dropped, zeros.
  size_t dropped = 0;
  const char* rest = f + again * kPage;
  const char* end = f + fpages * kPage;
  for (size_t j = 0; j < pages; j++) {
    const char* at = q + j * kPage;
    if (at < rest || at + sizeof(uint64_t) > end) continue;
    uint64_t v;
    std::memcpy(&v, at, sizeof(v));
    if (v == 0) {
      dropped++;
    } else if (v != Word(j, 1)) {
      std::printf("workload: FAILED: MADV_FREE: page %zu holds %#llx\n", j,
                  static_cast<unsigned long long>(v));
      return 1;
    }
  }
  std::printf("workload: MADV_FREE of %zu MiB, half written again: %zu pages of the rest "
              "dropped, the rest kept\n",
              static_cast<size_t>((fpages * kPage) >> 20), dropped);
  std::free(r);
  std::free(q);
  std::printf("workload: ok\n");
  return 0;
}

}  // namespace emu::cli
