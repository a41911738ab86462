#!/usr/bin/env bash
# The main job: install dependencies, build (Release), run `emu demo` on its
# built-in default workload. Extra arguments go to `emu demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
exec build/release/emu/cli/emu demo "$@"
