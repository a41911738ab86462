#!/usr/bin/env bash
# programs_bench: real, unmodified programs from Debian packages (python3,
# sqlite3, xz, zstd, lua5.4; jemalloc, tcmalloc and mimalloc preloaded under
# python3 / sqlite3) run four ways in the same run:
#
#   native      the program alone
#   emu         `emu run -- PROGRAM` with no limit (its private anonymous
#               memory served by the emulator through libemu-preload.so)
#   emu-limit   `emu run --mem-limit X --swap-size S --swap-dir DIR`, with X =
#               half the program's native peak RSS (in MiB, at least 4M)
#   kernel-limit  the program natively inside a cgroup v1 memory controller
#               with memory.limit_in_bytes = X (memory.memsw unlimited) and a
#               swap file of the same size S in the same DIR (mkswap +
#               swapon, priority 32767), so both swap to the same disk
#
# Each run is `/usr/bin/time -f "%e %M"` around `timeout` around the program;
# the wall time is taken in this shell around the run (EPOCHREALTIME, ms; the
# same wrapper for every mode), the peak RSS (KiB) is time's %M. The program's
# stdout goes through a pipe into sha256sum (outside the cgroup, so the
# kernel's limit is not charged for an output file's page cache) and must
# match a native reference run made first (which also warms the page cache and
# gives the peak that sets X); the reference's own output is checked too (xz
# and zstd round trips, row counts). A wrong output, a non-zero exit, a crash
# or a run over --timeout of native or emu makes the row FAILED and the exit
# status 1. The kernel's failures are its own: the cgroup's OOM killer (which
# this kernel's memcg v1 runs now and then under these limits even with swap
# free) gets up to 3 tries per repetition; the kernel's time is the median of
# the runs that finished, and the row has none when none did. Neither is an
# error.
#
# The programs (sizes for the full run; see setup_case for why xz and zstd-T2
# do not run under a limit, and why lua sorts 200k strings, not 1M):
#   python           dict + sort + hash script, 250k keys
#   python-jemalloc  the same with libjemalloc.so.2 preloaded
#   sqlite           sqlite3 :memory:, 300k rows from a recursive CTE, an
#                    index, aggregates
#   sqlite-tcmalloc  the same with libtcmalloc.so.4, and
#   sqlite-mimalloc  with libmimalloc.so.2 preloaded
#   xz               xz -6 -T1 of 3 MB of base64 random data (no limit runs)
#   xz-d-T2          xz -d -T2 of a 16 MB stream in 4 MiB blocks (two decoder
#                    threads)
#   zstd-T2          zstd -19 -T2 of the 3 MB (no limit runs)
#   lua              lua5.4 table.sort of 200k strings
#
# Reported per program: the median over --reps of each time, emu / native and
# emu-limit / kernel-limit, and the pages swapped in / out (emu: the summed
# "pswpin"/"pswpout" of every process in `emu run --stats`; kernel: the
# /proc/vmstat delta over the run, system-wide). Then the geometric means of
# both ratios against their targets (emu/native <= 1.15, emu-limit /
# kernel-limit <= 1.0); a missed target is reported, not an error. A row where
# emu swapped nothing under the limit (the memory over it was not emu's) is
# shown in parentheses and left out of the second mean.
#
#   bench/programs_bench.sh [--quick] [--reps N] [--emu PATH] [--dir DIR]
#                           [--no-kernel] [--json FILE] [--timeout SECONDS]
#                           [--only NAME,NAME...]
#
#   --quick      smaller inputs and one repetition (a CI smoke run, < 1 min)
#   --reps N     repetitions of each mode (default 3; the median is reported)
#   --emu PATH   the emu binary (default build/release/emu/cli/emu; it finds
#                libemu-preload.so next to its build tree, or EMU_PRELOAD)
#   --dir DIR    where both swap files go (default /var/tmp)
#   --no-kernel  skip the kernel-limit runs
#   --json FILE  also write the rows as JSON
#   --timeout S  a run taking longer is killed and FAILED (default 120)
#   --only LIST  run only these programs (names as in the table)
#
# The kernel-limit runs need root, a cgroup v1 memory controller (found in
# /proc/mounts) and a filesystem that takes swap files; without them one line
# says why and they are skipped (as with --no-kernel), which is not an error.
# The swap file and the cgroup are removed at exit, on errors and on
# SIGINT/SIGTERM/SIGHUP; what a SIGKILLed run left (named after its pid) is
# removed by the next run. A program or allocator that is not installed skips
# its row (scripts/install-deps.sh installs them all).
#
# Known limits of the comparison: emu's limit covers the memory emu serves
# (the program's anonymous memory); the cgroup also charges the page cache the
# program itself brings in (the reference run brings in the binaries and
# inputs first, outside the cgroup; kernel memory such as page tables is
# charged too). Memory an allocator maps while emu itself starts stays native
# and outside emu's limit (mimalloc reserves its first 32 MiB then), so
# sqlite-mimalloc under emu's limit mostly does not swap at all.
set -uo pipefail
export LC_ALL=C

