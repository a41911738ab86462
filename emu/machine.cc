#include "emu/machine.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <set>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "emu/log.h"
#include "emu/pool.h"
#include "emu/status.h"
#include "emu/sys.h"
#include "emu/trace.h"

namespace emu {

std::string_view FaultModeName(FaultMode m) {
  switch (m) {
    case FaultMode::kUffdSigbus: return "sigbus";
    case FaultMode::kUffdThread: return "thread";
    case FaultMode::kSigsegv: return "sigsegv";
  }
  return "?";
}

bool ParseFaultMode(std::string_view s, FaultMode* out) {
  for (FaultMode m : {FaultMode::kUffdSigbus, FaultMode::kUffdThread, FaultMode::kSigsegv}) {
    if (s == FaultModeName(m)) {
      *out = m;
      return true;
    }
  }
  return false;
}

absl::StatusOr<uint64_t> ParseSize(std::string_view s) {
  std::string_view in = s;
  while (!in.empty() && absl::ascii_isspace(in.front())) in.remove_prefix(1);
  while (!in.empty() && absl::ascii_isspace(in.back())) in.remove_suffix(1);
  if (in.empty()) return ErrnoError(EINVAL, "size is empty");
  uint64_t mult = 1;
  char last = absl::ascii_tolower(in.back());
  if (last == 'b' && in.size() > 1 && !absl::ascii_isdigit(in[in.size() - 2])) {
    in.remove_suffix(1);  // "64GB" / "64GiB" read as binary units too
    last = absl::ascii_tolower(in.back());
  }
  if (last == 'i') {
    in.remove_suffix(1);
    last = absl::ascii_tolower(in.back());
  }
  switch (last) {
    case 'k': mult = uint64_t{1} << 10; break;
    case 'm': mult = uint64_t{1} << 20; break;
    case 'g': mult = uint64_t{1} << 30; break;
    case 't': mult = uint64_t{1} << 40; break;
    default: break;
  }
  if (mult != 1) in.remove_suffix(1);
  double v = 0;
  if (in.empty() || !absl::SimpleAtod(absl::string_view(in.data(), in.size()), &v) || !std::isfinite(v) || v < 0) {
    return ErrnoError(EINVAL, absl::StrCat("'", std::string(s), "' is not a size (want e.g. 512M, 64G, 4096)"));
  }
  double bytes = v * static_cast<double>(mult);
  if (bytes >= 18446744073709551615.0) return ErrnoError(ERANGE, absl::StrCat("size '", std::string(s), "'"));
  return static_cast<uint64_t>(bytes);
}

absl::Status MachineOptions::Validate() const {
  if (fault_around_pages < 1 || fault_around_pages > 64 ||
      (fault_around_pages & (fault_around_pages - 1)) != 0) {
    return ErrnoError(EINVAL, absl::StrCat("fault-around of ", fault_around_pages,
                                           " pages: want a power of two from 1 to 64"));
  }
  if (mem_limit != 0 && mem_limit < kMinMemLimit) {
    return ErrnoError(EINVAL, absl::StrCat("memory limit of ", mem_limit, " bytes: want at least ",
                                           kMinMemLimit >> 20, " MiB"));
  }
  if (mem_limit != 0 && mem_limit > arena_bytes) {
    return ErrnoError(EINVAL, absl::StrCat("memory limit of ", mem_limit,
                                           " bytes is larger than the arena (", arena_bytes, ")"));
  }
  if (swap_readahead_pages < 1 || swap_readahead_pages > 64) {
    return ErrnoError(EINVAL, absl::StrCat("swap readahead of ", swap_readahead_pages,
                                           " pages: want 1 to 64"));
  }
  if (swap_queue_depth < 1 || swap_queue_depth > 4096) {
    return ErrnoError(EINVAL, absl::StrCat("swap queue depth ", swap_queue_depth,
                                           ": want 1 to 4096"));
  }
  if (swap_read_poll_us < 0 || swap_read_poll_us > 10000) {
    return ErrnoError(EINVAL, absl::StrCat("swap read poll of ", swap_read_poll_us,
                                           " us: want 0 to 10000"));
  }
  if (pool_vma_budget < 0) return ErrnoError(EINVAL, "pool_vma_budget: want >= 0");
  if (dirty_ratio < 1 || dirty_ratio > 100 || dirty_background_ratio < 1 ||
      dirty_background_ratio > 100) {
    return ErrnoError(EINVAL, absl::StrCat("dirty ratios ", dirty_background_ratio, "/",
                                           dirty_ratio, ": want 1 to 100"));
  }
  if (file_io != "psync" && file_io != "uring") {
    return ErrnoError(EINVAL, absl::StrCat("file I/O '", file_io, "': want psync or uring"));
  }
  if (dirty_tracking != "auto" && dirty_tracking != "fault" && dirty_tracking != "async") {
    return ErrnoError(EINVAL, absl::StrCat("dirty tracking '", dirty_tracking,
                                           "': want auto, fault or async"));
  }
  if (dirty_tracking == "async" && fault_mode == FaultMode::kSigsegv) {
    return ErrnoError(EINVAL, "dirty tracking 'async' needs a userfaultfd fault mode");
  }
  if (dirty_writeback_ms < 0 || dirty_expire_ms < 0) {
    return ErrnoError(EINVAL, "dirty_writeback_ms and dirty_expire_ms: want >= 0");
  }
  if (rmap != "anon_vma" && rmap != "anonmm") {
    return ErrnoError(EINVAL, absl::StrCat("rmap method '", rmap, "': want anon_vma or anonmm"));
  }
  if (reclaim_policy != "lru" && reclaim_policy != "fifo") {
    return ErrnoError(EINVAL, absl::StrCat("reclaim policy '", reclaim_policy,
                                           "': want lru or fifo"));
  }
  if (arena_bytes < Machine::kGranule || arena_bytes % Machine::kGranule != 0 ||
      arena_bytes / Machine::kGranule > Machine::kMaxGranules) {
    return ErrnoError(EINVAL, absl::StrCat("arena of ", arena_bytes,
                                           " bytes: want a whole number of GiB, 1G to 4T"));
  }
  return absl::OkStatus();
}

std::string MachineOptions::ToString() const {
  std::string s = absl::StrFormat("fault_mode=%s fault_around=%d zero_page=%s arena=%dG",
                                  std::string(FaultModeName(fault_mode)), fault_around_pages,
                                  zero_page ? "on" : "off", arena_bytes >> 30);
  if (mem_limit != 0) {
    absl::StrAppendFormat(&s, " mem_limit=%dM policy=%s readahead=%d read_poll=%dus csum=%s",
                          mem_limit >> 20, reclaim_policy, swap_readahead_pages,
                          swap_read_poll_us, swap_cache_checksum ? "on" : "off");
    if (no_swap) absl::StrAppend(&s, " swap=none");
  }
  if (file_io != "psync") absl::StrAppend(&s, " file_io=", file_io);
  if (dirty_tracking != "auto") absl::StrAppend(&s, " dirty_tracking=", dirty_tracking);
  return s;
}

bool Machine::Tracked(const Vma& v) const {
  return v.file != nullptr && (v.vm_flags & kVmShared) && v.file->backed() &&
         host_->tracks_writes();
}

Machine::Machine(const MachineOptions& options, AddrRange arena)
    : options_(options), arena_(arena) {}

absl::StatusOr<std::unique_ptr<Machine>> Machine::CreateWith(
    const MachineOptions& options, const HostMmuFactory& host_factory,
    const FaultHandlerFactory& handler_factory, const ReclaimFactory& reclaim_factory,
    const RmapFactory& rmap_factory) {
  EMU_RETURN_IF_ERROR(options.Validate());
  // Reserve arena + one granule, then trim to a granule-aligned arena.
  size_t reserve = options.arena_bytes + kGranule;
  void* p = sys::Mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return ErrnoError(errno, absl::StrCat("reserve an arena of ", options.arena_bytes, " bytes"));
  }
  uintptr_t raw = reinterpret_cast<uintptr_t>(p);
  uintptr_t start = (raw + kGranule - 1) & ~(kGranule - 1);
  if (start > raw) sys::Munmap(p, start - raw);
  uintptr_t end = start + options.arena_bytes;
  if (raw + reserve > end) sys::Munmap(reinterpret_cast<void*>(end), raw + reserve - end);

