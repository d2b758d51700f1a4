#!/usr/bin/env bash
# tests/vm/run-vm-test.sh: one scenario of the `vm` tier.
#
#   run-vm-test.sh SCENARIO [--bin-dir DIR] [--bin PATH]... [--work-dir DIR]
#                  [--timeout S] [--append "ARGS"] [--layout big|huge|default]
#                  [--tcp-client PATH]
#
# Builds the busybox guest (cached by a hash of its inputs in WORK/guests) with the
# project's binaries (each --bin, and kleap, kleap-init, kleap-kexec, memstore-stress,
# kleapd and upgrade-kernel found under --bin-dir; for workloads and upgrade also the
# wl-* workloads), boots it on Debian's 6.1 kernel under TCG with
# kleaptest.scenario=SCENARIO, and reads the verdict off the serial console.
# Exit: 0 pass, 1 fail (the console's tail is printed, the full log kept), 77 skip
# (no QEMU, busybox-static, kernels, or binaries the scenario needs; reason printed).
#
# Scenarios: boot, kexec-plain, store-kexec, store-damaged, kexec-nostore,
# dbus-dry-run, workloads, upgrade, upgrade-dry, upgrade-refused, upgrade-damaged;
# cr32 (the 32-bit cr tests in a guest on 6.12, for a host that runs no 32-bit code:
# the --bin files are kleap, the programs, tests/cr's runners and cr32.batch; each test
# is reported by name; it skips on a host that runs 32-bit code unless KLEAP_VM_CR32=1); and
# `shell` (interactive: the guest's console on this terminal, no timeout).
# workloads and upgrade run in the big layout (3 GiB, 1 GiB of pmem; --layout says
# otherwise) with a NIC, and run tcp-echo-client (--tcp-client, or found under
# --bin-dir) against the guest's wl-tcp from its "tcp-ready" marker to the end: a
# dropped connection fails the test.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=vm-lib.sh source-path=SCRIPTDIR
. "$here/vm-lib.sh"

usage() { sed -n '2,22s/^# \{0,1\}//p' "$0" >&2; exit 2; }
skip() { echo "vm: SKIP: $*" >&2; exit 77; }

scenario=${1:-}
[[ -z $scenario || $scenario == -* ]] && usage
shift
bin_dir="" timeout="" append="" bins=() layout="" tcp_client=""
while (($#)); do
  case $1 in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    --work-dir) KLEAP_VM_WORK=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --layout) layout=$2; shift 2 ;;
    --tcp-client) tcp_client=$2; shift 2 ;;
    -h | --help) usage ;;
    *) echo "run-vm-test: unknown argument $1" >&2; usage ;;
  esac
done

# What each scenario needs of the project, and how long one run may take (6.1 boots
# in a few seconds, a kexec to 6.12 in about ten; TCG on a busy machine is slower).
case $scenario in
  boot) need=(); limit=90 ;;
  kexec-plain) need=(); limit=180 ;;
  store-kexec | store-damaged | kexec-nostore) need=("${KLEAP_VM_PROJECT_BINS[@]}"); limit=240 ;;
  dbus-dry-run) need=(kleapd upgrade-kernel kleap-kexec); limit=180 ;;
  workloads | upgrade | upgrade-refused | upgrade-damaged | upgrade-dry)
    KLEAP_VM_EXTRA_BINS=("${KLEAP_VM_WORKLOAD_BINS[@]}")
    need=(kleap kleapd upgrade-kernel kleap-kexec "${KLEAP_VM_WORKLOAD_BINS[@]}")
    [[ $scenario == upgrade* ]] && need+=(kleap-init)
    layout=${layout:-big}
    limit=$([[ $scenario == upgrade* ]] && echo 270 || echo 240) ;;
  # About 70 tests of 1-7 s each under TCG, in one boot (2-3 min).
  cr32) need=(kleap run-batch.sh run-cr.sh run-init.sh cr32.batch ia32-probe host-runs-ia32)
    limit=840 ;;
  shell) need=(); limit=86400 ;;
  *) echo "run-vm-test: unknown scenario $scenario" >&2; exit 2 ;;
esac
timeout=${timeout:-$limit}
vm_layout "${layout:-default}" || exit 2