prog=programs_bench
die() { echo "$prog: error: $*" >&2; exit 2; }
usage() { sed -n '/^#   bench\/programs_bench.sh/,/^#   --only/p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

repo=$(cd "$(dirname "$0")/.." && pwd)
emu=$repo/build/release/emu/cli/emu
dir=/var/tmp
reps=3
reps_set=0
quick=0
kernel=1
json=
run_timeout=120
only=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --reps) [ $# -ge 2 ] || die "--reps needs a value"; reps=$2; reps_set=1; shift ;;
    --emu) [ $# -ge 2 ] || die "--emu needs a value"; emu=$2; shift ;;
    --dir) [ $# -ge 2 ] || die "--dir needs a value"; dir=$2; shift ;;
    --no-kernel) kernel=0 ;;
    --json) [ $# -ge 2 ] || die "--json needs a value"; json=$2; shift ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs a value"; run_timeout=$2; shift ;;
    --only) [ $# -ge 2 ] || die "--only needs a value"; only=,$2,; shift ;;
    -h|--help) usage 0 ;;
    *) echo "$prog: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps $reps: expected a positive number"
[[ $run_timeout =~ ^[1-9][0-9]*$ ]] || die "--timeout $run_timeout: expected a positive number of seconds"
[ $quick = 1 ] && [ $reps_set = 0 ] && reps=1
[ -x "$emu" ] || die "emu binary $emu not found or not executable (build it: scripts/build.sh release, or pass --emu PATH)"
[ -d "$dir" ] && [ -w "$dir" ] || die "--dir $dir is not a writable directory"
dir=$(cd "$dir" && pwd)
[ -x /usr/bin/time ] || die "/usr/bin/time is not installed (Debian package: time)"
for tool in timeout sha256sum awk; do
  command -v $tool >/dev/null 2>&1 || die "$tool is not installed"
done
if [ -n "$json" ]; then
  : >"$json" 2>/dev/null || die "cannot write --json $json"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/emu-programs-bench.XXXXXX") || die "cannot create a work directory in ${TMPDIR:-/tmp}"

# ---- Cleanup: the kernel peer (swap file, cgroup) and the work directory ----

