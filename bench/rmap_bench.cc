// rmap_bench: the two object-based reverse maps of anonymous memory side by
// side (emu/rmap.h): anon_vma (Andrea Arcangeli's) against anonmm (Hugh
// Dickins's), on what their structures take and what a walk from a frame to
// its PTEs costs, in the four shapes seed 000 set out to compare, and then
// the object-based map of shared anonymous memory (emu/shmem.h) in the fan:
//   chain   a deep fork chain: AS0 maps --pages pages and writes them, forks
//           AS1, AS1 forks AS2, ... to --depth forks; every frame is mapped
//           by all depth+1 address spaces
//   fan     a wide fork fan: AS0 (as above) forks --fan children
//   vmas    many VMAs: AS0 maps --vmas pages in one mapping, writes them and
//           makes every other page read-only (--vmas VMAs of one page), then
//           forks once. anon_vma gives each VMA its own anon_vma, and its
//           walk looks through every VMA of each address space for the ones
//           that carry the page's (the "Differs:" comment in
//           rmap/anon_vma.cc); anonmm looks up one address per member
//   mremap  mremapped ranges: AS0 maps --pages pages, writes them and forks
//           --children children; each child then moves its copy of the range
//           elsewhere in its window (MREMAP_MAYMOVE | MREMAP_FIXED onto a
//           range it unmapped first). anon_vma keeps sharing the frames (the
//           moved VMA keeps pgoff and anon_vma); anonmm copies every shared
//           frame it moves (early COW, counted as cow_page)
//   shmem   the fan over shared anonymous memory: AS0 maps --pages pages
//           MAP_SHARED | MAP_ANONYMOUS and writes them, forks --fan children,
//           and each child reads every page. The pages belong to a
//           ShmemObject (emu/shmem.h), their reverse map whatever the
//           machine's method (the i_mmap walk): both machines run the same
//           walk, so their runs are pooled into one "object (i_mmap)" column,
//           and the fan rows of the same run are its peers
//
// Each (scenario, method) run builds the shape on its own machine (1 GiB
// window per address space), then measures:
//   rmap structures  RmapMethod::MemoryBytes() once the shape is built
//                    (shmem: the object's page index and address-space
//                    list instead; MemoryBytes() does not cover the object)
//   walk             page_referenced (rmap/rmap.h) over every frame of AS0,
//                    one untimed pass first (it clears the young bits and
//                    checks every walk), then one timed pass: ns per frame
//                    walked and per mapping found
//   try_to_unmap     to a none PTE, on up to 256 frames of AS0 spread evenly
//                    over the range (destructive, so once per run): ns per
//                    frame and per mapping; each mapping's cost includes the
//                    host mmap that puts the arena's reservation back
//                    (shmem: after an untimed mprotect(PROT_READ) of the
//                    range in every address space, since try_to_unmap
//                    leaves a writable PTE mapped and every PTE of a shared
//                    writable mapping is writable)
//   (mremap)         the children's mremap calls, ns per page moved; the
//                    early-COW copies, how many of AS0's frames are still
//                    shared, and the frames in use
// p50 over --reps runs after one warm-up run, per method; anon_vma and
// anonmm alternate inside one repetition loop (which goes first flips each
// repetition). ratio = anon_vma / anonmm; shmem: p50 over the runs on
// both machines, ratio = object / the fan's value for each method.
//
// Checks (a failure is reported on stderr and the exit status is 1): every
// frame of AS0 is in the frame pool with the mapcount the shape gives it
// (chain depth+1, fan and shmem fan+1, vmas 2, mremap children+1 for
// anon_vma and 1 for anonmm); shmem: each is page i of one object and in
// its cache, and every child reads AS0's bytes; page_referenced finds
// exactly that many mappings of each frame, with no address space busy;
// the vmas shape has --vmas VMAs;
// anonmm's mremaps copy every shared page and anon_vma's none; each moved
// range still reads AS0's bytes; try_to_unmap leaves no mapping (shmem:
// the pages stay in the object's cache, and AS0 faults them back in with
// their bytes); and CheckRmap() passes after the walks (shmem: also once
// the shape is built) and again after try_to_unmap.
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/shmem.h"
#include "emu/vmstat.h"
#include "fault/host_backends.h"
#include "fault/machine_factory.h"
#include "rmap/rmap.h"

