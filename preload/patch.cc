#include "preload/patch.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>

#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "emu/status.h"
#include "emu/sys.h"
#include "emu/types.h"

namespace emu::preload {

absl::Status RedirectFunction(void* lib, const char* name, void* to) {
  void* fn = dlsym(lib, name);
  if (fn == nullptr) return ErrnoError(EINVAL, absl::StrCat("redirect: no symbol ", name));
  Dl_info info;
  void* extra = nullptr;
  int found = dladdr1(fn, &info, &extra, RTLD_DL_SYMENT);
  const auto* sym = static_cast<const ElfW(Sym)*>(extra);
  if (found == 0 ||
      sym == nullptr) {
    return ErrnoError(EINVAL, absl::StrCat("redirect: no symbol table entry for ", name));
  }
  if (sym->st_size < static_cast<ElfW(Xword)>(kRedirectBytes)) {
    return ErrnoError(EINVAL, absl::StrCat("redirect: ", name, " is ", sym->st_size,
                                           " bytes, shorter than the redirect"));
  }
  uint8_t code[kRedirectBytes];
  code[0] = 0x49;  // REX.W+B
  code[1] = 0xbb;  // mov imm64, %r11
  uint64_t target = reinterpret_cast<uint64_t>(to);
  std::memcpy(code + 2, &target, sizeof(target));
  code[10] = 0x41;  // REX.B
  code[11] = 0xff;  // jmp *%r11 (FF /4)
  code[12] = 0xe3;
  uintptr_t start = reinterpret_cast<uintptr_t>(fn) & kPageMask;
  uintptr_t end = PageAlignUp(reinterpret_cast<uintptr_t>(fn) + kRedirectBytes);
  void* page = reinterpret_cast<void*>(start);
  if (sys::Mprotect(page, end - start, PROT_READ | PROT_WRITE | PROT_EXEC) != 0) {
    return ErrnoError(errno, absl::StrCat("redirect: make ", name, " writable"));
  }
  std::memcpy(fn, code, sizeof(code));
  __builtin___clear_cache(static_cast<char*>(fn), static_cast<char*>(fn) + sizeof(code));
  if (sys::Mprotect(page, end - start, PROT_READ | PROT_EXEC) != 0) {
    return ErrnoError(errno, absl::StrCat("redirect: restore ", name));
  }
  return absl::OkStatus();
}

}  // namespace emu::preload
