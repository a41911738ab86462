// Shared pieces of the benchmarks under bench/: a clock, order statistics over
// repetitions, a JSON-lines writer, command-line parsing helpers, the native
// kernel peer (a plain anonymous mapping) and a description of the build and
// host for the header line.
//
// Header-only; every benchmark is one .cc file plus this.
#ifndef EMU_BENCH_HARNESS_H_
#define EMU_BENCH_HARNESS_H_

#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "emu_git_sha.h"
#ifndef EMU_GIT_SHA
#define EMU_GIT_SHA "unknown"
#endif

namespace emu::bench {

inline constexpr size_t kHostPageSize = 4096;

// ---- Time ----

// CLOCK_MONOTONIC in nanoseconds.
inline uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// ---- Keeping the compiler honest ----

// Forces all pending memory writes to be considered observable.
inline void ClobberMemory() { asm volatile("" : : : "memory"); }

// Makes `v` look used, so the computation that produced it stays.
template <typename T>
inline void DoNotOptimize(const T& v) {
  asm volatile("" : : "r,m"(v) : "memory");
}

// ---- Statistics over repetitions ----

// The q-quantile (0 <= q <= 1) of `v`, interpolating between neighbours
// (q = 0.5 over an even count is the mean of the two middle values).
// NaN for an empty vector.
inline double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  double pos = q * static_cast<double>(v.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos));
  size_t hi = std::min(lo + 1, v.size() - 1);
  double frac = pos - static_cast<double>(lo);
  return v[lo] + (v[hi] - v[lo]) * frac;
}

struct Summary {
  double min = std::nan("");
  double p50 = std::nan("");
  double max = std::nan("");
  double mean = std::nan("");
};

inline Summary Summarize(const std::vector<double>& v) {
  Summary s;
  if (v.empty()) return s;
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  s.p50 = Percentile(v, 0.5);
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  return s;
}

// ---- Access orders ----

// 0, 1, ..., n-1.
inline std::vector<uint32_t> SequentialOrder(size_t n) {
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  return order;
}

