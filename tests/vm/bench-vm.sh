#!/usr/bin/env bash
# bench-vm.sh: kexec and memstore numbers inside the QEMU guest of the `vm` tier.
#
# usage: bench-vm.sh [--bin PATH]... [--bin-dir DIR] [--tcp-client PATH] [--runs 3]
#                    [--work-dir DIR] [--json-out FILE]
#
# Runs, --runs times each, on the same guest (tests/vm/run-vm-test.sh):
#   plain  kexec-plain with kexec-tools (kleaptest.kexec=tools): 6.1 -> 6.12, no kleap
#   kleap  store-kexec: memstore-stress write (256 MiB) on 6.1, kleap-kexec with the
#          store and kleap-init as the entry, memstore-stress verify on 6.12
#          (only when kleap, kleap-init, kleap-kexec and memstore-stress are given)
#   up64, up512, up2048  the whole-system upgrade (scenario upgrade) with 64, 512 or
#          2048 MiB in wl-mem (the last in the `huge` layout: 7 GiB, a 2.5 GiB store;
#          only when the workloads are given too: --bin-dir), split into
#            freeze_s, dump_s       the dumper's freeze, and freeze plus dump
#            kexec_boot_host        its "kexec now" line -> kleap-init's first (host)
#            verify_s               kleap-init: the store's checksums
#            setup_s                kleap-init: modules, mounts, network
#            restore_s              kleap-init: the restore of every task
#            downtime               kleapd's: freeze to first instruction after (realtime)
#            tcp_resumed_s          upgrade-kernel's return -> the host client's next line
# and reports medians (seconds unless said):
#   boot_host           QEMU start -> 6.1's /init (host wall clock)
#   boot_uptime         6.1's own uptime at /init
#   kexec_gap           last console line before the new kernel -> its first line (host)
#   kexec_to_init_host  "kexec -e" -> first instruction of the new userspace (host):
#                       kleap-init's "start" line, or /init's first marker when plain
#   new_uptime_at_init  the same point on the new kernel's own clock
#                       (kleap-init's CLOCK_BOOTTIME, /init's /proc/uptime)
#   new_printk_run_init the new kernel's printk time of "Run ... as init process"
#   write_mibps / verify_mibps   memstore-stress throughput on /dev/pmem0 (MiB/s)
# TCG is 10-50x slower than hardware: compare only numbers of the same run.
# Not a test: it fails only when a run fails, and has no thresholds.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=vm-lib.sh source-path=SCRIPTDIR
. "$here/vm-lib.sh"

runs=3 json_out="" bins=() bin_dir="" tcp_client=()
while (($#)); do
  case $1 in
    --bin) bins+=("$2"); shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --tcp-client) tcp_client=(--tcp-client "$2"); shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --work-dir) KLEAP_VM_WORK=$2; shift 2 ;;
    --json-out) json_out=$2; shift 2 ;;
    -h | --help) sed -n '2,5s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "bench-vm: unknown argument $1" >&2; exit 2 ;;
  esac
done
export KLEAP_VM_WORK
mapfile -t bins < <(vm_find_bins "$bin_dir" "${bins[@]}")
bin_args=()
for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done
bdir=$KLEAP_VM_WORK/bench
rm -rf "$bdir"
mkdir -p "$bdir" || exit 1

log() { printf 'bench-vm: %s\n' "$*" >&2; }
median() {
  printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) { print "nan"; exit }
          m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f\n", m }'
}

# run_one KIND SCENARIO I [APPEND [LAYOUT]]: one run; its log kept as bench/KIND-I.log
# and its numbers as bench/KIND-I.kv.
run_one() {
  local kind=$1 scenario=$2 i=$3 append=${4:-} layout=${5:-} rc
  log "$kind run $i/$runs ($scenario)"
  "$here/run-vm-test.sh" "$scenario" "${bin_args[@]}" "${tcp_client[@]}" --work-dir "$KLEAP_VM_WORK" \
    ${append:+--append "$append"} ${layout:+--layout "$layout"}
  rc=$?
  local src=$KLEAP_VM_WORK/logs/vm.$scenario
  for ext in log tlog start; do cp "$src.$ext" "$bdir/$kind-$i.$ext" 2>/dev/null; done
  ((rc == 0)) || return $rc
  {
    vm_timings "$bdir/$kind-$i.log"
    upgrade_timings "$bdir/$kind-$i"
    # memstore-stress: {"op":"write","bytes":N,"seconds":S}
    grep -E '^KLEAPTEST: JSON ' "$bdir/$kind-$i.log" | sed 's/^KLEAPTEST: JSON //' | awk '
      match($0, /"op" *: *"[a-z]+"/) { op = substr($0, RSTART, RLENGTH); gsub(/.*"op" *: *"|"/, "", op) }
      match($0, /"bytes" *: *[0-9]+/) { b = substr($0, RSTART, RLENGTH); gsub(/[^0-9]/, "", b) }
      match($0, /"seconds" *: *[0-9.eE+-]+/) { s = substr($0, RSTART, RLENGTH); sub(/.*: */, "", s)
        if (op != "" && s > 0) printf "%s_mibps=%.1f\n", op, b / s / 1048576 }
      # memcpy_bw: {"op":"memcpy",...,"hot_gbps":G,...,"fresh_gbps":F}
      op == "memcpy" && match($0, /"hot_gbps" *: *[0-9.]+/) { g = substr($0, RSTART, RLENGTH); sub(/.*: */, "", g)
        printf "memcpy_hot_mibps=%.1f\n", g * 1e9 / 1048576 }
      op == "memcpy" && match($0, /"fresh_gbps" *: *[0-9.]+/) { g = substr($0, RSTART, RLENGTH); sub(/.*: */, "", g)
        printf "memcpy_fresh_mibps=%.1f\n", g * 1e9 / 1048576 }'
  } >"$bdir/$kind-$i.kv"
  return 0
}

