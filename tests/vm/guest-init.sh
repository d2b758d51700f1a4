#!/bin/sh
# /init of the kleap VM test guest (busybox sh). Built into the guest by
# tests/vm/vm-lib.sh (build_guest); not meant to run anywhere else.
#
#   /init            PID 1 (the role `init`), the scenario's first steps
#   /init sysinit    the entries of /etc/inittab, for the scenarios whose PID 1 is
#   /init once       busybox init (workloads, upgrade): /init execs busybox init,
#   /init shutdown   which runs these
#
# Kernel command line:
#   kleaptest.scenario=NAME   boot | kexec-plain | store-kexec | store-damaged |
#                             kexec-nostore | dbus-dry-run | workloads | upgrade |
#                             cr32
#   kleaptest.phase=N         1 (default) on the first kernel, 2 after the kexec
#   kleaptest.sum=MD5         phase 1 -> 2: checksum of the pattern left on /dev/pmem0
#   kleaptest.kexec=tools     kexec-plain: use kexec-tools even if kleap-kexec is here
#   kleaptest.entry=PATH      store-*: the rdinit= entry of the new kernel
#                             (/kleap-init, or /kleap-entry to load the pmem modules
#                             first, as a distro initramfs would)
#   kleaptest.size=MIB        store-*: memstore-stress --size (default 240: 256 does
#                             not fit the 256 MiB region with the store's own metadata)
#   kleaptest.watchdog=S      power off after S seconds whatever happens (default 150)
#   kleaptest.wlmem=MIB       workloads, upgrade: wl-mem --mib (default 512)
#   kleaptest.extra=A,B       workloads, upgrade: more workloads, /bin/A and /bin/B
#                             (kleap-demo --workload), started and checked like the others
#
# dbus-dry-run: a system dbus-daemon and kleapd in the guest; upgrade-kernel runs a
# dry-run upgrade to 6.12 through the D-Bus API, which must stage the kernel, unload
# it and succeed, changing nothing.
#
# workloads, upgrade: a whole system. /init execs busybox init. Its sysinit mounts
# proc, sysfs, devtmpfs, devpts and tmpfs at /run, /tmp and /var/lib/kleap (all state
# lives in tmpfs: the new kernel unpacks the root afresh), makes every later pid >= 1000
# (the new kernel's threads take low pids), loads the pmem and NIC modules, configures
# the NIC (QEMU user networking), starts dbus-daemon and kleapd, and the workloads of
# tests/vm/workloads, each `PROG /run/kleap-wl/PROG` in a session of its own. It marks
# "tcp-ready" once wl-tcp listens (the host's tcp-echo-client connects then). The once
# entry waits for that client, then:
#   workloads: prints `kleap check --tree 1`, runs kleap-wl-check;
#   upgrade:   runs kleap-wl-check, then `upgrade-kernel upgrade` into 6.12 with the
#              pmem store, is carried across the upgrade with everything else, and runs
#              kleap-wl-check again on 6.12.
#              If /init runs again on 6.12 (phase 2), kleap-init fell back: FAIL.
#
# cr32: the 32-bit cr tests, on 6.12, for a host that runs no 32-bit code. /init execs
# busybox init (which reaps the orphans the tests leave, as a host's init does); its
# sysinit mounts what the tests use (devpts, tmpfs at /tmp and /run), the once entry
# checks that this kernel runs 32-bit code (host-runs-ia32, the tiers' one rule) and runs
# /bin/cr32.batch with run-batch.sh: one marker a test, "KLEAPTEST: cr NAME PASS SECONDS".
# Every test must pass: a skip here is a failure, since the guest is where they run.
#
# Markers on the console, one a line: "KLEAPTEST: <what>". Every run ends with
# "KLEAPTEST: PASS <scenario>" or "KLEAPTEST: FAIL <scenario>: <why>" (or a kexec),
# then "KLEAPTEST: DONE" and poweroff -f.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
ROLE=${1:-init}

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

if [ "$ROLE" = init ]; then
  mark "init-start uptime=$(uptime_s) pid=$$ kernel=$(uname -r)"
  echo "kleaptest: init-start" >/dev/kmsg 2>/dev/null
