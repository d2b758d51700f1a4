#!/usr/bin/env bash
# Fails when a C or C++ source differs from what clang-format makes of it.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
mapfile -t files < <(git ls-files '*.cc' '*.h' '*.c' 2>/dev/null || find engine tests scripts -name '*.cc' -o -name '*.h' -o -name '*.c')
if ((${#files[@]} == 0)); then echo "check-format: no sources found" >&2; exit 1; fi
if ! clang-format --dry-run --Werror "${files[@]}" 2>/tmp/kleap-format.$$; then
  head -40 /tmp/kleap-format.$$ >&2
  rm -f /tmp/kleap-format.$$
  echo "check-format: run: clang-format -i \$(git ls-files '*.cc' '*.h' '*.c')" >&2
  exit 1
fi
rm -f /tmp/kleap-format.$$
echo "check-format: ${#files[@]} files formatted"