  std::unique_ptr<Machine> m(new Machine(options, AddrRange{start, end}));
  uint64_t frames = options.max_frames ? options.max_frames : (options.arena_bytes >> kPageShift);
  if (options.mem_limit != 0) frames = options.mem_limit >> kPageShift;
  auto mem_map = MemMap::Create(frames + 1);
  if (!mem_map.ok()) {
    sys::Munmap(reinterpret_cast<void*>(start), options.arena_bytes);
    return mem_map.status();
  }
  m->mem_map_.reset(*mem_map);
  m->flusher_ = std::make_unique<Flusher>(m.get());
  m->fault_handler_ = handler_factory(m.get());
  auto host = host_factory(m.get(), m->arena_);
  if (!host.ok()) {
    sys::Munmap(reinterpret_cast<void*>(start), options.arena_bytes);
    return host.status();
  }
  m->host_ = std::move(*host);
  m->host_factory_ = host_factory;
  if (rmap_factory) {
    auto rmap = rmap_factory(m.get());
    if (!rmap.ok()) return rmap.status();
    m->rmap_ = std::move(*rmap);
  }
  if (options.mem_limit != 0) {
    if (!reclaim_factory) {
      return ErrnoError(EINVAL, "a memory limit needs the swap layer (use emu::CreateMachine)");
    }
    auto reclaim = reclaim_factory(m.get());
    if (!reclaim.ok()) return reclaim.status();
    m->reclaim_ = std::move(*reclaim);
  }
  Log(Component::kEmu).info("machine up: arena={} {}", m->arena_, options.ToString());
  return m;
}

