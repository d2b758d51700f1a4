#!/usr/bin/env bash
# Builds the fuzz targets of tests/fuzz with libFuzzer, ASan and UBSan and runs each for
# a bounded time:
#
#   memstore_fuzz  the memstore's on-media parsers (memstore/format.cc), built with
#                  clang++ straight from the sources;
#   images_fuzz    the restore side's checks of an image set (LoadPlan, CheckPlan,
#                  ValidatePlan, PlanTasks and the per-kind validators), built with CMake:
#                  the engine needs protobuf, libnl, nftables and libcap.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   SECONDS for each target, default 60;
#                                            TARGET memstore or images, default both
#
# For each target it prints the executions, executions per second, the size of the
# corpus and, after a clean run, the source coverage of the parsers and validators the
# corpus reaches (a replay through a coverage build).
#
# Environment: FUZZ_OUT (default /tmp/kleap-fuzz) holds the binaries, corpora (kept
# between runs), logs and crashes: memstore_fuzz's at the top, images_fuzz's in
# FUZZ_OUT/images. FUZZ_BUILD (default /tmp/kleap-fuzz-build) holds the CMake builds of
# images_fuzz (fuzz/: sanitizers; coverage/). CC and CXX (default clang and clang++);
# FUZZ_JOBS (default 1) for ninja; FUZZ_ARGS adds libFuzzer options; FUZZ_COVERAGE=0
# skips the coverage reports (they need llvm-cov and llvm-profdata). images_fuzz's
# seeds are made from image sets written by `kleap dump`: FUZZ_IMAGE_SETS (default
# FUZZ_OUT/images/sets) is filled once by tests/fuzz/make-image-sets.sh with KLEAP
# (default build/kleap) when it is empty and this runs as root; without it the seeds are
# a set made in code. KLEAP_FUZZ_IGNORE=rule,... leaves out rules of images_fuzz that
# stand for findings reported already (tests/fuzz/README.md).
#
# Exit status: 0 when every run ends without a finding, 1 when one finds a crash, a
# leak, a broken rule or a timeout (the other targets still run), 2 when a build fails.
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
case $secs in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a whole number, not '$secs'" >&2; exit 2 ;;
esac
shift $(($# > 0 ? 1 : 0))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(memstore images)
for t in "${targets[@]}"; do
  case $t in
    memstore | images) ;;
    *) echo "fuzz.sh: unknown target '$t' (memstore, images)" >&2; exit 2 ;;
  esac
done
out=${FUZZ_OUT:-/tmp/kleap-fuzz}
build=${FUZZ_BUILD:-/tmp/kleap-fuzz-build}
cc=${CC:-clang}
cxx=${CXX:-clang++}
jobs=${FUZZ_JOBS:-1}
have_cov() {
  [ "${FUZZ_COVERAGE:-1}" != 0 ] && command -v llvm-cov >/dev/null && command -v llvm-profdata >/dev/null
}