# The whole-system upgrade's split (see the top), from the console and its host times.
upgrade_timings() {
  local log=$1.log tlog=$1.tlog
  sed -n 's/.*kleapd: upgrade dump: .* freeze \([0-9.]*\) s, freeze and dump \([0-9.]*\) s.*/freeze_s=\1\ndump_s=\2/p' "$log"
  sed -n 's/.*kleap-init: store whole: .*verified in \([0-9.]*\) s.*/verify_s=\1/p' "$log"
  sed -n 's/.*kleap-init: modules, mounts and network of the old system in \([0-9.]*\) s.*/setup_s=\1/p' "$log"
  sed -n 's/.*kleap-init: restored .* in \([0-9.]*\) s as PID 1.*/restore_s=\1/p' "$log"
  grep -o '"downtime-seconds":[0-9.]*' "$log" | tail -n 1 | sed 's/"downtime-seconds":/downtime=/'
  sed -n 's/^KLEAPTEST: TIME tcp-resumed-s \([0-9.]*\).*/tcp_resumed_s=\1/p' "$log"
  awk '/kleapd: upgrade dump: / && !k { k = $1 } /kleap-init: start / && k && !s { s = $1 }
       END { if (k && s) printf "kexec_boot_host=%.3f\n", s - k }' "$tlog" 2>/dev/null
}

kinds=(plain)
have_all=1
for name in "${KLEAP_VM_PROJECT_BINS[@]}"; do
  vm_has_bin "$name" "${bins[@]}" || have_all=0
done
((have_all)) && kinds+=(kleap)
for name in "${KLEAP_VM_WORKLOAD_BINS[@]}"; do vm_has_bin "$name" "${bins[@]}" || have_all=0; done
((have_all)) && kinds+=(up64 up512 up2048)

rc_all=0
for kind in "${kinds[@]}"; do
  for ((i = 1; i <= runs; i++)); do
    case $kind in
      plain) run_one plain kexec-plain "$i" kleaptest.kexec=tools ;;
      kleap) run_one kleap store-kexec "$i" ;;
      up64) run_one up64 upgrade "$i" kleaptest.wlmem=64 ;;
      up512) run_one up512 upgrade "$i" kleaptest.wlmem=512 ;;
      up2048) run_one up2048 upgrade "$i" kleaptest.wlmem=2048 huge ;;
    esac
    rc=$?
    if ((rc == 77)); then
      log "skipped: the bed cannot run here (see above)"
      exit 77
    elif ((rc != 0)); then
      log "$kind run $i failed (log $bdir/$kind-$i.log)"
      rc_all=1
      [[ $kind == plain ]] && exit 1
      continue 2
    fi
  done
done

keys=(boot_host boot_uptime kexec_load kexec_gap kexec_to_init_host new_uptime_at_init
  new_printk_run_init write_mibps verify_mibps memcpy_hot_mibps memcpy_fresh_mibps
  freeze_s dump_s kexec_boot_host verify_s setup_s restore_s downtime tcp_resumed_s)
declare -A med=()
for kind in "${kinds[@]}"; do
  for key in "${keys[@]}"; do
    mapfile -t vals < <(cat "$bdir/$kind"-*.kv 2>/dev/null | sed -n "s/^$key=//p")
    ((${#vals[@]})) && med[$kind.$key]=$(median "${vals[@]}")
  done
done

echo "kleap vm bench: medians of $runs runs under TCG; seconds unless said"
printf '%-22s' metric
for kind in "${kinds[@]}"; do printf ' %10s' "$kind"; done
printf '\n'
for key in "${keys[@]}"; do
  line=$(printf '%-22s' "$key") any=""
  for kind in "${kinds[@]}"; do
    line+=$(printf ' %10s' "${med[$kind.$key]:--}")
    any+=${med[$kind.$key]:-}
  done
  [[ -n $any ]] && echo "$line"
done
if [[ -n $json_out ]]; then
  {
    printf '{"runs":%s' "$runs"
    for kind in "${kinds[@]}"; do
      printf ',"%s":{' "$kind"
      sep=""
      for key in "${keys[@]}"; do
        [[ -n ${med[$kind.$key]:-} ]] || continue
        printf '%s"%s":%s' "$sep" "$key" "${med[$kind.$key]}"
        sep=,
      done
      printf '}'
    done
    printf '}\n'
  } >"$json_out"
  log "wrote $json_out"
fi
((${#kinds[@]} > 1)) || log "kleap's numbers need kleap, kleap-init, kleap-kexec and memstore-stress"
exit $rc_all
