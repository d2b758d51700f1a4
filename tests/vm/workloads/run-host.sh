#!/usr/bin/env bash
# tests/vm/workloads/run-host.sh: the VM guest's workloads on this machine, no VM
# (ctest `workload.vm-workloads`, label `workload`).
#
#   run-host.sh --wl-dir DIR --tcp-client PATH
#
# Starts every workload of DIR (a build's tests/vm/workloads) as the guest does, each
# `setsid PROG STATEDIR` with its STATEDIR in a fresh tmpfs directory (wl-mem with
# 64 MiB), and tcp-echo-client against wl-tcp on a free port. Then kleap-wl-check
# must pass twice in a row (the workloads answer any number of checks), and the
# client must report no drop. Everything it started is stopped by its PID on exit.
# Exit 0 pass, 1 fail, 77 skip (no tmpfs at /dev/shm, or a workload is not built).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../vm-lib.sh
. "$here/../vm-lib.sh"

wl_dir="" tcp_client=""
while (($#)); do
  case $1 in
    --wl-dir) wl_dir=$2; shift 2 ;;
    --tcp-client) tcp_client=$2; shift 2 ;;
    *) echo "run-host: unknown argument $1" >&2; exit 2 ;;
  esac
done
skip() { echo "workloads: SKIP: $*" >&2; exit 77; }
fail() { echo "workloads: FAIL: $*" >&2; exit 1; }

for w in "${KLEAP_VM_WORKLOAD_BINS[@]}"; do
  [[ -x $wl_dir/$w ]] || skip "$wl_dir/$w is not built"
done
[[ -x $tcp_client ]] || skip "no tcp-echo-client at '$tcp_client'"
[[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]] || skip "/dev/shm is not a tmpfs"
port=$(vm_free_port) || fail "no free TCP port"
state=$(mktemp -d /dev/shm/kleap-wl.XXXXXX) || fail "mktemp"

roots=() client=""
# in_sessions: the pids of every process in the workloads' sessions.
in_sessions() {
  ps -e -o pid=,sid= | awk -v s=" ${roots[*]} " 'index(s, " " $2 " ") { print $1 }'
}
cleanup() {
  local p
  [[ -n $client ]] && kill "$client" 2>/dev/null
  # Each workload is a session of its own: stop every process of those sessions, and
  # wait until they are gone (5 s at most).
  for p in $(in_sessions); do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  for _ in $(seq 1 50); do
    [[ -z $(in_sessions) ]] && break
    sleep 0.1
  done
  rm -rf "$state"
}
trap cleanup EXIT

# The guest's set (guest-init.sh, WORKLOADS): wl-mixed runs wl-mixed32 itself. Where this
# host runs no 32-bit code (tests/ia32/host-runs-ia32), the two that hold 32-bit processes
# are left out here; the vm tier's guests run them.
started=(wl-tcp wl-counter wl-counter32 wl-tree wl-mixed wl-mem wl-tmpfs)
why=""
if ! why=$(bash "$here/../../ia32/host-runs-ia32" "$wl_dir/wl-counter32" "$wl_dir/wl-mixed32"); then
  echo "workloads: wl-counter32 and wl-mixed (a tree with 32-bit processes) left out: $why" >&2
  started=(wl-tcp wl-counter wl-tree wl-mem wl-tmpfs)
fi
for w in "${started[@]}"; do
  mkdir -p "$state/$w"
  case $w in
    wl-tcp) args=(--port "$port") ;;
    wl-mem) args=(--mib 64) ;;
    *) args=() ;;
  esac
  setsid "$wl_dir/$w" "$state/$w" "${args[@]}" </dev/null >"$state/$w.log" 2>&1 &
  roots+=($!)
done
for w in "$state"/*/; do
  for _ in $(seq 1 100); do
    [[ -f $w/ready ]] && break
    sleep 0.1
  done
  [[ -f $w/ready ]] || { cat "${w%/}.log" >&2; fail "$(basename "$w") is not ready after 10 s"; }
done

"$tcp_client" 127.0.0.1 "$port" --connect-timeout 10 --report "$state/tcp.report" >/dev/null &
client=$!
for _ in $(seq 1 100); do
  [[ -s $state/wl-tcp/client ]] && break
  sleep 0.1
done
sleep 1
for round in 1 2; do
  echo "workloads: check $round" >&2
  "$here/../kleap-wl-check" "$state" >&2 || fail "kleap-wl-check, round $round"
done
kill "$client"
client_rc=0
wait "$client" || client_rc=$?
client=""
cat "$state/tcp.report" >&2
((client_rc == 0)) || fail "tcp-echo-client exited $client_rc"
echo "workloads: PASS${why:+ (without the 32-bit workloads: $why)}" >&2