# Runs a built target: fuzz [FUZZ_ARGS] the corpus (written to) and the seeds (read).
#   run_fuzzer NAME BINARY CORPUS SEEDS CRASHES LOG MAX_LEN
# Prints the last status line, executions, exec/s and the corpus size; returns libFuzzer's
# exit status.
run_fuzzer() {
  local name=$1 bin=$2 corpus=$3 seeds=$4 crashes=$5 log=$6 max_len=$7 rc
  echo "fuzz.sh: $name: fuzzing for ${secs}s (log: $log, corpus: $corpus)"
  # shellcheck disable=SC2086
  nice -n 19 "$bin" -max_total_time="$secs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$crashes/" ${FUZZ_ARGS:-} \
    "$corpus" "$seeds" >"$log" 2>&1
  rc=$?
  grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 | sed "s/^/fuzz.sh: $name: /"
  local execs eps
  execs=$(grep -m 1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  eps=$(grep -m 1 '^stat::average_exec_per_sec' "$log" | awk '{print $2}')
  echo "fuzz.sh: $name: ${execs:-?} executions, ${eps:-?} exec/s," \
    "corpus $(find "$corpus" -type f | wc -l) inputs (+ $(find "$seeds" -type f | wc -l) seeds)"
  return $rc
}

# Reports a finding of a run that failed: the report, and how to reproduce.
report_finding() {
  local name=$1 bin=$2 crashes=$3 log=$4 rc=$5
  echo "fuzz.sh: $name: FAILED (libFuzzer exit $rc); the report:" >&2
  grep -E -A 40 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|runtime error|_fuzz: (a parser|rule)|Check failed|CHECK failed' \
    "$log" | head -n 80 >&2
  find "$crashes" -type f -newer "$bin" -printf "fuzz.sh: $name: reproduce: %p\n" >&2
  echo "fuzz.sh: $name: run '$bin FILE' on a file above to reproduce" >&2
}

status=0
finding() { status=1; }
build_failed() { [ "$status" = 1 ] || status=2; }

# ---------------------------------------------------------------- memstore_fuzz
run_memstore() {
  mkdir -p "$out/corpus" "$out/seeds" "$out/crashes" || return 2
  # format.cc needs only header-only parts of engine/base (result.h) and libxxhash.
  local sources=("$top/memstore/format.cc" "$top/tests/fuzz/memstore_fuzz.cc")
  local common=(-std=gnu++20 -I "$top" -g -O1 -fno-omit-frame-pointer -Wall -Wextra -Wno-missing-field-initializers)

  echo "fuzz.sh: memstore: building $out/memstore_fuzz"
  nice -n 19 "$cxx" "${common[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    "${sources[@]}" -lxxhash -o "$out/memstore_fuzz" || { echo "fuzz.sh: memstore: build failed" >&2; return 2; }
  nice -n 19 "$cxx" "${common[@]}" -DKLEAP_FUZZ_MAKE_SEEDS "${sources[@]}" -lxxhash -o "$out/make_seeds" ||
    { echo "fuzz.sh: memstore: build of the seed writer failed" >&2; return 2; }
  "$out/make_seeds" "$out/seeds" || return 2

  local rc
  run_fuzzer memstore "$out/memstore_fuzz" "$out/corpus" "$out/seeds" "$out/crashes" \
    "$out/fuzz.log" 16384
  rc=$?
  if [ "$rc" -ne 0 ]; then
    report_finding memstore "$out/memstore_fuzz" "$out/crashes" "$out/fuzz.log" "$rc"
    return 1
  fi
  echo "fuzz.sh: memstore: OK, no finding in ${secs}s"

  # How much of the parsers the corpus reaches: replay it through a coverage build.
  have_cov || return 0
  local cov=$out/coverage
  mkdir -p "$cov"
  rm -f "$cov"/*.profraw
  if nice -n 19 "$cxx" "${common[@]}" -O0 -fsanitize=fuzzer -fprofile-instr-generate -fcoverage-mapping \
    "${sources[@]}" -lxxhash -o "$cov/memstore_fuzz_cov" 2>"$cov/build.log" &&
    LLVM_PROFILE_FILE="$cov/run.profraw" "$cov/memstore_fuzz_cov" -runs=0 "$out/corpus" "$out/seeds" \
      >"$cov/run.log" 2>&1 &&
    llvm-profdata merge -sparse "$cov/run.profraw" -o "$cov/run.profdata"; then
    echo "fuzz.sh: memstore: source coverage of the parsers by the corpus (regions, lines, branches):"
    llvm-cov report "$cov/memstore_fuzz_cov" -instr-profile="$cov/run.profdata" -show-functions \
      "$top/memstore/format.cc" 2>/dev/null |
      awk '/Parse(Superblock|Commit|Table)/ { n = $1; sub(/^_ZN5kleap8memstore[0-9]+/, "", n); sub(/E.*/, "", n);
             printf "  %-16s regions %s  lines %s  branches %s\n", n, $4, $7, $10 }'
  else
    echo "fuzz.sh: memstore: (no coverage report: see $cov)"
  fi
  return 0
}

# ---------------------------------------------------------------- images_fuzz
# The sources of the restore side's checks, and which of their functions are checks
# (demangled names): the coverage report counts these.
check_files=(engine/restore_plan.cc engine/leaders.cc engine/share.cc engine/timens.cc
  engine/fown.cc engine/files.cc engine/pipe.cc engine/eventfd.cc engine/timerfd.cc
  engine/signalfd.cc engine/epoll.cc engine/inotify.cc engine/tty.cc engine/memfd.cc
  engine/sock_unix.cc engine/sock_inet.cc engine/sock_netlink.cc engine/ipc.cc engine/aio.cc
  engine/timers.cc engine/seccomp.cc engine/locks.cc engine/images/image_set.cc
  engine/inspect.cc engine/net/netconf.cc)
