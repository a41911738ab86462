#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "emu/log.h"
#include "emu/machine.h"
#include "emu/pool.h"
#include "emu/status.h"
#include "fault/handle_fault.h"
#include "fault/host_backends.h"
#include "fault/signals.h"
#include "emu/sys.h"
#include "emu/trace.h"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)  // Linux 6.7
#endif

namespace emu {
namespace {

constexpr size_t kZeroSrcBytes = 512 * kPageSize;  // the largest install run

// PAGEMAP_SCAN (Linux 6.7, <linux/fs.h>; the build's headers may be older).
struct PmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
  uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct PageRegion {
  uint64_t start, end, categories;
};
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr uint64_t kPmScanWpMatching = 1 << 0;  // write-protect what matches
constexpr uint64_t kPageIsWritten = 1 << 1;     // not uffd-wp: written since protected

// Calls fn(start, end) for each piece of the arena outside the native
// mappings a program placed in it (AddressSpace::MapForeign), in order,
// until fn returns false; returns whether every call returned true.
template <typename Fn>
bool ForEachEmulatedPiece(Machine* machine, AddrRange arena, Fn&& fn) {
  VirtAddr from = arena.start;
  for (AddrRange r : machine->ForeignRanges()) {
    if (r.start > from && !fn(from, r.start)) return false;
    from = std::max(from, r.end);
  }
  return from >= arena.end || fn(from, arena.end);
}

int OpenUffd(int flags, std::string* why);

// The write tracker of MachineOptions::dirty_tracking "async": a second
// userfaultfd with UFFD_FEATURE_WP_ASYNC (its write-protect faults resolve
// in the kernel, recorded in the PTE) and /proc/self/pagemap for
// PAGEMAP_SCAN. False with the reason when the kernel has neither.
bool OpenWriteTracker(int* uffd, int* pagemap, std::string* why) {
  *uffd = OpenUffd(O_CLOEXEC | O_NONBLOCK, why);
  if (*uffd < 0) return false;
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_WP_ASYNC;
  if (ioctl(*uffd, UFFDIO_API, &api) != 0 || !(api.features & UFFD_FEATURE_WP_ASYNC)) {
    if (why) {
      *why = absl::StrCat("UFFDIO_API offers no UFFD_FEATURE_WP_ASYNC (Linux 6.7): ",
                          strerror(errno));
    }
    close(*uffd);
    *uffd = -1;
    return false;
  }
  *pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  PageRegion vec[1];
  PmScanArg arg{};
  arg.size = sizeof(arg);
  arg.start = reinterpret_cast<uintptr_t>(vec) & ~(kPageSize - 1);  // any mapped page will do
  arg.end = arg.start + kPageSize;
  arg.vec = reinterpret_cast<uintptr_t>(vec);
  arg.vec_len = 1;
  arg.category_mask = kPageIsWritten;
  arg.return_mask = kPageIsWritten;
  if (*pagemap < 0 || ioctl(*pagemap, kPagemapScan, &arg) < 0) {
    if (why) {
      *why = absl::StrCat(*pagemap < 0 ? "open /proc/self/pagemap: " : "PAGEMAP_SCAN (Linux 6.7): ",
                          strerror(errno));
    }
    if (*pagemap >= 0) close(*pagemap);
    close(*uffd);
    *uffd = *pagemap = -1;
    return false;
  }
  return true;
}

int OpenUffd(int flags, std::string* why) {
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    int fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
    int err = errno;
    close(dev);
    if (fd >= 0) return fd;
    if (why) *why = absl::StrCat("USERFAULTFD_IOC_NEW: ", strerror(err));
  }
  int fd = static_cast<int>(syscall(SYS_userfaultfd, flags));
  if (fd < 0 && why) {
    *why = absl::StrCat("userfaultfd(2): ", strerror(errno),
                        " (need root, access to /dev/userfaultfd, or "
                        "vm.unprivileged_userfaultfd=1)");
  }
  return fd;
}

class UffdMmu : public HostMmu {
 public:
  UffdMmu(Machine* machine, FaultMode mode, int uffd, void* zero_src, bool fork_events,
          int wp_uffd, int pagemap)
      : machine_(machine),
        mode_(mode),
        uffd_(uffd),
        zero_src_(zero_src),
        fork_events_(fork_events),
        fork_efd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
        tracks_writes_(wp_uffd >= 0),
        wp_uffd_(wp_uffd),
        pagemap_(pagemap) {}

