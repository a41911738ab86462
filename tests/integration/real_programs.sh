#!/usr/bin/env bash
# Real programs from Debian packages, unmodified, under `emu run` with a
# memory limit below their peak (so that pages go to swap and come back),
# checked by their own means: outputs against a native run of the same
# command, round trips, the program's own integrity checks.
#
#   real_programs.sh EMU_BINARY CASE
#
# Exit 0: passed; 1: failed; 77: skipped (a package is missing; says which).
set -uo pipefail
emu=$1
case_name=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/emu-real.XXXXXX")
trap 'rm -rf "$work"' EXIT

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAILED: $*"; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || skip "$1 is not installed (scripts/install-deps.sh installs it)"; }
lib() {  # lib NAME: path of a shared library, or skip
  local p
  p=$(/sbin/ldconfig -p | awk -v n="$1" '$1 == n {print $NF; exit}')
  [ -n "$p" ] || skip "$1 is not installed (scripts/install-deps.sh installs it)"
  echo "$p"
}

# emu_check LIMIT EXPECTED_FILE COMMAND...: runs COMMAND under emu with LIMIT,
# compares its stdout with EXPECTED_FILE, and requires swap traffic.
emu_check() {
  local limit=$1 expected=$2
  shift 2
  "$emu" run --mem-limit "$limit" --swap-size 512M --stats "$work/stats.json" --summary "$work/summary" -- "$@" \
    >"$work/out" 2>"$work/err"
  local rc=$?
  cat "$work/summary" 2>/dev/null
  [ $rc -eq 0 ] || { cat "$work/err"; fail "$* exited $rc under emu"; }
  cmp -s "$work/out" "$expected" || { diff <(head -c 2000 "$work/out") <(head -c 2000 "$expected"); fail "$*: output differs from the native run"; }
  local out_pages
  out_pages=$(grep -o '"pswpout":[0-9]*' "$work/stats.json" | head -1 | cut -d: -f2)
  [ "${out_pages:-0}" -gt 0 ] || fail "$*: no page went to swap under $limit (limit not below the peak?)"
  echo "ok: $* (limit $limit, $(grep -c '"pid"' "$work/stats.json") process(es), ${out_pages} pages swapped out)"
}

py=/usr/bin/python3
case "$case_name" in
python)
  [ -x $py ] || skip "python3 is not installed"
  cat >"$work/prog.py" <<'PY'
import hashlib, random
random.seed(7)
d = {i: random.random() for i in range(400000)}
s = sorted(d.items(), key=lambda kv: kv[1])
h = hashlib.sha256(repr(s[:1000]).encode() + str(len(s)).encode()).hexdigest()
lists = [[j * i for j in range(50)] for i in range(20000)]
print(h, sum(map(sum, lists)))
PY
  $py "$work/prog.py" >"$work/expected" || fail "native python"
  emu_check 96M "$work/expected" $py "$work/prog.py"
  ;;
sqlite)
  need sqlite3
  cat >"$work/q.sql" <<'SQL'
PRAGMA cache_size = -65536;
CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT, w INTEGER);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300000)
  INSERT INTO t SELECT i, printf('%08d-%s', i, substr('abcdefghijklmnopqrstuvwxyz', i % 26, 10)), (i * 7919) % 100003 FROM c;
CREATE INDEX tw ON t(w);
SELECT count(*), sum(length(v)), sum(w) FROM t;
SELECT k, v FROM t WHERE w BETWEEN 5000 AND 5003 ORDER BY k;
PRAGMA integrity_check;
SQL
  sqlite3 :memory: -init "$work/q.sql" .quit >"$work/expected" 2>/dev/null || fail "native sqlite3"
  emu_check 16M "$work/expected" sqlite3 :memory: -init "$work/q.sql" .quit
  ;;
xz)
  need xz
  head -c 1500000 /dev/urandom | base64 >"$work/in"
  "$emu" run --mem-limit 32M --no-summary -- xz -6 -T1 -c "$work/in" >"$work/in.xz" || fail "xz under emu"
  xz -dc "$work/in.xz" | cmp -s - "$work/in" || fail "xz round trip"
  xz -t "$work/in.xz" || fail "xz -t"
  "$emu" run --mem-limit 4M --no-summary -- xz -dc "$work/in.xz" >"$work/back" || fail "xz -d under emu"
  cmp -s "$work/back" "$work/in" || fail "xz -d under emu: round trip"
  echo "ok: xz compress and decompress under emu, round trips checked"
  ;;
zstd-threads)
  need zstd
  head -c 2000000 /dev/urandom | base64 >"$work/in"
  "$emu" run --mem-limit 48M --swap-size 256M --stats "$work/stats.json" -- zstd -q -T2 -19 -c "$work/in" >"$work/in.zst" || fail "zstd under emu"
  zstd -q -t "$work/in.zst" || fail "zstd -t"
  zstd -q -dc "$work/in.zst" | cmp -s - "$work/in" || fail "zstd round trip"
  grep -q '"pswpout":[1-9]' "$work/stats.json" || fail "zstd: no swap traffic under 48M"
  echo "ok: zstd -T2 -19 under emu (2 worker threads), round trip checked"
  ;;
