#include "emu/shmem.h"

#include <sched.h>
#include <sys/mman.h>
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
}  // namespace

ShmemObject::ShmemObject(Machine* machine, uint64_t nr_pages)
    : machine_(machine), nr_pages_(nr_pages) {
  // Zero-filled on demand: a large object costs only the entries touched.
  void* p = sys::Mmap(nullptr, std::max<uint64_t>(nr_pages, 1) * sizeof(uint32_t),
                      PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  pages_ = p == MAP_FAILED ? nullptr : static_cast<std::atomic<uint32_t>*>(p);
  void* bits = sys::Mmap(nullptr, DirtyBitsBytes(nr_pages), PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (bits == MAP_FAILED) {
    if (pages_ != nullptr) sys::Munmap(pages_, std::max<uint64_t>(nr_pages_, 1) * sizeof(uint32_t));
    pages_ = nullptr;
  } else {
    dirty_bits_ = static_cast<std::atomic<uint64_t>*>(bits);
  }
}

ShmemObject::~ShmemObject() {
  if (pages_ != nullptr) sys::Munmap(pages_, std::max<uint64_t>(nr_pages_, 1) * sizeof(uint32_t));
  if (dirty_bits_ != nullptr) sys::Munmap(dirty_bits_, DirtyBitsBytes(nr_pages_));
  if (fd_ >= 0) close(fd_);
}

bool ShmemObject::ReadPage(uint64_t index, void* dst) const {
  const off_t off = static_cast<off_t>(index << kPageShift);
  for (size_t done = 0; done < kPageSize;) {
    ssize_t n = pread(fd_, static_cast<char*>(dst) + done, kPageSize - done,
                      off + static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) break;  // the end of the file: the rest reads as zeros
    done += static_cast<size_t>(n);
  }
  return true;
}

void ShmemObject::MarkDirty(Page& page) {
  // Linux: set_page_dirty() from the write fault (seed 001).
  if (!(page.flags.fetch_or(kPgDirty, std::memory_order_acq_rel) & kPgDirty) && backed()) {
    nr_dirty_.fetch_add(1, std::memory_order_relaxed);
    machine_->vmstat().Add(VmEvent::k_pgdirty);
  }
  if (backed()) {
    dirty_bits_[page.index / 64].fetch_or(uint64_t{1} << (page.index % 64),
                                          std::memory_order_acq_rel);
  }
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

bool ShmemObject::WritePage(uint64_t index, const Page& page) {
  const uint64_t off = index << kPageShift;
  if (off >= size_bytes_) return true;  // past the end (a truncated file): nothing to write
  const size_t len = static_cast<size_t>(std::min<uint64_t>(kPageSize, size_bytes_ - off));
  const char* src = static_cast<const char*>(machine_->frame_pool()->view(page.pool_off));
  for (size_t done = 0; done < len;) {
    ssize_t n = pwrite(fd_, src + done, len - done, static_cast<off_t>(off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  machine_->vmstat().Add(VmEvent::k_pgwriteback);
  return true;
}

absl::Status ShmemObject::Writeback(uint64_t first, uint64_t last, bool wait) {
  if (!backed()) return absl::OkStatus();
  absl::Status status = absl::OkStatus();
  last = std::min(last, nr_pages_);
  // The dirty bits a word at a time: the cost follows the dirty pages, not
  // the range (a clean word is one load).
  for (uint64_t i = first; i < last && nr_dirty_.load(std::memory_order_relaxed) > 0;) {
    const uint64_t word = dirty_bits_[i / 64].load(std::memory_order_acquire) >> (i % 64);
    if (word == 0) {
      i = (i / 64 + 1) * 64;
      continue;
    }
    i += static_cast<uint64_t>(__builtin_ctzll(word));
    if (i >= last) break;
    const uint64_t bit = uint64_t{1} << (i % 64);
    dirty_bits_[i / 64].fetch_and(~bit, std::memory_order_acq_rel);
    const uint64_t index = i++;
    const Pfn pfn = Find(index);
    if (ToU64(pfn) == 0) continue;
    Page& page = machine_->mem_map().page(pfn);
    // Linux: clear_page_dirty_for_io(): the flag first, then page_mkclean,
    // then the write; a write in between is in the bytes written or faults
    // and dirties the page again.
    if (!(page.flags.fetch_and(~kPgDirty, std::memory_order_acq_rel) & kPgDirty)) continue;
    nr_dirty_.fetch_sub(1, std::memory_order_relaxed);
    MkClean(pfn);
    if (!WritePage(index, page)) {
      const int err = errno;
      MarkDirty(page);  // kept dirty: a later writeback tries again
      if (status.ok()) status = ErrnoError(err, absl::StrCat("writeback of page ", index));
    }
  }
  if (wait && fdatasync(fd_) != 0 && status.ok()) status = ErrnoError(errno, "fdatasync");
  return status;
}

Pfn ShmemObject::Add(uint64_t index, Pfn pfn) {
  uint32_t expected = 0;
  if (pages_[index].compare_exchange_strong(expected, static_cast<uint32_t>(ToU64(pfn)),
                                            std::memory_order_acq_rel)) {
    nr_cached_.fetch_add(1, std::memory_order_relaxed);
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
  for (uint64_t i = 0; i < nr_pages_; i++) {
    const uint32_t pfn = pages_[i].exchange(0, std::memory_order_acq_rel);
    if (pfn == 0) continue;
    nr_cached_.fetch_sub(1, std::memory_order_relaxed);
    Page& page = machine_->mem_map().page(Pfn{pfn});
    if (backed() && (page.flags.fetch_and(~kPgDirty, std::memory_order_acq_rel) & kPgDirty)) {
      nr_dirty_.fetch_sub(1, std::memory_order_relaxed);
      if (!WritePage(i, page)) {
        Log(Component::kEmu).error("writeback of page {} failed as its last mapping went: {}",
                                   i, strerror(errno));
      }
    }
    EMU_BUG_ON(machine_->mem_map().page(Pfn{pfn}).mapcount.load() != 0);
    machine_->PutPage(Pfn{pfn});
  }
  if (FramePool* pool = machine_->frame_pool()) pool->Flush();
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
