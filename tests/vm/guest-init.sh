#!/bin/sh
# /init of the kleap VM test guest (busybox sh). Built into the guest by
# tests/vm/vm-lib.sh (build_guest); not meant to run anywhere else.
#
# Kernel command line:
#   kleaptest.scenario=NAME   boot | kexec-plain | store-kexec | store-damaged |
#                             kexec-nostore | dbus-dry-run
#   kleaptest.phase=N         1 (default) on the first kernel, 2 after the kexec
#   kleaptest.sum=MD5         phase 1 -> 2: checksum of the pattern left on /dev/pmem0
#   kleaptest.kexec=tools     kexec-plain: use kexec-tools even if kleap-kexec is here
#   kleaptest.entry=PATH      store-*: the rdinit= entry of the new kernel
#                             (/kleap-init, or /kleap-entry to load the pmem modules
#                             first, as a distro initramfs would)
#   kleaptest.size=MIB        store-*: memstore-stress --size (default 240: 256 does
#                             not fit the 256 MiB region with the store's own metadata)
#   kleaptest.watchdog=S      power off after S seconds whatever happens (default 150)
#
# dbus-dry-run: a system dbus-daemon and kleapd in the guest; upgrade-kernel runs a
# dry-run upgrade to 6.12 through the D-Bus API, which must stage the kernel, unload
# it and succeed, changing nothing.
#
# Markers on the console, one a line: "KLEAPTEST: <what>". Every run ends with
# "KLEAPTEST: PASS <scenario>" or "KLEAPTEST: FAIL <scenario>: <why>" (or a kexec),
# then "KLEAPTEST: DONE" and poweroff -f.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root

# ---------------------------------------------------------------- plumbing
[ -e /proc/self ] || mount -t proc proc /proc
grep -q '^sysfs /sys ' /proc/mounts || mount -t sysfs sysfs /sys
grep -q '^devtmpfs /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
grep -q '^tmpfs /tmp ' /proc/mounts || mount -t tmpfs -o size=512m tmpfs /tmp
# Whatever the kernel gave us, talk to the console.
exec </dev/console >/dev/console 2>&1

mark() { echo "KLEAPTEST: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%.2f", b - a }'; }

mark "init-start uptime=$(uptime_s) pid=$$ kernel=$(uname -r)"
echo "kleaptest: init-start" >/dev/kmsg 2>/dev/null

# param NAME DEFAULT: the last NAME=VALUE of the kernel command line.
# shellcheck disable=SC2013  # the command line is one line of words
param() {
  _v=$2
  for _w in $(cat /proc/cmdline); do
    case $_w in "$1="*) _v=${_w#*=} ;; esac
  done
  echo "$_v"
}

SCENARIO=$(param kleaptest.scenario none)
PHASE=$(param kleaptest.phase 1)
WATCHDOG=$(param kleaptest.watchdog 150)

FINISHED=0

finish() {
  [ "$FINISHED" = 1 ] && return
  FINISHED=1
  mark "DONE uptime=$(uptime_s)"
  sync
  poweroff -f
  # Not reached; if it were, PID 1 exiting panics the kernel, and panic=-1 with
  # QEMU's -no-reboot ends the run too.
  sleep 5
  reboot -f
}
pass() { mark "PASS $SCENARIO"; finish; }
fail() { mark "FAIL $SCENARIO: $*"; finish; }

# Whatever happens, the guest powers off: on exit of this shell, and after the
# watchdog's time even if a command hangs.
trap 'fail "init exited (line ${LINENO:-?})"' EXIT
trap 'fail "signal"' INT TERM
(
  sleep "$WATCHDOG"
  echo "KLEAPTEST: FAIL $SCENARIO: guest watchdog (${WATCHDOG}s)"
  echo "KLEAPTEST: DONE"
  sync
  poweroff -f
) &

# shellcheck disable=SC1091  # written by build_guest
[ -f /etc/kleaptest.conf ] && . /etc/kleaptest.conf
mark "scenario $SCENARIO phase $PHASE"
mark "cmdline $(cat /proc/cmdline)"

# ---------------------------------------------------------------- helpers
# run CMD...: runs a command with its output on the console, marks its status.
run() {
  echo "+ $*"
  "$@"
  _rc=$?
  [ $_rc -eq 0 ] || mark "command failed ($_rc): $*"
  return $_rc
}