check_funcs='kleap::(net::)?(Validate[A-Za-z]*|LoadPlan|CheckPlan|PlanTasks|AssignHelperFds|TaskPlan::table_prev|TaskCreators|CheckPageBlobSizes|VerifyBlobs|CheckFileIdentities|CheckPidsFree|SharedSeccompPrefix|InspectImages|ShowNetImage|UnframeMessage|ImageReader::(ReadMessage|VerifyImage|Find)|OpenDirImageSet|\(anonymous namespace\)::(PlanSharing|DirImageReader::[A-Za-z]+|DirBlobReader::(ReadAt|Map|Unmap)|MessageFor|IsRawBlob))\('

# Configures (once) and builds images_fuzz and its seed writer in a CMake build dir.
#   cmake_build DIR FLAGS TARGET...
cmake_build() {
  local dir=$1 flags=$2
  shift 2
  if [ ! -f "$dir/build.ninja" ] && [ ! -f "$dir/Makefile" ]; then
    local gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    nice -n 19 cmake -S "$top" -B "$dir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Debug \
      -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
      -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
      -DKLEAP_FUZZ=ON -DKLEAP_BUILD_M32=OFF >"$dir.configure.log" 2>&1 ||
      { echo "fuzz.sh: images: cmake failed, see $dir.configure.log" >&2; return 2; }
  fi
  nice -n 19 cmake --build "$dir" -j "$jobs" --target "$@" >"$dir.build.log" 2>&1 ||
    { tail -n 30 "$dir.build.log" >&2; echo "fuzz.sh: images: build failed, see $dir.build.log" >&2; return 2; }
}