forking-server)
  [ -x $py ] || skip "python3 is not installed"
  cat >"$work/server.py" <<'PY'
import hashlib, os, socket, socketserver, threading
big = bytearray(os.urandom(1 << 20) * 24)          # 24 MiB the children inherit
digest = hashlib.sha256(big).hexdigest()
class H(socketserver.StreamRequestHandler):
    def handle(self):
        n = int(self.rfile.readline())
        # Each forked child hashes the parent's memory and its own work.
        local = bytearray(n)
        for i in range(0, n, 4096): local[i] = i % 251
        self.wfile.write((hashlib.sha256(big).hexdigest() + " " +
                          hashlib.sha256(local).hexdigest() + "\n").encode())
srv = socketserver.ForkingTCPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
ok = True
for n in (1 << 20, 4 << 20, 8 << 20, 1 << 20):
    c = socket.create_connection(srv.server_address)
    c.sendall(b"%d\n" % n)
    parent_hash, local_hash = c.makefile().readline().split()
    ref = bytearray(n)
    for i in range(0, n, 4096): ref[i] = i % 251
    ok &= parent_hash == digest and local_hash == hashlib.sha256(ref).hexdigest()
    c.close()
srv.shutdown()
print("forking server", "ok" if ok else "MISMATCH")
PY
  echo "forking server ok" >"$work/expected"
  emu_check 16M "$work/expected" $py "$work/server.py"
  # Its four children stayed on the emulator under their own limit, on
  # the parent's swap file (each wrote its own statistics).
  ! grep -q "leaves the emulator" "$work/err" || { cat "$work/err"; fail "a child left the emulator"; }
  [ "$(grep -c '"pid"' "$work/stats.json")" -ge 5 ] || fail "fewer than 5 processes reported statistics"
  ;;
jemalloc|tcmalloc|mimalloc)
  # sqlite3 with the allocator preloaded after emu. Memory an allocator maps
  # while emu itself starts stays native (mimalloc reserves its first 32 MiB
  # then, from emu's own first malloc), so the workload is larger than that.
  need sqlite3
  case "$case_name" in
    jemalloc) so=$(lib libjemalloc.so.2) ;;
    tcmalloc) so=$(lib libtcmalloc.so.4) ;;
    mimalloc) so=$(lib libmimalloc.so.2) ;;
  esac
  cat >"$work/q.sql" <<'SQL'
PRAGMA cache_size = -65536;
CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1200000)
  INSERT INTO t SELECT i, printf('%020d:%s', i * 31, substr('0123456789abcdef', 1 + i % 16, 12)) FROM c;
SELECT count(*), sum(length(v)), max(v) FROM t;
PRAGMA integrity_check;
SQL
  LD_PRELOAD=$so sqlite3 :memory: -init "$work/q.sql" .quit >"$work/expected" 2>/dev/null || fail "native sqlite3 with $case_name"
  limit=32M
  [ "$case_name" = mimalloc ] && limit=16M
  LD_PRELOAD=$so emu_check $limit "$work/expected" sqlite3 :memory: -init "$work/q.sql" .quit
  grep -q '"pgfault":[1-9]' "$work/stats.json" || fail "$case_name: the allocator's memory did not reach emu"
  ;;
lua)
  need lua5.4
  cat >"$work/prog.lua" <<'LUA'
local t = {}
for i = 1, 300000 do t[i] = string.format("%09d", (i * 7919) % 1000003) end
table.sort(t)
local acc = 0
for i = 1, #t, 997 do acc = (acc * 31 + tonumber(t[i])) % 1000000007 end
print(#t, t[1], t[#t], acc)
LUA
  lua5.4 "$work/prog.lua" >"$work/expected" || fail "native lua"
  emu_check 16M "$work/expected" lua5.4 "$work/prog.lua"
  ;;
java)
  # A JVM: its own SIGSEGV handlers (implicit null checks, safepoint
  # polls), GC threads, and its class-data archive mapped with MAP_FIXED
  # over memory it reserved from the emulator (-Xshare:on fails instead of
  # falling back when that mapping is refused).
  need java
  cat >"$work/Work.java" <<'JAVA'
import java.util.*;
public class Work {
  public static void main(String[] a) {
    Random r = new Random(7);
    HashMap<Integer, String> m = new HashMap<>();
    for (int i = 0; i < 400000; i++) m.put(r.nextInt(), Integer.toHexString(i));
    ArrayList<String> v = new ArrayList<>(m.values());
    Collections.sort(v);
    long h = 0;
    for (String s : v) h = h * 31 + s.hashCode();
    Object o = null;
    int npe = 0;
    for (int i = 0; i < 1000; i++) { try { o.hashCode(); } catch (NullPointerException e) { npe++; } }
    System.out.println(v.size() + " " + v.get(0) + " " + h + " " + npe);
  }
}
JAVA
  jopts=(-Xshare:on -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1)
  java "${jopts[@]}" "$work/Work.java" >"$work/expected" 2>"$work/native.err" ||
    skip "java cannot run a source file here (needs a JDK with jdk.compiler): $(head -c 300 "$work/native.err")"
  emu_check 48M "$work/expected" java "${jopts[@]}" "$work/Work.java"
  ;;
*)
  echo "unknown case $case_name"; exit 2 ;;
esac
