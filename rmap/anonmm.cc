// The anonmm method (Hugh Dickins's): an anonmm stands for a fork family,
// every address space forked from a common ancestor. A page's index is its
// offset in its window, so in each member it can only be at one address.
// mremap cannot keep that true for a shared frame, so a moved shared frame
// is copied first (Linus's early COW, AddressSpace::MoveRangeLocked).
#include <algorithm>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/rmap.h"
#include "emu/sync.h"

namespace emu {
namespace {

struct AnonMm {
  SpinLock lock;
  std::vector<AddressSpace*> members ABSL_GUARDED_BY(lock);
};

class AnonMmRmap : public RmapMethod {
 public:
  ~AnonMmRmap() override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    absl::flat_hash_set<AnonMm*> families;
    for (auto& [as, f] : family_) families.insert(f);
    for (AnonMm* f : families) delete f;
  }
  std::string_view name() const override { return "anonmm"; }

  absl::Status Fork(AddressSpace& parent, AddressSpace& child) override {
    SpinLockHolder l(&lock_);
    AnonMm*& f = family_[&parent];
    if (f == nullptr) {
      f = new AnonMm;
      SpinLockHolder fl(&f->lock);
      f->members.push_back(&parent);
    }
    {
      SpinLockHolder fl(&f->lock);
      f->members.push_back(&child);
    }
    family_[&child] = f;
    return absl::OkStatus();
  }

  void Exit(AddressSpace& as) override {
    SpinLockHolder l(&lock_);
    auto it = family_.find(&as);
    if (it == family_.end()) return;
    AnonMm* f = it->second;
    family_.erase(it);
    bool empty;
    {
      SpinLockHolder fl(&f->lock);
      f->members.erase(std::remove(f->members.begin(), f->members.end(), &as), f->members.end());
      empty = f->members.empty();
    }
    if (empty) delete f;
  }

  void AnchorPage(Page& page, AddressSpace& as, const Vma&, VirtAddr addr) override {
    SpinLockHolder l(&lock_);
    auto it = family_.find(&as);
    EMU_BUG_ON(it == family_.end());  // Fork made the family
    page.anchor = it->second;
    page.index = (addr - as.window().start) >> kPageShift;
  }

  bool EarlyCowOnMove() const override { return true; }

  size_t Spaces(const Page& page, size_t from, AddressSpace** out, size_t max) override {
    auto* f = static_cast<AnonMm*>(page.anchor);
    SpinLockHolder l(&f->lock);
    size_t n = 0;
    for (size_t i = from; i < f->members.size() && n < max; i++) out[n++] = f->members[i];
    return n;
  }

  void AddressesIn(const Page& page, AddressSpace& as,
                   absl::FunctionRef<void(const Vma&, VirtAddr)> fn) override
      ABSL_NO_THREAD_SAFETY_ANALYSIS {
    VirtAddr addr = as.window().start + (page.index << kPageShift);
    const Vma* v = as.vmas().Lookup(addr);
    if (v != nullptr && !v->foreign()) fn(*v, addr);
  }

  size_t MemoryBytes() const override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    absl::flat_hash_set<AnonMm*> families;
    for (auto& [as, f] : family_) families.insert(f);
    size_t bytes = 0;
    for (AnonMm* f : families) bytes += sizeof(AnonMm) + f->members.capacity() * sizeof(void*);
    return bytes + family_.size() * (sizeof(void*) * 2);
  }

 private:
  SpinLock lock_;
  absl::flat_hash_map<AddressSpace*, AnonMm*> family_ ABSL_GUARDED_BY(lock_);
};

}  // namespace

std::unique_ptr<RmapMethod> NewAnonMmRmap() { return std::make_unique<AnonMmRmap>(); }

}  // namespace emu