fi

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
  [ -n "${TCP_CLIENT:-}" ] && stop_tcp_client
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

# Whatever happens, the guest powers off: on exit of the shell that gives the verdict
# (PID 1, or busybox init's once entry), and after the watchdog's time even if a
# command hangs.
start_watchdog() {
  # In a session of its own: started by the early PID 1 (still in the kernel's session
  # 0, which busybox init then leaves), it would be a task in session 0 under a parent
  # that is not, which no restore can make again (kleap check refuses it).
  setsid sh -c "sleep $WATCHDOG
    echo 'KLEAPTEST: FAIL $SCENARIO: guest watchdog (${WATCHDOG}s)'
    echo 'KLEAPTEST: DONE'
    sync
    poweroff -f" &
}
case $ROLE in
  init | once)
    trap 'fail "$ROLE exited (line ${LINENO:-?})"' EXIT
    trap 'fail "signal"' INT TERM
    ;;
esac
# Busybox init's sysinit starts the watchdog itself, once later pids are >= 1000.
case $ROLE/$SCENARIO/$PHASE in
  init/workloads/1 | init/upgrade/1 | sysinit/* | once/* | shutdown/*) ;;
  *) start_watchdog ;;
esac

# shellcheck disable=SC1091  # written by build_guest
[ -f /etc/kleaptest.conf ] && . /etc/kleaptest.conf
if [ "$ROLE" = init ]; then
  mark "scenario $SCENARIO phase $PHASE"
  mark "cmdline $(cat /proc/cmdline)"
fi

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

# modprobe_marked MODULE...: loads each module that is not built in, marking how it went.
modprobe_marked() {
  for _m in "$@"; do
    grep -q "/$_m\.ko\$" "/lib/modules/$(uname -r)/modules.builtin" 2>/dev/null && continue
    _out=$(modprobe "$_m" 2>&1)
    mark "modprobe $_m rc=$? $_out"
  done
}

load_pmem() {
  modprobe_marked nd_e820 nd_pmem
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

# pmem_bytes: the size of the command line's memmap=SIZE!OFFSET region, in bytes.
pmem_bytes() {
  _s=$(param memmap 0)
  _s=${_s%%!*}
  case $_s in
    *G) echo $((${_s%G} << 30)) ;;
    *M) echo $((${_s%M} << 20)) ;;
    *K) echo $((${_s%K} << 10)) ;;
    *) echo "$_s" ;;
  esac
}

expect_pmem() {
  [ -b /dev/pmem0 ] || fail "no /dev/pmem0"
  _sz=$(($(cat /sys/block/pmem0/size) * 512))
  [ "$_sz" -eq "$(pmem_bytes)" ] ||
    fail "/dev/pmem0 is $_sz bytes, expected $(pmem_bytes) ($(param memmap none))"
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

# fallback_reason: why kleap-init fell back to the normal boot, from the kernel log.
fallback_reason() {
  dmesg | grep -m1 'kleap-init: falling back' | sed 's/.*falling back[^:]*: *//'
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
      fail "kleap-init fell back: $(fallback_reason)"
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
  _why=$(fallback_reason)
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

# start_kleapd: the system bus (dbus-daemon) and kleapd on it, with the pmem store and
# the new kernel's entry (kleaptest.entry, default /kleap-init); returns once
# upgrade-kernel reaches it.
start_kleapd() {
  need_tools kleapd upgrade-kernel dbus-daemon kleap-kexec
  # vm.upgrade-damaged: kleapd's dump damages the store after its commit (a test hook).
  if [ "$SCENARIO" = upgrade-damaged ]; then export KLEAP_TEST_DAMAGE_STORE=1; fi
  run dbus-daemon --config-file=/etc/kleap-system-bus.conf --fork --nopidfile || fail "dbus-daemon"
  kleapd --no-exit-on-idle --memstore pmem:/dev/pmem0 \
    --entry "rdinit=$(param kleaptest.entry /kleap-init)" &
  _i=0
  until timeout 2 upgrade-kernel status >/dev/null 2>&1; do
    [ $_i -lt 100 ] || fail "kleapd did not come up on the system bus"
    usleep 100000
    _i=$((_i + 1))
  done
  run upgrade-kernel status || fail "upgrade-kernel status"
}