  ~UffdMmu() override {
    UnregisterSignalMachine(machine_);
    StopThreads();
    AddrRange arena = machine_->arena();
    uffdio_range r{arena.start, arena.len_bytes()};
    ioctl(uffd_, UFFDIO_UNREGISTER, &r);
    close(uffd_);
    if (wp_uffd_ >= 0) {
      ioctl(wp_uffd_, UFFDIO_UNREGISTER, &r);
      close(wp_uffd_);
    }
    if (pagemap_ >= 0) close(pagemap_);
    if (fork_efd_ >= 0) close(fork_efd_);
    sys::Munmap(zero_src_, kZeroSrcBytes);
  }

  // ---- fork (Machine's protocol, machine.cc)
  bool ForkKeepsRegistration() const override { return fork_events_; }
  void ForkExpect() override {
    if (!fork_events_) return;
    int stale = fork_fd_.exchange(-1);
    if (stale >= 0) close(stale);
    uint64_t v;
    while (read(fork_efd_, &v, sizeof(v)) > 0) {
    }
    expecting_.store(true, std::memory_order_release);
  }
  int ForkTakeChildFd(int ctl) override;
  void ForkServeChild(int child_fd, int ctl) override;
  bool ChildAdopt(int fd) override;
  absl::Status ChildStart() override {
    if (!fork_events_) return absl::OkStatus();
    if (fork_efd_ < 0) fork_efd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    StartThreads(mode_ == FaultMode::kUffdThread ? HandlerThreads() : 1);
    return absl::OkStatus();
  }
  void ChildDetach() override;
  // The reader of the parent's descriptor met a fork event.
  void OnForkEvent(int fd) {
    if (expecting_.exchange(false, std::memory_order_acq_rel)) {
      fork_fd_.store(fd, std::memory_order_release);
      uint64_t one = 1;
      ssize_t ignored = write(fork_efd_, &one, sizeof(one));
      (void)ignored;
    } else {
      // A fork nobody prepared (not through glibc's fork): the child loses
      // the registration when its last descriptor goes, as without events.
      close(fd);
    }
  }

  FaultMode mode() const override { return mode_; }
  bool prot_encodes_ptes() const override { return false; }

  bool InstallZero(AddrRange r, Prot) override {
    uffdio_zeropage z{};
    z.range = {r.start, r.len_bytes()};
    z.mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE;
    if (!Retry(UFFDIO_ZEROPAGE, &z, &z.zeropage)) return false;
    // Every zero-page PTE is write-protected, whatever the VMA allows now,
    // so a later mprotect(PROT_WRITE) needs no PTE walk: a write always traps.
    uffdio_writeprotect wp{};
    wp.range = {r.start, r.len_bytes()};
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (WriteProtectIoctl(&wp) != 0) return false;
    machine_->vmstat().Add(VmEvent::k_host_install_calls, 2);
    return true;
  }

  bool InstallZeroed(AddrRange r, Prot) override {
    uffdio_copy c{};
    c.dst = r.start;
    c.src = reinterpret_cast<uintptr_t>(zero_src_);
    c.len = r.len_bytes();
    c.mode = UFFDIO_COPY_MODE_DONTWAKE;
    machine_->vmstat().Add(VmEvent::k_host_install_calls);
    return Retry(UFFDIO_COPY, &c, &c.copy);
  }

