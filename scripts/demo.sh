#!/usr/bin/env bash
# The README's first command: installs what kleap needs, builds it, and runs the demo.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh"
BUILD_DIR=${BUILD_DIR:-$top/build} "$top/scripts/build.sh"
build=${BUILD_DIR:-$top/build}
exec "$top/scripts/kleap-demo" --build "$build" --workload "$build/kleap-demo-counter"