Machine::~Machine() {
  EMU_BUG_ON(nr_address_spaces_.load() != 0);  // address spaces must go first
  // The flusher stops before anything it writes with goes; the object
  // stays until the fault threads (host_) are gone.
  flusher_->Stop();
  reclaim_.reset();  // stops the background reclaimer
  host_.reset();  // unregisters the fault source before the arena goes
  sys::Munmap(reinterpret_cast<void*>(arena_.start), arena_.len_bytes());
}

absl::StatusOr<std::unique_ptr<AddressSpace>> Machine::CreateAddressSpace(uint64_t window_bytes) {
  if (window_bytes == 0) window_bytes = std::max(kGranule, arena_.len_bytes() / 4);
  uint64_t want = (window_bytes + kGranule - 1) / kGranule;
  uint64_t nr = arena_.len_bytes() / kGranule;
  absl::MutexLock l(&lock_);
  uint64_t run = 0;
  for (uint64_t g = 0; g < nr; g++) {
    run = granule_owner_[g].load(std::memory_order_relaxed) == nullptr ? run + 1 : 0;
    if (run == want) {
      uint64_t first = g + 1 - want;
      AddrRange window{arena_.start + first * kGranule, arena_.start + (g + 1) * kGranule};
      std::unique_ptr<AddressSpace> as(new AddressSpace(this, window));
      for (uint64_t i = first; i <= g; i++) {
        granule_owner_[i].store(as.get(), std::memory_order_release);
      }
      nr_address_spaces_.fetch_add(1);
      Log(Component::kEmu).debug("address space window={}", window);
      return as;
    }
  }
  return ErrnoError(ENOMEM, absl::StrCat("no free run of ", want, " GiB in the arena"));
}

int64_t Machine::CountHostVmas() {
  int fd = static_cast<int>(sys::RawSyscall6(SYS_openat, AT_FDCWD,
                                             reinterpret_cast<long>("/proc/self/maps"),
                                             O_RDONLY | O_CLOEXEC, 0, 0, 0));
  if (fd < 0) return -1;
  int64_t lines = 0;
  char buf[4096];
  for (;;) {
    long n = sys::RawSyscall6(SYS_read, fd, reinterpret_cast<long>(buf), sizeof(buf), 0, 0, 0);
    if (n <= 0) break;
    for (long i = 0; i < n; i++) lines += buf[i] == '\n';
  }
  sys::RawSyscall6(SYS_close, fd, 0, 0, 0, 0, 0);
  return lines;
}