  bool InstallCopy(AddrRange r, const void* src, Prot, bool writable) override {
    uffdio_copy c{};
    c.dst = r.start;
    c.src = reinterpret_cast<uintptr_t>(src);
    c.len = r.len_bytes();
    c.mode = UFFDIO_COPY_MODE_DONTWAKE | (writable ? 0 : UFFDIO_COPY_MODE_WP);
    machine_->vmstat().Add(VmEvent::k_host_install_calls);
    return Retry(UFFDIO_COPY, &c, &c.copy);
  }

  bool WriteProtect(AddrRange r, Prot) override {
    uffdio_writeprotect wp{};
    wp.range = {r.start, r.len_bytes()};
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    machine_->vmstat().Add(VmEvent::k_host_install_calls);
    return WriteProtectIoctl(&wp) == 0;
  }

  bool MakeWritable(AddrRange r, Prot) override {
    uffdio_writeprotect wp{};
    wp.range = {r.start, r.len_bytes()};
    wp.mode = UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
    machine_->vmstat().Add(VmEvent::k_host_install_calls);
    return WriteProtectIoctl(&wp) == 0;
  }

  bool Zap(AddrRange r) override {
    return sys::Madvise(reinterpret_cast<void*>(r.start), r.len_bytes(), MADV_DONTNEED) == 0;
  }

  bool ZapMany(const AddrRange* r, int n) override {
    // Measured on a 2-CPU VM with the process running on the other CPU
    // (kswapd's case): 21 us per page with one madvise per page, 0.7 us
    // with process_madvise of 64 ranges.
    constexpr int kChunk = 64;
    bool ok = true;
    for (int i = 0; i < n; i += kChunk) {
      const int m = std::min(kChunk, n - i);
      int done = 0;  // ranges of this chunk fully zapped
      if (vectored_zap_.load(std::memory_order_relaxed)) {
        iovec iov[kChunk];
        size_t total = 0;
        for (int k = 0; k < m; k++) {
          iov[k] = {reinterpret_cast<void*>(r[i + k].start), r[i + k].len_bytes()};
          total += r[i + k].len_bytes();
        }
        long got = sys::ProcessMadvise(iov, m, MADV_DONTNEED);
        if (got < 0 && (errno == EBADF || errno == EINVAL || errno == EPERM || errno == ENOSYS)) {
          vectored_zap_.store(false, std::memory_order_relaxed);  // an older kernel
        } else if (got >= 0 && static_cast<size_t>(got) == total) {
          done = m;
        } else if (got > 0) {
          // Done in order up to an error: a partly advised range is redone.
          for (size_t left = static_cast<size_t>(got);
               done < m && left >= r[i + done].len_bytes(); done++) {
            left -= r[i + done].len_bytes();
          }
        }
      }
      for (int k = done; k < m; k++) ok &= Zap(r[i + k]);
    }
    return ok;
  }

  bool MapPool(AddrRange r, int fd, uint64_t off, Prot vma_prot, bool writable) override {
    // Mapped readable and populated first, so that every page is present
    // in the host, and not writable unless it is to be (no thread may write
    // a shared frame before uffd-wp is on); then registered like the arena,
    // write-protected, and given the VMA's protection.
    void* a = reinterpret_cast<void*>(r.start);
    const Prot first = (writable ? vma_prot : vma_prot & ~PROT_WRITE) | PROT_READ;
    if (sys::Mmap(a, r.len_bytes(), first, MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd,
                  static_cast<off_t>(off)) == MAP_FAILED) {
      return false;
    }
    machine_->vmstat().Add(VmEvent::k_host_install_calls);
    if (!Register(r)) return false;
    if (!writable && !WriteProtect(r, vma_prot)) return false;
    return first == vma_prot || Protect(r, vma_prot);
  }

  bool tracks_writes() const override { return tracks_writes_; }

