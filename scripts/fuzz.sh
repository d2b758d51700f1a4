#!/usr/bin/env bash
# Builds the memstore parser fuzzer (tests/fuzz/memstore_fuzz.cc) with libFuzzer, ASan
# and UBSan straight from the sources, and runs it for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]        default 60
#
# Environment: FUZZ_OUT (default /tmp/kleap-fuzz) holds the binaries, the corpus (kept
# between runs), the log and any crash; CXX (default clang++); FUZZ_ARGS adds libFuzzer
# options; FUZZ_COVERAGE=0 skips the source coverage report of the parsers, which
# otherwise follows a clean run when llvm-cov and llvm-profdata are installed. Exit status: 0 when the run ends without a finding, 1 on a crash, a leak, a
# broken rule or a timeout, 2 when the build fails.
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
out=${FUZZ_OUT:-/tmp/kleap-fuzz}
cxx=${CXX:-clang++}
case $secs in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$secs'" >&2; exit 2 ;;
esac

mkdir -p "$out/corpus" "$out/seeds" "$out/crashes" || exit 2

# format.cc needs only header-only parts of engine/base (result.h) and libxxhash.
sources=("$top/memstore/format.cc" "$top/tests/fuzz/memstore_fuzz.cc")
common=(-std=gnu++20 -I "$top" -g -O1 -fno-omit-frame-pointer -Wall -Wextra -Wno-missing-field-initializers)

echo "fuzz.sh: building $out/memstore_fuzz"
"$cxx" "${common[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  "${sources[@]}" -lxxhash -o "$out/memstore_fuzz" || { echo "fuzz.sh: build failed" >&2; exit 2; }
"$cxx" "${common[@]}" -DKLEAP_FUZZ_MAKE_SEEDS "${sources[@]}" -lxxhash -o "$out/make_seeds" ||
  { echo "fuzz.sh: build of the seed writer failed" >&2; exit 2; }
"$out/make_seeds" "$out/seeds" || exit 2

log=$out/fuzz.log
echo "fuzz.sh: fuzzing for ${secs}s (log: $log, corpus: $out/corpus)"
# The first directory is the corpus libFuzzer adds to; the seeds are only read.
# shellcheck disable=SC2086
"$out/memstore_fuzz" -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$out/crashes/" ${FUZZ_ARGS:-} \
  "$out/corpus" "$out/seeds" >"$log" 2>&1
rc=$?

# The last status line and the final statistics.
grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -n 1
grep -E '^stat::' "$log"
echo "fuzz.sh: corpus holds $(find "$out/corpus" -type f | wc -l) inputs"

if [ "$rc" -ne 0 ]; then
  echo "fuzz.sh: FAILED (libFuzzer exit $rc); the report:" >&2
  grep -E -A 30 'ERROR: (libFuzzer|AddressSanitizer)|runtime error|memstore_fuzz: a parser' "$log" | head -n 60 >&2
  find "$out/crashes" -type f -newer "$out/memstore_fuzz" -printf 'fuzz.sh: reproduce: %p\n' >&2
  echo "fuzz.sh: run '$out/memstore_fuzz FILE' on a file above to reproduce" >&2
  exit 1
fi
echo "fuzz.sh: OK, no crash in ${secs}s"

# How much of the parsers the corpus reaches: replay it through a coverage build.
if [ "${FUZZ_COVERAGE:-1}" != 0 ] && command -v llvm-cov >/dev/null && command -v llvm-profdata >/dev/null; then
  cov=$out/coverage
  mkdir -p "$cov"
  rm -f "$cov"/*.profraw
  if "$cxx" "${common[@]}" -O0 -fsanitize=fuzzer -fprofile-instr-generate -fcoverage-mapping \
    "${sources[@]}" -lxxhash -o "$cov/memstore_fuzz_cov" 2>"$cov/build.log" &&
    LLVM_PROFILE_FILE="$cov/run.profraw" "$cov/memstore_fuzz_cov" -runs=0 "$out/corpus" "$out/seeds" \
      >"$cov/run.log" 2>&1 &&
    llvm-profdata merge -sparse "$cov/run.profraw" -o "$cov/run.profdata"; then
    echo "fuzz.sh: source coverage of the parsers by the corpus (regions, lines, branches):"
    llvm-cov report "$cov/memstore_fuzz_cov" -instr-profile="$cov/run.profdata" -show-functions \
      "$top/memstore/format.cc" 2>/dev/null |
      awk '/Parse(Superblock|Commit|Table)/ { n = $1; sub(/^_ZN5kleap8memstore[0-9]+/, "", n); sub(/E.*/, "", n);
             printf "  %-16s regions %s  lines %s  branches %s\n", n, $4, $7, $10 }'
  else
    echo "fuzz.sh: (no coverage report: see $cov)"
  fi
fi
