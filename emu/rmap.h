// RmapMethod: how a frame in the pool finds the PTEs that map it (seed 000).
// A page in place is its own reverse map (Page::mapping and Page::index name
// its one PTE, as PageDirect did in the pte_chain days); a frame shared by
// AddressSpace::Fork() lives in the frame pool and is anchored by one of
// Linux's two object-based methods for anonymous memory, chosen per machine
// (MachineOptions::rmap; implementations in rmap/):
//   anon_vma (Andrea Arcangeli's): page->anchor is the anon_vma of the VMA
//     it was placed in; the anon_vma knows the address spaces whose VMAs
//     share it (forked copies); page->index is the VMA's pgoff plus the
//     page's offset in it, so a moved VMA (mremap keeps pgoff) still finds it.
//   anonmm (Hugh Dickins's): page->anchor is the anonmm of a fork family
//     (every address space forked from a common ancestor); page->index is
//     the page's offset in its window, the same address in every member.
//     mremap of a shared frame breaks its sharing first (Linus's "early
//     COW"): the moved page becomes an exclusive copy.
// The walk and its users (page_referenced, try_to_unmap, the consistency
// check) are in rmap/rmap.h.
#ifndef EMU_RMAP_H_
#define EMU_RMAP_H_

#include <cstddef>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "emu/types.h"

namespace emu {

class AddressSpace;
struct Page;
struct Vma;

// What a page's anchor answers for the reverse-map walk (rmap/rmap.h): the
// anonymous methods below, and a shared memory object for its own pages
// (emu/shmem.h, the i_mmap walk).
class RmapAnchor {
 public:
  virtual ~RmapAnchor() = default;
  // Copies into out[0..max) the address spaces in which `page` may be
  // mapped, from the `from`-th on, and returns how many it copied (0: no
  // more). Under the anchor's own lock, released before it returns, so that
  // the caller holds no SpinLock across the system calls it makes for each
  // (house rule). The caller keeps the address spaces alive (reclaim holds
  // its pass; an address space going away waits for passes to end).
  // Allocates nothing.
  virtual size_t Spaces(const Page& page, size_t from, AddressSpace** out, size_t max) = 0;
  // With `as`'s mmap_lock held: calls fn(vma, addr) for every address of
  // `as` at which `page` may be mapped (the caller checks the PTE).
  virtual void AddressesIn(const Page& page, AddressSpace& as,
                           absl::FunctionRef<void(const Vma&, VirtAddr)> fn) = 0;
};

class RmapMethod : public RmapAnchor {
 public:
  virtual std::string_view name() const = 0;

  // AddressSpace::Fork(), with both mmap_locks held for write, before any
  // page is shared: `child` joins `parent`'s family. For anon_vma, every
  // VMA of the parent gets an anon_vma if it has none (Linux:
  // anon_vma_prepare()); the child's copies are made after this and share it.
  virtual absl::Status Fork(AddressSpace& parent, AddressSpace& child) = 0;
  // `as` is going away; its pages are all unmapped already.
  virtual void Exit(AddressSpace& as) = 0;
  // A page in place at `addr` of `vma` in `as` enters the pool: sets its
  // anchor and index. Under `as`'s mmap_lock held for write.
  virtual void AnchorPage(Page& page, AddressSpace& as, const Vma& vma, VirtAddr addr) = 0;
  // Whether mremap must give a moved shared frame its own copy (anonmm's
  // early COW) rather than move the mapping as it is.
  virtual bool EarlyCowOnMove() const = 0;
  // Bytes the method's structures take now (bench/rmap).
  virtual size_t MemoryBytes() const = 0;
};

}  // namespace emu

#endif  // EMU_RMAP_H_
