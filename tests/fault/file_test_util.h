// Helpers of the emulated-file tests (file_map_test, file_writeback_test):
// a temporary file with known words, opening and mapping it, and the checks
// run after each step.
#ifndef EMU_TESTS_FAULT_FILE_TEST_UTIL_H_
#define EMU_TESTS_FAULT_FILE_TEST_UTIL_H_

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "rmap/rmap.h"
#include "test_util.h"

namespace emu::test {

// A temporary file of `pages` pages and `extra_bytes`, page i starting with
// the word i + tag; unlinked when it goes.
struct TempFile {
  std::string path;
  explicit TempFile(size_t pages, uint64_t tag = 0, size_t extra_bytes = 0) {
    char tmpl[] = "/tmp/emu-file-test.XXXXXX";
    int fd = mkstemp(tmpl);
    REQUIRE(fd >= 0);
    path = tmpl;
    std::vector<char> buf(pages * kPageSize + extra_bytes, 0);
    for (size_t i = 0; i < pages; i++) *reinterpret_cast<uint64_t*>(&buf[i * kPageSize]) = i + tag;
    REQUIRE(write(fd, buf.data(), buf.size()) == static_cast<ssize_t>(buf.size()));
    close(fd);
  }
  ~TempFile() { unlink(path.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  // The word at byte `off`, read with a descriptor of its own.
  uint64_t At(uint64_t off) const {
    int fd = open(path.c_str(), O_RDONLY);
    uint64_t w = 0;
    CHECK(pread(fd, &w, sizeof(w), static_cast<off_t>(off)) == sizeof(w));
    close(fd);
    return w;
  }
  // The word at the start of page `i`.
  uint64_t Word(size_t i) const { return At(i * kPageSize); }
  uint64_t Size() const {
    struct stat st;
    REQUIRE(stat(path.c_str(), &st) == 0);
    return static_cast<uint64_t>(st.st_size);
  }
};

// The dirty tracking modes the file tests run in (MachineOptions::
// dirty_tracking) with fault mode `mode`: seed 001's write fault, and in
// the userfaultfd modes "auto", the host's record of writes (WP_ASYNC +
// PAGEMAP_SCAN) where the kernel has it; elsewhere "auto" is the write
// fault again, which NoteTracking says.
inline std::vector<std::string> TrackingModes(FaultMode mode) {
  if (mode == FaultMode::kSigsegv) return {"fault"};
  return {"fault", "auto"};
}
#define EMU_TRACKING(mode) GENERATE_COPY(from_range(::emu::test::TrackingModes(mode)))

// Whether the machine's host tracks writes (dirty tracking "async").
inline bool Tracked(Machine& m) { return m.host().tracks_writes(); }

inline void NoteTracking(Machine& m, const std::string& want) {
  if (want == "auto" && !Tracked(m) && m.options().fault_mode != FaultMode::kSigsegv) {
    WARN("dirty tracking 'auto' found no WP_ASYNC + PAGEMAP_SCAN on this kernel: this run "
         "repeats the write-fault one");
  }
}

// With host tracking, the pages written since the last harvest become
// dirty now (as writeback would make them), so that counts are exact; a
// no-op with the write fault, where they are exact already.
inline void Harvest(ShmemObject* f) { f->Harvest(0, f->nr_pages()); }

inline ShmemObject* Open(Machine& m, const TempFile& f, bool writable = true) {
  auto obj = m.OpenFile(f.path, writable);
  INFO(obj.status().ToString());
  REQUIRE(obj.ok());
  return *obj;
}

inline char* MapFile(AddressSpace& as, ShmemObject* file, size_t len, int prot, int flags,
                     off_t off = 0) {
  auto p = as.MmapFile(0, len, prot, flags, file, off);
  INFO(p.status().ToString());
  REQUIRE(p.ok());
  return reinterpret_cast<char*>(*p);
}

// The machine's invariants (every object's cache included) and the reverse map.
inline void RequireAll(Machine& m) {
  absl::Status s = test::SettledInvariants([&] { return m.CheckInvariants(); });
  INFO(s.ToString());
  REQUIRE(s.ok());
  absl::Status r = CheckRmap(m);
  INFO(r.ToString());
  REQUIRE(r.ok());
}

}  // namespace emu::test

#endif  // EMU_TESTS_FAULT_FILE_TEST_UTIL_H_