absl::StatusOr<FramePool*> Machine::EnsureFramePool() {
  absl::MutexLock l(&lock_);
  if (frame_pool_owner_ == nullptr) {
    auto pool = FramePool::Create(arena_, mem_map_->max_pages());
    if (!pool.ok()) return pool.status();
    frame_pool_owner_ = std::move(*pool);
    frame_pool_.store(frame_pool_owner_.get(), std::memory_order_release);
  }
  return frame_pool_owner_.get();
}

absl::StatusOr<ShmemObject*> Machine::CreateShmem(uint64_t nr_pages, uint64_t capacity) {
  auto obj = std::make_unique<ShmemObject>(this, nr_pages, capacity);
  if (!obj->ok()) return ErrnoError(ENOMEM, "shared memory: no room for its page index");
  absl::MutexLock l(&lock_);
  shmem_.push_back(std::move(obj));
  return shmem_.back().get();
}

absl::StatusOr<ShmemObject*> Machine::OpenFile(const std::string& path, bool writable) {
  EMU_RETURN_IF_ERROR(EnsureFramePool().status());
  int fd = open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("open ", path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoError(err, absl::StrCat("stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return ErrnoError(ENODEV, absl::StrCat(path, ": not a regular file (only those are mapped)"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  // The index has room for the file to grow by kFileGrowth (ftruncate,
  // another process's writes): reserved, not touched.
  const uint64_t pages = (size + kPageSize - 1) >> kPageShift;
  auto obj = CreateShmem(pages, pages + kFileGrowthPages);
  if (!obj.ok()) {
    close(fd);
    return obj.status();
  }
  std::unique_ptr<SwapIo> io;
  if (file_io_factory_) {
    auto made = file_io_factory_(fd);
    if (made.ok()) {
      io = std::move(*made);
    } else {
      Log(Component::kEmu).warn("{}: io_uring unavailable ({}); pread/pwrite instead", path,
                                made.status().ToString());
    }
  }
  (*obj)->SetBacking(fd, size, writable, std::move(io));
  EMU_RETURN_IF_ERROR(flusher_->Start());
  return *obj;
}

void Machine::ForEachFile(absl::FunctionRef<void(ShmemObject*)> fn) {
  absl::MutexLock l(&lock_);
  for (auto& obj : shmem_) {
    if (obj->backed()) fn(obj.get());
  }
}

void Machine::ReleaseWindow(AddressSpace* as) {
  WriteLockHolder walks(&object_walk_lock_);
  absl::MutexLock l(&lock_);
  for (auto& obj : shmem_) obj->RemoveSpace(as);
  AddrRange w = as->window();
  for (VirtAddr a = w.start; a < w.end; a += kGranule) {
    granule_owner_[(a - arena_.start) / kGranule].store(nullptr, std::memory_order_release);
  }
  nr_address_spaces_.fetch_sub(1);
}

absl::Status Machine::CheckInvariants() {
  absl::MutexLock flusher(flusher_->pass_mu());  // counts at rest
  std::vector<AddressSpace*> spaces;
  {
    absl::MutexLock l(&lock_);
    for (auto& owner : granule_owner_) {
      AddressSpace* as = owner.load(std::memory_order_acquire);
      if (as != nullptr && (spaces.empty() || spaces.back() != as)) spaces.push_back(as);
    }
  }
  // Reclaim stays off for the whole check, so that the swap PTEs counted
  // and the swap_map compared with them are one snapshot.
  if (reclaim_) reclaim_->BlockReclaim();
  absl::Status status = absl::OkStatus();
  absl::flat_hash_map<uint64_t, int> refs, cached, pool_maps;
  for (AddressSpace* as : spaces) {
    status = as->CheckInvariants(/*reclaim_blocked=*/true);
    if (!status.ok()) break;
    as->CollectSwapRefs(&refs, &cached);
    as->CollectPoolMaps(&pool_maps);
  }
  // A frame in the pool is mapped by as many PTEs, over all address spaces,
  // as its mapcount says (Page invariant 6), and each holds a reference.
  for (const auto& [pfn, n] : pool_maps) {
    if (!status.ok()) break;
    const Page& page = mem_map_->page(Pfn{pfn});
    if (page.Test(kPgSwapCache)) cached[page.private_]++;
    if (page.Test(kPgShmem) &&
        (static_cast<ShmemObject*>(page.anchor)->Find(page.index) != Pfn{pfn} ||
         page.refcount.load() < n + 1)) {
      status = ErrnoError(EIO, absl::StrCat("shared page ", pfn, " is not in its object's cache "
                                            "at its index, or lacks the cache's reference"));
      break;
    }
    if (page.mapcount.load() != n || page.refcount.load() < n) {
      status = ErrnoError(EIO, absl::StrCat("pool frame ", pfn, ": ", n, " PTEs map it, mapcount ",
                                            page.mapcount.load(), ", refcount ",
                                            page.refcount.load()));
    }
  }
  if (status.ok()) {
    // Every object's cache, and the machine's dirty count as their sum.
    absl::MutexLock l(&lock_);
    uint64_t dirty = 0;
    for (const auto& obj : shmem_) {
      if (!status.ok()) break;
      status = obj->CheckInvariants();
      dirty += obj->nr_dirty();
    }
    if (status.ok() && dirty != flusher_->nr_dirty()) {
      status = ErrnoError(EIO, absl::StrCat("machine nr_dirty ", flusher_->nr_dirty(),
                                            " but its files hold ", dirty));
    }
  }
  if (status.ok() && reclaim_) status = reclaim_->CheckSwapRefs(refs, cached);
  if (status.ok() && !reclaim_ && !refs.empty()) {
    status = ErrnoError(EIO, "swap PTEs on a machine without swap");
  }
  if (reclaim_) reclaim_->UnblockReclaim();
  return status;
}

std::string Machine::VmStatText() const {
  std::string out;
  auto snap = vmstat_.Snapshot();
  for (int i = 0; i < kNrVmEvents; i++) {
    absl::StrAppend(&out, std::string(VmEventName(static_cast<VmEvent>(i))), " ", snap[i], "\n");
  }
  absl::StrAppend(&out, "nr_anon_pages ", mem_map_->nr_used(), "\n");
  absl::StrAppend(&out, "peak_anon_pages ", mem_map_->peak_used(), "\n");
  absl::StrAppend(&out, "nr_address_spaces ", nr_address_spaces_.load(), "\n");
  FramePool* pool = frame_pool();
  absl::StrAppend(&out, "nr_pool_frames ", pool ? pool->nr_frames() : 0, "\n");
  absl::StrAppend(&out, "nr_host_vmas ", CountHostVmas(), "\n");
  {
    // Linux: nr_dirty (file pages dirty, not yet written back).
    absl::MutexLock l(&lock_);
    uint64_t dirty = 0, cached = 0;
    for (const auto& obj : shmem_) {
      dirty += obj->nr_dirty();
      cached += obj->nr_cached();
    }
    absl::StrAppend(&out, "nr_dirty ", dirty, "\n");
    absl::StrAppend(&out, "nr_writeback ", flusher_->nr_writeback(), "\n");
    absl::StrAppend(&out, "nr_object_pages ", cached, "\n");
    absl::StrAppend(&out, "dirty_background_threshold ", flusher_->background_thresh(), "\n");
    absl::StrAppend(&out, "dirty_threshold ", flusher_->dirty_thresh(), "\n");
  }
  if (reclaim_) absl::StrAppend(&out, reclaim_->StatText());
  return out;
}

std::vector<AddrRange> Machine::ForeignRanges() const {
  std::vector<AddrRange> out;
  ForEachSpaceUnlocked([&](AddressSpace* as) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    for (const auto& [start, vma] : as->vmas()) {
      if (vma.foreign()) out.push_back(vma.range());
    }
  });
  std::sort(out.begin(), out.end(),
            [](const AddrRange& a, const AddrRange& b) { return a.start < b.start; });
  return out;
}

// ---- fork() of the process ----
//
// The userfaultfd modes ask for UFFD_FEATURE_EVENT_FORK: the child inherits
// the registration (missing and write-protect) on a descriptor of its own,
// which the kernel hands to the parent's reader at fork. So from its first
// instruction the child cannot touch emulated memory without the emulator:
// a swapped-out page does not read as zeros, a write-protected one does not
// take a silent write (glibc's fork and our own set-up touch the heap long
// before anything could register again). The parent passes the descriptor
// over a socket pair; the child's first fault, or the preload's atfork
// handler, whichever comes first, takes it (ChildEarlyIfPending).
//   SIGBUS mode: the child's faults raise SIGBUS in the child as ever.
//   Handler-thread mode: the child's faults wait in the kernel for a reader;
//   until the child runs handler threads of its own, the parent reads them
//   and sends the faulting thread SIGBUS (kChildFaultRead/Write in
//   si_errno), resolved in its handler as in SIGBUS mode.
//   SIGSEGV mode: protections survive fork; nothing to pass.

namespace {

// One byte carrying one descriptor (SCM_RIGHTS) over a socket: sends *fd,
// or receives into *fd (left as it is when none came). async-signal-safe.
void FdMessage(int sock, bool send, int* fd) {
  char one = 1;
  iovec iov{&one, 1};
  alignas(cmsghdr) char buf[CMSG_SPACE(sizeof(int))] = {};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = buf;
  mh.msg_controllen = sizeof(buf);
  if (send) {
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), fd, sizeof(int));
    while (sendmsg(sock, &mh, MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
    return;
  }
  ssize_t n;
  while ((n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
  }
  cmsghdr* c = n == 1 ? CMSG_FIRSTHDR(&mh) : nullptr;
  if (c != nullptr && c->cmsg_type == SCM_RIGHTS) std::memcpy(fd, CMSG_DATA(c), sizeof(int));
}

struct ForkWaiter {
  Machine* m;
  int ctl, child_fd, token;
  bool own_thread;
};

// The parent's side of a fork once the child has its descriptor: serves the
// child's faults where the mode needs it, then passes the child's verdict to
// reclaim.
void* WaitForChild(void* arg) {
  const ForkWaiter w = *static_cast<ForkWaiter*>(arg);
  PoolFree(arg, sizeof(ForkWaiter));
  if (w.own_thread) {
    sys::t_emulator_thread = true;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, nullptr);  // the program's signals are not for it
  }
  if (w.child_fd >= 0) {
    w.m->host().ForkServeChild(w.child_fd, w.ctl);
    close(w.child_fd);
  }
  char status = 0;
  ssize_t n;
  while ((n = read(w.ctl, &status, 1)) < 0 && errno == EINTR) {
  }
  // Nothing of ours reads the child's descriptor any more: the child may
  // fork now (ChildDone waits for this), and its fork event is its own.
  if (n == 1) {
    const char ack = 1;
    while (write(w.ctl, &ack, 1) < 0 && errno == EINTR) {
    }
  }
  close(w.ctl);
  // 1: the child stays; 2: it took its share and gave it up itself on
  // leaving the emulator; 0 (or EOF): fork failed, the child died first, or
  // it left without a share.
  if (w.m->reclaim() != nullptr && w.token >= 0) {
    w.m->reclaim()->ForkParent(w.token, n == 1 && (status == 1 || status == 2));
  }
  return nullptr;
}

}  // namespace

bool Machine::ForkPrepare() {
  // One fork at a time from here to the end of ForkParent: another thread's
  // fork would take over the socket pair and the fork event.
  fork_lock_.Lock();
  fork_owner_ = static_cast<pid_t>(syscall(SYS_getpid));
  // The child's copy starts its set-up afresh. This process may be a
  // forked child itself, whose own set-up set the flag: a grandchild that
  // inherited it skipped its set-up (the lock above stayed held in it, and
  // its next fork spun forever).
  child_early_started_ = false;
  // Without the socket pair the child gets no descriptor and leaves the
  // emulator (ChildLate fails); the fork itself goes ahead.
  const bool ok = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fork_ctl_) == 0;
  if (!ok) fork_ctl_[0] = fork_ctl_[1] = -1;
  host_->ForkExpect();
  fork_pending_.store(true, std::memory_order_release);
  return ok;
}

void Machine::ForkParent(int token) {
  fork_pending_.store(false, std::memory_order_release);
  if (fork_ctl_[0] < 0) {  // no protocol: assume the child is set up
    fork_lock_.Unlock();
    if (reclaim_ != nullptr && token >= 0) reclaim_->ForkParent(token, true);
    return;
  }
  close(fork_ctl_[1]);  // EOF from here on means: no child, or it is gone
  const int ctl = fork_ctl_[0];
  fork_ctl_[0] = fork_ctl_[1] = -1;
  const int child_fd = host_->ForkTakeChildFd(ctl);
  if (child_fd >= 0) {
    int fd = child_fd;
    FdMessage(ctl, /*send=*/true, &fd);
  }
  fork_lock_.Unlock();
  // The parent goes on at once: the child's copy of everything is taken,
  // and every swap slot the parent holds keeps the child's bit until the
  // child's recount. A thread of ours waits for the child's verdict (and,
  // in handler-thread mode, serves its faults until then).
  // The waiter's state lives in the emulator's pool and the thread is a
  // bare pthread: nothing of it is in the program's heap, which a thread
  // ending while the process exits must not touch (its faults would go
  // unrecorded in a trace already flushed).
  auto* w = static_cast<ForkWaiter*>(PoolAlloc(sizeof(ForkWaiter)));
  *w = ForkWaiter{this, ctl, child_fd, token, true};
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  // (Not with signals blocked around the call: pthread_create allocates
  // from the program's heap, and that may fault.)
  pthread_t t;
  const bool started = pthread_create(&t, &attr, &WaitForChild, w) == 0;
  pthread_attr_destroy(&attr);
  if (!started) {  // no thread: the forking thread waits
    w->own_thread = false;
    WaitForChild(w);
  }
}

void Machine::ChildEarlyIfPending() {
  if (!fork_pending_.load(std::memory_order_acquire)) return;
  if (static_cast<pid_t>(syscall(SYS_getpid)) == fork_owner_) return;  // the parent's faults
  // Only this thread exists in the child; a fault of its own can arrive
  // while this runs (a signal handler's), so the flag goes first.
  if (child_early_started_) return;
  child_early_started_ = true;
  fork_lock_.ResetAfterFork();
  // The child's records would go into the parent's buffers and file; the
  // preload gives it a file of its own later (trace::RestartAfterFork).
  trace::g_enabled.store(false, std::memory_order_relaxed);
  int fd = -1;
  if (fork_ctl_[0] >= 0) {
    close(fork_ctl_[0]);
    fork_ctl_[0] = -1;
    if (host_->ForkKeepsRegistration() && host_->mode() != FaultMode::kSigsegv) {
      FdMessage(fork_ctl_[1], /*send=*/false, &fd);
    }
  }
  child_host_ok_ = host_->ChildAdopt(fd);
  mem_map_->ResetLocksAfterFork();
  PoolResetAfterFork();
  HostMmu& host = *host_;
  ForEachSpaceUnlocked([&](AddressSpace* as) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    as->mmap_lock()->ResetAfterFork();
    as->ResetForkAfterFork();
    PageTable& pt = as->page_table();
    pt.ResetLocksAfterFork();
    for (const auto& [start, vma] : as->vmas()) {
      if (vma.foreign()) continue;  // native: the kernel copied it
      Prot prot = VmFlagsToProt(vma.vm_flags);
      pt.ForEachEntry(vma.range(), [&](VirtAddr a, std::atomic<uint64_t>* e) {
        Pte pte(e->load(std::memory_order_relaxed));
        if (!pte.locked()) return;
        if (!pte.present() && pte.swap()) {
          // A swap-in in flight in a thread the child does not have: the
          // swap PTE stays (the recount counts it). Its page may already be
          // in the host (installed, not yet published): it goes, so that
          // host and PTE agree.
          e->store(Pte::SwapEntry(pte.swap_entry()).raw(), std::memory_order_relaxed);
          host.Zap({a, a + kPageSize});
        } else if (pte.present()) {
          // A write fault in flight in a thread the child does not have,
          // on a page that stays (reuse) or on a zero page (COW): the host
          // may already let writes through, so the page keeps whatever it
          // holds: the PTE comes back write-protected (the next write faults
          // again) and, for a real page, dirty (reclaim must write it).
          pte = Pte(pte.raw() & ~Pte::kLocked);
          if (!pte.special()) pte = pte.WithWrite(false).WithDirty();
          e->store(pte.raw(), std::memory_order_relaxed);
          host.WriteProtect({a, a + kPageSize}, prot);
        } else {
          // A new page being installed by such a thread: the PTE goes. The
          // host page is left as it is (a write that went through stays
          // visible; the page is then outside the emulator's accounting).
          // Without a limit the frame stays counted (a leak of one page per
          // such fault); with one, PageReclaim::ChildEarly frees it.
          e->store(0, std::memory_order_relaxed);
        }
      });
    }
  });
  child_attached_ = reclaim_ != nullptr && reclaim_->ChildEarly();
  vmstat_.Reset();
  fork_pending_.store(false, std::memory_order_release);
}