cg=            # the cgroup directory while it exists
swapfile=      # the swap file while it exists
swap_on=0
cleanup_kernel() {
  local i pid
  if [ -n "$cg" ] && [ -d "$cg" ]; then
    # Whatever this run started that is still in the cgroup (an interrupted run).
    for i in 1 2 3; do
      for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
      [ -s "$cg/cgroup.procs" ] || break
      sleep 0.1
    done
  fi
  if [ $swap_on = 1 ]; then
    swapoff "$swapfile" || echo "$prog: warning: swapoff $swapfile failed" >&2
    swap_on=0
  fi
  [ -n "$swapfile" ] && rm -f "$swapfile"
  swapfile=
  if [ -n "$cg" ]; then
    for i in $(seq 100); do  # EBUSY while the last exit settles
      rmdir "$cg" 2>/dev/null && break
      [ -d "$cg" ] || break
      sleep 0.05
    done
    [ -d "$cg" ] && echo "$prog: warning: could not remove the cgroup $cg" >&2
    cg=
  fi
}
cleanup() {
  cleanup_kernel
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "$prog: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---- Small helpers ----

median() {  # median X...: to 3 decimals (times), median_int: to an integer (counts)
  printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {printf "%.3f\n", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
median_int() { printf '%.0f\n' "$(median "$@")"; }
geomean() {  # geomean X...: the geometric mean, or "-" without values
  [ $# -gt 0 ] || { echo -; return; }
  printf '%s\n' "$@" | awk '{s += log($1)} END {printf "%.3f", exp(s / NR)}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.3f", a / b; else print "-"}'; }
vmstat() { awk -v k="$1" '$1 == k {print $2}' /proc/vmstat; }
# sum_stat FILE KEY: KEY summed over every process in an `emu run --stats` file.
sum_stat() { grep -o "\"$2\":[0-9]*" "$1" 2>/dev/null | awk -F: '{s += $2} END {print s + 0}'; }
lib_path() {  # lib_path NAME: the shared library's path, or nothing
  /sbin/ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n {print $NF; exit}'
}
json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\n\t' '  ')"; }

# ---- The programs ----

# Sizes: native ~0.5-2 s each on a 2-CPU VM (full), ~0.1-0.6 s (quick).
if [ $quick = 1 ]; then
  py_n=80000 sql_rows=100000 comp_bytes=750000 stream_bytes=3000000 block=1MiB lua_n=60000
else
  py_n=250000 sql_rows=300000 comp_bytes=2250000 stream_bytes=12000000 block=4MiB lua_n=200000
fi

cat >"$work/prog.py" <<'PY'
# dict + sort + hash: a dict of floats sorted by value, a dict keyed by hex
# digests sorted, a list of lists; prints digests and sums.
import hashlib, random, sys
n = int(sys.argv[1])
random.seed(7)
d = {i: random.random() for i in range(n)}
s = sorted(d.items(), key=lambda kv: kv[1])
words = {hashlib.md5(str(i).encode()).hexdigest(): i for i in range(n // 2)}
ks = sorted(words)
lists = [[j * i for j in range(50)] for i in range(n // 20)]
h = hashlib.sha256(repr(s[:1000]).encode() + ''.join(ks[::997]).encode()).hexdigest()
print(h, len(s), len(ks), sum(map(sum, lists)))
PY

# An in-memory table from a recursive CTE, an index, aggregates.
cat >"$work/q.sql" <<SQL
PRAGMA cache_size = -65536;
CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT, w INTEGER);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $sql_rows)
  INSERT INTO t SELECT i, printf('%08d-%s', i, substr('abcdefghijklmnopqrstuvwxyz', 1 + i % 26, 10)), (i * 7919) % 100003 FROM c;
CREATE INDEX tw ON t(w);
SELECT count(*), sum(length(v)), sum(w) FROM t;
SELECT w % 10, count(*), max(v) FROM t GROUP BY w % 10 ORDER BY 1;
SELECT k, v FROM t WHERE w BETWEEN 5000 AND 5002 ORDER BY k;
SQL

cat >"$work/prog.lua" <<'LUA'
-- a table of n formatted strings, sorted; prints the ends and a checksum
local n = tonumber(arg[1])
local t = {}
for i = 1, n do t[i] = string.format("%09d:%x", (i * 7919) % 1000003, i) end
table.sort(t)
local acc = 0
for i = 1, #t, 997 do acc = (acc * 31 + tonumber(t[i]:sub(1, 9))) % 1000000007 end
print(#t, t[1], t[#t], acc)
LUA

# The compressors' inputs: base64 of pseudo-random bytes (a fixed seed when
# python3 is there, so every run compresses the same data). stream.xz (made
# here, natively) has blocks of $block, so that xz -d -T2 decodes two at once.
random_base64() {  # random_base64 BYTES SEED
  if [ -x /usr/bin/python3 ]; then
    /usr/bin/python3 -c "import random, sys; random.seed($2); sys.stdout.buffer.write(random.randbytes($1))"
  else
    head -c "$1" /dev/urandom
  fi | base64
}
random_base64 "$comp_bytes" 1 >"$work/in.b64" && random_base64 "$stream_bytes" 2 >"$work/stream.b64" ||
  die "cannot write the compressors' inputs in $work"
if command -v xz >/dev/null 2>&1; then
  xz -6 -T2 --block-size="$block" -c "$work/stream.b64" >"$work/stream.xz" || die "xz cannot make $work/stream.xz"
fi

names=(python python-jemalloc sqlite sqlite-tcmalloc sqlite-mimalloc xz xz-d-T2 zstd-T2 lua)
if [ -n "$only" ]; then
  for n in ${only//,/ }; do
    [[ " ${names[*]} " == *" $n "* ]] || die "--only: no program $n (there are: ${names[*]})"
  done
fi

# setup_case NAME: sets cmd (the program and its arguments), alloc (a library
# for LD_PRELOAD or empty), check (what checks the reference output) and
# nolimit (why the program does not run under a limit, or empty); or sets
# why (the case is skipped) and returns 1.
#
# xz and zstd-T2 (compression: xz -6, zstd -19) run natively and under emu
# without a limit only. Their match finders' tables (xz -6: a 16 MiB hash
# plus 8 bytes per input position; zstd -19: 48 MiB of hash and chain
# tables) are most of their peak and are hit at random, so at half the peak
# both emu and the kernel thrash: measured on a 2-CPU VM, xz on 1 MB took
# 94 s under emu and 60 s under the kernel (0.5 s natively), on 3 MB more
# than 200 s under emu while the kernel's cgroup OOM-killed it; zstd -19 on
# 3 MB took 115 s under emu and was OOM-killed by the kernel. That is not a
# failure of either side but it would take most of the run; xz-d-T2 (xz's
# threaded decompression of a 16 MB stream) is the compressors' row under a
# limit. lua sorts 200k strings rather than 1M: a sort of strings scattered
# over the heap also thrashes at half its peak (about 15x its native time
# under emu: 24 s for 500k strings).
setup_case() {
  alloc= check= why= nolimit=
  local need
  case $1 in
    python|python-jemalloc) need=/usr/bin/python3; cmd=(/usr/bin/python3 "$work/prog.py" "$py_n"); check=check_python ;;
    sqlite|sqlite-tcmalloc|sqlite-mimalloc) need=sqlite3; cmd=(sqlite3 :memory: -init "$work/q.sql" .quit); check="check_sqlite $sql_rows" ;;
    xz) need=xz; cmd=(xz -6 -T1 -c "$work/in.b64"); check="check_roundtrip xz"
      nolimit="xz -6 thrashes at half its peak on both sides (see the comment above setup_case)" ;;
    xz-d-T2) need=xz; cmd=(xz -dc -T2 "$work/stream.xz"); check="check_same $work/stream.b64" ;;
    zstd-T2) need=zstd; cmd=(zstd -q -19 -T2 -c "$work/in.b64"); check="check_roundtrip zstd"
      nolimit="zstd -19 thrashes at half its peak on both sides (see the comment above setup_case)" ;;
    lua) need=lua5.4; cmd=(lua5.4 "$work/prog.lua" "$lua_n"); check="check_first $lua_n" ;;
    *) why="unknown program $1"; return 1 ;;
  esac
  command -v "$need" >/dev/null 2>&1 || { why="$need is not installed"; return 1; }
  local lib=
  case $1 in
    *-jemalloc) lib=libjemalloc.so.2 ;;
    *-tcmalloc) lib=libtcmalloc.so.4 ;;
    *-mimalloc) lib=libmimalloc.so.2 ;;
  esac
  if [ -n "$lib" ]; then
    alloc=$(lib_path $lib)
    [ -n "$alloc" ] || { why="$lib is not installed"; return 1; }
  fi
  return 0
}