  bool MapPoolTracked(AddrRange r, int fd, uint64_t off, Prot vma_prot) override {
    // As MapPool's read-only case, with the tracker's descriptor: no write
    // reaches a page before the tracker protects it, so none goes unseen.
    void* a = reinterpret_cast<void*>(r.start);
    const Prot first = (vma_prot & ~PROT_WRITE) | PROT_READ;
    if (sys::Mmap(a, r.len_bytes(), first, MAP_SHARED | MAP_FIXED | MAP_POPULATE, fd,
                  static_cast<off_t>(off)) == MAP_FAILED) {
      return false;
    }
    machine_->vmstat().Add(VmEvent::k_host_install_calls, 2);
    uffdio_register reg{};
    reg.range = {r.start, r.len_bytes()};
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    uffdio_writeprotect wp{};
    wp.range = {r.start, r.len_bytes()};
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    if (ioctl(wp_uffd_, UFFDIO_REGISTER, &reg) != 0 ||
        ioctl(wp_uffd_, UFFDIO_WRITEPROTECT, &wp) != 0) {
      return false;
    }
    return first == vma_prot || Protect(r, vma_prot);
  }

  bool Harvest(AddrRange r, absl::FunctionRef<void(AddrRange)> written) override {
    PageRegion vec[32];
    PmScanArg arg{};
    arg.size = sizeof(arg);
    arg.flags = kPmScanWpMatching;  // ranges of the main descriptor are skipped
    arg.start = r.start;
    arg.end = r.end;
    arg.vec = reinterpret_cast<uintptr_t>(vec);
    arg.vec_len = sizeof(vec) / sizeof(vec[0]);
    arg.category_mask = kPageIsWritten;
    arg.return_mask = kPageIsWritten;
    machine_->vmstat().Add(VmEvent::k_harvest_scans);
    for (;;) {
      const long n = ioctl(pagemap_, kPagemapScan, &arg);
      if (n < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      for (long i = 0; i < n; i++) written({vec[i].start, vec[i].end});
      if (arg.walk_end >= arg.end) return true;
      if (arg.walk_end <= arg.start) {
        errno = EIO;
        return false;
      }
      arg.start = arg.walk_end;
    }
  }

  bool ReplaceWithCopy(AddrRange r, const void* src, Prot vma_prot) override {
    // PROT_NONE while the copy goes in: a racing access traps (SIGSEGV,
    // retried by the signal handler) instead of mapping a page of its own.
    if (!MapReservation(r) || !Register(r)) return false;
    if (!InstallCopy(r, src, vma_prot, /*writable=*/true)) return false;
    return Protect(r, vma_prot);
  }

  bool Protect(AddrRange r, Prot host_prot) override {
    return sys::Mprotect(reinterpret_cast<void*>(r.start), r.len_bytes(), host_prot) == 0;
  }

  bool Reserve(AddrRange r) override {
    // A new mapping carries no registration: register it as the arena was.
    return MapReservation(r) && Register(r);
  }
  bool Register(AddrRange r) {
    uffdio_register reg{};
    reg.range = {r.start, r.len_bytes()};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
    return ioctl(uffd_, UFFDIO_REGISTER, &reg) == 0;
  }

  void Wake(AddrRange r) override {
    uffdio_range range{r.start, r.len_bytes()};
    ioctl(uffd_, UFFDIO_WAKE, &range);
  }

  void StartThreads(int n);

 private:
  // Runs a fill ioctl until all of it is done. The kernel may do part of the
  // range and return EAGAIN (mm layout changing); `done` reports progress.
  template <typename Arg>
  bool Retry(unsigned long cmd, Arg* arg, __s64* done) {
    for (;;) {
      *done = 0;
      if (ioctl(uffd_, cmd, arg) == 0) return true;
      if (errno != EAGAIN) return false;
      if (*done <= 0) sched_yield();  // a fork in progress (see WriteProtectIoctl)
      if (*done > 0) {
        if constexpr (requires { arg->range; }) {
          arg->range.start += *done;
          arg->range.len -= *done;
        } else {
          arg->dst += *done;
          arg->src += *done;
          arg->len -= *done;
        }
      }
    }
  }
  // UFFDIO_WRITEPROTECT, again while the kernel says EAGAIN: a fork is
  // copying the mm and its event is not read yet (mmap_changing), which a
  // reader thread does in a moment.
  int WriteProtectIoctl(uffdio_writeprotect* wp) {
    for (;;) {
      if (ioctl(uffd_, UFFDIO_WRITEPROTECT, wp) == 0) return 0;
      if (errno != EAGAIN) return -1;
      sched_yield();
    }
  }
  void HandlerLoop();
  void StopThreads();

  Machine* const machine_;
  const FaultMode mode_;
  int uffd_;              // changes only in a forked child (ChildAdopt)
  void* const zero_src_;  // kZeroSrcBytes of never-written memory: reads as zeros
  const bool fork_events_;  // UFFD_FEATURE_EVENT_FORK: a child keeps the registration
  int fork_efd_;            // signalled when fork_fd_ is set
  // The write tracker (OpenWriteTracker), or -1s. Both change only in a
  // forked child (ChildAdopt): the parent's name the parent's mm.
  bool tracks_writes_;
  int wp_uffd_;
  int pagemap_;
  std::atomic<int> fork_fd_{-1};
  std::atomic<bool> expecting_{false};
  // ZapMany uses process_madvise until the kernel refuses it once.
  std::atomic<bool> vectored_zap_{true};
  int stop_fd_ = -1;
  std::vector<pthread_t> threads_;
};

int UffdMmu::ForkTakeChildFd(int ctl) {
  if (!fork_events_) return -1;
  for (;;) {
    int fd = fork_fd_.exchange(-1, std::memory_order_acq_rel);
    if (fd >= 0) return fd;
    pollfd fds[2] = {{fork_efd_, POLLIN, 0}, {ctl, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0 && errno != EINTR) break;
    if (fds[1].revents != 0) break;  // EOF: fork failed, or the child is gone
    uint64_t v;
    ssize_t ignored = read(fork_efd_, &v, sizeof(v));
    (void)ignored;
  }
  // No child to hand it to: a late event's descriptor is closed.
  if (!expecting_.exchange(false, std::memory_order_acq_rel)) {
    int fd = fork_fd_.exchange(-1, std::memory_order_acq_rel);
    if (fd >= 0) close(fd);
  }
  return -1;
}

void UffdMmu::ForkServeChild(int child_fd, int ctl) {
  // SIGBUS mode: the child's faults raise SIGBUS in the child already.
  if (mode_ != FaultMode::kUffdThread) return;
  uffd_msg msgs[16];
  for (;;) {
    pollfd fds[2] = {{child_fd, POLLIN, 0}, {ctl, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    // The child's word first: from then on its own handlers read its
    // descriptor, and a fork of its own must find its event there.
    if (fds[1].revents != 0) return;  // the child is set up, or gone
    if (fds[0].revents & POLLIN) {
      ssize_t n = read(child_fd, msgs, sizeof(msgs));
      for (ssize_t i = 0; n > 0 && i < n / static_cast<ssize_t>(sizeof(uffd_msg)); i++) {
        if (msgs[i].event == UFFD_EVENT_FORK) {
          // Cannot happen: the child forks only after ChildDone, which
          // waits until this loop is over. Not to leak the descriptor.
          close(static_cast<int>(msgs[i].arg.fork.ufd));
          continue;
        }
        if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
        const VirtAddr addr = msgs[i].arg.pagefault.address;
        const pid_t tid = static_cast<pid_t>(msgs[i].arg.pagefault.feat.ptid);
        siginfo_t si{};
        si.si_signo = SIGBUS;
        si.si_code = SI_QUEUE;
        si.si_errno = (msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) ? kChildFaultWrite
                                                                               : kChildFaultRead;
        si.si_addr = reinterpret_cast<void*>(addr);
        // Until the child's handlers start, its only thread is the one that
        // forked: its tid is the child's pid. A fault of another thread
        // (one of those handlers' own) is woken to retry, and they read it.
        syscall(SYS_rt_tgsigqueueinfo, tid, tid, SIGBUS, &si);
        uffdio_range range{PageAlignDown(addr), kPageSize};
        ioctl(child_fd, UFFDIO_WAKE, &range);
      }
    }
  }
}

bool UffdMmu::ChildAdopt(int fd) {
  // The copies of the parent's descriptors refer to the parent: its
  // userfaultfd works on the parent's mm, and the eventfds are shared.
  close(uffd_);
  if (stop_fd_ >= 0) close(stop_fd_);
  stop_fd_ = -1;
  if (fork_efd_ >= 0) close(fork_efd_);
  fork_efd_ = -1;
  fork_fd_.store(-1, std::memory_order_relaxed);
  expecting_.store(false, std::memory_order_relaxed);
  // The parent's threads are not here: their handles name threads of
  // another process, so the vector is forgotten, not destroyed.
  new (&threads_) std::vector<pthread_t>();
  uffd_ = fd;
  if (tracks_writes_) {
    // The tracker's descriptor and /proc/self/pagemap name the parent's mm:
    // the child opens its own. Its host mappings of tracked pages lost
    // their registration in the fork (the tracker has no fork events), so
    // writes to pages mapped before the fork are not tracked in the child
    // (docs/DESIGN.md section 8).
    close(wp_uffd_);
    close(pagemap_);
    if (!OpenWriteTracker(&wp_uffd_, &pagemap_, nullptr)) {
      // New mappings fall back to the write fault.
      wp_uffd_ = pagemap_ = -1;
      tracks_writes_ = false;
    }
  }
  return fd >= 0 || !fork_events_;
}

void UffdMmu::ChildDetach() {
  if (uffd_ < 0) return;
  StopThreads();
  AddrRange arena = machine_->arena();
  ForEachEmulatedPiece(machine_, arena, [&](VirtAddr start, VirtAddr end) {
    uffdio_range r{start, end - start};
    ioctl(uffd_, UFFDIO_UNREGISTER, &r);
    return true;
  });
  close(uffd_);
  uffd_ = -1;
}

void UffdMmu::StartThreads(int n) {
  stop_fd_ = eventfd(0, EFD_CLOEXEC);
  for (int i = 0; i < n; i++) {
    auto handler = [this, i, n] {
      // Handler threads take no process signals.
      sigset_t all;
      sigfillset(&all);
      pthread_sigmask(SIG_BLOCK, &all, nullptr);
      if (n > 1) {
        // One handler per CPU, pinned: every poller wakes for each fault, and
        // the one on the faulting CPU (idle now that the faulting thread
        // sleeps) takes it at once; the others find nothing to read.
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(i, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
      }
      HandlerLoop();
    };
    pthread_t t;
    if (StartThread(&t, handler) == 0) threads_.push_back(t);
  }
}

void UffdMmu::StopThreads() {
  if (threads_.empty()) return;
  uint64_t one = 1;
  ssize_t ignored = write(stop_fd_, &one, sizeof(one));
  (void)ignored;
  for (pthread_t t : threads_) pthread_join(t, nullptr);
  threads_.clear();
  close(stop_fd_);
}

void UffdMmu::HandlerLoop() {
  sys::t_emulator_thread = true;
  FaultHandler& handler = machine_->fault_handler();
  VmStat& vmstat = machine_->vmstat();
  uffd_msg msgs[16];
  for (;;) {
    pollfd fds[2] = {{uffd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    ssize_t n = read(uffd_, msgs, sizeof(msgs));
    if (n < 0) continue;  // EAGAIN: another handler thread took it
    for (size_t i = 0; i < n / sizeof(uffd_msg); i++) {
      if (msgs[i].event == UFFD_EVENT_FORK) {
        OnForkEvent(static_cast<int>(msgs[i].arg.fork.ufd));
        continue;
      }
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      timespec t0, t1;
      clock_gettime(CLOCK_MONOTONIC, &t0);
      VirtAddr addr = msgs[i].arg.pagefault.address;
      unsigned flags = kFaultRemote;
      if (msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) flags |= kFaultWrite;
      AddressSpace* as = machine_->FindAddressSpace(addr);
      SetFaultingThread(msgs[i].arg.pagefault.feat.ptid);
      unsigned ret = as ? handler.HandleMmFault(*as, addr, flags) : kFaultSigsegv;
      SetFaultingThread(0);
      if (ret & (kFaultSigbus | kFaultOom | kFaultHostLimit)) {
        // The thread is blocked in the kernel: queue SIGBUS for it, then wake
        // it; the signal is delivered as its fault returns.
        // The si_code must be negative to queue a signal for another thread;
        // si_addr still tells the program where.
        ReportFatalFault(addr, ret);
        siginfo_t si{};
        si.si_signo = SIGBUS;
        si.si_code = SI_QUEUE;
        si.si_addr = reinterpret_cast<void*>(addr);
        syscall(SYS_rt_tgsigqueueinfo, getpid(), msgs[i].arg.pagefault.feat.ptid, SIGBUS, &si);
      }
      // Recorded before the wake: the woken thread may go straight on to
      // exit, and its process's trace and counters must already hold this
      // fault (the latency leaves out the wake call).
      clock_gettime(CLOCK_MONOTONIC, &t1);
      vmstat.Add(VmEvent::k_fault_ns_thread,
                 (t1.tv_sec - t0.tv_sec) * 1000000000ull + t1.tv_nsec - t0.tv_nsec);
      if (trace::Enabled()) {
        uint64_t start = t0.tv_sec * 1000000000ull + t0.tv_nsec;
        trace::Record(addr, msgs[i].arg.pagefault.feat.ptid, flags & kFaultWrite, ret, start,
                      t1.tv_sec * 1000000000ull + t1.tv_nsec - start);
      }
      // Installs do not wake (DONTWAKE): a thread that sleeps on its fault
      // retries only once the software PTE is published. (One that has not
      // gone to sleep yet when the host starts allowing the access retries
      // at once: the kernel's userfaultfd_must_wait finds nothing to wait
      // for. Its access is right; only its PTE may still be locked for a
      // moment, which every reader of PTEs handles.) A bad access then meets
      // a host PROT_NONE page and gets the kernel's own SIGSEGV; a spurious
      // fault finds its page.
      Wake({PageAlignDown(addr), PageAlignDown(addr) + kPageSize});
    }
  }
}

}  // namespace

int HandlerThreads() {
  if (const char* env = std::getenv("EMU_UFFD_HANDLERS")) {
    int n = std::atoi(env);
    if (n >= 1 && n <= 1024) return n;
  }
  return std::max(1, static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)));
}

bool UffdAvailable(std::string* why) {
  int fd = OpenUffd(O_CLOEXEC | O_NONBLOCK, why);
  if (fd < 0) return false;
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_SIGBUS | UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_THREAD_ID;
  bool ok = ioctl(fd, UFFDIO_API, &api) == 0;
  if (!ok && why) *why = absl::StrCat("UFFDIO_API: ", strerror(errno));
  close(fd);
  return ok;
}

absl::StatusOr<std::unique_ptr<HostMmu>> CreateUffdMmu(Machine* machine, AddrRange arena,
                                                       FaultMode mode) {
  std::string why;
  int fd = OpenUffd(O_CLOEXEC | O_NONBLOCK, &why);
  if (fd < 0) {
    int err = errno ? errno : EPERM;
    Log(Component::kFault).info("userfaultfd unavailable: {}", why);
    return ErrnoError(err, "userfaultfd (needs root, access to /dev/userfaultfd, or "
                           "vm.unprivileged_userfaultfd=1)");
  }
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_EVENT_FORK;
  if (mode == FaultMode::kUffdSigbus) api.features |= UFFD_FEATURE_SIGBUS;
  bool fork_events = true;
  if (ioctl(fd, UFFDIO_API, &api) != 0) {
    // Fork events need CAP_SYS_PTRACE: without them a forked child runs on
    // plain memory until it registers again (docs/DESIGN.md). UFFDIO_API
    // may be called once per descriptor.
    close(fd);
    fd = OpenUffd(O_CLOEXEC | O_NONBLOCK, &why);
    if (fd < 0) return ErrnoError(errno ? errno : EPERM, "userfaultfd");
    api = uffdio_api{};
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_THREAD_ID;
    if (mode == FaultMode::kUffdSigbus) api.features |= UFFD_FEATURE_SIGBUS;
    fork_events = false;
    if (ioctl(fd, UFFDIO_API, &api) != 0) {
      int err = errno;
      close(fd);
      return ErrnoError(err, "UFFDIO_API (need SIGBUS and write-protect features)");
    }
    Log(Component::kFault).info("userfaultfd without fork events (needs CAP_SYS_PTRACE)");
  }
  void* zero = sys::Mmap(nullptr, kZeroSrcBytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (zero == MAP_FAILED) {
    close(fd);
    return ErrnoError(errno, "map the zero source");
  }
  // MachineOptions::dirty_tracking: the write tracker where the kernel
  // has one ("auto"), or by the option's demand ("async").
  int wp_uffd = -1, pagemap = -1;
  const std::string& tracking = machine->options().dirty_tracking;
  if (tracking != "fault" && !OpenWriteTracker(&wp_uffd, &pagemap, &why)) {
    if (tracking == "async") {
      close(fd);
      sys::Munmap(zero, kZeroSrcBytes);
      return ErrnoError(EOPNOTSUPP, absl::StrCat("dirty tracking 'async': ", why));
    }
    Log(Component::kFault).info("dirty tracking by write fault: {}", why);
  }
  auto mmu = std::make_unique<UffdMmu>(machine, mode, fd, zero, fork_events, wp_uffd, pagemap);
  if (mode == FaultMode::kUffdSigbus && fork_events) {
    // Faults never queue in SIGBUS mode; fork() waits until its event is
    // read, so one thread reads events.
    mmu->StartThreads(1);
  } else if (mode == FaultMode::kUffdThread) {
    // One pinned handler per CPU. A single unpinned handler is only fast
    // when the scheduler happens to wake it on the faulting CPU: random
    // first-touch write measured 5.4 us in one session and 75-78 us in
    // another; pinned per-CPU handlers measured 7.9-8.1 us every time
    // (bench/fault_latency --mode thread, docs/DESIGN.md).
    mmu->StartThreads(HandlerThreads());
  }
  EMU_RETURN_IF_ERROR(RegisterSignalMachine(machine));
  // Registered last: from here on a fault on the arena needs the handlers
  // above, and a forked child without fork events (Machine::ChildLate) may touch
  // emulated memory while this runs.
  // All of it but the native mappings a program placed inside (a forked
  // child's copy of them: AddressSpace::MapForeign).
  uffdio_register reg{};
  auto register_range = [&](VirtAddr start, VirtAddr end) {
    reg = uffdio_register{};
    reg.range = {start, end - start};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP;
    return ioctl(fd, UFFDIO_REGISTER, &reg) == 0;
  };
  if (!ForEachEmulatedPiece(machine, arena, register_range)) {
    return ErrnoError(errno, "UFFDIO_REGISTER of the arena");
  }
  constexpr uint64_t kNeed = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) |
                             (1ull << _UFFDIO_WRITEPROTECT) | (1ull << _UFFDIO_WAKE);
  if ((reg.ioctls & kNeed) != kNeed) {
    return ErrnoError(EOPNOTSUPP, "userfaultfd lacks COPY/ZEROPAGE/WRITEPROTECT here");
  }
  return std::unique_ptr<HostMmu>(std::move(mmu));
}

}  // namespace emu
