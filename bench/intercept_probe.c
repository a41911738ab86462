// Cost of catching a system call: plain syscall, a redirected libc entry
// (a jump to a replacement that makes the call), and seccomp SECCOMP_RET_TRAP
// (the call becomes SIGSYS, the handler makes it).
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
static long raw(long nr) { long r; __asm__ volatile("syscall" : "=a"(r) : "a"(nr) : "rcx", "r11", "memory"); return r; }
static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static long __attribute__((noinline)) replacement(void) { return raw(SYS_getppid); }
static long (*volatile entry)(void) = replacement;
static void on_sys(int sig, siginfo_t* si, void* ctx) {
  ucontext_t* uc = ctx; (void)sig; (void)si;
  uc->uc_mcontext.gregs[REG_RAX] = raw(SYS_getpid);
}
int main() {
  const int n = 200000;
  double t0 = now(); for (int i = 0; i < n; i++) raw(SYS_getppid); double plain = (now() - t0) / n;
  t0 = now(); for (int i = 0; i < n; i++) entry(); double redirect = (now() - t0) / n;
  struct sigaction sa = {0}; sa.sa_sigaction = on_sys; sa.sa_flags = SA_SIGINFO; sigaction(SIGSYS, &sa, 0);
  struct sock_filter f[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRAP),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
  struct sock_fprog prog = {4, f};
  prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) { perror("seccomp"); return 1; }
  t0 = now(); for (int i = 0; i < n / 10; i++) raw(SYS_getppid); double trap = (now() - t0) / (n / 10);
  t0 = now(); for (int i = 0; i < n; i++) raw(SYS_getpid); double filtered = (now() - t0) / n;
  printf("plain syscall %.0f ns; redirected entry %.0f ns (+%.0f); seccomp SIGSYS trap %.0f ns (+%.0f); any other syscall under the filter %.0f ns\n",
         plain, redirect, redirect - plain, trap, trap - plain, filtered);
  return 0;
}