# A dry run through the D-Bus API: check and stage for real (kexec_file_load of 6.12),
# then unload; the tree and the machine are as they were.
scn_dbus_dry_run() {
  load_pmem
  expect_kernel 6.1.
  expect_pmem
  start_kleapd
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

# ---------------------------------------------------------------- whole system
# workloads and upgrade: PID 1 is busybox init, which runs this script's sysinit and
# once roles (/etc/inittab, written by build_guest).

WL_DIR=/run/kleap-wl
# The workloads, wl-tcp first: the host's client connects while the others set up.
WORKLOADS="wl-tcp wl-counter wl-counter32 wl-tree wl-mixed wl-mem wl-tmpfs"
# A user's own workloads (kleap-demo --workload), put in /bin: kleaptest.extra=A,B.
# They are checked once, after the upgrade: the protocol lets them exit then.
EXTRA_WORKLOADS=$(param kleaptest.extra "" | tr , ' ')
WORKLOADS="$WORKLOADS $EXTRA_WORKLOADS"
TCP_PORT=7777

# mount_once TYPE DIR [OPTIONS]: mounts TYPE at DIR unless something is mounted there.
mount_once() {
  grep -q "^[^ ]* $2 " /proc/mounts && return 0
  mkdir -p "$2" || fail "mkdir $2"
  mount -t "$1" ${3:+-o "$3"} "$1" "$2" || fail "mount -t $1 $2"
}

# load_net: the virtio NIC on QEMU's user network, configured as its DHCP would.
load_net() {
  modprobe_marked virtio_pci virtio_net
  _i=0
  while [ ! -e /sys/class/net/eth0 ]; do
    [ $_i -lt 100 ] || fail "no eth0 (modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' '))"
    usleep 100000
    _i=$((_i + 1))
  done
  for _c in "link set lo up" "link set eth0 up" "addr add 10.0.2.15/24 dev eth0" \
    "route add default via 10.0.2.2"; do
    # shellcheck disable=SC2086  # one command a string
    ip $_c || fail "ip $_c"
  done
  mark "net $(ip -o -4 addr show eth0 | awk '{ print $2, $4 }')"
}

# start_workload NAME [ARG...]: `NAME WL_DIR/NAME ARG...` in a session of its own, its
# output in WL_DIR/NAME.log.
start_workload() {
  _n=$1
  shift
  mkdir -p "$WL_DIR/$_n" || fail "mkdir $WL_DIR/$_n"
  setsid "$_n" "$WL_DIR/$_n" "$@" </dev/null >"$WL_DIR/$_n.log" 2>&1 &
}

# wait_ready NAME SECONDS: until the workload wrote its ready file.
wait_ready() {
  _i=0
  while [ ! -f "$WL_DIR/$1/ready" ]; do
    if [ $_i -ge $(($2 * 10)) ]; then
      cat "$WL_DIR/$1.log"
      fail "workload $1 is not ready after $2 s"
    fi
    usleep 100000
    _i=$((_i + 1))
  done
  mark "workload $1 ready pid=$(cat "$WL_DIR/$1/pid") uptime=$(uptime_s)"
}

# The sysinit entry: the machine and its long-lived processes.
whole_system_sysinit() {
  mark "sysinit uptime=$(uptime_s) pid=$$"
  mount_once proc /proc
  mount_once sysfs /sys
  mount_once devtmpfs /dev
  mount_once devpts /dev/pts
  mount_once tmpfs /run mode=755
  mount_once tmpfs /tmp
  mount_once tmpfs /var/lib/kleap mode=700
  mkdir -p /run/dbus "$WL_DIR"
  # The new kernel's own threads take the low pids: every process from here on gets
  # one the restore can have again.
  echo 1000 >/proc/sys/kernel/ns_last_pid || fail "cannot write ns_last_pid"
  # This shell (a low pid) leads the session busybox init made for it; the daemons it
  # starts would stay in that session once it exits, and the restore would need its
  # pid back for a moment. The rest runs in a session of its own, led by a high pid.
  if [ -z "${KLEAP_SYSINIT_SESSION:-}" ]; then
    KLEAP_SYSINIT_SESSION=1 setsid /init sysinit &
    wait $!
    exit $?
  fi
  start_watchdog
  load_pmem
  expect_kernel 6.1.
  expect_pmem
  load_net
  start_kleapd
  # shellcheck disable=SC2086  # a list of names
  need_tools $WORKLOADS wl-mixed32 kleap-wl-check
  _t0=$(uptime_s)
  start_workload wl-tcp --port "$TCP_PORT"
  wait_ready wl-tcp 60
  mark "tcp-ready port=$TCP_PORT"
  for _w in $WORKLOADS; do
    case $_w in
      wl-tcp) ;;
      wl-mem) start_workload "$_w" --mib "$(param kleaptest.wlmem 512)" ;;
      *) start_workload "$_w" ;;
    esac
  done
  for _w in $WORKLOADS; do [ "$_w" = wl-tcp ] || wait_ready "$_w" 240; done
  mark "TIME workloads-ready-s $(elapsed "$_t0")"
  mark "sysinit done uptime=$(uptime_s)"
}

