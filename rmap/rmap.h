// Reverse-map operations over frames in the pool (emu/rmap.h says how a
// method anchors them): the walk, page_referenced, try_to_unmap, and the
// consistency check the tests run. Also the factory of the two methods.
#ifndef EMU_RMAP_RMAP_H_
#define EMU_RMAP_RMAP_H_

#include <atomic>
#include <memory>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "emu/machine.h"
#include "emu/rmap.h"

namespace emu {

// "anon_vma" (rmap/anon_vma.cc) or "anonmm" (rmap/anonmm.cc).
absl::StatusOr<std::unique_ptr<RmapMethod>> CreateRmapMethod(std::string_view name);

struct RmapWalkStats {
  int found = 0;  // PTEs that map the page
  int busy = 0;   // address spaces skipped: their mmap_lock was contended
};

// Linux: mm/rmap.c rmap_walk(). Calls fn(as, vma, addr, pte) for every PTE
// that maps `pfn` (a frame in the pool; the walk holds a reference of its own), with
// that address space's mmap_lock held for read (try-locked: a contended one
// is skipped and counted as busy) and no ptl: fn re-checks the PTE under
// its ptl before it changes it. fn returns false to stop the walk.
RmapWalkStats RmapWalk(Machine& m, Pfn pfn,
                       absl::FunctionRef<bool(AddressSpace&, const Vma&, VirtAddr,
                                              std::atomic<uint64_t>*)>
                           fn);

// Linux: mm/rmap.c folio_referenced(): how many PTEs mapping `pfn` were
// young (accessed since the last check); clears their young bits.
int PageReferenced(Machine& m, Pfn pfn, RmapWalkStats* stats = nullptr);

// Linux: mm/rmap.c try_to_unmap(). Replaces every PTE that maps `pfn` by
// replacement(as, addr) (a swap PTE, or none), dropping the host's mapping
// of the page there, the page's mapcount and the PTE's reference. A
// writable PTE (the frame may have changed since the caller wrote it out)
// and a pinned page are left mapped (kAgain).
// replacement is called with the PTE claimed; it may take references (a
// slot's count) for the PTE it returns.
enum class UnmapResult {
  kSuccess,  // no PTE maps the page any more
  kAgain,    // some address space was busy: try later
  kFail,     // a PTE lies in a VM_LOCKED VMA: the page cannot go
};
// With `discard` (seed 003's try_to_zap_one for a volatile page): only PTEs
// in volatile VMAs go, writable ones too (the range allows losing a write);
// a PTE in any other VMA stays (kAgain).
UnmapResult TryToUnmap(Machine& m, Pfn pfn,
                       absl::FunctionRef<Pte(AddressSpace&, VirtAddr)> replacement,
                       bool discard = false);

// Every present PTE that maps a frame in the pool is found by the walk from
// its page, and the walk finds nothing else: for each such frame the set of
// (address space, address) the walk yields equals the set of PTEs that map
// it. Call with no fault or mm call in flight.
absl::Status CheckRmap(Machine& m);

}  // namespace emu

#endif  // EMU_RMAP_RMAP_H_
