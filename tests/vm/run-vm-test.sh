#!/usr/bin/env bash
# tests/vm/run-vm-test.sh: one scenario of the `vm` tier.
#
#   run-vm-test.sh SCENARIO [--bin-dir DIR] [--bin PATH]... [--work-dir DIR]
#                  [--timeout S] [--append "ARGS"]
#
# Builds the busybox guest (cached by a hash of its inputs in WORK/guests) with the
# project's binaries (each --bin, and kleap, kleap-init, kleap-kexec and
# memstore-stress found under --bin-dir), boots it on Debian's 6.1 kernel under TCG
# with kleaptest.scenario=SCENARIO, and reads the verdict off the serial console.
# Exit: 0 pass, 1 fail (the console's tail is printed, the full log kept), 77 skip
# (no QEMU, busybox-static, kernels, or binaries the scenario needs; reason printed).
#
# Scenarios: boot, kexec-plain, store-kexec, store-damaged, kexec-nostore,
# dbus-dry-run; and
# `shell` (interactive: the guest's console on this terminal, no timeout).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=vm-lib.sh source-path=SCRIPTDIR
. "$here/vm-lib.sh"

usage() { sed -n '2,16s/^# \{0,1\}//p' "$0" >&2; exit 2; }
skip() { echo "vm: SKIP: $*" >&2; exit 77; }

scenario=${1:-}
[[ -z $scenario || $scenario == -* ]] && usage
shift
bin_dir="" timeout="" append="" bins=()
while (($#)); do
  case $1 in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    --work-dir) KLEAP_VM_WORK=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
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
  shell) need=(); limit=86400 ;;
  *) echo "run-vm-test: unknown scenario $scenario" >&2; exit 2 ;;
esac
timeout=${timeout:-$limit}

# The project's binaries: given one by one, or looked up under --bin-dir.
mapfile -t bins < <(vm_find_bins "$bin_dir" "${bins[@]}")
for b in "${bins[@]}"; do
  [[ -x $b ]] || { echo "run-vm-test: $b: not an executable" >&2; exit 2; }
done
for name in "${need[@]}"; do
  vm_has_bin "$name" "${bins[@]}" || skip "scenario $scenario needs $name (pass --bin or --bin-dir)"
done

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
log=$(run_vm "vm.$scenario" "$KLEAP_VM_K61_VMLINUZ" "$guest" \
  "kleaptest.scenario=$scenario kleaptest.watchdog=$((timeout * 9 / 10)) $append" "$timeout")
rc=$?
[[ -n $log ]] || { echo "vm: FAIL: QEMU did not run" >&2; exit 1; }

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
  store-damaged | kexec-nostore) want='kleap-init: falling back to the normal boot: ' ;;
  *) want='' ;;
esac
if [[ -n $want ]] && ! vm_log_has "$log" "$want"; then
  vm_fail_report "$log" "the console shows no '$want' line"
  exit 1
fi
echo "vm: PASS $scenario (log $log)" >&2
exit 0