# wait_client: until the host's TCP client has connected to wl-tcp. From then on, the
# verdict (finish) first has the host stop the client (stop_tcp_client).
wait_client() {
  TCP_CLIENT=1
  _i=0
  until [ -s "$WL_DIR/wl-tcp/client" ]; do
    [ $_i -lt 600 ] || fail "no TCP client connected to wl-tcp within 60 s"
    usleep 100000
    _i=$((_i + 1))
  done
  mark "tcp client $(cat "$WL_DIR/wl-tcp/client")"
}

# stop_tcp_client: asks the host to stop its TCP client, and waits (10 s at most) until
# it has closed its connection, so that the power-off does not look like a drop.
stop_tcp_client() {
  mark "tcp-client-stop"
  _port=$(printf ':%04X$' "$TCP_PORT")
  _i=0
  # /proc/net/tcp: slot, local address, remote address, state (01 established).
  while awk -v p="$_port" '$2 ~ p && $4 == "01" { found = 1 } END { exit !found }' \
    /proc/net/tcp && [ $_i -lt 100 ]; do
    usleep 100000
    _i=$((_i + 1))
  done
}

# check_workloads WHEN: kleap-wl-check; FAIL unless every workload passes.
# check_workloads WHEN [SKIP...]: kleap-wl-check of every workload but SKIP.
check_workloads() {
  echo "+ kleap-wl-check"
  KLEAP_WL_SKIP="${2:-}" kleap-wl-check "$WL_DIR" >/run/wl-check.out 2>&1
  _rc=$?
  cat /run/wl-check.out
  [ $_rc -eq 0 ] || fail "workloads $1: $(grep -c ' FAIL ' /run/wl-check.out) failed (rc $_rc)"
}

# show_check NAME CMD...: runs CMD, and marks its status and each line of its output
# (what the engine and kleapd say of the whole system: informational, the upgrade
# scenario is where it must be carried).
show_check() {
  _name=$1
  shift
  echo "+ $*"
  "$@" >"/run/$_name.out" 2>&1
  mark "$_name rc=$?"
  sed "s/^/KLEAPTEST: $_name: /" "/run/$_name.out"
}

scn_workloads() {
  wait_client
  sleep 3
  show_check kleap-check kleap check --tree 1 --json
  show_check upgrade-kernel-check upgrade-kernel check --kernel /kernels/vmlinuz-6.12
  check_workloads "on $(uname -r)"
  pass
}