# The project's binaries: given one by one, or looked up under --bin-dir.
mapfile -t bins < <(vm_find_bins "$bin_dir" "${bins[@]}")
for b in "${bins[@]}"; do
  [[ -f $b && -r $b ]] || { echo "run-vm-test: $b: not a readable file" >&2; exit 2; }
done
for name in "${need[@]}"; do
  vm_has_bin "$name" "${bins[@]}" || skip "scenario $scenario needs $name (pass --bin or --bin-dir)"
done
# The host's side of wl-tcp.
use_tcp=0
# (upgrade-damaged boots 6.12 normally: its connection goes with everything else, and
# the client's verdict is not asked for.)
case $scenario in workloads | upgrade | upgrade-refused | upgrade-damaged | upgrade-dry) use_tcp=1 ;; esac
if ((use_tcp)); then
  if [[ -z $tcp_client && -n $bin_dir ]]; then
    tcp_client=$(find "$bin_dir" -maxdepth 3 -name tcp-echo-client -type f -perm -u+x -print -quit)
  fi
  [[ -n $tcp_client && -x $tcp_client ]] ||
    skip "scenario $scenario needs tcp-echo-client (pass --tcp-client or --bin-dir)"
fi

if [[ $scenario == cr32 ]]; then
  if why=$(bash "$here/../ia32/host-runs-ia32"); then
    [[ ${KLEAP_VM_CR32:-0} == 1 ]] ||
      skip "this host runs 32-bit code, so the cr tier ran the 32-bit programs on it" \
        "(KLEAP_VM_CR32=1 runs the guest batch anyway)"
  else
    vm_say "$why: the 32-bit cr tests run in a guest on Debian's 6.12"
  fi
  # The runners are bash scripts; the guest has busybox only.
  bins+=("$(command -v bash)")
fi

reason=$(vm_skip_reason)
[[ -z $reason ]] || skip "$reason"
vm_kernels_setup || skip "Debian's 6.1/6.12 cloud kernels are not in $KLEAP_VM_CACHE and cannot be fetched"
vm_kexec_tools_setup || skip "kexec-tools is not in $KLEAP_VM_CACHE and cannot be fetched"
guest=$(vm_guest "${bins[@]}") || { echo "vm: FAIL: building the guest failed" >&2; exit 1; }

if [[ $scenario == shell ]]; then
  exec "$KLEAP_VM_QEMU" -accel tcg -m "$KLEAP_VM_MEM_MB" -smp 1 -nographic -no-reboot \
    -kernel "$KLEAP_VM_K61_VMLINUZ" -initrd "$guest" \
    -append "console=ttyS0 tsc=reliable $KLEAP_VM_MEMMAP panic=-1 kleaptest.scenario=shell kleaptest.watchdog=86400 $append ${KLEAP_VM_APPEND:-}"
fi

# The guest's own watchdog fires a little before the host's hard timeout, so that a
# hang inside the guest ends with its markers rather than a kill.
guest_args="kleaptest.scenario=$scenario kleaptest.watchdog=$((timeout * 9 / 10)) $append"
client_rc=""
if ((use_tcp)); then
  # QEMU runs in the background; the client starts once wl-tcp listens and is stopped
  # by its PID when QEMU is done.
  port=$(vm_free_port) || { echo "vm: FAIL: no free TCP port on 127.0.0.1" >&2; exit 1; }
  export KLEAP_VM_HOSTFWD=$port:7777
  logdir=$KLEAP_VM_WORK/logs
  log=$logdir/vm.$scenario.log
  report=$logdir/vm.$scenario.tcp
  mkdir -p "$logdir" && : >"$log" && rm -f "$report"
  run_vm "vm.$scenario" "$KLEAP_VM_K61_VMLINUZ" "$guest" "$guest_args" "$timeout" >/dev/null &
  vm_pid=$!
  client_pid="" client_rc=""
  # The guest says tcp-ready when wl-tcp listens, and tcp-client-stop before it powers
  # off (it waits for the client to close its connection, which is not a drop).
  stop_client() {
    [[ -n $client_pid && -z $client_rc ]] || return 0
    kill -TERM "$client_pid" 2>/dev/null
    client_rc=0
    wait "$client_pid" || client_rc=$?
    vm_say "$(cat "$report" 2>/dev/null || echo "tcp-echo-client wrote no report")"
  }
  # If this script is stopped, so is the client (run_vm stops QEMU at its own timeout).
  trap 'stop_client' EXIT
  trap 'exit 1' INT TERM
  while kill -0 "$vm_pid" 2>/dev/null; do
    if [[ -z $client_pid ]] && grep -q '^KLEAPTEST: tcp-ready' "$log" 2>/dev/null; then
      vm_say "wl-tcp is ready: tcp-echo-client to 127.0.0.1:$port"
      "$tcp_client" 127.0.0.1 "$port" --report "$report" >/dev/null 2>&1 &
      client_pid=$!
    fi
    if [[ -n $client_pid ]] && grep -q '^KLEAPTEST: tcp-client-stop' "$log" 2>/dev/null; then
      stop_client
      break
    fi
    sleep 0.2
  done
  rc=0
  wait "$vm_pid" || rc=$?
  stop_client
