// A program the preload tests run under `emu run`: each subcommand exercises
// one promise of the preload on glibc's own allocator and system calls, and
// exits 0 only when every check held (1 otherwise, with the reason).
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t kP = 4096;

int Fail(const char* what) {
  std::fprintf(stderr, "probe: FAILED: %s\n", what);
  return 1;
}

uint64_t Pattern(uint64_t i, uint64_t seed) { return (i * 0x9e3779b97f4a7c15ull) ^ seed; }

void Fill(char* p, size_t bytes, uint64_t seed) {
  for (size_t i = 0; i < bytes / 8; i++) reinterpret_cast<uint64_t*>(p)[i] = Pattern(i, seed);
}
bool Check(const char* p, size_t bytes, uint64_t seed) {
  for (size_t i = 0; i < bytes / 8; i++) {
    if (reinterpret_cast<const uint64_t*>(p)[i] != Pattern(i, seed)) {
      std::fprintf(stderr, "probe: %d: at byte %zu of %p: %#llx, expected %#llx\n", getpid(),
                   i * 8, static_cast<const void*>(p),
                   static_cast<unsigned long long>(reinterpret_cast<const uint64_t*>(p)[i]),
                   static_cast<unsigned long long>(Pattern(i, seed)));
      return false;
    }
  }
  return true;
}

// glibc malloc's arenas, large chunks (mmap), realloc (mremap) and the brk
// heap, from several threads.
int Malloc(size_t total_mb) {
  size_t big = total_mb << 20;
  char* p = static_cast<char*>(malloc(big));  // above the mmap threshold
  if (p == nullptr) return Fail("malloc big");
  Fill(p, big, 1);
  char* q = static_cast<char*>(realloc(p, big * 2));  // mremap
  if (q == nullptr || !Check(q, big, 1)) return Fail("realloc kept the contents");
  Fill(q + big, big, 2);
  void* brk0 = sbrk(0);
  std::vector<char*> small;
  for (int i = 0; i < 20000; i++) {
    char* s = static_cast<char*>(malloc(64 + i % 512));  // the brk heap
    std::memset(s, i & 0xff, 64);
    small.push_back(s);
  }
  if (sbrk(0) == brk0) return Fail("the brk heap grew");
  for (int i = 0; i < 20000; i++) {
    if (small[i][63] != static_cast<char>(i & 0xff)) return Fail("small chunk contents");
  }
  bool ok = true;
  std::vector<std::thread> threads;  // per-thread arenas (mmap'd heaps)
  for (int t = 0; t < 4; t++) {
    threads.emplace_back([&ok, t] {
      std::vector<char*> v;
      for (int i = 0; i < 2000; i++) {
        char* s = static_cast<char*>(malloc(1000 + i));
        Fill(s, 1000, t * 100000 + i);
        v.push_back(s);
      }
      for (int i = 0; i < 2000; i++) {
        if (!Check(v[i], 1000, t * 100000 + i)) ok = false;
        free(v[i]);
      }
    });
  }
  for (auto& t : threads) t.join();
  if (!ok) return Fail("thread arena contents");
  if (!Check(q, big, 1) || !Check(q + big, big, 2)) return Fail("big block after pressure");
  for (char* s : small) free(s);
  free(q);
  return 0;
}

