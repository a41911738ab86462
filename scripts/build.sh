#!/usr/bin/env bash
# Configures and builds one preset (release by default): scripts/build.sh [preset]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-release}
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" 2>/dev/null || cmake --build "build/$preset"