else
  kernel=$KLEAP_VM_K61_VMLINUZ
  # cr32 needs a kernel that runs 32-bit code and nothing of 6.1: it boots 6.12.
  [[ $scenario == cr32 ]] && kernel=$KLEAP_VM_K612_VMLINUZ
  log=$(run_vm "vm.$scenario" "$kernel" "$guest" "$guest_args" "$timeout")
  rc=$?
  [[ -n $log ]] || { echo "vm: FAIL: QEMU did not run" >&2; exit 1; }
fi

if [[ $scenario == cr32 ]]; then
  # Each test of the batch by name, with its time (run-batch.sh's lines, marked).
  grep -E '^KLEAPTEST: cr ' "$log" | sed 's/^KLEAPTEST: cr /vm: cr32: /' >&2
fi

timings=$(vm_timings "$log")
[[ -n $timings ]] && echo "vm: times (s): $(echo "$timings" | tr '\n' ' ')" >&2

if ((rc == 124)); then
  vm_fail_report "$log" "hard timeout (${timeout}s)"
  exit 1
fi
if failure=$(grep -m1 -E '^KLEAPTEST: FAIL' "$log"); then
  vm_fail_report "$log" "${failure#KLEAPTEST: FAIL }"
  exit 1
fi
if ! vm_log_has "$log" "^KLEAPTEST: PASS $scenario\$"; then
  if panic=$(grep -m1 -E 'Kernel panic|BUG:|Oops' "$log"); then
    vm_fail_report "$log" "no verdict from the guest: ${panic}"
  else
    vm_fail_report "$log" "no verdict from the guest (it crashed or powered off early?)"
  fi
  exit 1
fi
case $scenario in
  kexec-plain | store-kexec | store-damaged | kexec-nostore)
    if ! vm_log_has "$log" "^KLEAPTEST: scenario $scenario phase 2\$"; then
      vm_fail_report "$log" "PASS without a phase 2 on the new kernel"
      exit 1
    fi ;;
esac
case $scenario in
  store-kexec) want='kleap-init: store whole' ;;
  store-damaged | kexec-nostore | upgrade-damaged)
    want='kleap-init: falling back to the normal boot: ' ;;
  *) want='' ;;
esac
if [[ -n $want ]] && ! vm_log_has "$log" "$want"; then
  vm_fail_report "$log" "the console shows no '$want' line"
  exit 1
fi
if ((use_tcp)) && [[ $scenario != upgrade-damaged ]]; then
  if [[ -z $client_rc ]]; then
    vm_fail_report "$log" "the guest never said tcp-ready: no TCP client ran"
    exit 1
  elif ((client_rc != 0)); then
    vm_fail_report "$log" "the TCP client's connection to wl-tcp: $(cat "$report" 2>/dev/null) (exit $client_rc)"
    exit 1
  fi
fi
if [[ $scenario == upgrade ]] && ! vm_log_has "$log" '^KLEAPTEST: kernel old=6\.1\..* new=6\.12\.'; then
  vm_fail_report "$log" "PASS without the kernel going from 6.1 to 6.12"
  exit 1
fi
echo "vm: PASS $scenario (log $log)" >&2
exit 0
