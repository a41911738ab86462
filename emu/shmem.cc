#include "emu/shmem.h"

#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "emu/status.h"

#include "emu/log.h"
#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/sys.h"

namespace emu {

namespace {
size_t DirtyBitsBytes(uint64_t nr_pages) { return ((nr_pages + 63) / 64 + 1) * sizeof(uint64_t); }
size_t IndexBytes(uint64_t nr_pages) { return std::max<uint64_t>(nr_pages, 1) * sizeof(uint32_t); }

// pread of up to `len` bytes at `off`, again after EINTR and for the rest
// of a short read; stops at the end of the file (the rest of `buf` stays as
// it is). Returns the bytes read, or -1 with errno. async-signal-safe.
ssize_t PreadFull(int fd, void* buf, size_t len, off_t off) {
  size_t done = 0;
  while (done < len) {
    const ssize_t n = pread(fd, static_cast<char*>(buf) + done, len - done,
                            off + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000 + uint64_t(ts.tv_nsec);
}
}  // namespace

ShmemObject::ShmemObject(Machine* machine, uint64_t nr_pages, uint64_t capacity)
    : machine_(machine), capacity_(std::max(nr_pages, capacity)), nr_pages_(nr_pages) {
  // Zero-filled on demand: a large object costs only the entries touched.
  void* p = sys::Mmap(nullptr, IndexBytes(capacity_), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  pages_ = p == MAP_FAILED ? nullptr : static_cast<std::atomic<uint32_t>*>(p);
  void* bits = sys::Mmap(nullptr, DirtyBitsBytes(capacity_), PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (bits == MAP_FAILED) {
    if (pages_ != nullptr) sys::Munmap(pages_, IndexBytes(capacity_));
    pages_ = nullptr;
  } else {
    dirty_bits_ = static_cast<std::atomic<uint64_t>*>(bits);
  }
}

ShmemObject::~ShmemObject() {
  if (pages_ != nullptr) sys::Munmap(pages_, IndexBytes(capacity_));
  if (dirty_bits_ != nullptr) sys::Munmap(dirty_bits_, DirtyBitsBytes(capacity_));
  if (fd_ >= 0) close(fd_);
}

void ShmemObject::SetBacking(int fd, uint64_t size_bytes, bool writable,
                             std::unique_ptr<SwapIo> io) {
  fd_ = fd;
  io_ = std::move(io);
  size_bytes_.store(size_bytes, std::memory_order_release);
  writable_ = writable;
}

bool ShmemObject::RefreshSize(uint64_t index) {
  if (!backed()) return false;
  struct stat st;
  if (fstat(fd_, &st) != 0) return false;
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  const uint64_t pages = (size + kPageSize - 1) >> kPageShift;
  if (pages > capacity_) return false;
  for (uint64_t cur = size_bytes_.load(std::memory_order_acquire); size > cur;) {
    if (size_bytes_.compare_exchange_weak(cur, size, std::memory_order_acq_rel)) {
      for (uint64_t n = nr_pages_.load(); pages > n && !nr_pages_.compare_exchange_weak(n, pages);) {
      }
      break;
    }
  }
  return index < nr_pages();
}

bool ShmemObject::ReadPage(uint64_t index, void* dst) const {
  const off_t off = static_cast<off_t>(index << kPageShift);
  if (io_ != nullptr && static_cast<uint64_t>(off) + kPageSize <= size_bytes()) {
    // A whole page of the file: io_uring (a page that ends the file, or
    // lies past it, is read with pread, which stops at the end).
    SwapIoOp op{index, 1, dst, 0};
    io_->Read(&op, 1);
    if (op.result == static_cast<int64_t>(kPageSize)) return true;
    if (op.result < 0) {
      errno = static_cast<int>(-op.result);
      return false;
    }
    // Short: the file shrank meanwhile; pread below reads what is there.
  }
  return PreadFull(fd_, dst, kPageSize, off) >= 0;
}

void ShmemObject::ReadPages(const uint64_t* index, void* const* dst, int n, bool* ok) const {
  EMU_BUG_ON(n > kWriteBatch);
  const uint64_t size = size_bytes();
  // Runs of pages neighbours both in the file and in memory: one op each.
  SwapIoOp ops[kWriteBatch];
  int first[kWriteBatch];
  int nops = 0;
  for (int i = 0; i < n; i++) {
    ok[i] = false;
    if (nops > 0) {
      SwapIoOp& last = ops[nops - 1];
      const int prev = first[nops - 1] + static_cast<int>(last.nr_pages) - 1;
      if (prev == i - 1 && index[prev] + 1 == index[i] &&
          static_cast<char*>(dst[prev]) + kPageSize == dst[i]) {
        last.nr_pages++;
        continue;
      }
    }
    first[nops] = i;
    ops[nops++] = SwapIoOp{index[i], 1, dst[i], 0};
  }
  for (int k = 0; k < nops; k++) {
    SwapIoOp& op = ops[k];
    const size_t len = size_t{op.nr_pages} << kPageShift;
    // The pool's pages are holes: populating them in one call spares the
    // copy below a fault per page (best effort; before Linux 5.14 it fails).
    if (op.nr_pages > 1) madvise(op.buf, len, MADV_POPULATE_WRITE);
    const bool whole = (op.slot << kPageShift) + len <= size;
    if (io_ != nullptr && whole) {
      io_->Read(&op, 1);
    } else {
      // pread stops at the end of the file: the rest stays zeros.
      const ssize_t r = PreadFull(fd_, op.buf, len, static_cast<off_t>(op.slot << kPageShift));
      op.result = r < 0 ? -errno : static_cast<int64_t>(len);
    }
    const bool all = op.result == static_cast<int64_t>(len);
    for (uint32_t j = 0; j < op.nr_pages; j++) {
      const int i = first[k] + static_cast<int>(j);
      // A short io_uring read (the file shrank meanwhile): pread what is there.
      ok[i] = all || ReadPage(index[i], dst[i]);
    }
  }
}

void ShmemObject::MarkDirty(Page& page) {
  // Linux: set_page_dirty() from the write fault (seed 001). The flag
  // first, then the bit: a writeback that clears the bit first and then
  // takes the flag never misses a page dirtied meanwhile.
  if (!(page.flags.fetch_or(kPgDirty, std::memory_order_acq_rel) & kPgDirty) && backed()) {
    if (nr_dirty_.fetch_add(1, std::memory_order_relaxed) == 0) {
      dirtied_when_.store(NowNs(), std::memory_order_relaxed);
    }
    machine_->flusher().AccountDirty(1);
    machine_->vmstat().Add(VmEvent::k_pgdirty);
  }
  if (backed()) {
    dirty_bits_[page.index / 64].fetch_or(uint64_t{1} << (page.index % 64),
                                          std::memory_order_acq_rel);
  }
}

void ShmemObject::Harvest(uint64_t first, uint64_t last) {
  if (!backed() || !machine_->host().tracks_writes()) return;
  ForEachSpace([&](AddressSpace& as) { as.HarvestObject(this, first, last); });
}

uint64_t ShmemObject::HarvestMapping(const Vma& v, AddrRange r) {
  MemMap& mem_map = machine_->mem_map();
  uint64_t found = 0;
  WriteLockHolder l(&harvest_lock_);
  machine_->host().Harvest(r, [&](AddrRange written) {
    for (VirtAddr a = written.start; a < written.end; a += kPageSize) {
      // Mapped by the host, so cached; and it stays so while the lock is
      // held: reclaim harvests (under it) before it unmaps a page.
      const Pfn pfn = Find(v.pgoff + ((a - v.start) >> kPageShift));
      if (ToU64(pfn) == 0) continue;
      MarkDirty(mem_map.page(pfn));
      found++;
    }
  });
  if (found > 0) machine_->vmstat().Add(VmEvent::k_pgharvest, found);
  return found;
}

bool ShmemObject::ClearDirty(Page& page) {
  dirty_bits_[page.index / 64].fetch_and(~(uint64_t{1} << (page.index % 64)),
                                         std::memory_order_acq_rel);
  if (!(page.flags.fetch_and(~kPgDirty, std::memory_order_acq_rel) & kPgDirty)) return false;
  if (backed()) {
    nr_dirty_.fetch_sub(1, std::memory_order_relaxed);
    machine_->flusher().AccountDirty(-1);
  }
  return true;
}

void ShmemObject::MkClean(Pfn pfn) {
  // Linux: page_mkclean() -> page_mkclean_one() over the file's i_mmap:
  // every writable PTE of the page becomes clean and read-only (and the
  // host's page write-protected), so the next write faults and dirties the
  // page again. A PTE whose fault is in flight (locked) is waited for: it
  // may be about to become writable.
  Page& page = machine_->mem_map().page(pfn);
  HostMmu& host = machine_->host();
  ReadLockHolder walk(machine_->object_walk_lock());  // the spaces stay alive
  AddressSpace* batch[32];
  for (size_t from = 0;;) {
    const size_t n = Spaces(page, from, batch, 32);
    if (n == 0) break;
    from += n;
    for (size_t i = 0; i < n; i++) {
      AddressSpace& as = *batch[i];
      ReadLockHolder l(as.mmap_lock());
      AddressesIn(page, as, [&](const Vma& vma, VirtAddr addr) {
        std::atomic<uint64_t>* e = as.page_table().Walk(addr, false);
        if (e == nullptr) return;
        for (bool busy = true; busy;) {
          {
            SpinLockHolder ptl(as.page_table().Ptl(addr));
            Pte pte(e->load(std::memory_order_acquire));
            busy = pte.locked();
            if (!busy) {
              if (!pte.present() || pte.pfn() != pfn || !pte.write()) return;
              e->store(pte.Clean().raw(), std::memory_order_release);
            }
          }
          if (busy) {
            sched_yield();
            continue;
          }
          host.WriteProtect({addr, addr + kPageSize}, VmFlagsToProt(vma.vm_flags));
          machine_->vmstat().Add(VmEvent::k_pgmkclean);
        }
      });
    }
  }
}

bool ShmemObject::WriteOut(Page& page) {
  Page* p = &page;
  int err = 0;
  if (WriteOutBatch(&p, 1, &err) == 1) return true;
  errno = err;
  return false;
}

int ShmemObject::WriteOutBatch(Page** pages, int n, int* err) {
  EMU_BUG_ON(n > kWriteBatch);
  Flusher& flusher = machine_->flusher();
  FramePool& pool = *machine_->frame_pool();
  for (int i = 0; i < n; i++) pages[i]->flags.fetch_or(kPgWriteback, std::memory_order_relaxed);
  flusher.AccountWriteback(n);
  nr_writeback_.fetch_add(static_cast<uint32_t>(n), std::memory_order_acq_rel);
  // Per page: 0 written, else the errno of its failure.
  int result[kWriteBatch] = {};
  {
    ReadLockHolder io(&io_lock_);
    const uint64_t size = size_bytes_.load(std::memory_order_acquire);
    // Whole pages go to io_uring, neighbours in the file and the pool as
    // one op; past the end (a truncated file) nothing is written, and of
    // the last page only the bytes before the end (pwrite).
    SwapIoOp ops[kWriteBatch];
    int first[kWriteBatch];  // ops[k] covers pages[first[k] .. first[k] + nr_pages)
    int nops = 0;
    for (int i = 0; i < n; i++) {
      const Page& page = *pages[i];
      const uint64_t off = page.index << kPageShift;
      if (off >= size) continue;
      const char* src = static_cast<const char*>(pool.view(page.pool_off));
      if (io_ == nullptr || off + kPageSize > size) {
        const size_t len = static_cast<size_t>(std::min<uint64_t>(kPageSize, size - off));
        for (size_t done = 0; done < len;) {
          ssize_t w = pwrite(fd_, src + done, len - done, static_cast<off_t>(off + done));
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) {
            result[i] = w == 0 ? EIO : errno;
            break;
          }
          done += static_cast<size_t>(w);
        }
        continue;
      }
      if (nops > 0) {
        SwapIoOp& last = ops[nops - 1];
        const Page& prev = *pages[first[nops - 1] + last.nr_pages - 1];
        if (first[nops - 1] + static_cast<int>(last.nr_pages) == i &&
            prev.index + 1 == page.index && prev.pool_off + kPageSize == page.pool_off) {
          last.nr_pages++;
          continue;
        }
      }
      first[nops] = i;
      ops[nops++] = SwapIoOp{page.index, 1, const_cast<char*>(src), 0};
    }
    if (nops > 0) io_->Write(ops, nops);
    for (int k = 0; k < nops; k++) {
      const int64_t want = int64_t{ops[k].nr_pages} * static_cast<int64_t>(kPageSize);
      if (ops[k].result == want) continue;
      const int e = ops[k].result < 0 ? static_cast<int>(-ops[k].result) : EIO;
      for (uint32_t j = 0; j < ops[k].nr_pages; j++) result[first[k] + j] = e;
    }
  }
  int written = 0;
  *err = 0;
  for (int i = 0; i < n; i++) {
    pages[i]->flags.fetch_and(~kPgWriteback, std::memory_order_release);
    if (result[i] == 0) {
      written++;
    } else {
      MarkDirty(*pages[i]);  // kept dirty: a later writeback tries again
      if (*err == 0) *err = result[i];
    }
  }
  flusher.AccountWriteback(-n);
  if (nr_writeback_.fetch_sub(static_cast<uint32_t>(n), std::memory_order_acq_rel) ==
      static_cast<uint32_t>(n)) {
    writeback_done_.fetch_add(1, std::memory_order_release);
    FutexWakeAll(&writeback_done_);
  }
  if (written > 0) {
    machine_->vmstat().Add(VmEvent::k_pgwriteback, written);
    flusher.Cleaned();
  }
  return written;
}

Pfn ShmemObject::GetPage(uint64_t index) {
  for (;;) {
    const Pfn pfn = Find(index);
    if (ToU64(pfn) == 0) return pfn;
    Page& page = machine_->mem_map().page(pfn);
    if (!page.GetUnlessZero()) {
      // Reclaim froze it and is about to clear the entry.
      sched_yield();
      continue;
    }
    if (Find(index) == pfn) return pfn;
    machine_->PutPage(pfn);  // freed and reused meanwhile: look again
  }
}

absl::Status ShmemObject::Writeback(uint64_t first, uint64_t last, bool wait, uint64_t budget,
                                    uint64_t* written) {
  if (!backed()) return absl::OkStatus();
  absl::Status status = absl::OkStatus();
  uint64_t nr = 0;
  last = std::min(last, capacity_);
  Page* batch[kWriteBatch];
  Pfn pfns[kWriteBatch];
  int n = 0;
  // With the host tracking writes, what it recorded since the last
  // harvest is dirtied first; the harvest also protects the pages again,
  // which is page_mkclean's work, so a write after it is recorded anew
  // and no page needs cleaning below.
  const bool tracked = machine_->host().tracks_writes();
  if (tracked) Harvest(first, last);
  auto submit = [&] {
    int err = 0;
    nr += static_cast<uint64_t>(WriteOutBatch(batch, n, &err));
    if (err != 0 && status.ok()) status = ErrnoError(err, "writeback");
    for (int k = 0; k < n; k++) machine_->PutPage(pfns[k]);
    n = 0;
  };
  // The dirty bits a word at a time: the cost follows the dirty pages, not
  // the range (a clean word is one load).
  for (uint64_t i = first; i < last && nr + static_cast<uint64_t>(n) < budget &&
                           nr_dirty_.load(std::memory_order_relaxed) > 0;) {
    const uint64_t word = dirty_bits_[i / 64].load(std::memory_order_acquire) >> (i % 64);
    if (word == 0) {
      i = (i / 64 + 1) * 64;
      continue;
    }
    i += static_cast<uint64_t>(__builtin_ctzll(word));
    if (i >= last) break;
    const uint64_t index = i++;
    const Pfn pfn = GetPage(index);
    if (ToU64(pfn) == 0) continue;
    Page& page = machine_->mem_map().page(pfn);
    // Linux: clear_page_dirty_for_io(): the flag first, then page_mkclean,
    // then the write; a write in between is in the bytes written or faults
    // and dirties the page again.
    if (!ClearDirty(page)) {
      machine_->PutPage(pfn);
      continue;
    }
    if (!tracked) MkClean(pfn);
    batch[n] = &page;
    pfns[n++] = pfn;
    if (n == kWriteBatch) submit();
  }
  if (n > 0) submit();
  if (written != nullptr) *written = nr;
  if (wait) {
    // Linux: filemap_write_and_wait_range() waits for pages already under
    // writeback too: a page the flusher or reclaim took before this call
    // is clean to the scan above but not in the file yet.
    WaitWriteback();
    if (fdatasync(fd_) != 0 && status.ok()) status = ErrnoError(errno, "fdatasync");
  }
  return status;
}

void ShmemObject::WaitWriteback() {
  for (;;) {
    const uint32_t seq = writeback_done_.load(std::memory_order_acquire);
    if (nr_writeback_.load(std::memory_order_acquire) == 0) return;
    FutexWait(&writeback_done_, seq);
  }
}

uint64_t ShmemObject::WritebackCyclic(uint64_t budget) {
  const uint64_t end = nr_pages();
  uint64_t start = writeback_index_.load(std::memory_order_relaxed);
  if (start >= end) start = 0;
  uint64_t a = 0, b = 0;
  (void)Writeback(start, end, false, budget, &a);
  if (a < budget && start > 0) (void)Writeback(0, start, false, budget - a, &b);
  // Where this turn stopped: at a page past the last one written. Resuming
  // at `start` when it wrote its whole budget in the first part is close
  // enough: the pages it wrote are clean now and cost a bit test each.
  writeback_index_.store(a >= budget ? start + 1 : 0, std::memory_order_relaxed);
  return a + b;
}

absl::Status ShmemObject::Fsync() {
  if (!backed()) return absl::OkStatus();
  absl::Status status = Writeback(0, capacity_, false);
  WaitWriteback();
  if (fsync(fd_) != 0 && status.ok()) status = ErrnoError(errno, "fsync");
  return status;
}

void ShmemObject::ForEachSpace(absl::FunctionRef<void(AddressSpace&)> fn) {
  ReadLockHolder walk(machine_->object_walk_lock());  // the spaces stay alive
  AddressSpace* batch[32];
  for (size_t from = 0;;) {
    size_t n = 0;
    {
      SpinLockHolder l(&lock_);
      for (size_t i = from; i < spaces_.size() && n < 32; i++) batch[n++] = spaces_[i];
    }
    if (n == 0) break;
    from += n;
    for (size_t i = 0; i < n; i++) fn(*batch[i]);
  }
}

void ShmemObject::DropRange(uint64_t first, uint64_t last) {
  uint64_t dropped = 0;
  for (uint64_t i = first; i < last && nr_cached_.load(std::memory_order_relaxed) > 0; i++) {
    const uint32_t pfn = pages_[i].exchange(0, std::memory_order_acq_rel);
    if (pfn == 0) continue;
    nr_cached_.fetch_sub(1, std::memory_order_relaxed);
    ClearDirty(machine_->mem_map().page(Pfn{pfn}));
    machine_->PutPage(Pfn{pfn});  // a pin or reclaim may hold it a little longer
    dropped++;
  }
  if (dropped == 0) return;
  machine_->vmstat().Add(VmEvent::k_file_truncated, dropped);
  if (FramePool* pool = machine_->frame_pool()) pool->Flush();
}

void ShmemObject::ZeroTail(uint64_t from) {
  if (from % kPageSize == 0) return;
  const uint64_t index = from >> kPageShift;
  if (index >= capacity_) return;
  const Pfn pfn = GetPage(index);
  if (ToU64(pfn) == 0) return;
  const Page& page = machine_->mem_map().page(pfn);
  char* p = static_cast<char*>(machine_->frame_pool()->writable_view(page.pool_off));
  memset(p + from % kPageSize, 0, kPageSize - from % kPageSize);
  machine_->PutPage(pfn);
}

absl::Status ShmemObject::Truncate(uint64_t size) {
  if (!backed()) return ErrnoError(EINVAL, "truncate: not a file");
  const uint64_t pages = (size + kPageSize - 1) >> kPageShift;
  if (pages > capacity_) {
    return ErrnoError(EFBIG, absl::StrCat("truncate to ", size, " bytes: past the ",
                                          capacity_ << kPageShift, " this file may grow to"));
  }
  absl::MutexLock t(&truncate_mu_);
  const uint64_t old = size_bytes_.load(std::memory_order_acquire);
  const uint64_t old_pages = nr_pages();
  {
    WriteLockHolder io(&io_lock_);
    if (ftruncate(fd_, static_cast<off_t>(size)) != 0) return ErrnoError(errno, "ftruncate");
    size_bytes_.store(size, std::memory_order_release);
    nr_pages_.store(pages, std::memory_order_release);
  }
  if (size < old) {
    // Linux: truncate_pagecache(): unmap_mapping_range() with even_cows,
    // then the cache. A fault from now on sees the new end (SIGBUS past
    // it); one in flight holds its mmap_lock, which the zap waits for.
    ForEachSpace([&](AddressSpace& as) { as.ZapObjectFrom(this, pages); });
    DropRange(pages, old_pages);
    ZeroTail(size);
  } else {
    // The old last page's bytes past the old end become part of the file:
    // they read as zeros (what a write through the mapping put there was
    // never the file's).
    ZeroTail(old);
  }
  return absl::OkStatus();
}

bool ShmemObject::RemoveFromCache(Pfn pfn, int refs) {
  Page& page = machine_->mem_map().page(pfn);
  if (page.mapcount.load(std::memory_order_acquire) != 0 || page.Test(kPgDirty)) return false;
  // Linux: folio_ref_freeze(): with the count at 0 no new reference can be
  // taken (GetPage retries), so nobody maps or dirties it any more.
  int32_t expected = refs + 1;
  if (!page.refcount.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) return false;
  if (page.Test(kPgDirty) || page.mapcount.load(std::memory_order_acquire) != 0) {
    page.refcount.store(refs + 1, std::memory_order_release);  // dirtied before the freeze
    return false;
  }
  uint32_t want = static_cast<uint32_t>(ToU64(pfn));
  if (!pages_[page.index].compare_exchange_strong(want, 0, std::memory_order_acq_rel)) {
    page.refcount.store(refs + 1, std::memory_order_release);
    return false;
  }
  nr_cached_.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

Pfn ShmemObject::Add(uint64_t index, Pfn pfn) {
  uint32_t expected = 0;
  if (pages_[index].compare_exchange_strong(expected, static_cast<uint32_t>(ToU64(pfn)),
                                            std::memory_order_acq_rel)) {
    nr_cached_.fetch_add(1, std::memory_order_relaxed);
    for (uint64_t hw = high_water_.load(std::memory_order_relaxed);
         index + 1 > hw && !high_water_.compare_exchange_weak(hw, index + 1);) {
    }
    return pfn;
  }
  return Pfn{expected};
}

void ShmemObject::Put() {
  if (vma_refs_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // Linux: shmem_evict_inode() -> shmem_truncate_range(): no VMA names the
  // object, so no PTE maps its pages; the cache's references go. A file's
  // dirty pages are written first (no PTE is left to clean).
  if (nr_cached_.load(std::memory_order_relaxed) == 0) return;
  for (uint64_t i = 0; i < capacity_ && nr_cached_.load(std::memory_order_relaxed) > 0; i++) {
    const uint32_t pfn = pages_[i].exchange(0, std::memory_order_acq_rel);
    if (pfn == 0) continue;
    nr_cached_.fetch_sub(1, std::memory_order_relaxed);
    Page& page = machine_->mem_map().page(Pfn{pfn});
    if (backed() && ClearDirty(page) && !WriteOut(page)) {
      const int err = errno;
      ClearDirty(page);  // the page goes: its data is lost, as Linux's on a failed final write
      Log(Component::kEmu).error("writeback of page {} failed as its last mapping went: {}",
                                 i, strerror(err));
    }
    EMU_BUG_ON(machine_->mem_map().page(Pfn{pfn}).mapcount.load() != 0);
    machine_->PutPage(Pfn{pfn});
  }
  if (FramePool* pool = machine_->frame_pool()) pool->Flush();
}

absl::Status ShmemObject::CheckInvariants() {
  MemMap& mem_map = machine_->mem_map();
  uint64_t cached = 0, dirty = 0;
  const uint64_t end = high_water_.load();
  for (uint64_t i = 0; i < end; i++) {
    const uint32_t n = pages_[i].load();
    if (n == 0) continue;
    cached++;
    const Page& page = mem_map.page(Pfn{n});
    const uint32_t want = kPgShmem | kPgPool | (backed() ? kPgFile : 0);
    if ((page.flags.load() & (want | kPgFile)) != want || page.anchor != this ||
        page.index != i || page.refcount.load() < 1) {
      return ErrnoError(EIO, absl::StrCat("object page ", i, " (pfn ", n, "): flags ",
                                          page.flags.load(), ", index ", page.index,
                                          ", refcount ", page.refcount.load()));
    }
    if (backed() && i >= nr_pages()) {
      return ErrnoError(EIO, absl::StrCat("file page ", i, " cached past the end (", nr_pages(),
                                          " pages)"));
    }
    if (backed() && page.Test(kPgDirty)) {
      dirty++;
      if (!(dirty_bits_[i / 64].load() & (uint64_t{1} << (i % 64)))) {
        return ErrnoError(EIO, absl::StrCat("dirty file page ", i, " without its dirty bit"));
      }
    }
  }
  if (cached != nr_cached()) {
    return ErrnoError(EIO, absl::StrCat("nr_cached ", nr_cached(), " but ", cached, " pages"));
  }
  if (backed() && dirty != nr_dirty()) {
    return ErrnoError(EIO, absl::StrCat("nr_dirty ", nr_dirty(), " but ", dirty, " dirty pages"));
  }
  return absl::OkStatus();
}

void ShmemObject::AddSpace(AddressSpace* as) {
  SpinLockHolder l(&lock_);
  if (std::find(spaces_.begin(), spaces_.end(), as) == spaces_.end()) spaces_.push_back(as);
}

void ShmemObject::RemoveSpace(AddressSpace* as) {
  SpinLockHolder l(&lock_);
  spaces_.erase(std::remove(spaces_.begin(), spaces_.end(), as), spaces_.end());
}

size_t ShmemObject::Spaces(const Page&, size_t from, AddressSpace** out, size_t max) {
  SpinLockHolder l(&lock_);
  size_t n = 0;
  for (size_t i = from; i < spaces_.size() && n < max; i++) out[n++] = spaces_[i];
  return n;
}

void ShmemObject::AddressesIn(const Page& page, AddressSpace& as,
                              absl::FunctionRef<void(const Vma&, VirtAddr)> fn)
    ABSL_NO_THREAD_SAFETY_ANALYSIS {
  // Linux: rmap_walk_file() over the i_mmap interval tree; ours looks
  // through the address space's VMAs for those naming this object.
  for (const auto& [start, v] : as.vmas()) {
    if (v.file != this || page.index < v.pgoff) continue;
    const uint64_t off = page.index - v.pgoff;
    if (off >= ((v.end - v.start) >> kPageShift)) continue;
    fn(v, v.start + (off << kPageShift));
  }
}

}  // namespace emu
