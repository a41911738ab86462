// Redirecting libc's memory system-call wrappers to the emulator.
//
// glibc's malloc reaches mmap, munmap, mremap, mprotect and brk through
// libc-internal aliases (__mmap, __munmap, __brk, ...) that never pass
// through the PLT, so an LD_PRELOAD definition of `mmap` does not see them.
// The aliases share their code with the exported symbols, so overwriting the
// first bytes of that code with a jump to our replacement catches every
// caller: the PLT, libc itself, and anyone holding the function's address.
// The replacement never returns into the original (it makes the system call
// itself), so nothing of the overwritten instructions needs relocating.
#ifndef EMU_PRELOAD_PATCH_H_
#define EMU_PRELOAD_PATCH_H_

#include "absl/status/status.h"

namespace emu::preload {

// Bytes a redirect overwrites: movabs $to, %r11; jmp *%r11.
inline constexpr int kRedirectBytes = 13;

// Overwrites the entry of `name` in the library `lib` (a dlopen handle) with
// a jump to `to`. EINVAL when the symbol is missing or shorter than the
// redirect (its size from the dynamic symbol table); the error of mprotect
// when the text cannot be made writable.
absl::Status RedirectFunction(void* lib, const char* name, void* to);

}  // namespace emu::preload

#endif  // EMU_PRELOAD_PATCH_H_
