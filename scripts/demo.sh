#!/usr/bin/env bash
# The main job: install dependencies, build (Release), and run `emu run` on
# its embedded default workload (emu workload, 256 MiB under a 128 MiB limit:
# zero page, copy on write, swap out and in, mremap, fork, the brk heap),
# which prints emu's summary at the end. Extra arguments go to `emu run`,
# e.g. scripts/demo.sh --mem-limit 64M -- python3 -c 'print(1)'.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
exec build/release/emu/cli/emu run "$@"