# Checks of the reference output ($1... then the file); "" or why not.
check_python() { awk -v n="$py_n" 'NR == 1 && $2 == n && $3 == int(n / 2) {ok = 1} END {if (!ok) print "unexpected output"}' "$1"; }
check_sqlite() { head -1 "$2" | grep -q "^$1|" || echo "count(*) is not $1"; }
check_first() { awk -v n="$1" 'NR == 1 && $1 == n {ok = 1} END {if (!ok) print "unexpected output"}' "$2"; }
check_roundtrip() { "$1" -dc <"$2" | cmp -s - "$work/in.b64" || echo "$1 -dc does not give the input back"; }
check_same() { cmp -s "$1" "$2" || echo "not the original data"; }

# ---- One timed run ----

# timed CGROUP COMMAND...: runs COMMAND (under the cgroup when CGROUP is not
# empty) with its stdout into sha256sum (and into the file $tee_to when that
# is set). Sets r_wall (s), r_rss (KiB), r_rc, r_sum and r_err (why it
# failed, or empty).
tee_to=
exec_timed() {  # in the pipeline's subshell: join the cgroup, then exec
  local cgroup=$1
  shift
  if [ -n "$cgroup" ]; then
    echo "$BASHPID" >"$cgroup/cgroup.procs" || { echo "cannot join the cgroup $cgroup" >&2; exit 125; }
  fi
  exec /usr/bin/time -f "%e %M" -o "$work/time" timeout --foreground -k 10 "$run_timeout" "$@"
}
timed() {
  local t0=$EPOCHREALTIME t1
  if [ -n "$tee_to" ]; then
    exec_timed "$@" 2>"$work/err" | tee "$tee_to" | sha256sum >"$work/sum"
  else
    exec_timed "$@" 2>"$work/err" | sha256sum >"$work/sum"
  fi
  r_rc=${PIPESTATUS[0]}
  t1=$EPOCHREALTIME
  r_wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
  r_rss=$(tail -1 "$work/time" 2>/dev/null | awk '{print $2 + 0}')
  r_sum=$(cut -d' ' -f1 "$work/sum")
  r_err=
  if [ "$r_rc" = 124 ] || { [ "$r_rc" = 137 ] && awk -v w="$r_wall" -v t="$run_timeout" 'BEGIN {exit !(w >= t)}'; }; then
    r_err="timed out after ${run_timeout}s (hang?)"
  elif [ "$r_rc" -gt 128 ] 2>/dev/null; then
    r_err="killed by signal $((r_rc - 128)) ($(kill -l $((r_rc - 128)) 2>/dev/null))"
  elif [ "$r_rc" != 0 ]; then
    r_err="exit status $r_rc"
  fi
  if [ -n "$r_err" ]; then
    r_err="$r_err; stderr: $(tail -c 600 "$work/err" | tr '\n' ' ')"
  fi
}

# ---- The kernel peer ----

kernel_why=
cg_root=
active_swap=
# kernel_check: sets cg_root, or kernel_why to why the kernel-limit runs
# cannot happen.
kernel_check() {
  [ "$(id -u)" = 0 ] || { kernel_why="not root (needs a cgroup and swapon)"; return; }
  cg_root=$(awk '$3 == "cgroup" && $4 ~ /(^|,)memory(,|$)/ {print $2; exit}' /proc/mounts)
  [ -n "$cg_root" ] && [ -e "$cg_root/memory.limit_in_bytes" ] ||
    { kernel_why="no cgroup v1 memory controller in /proc/mounts (cgroup v2 only?)"; return; }
  local t
  for t in mkswap swapon swapoff; do
    command -v $t >/dev/null 2>&1 || { kernel_why="$t is not installed (util-linux)"; return; }
  done
}
export PATH=$PATH:/sbin:/usr/sbin

