#include "emu/vma.h"

#include <sys/mman.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "emu/shmem.h"
#include "emu/status.h"

namespace emu {

uint32_t ProtToVmFlags(Prot prot) {
  return ((prot & PROT_READ) ? kVmRead : 0) | ((prot & PROT_WRITE) ? kVmWrite : 0) |
         ((prot & PROT_EXEC) ? kVmExec : 0);
}

Prot VmFlagsToProt(uint32_t vm_flags) {
  return ((vm_flags & kVmRead) ? PROT_READ : 0) | ((vm_flags & kVmWrite) ? PROT_WRITE : 0) |
         ((vm_flags & kVmExec) ? PROT_EXEC : 0);
}

const Vma* VmaTree::FindVma(VirtAddr addr) const {
  auto it = map_.upper_bound(addr);  // first with start > addr
  if (it != map_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.end > addr) return &prev->second;
  }
  return it == map_.end() ? nullptr : &it->second;
}

bool VmaTree::AnyOverlap(AddrRange r) const {
  const Vma* v = FindVma(r.start);
  return v != nullptr && v->start < r.end;
}

bool VmaTree::FullyMapped(AddrRange r) const {
  VirtAddr a = r.start;
  while (a < r.end) {
    const Vma* v = Lookup(a);
    if (v == nullptr) return false;
    a = v->end;
  }
  return true;
}

VmaTree::Map::iterator VmaTree::SplitAround(AddrRange r) {
  for (VirtAddr cut : {r.start, r.end}) {
    auto it = map_.upper_bound(cut);
    if (it == map_.begin()) continue;
    auto prev = std::prev(it);
    Vma& v = prev->second;
    if (v.start < cut && cut < v.end) {  // Linux: mm/vma.c split_vma()
      Vma tail = v;
      tail.start = cut;
      tail.pgoff = v.pgoff + ((cut - v.start) >> kPageShift);
      v.end = cut;
      if (tail.file != nullptr) tail.file->Get();
      map_.emplace_hint(it, cut, tail);
    }
  }
  return map_.lower_bound(r.start);
}

void VmaTree::Erase(AddrRange r) {
  auto it = SplitAround(r);
  while (it != map_.end() && it->second.start < r.end) {
    if (it->second.file != nullptr) it->second.file->Put();
    it = map_.erase(it);
  }
}

void VmaTree::Insert(const Vma& vma) {
  if (vma.file != nullptr) vma.file->Get();
  map_.emplace(vma.start, vma);
}

void VmaTree::MergeAround(AddrRange r) {
  auto it = map_.lower_bound(r.start);
  if (it != map_.begin()) --it;
  while (it != map_.end()) {
    auto next = std::next(it);
    if (next == map_.end()) break;
    if (it->second.CanMergeWith(next->second)) {
      it->second.end = next->second.end;
      if (it->second.anon_vma == nullptr) it->second.anon_vma = next->second.anon_vma;
      if (next->second.file != nullptr) next->second.file->Put();  // `it` keeps its own
      map_.erase(next);
      continue;
    }
    if (it->second.start > r.end) break;
    it = next;
  }
}

absl::Status VmaTree::CheckInvariants() const {
  const Vma* prev = nullptr;
  for (const auto& [start, v] : map_) {
    if (start != v.start || !PageAligned(v.start) || !PageAligned(v.end) || v.start >= v.end) {
      return ErrnoError(EIO, absl::StrCat("vma [", v.start, ",", v.end, ") is malformed"));
    }
    if (prev != nullptr && prev->end > v.start) {
      return ErrnoError(EIO, absl::StrCat("vmas overlap at ", v.start));
    }
    if (prev != nullptr && prev->CanMergeWith(v)) {
      return ErrnoError(EIO, absl::StrCat("mergeable vmas left apart at ", v.start));
    }
    prev = &v;
  }
  return absl::OkStatus();
}

}  // namespace emu