namespace emu::bench {
namespace {

constexpr char kProg[] = "rmap_bench";
constexpr uint64_t kWindowBytes = Machine::kGranule;  // one per address space
constexpr size_t kUnmapPages = 256;                   // try_to_unmap sample
constexpr int64_t kMaxSpaces = 1000;                  // depth, fan, children
constexpr int64_t kMaxPages = 65536;                  // 256 MiB of a 1 GiB window
constexpr char kBefore = 1;                           // the byte AS0 writes
constexpr const char* kMethods[2] = {"anon_vma", "anonmm"};

// ---- What is measured ----

// Run in this order: kShmem's peers are kFan's rows of the same mode.
enum Scenario { kChain, kFan, kManyVmas, kMremap, kShmem, kNrScenarios };

constexpr const char* kScenarioNames[kNrScenarios] = {"chain", "fan", "vmas", "mremap", "shmem"};

enum Metric {
  kBytes,
  kBytesPerSpace,
  kBytesWithVmaPtr,
  kObjectBytes,
  kObjectBytesPerSpace,
  kVmas,
  kFound,
  kSharedFrames,
  kCowPages,
  kFramesInUse,
  kMremapTime,
  kWalk,
  kWalkPerMapping,
  kUnmap,
  kUnmapPerMapping,
  kNrMetrics
};

// Which scenarios report a metric.
enum Scope { kAll, kAnonOnly, kMremapOnly, kSharedOnly };

struct MetricSpec {
  const char* name;   // JSON name: rmap_<scenario>_<name>
  const char* label;  // table label
  const char* unit;
  Scope scope;
  int decimals;  // in the table
};

constexpr MetricSpec kMetrics[kNrMetrics] = {
    {"bytes", "rmap structures", "B", kAnonOnly, 0},
    {"bytes_per_as", "  per address space", "B/as", kAnonOnly, 1},
    {"bytes_with_vma_ptr", "  + Vma::anon_vma (8 B/VMA)", "B", kAnonOnly, 0},
    {"object_bytes", "object index + spaces list", "B", kSharedOnly, 0},
    {"object_bytes_per_as", "  per address space", "B/as", kSharedOnly, 1},
    {"vmas", "VMAs (all address spaces)", "vmas", kAll, 0},
    {"found", "mappings found per frame", "mappings/frame", kAll, 2},
    {"shared_frames", "AS0 frames still shared", "frames", kMremapOnly, 0},
    {"cow_pages", "early-COW copies (cow_page)", "pages", kMremapOnly, 0},
    {"frames_in_use", "frames in use", "frames", kMremapOnly, 0},
    {"mremap", "mremap (children)", "ns/page", kMremapOnly, 1},
    {"walk", "walk (page_referenced)", "ns/frame", kAll, 1},
    {"walk_per_mapping", "  per mapping found", "ns/mapping", kAll, 1},
    {"unmap", "try_to_unmap", "ns/frame", kAll, 1},
    {"unmap_per_mapping", "  per mapping unmapped", "ns/mapping", kAll, 1},
};

bool Applies(Metric k, Scenario s) {
  switch (kMetrics[k].scope) {
    case kAll:
      return true;
    case kAnonOnly:
      return s != kShmem;
    case kMremapOnly:
      return s == kMremap;
    case kSharedOnly:
      return s == kShmem;
  }
  return false;
}

// The fan's metric a shmem row is compared with: the object's bytes with
// the anonymous method's structures, anything else with itself.
Metric PeerOf(Metric k) {
  if (k == kObjectBytes) return kBytes;
  if (k == kObjectBytesPerSpace) return kBytesPerSpace;
  return k;
}

struct Options {
  std::vector<FaultMode> modes;
  int64_t depth = 16;
  int64_t fan = 32;
  int64_t vmas = 4096;
  int64_t pages = 1024;
  int64_t children = 4;
  int64_t reps = 5;
  bool json = false;
  bool quick = false;
};

// The shape of one scenario: address spaces, pages of AS0 and the mappings
// each of its frames has once built.
struct Shape {
  int64_t spaces = 0;
  int64_t pages = 0;
  const char* param = "";  // the scenario's own size: depth, fan, vmas, children
  int64_t param_value = 0;
  // Mappings of each frame of AS0 (for mremap: the anon_vma value; anonmm's is 1).
  int64_t mappings = 0;
};

Shape ShapeOf(Scenario s, const Options& o) {
  switch (s) {
    case kChain:
      return {o.depth + 1, o.pages, "depth", o.depth, o.depth + 1};
    case kFan:
    case kShmem:
      return {o.fan + 1, o.pages, "fan", o.fan, o.fan + 1};
    case kManyVmas:
      return {2, o.vmas, "vmas", o.vmas, 2};
    case kMremap:
      return {o.children + 1, o.pages, "children", o.children, o.children + 1};
    case kNrScenarios:
      break;
  }
  return {};
}

std::string Describe(Scenario s, const Shape& sh) {
  char buf[160];
  switch (s) {
    case kChain:
      std::snprintf(buf, sizeof(buf), "fork chain, depth %lld, %lld pages",
                    static_cast<long long>(sh.param_value), static_cast<long long>(sh.pages));
      break;
    case kFan:
      std::snprintf(buf, sizeof(buf), "fork fan, %lld children, %lld pages",
                    static_cast<long long>(sh.param_value), static_cast<long long>(sh.pages));
      break;
    case kManyVmas:
      std::snprintf(buf, sizeof(buf), "%lld VMAs of 1 page, one fork",
                    static_cast<long long>(sh.param_value));
      break;
    case kMremap:
      std::snprintf(buf, sizeof(buf), "%lld children mremap %lld shared pages each",
                    static_cast<long long>(sh.param_value), static_cast<long long>(sh.pages));
      break;
    case kShmem:
      std::snprintf(buf, sizeof(buf),
                    "MAP_SHARED|MAP_ANONYMOUS, fork fan, %lld children read %lld pages",
                    static_cast<long long>(sh.param_value), static_cast<long long>(sh.pages));
      break;
    case kNrScenarios:
      buf[0] = '\0';
      break;
  }
  return std::string(buf) + " (" + std::to_string(sh.spaces) + " address spaces)";
}

MachineOptions MachineFor(FaultMode mode, const Shape& sh, const char* method) {
  MachineOptions mo;
  mo.fault_mode = mode;
  mo.rmap = method;
  mo.arena_bytes = static_cast<uint64_t>(sh.spaces) * kWindowBytes;
  return mo;
}

// ---- One run ----

struct Sample {
  double v[kNrMetrics] = {};
};

// What a run ended with: ok, a mode that cannot run here (skip), or a failure.
struct Result {
  enum Kind { kOk, kSkip, kFail } kind = kOk;
  std::string why;
  static Result Ok() { return {}; }
  static Result Skip(std::string w) { return {kSkip, std::move(w)}; }
  static Result Fail(std::string w) { return {kFail, std::move(w)}; }
};

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

__attribute__((noinline)) void WritePages(char* base, size_t pages, char value) {
  for (size_t i = 0; i < pages; i++) {
    *reinterpret_cast<volatile char*>(base + i * kHostPageSize) = value;
  }
}

// The number of pages whose first byte is not `value`.
__attribute__((noinline)) size_t CountOtherThan(const char* base, size_t pages, char value) {
  size_t bad = 0;
  for (size_t i = 0; i < pages; i++) {
    bad += *reinterpret_cast<const volatile char*>(base + i * kHostPageSize) != value;
  }
  return bad;
}

// The address spaces of a run, in the order made; destroyed in reverse
// (children before parents), and before the machine: declare after it.
struct Spaces {
  std::vector<std::unique_ptr<AddressSpace>> v;
  Spaces() = default;
  Spaces(const Spaces&) = delete;
  Spaces& operator=(const Spaces&) = delete;
  ~Spaces() { Clear(); }
  void Clear() {
    while (!v.empty()) v.pop_back();
  }
};

// `addr` of `from` as seen in `to` (a fork keeps offsets in the window).
VirtAddr Translate(const AddressSpace& to, const AddressSpace& from, VirtAddr addr) {
  return to.window().start + (addr - from.window().start);
}

Result Forked(AddressSpace& parent, Spaces& spaces) {
  auto child = parent.Fork();
  if (!child.ok()) return Result::Fail("fork: " + Msg(child.status()));
  spaces.v.push_back(std::move(*child));
  return Result::Ok();
}

// The children's mremaps (scenario mremap): each moves its copy of AS0's
// range to 16 MiB past whichever end of the window leaves room.
Result MoveChildren(Machine& m, Spaces& spaces, VirtAddr addr, size_t pages, Sample* out) {
  AddressSpace& as0 = *spaces.v[0];
  const size_t len = pages * kPageSize;
  const uint64_t gap = uint64_t{16} << 20;
  const uint64_t src_off = addr - as0.window().start;
  const uint64_t dst_off = src_off >= len + 2 * gap ? gap : src_off + len + gap;
  if (dst_off + len > as0.window().len_bytes()) {
    return Result::Fail("mremap: no room in the window for the moved range");
  }
  const uint64_t cow0 = m.vmstat().Get(VmEvent::k_cow_page);
  uint64_t ns = 0;
  for (size_t i = 1; i < spaces.v.size(); i++) {
    AddressSpace& c = *spaces.v[i];
    const VirtAddr src = Translate(c, as0, addr);
    const VirtAddr dst = c.window().start + dst_off;
    absl::Status s = c.Munmap(dst, len);
    if (!s.ok()) return Result::Fail("munmap before mremap: " + Msg(s));
    const uint64_t t0 = NowNs();
    auto moved = c.Mremap(src, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
    const uint64_t t1 = NowNs();
    if (!moved.ok()) return Result::Fail("mremap: " + Msg(moved.status()));
    if (*moved != dst) return Result::Fail("mremap: the range went elsewhere");
    ns += t1 - t0;
    const size_t stale = CountOtherThan(reinterpret_cast<const char*>(dst), pages, kBefore);
    if (stale != 0) {
      return Result::Fail("mremap: " + std::to_string(stale) + " moved pages of child " +
                          std::to_string(i) + " lost AS0's bytes");
    }
  }
  const double moved_pages = static_cast<double>(pages * (spaces.v.size() - 1));
  out->v[kMremapTime] = static_cast<double>(ns) / moved_pages;
  const uint64_t copies = m.vmstat().Get(VmEvent::k_cow_page) - cow0;
  out->v[kCowPages] = static_cast<double>(copies);
  const uint64_t want = m.rmap()->EarlyCowOnMove() ? pages * (spaces.v.size() - 1) : 0;
  if (copies != want) {
    return Result::Fail("mremap: cow_page counted " + std::to_string(copies) +
                        " copies, expected " + std::to_string(want) +
                        (want == 0 ? " (anon_vma moves shared frames as they are)"
                                   : " (anonmm copies every shared frame it moves)"));
  }
  return Result::Ok();
}

// The children's reads (scenario shmem): every child reads every page of
// its copy of AS0's range and must see AS0's bytes (the same frames).
Result ChildrenRead(Spaces& spaces, VirtAddr addr, size_t pages) {
  AddressSpace& as0 = *spaces.v[0];
  for (size_t i = 1; i < spaces.v.size(); i++) {
    const char* base = reinterpret_cast<const char*>(Translate(*spaces.v[i], as0, addr));
    const size_t stale = CountOtherThan(base, pages, kBefore);
    if (stale != 0) {
      return Result::Fail("child " + std::to_string(i) + " reads " + std::to_string(stale) +
                          " shared pages without AS0's bytes");
    }
  }
  return Result::Ok();
}

// Scenario shmem: page i of AS0 must be page i of one object (pgoff 0) and
// in its cache; *obj is that object.
Result CheckSharedPage(const Page& page, Pfn pfn, size_t i, ShmemObject** obj) {
  if (!page.Test(kPgShmem) || page.anchor == nullptr || (*obj != nullptr && page.anchor != *obj) ||
      page.index != i) {
    return Result::Fail("page " + std::to_string(i) + " of AS0 is not page " + std::to_string(i) +
                        " of the mapping's shared memory object");
  }
  *obj = static_cast<ShmemObject*>(page.anchor);
  if ((*obj)->Find(i) != pfn) {
    return Result::Fail("page " + std::to_string(i) + " of AS0 is not in its object's cache");
  }
  return Result::Ok();
}

// What the object keeps for its reverse map: its page index (4 B per page,
// a MAP_NORESERVE mapping in host pages; every entry is touched here) and
// its list of address spaces (8 B each, counted through RmapAnchor::Spaces).
double ObjectBytes(ShmemObject& obj, const Page& page) {
  size_t spaces = 0;
  AddressSpace* batch[64];
  for (size_t n; (n = obj.Spaces(page, spaces, batch, 64)) != 0;) spaces += n;
  const uint64_t index = std::max<uint64_t>(obj.nr_pages(), 1) * sizeof(uint32_t);
  const uint64_t host_page = static_cast<uint64_t>(HostPageSize());
  return static_cast<double>((index + host_page - 1) / host_page * host_page +
                             spaces * sizeof(AddressSpace*));
}

// Scenario shmem, after try_to_unmap: each unmapped page stays in its
// object's cache, and AS0's next read faults that same frame back in,
// with AS0's bytes.
Result CheckSharedUnmapped(Machine& m, AddressSpace& as0, VirtAddr addr,
                           const std::vector<Pfn>& pfns, size_t nr_unmap, size_t stride) {
  for (size_t j = 0; j < nr_unmap; j++) {
    const size_t i = j * stride;
    const Page& page = m.mem_map().page(pfns[i]);
    if (static_cast<ShmemObject*>(page.anchor)->Find(i) != pfns[i]) {
      return Result::Fail("try_to_unmap: page " + std::to_string(i) + " left its object's cache");
    }
    const VirtAddr a = addr + i * kPageSize;
    if (CountOtherThan(reinterpret_cast<const char*>(a), 1, kBefore) != 0) {
      return Result::Fail("page " + std::to_string(i) + " lost AS0's bytes after try_to_unmap");
    }
    const Pte pte = as0.GetPte(a);
    if (!pte.present() || pte.special() || pte.pfn() != pfns[i]) {
      return Result::Fail("page " + std::to_string(i) +
                          " was not faulted back in from its object after try_to_unmap");
    }
  }
  return Result::Ok();
}

// One run of `scenario` with `method` on its own machine, destroyed before
// returning.
Result RunOnce(FaultMode mode, Scenario scenario, const char* method, const Options& o,
               Sample* out) {
  const Shape sh = ShapeOf(scenario, o);
  auto machine = CreateMachine(MachineFor(mode, sh, method));
  if (!machine.ok()) return Result::Skip("machine: " + Msg(machine.status()));
  Machine& m = **machine;
  Spaces spaces;  // after the machine: destroyed first

  // ---- Build ----
  auto as = m.CreateAddressSpace(kWindowBytes);
  if (!as.ok()) return Result::Fail("address space: " + Msg(as.status()));
  spaces.v.push_back(std::move(*as));
  AddressSpace& as0 = *spaces.v[0];
  const size_t pages = static_cast<size_t>(sh.pages);
  const size_t len = pages * kPageSize;
  const bool shared = scenario == kShmem;
  auto mapped =
      as0.Mmap(0, len, PROT_READ | PROT_WRITE, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS);
  if (!mapped.ok()) return Result::Fail("mmap: " + Msg(mapped.status()));
  const VirtAddr addr = *mapped;
  WritePages(reinterpret_cast<char*>(addr), pages, kBefore);
  if (as0.rss_anon() != pages) {
    return Result::Fail("after writing " + std::to_string(pages) + " pages, rss_anon is " +
                        std::to_string(as0.rss_anon()));
  }
  switch (scenario) {
    case kChain:
      for (int64_t i = 0; i < o.depth; i++) {
        Result r = Forked(*spaces.v.back(), spaces);
        if (r.kind != Result::kOk) return r;
      }
      break;
    case kFan:
    case kMremap:
    case kShmem:
      for (int64_t i = 1; i < sh.spaces; i++) {
        Result r = Forked(as0, spaces);
        if (r.kind != Result::kOk) return r;
      }
      if (scenario == kMremap) {
        Result r = MoveChildren(m, spaces, addr, pages, out);
        if (r.kind != Result::kOk) return r;
      }
      if (shared) {
        Result r = ChildrenRead(spaces, addr, pages);
        if (r.kind != Result::kOk) return r;
        absl::Status check = CheckRmap(m);
        if (!check.ok()) return Result::Fail("CheckRmap after the build: " + check.ToString());
      }
      break;
    case kManyVmas: {
      for (size_t i = 1; i < pages; i += 2) {
        absl::Status s = as0.Mprotect(addr + i * kPageSize, kPageSize, PROT_READ);
        if (!s.ok()) return Result::Fail("mprotect: " + Msg(s));
      }
      if (as0.nr_vmas() != pages) {
        return Result::Fail("the mapping has " + std::to_string(as0.nr_vmas()) +
                            " VMAs after mprotect, expected " + std::to_string(pages));
      }
      Result r = Forked(as0, spaces);
      if (r.kind != Result::kOk) return r;
      break;
    }
    case kNrScenarios:
      break;
  }

  // ---- What the method keeps ----
  out->v[kBytes] = static_cast<double>(m.rmap()->MemoryBytes());
  out->v[kBytesPerSpace] = out->v[kBytes] / static_cast<double>(spaces.v.size());
  size_t vmas = 0;
  for (const auto& s : spaces.v) vmas += s->nr_vmas();
  out->v[kVmas] = static_cast<double>(vmas);
  const bool is_anon_vma = m.rmap()->name() == "anon_vma";
  out->v[kBytesWithVmaPtr] =
      out->v[kBytes] + (is_anon_vma ? static_cast<double>(vmas * sizeof(void*)) : 0.0);
  out->v[kFramesInUse] = static_cast<double>(m.mem_map().nr_used());

  // ---- AS0's frames and the mappings each must have ----
  const int64_t want = scenario == kMremap && m.rmap()->EarlyCowOnMove() ? 1 : sh.mappings;
  std::vector<Pfn> pfns(pages);
  size_t nr_shared = 0;
  ShmemObject* obj = nullptr;  // scenario shmem: the mapping's object
  for (size_t i = 0; i < pages; i++) {
    Pte pte = as0.GetPte(addr + i * kPageSize);
    if (!pte.present() || pte.special()) {
      return Result::Fail("page " + std::to_string(i) + " of AS0 is not present");
    }
    pfns[i] = pte.pfn();
    const Page& page = m.mem_map().page(pfns[i]);
    if (!page.Test(kPgPool)) {
      return Result::Fail("page " + std::to_string(i) + " of AS0 is not in the frame pool");
    }
    if (shared) {
      Result r = CheckSharedPage(page, pfns[i], i, &obj);
      if (r.kind != Result::kOk) return r;
    }
    const int32_t mapcount = page.mapcount.load(std::memory_order_acquire);
    if (mapcount != want) {
      return Result::Fail("page " + std::to_string(i) + " of AS0 has mapcount " +
                          std::to_string(mapcount) + ", expected " + std::to_string(want));
    }
    nr_shared += mapcount > 1;
  }
  out->v[kSharedFrames] = static_cast<double>(nr_shared);
  if (obj != nullptr) {
    out->v[kObjectBytes] = ObjectBytes(*obj, m.mem_map().page(pfns[0]));
    out->v[kObjectBytesPerSpace] = out->v[kObjectBytes] / static_cast<double>(spaces.v.size());
  }

  // ---- Walk: one checked pass (clears the young bits), one timed ----
  for (size_t i = 0; i < pages; i++) {
    RmapWalkStats st;
    PageReferenced(m, pfns[i], &st);
    if (st.found != want || st.busy != 0) {
      return Result::Fail("page_referenced of page " + std::to_string(i) + " found " +
                          std::to_string(st.found) + " mappings (" + std::to_string(st.busy) +
                          " address spaces busy), expected " + std::to_string(want));
    }
  }
  absl::Status check = CheckRmap(m);
  if (!check.ok()) return Result::Fail("CheckRmap after the walks: " + check.ToString());
  int64_t found = 0, referenced = 0;
  const uint64_t t0 = NowNs();
  for (size_t i = 0; i < pages; i++) {
    RmapWalkStats st;
    referenced += PageReferenced(m, pfns[i], &st);
    found += st.found;
  }
  const uint64_t t1 = NowNs();
  DoNotOptimize(referenced);
  if (found != want * sh.pages) {
    return Result::Fail("the timed walk found " + std::to_string(found) + " mappings, expected " +
                        std::to_string(want * sh.pages));
  }
  out->v[kFound] = static_cast<double>(found) / static_cast<double>(pages);
  out->v[kWalk] = static_cast<double>(t1 - t0) / static_cast<double>(pages);
  out->v[kWalkPerMapping] = static_cast<double>(t1 - t0) / static_cast<double>(found);

  // ---- try_to_unmap on a sample (destructive) ----
  const size_t nr_unmap = std::min(pages, kUnmapPages);
  const size_t stride = pages / nr_unmap;
  MemMap& mem_map = m.mem_map();
  if (shared) {
    // try_to_unmap leaves a writable PTE mapped, and every PTE of a shared
    // writable mapping is (fork keeps it so, a read fault maps it so):
    // write-protect them all first, as reclaim's page_mkclean would.
    for (const auto& s : spaces.v) {
      absl::Status st = s->Mprotect(Translate(*s, as0, addr), len, PROT_READ);
      if (!st.ok()) return Result::Fail("mprotect before try_to_unmap: " + Msg(st));
    }
  }
  const uint64_t t2 = NowNs();
  for (size_t j = 0; j < nr_unmap; j++) {
    const Pfn pfn = pfns[j * stride];
    // The walk's caller holds a reference (reclaim's isolation does).
    if (!mem_map.page(pfn).GetUnlessZero()) return Result::Fail("try_to_unmap: a free frame");
    const UnmapResult r = TryToUnmap(m, pfn, [](AddressSpace&, VirtAddr) { return Pte(); });
    const int32_t left = mem_map.page(pfn).mapcount.load(std::memory_order_acquire);
    m.PutPage(pfn);
    if (r != UnmapResult::kSuccess || left != 0) {
      return Result::Fail("try_to_unmap of page " + std::to_string(j * stride) + " left " +
                          std::to_string(left) + " mappings");
    }
  }
  const uint64_t t3 = NowNs();
  out->v[kUnmap] = static_cast<double>(t3 - t2) / static_cast<double>(nr_unmap);
  out->v[kUnmapPerMapping] =
      static_cast<double>(t3 - t2) / static_cast<double>(nr_unmap * static_cast<size_t>(want));
  if (shared) {
    Result r = CheckSharedUnmapped(m, as0, addr, pfns, nr_unmap, stride);
    if (r.kind != Result::kOk) return r;
  }
  check = CheckRmap(m);
  if (!check.ok()) return Result::Fail("CheckRmap after try_to_unmap: " + check.ToString());
  spaces.Clear();  // children first, then AS0; the machine after
  return Result::Ok();
}

// ---- Output ----

struct Row {
  Scenario scenario = kChain;
  Metric metric = kBytes;
  FaultMode mode = FaultMode::kUffdSigbus;
  Shape shape;
  // Scenario shmem: the fan's (PeerOf(metric)), the peers of `object`.
  Summary anon_vma;
  Summary anonmm;
  // Scenario shmem: the object walk, both machines' runs pooled, and the
  // p50 on each machine alone (anon_vma, anonmm).
  Summary object;
  double object_on[2] = {std::nan(""), std::nan("")};
  std::string skipped;  // non-empty: the mode could not run
  double ratio() const { return anon_vma.p50 / anonmm.p50; }
  // Scenario shmem: object / fan's anon_vma, object / fan's anonmm.
  double object_ratio(int method) const {
    return object.p50 / (method == 0 ? anon_vma.p50 : anonmm.p50);
  }
};

struct Context {
  Options options;
};

std::string ModeName(FaultMode m) { return std::string(FaultModeName(m)); }

void PrintTableHeader(const Options& o) {
  std::printf("%s: git %s, %s, nproc %d, page %ld B, reps %lld (+1 warm-up)\n", kProg, GitSha(),
              CompilerVersion(), Nproc(), HostPageSize(), static_cast<long long>(o.reps));
  std::printf(
      "anon_vma vs anonmm, each on its own machine in the same run: p50 over reps;\n"
      "ratio = anon_vma / anonmm. walk: page_referenced over every frame of AS0 (after one\n"
      "untimed pass); try_to_unmap: up to %zu of those frames, each mapping's host mmap\n"
      "included\n",
      kUnmapPages);
  std::fflush(stdout);
}

void PrintModeHeader(FaultMode mode) {
  std::printf("\nmode %s\n%-30s %14s %14s %9s  %s\n", ModeName(mode).c_str(), "measurement",
              "anon_vma", "anonmm", "ratio", "unit");
  std::fflush(stdout);
}

void PrintScenarioHeader(Scenario s, const Shape& sh) {
  std::printf("%s: %s\n", kScenarioNames[s], Describe(s, sh).c_str());
  if (s == kShmem) {
    // Its own columns: one walk, compared with the fan's two.
    std::printf(
        "  (the object's i_mmap walk on both machines, the anonymous method unused: their runs\n"
        "  pooled; peers: the fan rows above; ratio = object / fan's method)\n"
        "  %-28s %16s %14s %14s %9s %9s  %s\n",
        "", "object (i_mmap)", "fan anon_vma", "fan anonmm", "/anon_vma", "/anonmm", "unit");
  }
  std::fflush(stdout);
}

std::string FormatRatio(double ratio) {
  char buf[32];
  if (std::isfinite(ratio)) {
    std::snprintf(buf, sizeof(buf), "%9.2f", ratio);
  } else {
    std::snprintf(buf, sizeof(buf), "%9s", "-");
  }
  return buf;
}

void PrintTableRow(const Row& r) {
  const MetricSpec& spec = kMetrics[r.metric];
  if (r.scenario == kShmem) {
    std::printf("  %-28s %16.*f %14.*f %14.*f %s %s  %s\n", spec.label, spec.decimals, r.object.p50,
                spec.decimals, r.anon_vma.p50, spec.decimals, r.anonmm.p50,
                FormatRatio(r.object_ratio(0)).c_str(), FormatRatio(r.object_ratio(1)).c_str(),
                spec.unit);
  } else {
    std::printf("  %-28s %14.*f %14.*f %s  %s\n", spec.label, spec.decimals, r.anon_vma.p50,
                spec.decimals, r.anonmm.p50, FormatRatio(r.ratio()).c_str(), spec.unit);
  }
  std::fflush(stdout);
}

// Scenario shmem's values: the object walk, and the fan's two methods as
// its peers (the fan's metric for the object's bytes: its rmap structures).
void AddSharedJson(const Row& r, JsonLine& j) {
  const bool ok = r.skipped.empty();
  const std::string peer = std::string("fan_") + kMetrics[PeerOf(r.metric)].name;
  if (ok) {
    j.Num("value", r.object.p50);
  } else {
    j.Null("value");
  }
  j.Str("unit", kMetrics[r.metric].unit).Str("walk", "object (i_mmap)");
  j.Num("min", r.object.min).Num("max", r.object.max);
  j.Num("value_on_anon_vma_machine", r.object_on[0]).Num("value_on_anonmm_machine", r.object_on[1]);
  j.Str("peer", peer + "/anon_vma").Num("peer_value", r.anon_vma.p50);
  j.Num("ratio", ok ? r.object_ratio(0) : std::nan(""));
  j.Num("peer_min", r.anon_vma.min).Num("peer_max", r.anon_vma.max);
  j.Str("peer2", peer + "/anonmm").Num("peer2_value", r.anonmm.p50);
  j.Num("ratio2", ok ? r.object_ratio(1) : std::nan(""));
  j.Num("peer2_min", r.anonmm.min).Num("peer2_max", r.anonmm.max);
}

void PrintJsonRow(const Row& r, const Context& ctx) {
  const MetricSpec& spec = kMetrics[r.metric];
  JsonLine j;
  j.Str("name", std::string("rmap_") + kScenarioNames[r.scenario] + "_" + spec.name);
  j.Str("scenario", kScenarioNames[r.scenario]).Str("mode", ModeName(r.mode));
  if (r.scenario == kShmem) {
    AddSharedJson(r, j);
  } else {
    if (r.skipped.empty()) {
      j.Num("value", r.anon_vma.p50);
    } else {
      j.Null("value");
    }
    j.Str("unit", spec.unit).Str("peer", "anonmm").Num("peer_value", r.anonmm.p50);
    j.Num("ratio", r.skipped.empty() ? r.ratio() : std::nan(""));
    j.Num("min", r.anon_vma.min).Num("max", r.anon_vma.max);
    j.Num("peer_min", r.anonmm.min).Num("peer_max", r.anonmm.max);
  }
  j.Int("pages", r.shape.pages).Int("address_spaces", r.shape.spaces);
  j.Int(r.shape.param, r.shape.param_value);
  j.Int("reps", ctx.options.reps);
  j.Str("git_sha", GitSha()).Str("compiler", CompilerVersion()).Int("nproc", Nproc());
  // The machines differ only in MachineOptions::rmap (anon_vma here, the peer anonmm;
  // scenario shmem: its runs on both pooled, its peers the fan's).
  j.Str("config", MachineFor(r.mode, r.shape, "anon_vma").ToString());
  if (!r.skipped.empty()) j.Str("skipped", r.skipped);
  j.Print();
}

void PrintNotes() {
  std::printf(
      "\nnotes: rmap structures = RmapMethod::MemoryBytes(), the method's own structures\n"
      "(anon_vmas and their address-space lists; anonmm families and the member map).\n"
      "The per-page cost is the same for both methods here: Page::anchor + Page::index\n"
      "(16 B of each 64 B Page). Every Vma carries pgoff and anon_vma for both methods in\n"
      "this code; of those only the anon_vma pointer (8 B per VMA) is anon_vma's alone,\n"
      "counted in the '+ Vma::anon_vma' row. anonmm's early COW costs whole frames\n"
      "instead (the mremap scenario's frames in use, 4 KiB each).\n"
      "shmem: its pages' reverse map is their ShmemObject, whatever MachineOptions::rmap\n"
      "says, so the runs on both machines measure one walk and are pooled. Its bytes are\n"
      "the object's, not RmapMethod::MemoryBytes() (which does not cover it): the page\n"
      "index, 4 B per page of the object in whole host pages (a MAP_NORESERVE mapping,\n"
      "every entry touched here), plus its list of address spaces, 8 B each (the\n"
      "vector's size, not its capacity); per page, Page::anchor + Page::index as above.\n"
      "The machine's anonymous method still keeps its structures for the forks (not\n"
      "counted there). The children's reads fault nothing: fork already maps every page\n"
      "of a shared mapping in the child. Every PTE of a shared writable mapping is\n"
      "writable, and try_to_unmap leaves a writable PTE mapped (kAgain), so the range is\n"
      "made read-only in every address space (mprotect, untimed) before try_to_unmap;\n"
      "the unmapped pages stay in the object's cache, and AS0 reads them back in.\n");
  std::fflush(stdout);
}

// Reports every measurement of `mode` as skipped.
void ReportSkipped(FaultMode mode, const std::string& why, const Context& ctx) {
  if (!ctx.options.json) {
    std::printf("  skipped: %s\n", why.c_str());
    std::fflush(stdout);
    return;
  }
  for (int s = 0; s < kNrScenarios; s++) {
    for (int k = 0; k < kNrMetrics; k++) {
      if (!Applies(static_cast<Metric>(k), static_cast<Scenario>(s))) continue;
      Row r;
      r.scenario = static_cast<Scenario>(s);
      r.metric = static_cast<Metric>(k);
      r.mode = mode;
      r.shape = ShapeOf(r.scenario, ctx.options);
      r.skipped = why;
      PrintJsonRow(r, ctx);
    }
  }
}

// ---- One mode ----

// Returns false when the mode failed (not when it was skipped).
bool RunMode(FaultMode mode, const Context& ctx) {
  const Options& o = ctx.options;
  if (!o.json) PrintModeHeader(mode);
  if (mode != FaultMode::kSigsegv) {
    std::string why;
    if (!UffdAvailable(&why)) {
      ReportSkipped(mode, "userfaultfd is not usable here (" + why + ")", ctx);
      return true;
    }
  }
  Summary fan[2][kNrMetrics];  // the peers of scenario shmem
  for (int si = 0; si < kNrScenarios; si++) {
    const Scenario scenario = static_cast<Scenario>(si);
    const Shape sh = ShapeOf(scenario, o);
    if (!o.json) PrintScenarioHeader(scenario, sh);
    std::vector<double> values[2][kNrMetrics];
    for (int64_t r = -1; r < o.reps; r++) {  // r == -1: warm-up
      // Which method goes first flips each repetition.
      for (int turn = 0; turn < 2; turn++) {
        const int method = (turn + static_cast<int>(r + 1)) % 2;
        Sample sample;
        Result res = RunOnce(mode, scenario, kMethods[method], o, &sample);
        if (res.kind == Result::kSkip) {
          ReportSkipped(mode, res.why, ctx);
          return true;
        }
        if (res.kind == Result::kFail) {
          std::fprintf(stderr, "%s: %s, %s, %s: %s\n", kProg, ModeName(mode).c_str(),
                       kScenarioNames[scenario], kMethods[method], res.why.c_str());
          return false;
        }
        if (r < 0) continue;
        for (int k = 0; k < kNrMetrics; k++) values[method][k].push_back(sample.v[k]);
      }
    }
    for (int k = 0; k < kNrMetrics; k++) {
      const Metric metric = static_cast<Metric>(k);
      if (!Applies(metric, scenario)) continue;
      Row row;
      row.scenario = scenario;
      row.metric = metric;
      row.mode = mode;
      row.shape = sh;
      row.anon_vma = Summarize(values[0][k]);
      row.anonmm = Summarize(values[1][k]);
      if (scenario == kFan) {
        fan[0][k] = row.anon_vma;
        fan[1][k] = row.anonmm;
      }
      if (scenario == kShmem) {
        // One walk on both machines: pooled; the fan's are its peers.
        std::vector<double> both = values[0][k];
        both.insert(both.end(), values[1][k].begin(), values[1][k].end());
        row.object = Summarize(both);
        row.object_on[0] = row.anon_vma.p50;
        row.object_on[1] = row.anonmm.p50;
        row.anon_vma = fan[0][PeerOf(metric)];
        row.anonmm = fan[1][PeerOf(metric)];
      }
      if (o.json) {
        PrintJsonRow(row, ctx);
      } else {
        PrintTableRow(row);
      }
    }
  }
  return true;
}

// ---- Options ----

void PrintHelp() {
  std::printf(
      "usage: %s [options]\n"
      "The anon_vma and anonmm reverse maps side by side: the bytes of their structures,\n"
      "page_referenced walk time and try_to_unmap time, for a deep fork chain, a wide\n"
      "fork fan, many VMAs and mremapped ranges; ratio = anon_vma / anonmm. Then the\n"
      "fan over shared anonymous memory (scenario shmem, JSON names rmap_shmem_*),\n"
      "whose pages the object-based map (the i_mmap walk) finds on either machine,\n"
      "against the anonymous fan's numbers; ratio = object / fan's method.\n\n"
      "  --mode M      sigbus, thread or sigsegv; repeatable or comma-separated\n"
      "                (default: sigbus)\n"
      "  --depth N     forks in the chain (default 16)\n"
      "  --fan N       children of the fan and of the shared fan (default 32)\n"
      "  --vmas N      one-page VMAs of the many-VMAs scenario (default 4096)\n"
      "  --pages N     pages of AS0 in the chain, fan, mremap and shared scenarios\n"
      "                (default 1024)\n"
      "  --children N  children that mremap their range (default 4)\n"
      "  --reps N      timed repetitions after one warm-up (default 5)\n"
      "  --quick       depth 4, fan 4, 64 VMAs, 64 pages, 2 children, 1 repetition\n"
      "                (smoke test; explicit options win)\n"
      "  --json        one JSON object per line per (scenario, measurement, mode)\n"
      "                instead of the table\n"
      "  --help        this text\n\n"
      "Exit status: 0; 1 when a run fails or a check does not hold (mapcounts, mappings\n"
      "found by each walk, VMA count, early-COW copies, the shared pages' object and\n"
      "cache, CheckRmap); 2 for a bad option.\n",
      kProg);
}

bool AddModes(ArgParser& args, std::vector<FaultMode>* modes) {
  std::string v;
  if (!args.Value(&v)) return false;
  for (const std::string& name : SplitCommas(v)) {
    FaultMode m;
    if (!ParseFaultMode(name, &m)) {
      args.Fail("--mode '%s': want sigbus, thread or sigsegv", name.c_str());
      return false;
    }
    if (std::find(modes->begin(), modes->end(), m) == modes->end()) modes->push_back(m);
  }
  return true;
}

// Returns 0 to run, 1 after --help, 2 on a bad option.
int ParseOptions(int argc, char** argv, Options* o) {
  ArgParser args(kProg, argc, argv);
  int64_t reps = -1, depth = -1, fan = -1, vmas = -1, pages = -1, children = -1;
  while (args.Next()) {
    if (args.Is("--help") || args.Is("-h")) {
      PrintHelp();
      return 1;
    } else if (args.Is("--json")) {
      o->json = args.NoValue();
    } else if (args.Is("--quick")) {
      o->quick = args.NoValue();
    } else if (args.Is("--reps")) {
      args.IntValue(1, 1000, &reps);
    } else if (args.Is("--depth")) {
      args.IntValue(1, kMaxSpaces, &depth);
    } else if (args.Is("--fan")) {
      args.IntValue(1, kMaxSpaces, &fan);
    } else if (args.Is("--vmas")) {
      args.IntValue(2, kMaxPages, &vmas);
    } else if (args.Is("--pages")) {
      args.IntValue(1, kMaxPages, &pages);
    } else if (args.Is("--children")) {
      args.IntValue(1, kMaxSpaces, &children);
    } else if (args.Is("--mode")) {
      AddModes(args, &o->modes);
    } else {
      args.Unknown();
    }
  }
  if (args.failed()) return 2;
  if (o->quick) {
    o->depth = 4;
    o->fan = 4;
    o->vmas = 64;
    o->pages = 64;
    o->children = 2;
    o->reps = 1;
  }
  if (reps > 0) o->reps = reps;
  if (depth > 0) o->depth = depth;
  if (fan > 0) o->fan = fan;
  if (vmas > 0) o->vmas = vmas;
  if (pages > 0) o->pages = pages;
  if (children > 0) o->children = children;
  if (o->modes.empty()) o->modes = {FaultMode::kUffdSigbus};
  return 0;
}

int Main(int argc, char** argv) {
  Context ctx;
  int parsed = ParseOptions(argc, argv, &ctx.options);
  if (parsed != 0) return parsed == 1 ? 0 : 2;
  const uint64_t t0 = NowNs();
  if (!ctx.options.json) PrintTableHeader(ctx.options);
  bool ok = true;
  for (FaultMode mode : ctx.options.modes) ok = RunMode(mode, ctx) && ok;
  if (!ctx.options.json) {
    PrintNotes();
    std::printf("\ntotal %.1f s%s\n", static_cast<double>(NowNs() - t0) * 1e-9,
                ok ? "" : " (FAILED, see stderr)");
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace emu::bench

int main(int argc, char** argv) { return emu::bench::Main(argc, argv); }
