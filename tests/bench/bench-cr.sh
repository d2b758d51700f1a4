#!/usr/bin/env bash
# bench-cr.sh: checkpoint/restore throughput of kleap against single-thread memcpy.
#
# usage: bench-cr.sh --kleap PATH [--sizes "64 1024"] [--runs 5] [--json-out FILE]
#                    [--memhog PATH] [--memcpy-bw PATH] [--timeout SECONDS]
#
# For each size (MiB), every cycle starts a fresh memhog (tests/bench/memhog.c) in its own
# session with its state and images under a tmpfs dir (/dev/shm/kleap-bench.XXXXXX), then:
#   kleap dump --tree PID --images DIR --stats
#   wait until every pid of the dumped tree is gone from /proc
#   kleap restore --images DIR --detach --stats     (prints the root pid, then JSON)
#   SIGUSR1 -> memhog verifies its memory -> result.memhog must be PASS
#   kill the restored root by pid (normally it has already exited) and wait until gone
# A fresh memhog per cycle is needed because memhog exits after SIGUSR1. One warm-up cycle
# per size is not counted; then --runs counted cycles. Reported values are medians.
# memcpy_bw gives the hot/fresh memcpy bandwidth of the same size for the ratios.
# GB/s = 1e9 bytes/s, bytes as reported by kleap ("bytes" of the --stats line).
#
# Every process this script starts (memhog, restored roots, kleap) is tracked by pid and
# killed on any exit path; the tmpfs dirs are removed. This is a benchmark, not a test:
# it exits non-zero when a cycle fails, but has no pass/fail thresholds.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
KLEAP=""
SIZES="64 1024"
RUNS=5
JSON_OUT=""
MEMHOG=""
MEMCPY_BW=""
TIMEOUT=600         # per kleap invocation, seconds
READY_TIMEOUT=300   # memhog start-up and verification, seconds
GONE_TIMEOUT=60     # processes to disappear, seconds

usage() {
  sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

log() { printf 'bench-cr: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

while (($#)); do
  case $1 in
    --kleap) KLEAP=${2:?--kleap needs a value}; shift 2 ;;
    --sizes) SIZES=${2:?--sizes needs a value}; shift 2 ;;
    --runs) RUNS=${2:?--runs needs a value}; shift 2 ;;
    --json-out) JSON_OUT=${2:?--json-out needs a value}; shift 2 ;;
    --memhog) MEMHOG=${2:?--memhog needs a value}; shift 2 ;;
    --memcpy-bw) MEMCPY_BW=${2:?--memcpy-bw needs a value}; shift 2 ;;
    --timeout) TIMEOUT=${2:?--timeout needs a value}; shift 2 ;;
    -h | --help) usage 0 ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done

# A helper binary: the given path, else next to this script, else on PATH.
find_tool() {
  local given=$1 name=$2
  if [[ -n $given ]]; then
    [[ -x $given ]] || die "$name: $given is not executable"
    printf '%s\n' "$given"
  elif [[ -x $SCRIPT_DIR/$name ]]; then
    printf '%s\n' "$SCRIPT_DIR/$name"
  elif command -v "$name" >/dev/null; then
    command -v "$name"
  else
    die "cannot find $name; pass --${name//_/-} PATH"
  fi
}