# Like run, and every output line that looks like JSON is also marked, for bench-vm.sh.
run_json() {
  echo "+ $*"
  "$@" >/tmp/out.$$ 2>&1
  _rc=$?
  cat /tmp/out.$$
  grep '^{' /tmp/out.$$ | while read -r _l; do mark "JSON $_l"; done
  rm -f /tmp/out.$$
  [ $_rc -eq 0 ] || mark "command failed ($_rc): $*"
  return $_rc
}

have() { command -v "$1" >/dev/null 2>&1; }

load_pmem() {
  for _m in nd_e820 nd_pmem; do
    _out=$(modprobe "$_m" 2>&1)
    mark "modprobe $_m rc=$? $_out"
  done
  _i=0
  while [ ! -b /dev/pmem0 ] && [ $_i -lt 100 ]; do
    usleep 100000
    _i=$((_i + 1))
  done
  mark "modules $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
  if [ -b /dev/pmem0 ]; then
    mark "pmem0 size=$(($(cat /sys/block/pmem0/size) * 512))"
  else
    mark "no /dev/pmem0"
  fi
}

expect_kernel() {
  case $(uname -r) in
    "$1"*) return 0 ;;
  esac
  fail "running $(uname -r), expected $1"
}

expect_pmem() {
  [ -b /dev/pmem0 ] || fail "no /dev/pmem0"
  _sz=$(($(cat /sys/block/pmem0/size) * 512))
  [ "$_sz" -eq 268435456 ] || fail "/dev/pmem0 is $_sz bytes, expected 256 MiB"
}

# pattern_write: 4 MiB of random bytes at 0 and at 252 MiB of /dev/pmem0, synced and
# read back past the page cache. Prints the md5 of the pattern.
pattern_write() {
  dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null || fail "urandom"
  dd if=/tmp/pat of=/dev/pmem0 bs=1M conv=fsync 2>/dev/null || fail "dd to pmem0 at 0"
  dd if=/tmp/pat of=/dev/pmem0 bs=1M seek=252 conv=fsync 2>/dev/null || fail "dd to pmem0 at 252M"
  sync
  md5sum </tmp/pat | cut -d' ' -f1
}

# pattern_check MD5: both copies on /dev/pmem0 read back as MD5.
pattern_check() {
  blockdev --flushbufs /dev/pmem0 2>/dev/null
  echo 3 >/proc/sys/vm/drop_caches
  _a=$(dd if=/dev/pmem0 bs=1M count=4 2>/dev/null | md5sum | cut -d' ' -f1)
  _b=$(dd if=/dev/pmem0 bs=1M skip=252 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
  mark "pattern expected=$1 at0=$_a at252M=$_b"
  [ "$_a" = "$1" ] && [ "$_b" = "$1" ]
}

# next_cmdline EXTRA...: this kernel's command line without kleaptest.phase/sum, plus
# EXTRA: what a plain kexec gives the new kernel.
# shellcheck disable=SC2013
next_cmdline() {
  _c=""
  for _w in $(cat /proc/cmdline); do
    case $_w in
      kleaptest.phase=* | kleaptest.sum=*) ;;
      *) _c="$_c $_w" ;;
    esac
  done
  echo "${_c# } $*"
}

# kexec_now: the kernel is loaded; go. Only returns on failure.
kexec_now() {

  sync
  echo 3 >/proc/sys/vm/drop_caches
  mark "kexec-e uptime=$(uptime_s)"
  echo "kleaptest: kexec-e" >/dev/kmsg 2>/dev/null
  "$@"
  fail "kexec returned ($?): $*"
}

# kleap_init_lines: what kleap-init said in the kernel log, marked.
kleap_init_lines() {
  dmesg | grep 'kleap-init:' >/tmp/ki.$$
  while read -r _l; do mark "kmsg $_l"; done </tmp/ki.$$
  cat /tmp/ki.$$
  rm -f /tmp/ki.$$
}

need_tools() {
  for _t in "$@"; do
    have "$_t" || fail "$_t is not in the guest (binaries: ${KT_BINS:-none})"
  done
}

