#include "swap/swap_device.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "emu/log.h"
#include "emu/status.h"
#include "emu/types.h"

namespace emu {
namespace {

constexpr uint64_t kMinSwapBytes = uint64_t{1} << 20;

std::string HumanSize(uint64_t bytes) {
  if (bytes >= (uint64_t{1} << 30)) return absl::StrFormat("%.1f GiB", bytes / double(1 << 30));
  return absl::StrFormat("%.1f MiB", bytes / double(1 << 20));
}

// Closes the fd on every error return of Open.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;

 private:
  int fd_;
};

// Opens (creating) the swap file with `extra` open flags (O_DIRECT or 0).
// Returns the fd or -errno.
int OpenOnce(const SwapOptions& o, const std::string& dir, int extra) {
  int fd;
  if (!o.path.empty()) {
    fd = open(o.path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | extra, 0600);
    return fd >= 0 ? fd : -errno;
  }
  fd = open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC | extra, 0600);
  if (fd >= 0) return fd;
  if (errno != EOPNOTSUPP && errno != EISDIR) return -errno;
  // A filesystem without O_TMPFILE: a named file, unlinked at once.
  std::string name = dir + "/emu-swap-XXXXXX";
  fd = mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) return -errno;
  unlink(name.c_str());
  if (extra != 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | extra) != 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  return fd;
}

// Whether O_DIRECT I/O works on `fd` (opened with it): one aligned 4 KiB
// write. Returns 1 (works), 0 (EINVAL: the filesystem refuses) or -errno.
int ProbeDirect(int fd) {
  void* buf = std::aligned_alloc(kPageSize, kPageSize);
  if (buf == nullptr) return -ENOMEM;
  std::memset(buf, 0, kPageSize);
  ssize_t n = pwrite(fd, buf, kPageSize, 0);
  int err = n < 0 ? errno : 0;
  std::free(buf);
  if (n == static_cast<ssize_t>(kPageSize)) return 1;
  if (err == EINVAL) return 0;
  return -(err != 0 ? err : EIO);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SwapDevice>> SwapDevice::Open(const SwapOptions& o) {
  const uint64_t size = o.size_bytes & ~uint64_t{kPageSize - 1};
  if (size < kMinSwapBytes) {
    return ErrnoError(
        EINVAL, absl::StrCat("swap: size ", o.size_bytes, " bytes is below the minimum of 1 MiB"));
  }
  std::string dir = o.dir;
  if (dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    dir = (tmp != nullptr && tmp[0] != '\0') ? tmp : "/var/tmp";
  }
  const std::string what = o.path.empty()
                               ? absl::StrCat("an unlinked swap file in directory '", dir, "'")
                               : absl::StrCat("swap file '", o.path, "'");

  // Open, with O_DIRECT first if asked for.
  bool direct = o.direct_io;
  int fd = OpenOnce(o, dir, direct ? O_DIRECT : 0);
  if (fd == -EINVAL && direct) {
    direct = false;
    fd = OpenOnce(o, dir, 0);
  }
  if (fd < 0) return ErrnoError(-fd, absl::StrCat("swap: cannot create ", what));
  FdGuard guard(fd);
  if (!o.path.empty() && fchmod(fd, 0600) != 0) {
    return ErrnoError(errno, absl::StrCat("swap: fchmod 0600 ", what));
  }

  // Size it: real blocks where the filesystem can, so a full disk shows now.
  if (fallocate(fd, 0, 0, static_cast<off_t>(size)) != 0) {
    int err = errno;
    if (err != EOPNOTSUPP && err != ENOSYS) {
      return ErrnoError(err, absl::StrCat("swap: fallocate ", HumanSize(size), " for ", what));
    }
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
      return ErrnoError(errno, absl::StrCat("swap: ftruncate ", HumanSize(size), " for ", what));
    }
  }

  // The open may succeed and the I/O still be refused (EINVAL).
  bool refused = o.direct_io && !direct;
  if (direct) {
    int r = ProbeDirect(fd);
    if (r < 0) return ErrnoError(-r, absl::StrCat("swap: test write to ", what));
    if (r == 0) {
      if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_DIRECT) != 0) {
        return ErrnoError(errno, absl::StrCat("swap: clear O_DIRECT on ", what));
      }
      direct = false;
      refused = true;
    }
  }

  int nr_rings = o.nr_rings;
  if (nr_rings <= 0) nr_rings = std::max(4, 2 * static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)));
  EMU_ASSIGN_OR_RETURN(std::unique_ptr<SwapIo> io, CreateUringSwapIo(fd, o.queue_depth, nr_rings,
                                                                     o.read_poll_us));

  std::string desc = absl::StrCat(
      o.path.empty() ? absl::StrCat("unlinked tmpfile in ", dir) : o.path, ", ", HumanSize(size),
      ", ", direct ? "O_DIRECT" : (refused ? "buffered (O_DIRECT refused)" : "buffered"));
  Log(Component::kSwap)
      .info("swapon {} slots={} queue_depth={} rings={}", desc, size / kPageSize, o.queue_depth,
            nr_rings);
  std::unique_ptr<SwapDevice> dev(new SwapDevice(guard.release(), size / kPageSize, direct,
                                                 std::move(desc), std::move(io), o.queue_depth,
                                                 nr_rings, o.read_poll_us));
  EMU_RETURN_IF_ERROR(dev->MapShared());
  return dev;
}