scn_upgrade() {
  wait_client
  sleep 3
  show_check upgrade-kernel-check upgrade-kernel check --kernel /kernels/vmlinuz-6.12
  # The same check before: what fails after the upgrade was fine before it.
  check_workloads "before the upgrade" "$EXTRA_WORKLOADS"
  _old=$(uname -r)
  mark "upgrade from $_old uptime=$(uptime_s)"
  upgrade-kernel --json upgrade /kernels/vmlinuz-6.12 --initrd /kernels/initrd.cpio.gz \
    --cmdline "$(next_cmdline kleaptest.phase=2)" --yes >/run/upgrade.out 2>&1
  _rc=$?
  _new=$(uname -r)
  cat /run/upgrade.out
  grep '^[{[]' /run/upgrade.out | while read -r _l; do mark "JSON $_l"; done
  mark "kernel old=$_old new=$_new pid1=$(cat /proc/1/comm) uptime=$(uptime_s)"
  [ $_rc -eq 0 ] || fail "upgrade-kernel upgrade exited $_rc: $(tail -n 1 /run/upgrade.out)"
  expect_kernel 6.12.
  # The client's TCP backed its retransmissions off during the pause (doubling each
  # time): its next one may come seconds after the restore. Wait for it (60 s at most)
  # and say how long it took, then check.
  _l0=$(cat "$WL_DIR/wl-tcp/lines" 2>/dev/null || echo 0)
  _t=$(uptime_s)
  _i=0
  while [ "$(cat "$WL_DIR/wl-tcp/lines" 2>/dev/null || echo 0)" = "$_l0" ]; do
    [ $_i -lt 600 ] || fail "the TCP connection did not go on within 60 s of the upgrade"
    usleep 100000
    _i=$((_i + 1))
  done
  mark "TIME tcp-resumed-s $(elapsed "$_t")"
  check_workloads "after the upgrade"
  pass
}

# upgrade-refused: a process holding what can't be carried (a raw socket: busybox
# ping); the upgrade must be refused naming it, with the guest left on 6.1 as it was.
scn_upgrade_refused() {
  wait_client
  sleep 3
  ping -i 1 10.0.2.2 >/dev/null 2>&1 &
  _ping=$!
  sleep 1
  upgrade-kernel --json upgrade /kernels/vmlinuz-6.12 --initrd /kernels/initrd.cpio.gz \
    --cmdline "$(next_cmdline kleaptest.phase=2)" --yes >/run/upgrade.out 2>&1
  _rc=$?
  cat /run/upgrade.out
  [ $_rc -ne 0 ] || fail "the upgrade was not refused"
  grep -q 'NotDumpable' /run/upgrade.out || fail "refused, but not as NotDumpable"
  grep -q "pid $_ping " /run/upgrade.out || fail "the refusal does not name pid $_ping (ping)"
  kill -0 "$_ping" || fail "ping $_ping is gone"
  kill "$_ping"
  expect_kernel 6.1.
  mark "kernel old=$(uname -r) still pid1=$(cat /proc/1/comm)"
  check_workloads "after the refused upgrade"
  pass
}

# upgrade-dry: a dry run of the same upgrade through the API: checked and staged for
# real, then unloaded; nothing frozen, the guest on 6.1 as it was.
scn_upgrade_dry() {
  wait_client
  sleep 3
  upgrade-kernel --json upgrade --dry-run /kernels/vmlinuz-6.12 --initrd /kernels/initrd.cpio.gz \
    --cmdline "$(next_cmdline kleaptest.phase=2)" --yes >/run/upgrade.out 2>&1
  _rc=$?
  cat /run/upgrade.out
  [ $_rc -eq 0 ] || fail "the dry run failed (exit $_rc): $(tail -n 1 /run/upgrade.out)"
  grep -q '"dry-run":true' /run/upgrade.out || fail "the answer is not a dry run's"
  [ "$(kleap-kexec status)" = "not loaded" ] || fail "a kernel is left staged after the dry run"
  expect_kernel 6.1.
  mark "kernel old=$(uname -r) still pid1=$(cat /proc/1/comm)"
  check_workloads "after the dry run"
  pass
}

# upgrade-damaged: the same upgrade with the store damaged after the dump; the guest
# comes up on 6.12 through the normal boot (see whole_system_init), not this script.
scn_upgrade_damaged() {
  sleep 2
  upgrade-kernel --json upgrade /kernels/vmlinuz-6.12 --initrd /kernels/initrd.cpio.gz \
    --cmdline "$(next_cmdline kleaptest.phase=2)" --yes >/run/upgrade.out 2>&1
  cat /run/upgrade.out
  fail "upgrade-kernel returned on $(uname -r): the damaged store was restored"
}