# ---------------------------------------------------------------- scenarios
scn_boot() {
  load_pmem
  expect_kernel 6.1.
  expect_pmem
  _sum=$(pattern_write)
  pattern_check "$_sum" || fail "pattern read back differs"
  pass
}

scn_kexec_plain() {
  load_pmem
  if [ "$PHASE" = 1 ]; then
    expect_kernel 6.1.
    expect_pmem
    _sum=$(pattern_write)
    pattern_check "$_sum" || fail "pattern read back differs before the kexec"
    if have kleap-kexec && [ "$(param kleaptest.kexec auto)" != tools ]; then
      mark "kexec with kleap-kexec"
      _t0=$(uptime_s)
      run kleap-kexec load --kernel /kernels/vmlinuz-6.12 --initrd /kernels/initrd.cpio.gz \
        --append "kleaptest.phase=2 kleaptest.sum=$_sum" || fail "kleap-kexec load"
      mark "TIME load-s $(elapsed "$_t0")"
      run kleap-kexec status
      kexec_now kleap-kexec exec
    else
      mark "kexec with kexec-tools"
      _t0=$(uptime_s)
      run kexec -s -l /kernels/vmlinuz-6.12 --initrd=/kernels/initrd.cpio.gz \
        --append="$(next_cmdline "kleaptest.phase=2 kleaptest.sum=$_sum")" || fail "kexec -s -l"
      mark "TIME load-s $(elapsed "$_t0")"
      kexec_now kexec -e
    fi
  else
    expect_kernel 6.12.
    expect_pmem
    _sum=$(param kleaptest.sum none)
    pattern_check "$_sum" || fail "the pattern written on 6.1 did not survive the kexec"
    pass
  fi
}

# store_phase1 PREP: write the store, PREP (a function) damages/wipes it, then kexec
# through kleap-kexec with the store and kleap-init as the entry point.
store_phase1() {
  need_tools kleap kleap-kexec kleap-init memstore-stress
  expect_kernel 6.1.
  expect_pmem
  _size=$(param kleaptest.size 240)
  _entry=$(param kleaptest.entry /kleap-init)
  "$1"
  run kleap store info --backend pmem:/dev/pmem0
  _t0=$(uptime_s)
  run kleap-kexec load --kernel /kernels/vmlinuz-6.12 --initrd /kernels/initrd.cpio.gz \
    --store pmem:/dev/pmem0 --entry "rdinit=$_entry" \
    --append "kleaptest.scenario=$SCENARIO kleaptest.phase=2" || fail "kleap-kexec load"
  mark "TIME load-s $(elapsed "$_t0")"
  run kleap-kexec status || fail "kleap-kexec status"
  kexec_now kleap-kexec exec
}

# store_phase2_common: on 6.12, booted through kleap-init, which said something.
store_phase2_common() {
  expect_kernel 6.12.
  [ "$$" = 1 ] || fail "/init is not PID 1 (pid $$)"
  kleap_init_lines
  dmesg | grep -q 'kleap-init: start' || mark "note: no 'kleap-init: start' line in the kernel log"
  expect_pmem
}

prep_write() {
  # The baseline of the same run: memcpy bandwidth in this guest (bench only).
  if command -v memcpy_bw >/dev/null 2>&1; then run_json memcpy_bw --mib 64 --runs 3; fi
  run_json memstore-stress write --backend pmem:/dev/pmem0 --size "$_size" --seed 7 ||
    fail "memstore-stress write"
}
prep_damage() {
  prep_write
  run memstore-stress corrupt --backend pmem:/dev/pmem0 || fail "memstore-stress corrupt"
}
prep_wipe() {
  run kleap store wipe --backend pmem:/dev/pmem0 --yes || fail "kleap store wipe"
}

scn_store_kexec() {
  load_pmem
  if [ "$PHASE" = 1 ]; then
    store_phase1 prep_write
  else
    store_phase2_common
    if dmesg | grep -q 'kleap-init: falling back'; then
      fail "kleap-init fell back: $(dmesg | grep -m1 'kleap-init: falling back' | sed 's/.*falling back[^:]*: *//')"
    fi
    dmesg | grep -q 'kleap-init: store whole' || fail "no 'kleap-init: store whole' in the kernel log"
    run_json memstore-stress verify --backend pmem:/dev/pmem0 --seed 7 || fail "memstore-stress verify"
    run kleap store info --backend pmem:/dev/pmem0 || fail "kleap store info"
    pass
  fi
}