SwapDevice::SwapDevice(int fd, uint64_t nr_slots, bool direct_io, std::string description,
                       std::unique_ptr<SwapIo> io, int queue_depth, int nr_rings,
                       int read_poll_us)
    : fd_(fd),
      nr_slots_(nr_slots),
      nr_clusters_(static_cast<uint32_t>((nr_slots + kSwapClusterPages - 1) / kSwapClusterPages)),
      direct_io_(direct_io),
      description_(std::move(description)),
      queue_depth_(queue_depth),
      nr_rings_(nr_rings),
      read_poll_us_(read_poll_us),
      io_(std::move(io)),
      sync_io_(fd) {
  cur_io_.store(io_.get(), std::memory_order_release);
  SpinLockHolder l(&swap_lock_);
  swap_map_.assign(nr_slots_, 0);
  clusters_.resize(nr_clusters_);
  for (uint32_t c = 0; c < nr_clusters_; c++) {
    clusters_[c].nr_free = static_cast<uint32_t>(ClusterEnd(c) - ClusterStart(c));
    ListAppendLocked(c);  // ascending: the first runs are adjacent
  }
  nr_free_ = nr_slots_;
}

SwapDevice::~SwapDevice() {
  io_.reset();  // its rings refer to fd_
  close(fd_);
  if (shared_ != nullptr) {
    // Our slots are all free (the address spaces went first); the entry is
    // free for a later fork of another sharer.
    shared_->sharers[me_].pid.store(0, std::memory_order_relaxed);
    shared_->sharers[me_].state.store(kFree, std::memory_order_release);
    munmap(shared_, shared_bytes_);
  }
  if (shared_fd_ >= 0) close(shared_fd_);
}

absl::Status SwapDevice::MapShared() {
  shared_fd_ = memfd_create("emu-swap-holders", MFD_CLOEXEC);
  if (shared_fd_ < 0) return ErrnoError(errno, "swap: memfd_create for the holder masks");
  shared_bytes_ = PageAlignUp(sizeof(Shared) + nr_slots_ * sizeof(std::atomic<uint32_t>));
  struct stat st;
  if (ftruncate(shared_fd_, static_cast<off_t>(shared_bytes_)) != 0 || fstat(shared_fd_, &st) != 0) {
    return ErrnoError(errno, "swap: size the holder masks");
  }
  shared_ino_ = st.st_ino;
  void* p = mmap(nullptr, shared_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd_, 0);
  if (p == MAP_FAILED) return ErrnoError(errno, "swap: map the holder masks");
  // A zero-filled region is a free table with no holders.
  shared_ = static_cast<Shared*>(p);
  holders_ = reinterpret_cast<std::atomic<uint32_t>*>(static_cast<char*>(p) + sizeof(Shared));
  me_ = 0;
  shared_->sharers[0].pid.store(getpid(), std::memory_order_relaxed);
  shared_->sharers[0].state.store(kLive, std::memory_order_release);
  return absl::OkStatus();
}

bool SwapDevice::Claim(uint64_t slot) const {
  uint32_t none = 0;
  return holders_[slot].compare_exchange_strong(none, my_bit(), std::memory_order_acq_rel);
}