absl::Status Machine::ChildLate() {
  ChildEarlyIfPending();
  if (!child_host_ok_) return ErrnoError(EIO, "fork: the child's fault registration is not usable");
  if (host_->ForkKeepsRegistration()) {
    EMU_RETURN_IF_ERROR(host_->ChildStart());
  } else if (host_->mode() != FaultMode::kSigsegv) {
    // No fork events: the parent's registration did not reach the child.
    // Register afresh (the old object is left as it is: its destructor
    // would join threads the child does not have), and put userfaultfd
    // write protection back where the PTEs say so. Until then the child ran
    // on plain memory.
    (void)host_.release();
    auto host = host_factory_(this, arena_);
    if (!host.ok()) return host.status();
    host_ = std::move(*host);
    HostMmu& h = *host_;
    ForEachSpaceUnlocked([&](AddressSpace* as) {
      ReadLockHolder l(as->mmap_lock());
      for (const auto& [start, vma] : as->vmas()) {
        if (vma.foreign()) continue;
        Prot prot = VmFlagsToProt(vma.vm_flags);
        VirtAddr wp_start = 0, wp_end = 0;
        auto flush = [&] {
          if (wp_end > wp_start) h.WriteProtect({wp_start, wp_end}, prot);
          wp_start = wp_end = 0;
        };
        as->page_table().ForEachEntry(vma.range(), [&](VirtAddr a, std::atomic<uint64_t>* e) {
          Pte pte(e->load(std::memory_order_relaxed));
          if (pte.present() && (pte.special() || !pte.write())) {
            if (a != wp_end) flush();
            if (wp_end == 0) wp_start = a;
            wp_end = a + kPageSize;
          }
        });
        flush();
      }
    });
  }
  if (reclaim_ != nullptr) EMU_RETURN_IF_ERROR(reclaim_->ChildLate());
  return absl::OkStatus();
}

void Machine::ChildDone(char status) {
  if (fork_ctl_[1] < 0) return;
  while (write(fork_ctl_[1], &status, 1) < 0 && errno == EINTR) {
  }
  // Until the parent says it stopped reading our descriptor (handler-thread
  // mode serves our faults until now), a fork of ours would raise its event
  // where the parent might read it, and lose it: the fork's child would wait
  // for its descriptor forever. EOF (the parent is gone) is as good.
  char ack;
  while (read(fork_ctl_[1], &ack, 1) < 0 && errno == EINTR) {
  }
  close(fork_ctl_[1]);
  fork_ctl_[1] = -1;
}

void Machine::ChildLeave() {
  if (reclaim_ != nullptr && child_attached_) reclaim_->ChildLeaveShare();
  host_->ChildDetach();
}

}  // namespace emu
