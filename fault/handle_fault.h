// The fault path: decides every fault from the software page table, then makes
// the host agree through the machine's HostMmu. Runs in signal context (SIGBUS
// and SIGSEGV modes) or in a handler thread: it allocates nothing, logs
// nothing, and takes only mmap_lock (read) and ptls.
#ifndef EMU_FAULT_HANDLE_FAULT_H_
#define EMU_FAULT_HANDLE_FAULT_H_

#include "emu/fault_handler.h"
#include "emu/mm.h"
#include "emu/vma.h"

namespace emu {

class Machine;

// = struct vm_fault.
struct VmFault {
  AddressSpace* as;
  const Vma* vma;
  VirtAddr address;  // page aligned
  unsigned flags;    // FaultFlag
  std::atomic<uint64_t>* pte;
  bool write() const { return flags & kFaultWrite; }
};

// The thread a fault is resolved for, when it is not the calling thread
// (handler-thread mode sets it from the uffd message; 0 = the caller).
void SetFaultingThread(uint32_t tid);

// Whether a trapped data access to `vma` meets execute-only memory (PROT_EXEC
// alone on a CPU with protection keys): then it fails with SEGV_PKUERR.
bool ExecuteOnly(const Vma& vma, unsigned flags);

class AnonFaultHandler : public FaultHandler {
 public:
  explicit AnonFaultHandler(Machine* machine) : machine_(machine) {}
  unsigned HandleMmFault(AddressSpace& as, VirtAddr addr, unsigned flags) override;

 private:
  // Linux: mm/memory.c handle_pte_fault().
  unsigned HandlePteFault(VmFault& vmf);
  // Linux: mm/memory.c do_anonymous_page(): zero page on read (seed 004), a
  // zeroed exclusive page on write.
  unsigned DoAnonymousPage(VmFault& vmf);
  // Install a claimed run (all PTEs kLocked) as zero pages, or as zeroed
  // exclusive pages, and publish it. A run spanning two host mappings that
  // did not merge falls back to the faulting page.
  unsigned InstallZeroRun(VmFault& vmf, AddrRange run);
  unsigned InstallAnonRun(VmFault& vmf, AddrRange run);
  // Linux: mm/memory.c do_wp_page(): write to a present, write-protected PTE.
  // Copy from the zero page, or reuse an exclusive page.
  unsigned DoWpPage(VmFault& vmf, uint64_t orig);
  // do_wp_page() on a frame in the pool (shared by AddressSpace::Fork), its
  // PTE claimed: reuse it when this PTE is its only mapping, else copy it
  // to an exclusive page in place (Linux: wp_page_copy()).
  unsigned WpPoolPage(VmFault& vmf, uint64_t orig);
  // Replaces the claimed PTE `e` (holding `orig`, a frame in the pool) at
  // `addr` of `vma` by an exclusive copy in place, and publishes it.
  unsigned CopyPoolPage(AddressSpace& as, const Vma& vma, VirtAddr addr,
                        std::atomic<uint64_t>* e, uint64_t orig);
  // Past the host VMA budget: copies every other shared frame of the
  // faulting page's 2 MiB block in this VMA (the faulting one follows).
  void UnsharePoolBlock(VmFault& vmf);
  // Replaces a zero-page PTE with a real zeroed page now (mlock, populate with
  // kFaultNoZero: GUP_FLAGS_IGNORE_ZERO).
  unsigned BreakZeroPage(VmFault& vmf, uint64_t orig);
  // What a failed host install means: ENOMEM is the host's memory, page
  // table or VMA limit (not a lack of frames); SIGSEGV mode degrades.
  unsigned HostFailure(VmFault& vmf, int err);
  // SIGSEGV mode, when an mprotect failed with ENOMEM (vm.max_map_count):
  // makes the faulting page's 2 MiB block uniform under one host protection
  // (writable VMA: every page a real page; read-only: every missing page the
  // zero page), merging its host VMAs, so that the fault still resolves.
  unsigned MergeHostBlock(VmFault& vmf);
  // SIGSEGV mode: how many host protection boundaries changing `run` from
  // `old_prot` to `new_prot` adds (negative: removes). Neighbours outside the
  // VMA count as boundaries either way.
  int BoundaryDelta(const VmFault& vmf, AddrRange run, Prot old_prot, Prot new_prot);
  // Adds BoundaryDelta to the machine's estimate (SIGSEGV mode only).
  void AccountHostBoundaries(const VmFault& vmf, AddrRange run, Prot old_prot, Prot new_prot);
  bool OverHostBudget() const;
  // The run of none PTEs around the fault to install together.
  AddrRange FaultAroundRange(const VmFault& vmf, bool sequential) const;
  // The write fault on the lazily freed page `orig` at vmf.address: claims
  // (kLocked) the run of lazily freed, clean, write-protected pages in place
  // around it in its aligned fault-around window. Empty when the page is not
  // one, changed, or has no such neighbour.
  AddrRange ClaimLazyFreeRun(VmFault& vmf, uint64_t orig);
  // A fault in a shared mapping (Vma::file): the object's page, made on
  // first use, mapped from the frame pool; a write to a write-protected
  // PTE makes it writable in place.
  unsigned DoSharedPage(VmFault& vmf, uint64_t orig);
  // A read fault on an object's page: the none PTEs of `window` around it
  // mapped too (a file's missing pages read a run at a time).
  unsigned DoObjectFaultAround(VmFault& vmf, AddrRange window);
  // A private mapping's copy of the object's page: `locked` is the claimed
  // PTE's value (the object's page, kLocked); `mapped` when that PTE mapped
  // the page (a write to it), else the fault holds the page for the copy.
  unsigned CopyObjectPage(VmFault& vmf, uint64_t locked, bool mapped = true);

  Machine* const machine_;
};

}  // namespace emu

#endif  // EMU_FAULT_HANDLE_FAULT_H_