bool SwapDevice::Held(uint64_t slot) const {
  EMU_BUG_ON(slot >= nr_slots_);
  return holders_[slot].load(std::memory_order_acquire) & my_bit();
}

bool SwapDevice::HeldByAnyone(uint64_t slot) const {
  EMU_BUG_ON(slot >= nr_slots_);
  return holders_[slot].load(std::memory_order_acquire) != 0;
}

int SwapDevice::nr_sharers() const {
  int n = 0;
  for (const Sharer& s : shared_->sharers) n += s.state.load(std::memory_order_acquire) != kFree;
  return n;
}

int SwapDevice::ForkReserve() {
  int idx = -1;
  for (int pass = 0; pass < 2 && idx < 0; pass++) {
    if (pass == 1 && ReapGone() == 0) break;
    for (int i = 0; i < kMaxSharers; i++) {
      int32_t f = kFree;
      if (shared_->sharers[i].state.compare_exchange_strong(f, kReserved,
                                                            std::memory_order_acq_rel)) {
        idx = i;
        break;
      }
    }
  }
  if (idx < 0) return -1;
  // Until the child attaches, the entry lives as long as this process does.
  shared_->sharers[idx].pid.store(getpid(), std::memory_order_release);
  ever_shared_.store(true, std::memory_order_relaxed);
  const uint32_t bit = uint32_t{1} << idx;
  SpinLockHolder l(&swap_lock_);
  for (uint64_t s = 0; s < nr_slots_; s++) {
    const uint16_t v = swap_map_[s];
    if (v != 0 && v != kSwapMapBad) holders_[s].fetch_or(bit, std::memory_order_acq_rel);
  }
  return idx;
}

void SwapDevice::ForkDone(int index, bool attached) {
  EMU_BUG_ON(index < 0 || index >= kMaxSharers);
  if (attached) return;
  Sharer& s = shared_->sharers[index];
  int32_t r = kReserved;
  if (!s.state.compare_exchange_strong(r, kReaping, std::memory_order_acq_rel)) {
    return;  // the child attached after all, and died: ReapGone's
  }
  ClearBitEverywhere(index);
  s.pid.store(0, std::memory_order_relaxed);
  s.state.store(kFree, std::memory_order_release);
}

absl::Status SwapDevice::ForkAttach(int index) {
  EMU_BUG_ON(index < 0 || index >= kMaxSharers);
  swap_lock_.ResetAfterFork();
  Sharer& sh = shared_->sharers[index];
  sh.pid.store(getpid(), std::memory_order_release);
  int32_t r = kReserved;
  if (!sh.state.compare_exchange_strong(r, kLive, std::memory_order_acq_rel)) {
    return absl::FailedPreconditionError("swap: the fork's sharer entry was taken back");
  }
  me_ = index;
  ever_shared_.store(true, std::memory_order_relaxed);
  // The parent's rings are shared with the parent (the ring memory is a
  // shared mapping): the child must not submit on them. The old object is
  // left alone (its destructor would tear down the parent's rings);
  // pread/pwrite serve until ChildRings.
  (void)io_.release();
  cur_io_.store(&sync_io_, std::memory_order_release);
  return absl::OkStatus();
}

void SwapDevice::ForkDetach() {
  swap_lock_.ResetAfterFork();
  me_ = -1;
  (void)io_.release();
  cur_io_.store(&sync_io_, std::memory_order_release);
}

absl::Status SwapDevice::ChildRings() {
  if (io_ != nullptr) return absl::OkStatus();
  auto io = CreateUringSwapIo(fd_, queue_depth_, nr_rings_, read_poll_us_);
  if (!io.ok()) return io.status();
  io_ = std::move(*io);
  cur_io_.store(io_.get(), std::memory_order_release);
  return absl::OkStatus();
}

void SwapDevice::RecountBegin() {
  SpinLockHolder l(&swap_lock_);
  for (uint64_t s = 0; s < nr_slots_; s++) {
    if (swap_map_[s] != kSwapMapBad) swap_map_[s] = 0;
  }
  recount_unheld_ = 0;
}

void SwapDevice::RecountRef(uint64_t slot) {
  EMU_BUG_ON(slot >= nr_slots_);
  SpinLockHolder l(&swap_lock_);
  const uint16_t v = swap_map_[slot];
  if (v == kSwapMapBad) return;
  EMU_BUG_ON((v & ~kSwapHasCache) + 1 >= kSwapMapMax);
  swap_map_[slot] = static_cast<uint16_t>(v + 1);
}

