#!/bin/bash
# run-batch.sh: runs a batch of cr tests one after the other and reports each by name.
# The guest batch of the vm tier (vm.cr32) runs the 32-bit cr programs with it, inside a
# guest whose kernel runs 32-bit code; it runs on a host just as well.
#
#   run-batch.sh --kleap PATH [--prefix STR] [--only REGEX] BATCH
#
# BATCH has one test a line: `NAME [VAR=VALUE]... RUNNER ARG...`, the fields separated by
# tabs (an argument may hold spaces), where RUNNER is run-cr.sh or run-init.sh (looked up
# beside this script) and the ARGs are the runner's, without --kleap (blank lines and
# lines starting with # are ignored). tests/cr's CMakeLists.txt writes the batch of every
# cr test that runs a 32-bit program, cr32.batch.
#
# For each test it prints, one a line, `STR NAME PASS|FAIL|SKIP SECONDS [REASON]`
# (STR defaults to "cr-batch:"), with the runner's output before the line of a failure,
# and at the end `STR summary passed=N failed=N skipped=N seconds=S`.
# Exit 0 when no test failed, 1 otherwise, 2 on bad usage.
set -u
here=$(cd "$(dirname "$0")" && pwd)
kleap="" prefix="cr-batch:" only="" batch=""
usage() { sed -n '5,6s/^# \{0,1\}//p' "$0" >&2; exit 2; }
while (($#)); do
  case $1 in
    --kleap) kleap=${2-}; shift 2 || usage ;;
    --prefix) prefix=${2-}; shift 2 || usage ;;
    --only) only=${2-}; shift 2 || usage ;;
    -h | --help) usage ;;
    -*) echo "run-batch: unknown option $1" >&2; usage ;;
    *) batch=$1; shift ;;
  esac
done
[[ -n $kleap && -n $batch ]] || usage
[[ -r $batch ]] || { echo "run-batch: cannot read the batch $batch" >&2; exit 2; }

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

passed=0 failed=0 skipped=0 t_all=$EPOCHREALTIME
log=$(mktemp /tmp/kleap-batch.XXXXXX) || exit 1
trap 'rm -f -- "$log"' EXIT
while IFS=$'\t' read -r -a words; do
  ((${#words[@]})) || continue
  [[ ${words[0]} == \#* ]] && continue
  name=${words[0]}
  [[ -z $only || $name =~ $only ]] || continue
  envs=()
  i=1
  while [[ ${words[i]-} == *=* ]]; do envs+=("${words[i]}"); i=$((i + 1)); done
  runner=${words[i]-}
  if [[ $runner != run-cr.sh && $runner != run-init.sh ]]; then
    echo "$prefix $name FAIL 0 no runner (run-cr.sh or run-init.sh) in its batch line"
    failed=$((failed + 1))
    continue
  fi
  t0=$EPOCHREALTIME
  env "${envs[@]}" bash "$here/$runner" --kleap "$kleap" "${words[@]:i+1}" </dev/null >"$log" 2>&1
  rc=$?
  secs=$(since "$t0")
  case $rc in
    0)
      echo "$prefix $name PASS $secs"
      passed=$((passed + 1)) ;;
    77)
      echo "$prefix $name SKIP $secs $(grep -m1 -o 'SKIP: .*' "$log" | cut -c7-)"
      skipped=$((skipped + 1)) ;;
    *)
      sed 's/^/  | /' "$log"
      echo "$prefix $name FAIL $secs $(grep -m1 -o 'FAIL: .*' "$log" | cut -c7-) (exit $rc)"
      failed=$((failed + 1)) ;;
  esac
done <"$batch"
echo "$prefix summary passed=$passed failed=$failed skipped=$skipped seconds=$(since "$t_all")"
((failed == 0))