// The kernel reads and writes emulated memory: never touched, zero-page,
// written and swapped-out pages alike.
int Syscalls(size_t total_mb) {
  size_t bytes = total_mb << 20;
  char* p = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (p == MAP_FAILED) return Fail("mmap");
  Fill(p, bytes, 7);  // more than the limit: the start is swapped out now
  int fds[2];
  if (pipe(fds) != 0) return Fail("pipe");
  char* fresh = static_cast<char*>(malloc(1 << 20));  // never touched
  std::thread writer([&] {
    for (size_t off = 0; off < (1 << 20); off += 65536) {
      if (write(fds[1], p + off, 65536) != 65536) std::abort();  // from swapped pages
    }
    close(fds[1]);
  });
  size_t got = 0;
  for (ssize_t n; (n = read(fds[0], fresh + got, (1 << 20) - got)) > 0;) got += n;
  writer.join();
  close(fds[0]);
  if (got != (1 << 20) || std::memcmp(fresh, p, 1 << 20) != 0) return Fail("pipe round trip");
  // process_vm_readv on ourselves, from a zero page (read-only touch first).
  char* z = static_cast<char*>(mmap(nullptr, kP, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  volatile char c = z[0];
  (void)c;
  char buf[kP];
  std::memset(buf, 1, sizeof(buf));
  iovec local{buf, kP}, remote{z, kP};
  if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != static_cast<ssize_t>(kP)) {
    return Fail("process_vm_readv");
  }
  for (char b : buf) {
    if (b != 0) return Fail("zero page read through the kernel");
  }
  if (!Check(p, bytes, 7)) return Fail("contents after the system calls");
  return 0;
}

sigjmp_buf g_jmp;
volatile int g_sig = 0;
volatile int g_code = 0;
void* volatile g_addr = nullptr;
volatile sig_atomic_t g_masked = 0;  // SIGUSR1 and the signal itself blocked in the handler

void OnFault(int sig, siginfo_t* info, void*) {
  g_sig = sig;
  g_code = info->si_code;
  g_addr = info->si_addr;
  sigset_t cur;
  pthread_sigmask(SIG_BLOCK, nullptr, &cur);
  g_masked = sigismember(&cur, SIGUSR1) && sigismember(&cur, sig);
  siglongjmp(g_jmp, 1);
}

// The program's own SIGSEGV handler sees its faults with the original
// siginfo; emulator faults never reach it.
int Signals() {
  struct sigaction sa {};
  sa.sa_sigaction = OnFault;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, nullptr) != 0) return Fail("sigaction");
  struct sigaction cur {};
  sigaction(SIGSEGV, nullptr, &cur);
  if (!(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != OnFault) {
    return Fail("sigaction reports the program's handler");
  }
  char* p = static_cast<char*>(mmap(nullptr, 64 * kP, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  Fill(p, 64 * kP, 3);  // emulator faults: not the program's business
  if (g_sig != 0) return Fail("an emulator fault reached the program's handler");
  if (mprotect(p, kP, PROT_READ) != 0) return Fail("mprotect");
  if (sigsetjmp(g_jmp, 1) == 0) {
    p[0] = 1;
    return Fail("write to a read-only page succeeded");
  }
  if (g_sig != SIGSEGV || g_code != SEGV_ACCERR || g_addr != p) {
    return Fail("the program's handler got the original siginfo (ACCERR)");
  }
  munmap(p + 8 * kP, kP);
  g_sig = 0;
  if (sigsetjmp(g_jmp, 1) == 0) {
    p[8 * kP] = 1;
    return Fail("write to an unmapped page succeeded");
  }
  if (g_sig != SIGSEGV || g_code != SEGV_MAPERR || g_addr != p + 8 * kP) {
    return Fail("the program's handler got the original siginfo (MAPERR)");
  }
  if (!Check(p, 8 * kP, 3)) return Fail("contents next to the faults");
  // The handler's sa_mask and SA_RESETHAND are applied as the kernel does.
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
  sigaddset(&sa.sa_mask, SIGUSR1);
  if (sigaction(SIGSEGV, &sa, nullptr) != 0) return Fail("sigaction SA_RESETHAND");
  g_sig = 0;
  if (sigsetjmp(g_jmp, 1) == 0) {
    p[0] = 1;
    return Fail("write to a read-only page succeeded");
  }
  if (g_sig != SIGSEGV || !g_masked) return Fail("sa_mask (and the signal) blocked in the handler");
  sigaction(SIGSEGV, nullptr, &cur);
  if (cur.sa_handler != SIG_DFL) {
    return Fail("SA_RESETHAND put the default action back");
  }
  return 0;
}

// fork(): the child sees the parent's memory at the moment of fork, swapped
// pages included; both go on independently.
int Fork(size_t total_mb) {
  size_t bytes = total_mb << 20;
  char* p = static_cast<char*>(malloc(bytes));
  Fill(p, bytes, 11);
  pid_t pid = fork();
  if (pid < 0) return Fail("fork");
  if (pid == 0) {
    if (!Check(p, bytes, 11)) _exit(3);
    Fill(p, bytes, 12);  // the child's writes stay in the child
    char* more = static_cast<char*>(malloc(1 << 20));
    Fill(more, 1 << 20, 13);
    _exit(Check(p, bytes, 12) && Check(more, 1 << 20, 13) ? 0 : 4);
  }
  Fill(p, bytes / 2, 14);  // the parent writes while the child runs
  int st;
  if (waitpid(pid, &st, 0) != pid) return Fail("waitpid");
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    std::fprintf(stderr, "probe: child status %d\n", st);
    return Fail("the child saw the parent's memory");
  }
  // The second half keeps pattern 11 at its own offsets.
  for (size_t i = bytes / 2 / 8; i < bytes / 8; i++) {
    if (reinterpret_cast<uint64_t*>(p)[i] != Pattern(i, 11)) return Fail("parent's second half");
  }
  if (!Check(p, bytes / 2, 14)) return Fail("parent's first half");
  return 0;
}

// Nested forks: each process checks what its parent wrote, writes its own
// pattern and, above `depth`, forks a child and waits for it, twice. A
// forked child's second fork, and a grandchild's set-up, are what this
// covers (a grandchild once inherited its parent's "set up" flag, skipped
// its own set-up and spun in its first fork).
int ChainLevel(char* p, size_t bytes, int level, int depth) {
  Fill(p, bytes, 40 + level);
  if (level == depth) return Check(p, bytes, 40 + level) ? 0 : 5;
  for (int round = 0; round < 2; round++) {
    pid_t pid = fork();
    if (pid < 0) return 6;
    if (pid == 0) {
      if (!Check(p, bytes, 40 + level)) _exit(3);
      _exit(ChainLevel(p, bytes, level + 1, depth));
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      std::fprintf(stderr, "probe: level %d child status %d\n", level, st);
      return 7;
    }
    if (!Check(p, bytes, 40 + level)) return 8;
  }
  return 0;
}

int ForkChain(size_t total_mb) {
  size_t bytes = total_mb << 20;
  char* p = static_cast<char*>(malloc(bytes));
  const int r = ChainLevel(p, bytes, 0, 3);
  return r == 0 ? 0 : Fail("a nested fork");
}

// A child that forks at once, before it touches anything: its fork event
// comes while its parent may still be serving its faults (handler-thread
// mode reads the child's descriptor until the child says it is set up).
// 20 rounds; each grandchild checks every byte.
int ForkRace(size_t total_mb) {
  size_t bytes = total_mb << 20;
  char* p = static_cast<char*>(malloc(bytes));
  Fill(p, bytes, 50);
  for (int round = 0; round < 20; round++) {
    pid_t pid = fork();
    if (pid < 0) return Fail("fork");
    if (pid == 0) {
      pid_t g = fork();
      if (g < 0) _exit(6);
      if (g == 0) _exit(Check(p, bytes, 50) ? 0 : 3);
      int st;
      if (waitpid(g, &st, 0) != g || !WIFEXITED(st)) _exit(7);
      if (WEXITSTATUS(st) != 0) _exit(WEXITSTATUS(st));
      _exit(Check(p, bytes, 50) ? 0 : 4);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      std::fprintf(stderr, "probe: round %d child status %d\n", round, st);
      return Fail("a child that forks at once");
    }
  }
  return Check(p, bytes, 50) ? 0 : Fail("the parent's data after the forks");
}

// Many processes on one swap file: a fan of children running at once, each
// swapping its own writes while the parent swaps its own, then more
// children one after another than the swap device tracks at once (their
// shares must come back as they exit). Every process checks every byte.
int ForkMany(size_t total_mb) {
  size_t bytes = total_mb << 20;
  char* p = static_cast<char*>(malloc(bytes));
  Fill(p, bytes, 21);
  constexpr int kFan = 4;
  pid_t fan[kFan];
  for (int k = 0; k < kFan; k++) {
    fan[k] = fork();
    if (fan[k] < 0) return Fail("fork");
    if (fan[k] == 0) {
      if (!Check(p, bytes, 21)) _exit(3);
      for (int pass = 0; pass < 2; pass++) {
        Fill(p, bytes, 30 + k + pass);
        if (!Check(p, bytes, 30 + k + pass)) _exit(4);
      }
      _exit(0);
    }
  }
  Fill(p, bytes, 22);
  if (!Check(p, bytes, 22)) return Fail("the parent's data while its children swap");
  for (int k = 0; k < kFan; k++) {
    int st;
    if (waitpid(fan[k], &st, 0) != fan[k] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      std::fprintf(stderr, "probe: fan child %d status %d\n", k, st);
      return Fail("a child of the fan");
    }
  }
  // One after another: 40 children, more than the 32 processes a swap
  // device tracks at once.
  const size_t quarter = bytes / 4;
  for (int k = 0; k < 40; k++) {
    pid_t pid = fork();
    if (pid < 0) return Fail("fork");
    if (pid == 0) {
      if (!Check(p, bytes, 22 + (k > 0))) _exit(3);
      Fill(p + quarter * (k % 4), quarter, 100 + k);
      _exit(Check(p + quarter * (k % 4), quarter, 100 + k) ? 0 : 4);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      std::fprintf(stderr, "probe: child %d status %d\n", k, st);
      return Fail("a child of the sequence");
    }
    if (k == 0) Fill(p, bytes, 23);  // the parent goes on swapping too
  }
  return Check(p, bytes, 23) ? 0 : Fail("the parent's data after 44 children");
}

// Native mappings placed with MAP_FIXED over memory reserved from the
// emulator: a private file mapping (as a JVM maps its class-data archive),
// a shared memfd (a JIT's double mapping), their protections and advice,
// then anonymous memory again in their place.
int Foreign() {
  constexpr size_t kRes = 64 << 20;
  char* res = static_cast<char*>(mmap(nullptr, kRes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (res == MAP_FAILED) return Fail("reserve");
  char* anon = res;  // emulated memory next to the native mappings
  if (mprotect(anon, 1 << 20, PROT_READ | PROT_WRITE) != 0) return Fail("mprotect anon");
  Fill(anon, 1 << 20, 41);
  // A private file mapping in the middle of the reservation.
  char path[] = "/tmp/emu-probe-file.XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return Fail("mkstemp");
  unlink(path);
  std::vector<char> buf(4 << 20);
  Fill(buf.data(), buf.size(), 42);
  if (write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size())) return Fail("write file");
  char* file = res + (8 << 20);
  if (mmap(file, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0) != file) {
    return Fail("MAP_FIXED file mapping over the reservation");
  }
  if (!Check(file, 4 << 20, 42)) return Fail("file contents through the mapping");
  Fill(file, 1 << 20, 43);  // private: copy-on-write, the file keeps its bytes
  if (pread(fd, buf.data(), 1 << 20, 0) != (1 << 20) || !Check(buf.data(), 1 << 20, 42)) {
    return Fail("a private mapping's write reached the file");
  }
  // A shared memfd: writes through the mapping are in the file at once.
  int mfd = memfd_create("probe", 0);
  if (mfd < 0 || ftruncate(mfd, 2 << 20) != 0) return Fail("memfd");
  char* shared = res + (16 << 20);
  if (mmap(shared, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, mfd, 0) != shared) {
    return Fail("MAP_FIXED shared mapping over the reservation");
  }
  Fill(shared, 2 << 20, 44);
  if (pread(mfd, buf.data(), 2 << 20, 0) != (2 << 20) || !Check(buf.data(), 2 << 20, 44)) {
    return Fail("shared mapping and memfd disagree");
  }
  // Calls on the native ranges reach the kernel.
  if (mprotect(file, 4 << 20, PROT_READ) != 0) return Fail("mprotect of the file mapping");
  if (madvise(shared, 2 << 20, MADV_DONTNEED) != 0) return Fail("madvise of the shared mapping");
  if (!Check(shared, 2 << 20, 44)) return Fail("shared pages after MADV_DONTNEED (they are the file's)");
  if (mlock(shared, 1 << 20) != 0 || munlock(shared, 1 << 20) != 0) return Fail("mlock native");
  // MAP_FIXED_NOREPLACE over emulated memory: EEXIST, as over any mapping.
  if (mmap(anon, 4096, PROT_READ, MAP_SHARED | MAP_FIXED_NOREPLACE, mfd, 0) != MAP_FAILED ||
      errno != EEXIST) {
    return Fail("MAP_FIXED_NOREPLACE over emulated memory");
  }
  // A child sees all of it.
  pid_t pid = fork();
  if (pid == 0) {
    _exit(Check(anon, 1 << 20, 41) && Check(file, 1 << 20, 43) && Check(shared, 2 << 20, 44) ? 0 : 5);
  }
  int st;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    return Fail("the child's view of native and emulated memory");
  }
  // Gone again: anonymous memory in their place reads as zeros, and the
  // emulated memory next to them never changed.
  if (munmap(file, 4 << 20) != 0) return Fail("munmap of the file mapping");
  if (mmap(file, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != file) {
    return Fail("anonymous memory where the file was");
  }
  for (size_t i = 0; i < (4u << 20); i += 4096) {
    if (file[i] != 0) return Fail("zeros where the file was");
  }
  Fill(file, 4 << 20, 45);
  if (mmap(shared, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != shared) {
    return Fail("anonymous memory over the shared mapping");
  }
  Fill(shared, 2 << 20, 46);
  if (!Check(file, 4 << 20, 45) || !Check(shared, 2 << 20, 46) || !Check(anon, 1 << 20, 41)) {
    return Fail("emulated memory after the native mappings went");
  }
  // mremap of a native range inside the window is not emulated: EINVAL.
  char* again = res + (24 << 20);
  if (mmap(again, 1 << 20, PROT_READ, MAP_SHARED | MAP_FIXED, mfd, 0) != again) return Fail("remap");
  if (mremap(again, 1 << 20, 2 << 20, MREMAP_MAYMOVE) != MAP_FAILED || errno != EINVAL) {
    return Fail("mremap of a native mapping inside the window");
  }
  munmap(res, kRes);
  close(fd);
  close(mfd);
  return 0;
}

// Pages resident in the host (mincore), of `bytes` at p.
size_t Resident(const char* p, size_t bytes) {
  std::vector<unsigned char> v(bytes / kP);
  if (mincore(const_cast<char*>(p), bytes, v.data()) != 0) return 0;
  size_t n = 0;
  for (unsigned char c : v) n += c & 1;
  return n;
}

// mlockall/munlockall: locked memory stays resident under pressure (reclaim
// never takes it), MCL_FUTURE populates new mappings at once, bad flags are
// EINVAL. Run under a limit well above the locked set.
int MlockAll() {
  if (mlockall(0) == 0 || errno != EINVAL) return Fail("mlockall(0) is EINVAL");
  if (mlockall(MCL_ONFAULT) == 0 || errno != EINVAL) return Fail("mlockall(MCL_ONFAULT) is EINVAL");
  constexpr size_t kLocked = 4 << 20, kBig = 24 << 20;
  char* a = static_cast<char*>(mmap(nullptr, kLocked, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  Fill(a, kLocked, 51);
  if (mlockall(MCL_CURRENT) != 0) return Fail("mlockall(MCL_CURRENT)");
  // Not locked (no MCL_FUTURE): this goes through swap, a stays.
  char* b = static_cast<char*>(mmap(nullptr, kBig, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  for (int pass = 0; pass < 2; pass++) {
    Fill(b, kBig, 52 + pass);
    if (!Check(b, kBig, 52 + pass)) return Fail("unlocked memory under pressure");
  }
  if (Resident(a, kLocked) != kLocked / kP) return Fail("a locked page left memory");
  if (Resident(b, kBig) == kBig / kP) return Fail("nothing unlocked was reclaimed (limit too high?)");
  if (!Check(a, kLocked, 51)) return Fail("locked data");
  // MCL_FUTURE: populated at mmap, before any touch.
  if (mlockall(MCL_FUTURE) != 0) return Fail("mlockall(MCL_FUTURE)");
  char* c = static_cast<char*>(mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  // (SIGSEGV mode populates by protection: the host allocates on first touch.)
  const char* mode = getenv("EMU_FAULT_MODE");
  const bool host_lazy = mode != nullptr && std::string(mode) == "sigsegv";
  if (!host_lazy && Resident(c, 1 << 20) != (1 << 20) / kP) {
    return Fail("MCL_FUTURE did not populate a new mapping");
  }
  if (munlockall() != 0) return Fail("munlockall");
  // Unlocked again: pressure may take a's pages now, and they come back.
  for (int pass = 0; pass < 2; pass++) Fill(b, kBig, 60 + pass);
  if (!Check(a, kLocked, 51) || !Check(b, kBig, 61)) return Fail("data after munlockall");
  // munmap of memory that was locked works (the host range is not locked).
  if (munmap(a, kLocked) != 0 || munmap(c, 1 << 20) != 0) return Fail("munmap after mlockall");
  char* d = static_cast<char*>(mmap(a, kLocked, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0));
  for (size_t i = 0; i < kLocked; i += kP) {
    if (d[i] != 0) return Fail("stale data where locked memory was unmapped");
  }
  return 0;
}

// fork while another thread's write faults are in flight (pages read back
// from swap being made writable, zero pages being copied): every page the
// child inherits keeps its contents. Each page holds a marker at offset 0
// that nothing changes after the fill; a writer thread keeps writing offset
// 8 of every page.
int ForkWhileWriting(size_t total_mb) {
  const size_t bytes = total_mb << 20;
  char* p = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  for (size_t off = 0; off < bytes; off += kP) *reinterpret_cast<uint64_t*>(p + off) = Pattern(off / kP, 71);
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (uint64_t gen = 1; !stop.load(std::memory_order_relaxed); gen++) {
      for (size_t off = 0; off < bytes && !stop.load(std::memory_order_relaxed); off += kP) {
        reinterpret_cast<volatile uint64_t*>(p + off)[1] = gen;
      }
    }
  });
  int failed = 0;
  for (int k = 0; k < 30 && failed == 0; k++) {
    pid_t pid = fork();
    if (pid < 0) {
      failed = Fail("fork");
      break;
    }
    if (pid == 0) {
      for (size_t off = 0; off < bytes; off += kP) {
        if (*reinterpret_cast<uint64_t*>(p + off) != Pattern(off / kP, 71)) {
          std::fprintf(stderr, "probe: child %d: page %zu lost its marker\n", k, off / kP);
          _exit(3);
        }
      }
      _exit(0);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      failed = Fail("a child saw a page that lost its contents");
    }
  }
  stop.store(true);
  writer.join();
  for (size_t off = 0; off < bytes && failed == 0; off += kP) {
    if (*reinterpret_cast<uint64_t*>(p + off) != Pattern(off / kP, 71)) failed = Fail("parent's markers");
  }
  return failed;
}

// fork with glibc malloc's own heap mostly swapped out: its free lists run
// through cold pages, and the child's first allocations (the emulator's
// set-up in the child among them) walk them. Every live chunk must keep its
// contents in the child and in the parent, and the child's heap must work.
int ForkHeap(size_t total_mb) {
  constexpr size_t kChunk = 496;
  const size_t n = (total_mb << 20) / (kChunk + 16);
  std::vector<char*> chunks(n);
  for (size_t i = 0; i < n; i++) {
    chunks[i] = static_cast<char*>(malloc(kChunk));
    if (chunks[i] == nullptr) return Fail("malloc");
    Fill(chunks[i], kChunk, i);
  }
  // Holes in every page: the bins list chunks all over the heap.
  for (size_t i = 0; i < n; i += 3) {
    free(chunks[i]);
    chunks[i] = nullptr;
  }
  // Push the heap out: touch as much again elsewhere (a mapping of its own).
  const size_t other = total_mb << 20;
  char* q = static_cast<char*>(mmap(nullptr, other, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (q == MAP_FAILED) return Fail("mmap");
  Fill(q, other, 99);
  auto verify = [&](const char* who) {
    for (size_t i = 0; i < n; i++) {
      if (chunks[i] != nullptr && !Check(chunks[i], kChunk, i)) {
        std::fprintf(stderr, "probe: %s: chunk %zu changed\n", who, i);
        return false;
      }
    }
    return true;
  };
  int failed = 0;
  for (int k = 0; k < 6 && failed == 0; k++) {
    pid_t pid = fork();
    if (pid < 0) return Fail("fork");
    if (pid == 0) {
      // Reuse the holes, then check everything.
      std::vector<char*> mine;
      for (size_t i = 0; i < n / 3; i++) {
        char* c = static_cast<char*>(malloc(kChunk - 16 * (i % 8)));
        if (c == nullptr) _exit(4);
        std::memset(c, 0x5a, kChunk - 16 * (i % 8));
        mine.push_back(c);
      }
      if (!verify("child")) _exit(3);
      for (char* c : mine) free(c);
      _exit(0);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      failed = Fail("a child's heap was corrupted");
    }
    for (size_t i = 1; i < n; i += 7) {  // the parent goes on using its heap
      if (chunks[i] != nullptr) {
        free(chunks[i]);
        chunks[i] = nullptr;
      }
    }
  }
  if (failed == 0 && !verify("parent")) failed = Fail("the parent's heap changed");
  return failed;
}

// Two threads fork at once, each from its own data, while swapping: forks
// take turns in the emulator, and every child sees its thread's data.
int ForkThreads(size_t total_mb) {
  const size_t bytes = (total_mb << 20) / 2;
  char* d[2];
  for (int t = 0; t < 2; t++) {
    d[t] = static_cast<char*>(malloc(bytes));
    Fill(d[t], bytes, 300 + t);
  }
  std::atomic<int> failed{0};
  auto run = [&](int t) {
    for (int k = 0; k < 12 && failed.load() == 0; k++) {
      pid_t pid = fork();
      if (pid < 0) {
        failed.store(1);
        return;
      }
      if (pid == 0) _exit(Check(d[t], bytes, 300 + t) && Check(d[1 - t], bytes, 300 + 1 - t) ? 0 : 3);
      int st;
      if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        std::fprintf(stderr, "probe: thread %d child %d status %d\n", t, k, st);
        failed.store(1);
      }
    }
  };
  std::thread a(run, 0), b(run, 1);
  a.join();
  b.join();
  if (failed.load() != 0) return Fail("a child of concurrent forks");
  return Check(d[0], bytes, 300) && Check(d[1], bytes, 301) ? 0 : Fail("the parent's data");
}

// exec from a process running on the emulator.
int Exec() {
  char* p = static_cast<char*>(malloc(4 << 20));
  Fill(p, 4 << 20, 5);
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", "exit 7", static_cast<char*>(nullptr));
    _exit(100);
  }
  int st;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 7) return Fail("fork+exec of sh");
  if (system("exit 3") != 3 << 8) return Fail("system()");  // posix_spawn/vfork
  return Check(p, 4 << 20, 5) ? 0 : Fail("contents after exec children");
}

// MADV_FREE as a program uses it: give memory back, take some of it again,
// then need more than the limit (run it with a limit of twice `total_mb`). `semantics` is what emu run was told
// (--madv-free): with linux, what was written after the call is kept
// exactly; with volatile it may be zeros (seed 003). Anything else is wrong.
int MadvFree(size_t total_mb, const std::string& semantics) {
  const size_t bytes = total_mb << 20, half = bytes / 2, page = 4096;
  char* p = static_cast<char*>(
      mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (p == MAP_FAILED) return Fail("mmap");
  Fill(p, bytes, 40);
  if (madvise(p, bytes, MADV_FREE) != 0) return Fail("madvise(MADV_FREE)");
  Fill(p, half, 41);  // taken again
  char* q = static_cast<char*>(malloc(2 * bytes));  // the pressure (limit: 2x `bytes`)
  if (q == nullptr) return Fail("malloc");
  Fill(q, 2 * bytes, 42);
  if (!Check(q, 2 * bytes, 42)) return Fail("the memory that made the pressure");
  size_t zero = 0;
  for (size_t off = 0; off < bytes; off += page) {
    const bool again = off < half;
    const uint64_t seed = again ? 41 : 40;
    const auto* w = reinterpret_cast<const uint64_t*>(p + off);
    const size_t first = off / 8;  // Fill's word index
    bool intact = true, zeros = true;
    for (size_t i = 0; i < page / 8; i++) {
      if (w[i] != Pattern(first + i, seed)) intact = false;
      if (w[i] != 0) zeros = false;
    }
    if (intact) continue;
    if (!zeros) return Fail("a page holds neither its data nor zeros");
    if (again && semantics == "linux") return Fail("a page written after MADV_FREE lost its data");
    zero++;
  }
  std::fprintf(stderr, "probe: madvfree %s: %zu of %zu pages read back as zeros\n",
               semantics.c_str(), zero, bytes / page);
  if (zero == 0) return Fail("no page was freed under pressure");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "";
  size_t mb = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 64;
  if (cmd == "malloc") return Malloc(mb);
  if (cmd == "syscalls") return Syscalls(mb);
  if (cmd == "signals") return Signals();
  if (cmd == "fork") return Fork(mb);
  if (cmd == "forkmany") return ForkMany(mb);
  if (cmd == "forkchain") return ForkChain(mb);
  if (cmd == "forkrace") return ForkRace(mb);
  if (cmd == "foreign") return Foreign();
  if (cmd == "mlockall") return MlockAll();
  if (cmd == "forkwrite") return ForkWhileWriting(mb);
  if (cmd == "exec") return Exec();
  if (cmd == "forkheap") return ForkHeap(mb);
  if (cmd == "forkthreads") return ForkThreads(mb);
  if (cmd == "segv") {
    *static_cast<volatile int*>(nullptr) = 1;  // dies by SIGSEGV, as natively
    return 0;
  }
  if (cmd == "exit") return static_cast<int>(mb);
  if (cmd == "madvfree") return MadvFree(mb, argc > 3 ? argv[3] : "linux");
  std::fprintf(stderr, "probe: unknown command %s\n", cmd.c_str());
  return 2;
}