run_images() {
  local io=$out/images
  local sets=${FUZZ_IMAGE_SETS:-$io/sets}
  mkdir -p "$io/corpus" "$io/seeds" "$io/crashes" "$io/tmp" "$build" || return 2
  local san="-O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all"
  echo "fuzz.sh: images: building $build/fuzz/tests/fuzz/images_fuzz (CMake, -j$jobs)"
  cmake_build "$build/fuzz" "$san" images_fuzz images_fuzz_seeds || return 2
  local bin=$build/fuzz/tests/fuzz/images_fuzz

  # Seeds: the image sets a real dump writes (made once), as inputs.
  if [ -z "$(ls -A "$sets" 2>/dev/null)" ] && [ "$(id -u)" = 0 ] && [ -x "${KLEAP:-$top/build/kleap}" ]; then
    echo "fuzz.sh: images: dumping image sets for the seeds into $sets"
    nice -n 19 bash "$top/tests/fuzz/make-image-sets.sh" "${KLEAP:-$top/build/kleap}" "$sets" \
      "$(dirname "${KLEAP:-$top/build/kleap}")/tests/cr" 2>"$io/make-image-sets.log" ||
      echo "fuzz.sh: images: no image set written (see $io/make-image-sets.log)"
  fi
  local setdirs=()
  for d in "$sets"/*/; do
    [ -f "$d/inventory.img" ] && setdirs+=("${d%/}")
  done
  [ ${#setdirs[@]} -gt 0 ] || echo "fuzz.sh: images: no image set in $sets: the seeds are the set made in code"
  rm -f "$io/seeds"/seed-*
  "$build/fuzz/tests/fuzz/images_fuzz_seeds" "$io/seeds" "${setdirs[@]}" ||
    { echo "fuzz.sh: images: the seed writer failed" >&2; return 2; }

  local rc
  KLEAP_FUZZ_TMP=$io/tmp run_fuzzer images "$bin" "$io/corpus" "$io/seeds" "$io/crashes" \
    "$io/fuzz.log" 65536
  rc=$?
  rm -rf "${io:?}/tmp"/kleap-images-fuzz.*
  if [ "$rc" -ne 0 ]; then
    report_finding images "$bin" "$io/crashes" "$io/fuzz.log" "$rc"
    return 1
  fi
  echo "fuzz.sh: images: OK, no finding in ${secs}s"

  have_cov || return 0
  local cov=$io/coverage
  mkdir -p "$cov"
  rm -f "$cov"/*.profraw
  echo "fuzz.sh: images: building the coverage build in $build/coverage"
  if ! cmake_build "$build/coverage" "-O0 -fprofile-instr-generate -fcoverage-mapping" images_fuzz; then
    echo "fuzz.sh: images: (no coverage report)"
    return 0
  fi
  local cbin=$build/coverage/tests/fuzz/images_fuzz
  mkdir -p "$io/tmp"
  if ! KLEAP_FUZZ_TMP=$io/tmp LLVM_PROFILE_FILE="$cov/run.profraw" nice -n 19 "$cbin" -runs=0 \
    -max_len=65536 "$io/corpus" "$io/seeds" >"$cov/run.log" 2>&1 ||
    ! llvm-profdata merge -sparse "$cov/run.profraw" -o "$cov/run.profdata"; then
    echo "fuzz.sh: images: (no coverage report: see $cov/run.log)"
    return 0
  fi
  rm -rf "${io:?}/tmp"/kleap-images-fuzz.*
  local files=()
  for f in "${check_files[@]}"; do files+=("$top/$f"); done
  echo "fuzz.sh: images: source coverage of the checks by the corpus (their functions in each file; the whole file in brackets):"
  # Per file: the lines and functions of its checks (the functions matching check_funcs),
  # and the whole file's, which holds the dump and restore code no check reaches.
  llvm-cov report "$cbin" -instr-profile="$cov/run.profdata" -show-functions "${files[@]}" \
    2>/dev/null | c++filt >"$cov/functions.txt"
  llvm-cov report "$cbin" -instr-profile="$cov/run.profdata" "${files[@]}" 2>/dev/null \
    >"$cov/files.txt"
  awk -v re="$check_funcs" -v top="$top/" '
    FNR == NR {  # files.txt: Filename Regions Missed Cover Functions Missed Executed Lines Missed Cover ...
      # (llvm-cov leaves out the prefix the files share: the names end the paths)
      if ($1 ~ /\.cc$/) { whole_l[$1] = $8; whole_lm[$1] = $9; whole_f[$1] = $5; whole_fm[$1] = $6 }
      next
    }
    /^File / { file = $2; gsub(/[\047:]/, "", file); sub(top, "", file); next }
    $0 ~ re {
      # Name (with spaces), then 9 numbers: regions missed cover lines missed cover branches missed cover
      n = NF; lines = $(n - 5); lmiss = $(n - 4)
      if (lines !~ /^[0-9]+$/) next
      L[file] += lines; LM[file] += lmiss; F[file]++; if (lines > lmiss) FH[file]++
      if (!(file in seen)) { seen[file] = 1; order[++k] = file }
    }
    END {
      for (i = 1; i <= k; i++) {
        f = order[i]; tl += L[f]; tlm += LM[f]; tf += F[f]; tfh += FH[f]; w = ""
        for (n in whole_l)
          if (("/" f) ~ ("/" n "$") && length(n) > length(w)) w = n
        printf "  %-28s lines %5d/%-5d %5.1f%%  functions %3d/%-3d   [file: lines %s/%s, functions %s/%s]\n",
          f, L[f] - LM[f], L[f], L[f] ? 100 * (L[f] - LM[f]) / L[f] : 0, FH[f], F[f],
          whole_l[w] - whole_lm[w], whole_l[w], whole_f[w] - whole_fm[w], whole_f[w]
      }
      printf "  %-28s lines %5d/%-5d %5.1f%%  functions %3d/%-3d\n", "all checks", tl - tlm, tl,
        tl ? 100 * (tl - tlm) / tl : 0, tfh, tf
    }' "$cov/files.txt" "$cov/functions.txt"
  echo "fuzz.sh: images: per function: $cov/functions.txt"
  return 0
}

for t in "${targets[@]}"; do
  "run_$t"
  case $? in
    0) ;;
    1) finding ;;
    *) build_failed ;;
  esac
done
[ "$status" = 0 ] && echo "fuzz.sh: OK, no finding in ${secs}s per target (${targets[*]})"
exit "$status"
