// HostMmu: the "hardware" under the emulator. The software page table decides;
// a HostMmu makes the host's page tables agree, for one arena. Implementations
// (fault/): userfaultfd (SIGBUS or handler-thread delivery) and
// SIGSEGV+mprotect.
//
// Every Install/MakeWritable/Zap call is async-signal-safe: the fault path runs
// them in signal context. They return false with errno set on failure.
#ifndef EMU_HOST_MMU_H_
#define EMU_HOST_MMU_H_

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "emu/types.h"

namespace emu {

enum class FaultMode {
  kUffdSigbus,  // userfaultfd, UFFD_FEATURE_SIGBUS, resolved in the faulting thread
  kUffdThread,  // userfaultfd, resolved by handler threads the kernel wakes
  kSigsegv,     // mprotect + SIGSEGV, no userfaultfd needed
};

std::string_view FaultModeName(FaultMode m);
bool ParseFaultMode(std::string_view s, FaultMode* out);

class HostMmu {
 public:
  virtual ~HostMmu() = default;

  virtual FaultMode mode() const = 0;

  // True when the host protection of a page encodes its PTE state (SIGSEGV
  // mode: not-present pages are PROT_NONE, zero pages PROT_READ). The address
  // space then protects per run of equal state; otherwise host protection
  // follows the VMA alone.
  virtual bool prot_encodes_ptes() const = 0;

  // Maps the shared zero page at every page of `r` (all not present), so that
  // reads see zeros and a write traps to the emulator.
  virtual bool InstallZero(AddrRange r, Prot vma_prot) = 0;
  // Maps fresh zero-filled exclusive pages at `r` (all not present), writable
  // when vma_prot allows.
  virtual bool InstallZeroed(AddrRange r, Prot vma_prot) = 0;
  // Maps pages holding a copy of `src` (r.len_bytes() bytes) at `r` (all not
  // present): writable when `writable` (and vma_prot allows), else
  // write-protected so that the first write traps (swap-in of a page that
  // keeps its swap slot).
  virtual bool InstallCopy(AddrRange r, const void* src, Prot vma_prot, bool writable) = 0;
  // Write-protects the present pages of `r` so that the next write traps.
  virtual bool WriteProtect(AddrRange r, Prot vma_prot) = 0;
  // Lets writes through to the present pages of `r` that were write-protected
  // (a zero page: the kernel then copies it on the retried write).
  virtual bool MakeWritable(AddrRange r, Prot vma_prot) = 0;
  // Drops the pages of `r` and makes them not present.
  virtual bool Zap(AddrRange r) = 0;
  // Zap of each of `n` ranges (reclaim's scattered victims). The userfaultfd
  // modes make it one process_madvise call with one TLB flush, where a Zap
  // per range costs a flush, an IPI to every other CPU running the process.
  virtual bool ZapMany(const AddrRange* r, int n) {
    bool ok = true;
    for (int i = 0; i < n; i++) ok &= Zap(r[i]);
    return ok;
  }
  // Maps the frame pool's file pages [off, off + r.len_bytes()) of `fd` at
  // `r` (emu/frame_pool.h), replacing what the host had there: accessible as
  // the VMA allows, writable only when `writable`, so that a write to a
  // shared frame traps (userfaultfd: uffd-wp on the file pages, registered
  // like the arena; SIGSEGV mode: the protection). The pages are present
  // in the host afterwards.
  virtual bool MapPool(AddrRange r, int fd, uint64_t off, Prot vma_prot, bool writable) = 0;
  // ---- Writes tracked by the host (MachineOptions::dirty_tracking "async")
  // Whether the host records writes to the pages MapPoolTracked maps
  // (userfaultfd WP_ASYNC on a second descriptor): such a write goes
  // through without a fault, and Harvest reports it later.
  virtual bool tracks_writes() const { return false; }
  // MapPool for pages of a shared file mapping whose writes the host
  // tracks: accessible as the VMA allows, writable when it allows writes,
  // every page write-protected for the tracker before any write can reach
  // it, so that the first write to each is recorded.
  virtual bool MapPoolTracked(AddrRange /*r*/, int /*fd*/, uint64_t /*off*/, Prot /*vma_prot*/) {
    errno = EOPNOTSUPP;
    return false;
  }
  // Calls written(run) for each run of pages of `r` written since
  // MapPoolTracked mapped them or a harvest last saw them, and
  // write-protects them again in the same step (PAGEMAP_SCAN with
  // PM_SCAN_WP_MATCHING), so that a later write is recorded anew. Pages not
  // mapped by MapPoolTracked are skipped. async-signal-safe; false with
  // errno when the scan failed.
  virtual bool Harvest(AddrRange /*r*/, absl::FunctionRef<void(AddrRange)> /*written*/) {
    return true;
  }

  // Replaces the pool mapping at `r` by exclusive pages in place holding a
  // copy of `src` (copy-on-write of a shared frame), writable as the VMA
  // allows. No other thread sees the range half done: it is PROT_NONE until
  // the copy is in (a racing access traps and is retried).
  virtual bool ReplaceWithCopy(AddrRange r, const void* src, Prot vma_prot) = 0;
  // Sets the host protection of a run of pages whose state is uniform.
  virtual bool Protect(AddrRange r, Prot host_prot) = 0;

  // Called after a fault resolved on behalf of a thread blocked in the kernel
  // (handler-thread mode) to let it retry; no-op elsewhere.
  virtual void Wake(AddrRange /*r*/) {}
  // fork() of the process (Machine::ForkPrepare and after; machine.cc).
  // Whether a forked child inherits the registration (userfaultfd with
  // UFFD_FEATURE_EVENT_FORK; SIGSEGV mode: the protections), so that it never
  // runs on plain memory.
  virtual bool ForkKeepsRegistration() const { return false; }
  // Parent, before fork(): the next fork event's descriptor is the child's.
  virtual void ForkExpect() {}
  // Parent, after fork(): the child's userfaultfd, or -1 when there is none
  // (no fork events, or no child: `ctl`, the parent's end of the socket pair
  // to it, reads EOF). Waits for it.
  virtual int ForkTakeChildFd(int /*ctl*/) { return -1; }
  // Parent, after passing `child_fd` on: until `ctl` is readable (the child
  // is set up, or gone), serves the child's faults that would otherwise wait
  // for a reader (handler-thread mode). No-op elsewhere.
  virtual void ForkServeChild(int /*child_fd*/, int /*ctl*/) {}
  // Child, first thing, async-signal-safe: drops whatever refers to the
  // parent (its userfaultfd, a /proc/self/mem descriptor, threads) and
  // takes `fd`, the child's own userfaultfd (-1: none). False when the
  // child cannot go on with this object.
  virtual bool ChildAdopt(int /*fd*/) { return true; }
  // Child, once it may allocate: the threads the mode needs.
  virtual absl::Status ChildStart() { return absl::OkStatus(); }
  // Child that leaves the emulator: its memory stops being registered.
  virtual void ChildDetach() {}
  // Puts the arena's reservation back over `r` (PROT_NONE, and in the
  // userfaultfd modes registered again), replacing whatever native mapping
  // the program had placed there (AddressSpace::MapForeign).
  virtual bool Reserve(AddrRange r) = 0;
};

}  // namespace emu

#endif  // EMU_HOST_MMU_H_