void SwapDevice::RecountCache(uint64_t slot) {
  EMU_BUG_ON(slot >= nr_slots_);
  SpinLockHolder l(&swap_lock_);
  const uint16_t v = swap_map_[slot];
  if (v == kSwapMapBad) return;
  swap_map_[slot] = static_cast<uint16_t>(v | kSwapHasCache);
}

void SwapDevice::RecountEnd() {
  const uint32_t bit = my_bit();
  uint64_t unheld = 0;
  {
    SpinLockHolder l(&swap_lock_);
    free_head_ = free_tail_ = kNoCluster;
    cur_cluster_ = kNoCluster;
    cur_next_ = 0;
    for (Cluster& c : clusters_) c = Cluster{};
    nr_free_ = nr_used_ = 0;
    for (uint64_t s = 0; s < nr_slots_; s++) {
      const uint16_t v = swap_map_[s];
      if (v == kSwapMapBad) continue;
      const uint32_t held = holders_[s].load(std::memory_order_acquire) & bit;
      if (v == 0) {
        clusters_[ClusterOf(s)].nr_free++;
        nr_free_++;
        if (held) holders_[s].fetch_and(~bit, std::memory_order_acq_rel);
      } else {
        nr_used_++;
        // ForkReserve set the bit on every slot the parent used; a reference
        // to any other slot would mean one was allocated during the fork.
        if (bit != 0 && !held) {
          unheld++;
          holders_[s].fetch_or(bit, std::memory_order_acq_rel);
        }
      }
    }
    for (uint32_t c = 0; c < nr_clusters_; c++) {
      if (clusters_[c].nr_free == ClusterEnd(c) - ClusterStart(c)) ListAppendLocked(c);
    }
  }
  recount_unheld_ = unheld;
}

void SwapDevice::LeaveShare() {
  if (me_ < 0 || (me_ == 0 && !ever_shared_.load(std::memory_order_relaxed))) return;
  Sharer& s = shared_->sharers[me_];
  int32_t live = kLive;
  if (!s.state.compare_exchange_strong(live, kReaping, std::memory_order_acq_rel)) return;
  ClearBitEverywhere(me_);
  s.pid.store(0, std::memory_order_relaxed);
  s.state.store(kFree, std::memory_order_release);
}

