// The anon_vma method (Andrea Arcangeli's, 2.6.7's form): an anon_vma groups
// the VMAs of a fork family that may map the same pages: the parent's VMA and
// its forked copies all point at one anon_vma. A page's index is its VMA's
// pgoff plus its page in the VMA, which mremap keeps (the moved VMA keeps
// pgoff), so the walk finds a moved page without early COW.
//
// Differs: Linux links each anon_vma to its VMAs (anon_vma->head); here it
// lists the address spaces that hold one or more of its VMAs, and the walk
// looks through that address space's VMAs for the ones that carry it. VMAs
// split, merge and move without telling the anon_vma.
#include <algorithm>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "emu/machine.h"
#include "emu/mm.h"
#include "emu/rmap.h"
#include "emu/sync.h"

namespace emu {

// Invariant: every address space with a VMA whose anon_vma is this one is
// in `spaces`.
struct AnonVma {
  SpinLock lock;
  std::vector<AddressSpace*> spaces ABSL_GUARDED_BY(lock);
};

namespace {

class AnonVmaRmap : public RmapMethod {
 public:
  ~AnonVmaRmap() override {
    for (AnonVma* av : all_) delete av;
  }
  std::string_view name() const override { return "anon_vma"; }

  absl::Status Fork(AddressSpace& parent, AddressSpace& child) override
      ABSL_NO_THREAD_SAFETY_ANALYSIS {
    // Linux: anon_vma_prepare() for each VMA of the parent that has none,
    // then anon_vma_fork(): the child's copies join the same anon_vma.
    absl::flat_hash_set<AnonVma*> seen;
    for (auto it = parent.MutableVmasForRmap().begin(); it != parent.MutableVmasForRmap().end();
         ++it) {
      Vma& v = it->second;
      if (v.foreign()) continue;
      if (v.anon_vma == nullptr) {
        auto* av = new AnonVma;
        {
          SpinLockHolder l(&av->lock);
          av->spaces.push_back(&parent);
        }
        SpinLockHolder l(&lock_);
        all_.insert(av);
        v.anon_vma = av;
      }
      if (seen.insert(v.anon_vma).second) {
        SpinLockHolder l(&v.anon_vma->lock);
        v.anon_vma->spaces.push_back(&child);
      }
    }
    return absl::OkStatus();
  }

  void Exit(AddressSpace& as) override {
    SpinLockHolder l(&lock_);
    for (auto it = all_.begin(); it != all_.end();) {
      AnonVma* av = *it;
      bool empty;
      {
        SpinLockHolder al(&av->lock);
        av->spaces.erase(std::remove(av->spaces.begin(), av->spaces.end(), &as), av->spaces.end());
        empty = av->spaces.empty();
      }
      if (empty) {
        delete av;
        all_.erase(it++);
      } else {
        ++it;
      }
    }
  }

  void AnchorPage(Page& page, AddressSpace&, const Vma& vma, VirtAddr addr) override {
    EMU_BUG_ON(vma.anon_vma == nullptr);  // Fork prepared it
    page.anchor = vma.anon_vma;
    page.index = vma.pgoff + ((addr - vma.start) >> kPageShift);
  }

  bool EarlyCowOnMove() const override { return false; }

  size_t Spaces(const Page& page, size_t from, AddressSpace** out, size_t max) override {
    auto* av = static_cast<AnonVma*>(page.anchor);
    SpinLockHolder l(&av->lock);
    size_t n = 0;
    for (size_t i = from; i < av->spaces.size() && n < max; i++) out[n++] = av->spaces[i];
    return n;
  }

  void AddressesIn(const Page& page, AddressSpace& as,
                   absl::FunctionRef<void(const Vma&, VirtAddr)> fn) override
      ABSL_NO_THREAD_SAFETY_ANALYSIS {
    // Linux: vma_address(): vm_start + (index - vm_pgoff) pages, if inside.
    for (const auto& [start, v] : as.vmas()) {
      if (v.anon_vma != page.anchor || page.index < v.pgoff) continue;
      uint64_t off = page.index - v.pgoff;
      if (off >= ((v.end - v.start) >> kPageShift)) continue;
      fn(v, v.start + (off << kPageShift));
    }
  }

  size_t MemoryBytes() const override ABSL_NO_THREAD_SAFETY_ANALYSIS {
    size_t bytes = 0;
    for (AnonVma* av : all_) bytes += sizeof(AnonVma) + av->spaces.capacity() * sizeof(void*);
    return bytes;
  }

 private:
  SpinLock lock_;
  absl::flat_hash_set<AnonVma*> all_ ABSL_GUARDED_BY(lock_);
};

}  // namespace

std::unique_ptr<RmapMethod> NewAnonVmaRmap() { return std::make_unique<AnonVmaRmap>(); }

}  // namespace emu
