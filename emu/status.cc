#include "emu/status.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace emu {
namespace {
constexpr absl::string_view kErrnoPayload = "emu/errno";

absl::StatusCode CodeFor(int err) {
  switch (err) {
    case EINVAL: return absl::StatusCode::kInvalidArgument;
    case ENOMEM: return absl::StatusCode::kResourceExhausted;
    case EEXIST: return absl::StatusCode::kAlreadyExists;
    case ENOENT: return absl::StatusCode::kNotFound;
    case EACCES:
    case EPERM: return absl::StatusCode::kPermissionDenied;
    case EFAULT: return absl::StatusCode::kOutOfRange;
    case EAGAIN: return absl::StatusCode::kUnavailable;
    case ENOSYS:
    case ENODEV:
    case EOPNOTSUPP: return absl::StatusCode::kUnimplemented;
    default: return absl::StatusCode::kUnknown;
  }
}
}  // namespace

namespace {
std::atomic<bool> g_quiet{false};
// Quiet statuses use codes above absl's canonical ones: kQuietBase + errno.
constexpr int kQuietBase = 1000;
}  // namespace

void SetQuietErrors(bool quiet) { g_quiet.store(quiet, std::memory_order_relaxed); }

absl::Status ErrnoError(int err, std::string_view context) {
  if (g_quiet.load(std::memory_order_relaxed)) {
    return absl::Status(static_cast<absl::StatusCode>(kQuietBase + err), "");
  }
  absl::Status s(CodeFor(err), absl::StrCat(std::string(context), ": ", std::strerror(err)));
  s.SetPayload(kErrnoPayload, absl::Cord(std::to_string(err)));
  return s;
}

int ToErrno(const absl::Status& status) {
  if (status.ok()) return 0;
  if (status.raw_code() > kQuietBase) return status.raw_code() - kQuietBase;
  auto payload = status.GetPayload(kErrnoPayload);
  int err = 0;
  if (payload && absl::SimpleAtoi(std::string(*payload), &err)) return err;
  return EIO;
}

int ToLibc(const absl::Status& status) {
  if (status.ok()) return 0;
  errno = ToErrno(status);
  return -1;
}

}  // namespace emu
