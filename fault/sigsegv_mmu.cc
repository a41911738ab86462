#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "emu/machine.h"
#include "emu/status.h"
#include "fault/host_backends.h"
#include "fault/signals.h"
#include "emu/sys.h"

namespace emu {
namespace {

// Without userfaultfd the host protection carries the PTE state: a page that
// is not present is PROT_NONE, so any access traps; a zero page is
// PROT_READ, and the kernel maps its own zero page on the retried read; a
// written page has the VMA's protection, and the kernel allocates it on the
// retried write (or copies the zero page). The emulator decides each of these
// transitions in its SIGSEGV handler.
class SigsegvMmu : public HostMmu {
 public:
  explicit SigsegvMmu(Machine* machine)
      : machine_(machine), mem_fd_(open("/proc/self/mem", O_RDWR | O_CLOEXEC)) {}
  ~SigsegvMmu() override {
    UnregisterSignalMachine(machine_);
    if (mem_fd_ >= 0) close(mem_fd_);
  }

  FaultMode mode() const override { return FaultMode::kSigsegv; }
  // Protections survive fork: the child never runs on plain memory.
  bool ForkKeepsRegistration() const override { return true; }
  bool ChildAdopt(int) override {
    // The parent's descriptor names the parent's mm: writes through it
    // would land in the parent.
    if (mem_fd_ >= 0) close(mem_fd_);
    mem_fd_ = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
    return true;
  }
  bool prot_encodes_ptes() const override { return true; }

  bool InstallZero(AddrRange r, Prot vma_prot) override {
    return Protect(r, PROT_READ | (vma_prot & PROT_EXEC));
  }
  bool InstallZeroed(AddrRange r, Prot vma_prot) override { return Protect(r, vma_prot); }
  bool MakeWritable(AddrRange r, Prot vma_prot) override { return Protect(r, vma_prot); }
  // The copy goes in while the range is still PROT_NONE, through
  // /proc/self/mem (the kernel writes with FOLL_FORCE, as a debugger does),
  // so no other thread can see a partial page; only then is it opened. Where
  // /proc/self/mem refuses, the range is made writable for a memcpy, and a
  // thread touching it at that instant could see a partial copy.
  bool InstallCopy(AddrRange r, const void* src, Prot vma_prot, bool writable) override {
    Prot final = writable ? vma_prot : (vma_prot & ~PROT_WRITE) | PROT_READ;
    if (mem_fd_ >= 0 && pwrite(mem_fd_, src, r.len_bytes(), static_cast<off_t>(r.start)) ==
                            static_cast<ssize_t>(r.len_bytes())) {
      return Protect(r, final);
    }
    if (!Protect(r, PROT_READ | PROT_WRITE)) return false;
    memcpy(reinterpret_cast<void*>(r.start), src, r.len_bytes());
    return Protect(r, final);
  }
  bool WriteProtect(AddrRange r, Prot vma_prot) override {
    return Protect(r, (vma_prot & ~PROT_WRITE) | PROT_READ);
  }
  bool Zap(AddrRange r) override {
    // PROT_NONE first: between the two calls a read would otherwise map
    // the kernel's zero page and see zeros where the page's data was.
    void* p = reinterpret_cast<void*>(r.start);
    return sys::Mprotect(p, r.len_bytes(), PROT_NONE) == 0 &&
           sys::Madvise(p, r.len_bytes(), MADV_DONTNEED) == 0;
  }
  bool Reserve(AddrRange r) override { return MapReservation(r); }
  bool MapPool(AddrRange r, int fd, uint64_t off, Prot vma_prot, bool writable) override {
    Prot prot = vma_prot;
    if (!writable && (prot & PROT_WRITE)) prot = (prot & ~PROT_WRITE) | PROT_READ;
    machine_->vmstat().Add(VmEvent::k_host_install_calls);
    return sys::Mmap(reinterpret_cast<void*>(r.start), r.len_bytes(), prot, MAP_SHARED | MAP_FIXED,
                     fd, static_cast<off_t>(off)) != MAP_FAILED;
  }
  bool ReplaceWithCopy(AddrRange r, const void* src, Prot vma_prot) override {
    return MapReservation(r) && InstallCopy(r, src, vma_prot, /*writable=*/true);
  }
  bool Protect(AddrRange r, Prot host_prot) override {
    machine_->vmstat().Add(VmEvent::k_host_install_calls);
    return sys::Mprotect(reinterpret_cast<void*>(r.start), r.len_bytes(), host_prot) == 0;
  }

 private:
  Machine* const machine_;
  int mem_fd_;  // /proc/self/mem (of this process: reopened after fork), or -1
};

}  // namespace

bool MapReservation(AddrRange r) {
  if (sys::Mmap(reinterpret_cast<void*>(r.start), r.len_bytes(), PROT_NONE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED) {
    return false;
  }
  sys::RawSyscall6(SYS_munlock, static_cast<long>(r.start), static_cast<long>(r.len_bytes()), 0, 0,
                   0, 0);
  return true;
}

absl::StatusOr<std::unique_ptr<HostMmu>> CreateSigsegvMmu(Machine* machine, AddrRange) {
  auto mmu = std::make_unique<SigsegvMmu>(machine);
  EMU_RETURN_IF_ERROR(RegisterSignalMachine(machine));
  return std::unique_ptr<HostMmu>(std::move(mmu));
}

}  // namespace emu