# /init (PID 1) of workloads and upgrade.
whole_system_init() {
  if [ "$PHASE" = 1 ]; then
    trap - EXIT INT TERM
    mark "exec busybox init"
    exec /bin/busybox init
  fi
  # /init runs on the new kernel only when kleap-init gave the machine a normal boot.
  expect_kernel 6.12.
  kleap_init_lines
  _why=$(fallback_reason)
  if [ "$SCENARIO" = upgrade-damaged ]; then
    case $_why in
      *checksum* | *damaged* | *corrupt*) mark "fell back as it must: $_why"; pass ;;
    esac
    fail "the fallback's reason does not name the damage: ${_why:-none}"
  fi
  fail "fell back to the normal boot: ${_why:-no 'kleap-init: falling back' line in the kernel log}"
}

# ---------------------------------------------------------------- cr32
cr32_sysinit() {
  mark "sysinit uptime=$(uptime_s) pid=$$"
  mount_once devpts /dev/pts ptmxmode=666,gid=5,mode=620
  mount_once tmpfs /run mode=755
  mount_once tmpfs /tmp
  mount_once tmpfs /dev/shm mode=1777
  # What udev or systemd would make: bash's process substitution opens /dev/fd/N.
  ln -sfn /proc/self/fd /dev/fd
  # (devtmpfs's /dev/ptmx opens the devpts instance at /dev/pts, beside it.)
  # The loopback, for the inet sockets of the cr tests (inet00).
  ip link set lo up || mark "ip link set lo up: failed"
  mark "sysinit done uptime=$(uptime_s)"
}

scn_cr32() {
  need_tools bash kleap run-batch.sh host-runs-ia32 ia32-probe
  expect_kernel 6.12.
  export KLEAP_IA32_CHECK=/bin/host-runs-ia32 KLEAP_IA32_PROBE=/bin/ia32-probe
  _why=$(bash /bin/host-runs-ia32) || fail "this guest's kernel runs no 32-bit code: $_why"
  mark "cr32 kernel=$(uname -r) tests=$(grep -c '^cr' /bin/cr32.batch)"
  bash /bin/run-batch.sh --kleap /bin/kleap --prefix "KLEAPTEST: cr" /bin/cr32.batch 2>&1 |
    tee /run/batch.out
  _sum=$(grep '^KLEAPTEST: cr summary ' /run/batch.out)
  [ -n "$_sum" ] || fail "run-batch.sh gave no summary"
  case $_sum in
    *" failed=0 "*) ;;
    *) fail "${_sum#KLEAPTEST: cr summary }: $(grep '^KLEAPTEST: cr .* FAIL ' /run/batch.out |
      awk '{ print $3 }' | tr '\n' ' ')" ;;
  esac
  case $_sum in
    *" skipped=0 "*) ;;
    *) fail "${_sum#KLEAPTEST: cr summary }: a test skipped in the guest, which must run them all" ;;
  esac
  pass
}

case $ROLE/$SCENARIO in
  sysinit/cr32) cr32_sysinit; exit 0 ;;
  once/cr32) scn_cr32 ;;
  init/cr32) trap - EXIT INT TERM; mark "exec busybox init"; exec /bin/busybox init ;;
  sysinit/*) whole_system_sysinit; exit 0 ;;
  shutdown/*) mark "shutdown uptime=$(uptime_s)"; sync; exit 0 ;;
  once/workloads) scn_workloads ;;
  once/upgrade) scn_upgrade ;;
  once/upgrade-refused) scn_upgrade_refused ;;
  once/upgrade-dry) scn_upgrade_dry ;;
  once/upgrade-damaged) scn_upgrade_damaged ;;
  init/workloads | init/upgrade | init/upgrade-refused | init/upgrade-damaged | init/upgrade-dry)
    whole_system_init ;;
  init/boot) scn_boot ;;
  init/dbus-dry-run) scn_dbus_dry_run ;;
  init/kexec-plain) scn_kexec_plain ;;
  init/store-kexec) scn_store_kexec ;;
  init/store-damaged) scn_store_damaged ;;
  init/kexec-nostore) scn_kexec_nostore ;;
  init/shell) load_pmem; mark "shell"; trap - EXIT; setsid cttyhack sh; finish ;;
  *) fail "unknown scenario '$SCENARIO' (role $ROLE)" ;;
esac
fail "scenario $SCENARIO returned without a verdict"