// A permutation of 0..n-1 that depends only on `seed` (mt19937_64 and a
// Fisher-Yates shuffle written here, so the order does not depend on the
// standard library's std::shuffle).
inline std::vector<uint32_t> ShuffledOrder(size_t n, uint64_t seed) {
  std::vector<uint32_t> order = SequentialOrder(n);
  std::mt19937_64 rng(seed);
  for (size_t i = n; i > 1; i--) {
    size_t j = static_cast<size_t>(rng() % i);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

// ---- The native peer ----

// A plain private anonymous mapping with transparent huge pages off, so that
// the kernel serves it 4 KiB page by page like the emulator does.
// Returns nullptr with errno set on failure.
inline char* MapNative(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  if (madvise(p, bytes, MADV_NOHUGEPAGE) != 0) {
    int err = errno;
    munmap(p, bytes);
    errno = err;
    return nullptr;
  }
  return static_cast<char*>(p);
}

inline void UnmapNative(char* p, size_t bytes) {
  if (p != nullptr) munmap(p, bytes);
}

// ---- Build and host ----

inline const char* GitSha() { return EMU_GIT_SHA; }

inline const char* CompilerVersion() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "g++ " __VERSION__;
#else
  return "unknown";
#endif
}

inline int Nproc() {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

inline long HostPageSize() { return sysconf(_SC_PAGESIZE); }

// ---- JSON lines ----

// Builds one JSON object on one line: {"key": value, ...}. Keys are written
// in the order added. Non-finite numbers are written as null.
class JsonLine {
 public:
  JsonLine& Str(const char* key, const std::string& value) {
    Key(key);
    AppendQuoted(value);
    return *this;
  }
  JsonLine& Num(const char* key, double value) {
    Key(key);
    if (!std::isfinite(value)) {
      out_ += "null";
      return *this;
    }
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.6g", value);
    out_ += buf;
    return *this;
  }
  JsonLine& Int(const char* key, int64_t value) {
    Key(key);
    out_ += std::to_string(value);
    return *this;
  }
  JsonLine& Bool(const char* key, bool value) {
    Key(key);
    out_ += value ? "true" : "false";
    return *this;
  }
  JsonLine& Null(const char* key) {
    Key(key);
    out_ += "null";
    return *this;
  }
  // The finished object, without a newline.
  std::string Finish() const { return out_ + "}"; }
  // Writes the object and a newline to `f` and flushes it.
  void Print(FILE* f = stdout) const {
    std::fprintf(f, "%s\n", Finish().c_str());
    std::fflush(f);
  }

 private:
  void Key(const char* key) {
    out_ += out_.size() > 1 ? ", " : "";
    AppendQuoted(key);
    out_ += ": ";
  }
  void AppendQuoted(const std::string& s) {
    out_ += '"';
    for (unsigned char c : s) {
      switch (c) {
        case '"': out_ += "\\\""; break;
        case '\\': out_ += "\\\\"; break;
        case '\n': out_ += "\\n"; break;
        case '\t': out_ += "\\t"; break;
        case '\r': out_ += "\\r"; break;
        default:
          if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            out_ += buf;
          } else {
            out_ += static_cast<char>(c);
          }
      }
    }
    out_ += '"';
  }

  std::string out_ = "{";
};

// ---- Command-line parsing ----

// Walks argv, accepting "--name VALUE" and "--name=VALUE". Errors are printed
// as "PROG: message" on stderr and make failed() true; the caller then exits 2.
//
//   ArgParser args("my_bench", argc, argv);
//   while (args.Next()) {
//     if (args.Is("--reps")) args.IntValue(1, 1000, &reps);
//     else if (args.Is("--json")) json = args.NoValue();
//     else args.Unknown();
//   }
//   if (args.failed()) return 2;
class ArgParser {
 public:
  ArgParser(const char* prog, int argc, char** argv) : prog_(prog), argc_(argc), argv_(argv) {}

  // Moves to the next argument; false at the end or after an error.
  bool Next() {
    if (failed_ || ++i_ >= argc_) return false;
    std::string a = argv_[i_];
    size_t eq = a.find('=');
    has_inline_ = a.rfind("--", 0) == 0 && eq != std::string::npos;
    flag_ = has_inline_ ? a.substr(0, eq) : a;
    inline_value_ = has_inline_ ? a.substr(eq + 1) : std::string();
    return true;
  }

  bool Is(const char* name) const { return flag_ == name; }
  const std::string& flag() const { return flag_; }

  // For a flag without a value; an "=VALUE" is an error. Returns !failed().
  bool NoValue() {
    if (has_inline_) Fail("%s takes no value", flag_.c_str());
    return !failed_;
  }

  // The flag's value; false (and an error) when there is none.
  bool Value(std::string* out) {
    if (has_inline_) {
      *out = inline_value_;
      return true;
    }
    if (i_ + 1 >= argc_) {
      Fail("%s needs a value", flag_.c_str());
      return false;
    }
    *out = argv_[++i_];
    return true;
  }

  // The flag's value as a whole number in [lo, hi].
  bool IntValue(int64_t lo, int64_t hi, int64_t* out) {
    std::string v;
    if (!Value(&v)) return false;
    errno = 0;
    char* end = nullptr;
    long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || n < lo || n > hi) {
      Fail("%s '%s': want a whole number from %lld to %lld", flag_.c_str(), v.c_str(),
           static_cast<long long>(lo), static_cast<long long>(hi));
      return false;
    }
    *out = n;
    return true;
  }

  void Unknown() { Fail("unknown option '%s' (try --help)", argv_[i_]); }

  __attribute__((format(printf, 2, 3))) void Fail(const char* fmt, ...) {
    std::fprintf(stderr, "%s: ", prog_);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "\n");
    failed_ = true;
  }

  bool failed() const { return failed_; }

 private:
  const char* const prog_;
  const int argc_;
  char** const argv_;
  int i_ = 0;
  bool failed_ = false;
  bool has_inline_ = false;
  std::string flag_;
  std::string inline_value_;
};

// Splits "a,b,c" at commas; empty pieces are kept so callers can reject them.
inline std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

}  // namespace emu::bench

#endif  // EMU_BENCH_HARNESS_H_
