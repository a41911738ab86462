// The emulator's own memory system calls, made with the syscall instruction
// directly. The preload (preload/) reroutes libc's mmap family to the
// emulator, so anything the emulator maps for itself (its arena, mem_map,
// page tables, bounce buffers) must not go through libc's wrappers.
// async-signal-safe. Each returns like the libc wrapper: -1 / MAP_FAILED with
// errno set.
#ifndef EMU_SYS_H_
#define EMU_SYS_H_

#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace emu::sys {

// Set in the emulator's own threads (fault handlers, kswapd): memory they
// allocate (malloc's arenas for them) must come from the kernel, never from
// the emulated window a preloaded program's calls are routed to.
inline thread_local bool t_emulator_thread __attribute__((tls_model("initial-exec"))) = false;

inline long RawSyscall6(long nr, long a1, long a2, long a3, long a4, long a5, long a6) {
  long ret;
  register long r10 __asm__("r10") = a4;
  register long r8 __asm__("r8") = a5;
  register long r9 __asm__("r9") = a6;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
}

// Converts a raw return (-errno on failure) to the libc convention.
inline long ToLibcRet(long ret) {
  if (static_cast<unsigned long>(ret) > static_cast<unsigned long>(-4096)) {
    errno = static_cast<int>(-ret);
    return -1;
  }
  return ret;
}

inline void* Mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  return reinterpret_cast<void*>(ToLibcRet(RawSyscall6(SYS_mmap, reinterpret_cast<long>(addr),
                                                       static_cast<long>(len), prot, flags, fd,
                                                       off)));
}
inline int Munmap(void* addr, size_t len) {
  return static_cast<int>(
      ToLibcRet(RawSyscall6(SYS_munmap, reinterpret_cast<long>(addr), static_cast<long>(len), 0,
                            0, 0, 0)));
}
inline int Mprotect(void* addr, size_t len, int prot) {
  return static_cast<int>(ToLibcRet(RawSyscall6(
      SYS_mprotect, reinterpret_cast<long>(addr), static_cast<long>(len), prot, 0, 0, 0)));
}
inline int Madvise(void* addr, size_t len, int advice) {
  return static_cast<int>(ToLibcRet(RawSyscall6(
      SYS_madvise, reinterpret_cast<long>(addr), static_cast<long>(len), advice, 0, 0, 0)));
}

// process_madvise(2) on the calling process (PIDFD_SELF_THREAD_GROUP, Linux
// 6.13's any-advice-on-self): one call for many ranges, and since Linux 6.16
// one TLB flush for all of them, where madvise(2) flushes (an IPI to every
// other CPU running the process) once per range. Returns the bytes advised,
// or -1 with errno (EBADF, EINVAL or EPERM on kernels without it).
inline constexpr int kPidfdSelfProcess = -10001;
inline long ProcessMadvise(const struct iovec* iov, size_t n, int advice) {
  return ToLibcRet(RawSyscall6(SYS_process_madvise, kPidfdSelfProcess,
                               reinterpret_cast<long>(iov), static_cast<long>(n), advice, 0, 0));
}

}  // namespace emu::sys

#endif  // EMU_SYS_H_