[[ -n $KLEAP ]] || { log "--kleap is required"; usage; }
[[ -x $KLEAP ]] || die "kleap: $KLEAP is not executable"
MEMHOG=$(find_tool "$MEMHOG" memhog)
MEMCPY_BW=$(find_tool "$MEMCPY_BW" memcpy_bw)
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer"
read -ra SIZE_LIST <<<"$SIZES"
((${#SIZE_LIST[@]} > 0)) || die "--sizes is empty"
for s in "${SIZE_LIST[@]}"; do
  [[ $s =~ ^[1-9][0-9]*$ ]] || die "bad size '$s' (MiB, positive integer)"
done
command -v timeout >/dev/null || die "needs timeout(1) from coreutils"
[[ -d /dev/shm ]] || die "needs a tmpfs at /dev/shm"
((EUID == 0)) || log "warning: not root; kleap may lack the privileges to dump and restore"

# ---------------------------------------------------------------- process bookkeeping

declare -A OWNED=()  # pid -> start time (field 22 of stat), for processes we must kill
WORKDIRS=()
CUR_CMD_PID=""        # the timeout(1) wrapper of a running kleap, if any

# Prints "STATE PPID STARTTIME" of a pid, or fails if it does not exist.
proc_info() {
  local s
  { s=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
  s=${s##*) }  # comm may hold spaces and ')': cut after the last ") "
  local -a f
  read -ra f <<<"$s"
  # f[0] is field 3 (state), f[1] field 4 (ppid), f[19] field 22 (starttime)
  printf '%s %s %s\n' "${f[0]}" "${f[1]}" "${f[19]}"
}

own() {
  local info
  info=$(proc_info "$1") || return 0
  OWNED[$1]=${info##* }
}

disown_pid() { unset "OWNED[$1]"; }

# Waits until a pid is gone from /proc. Reaps it when it is our own zombie child.
# Returns 1 after the timeout.
wait_gone() {
  local pid=$1 limit=$((${2:-$GONE_TIMEOUT} * 20)) i info state ppid
  for ((i = 0; i < limit; i++)); do
    info=$(proc_info "$pid") || return 0
    read -r state ppid _ <<<"$info"
    if [[ $state == Z && $ppid == "$$" ]]; then
      wait "$pid" 2>/dev/null || true
    fi
    sleep 0.05
  done
  info=$(proc_info "$pid") || return 0
  log "pid $pid still in /proc after ${2:-$GONE_TIMEOUT}s (state/ppid/start: $info)"
  return 1
}

# Kills an owned pid if it is still the process we registered (same start time).
kill_owned() {
  local pid=$1 info
  if info=$(proc_info "$pid") && [[ ${info##* } == "${OWNED[$pid]:-}" ]]; then
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || true
  fi
  disown_pid "$pid"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  set +e
  if [[ -n $CUR_CMD_PID ]]; then
    kill -TERM "$CUR_CMD_PID" 2>/dev/null
    wait "$CUR_CMD_PID" 2>/dev/null
  fi
  local pid
  for pid in "${!OWNED[@]}"; do kill_owned "$pid"; done
  local d
  for d in "${WORKDIRS[@]}"; do
    [[ -n $d && $d == /dev/shm/kleap-bench.* ]] && rm -rf -- "$d"
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Runs a command under timeout(1) in the background so that signals reach our traps,
# stdout to $1 and stderr to $1.err.
run_cmd() {
  local out=$1
  shift
  timeout --kill-after=10 "$TIMEOUT" "$@" >"$out" 2>"$out.err" &
  CUR_CMD_PID=$!
  local rc=0
  wait "$CUR_CMD_PID" || rc=$?
  CUR_CMD_PID=""
  return "$rc"
}

# All pids of the tree rooted at $1 (threads' children included), the root first.
tree_pids() {
  local pid=$1 t c kids
  printf '%s\n' "$pid"
  for t in /proc/"$pid"/task/*; do
    { kids=$(<"$t/children"); } 2>/dev/null || continue
    for c in $kids; do tree_pids "$c"; done
  done
}

# Waits up to $2 seconds for file $1; fails early if memhog reported a failure.
wait_file() {
  local file=$1 limit=$(($2 * 20)) i
  for ((i = 0; i < limit; i++)); do
    [[ -e $file ]] && return 0
    sleep 0.05
  done
  return 1
}

# ---------------------------------------------------------------- output parsing

# The last JSON line with an "op" key.
stats_line() { grep -E '^[[:space:]]*\{.*"op"' "$1" | tail -n 1 || true; }

# A numeric field of a JSON line.
json_num() {
  local v
  v=$(sed -nE 's/.*"'"$2"'"[[:space:]]*:[[:space:]]*(-?[0-9.][0-9.eE+-]*).*/\1/p' <<<"$1")
  [[ -n $v ]] || return 1
  printf '%s\n' "$v"
}

show_output() {
  local f
  for f in "$1" "$1.err"; do
    [[ -s $f ]] || continue
    log "--- $(basename -- "$f") (last 20 lines)"
    tail -n 20 -- "$f" >&2
  done
}

# median of the arguments (numbers), printed with %.10g (bytes stay exact)
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "nan"; exit} m = NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2; printf "%.10g\n", m}'; }

# Joins the arguments with commas.
join() {
  local IFS=,
  printf '%s' "$*"
}

# A number for JSON: nan/inf become null.
jnum() {
  case ${1,,} in
    *nan* | *inf*) printf 'null' ;;
    *) printf '%s' "$1" ;;
  esac
}

# a/b with %.6g, "nan" when b is 0
div() { awk -v a="$1" -v b="$2" 'BEGIN {if (b+0 == 0) print "nan"; else printf "%.6g\n", a/b}'; }

# ---------------------------------------------------------------- one dump/restore cycle

# Results of the last cycle.
C_DUMP_S="" C_DUMP_B="" C_DUMP_RSS="" C_REST_S="" C_REST_B="" C_REST_RSS=""

cycle() {
  local mib=$1 what=$2 work=$3
  local state=$work/state images=$work/images out=$work/out
  rm -rf -- "$state" "$images"
  mkdir -p -- "$state" "$images"

  # memhog in its own session; stdio on /dev/null so the dump has nothing unusual.
  setsid "$MEMHOG" "$state" "$mib" </dev/null >/dev/null 2>&1 &
  local launched=$!
  own "$launched"
  disown "$launched"  # no "Killed" job report when kleap kills it; bash still reaps it
  local i info
  for ((i = 0; i < READY_TIMEOUT * 20; i++)); do
    [[ -e $state/ready ]] && break
    [[ -e $state/result.memhog ]] && die "$what: memhog failed to start: $(<"$state/result.memhog")"
    if ! info=$(proc_info "$launched") || [[ ${info%% *} == Z ]]; then
      die "$what: memhog exited before it was ready"
    fi
    sleep 0.05
  done
  [[ -e $state/ready ]] || die "$what: memhog not ready after ${READY_TIMEOUT}s"
  local pid
  pid=$(<"$state/pid")
  [[ $pid =~ ^[0-9]+$ ]] || die "$what: bad pid file"
  own "$pid"
  local sid
  sid=$(ps -o sid= -p "$pid" | tr -d ' ') || true
  [[ $sid == "$pid" ]] || log "warning: memhog $pid is not a session leader (sid '$sid')"

  # Dump; the tree is killed by kleap afterwards (no --leave-running).
  local -a tree
  mapfile -t tree < <(tree_pids "$pid")
  if ! run_cmd "$out.dump" "$KLEAP" dump --tree "$pid" --images "$images" --stats; then
    show_output "$out.dump"
    die "$what: kleap dump failed"
  fi
  local js
  js=$(stats_line "$out.dump")
  if ! { C_DUMP_S=$(json_num "$js" seconds) && C_DUMP_B=$(json_num "$js" bytes) &&
    C_DUMP_RSS=$(json_num "$js" max_rss_kib); }; then
    show_output "$out.dump"
    die "$what: no usable --stats JSON line from kleap dump"
  fi
  local p
  for p in "${tree[@]}"; do
    wait_gone "$p" || die "$what: dumped pid $p did not go away (kleap dump should kill the tree)"
    disown_pid "$p"
  done
  [[ $launched == "$pid" ]] || kill_owned "$launched"

  # Restore, detached.
  rm -f -- "$state/ready" "$state/result.memhog"
  if ! run_cmd "$out.restore" "$KLEAP" restore --images "$images" --detach --stats; then
    show_output "$out.restore"
    die "$what: kleap restore failed"
  fi
  local rpid
  rpid=$(grep -E '^[[:space:]]*[0-9]+[[:space:]]*$' "$out.restore" | head -n 1 | tr -d '[:space:]' || true)
  [[ -n $rpid ]] || {
    show_output "$out.restore"
    die "$what: kleap restore --detach printed no pid"
  }
  own "$rpid"
  [[ $rpid == "$pid" ]] || log "warning: $what: restored root pid $rpid, dumped $pid"
  js=$(stats_line "$out.restore")
  if ! { C_REST_S=$(json_num "$js" seconds) && C_REST_B=$(json_num "$js" bytes) &&
    C_REST_RSS=$(json_num "$js" max_rss_kib); }; then
    show_output "$out.restore"
    die "$what: no usable --stats JSON line from kleap restore"
  fi

  # Verify, then make sure it is gone.
  kill -USR1 "$rpid" 2>/dev/null || die "$what: restored pid $rpid is not running"
  if ! wait_file "$state/result.memhog" "$READY_TIMEOUT"; then
    die "$what: restored memhog wrote no result in ${READY_TIMEOUT}s"
  fi
  local result
  result=$(<"$state/result.memhog")
  [[ $result == PASS ]] || die "$what: memory check after restore: $result"
  kill_owned "$rpid"
  wait_gone "$rpid" || die "$what: restored pid $rpid did not go away"
  rm -rf -- "$state" "$images"

  if awk -v b="$C_DUMP_B" -v m="$mib" 'BEGIN {exit !(b + 0 < m * 1048576)}'; then
    log "warning: $what: dump reported $C_DUMP_B bytes, less than the ${mib} MiB of memhog"
  fi
}

# ---------------------------------------------------------------- main

WORK=$(mktemp -d /dev/shm/kleap-bench.XXXXXX)
WORKDIRS+=("$WORK")

max_mib=0
for s in "${SIZE_LIST[@]}"; do ((s > max_mib)) && max_mib=$s; done
shm_free_kib=$(df -Pk /dev/shm | awk 'NR==2 {print $4}')
if ((shm_free_kib < max_mib * 1024 * 2)); then
  log "warning: /dev/shm has $((shm_free_kib / 1024)) MiB free; the largest size needs ~$((max_mib * 2)) MiB"
fi

log "kleap: $KLEAP"
log "kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), THP $(sed -nE 's/.*\[(.*)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo '?')"

ROWS=()   # table rows
JROWS=()  # JSON objects

for mib in "${SIZE_LIST[@]}"; do
  log "size $mib MiB: warm-up"
  cycle "$mib" "size $mib warm-up" "$WORK"
  ds=() db=() dr=() dg=() rs=() rb=() rr=() rg=()
  for ((run = 1; run <= RUNS; run++)); do
    cycle "$mib" "size $mib run $run" "$WORK"
    ds+=("$C_DUMP_S"); db+=("$C_DUMP_B"); dr+=("$C_DUMP_RSS"); dg+=("$(div "$C_DUMP_B" "$C_DUMP_S")")
    rs+=("$C_REST_S"); rb+=("$C_REST_B"); rr+=("$C_REST_RSS"); rg+=("$(div "$C_REST_B" "$C_REST_S")")
    log "size $mib MiB run $run: dump ${C_DUMP_S}s restore ${C_REST_S}s"
  done
  # GB/s: the median of the per-run rates.
  d_s=$(median "${ds[@]}"); d_b=$(median "${db[@]}"); d_rss=$(median "${dr[@]}")
  d_gbps=$(div "$(median "${dg[@]}")" 1e9)
  r_s=$(median "${rs[@]}"); r_b=$(median "${rb[@]}"); r_rss=$(median "${rr[@]}")
  r_gbps=$(div "$(median "${rg[@]}")" 1e9)

  log "size $mib MiB: memcpy_bw"
  mc_out=$WORK/memcpy.out
  if ! run_cmd "$mc_out" "$MEMCPY_BW" --mib "$mib" --runs "$RUNS"; then
    show_output "$mc_out"
    die "memcpy_bw failed"
  fi
  mc=$(stats_line "$mc_out")
  if ! { hot=$(json_num "$mc" hot_gbps) && fresh=$(json_num "$mc" fresh_gbps); }; then
    die "memcpy_bw printed no JSON"
  fi

  d_hot=$(div "$d_gbps" "$hot"); d_fresh=$(div "$d_gbps" "$fresh")
  r_hot=$(div "$r_gbps" "$hot"); r_fresh=$(div "$r_gbps" "$fresh")
  ROWS+=("$(printf '%8s %9.4f %8.3f %9.4f %8.3f %10.0f %10.0f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f' \
    "$mib" "$d_s" "$d_gbps" "$r_s" "$r_gbps" "$d_rss" "$r_rss" "$hot" "$fresh" \
    "$d_hot" "$d_fresh" "$r_hot" "$r_fresh")")
  JROWS+=("$(printf '{"mib":%s,"runs":%s,"dump_seconds":%s,"dump_bytes":%s,"dump_gbps":%s,"dump_max_rss_kib":%s,"restore_seconds":%s,"restore_bytes":%s,"restore_gbps":%s,"restore_max_rss_kib":%s,"memcpy_hot_gbps":%s,"memcpy_fresh_gbps":%s,"dump_vs_memcpy_hot":%s,"dump_vs_memcpy_fresh":%s,"restore_vs_memcpy_hot":%s,"restore_vs_memcpy_fresh":%s,"dump_seconds_all":[%s],"restore_seconds_all":[%s]}' \
    "$mib" "$RUNS" "$(jnum "$d_s")" "$(jnum "$d_b")" "$(jnum "$d_gbps")" "$(jnum "$d_rss")" \
    "$(jnum "$r_s")" "$(jnum "$r_b")" "$(jnum "$r_gbps")" "$(jnum "$r_rss")" "$(jnum "$hot")" \
    "$(jnum "$fresh")" "$(jnum "$d_hot")" "$(jnum "$d_fresh")" "$(jnum "$r_hot")" "$(jnum "$r_fresh")" \
    "$(join "${ds[@]}")" "$(join "${rs[@]}")")")
done

echo
echo "kleap checkpoint/restore vs memcpy: medians of $RUNS runs; GB/s = 1e9 bytes/s; RSS in KiB"
printf '%8s %9s %8s %9s %8s %10s %10s %8s %8s %8s %8s %8s %8s\n' \
  "MiB" "dump_s" "dump_GB/s" "rest_s" "rest_GB/s" "dump_rss" "rest_rss" "cpy_hot" "cpy_frsh" \
  "dump/hot" "dump/frsh" "rest/hot" "rest/frsh"
for row in "${ROWS[@]}"; do printf '%s\n' "$row"; done

if [[ -n $JSON_OUT ]]; then
  {
    printf '{"kleap":"%s","kernel":"%s","runs":%s,"results":[' "$KLEAP" "$(uname -r)" "$RUNS"
    for i in "${!JROWS[@]}"; do
      ((i > 0)) && printf ','
      printf '%s' "${JROWS[$i]}"
    done
    printf ']}\n'
  } >"$JSON_OUT"
  log "wrote $JSON_OUT"
fi