# fallback_check WANT: kleap-init fell back with a reason (containing WANT if given)
# and this is a normal boot.
fallback_check() {
  store_phase2_common
  dmesg | grep -q 'kleap-init: store whole' && fail "kleap-init took a bad store as whole"
  _why=$(dmesg | grep -m1 'kleap-init: falling back' | sed 's/.*falling back[^:]*: *//')
  [ -n "$_why" ] || fail "no 'kleap-init: falling back ...: <reason>' in the kernel log"
  mark "fallback reason: $_why"
  if [ -n "$1" ]; then
    echo "$_why" | grep -qi "$1" || fail "fallback reason '$_why' does not say '$1'"
  fi
  # A normal boot: this /init runs as PID 1 with a working userland and store device.
  run kleap store info --backend pmem:/dev/pmem0
  pass
}

scn_store_damaged() {
  load_pmem
  if [ "$PHASE" = 1 ]; then store_phase1 prep_damage; else fallback_check ""; fi
}

scn_kexec_nostore() {
  load_pmem
  if [ "$PHASE" = 1 ]; then store_phase1 prep_wipe; else fallback_check "no store"; fi
}

# A dry run through the D-Bus API: check and stage for real (kexec_file_load of 6.12),
# then unload; the tree and the machine are as they were.
scn_dbus_dry_run() {
  load_pmem
  need_tools kleapd upgrade-kernel dbus-daemon kleap-kexec
  expect_kernel 6.1.
  expect_pmem
  run dbus-daemon --config-file=/etc/kleap-system-bus.conf --fork --nopidfile || fail "dbus-daemon"
  kleapd --no-exit-on-idle --memstore pmem:/dev/pmem0 --entry rdinit=/kleap-init &
  _i=0
  until timeout 2 upgrade-kernel status >/dev/null 2>&1; do
    [ $_i -lt 100 ] || fail "kleapd did not come up on the system bus"
    usleep 100000
    _i=$((_i + 1))
  done
  run upgrade-kernel status || fail "upgrade-kernel status"
  # The tree to carry: a process in a session of its own.
  setsid sleep 3600 </dev/null >/dev/null 2>&1 &
  _tree=$!
  _t0=$(uptime_s)
  upgrade-kernel upgrade --dry-run --tree "$_tree" /kernels/vmlinuz-6.12 \
    --initrd /kernels/initrd.cpio.gz >/tmp/dry.out 2>&1
  _rc=$?
  mark "TIME dry-run-s $(elapsed "$_t0")"
  cat /tmp/dry.out
  [ $_rc -eq 0 ] || fail "upgrade-kernel upgrade --dry-run exited $_rc"
  for _p in check stage; do
    grep -q "^phase: $_p" /tmp/dry.out || fail "no phase $_p in upgrade-kernel's output"
  done
  grep -q "dry run: 1 tasks .* can be carried into /kernels/vmlinuz-6.12; it was staged and unloaded again" \
    /tmp/dry.out || fail "the dry run's message is not the expected one"
  [ "$(kleap-kexec status)" = "not loaded" ] || fail "a kernel is still loaded after the dry run"
  kill -0 "$_tree" || fail "the tree did not survive the dry run"
  run_json upgrade-kernel --json status || fail "upgrade-kernel --json status"
  upgrade-kernel --json status | grep -q '"success":true' || fail "LastUpgrade does not say success"
  kill "$_tree"
  pass
}

case $SCENARIO in
  boot) scn_boot ;;
  dbus-dry-run) scn_dbus_dry_run ;;
  kexec-plain) scn_kexec_plain ;;
  store-kexec) scn_store_kexec ;;
  store-damaged) scn_store_damaged ;;
  kexec-nostore) scn_kexec_nostore ;;
  shell) load_pmem; mark "shell"; trap - EXIT; setsid cttyhack sh; finish ;;
  *) fail "unknown scenario '$SCENARIO'" ;;
esac
fail "scenario $SCENARIO returned without a verdict"
