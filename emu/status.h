// Errors carry the exact Linux errno. absl's canonical codes lose information
// (ENOMEM and EAGAIN both map to kResourceExhausted), so the errno travels in a
// payload and ToErrno() gets it back.
#ifndef EMU_STATUS_H_
#define EMU_STATUS_H_

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace emu {

// Returns a status for `err` (an errno value) with `context` as message.
absl::Status ErrnoError(int err, std::string_view context);

// The errno carried by `status`; 0 for OK; EIO when none was recorded.
int ToErrno(const absl::Status& status);

// Quiet mode (the preload): ErrnoError() then carries the errno in the status
// code alone, with no message and no payload, so that it allocates nothing;
// the preload serves malloc's own mmap calls, which may not call malloc.
void SetQuietErrors(bool quiet);

// At a libc-like boundary: sets errno from `status` and returns -1 (or 0 on OK).
int ToLibc(const absl::Status& status);

}  // namespace emu

#define EMU_STATUS_CONCAT_INNER_(a, b) a##b
#define EMU_STATUS_CONCAT_(a, b) EMU_STATUS_CONCAT_INNER_(a, b)

#define EMU_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::absl::Status emu_status_ = (expr);           \
    if (!emu_status_.ok()) return emu_status_;     \
  } while (0)

#define EMU_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(*tmp)

#define EMU_ASSIGN_OR_RETURN(lhs, expr) \
  EMU_ASSIGN_OR_RETURN_IMPL_(EMU_STATUS_CONCAT_(emu_statusor_, __LINE__), lhs, expr)

#endif  // EMU_STATUS_H_