bool SwapDevice::Gone(int i) const {
  const Sharer& s = shared_->sharers[i];
  const int32_t st = s.state.load(std::memory_order_acquire);
  const int32_t pid = s.pid.load(std::memory_order_acquire);
  if ((st != kLive && st != kReserved) || pid <= 0) return false;
  // Alive: /proc/PID/fd/N is our memfd. Gone: no such process, a zombie
  // (no fds), or an exec'd image (the memfd is close-on-exec).
  char path[64];
  size_t len = 0;
  auto put = [&](const char* str) {
    while (*str != '\0') path[len++] = *str++;
  };
  auto put_num = [&](uint32_t v) {
    char d[12];
    int k = 0;
    do {
      d[k++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (k > 0) path[len++] = d[--k];
  };
  put("/proc/");
  put_num(static_cast<uint32_t>(pid));
  put("/fd/");
  put_num(static_cast<uint32_t>(shared_fd_));
  path[len] = '\0';
  struct stat st_buf;
  if (stat(path, &st_buf) == 0) return st_buf.st_ino != shared_ino_;
  return errno == ENOENT || errno == ESRCH;  // EACCES and the like: assume alive
}

void SwapDevice::ClearBitEverywhere(int i) {
  const uint32_t bit = uint32_t{1} << i;
  for (uint64_t s = 0; s < nr_slots_; s++) {
    if (holders_[s].load(std::memory_order_relaxed) & bit) {
      holders_[s].fetch_and(~bit, std::memory_order_acq_rel);
    }
  }
}

int SwapDevice::ReapGone() {
  int reaped = 0;
  for (int i = 0; i < kMaxSharers; i++) {
    if (i == me_ || !Gone(i)) continue;
    Sharer& s = shared_->sharers[i];
    int32_t st = s.state.load(std::memory_order_acquire);
    if ((st != kLive && st != kReserved) ||
        !s.state.compare_exchange_strong(st, kReaping, std::memory_order_acq_rel)) {
      continue;  // another sharer is reaping it
    }
    ClearBitEverywhere(i);
    s.pid.store(0, std::memory_order_relaxed);
    s.state.store(kFree, std::memory_order_release);
    reaped++;
  }
  if (reaped > 0) {
    Log(Component::kSwap).debug("swap: reaped {} sharer(s) that are gone", reaped);
  }
  return reaped;
}

std::unique_ptr<SwapIo> SwapDevice::ReplaceIo(std::unique_ptr<SwapIo> io) {
  EMU_BUG_ON(io == nullptr);
  std::unique_ptr<SwapIo> old = std::exchange(io_, std::move(io));
  cur_io_.store(io_.get(), std::memory_order_release);
  return old;
}

std::unique_ptr<SwapIo> SwapDevice::TakeIo() {
  // io() goes on naming it until ReplaceIo: the caller keeps it alive (a
  // wrapper around it), so a thread doing I/O meanwhile never finds none.
  return std::move(io_);
}

uint64_t SwapDevice::ClusterEnd(uint32_t c) const {
  return std::min<uint64_t>(ClusterStart(c) + kSwapClusterPages, nr_slots_);
}

void SwapDevice::ListAppendLocked(uint32_t c) {
  Cluster& ci = clusters_[c];
  EMU_DCHECK(!ci.on_free_list);
  ci.on_free_list = true;
  ci.prev = free_tail_;
  ci.next = kNoCluster;
  if (free_tail_ == kNoCluster) {
    free_head_ = c;
  } else {
    clusters_[free_tail_].next = c;
  }
  free_tail_ = c;
}

void SwapDevice::ListRemoveLocked(uint32_t c) {
  Cluster& ci = clusters_[c];
  EMU_DCHECK(ci.on_free_list);
  if (ci.prev == kNoCluster) {
    free_head_ = ci.next;
  } else {
    clusters_[ci.prev].next = ci.next;
  }
  if (ci.next == kNoCluster) {
    free_tail_ = ci.prev;
  } else {
    clusters_[ci.next].prev = ci.prev;
  }
  ci.on_free_list = false;
  ci.prev = ci.next = kNoCluster;
}

void SwapDevice::TakeSlotLocked(uint64_t slot) {
  EMU_DCHECK(swap_map_[slot] == 0);
  swap_map_[slot] = kSwapHasCache;
  Cluster& ci = clusters_[ClusterOf(slot)];
  if (ci.on_free_list) ListRemoveLocked(ClusterOf(slot));
  ci.nr_free--;
  nr_free_--;
  nr_used_++;
}

void SwapDevice::ReleaseSlotLocked(uint64_t slot) {
  swap_map_[slot] = 0;
  holders_[slot].fetch_and(~my_bit(), std::memory_order_acq_rel);
  const uint32_t c = ClusterOf(slot);
  Cluster& ci = clusters_[c];
  ci.nr_free++;
  nr_free_++;
  nr_used_--;
  if (ci.nr_free == ClusterEnd(c) - ClusterStart(c)) ListAppendLocked(c);
}

// Linux: mm/swapfile.c cluster_alloc_swap_entry(): per-CPU cluster, then the
// free list, then nonfull/frag lists. Ours: free list, then a round-robin scan.
void SwapDevice::NextClusterLocked() {
  EMU_DCHECK(nr_free_ > 0);
  // Shared, a wholly free cluster of ours may be held by another process:
  // the round-robin scan alone, so that successive calls visit every cluster.
  uint32_t c = ever_shared_.load(std::memory_order_relaxed) ? kNoCluster : free_head_;
  if (c == kNoCluster) {
    for (uint32_t k = 0; k < nr_clusters_; k++) {
      uint32_t cand = (scan_cluster_ + k) % nr_clusters_;
      if (clusters_[cand].nr_free > 0) {
        c = cand;
        break;
      }
    }
    EMU_BUG_ON(c == kNoCluster);  // nr_free_ > 0 but no cluster has a free slot
    scan_cluster_ = (c + 1) % nr_clusters_;
  }
  cur_cluster_ = c;
  cur_next_ = ClusterStart(c);
}

uint32_t SwapDevice::AllocRun(uint32_t n, uint64_t* first) {
  EMU_BUG_ON(n > kSwapClusterPages);
  if (n == 0) return 0;
  if (me_ < 0) return 0;  // a detached child (ForkDetach)
  SpinLockHolder l(&swap_lock_);
  if (nr_free_ == 0) return 0;
  // A slot free in our swap_map is ours only once its holder mask is
  // claimed. Unshared, the first cluster picked with a free slot yields it;
  // shared, every cluster may be held elsewhere: one round of them at most.
  for (uint32_t round = 0; round <= nr_clusters_ + 1; round++) {
    if (cur_cluster_ == kNoCluster) NextClusterLocked();
    uint64_t end = ClusterEnd(cur_cluster_);
    uint64_t s = cur_next_;
    while (s < end && (swap_map_[s] != 0 || !Claim(s))) s++;
    if (s == end) {  // nothing left at or after the cursor
      cur_cluster_ = kNoCluster;
      continue;
    }
    TakeSlotLocked(s);
    uint64_t e = s + 1;
    while (e - s < n) {
      if (e == end) {
        // Continue into the next cluster only if it is wholly free.
        const uint32_t next = cur_cluster_ + 1;
        if (next >= nr_clusters_ || !clusters_[next].on_free_list) break;
        cur_cluster_ = next;
        end = ClusterEnd(next);
      }
      if (swap_map_[e] != 0 || !Claim(e)) break;
      TakeSlotLocked(e);
      e++;
    }
    cur_next_ = e;
    *first = s;
    return static_cast<uint32_t>(e - s);
  }
  return 0;  // every slot free here is held by another process
}

bool SwapDevice::Duplicate(uint64_t slot) {
  EMU_BUG_ON(slot >= nr_slots_);
  SpinLockHolder l(&swap_lock_);
  const uint16_t v = swap_map_[slot];
  if (v == 0 || v == kSwapMapBad) return false;
  // Differs: no swap count continuation (add_swap_count_continuation()).
  if ((v & ~kSwapHasCache) >= kSwapMapMax) return false;
  swap_map_[slot] = static_cast<uint16_t>(v + 1);
  return true;
}

int SwapDevice::Free(uint64_t slot) {
  EMU_BUG_ON(slot >= nr_slots_);
  SpinLockHolder l(&swap_lock_);
  const uint16_t v = swap_map_[slot];
  EMU_BUG_ON(v == kSwapMapBad);
  const int count = v & ~kSwapHasCache;
  EMU_BUG_ON(count == 0);  // no PTE reference to drop
  if (v == 1) {
    ReleaseSlotLocked(slot);
  } else {
    swap_map_[slot] = static_cast<uint16_t>(v - 1);
  }
  return count - 1;
}

void SwapDevice::ClearCache(uint64_t slot) {
  EMU_BUG_ON(slot >= nr_slots_);
  SpinLockHolder l(&swap_lock_);
  const uint16_t v = swap_map_[slot];
  if (v == kSwapMapBad) return;
  EMU_BUG_ON((v & kSwapHasCache) == 0);
  if (v == kSwapHasCache) {
    ReleaseSlotLocked(slot);
  } else {
    swap_map_[slot] = static_cast<uint16_t>(v & ~kSwapHasCache);
  }
}

bool SwapDevice::SetCache(uint64_t slot) {
  EMU_BUG_ON(slot >= nr_slots_);
  SpinLockHolder l(&swap_lock_);
  const uint16_t v = swap_map_[slot];
  if (v == 0 || v == kSwapMapBad || (v & kSwapHasCache)) return false;
  swap_map_[slot] = static_cast<uint16_t>(v | kSwapHasCache);
  return true;
}

int SwapDevice::Count(uint64_t slot) const {
  EMU_BUG_ON(slot >= nr_slots_);
  SpinLockHolder l(&swap_lock_);
  const uint16_t v = swap_map_[slot];
  return v == kSwapMapBad ? 0 : (v & ~kSwapHasCache);
}

bool SwapDevice::HasCache(uint64_t slot) const {
  EMU_BUG_ON(slot >= nr_slots_);
  SpinLockHolder l(&swap_lock_);
  const uint16_t v = swap_map_[slot];
  return v != kSwapMapBad && (v & kSwapHasCache) != 0;
}

void SwapDevice::Retire(uint64_t slot) {
  EMU_BUG_ON(slot >= nr_slots_);
  SpinLockHolder l(&swap_lock_);
  const uint16_t v = swap_map_[slot];
  if (v == kSwapMapBad) return;
  if (v == 0) {
    (void)Claim(slot);  // not handed out here again; if another process holds it, it is theirs
    const uint32_t c = ClusterOf(slot);
    if (clusters_[c].on_free_list) ListRemoveLocked(c);
    clusters_[c].nr_free--;
    nr_free_--;
  } else {
    nr_used_--;
  }
  swap_map_[slot] = kSwapMapBad;
  nr_bad_++;
}

uint64_t SwapDevice::nr_free() const {
  SpinLockHolder l(&swap_lock_);
  return nr_free_;
}
uint64_t SwapDevice::nr_used() const {
  SpinLockHolder l(&swap_lock_);
  return nr_used_;
}
uint64_t SwapDevice::nr_bad() const {
  SpinLockHolder l(&swap_lock_);
  return nr_bad_;
}

absl::Status SwapDevice::CheckInvariants() const {
  SpinLockHolder l(&swap_lock_);
  return CheckInvariantsLocked();
}

absl::Status SwapDevice::CheckInvariantsLocked() const {
  auto fail = [](std::string msg) { return absl::InternalError("swap: " + msg); };
  // 1 and 2.
  uint64_t nfree = 0, nused = 0, nbad = 0, nwhole = 0;
  for (uint32_t c = 0; c < nr_clusters_; c++) {
    uint64_t cfree = 0;
    for (uint64_t s = ClusterStart(c); s < ClusterEnd(c); s++) {
      const uint16_t v = swap_map_[s];
      if (v == 0) {
        cfree++;
      } else if (v == kSwapMapBad) {
        nbad++;
      } else {
        if ((v & ~kSwapHasCache) > kSwapMapMax) {
          return fail(absl::StrFormat("slot %d has count %#x", s, v));
        }
        nused++;
      }
    }
    nfree += cfree;
    if (cfree != clusters_[c].nr_free) {
      return fail(absl::StrFormat("cluster %d has %d free slots, its nr_free is %d", c, cfree,
                                  clusters_[c].nr_free));
    }
    const bool whole = cfree == ClusterEnd(c) - ClusterStart(c);
    nwhole += whole;
    if (whole != clusters_[c].on_free_list) {
      return fail(absl::StrFormat("cluster %d: wholly free=%d but on_free_list=%d", c, whole,
                                  clusters_[c].on_free_list));
    }
  }
  if (nfree != nr_free_ || nused != nr_used_ || nbad != nr_bad_ ||
      nr_free_ + nr_used_ + nr_bad_ != nr_slots_) {
    return fail(absl::StrFormat(
        "counted free=%d used=%d bad=%d, recorded free=%d used=%d bad=%d, nr_slots=%d", nfree,
        nused, nbad, nr_free_, nr_used_, nr_bad_, nr_slots_));
  }
  // 3: the list, walked both ways.
  uint64_t len = 0;
  uint32_t prev = kNoCluster;
  for (uint32_t c = free_head_; c != kNoCluster; c = clusters_[c].next) {
    if (c >= nr_clusters_ || !clusters_[c].on_free_list || clusters_[c].prev != prev ||
        ++len > nwhole) {
      return fail(absl::StrFormat("free-cluster list broken at cluster %d", c));
    }
    prev = c;
  }
  if (prev != free_tail_ || len != nwhole) {
    return fail(absl::StrFormat("free-cluster list has %d clusters (tail %d), %d are wholly free",
                                len, free_tail_, nwhole));
  }
  // 5. Our holder bit is set exactly on the slots our swap_map uses.
  for (uint64_t s = 0; s < nr_slots_; s++) {
    const uint16_t v = swap_map_[s];
    if (v == kSwapMapBad) continue;
    if ((v != 0) != Held(s)) {
      return fail(absl::StrFormat("slot %d: swap_map %#x but holder bit %d", s, v, Held(s)));
    }
  }
  // 4.
  if (cur_cluster_ != kNoCluster &&
      (cur_cluster_ >= nr_clusters_ || cur_next_ < ClusterStart(cur_cluster_) ||
       cur_next_ > ClusterEnd(cur_cluster_))) {
    return fail(absl::StrFormat("cursor cluster %d slot %d", cur_cluster_, cur_next_));
  }
  return absl::OkStatus();
}

}  // namespace emu