# remove_stale: what a SIGKILLed run left: swap files and cgroups
# emu-programs-bench-PID of a PID that is gone.
remove_stale() {
  local f pid
  for f in $(awk 'NR > 1 {print $1}' /proc/swaps); do
    [[ ${f##*/} =~ ^emu-programs-bench-([0-9]+)\.swap$ ]] || continue
    pid=${BASH_REMATCH[1]}
    kill -0 "$pid" 2>/dev/null && continue
    swapoff "$f" && rm -f "$f" && echo "removed a swap file a killed run left: $f"
  done
  for f in "$cg_root"/emu-programs-bench-*; do
    [ -d "$f" ] || continue
    [[ ${f##*/} =~ ^emu-programs-bench-([0-9]+)$ ]] || continue
    kill -0 "${BASH_REMATCH[1]}" 2>/dev/null && continue
    rmdir "$f" && echo "removed a cgroup a killed run left: $f"
  done
}

# kernel_setup BYTES: the cgroup and a swap file of BYTES in $dir, swapped
# on; or kernel_why says why not (and what was made is removed).
kernel_setup() {
  local bytes=$1 try
  if ! mkdir "$cg_root/emu-programs-bench-$$" 2>"$work/mkdir.err"; then
    kernel_why="cannot create a cgroup: $(cat "$work/mkdir.err")"
    return
  fi
  cg=$cg_root/emu-programs-bench-$$
  if [ -e "$cg/memory.memsw.limit_in_bytes" ] && ! echo -1 >"$cg/memory.memsw.limit_in_bytes"; then
    kernel_why="cannot set $cg/memory.memsw.limit_in_bytes"
    cleanup_kernel
    return
  fi
  swapfile=$dir/emu-programs-bench-$$.swap
  for try in fallocate zeros; do
    rm -f "$swapfile"
    if [ $try = fallocate ]; then
      (umask 077 && fallocate -l "$bytes" "$swapfile") 2>/dev/null || continue
    elif ! (umask 077 && dd if=/dev/zero of="$swapfile" bs=1M count=$((bytes >> 20)) status=none); then
      kernel_why="cannot write the swap file $swapfile"  # (zeros: for a filesystem whose
      cleanup_kernel                                   # unwritten extents swapon refuses)
      return
    fi
    chmod 600 "$swapfile"
    if ! mkswap "$swapfile" >/dev/null 2>"$work/mkswap.err"; then
      kernel_why="mkswap $swapfile failed: $(tr '\n' ' ' <"$work/mkswap.err")"
      cleanup_kernel
      return
    fi
    if swapon -p 32767 "$swapfile" 2>"$work/swapon.err"; then
      swap_on=1
      return
    fi
  done
  kernel_why="swapon $swapfile failed: $(tr '\n' ' ' <"$work/swapon.err")(a container, or a filesystem without swap files?)"
  cleanup_kernel
}

# ---- The run ----

commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null | head -1)
echo "programs_bench: commit $commit${dirty:+ (working tree has changes)}, $(nproc) CPUs, $(uname -r)"
echo "emu: $emu ($("$emu" --version 2>&1 | head -1))"
echo "mode: $([ $quick = 1 ] && echo quick || echo full), $reps repetition(s) (median), timeout ${run_timeout}s per run, swap files in $dir"

# emu itself must work before anything is measured.
if ! "$emu" run --no-summary -- true >"$work/sanity" 2>&1; then
  die "emu run -- true failed: $(tr '\n' ' ' <"$work/sanity")"
fi

# Reference runs: native, not in the table; they give the peak and the output.
declare -A ref_sum ref_rss limit_mb skip
active=()
for name in "${names[@]}"; do
  if [ -n "$only" ] && [[ $only != *",$name,"* ]]; then continue; fi
  if ! setup_case "$name"; then
    echo "skip $name: $why"
    skip[$name]=$why
    continue
  fi
  pre=()
  [ -n "$alloc" ] && pre=(env LD_PRELOAD="$alloc")
  tee_to=$work/ref.out
  timed "" "${pre[@]}" "${cmd[@]}"
  tee_to=
  [ -z "$r_err" ] || die "$name does not run natively: $r_err"
  why=$($check "$work/ref.out")
  [ -z "$why" ] || die "$name: the native output is wrong: $why"
  ref_sum[$name]=$r_sum
  ref_rss[$name]=$r_rss
  mb=$(((r_rss / 1024 + 1) / 2))
  [ $mb -lt 4 ] && mb=4
  limit_mb[$name]=$mb
  active+=("$name")
done
[ ${#active[@]} -gt 0 ] || die "no program to run"

# One swap size for both sides: 4x the largest native peak (at least 64 MiB).
max_rss=0
for name in "${active[@]}"; do [ "${ref_rss[$name]}" -gt $max_rss ] && max_rss=${ref_rss[$name]}; done
swap_mb=$(((max_rss * 4 + 1023) / 1024))
[ $swap_mb -lt 64 ] && swap_mb=64

if [ $kernel = 0 ]; then
  kernel_why="--no-kernel"
else
  kernel_check
  if [ -z "$kernel_why" ]; then
    remove_stale
    active_swap=$(awk 'NR > 1' /proc/swaps)
    kernel_setup $((swap_mb << 20))
  fi
fi
if [ -n "$kernel_why" ]; then
  echo "kernel peer: SKIPPED ($kernel_why); no kernel-limit runs"
else
  echo "kernel peer: cgroup v1 $cg (memory.swappiness $(cat "$cg/memory.swappiness")), swap file $swapfile ${swap_mb} MiB, priority 32767"
  [ -n "$active_swap" ] && echo "  WARNING: other swap is active (ours has priority 32767): $(echo "$active_swap" | tr '\n' ';')"
fi
echo "emu under a limit: --mem-limit X --swap-size ${swap_mb}M --swap-dir $dir"
echo

# check_run WHAT: r_err set when the run failed or its output is not the
# reference's.
check_run() {
  [ -z "$r_err" ] && [ "$r_sum" != "${ref_sum[$name]}" ] && r_err="output differs from the native reference run"
  [ -z "$r_err" ]
}
oom_kills() { awk '$1 == "oom_kill" {print $2}' "$cg/memory.oom_control"; }
kernel_tries=3  # the cgroup's OOM killer is not deterministic: up to 3 tries a repetition

declare -A res_native res_nrss res_emu res_emul res_ein res_eout res_epeak res_kern res_kin res_kout res_kpeak
declare -A res_status res_kstatus res_kooms res_ktries res_nolimit
failed=0
for name in "${active[@]}"; do
  setup_case "$name"
  X=${limit_mb[$name]}
  pre=()
  [ -n "$alloc" ] && pre=(env LD_PRELOAD="$alloc")
  nat=() nrss=() em=() eml=() ein=() eout=() epk=() ker=() kin=() kout=() kpk=()
  status=ok kstatus= kooms=0
  echo "$name: ${cmd[*]}${alloc:+ with LD_PRELOAD=$alloc}; native peak $((ref_rss[$name] / 1024)) MiB, $(
    [ -n "$nolimit" ] && echo "no limit runs" || echo "limit ${X}M")" | sed "s|$work/||g"
  for rep in $(seq "$reps"); do
    line="  rep $rep:"
    timed "" "${pre[@]}" "${cmd[@]}"
    check_run || { status="FAILED natively: $r_err"; break; }
    nat+=("$r_wall") nrss+=("$r_rss")
    line+=" native $r_wall s"

    timed "" "${pre[@]}" "$emu" run --no-summary -- "${cmd[@]}"
    check_run || { status="FAILED under emu run: $r_err"; break; }
    em+=("$r_wall")
    line+=", emu $r_wall s"

    if [ -z "$nolimit" ]; then
      rm -f "$work/stats.json"
      timed "" "${pre[@]}" "$emu" run --no-summary --stats "$work/stats.json" --mem-limit "${X}M" \
        --swap-size "${swap_mb}M" --swap-dir "$dir" -- "${cmd[@]}"
      check_run || { status="FAILED under emu run --mem-limit ${X}M: $r_err"; break; }
      eml+=("$r_wall")
      ein+=("$(sum_stat "$work/stats.json" pswpin)") eout+=("$(sum_stat "$work/stats.json" pswpout)")
      epk+=("$(sum_stat "$work/stats.json" peak_anon_pages)")
      line+=", emu-limit $r_wall s (${ein[-1]}/${eout[-1]} pages in/out)"
    fi

    # The kernel under the same limit. A failure other than the OOM killer is
    # noted in the row, which keeps emu's numbers; no more kernel runs then.
    if [ -z "$nolimit" ] && [ -z "$kernel_why" ] && [ -z "$kstatus" ]; then
      if ! echo $((X << 20)) >"$cg/memory.limit_in_bytes"; then
        kstatus="cannot set $cg/memory.limit_in_bytes"
      fi
      for try in $(seq $kernel_tries); do
        [ -z "$kstatus" ] || break
        echo 0 >"$cg/memory.max_usage_in_bytes" 2>/dev/null
        oom0=$(oom_kills) in0=$(vmstat pswpin) out0=$(vmstat pswpout)
        timed "$cg" "${pre[@]}" "${cmd[@]}"
        in1=$(vmstat pswpin) out1=$(vmstat pswpout) oom1=$(oom_kills)
        if [ -n "$oom0" ] && [ "${oom1:-0}" -gt "$oom0" ]; then
          kooms=$((kooms + 1))
          line+=", kernel-limit OOM-killed after $r_wall s"
          continue  # the next try, or the next repetition
        fi
        if ! check_run; then
          kstatus="kernel-limit ${X}M failed: $r_err"
          break
        fi
        ker+=("$r_wall") kin+=($((in1 - in0))) kout+=($((out1 - out0)))
        kpk+=("$(cat "$cg/memory.max_usage_in_bytes")")
        line+=", kernel-limit $r_wall s (${kin[-1]}/${kout[-1]})"
        break
      done
      [ -n "$kstatus" ] && line+=", kernel-limit: $kstatus"
    fi
    echo "$line" | sed "s|$work/||g"
  done
  res_status[$name]=$status
  res_nolimit[$name]=$nolimit
  if [ "$status" != ok ]; then
    failed=1
    echo "  $status" | sed "s|$work/||g"
    continue
  fi
  res_native[$name]=$(median "${nat[@]}") res_nrss[$name]=$(median_int "${nrss[@]}")
  res_emu[$name]=$(median "${em[@]}")
  if [ -z "$nolimit" ]; then
    res_emul[$name]=$(median "${eml[@]}")
    res_ein[$name]=$(median_int "${ein[@]}") res_eout[$name]=$(median_int "${eout[@]}") res_epeak[$name]=$(median_int "${epk[@]}")
  fi
  [ -z "$kstatus" ] && [ $kooms -gt 0 ] && [ ${#ker[@]} = 0 ] && kstatus="OOM-killed by the cgroup in all $kooms tries"
  res_kstatus[$name]=$kstatus res_kooms[$name]=$kooms res_ktries[$name]=$((kooms + ${#ker[@]}))
  if [ ${#ker[@]} -gt 0 ]; then
    res_kern[$name]=$(median "${ker[@]}")
    res_kin[$name]=$(median_int "${kin[@]}") res_kout[$name]=$(median_int "${kout[@]}") res_kpeak[$name]=$(median_int "${kpk[@]}")
  fi
done

# ---- The table ----

echo
printf '%-16s %8s %8s %8s %6s %6s %9s %10s %6s %17s %17s\n' program "native s" "peak MiB" "emu s" ratio limit \
  "emu-lim s" "kern-lim s" ratio "emu swap in/out" "kern swap in/out"
ratios1=() ratios2=() notes=()
for name in "${names[@]}"; do
  if [ -n "${skip[$name]:-}" ]; then
    printf '%-16s skipped: %s\n' "$name" "${skip[$name]}"
    continue
  fi
  [ -n "${res_status[$name]:-}" ] || continue
  if [ "${res_status[$name]}" != ok ]; then
    printf '%-16s %s\n' "$name" "${res_status[$name]}" | sed "s|$work/||g" | cut -c1-200
    continue
  fi
  r1=$(ratio "${res_emu[$name]}" "${res_native[$name]}")
  ratios1+=("$r1")
  lim=- el=- eio=- kl=- kio=- r2=-
  if [ -n "${res_nolimit[$name]}" ]; then
    notes+=("$name: not run under a limit: ${res_nolimit[$name]}")
  else
    lim=${limit_mb[$name]}M el=${res_emul[$name]} eio="${res_ein[$name]}/${res_eout[$name]}"
    if [ -n "${res_kern[$name]:-}" ]; then
      kl=${res_kern[$name]} kio="${res_kin[$name]}/${res_kout[$name]}"
      r2=$(ratio "$el" "$kl")
    fi
    if [ -n "${res_kstatus[$name]}" ]; then
      [ "$kl" = - ] && kl=failed
      notes+=("$name: kernel-limit: ${res_kstatus[$name]}")
    elif [ "${res_kooms[$name]:-0}" -gt 0 ]; then
      notes+=("$name: the kernel's cgroup OOM-killed ${res_kooms[$name]} of ${res_ktries[$name]} kernel-limit runs (each tried again; the time is the median of the others)")
    fi
    if [ "$r2" != - ]; then
      if [ "${res_eout[$name]}" = 0 ]; then
        r2="($(printf '%.2f' "$r2"))"
        notes+=("$name: emu swapped nothing under the limit (the memory above it is not emu's, e.g. what an allocator mapped before emu started: mimalloc's first 32 MiB); ratio not in the mean")
      else
        ratios2+=("$r2")
        r2=$(printf '%.2fx' "$r2")
      fi
    fi
  fi
  printf '%-16s %8.3f %8.1f %8.3f %5.2fx %6s %9s %10s %6s %17s %17s\n' "$name" "${res_native[$name]}" \
    "$(awk -v k="${res_nrss[$name]}" 'BEGIN {print k / 1024}')" "${res_emu[$name]}" "$r1" "$lim" \
    "$el" "$kl" "$r2" "$eio" "$kio"
done
[ -n "$kernel_why" ] && notes+=("kernel-limit runs skipped: $kernel_why")
for note in "${notes[@]}"; do echo "  $note" | sed "s|$work/||g"; done
g1=$(geomean "${ratios1[@]}")
g2=$(geomean "${ratios2[@]}")
verdict() {  # verdict MEAN TARGET
  [ "$1" = - ] && { echo "n/a"; return; }
  awk -v m="$1" -v t="$2" 'BEGIN {print m <= t ? "met" : "MISSED"}'
}
echo
echo "geometric mean emu / native:             ${g1}${ratios1:+x} over ${#ratios1[@]} programs (target <= 1.15x: $(verdict "$g1" 1.15))"
if [ -n "$kernel_why" ]; then
  echo "geometric mean emu-limit / kernel-limit: - (kernel-limit runs skipped: $kernel_why)"
else
  echo "geometric mean emu-limit / kernel-limit: ${g2}${ratios2:+x} over ${#ratios2[@]} programs (target <= 1.0x: $(verdict "$g2" 1.0))"
fi
echo "times: median of $reps run(s), seconds; limit: half the native peak RSS (>= 4M); swap: 4 KiB pages (kernel: system-wide)"
echo "commit $commit${dirty:+ (working tree has changes)}"

# ---- JSON ----

json_num() { [ -n "$1" ] && [ "$1" != - ] && echo "$1" || echo null; }
if [ -n "$json" ]; then
  {
    printf '{"benchmark":"programs_bench","commit":%s,"quick":%s,"reps":%d,"swap_mb":%d,"swap_dir":%s,' \
      "$(json_str "$commit")" "$([ $quick = 1 ] && echo true || echo false)" "$reps" "$swap_mb" "$(json_str "$dir")"
    printf '"kernel_skipped":%s,' "$([ -z "$kernel_why" ] && echo null || json_str "$kernel_why")"
    printf '"geomean_emu_over_native":%s,"target_emu_over_native":1.15,' "$(json_num "$g1")"
    printf '"geomean_emu_limit_over_kernel_limit":%s,"target_emu_limit_over_kernel_limit":1.0,"rows":[' "$(json_num "$g2")"
    sep=
    for name in "${names[@]}"; do
      [ -n "${res_status[$name]:-}${skip[$name]:-}" ] || continue
      printf '%s\n{"program":%s' "$sep" "$(json_str "$name")"
      sep=,
      if [ -n "${skip[$name]:-}" ]; then
        printf ',"status":%s}' "$(json_str "skipped: ${skip[$name]}")"
        continue
      fi
      setup_case "$name"
      printf ',"command":%s,"ld_preload":%s,"status":%s' "$(json_str "$(echo "${cmd[*]}" | sed "s|$work/||g")")" \
        "$([ -n "$alloc" ] && json_str "$alloc" || echo null)" "$(json_str "${res_status[$name]}")"
      if [ "${res_status[$name]}" = ok ]; then
        printf ',"native_s":%s,"native_peak_kb":%s,"emu_s":%s,"emu_over_native":%s' "${res_native[$name]}" \
          "${res_nrss[$name]}" "${res_emu[$name]}" "$(ratio "${res_emu[$name]}" "${res_native[$name]}")"
        if [ -n "${res_nolimit[$name]}" ]; then
          printf ',"no_limit_runs":%s' "$(json_str "${res_nolimit[$name]}")"
        else
          printf ',"limit_bytes":%d,"emu_limit_s":%s,"emu_pswpin":%s,"emu_pswpout":%s,"emu_peak_anon_pages":%s' \
            $((limit_mb[$name] << 20)) "${res_emul[$name]}" "${res_ein[$name]}" "${res_eout[$name]}" "${res_epeak[$name]}"
          printf ',"kernel_limit_s":%s,"kernel_pswpin":%s,"kernel_pswpout":%s,"kernel_max_usage_bytes":%s' \
            "$(json_num "${res_kern[$name]:-}")" "$(json_num "${res_kin[$name]:-}")" \
            "$(json_num "${res_kout[$name]:-}")" "$(json_num "${res_kpeak[$name]:-}")"
          printf ',"kernel_runs":%s,"kernel_oom_kills":%s,"kernel_status":%s,"emu_limit_over_kernel_limit":%s' \
            "${res_ktries[$name]:-0}" "${res_kooms[$name]:-0}" "$([ -n "${res_kstatus[$name]}" ] && json_str "${res_kstatus[$name]}" || echo null)" \
            "$([ -n "${res_kern[$name]:-}" ] && ratio "${res_emul[$name]}" "${res_kern[$name]}" || echo null)"
        fi
      fi
      printf '}'
    done
    printf ']}\n'
  } >"$json"
  echo "rows written to $json"
fi

exit $failed
