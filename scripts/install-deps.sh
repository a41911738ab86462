#!/usr/bin/env bash
# Installs the Debian packages emu builds with. Idempotent; needs root (or sudo).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config git
      libabsl-dev libspdlog-dev libfmt-dev liburing-dev catch2
      # The real programs the integration suite runs under emu run.
      python3 sqlite3 xz-utils zstd lua5.4 libjemalloc2 libgoogle-perftools4 libmimalloc2.0)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "install-deps: apt-get update failed; trying the install anyway" >&2
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
