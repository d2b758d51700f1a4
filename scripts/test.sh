#!/usr/bin/env bash
# The README's second command: installs what kleap needs, builds it from scratch with
# warnings as errors, checks formatting, and runs the unit, cr, workload and vm test tiers.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build-test}
"$top/scripts/install-deps.sh"
"$top/scripts/check-format.sh"
rm -rf "$build"
BUILD_DIR=$build "$top/scripts/build.sh" -DKLEAP_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
cd "$build"
ctest -L '^(unit|cr|workload|dbus|net|vm)$' --output-on-failure --timeout 300
