#!/usr/bin/env bash
# kleapd and upgrade-kernel on a real, private dbus-daemon (and a real polkitd on that
# bus when the machine has one): properties, introspection, Check on real trees, the
# named error of each bad argument, jobs (phases, one at a time, cancel, a client that
# disconnects mid-job, SIGTERM mid-job), authorization of a caller that is not root,
# and upgrade-kernel's --json output against the bus state.
#   kleapd-test.sh --kleapd PATH --upgrade-kernel PATH --ok-prog PATH --refused-prog PATH
#                  --policy PATH
# Root only (kleapd reads every task). Everything it starts is stopped by PID.
set -u
while (($#)); do
  case $1 in
    --kleapd) KLEAPD=$2; shift 2 ;;
    --ok-prog) OK_PROG=$2; shift 2 ;;
    --refused-prog) BAD_PROG=$2; shift 2 ;;
    --upgrade-kernel) UK=$2; shift 2 ;;
    --policy) POLICY=$2; shift 2 ;;
    *) echo "kleapd-test: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ $(id -u) -ne 0 ]]; then
  echo "kleapd-test: skipped: needs root (kleapd reads every task's /proc)"
  exit 77
fi
for tool in dbus-daemon busctl gdbus jq setpriv; do
  if ! command -v "$tool" >/dev/null; then
    echo "kleapd-test: skipped: $tool is missing (scripts/install-deps.sh installs it)"
    exit 77
  fi
done

WORK=$(mktemp -d /tmp/kleapd-test.XXXXXX)
chmod 755 "$WORK"  # the unprivileged caller connects to the bus socket in here
pids=()
policy_installed=""
POLKIT_ACTIONS=/usr/share/polkit-1/actions
cleanup() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -KILL "${pids[i]}" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  [[ -n $policy_installed ]] && rm -f "$policy_installed"
  rm -rf "$WORK"
}
trap cleanup EXIT

fails=0 passes=0
check() {  # check NAME CONDITION-EXIT-STATUS DETAIL
  if [[ $2 == 0 ]]; then
    echo "ok: $1"
    passes=$((passes + 1))
  else
    echo "FAIL: $1: $3"
    fails=$((fails + 1))
  fi
}
wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < until)) || return 1
    sleep 0.1
  done
}
start_prog() {  # start_prog PROG -> STARTED: its pid, in a session of its own
  local d
  d=$(mktemp -d "$WORK/prog.XXXXXX")
  setsid "$1" "$d" </dev/null >/dev/null 2>&1 &
  pids+=($!)
  wait_for 10 test -e "$d/ready"
  STARTED=$(cat "$d/pid")
}
nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups env DBUS_SESSION_BUS_ADDRESS="$DBUS_SESSION_BUS_ADDRESS" "$@"; }
M=(org.kleap.Upgrader1 /org/kleap/Upgrader1 org.kleap.Upgrader1.Manager)
prop() { busctl --user get-property "${M[@]}" "$1"; }
call() { busctl --user call "${M[@]}" "$@"; }
# gdbus prints the D-Bus error name of a failed call.
gcall() {  # gcall METHOD ARGS...
  gdbus call --session --dest org.kleap.Upgrader1 --object-path /org/kleap/Upgrader1 \
    --method "org.kleap.Upgrader1.Manager.$1" "${@:2}" 2>&1
}
last_job() { prop LastUpgrade | grep -o '"job" o "[^"]*"' | cut -d'"' -f4; }
idle() { [[ $(prop State) == 's "idle"' ]]; }

# A private bus that any local user may connect to (a session bus only lets its owner).
cat >"$WORK/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$WORK/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
dbus-daemon --config-file="$WORK/bus.conf" --nofork --nopidfile 2>"$WORK/dbus.log" &
pids+=($!)
wait_for 10 test -S "$WORK/bus" || { echo "FAIL: dbus-daemon did not start"; cat "$WORK/dbus.log"; exit 1; }
export DBUS_SESSION_BUS_ADDRESS=unix:path=$WORK/bus

# polkitd on this bus, as if it were the system bus, with kleap's action installed.
POLKITD=""
start_polkitd() {
  DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SESSION_BUS_ADDRESS /usr/lib/polkit-1/polkitd --no-debug \
    >"$WORK/polkitd.log" 2>&1 &
  POLKITD=$!
  pids+=("$POLKITD")
  wait_for 15 busctl --user status org.freedesktop.PolicyKit1
}
if [[ -x /usr/lib/polkit-1/polkitd && -d $POLKIT_ACTIONS ]]; then
  if [[ ! -e $POLKIT_ACTIONS/org.kleap.upgrader1.policy ]]; then
    cp "$POLICY" "$POLKIT_ACTIONS/" && policy_installed=$POLKIT_ACTIONS/org.kleap.upgrader1.policy
  fi
  start_polkitd || { echo "note: polkitd did not come up:"; cat "$WORK/polkitd.log"; POLKITD=""; }
else
  echo "note: no polkitd here (apt-get install polkitd): the denial is tested without it only"
fi

KLEAPD_PID=""
start_kleapd() {  # start_kleapd STORE-SPEC [ENV...]
  env "${@:2}" "$KLEAPD" --user --no-exit-on-idle --memstore "$1" 2>>"$WORK/kleapd.log" &
  KLEAPD_PID=$!
  pids+=("$KLEAPD_PID")
  wait_for 10 busctl --user status org.kleap.Upgrader1
}
# Memstores: dir stores (a file in a directory), one big enough and one far too small.
mkdir "$WORK/store" "$WORK/tiny"
truncate -s 256M "$WORK/store/kleap-store.img"
truncate -s 16K "$WORK/tiny/kleap-store.img"
# A "kernel" for the jobs: on this host no job gets as far as loading it.
KERNEL=$WORK/vmlinuz-test
cp "$KLEAPD" "$KERNEL"

start_prog "$OK_PROG"
TREE=$STARTED

# --- A full memstore is refused up front, naming the sizes. --------------------------------
start_kleapd "dir:$WORK/tiny"
out=$("$UK" --user --json upgrade --dry-run --tree "$TREE" "$KERNEL"); rc=$?
[[ $rc == 1 ]] && [[ $(jq -r .details.error <<<"$out") == org.kleap.Upgrader1.Error.MemstoreTooSmall ]] &&
  jq -r .message <<<"$out" | grep -q "memstore dir:$WORK/tiny holds 0 MiB; the tree needs about"
check "a memstore too small: MemstoreTooSmall naming the store and the sizes, exit 1" $? "rc $rc: $out"
kill -TERM "$KLEAPD_PID"
wait_for 10 sh -c "! kill -0 $KLEAPD_PID"; check "SIGTERM when idle: kleapd exits" $? "still running"
wait "$KLEAPD_PID"; rc=$?
[[ $rc == 0 ]]; check "SIGTERM when idle: exit status 0" $? "rc $rc"

# Each phase pauses 1.5 s (test hook) so that a job can be watched, raced and canceled.
start_kleapd "dir:$WORK/store" KLEAP_TEST_PHASE_DELAY_MS=1500

# --- Properties and introspection. ----------------------------------------------------------
out=$(prop RunningKernel)
[[ $out == "s \"$(uname -r)\"" ]]; check "RunningKernel is the running kernel" $? "$out"
out=$(prop State)
[[ $out == 's "idle"' ]]; check "State is idle" $? "$out"
out=$(prop CurrentJob)
[[ $out == 'o "/"' ]]; check "CurrentJob is / when idle" $? "$out"
out=$(prop MemstoreBackend)
[[ $out == "s \"dir:$WORK/store\"" ]]; check "MemstoreBackend is the configured store" $? "$out"
intro=$(busctl --user introspect org.kleap.Upgrader1 /org/kleap/Upgrader1 org.kleap.Upgrader1.Manager)
missing=""
for want in '.Check method a{sv} a{sv}' '.Upgrade method sssa{sv} o' '.State property s' \
            '.RunningKernel property s' '.DefaultTarget property s' '.MemstoreBackend property s' \
            '.LastUpgrade property a{sv}' '.CurrentJob property o'; do
  # shellcheck disable=SC2086  # the words of one introspection line
  awk -v w="$want" '{ if ($1" "$2" "$3 == w || $1" "$2" "$3" "$4 == w) f = 1 } END { exit !f }' <<<"$intro" ||
    missing+=" [$want]"
done
[[ -z $missing ]]; check "introspection: the Manager interface is the documented API" $? "missing:$missing"

# --- Check on real trees. -------------------------------------------------------------------
out=$(call Check 'a{sv}' 1 tree u "$TREE")
grep -q '"dumpable" b true' <<<"$out"; check "Check: a plain tree is dumpable" $? "$out"
grep -q '"problems" a(isss) 0' <<<"$out"; check "Check: no problems listed" $? "$out"
out=$("$UK" --user status); rc=$?
grep -q "Running kernel: $(uname -r)" <<<"$out" && [[ $rc == 0 ]]; check "upgrade-kernel status" $? "rc $rc: $out"
out=$("$UK" --user --json check --tree "$TREE" --kernel "$KERNEL"); rc=$?
[[ $(jq -r .upgradable <<<"$out") == true && $rc == 0 ]]; check "upgrade-kernel check --json: upgradable, exit 0" $? "rc $rc: $out"
out=$("$UK" --user check --tree "$TREE" --kernel /nonexistent/vmlinuz); rc=$?
[[ $rc == 2 ]] && grep -q "target kernel: none found" <<<"$out"; check "upgrade-kernel check: no kernel, exit 2" $? "rc $rc: $out"
out=$(nobody "$UK" --user --json check --tree "$TREE" --kernel "$KERNEL"); rc=$?
[[ $(jq -r .dumpable <<<"$out") == true && $rc == 0 ]]; check "Check is open to a caller that is not root" $? "rc $rc: $out"

start_prog "$BAD_PROG"
BAD=$STARTED
out=$(call Check 'a{sv}' 1 tree u "$BAD")
grep -q '"dumpable" b false' <<<"$out"; check "Check: a tree with io_uring is not dumpable" $? "$out"
grep -q "io_uring is not supported" <<<"$out" && grep -q "$BAD \"fd " <<<"$out"
check "Check: the problem names the pid, the fd and the reason" $? "$out"
out=$("$UK" --user check --tree "$BAD" --kernel "$KERNEL"); rc=$?
[[ $rc == 1 ]] && grep -q "pid $BAD fd .*io_uring is not supported" <<<"$out"; check "upgrade-kernel check: blocked, exit 1, names pid and fd" $? "rc $rc: $out"

# --- Each bad argument gets its named error. ------------------------------------------------
expect_error() {  # expect_error NAME ERROR-TEXT METHOD ARGS...
  local name=$1 want=$2 out
  out=$(gcall "${@:3}")
  grep -qF "$want" <<<"$out"; check "$name" $? "$out"
}
expect_error "Check: unknown option: InvalidArgs naming the key" \
  "org.freedesktop.DBus.Error.InvalidArgs: Unknown option 'bogus'" Check "{'bogus': <'x'>}"
expect_error "Check: tree of the wrong type: InvalidArgs" \
  "org.freedesktop.DBus.Error.InvalidArgs: Option 'tree' must be a PID" Check "{'tree': <'x'>}"
expect_error "Check: a tree that doesn't exist: TaskGone" \
  "org.kleap.Upgrader1.Error.TaskGone" Check "{'tree': <uint32 999999>}"
expect_error "Upgrade: unknown option: InvalidArgs naming the key" \
  "org.freedesktop.DBus.Error.InvalidArgs: Unknown option 'reboot-now'" Upgrade "$KERNEL" "" "" "{'reboot-now': <true>}"
expect_error "Upgrade: dry-run of the wrong type: InvalidArgs" \
  "org.freedesktop.DBus.Error.InvalidArgs: Option 'dry-run' must be a boolean (b)" Upgrade "$KERNEL" "" "" "{'dry-run': <'yes'>}"
expect_error "Upgrade: a missing kernel: KernelNotFound naming the file" \
  "org.kleap.Upgrader1.Error.KernelNotFound: The kernel /boot/vmlinuz-none: No such file" Upgrade /boot/vmlinuz-none "" "" "{}"
expect_error "Upgrade: a missing initrd: KernelNotFound naming the file" \
  "org.kleap.Upgrader1.Error.KernelNotFound: The initrd /boot/initrd-none: No such file" Upgrade "$KERNEL" /boot/initrd-none "" "{}"
expect_error "Upgrade: a relative kernel path: InvalidArgs" \
  "org.freedesktop.DBus.Error.InvalidArgs: The kernel must be an absolute path: vmlinuz" Upgrade vmlinuz "" "" "{}"
expect_error "Upgrade: a tree that doesn't exist: TaskGone" \
  "org.kleap.Upgrader1.Error.TaskGone: No process 999999 to carry" Upgrade "$KERNEL" "" "" "{'tree': <uint32 999999>}"
idle; check "bad arguments start no job" $? "$(prop State)"

# --- A dry run: its phases, and here, where the host kernel has no kexec, its failure. ------
if [[ -e /sys/kernel/kexec_loaded ]]; then
  echo "note: this host can kexec; the dry run to its end is vm.dbus-dry-run's job, here it is rejected at stage"
fi
out=$("$UK" --user upgrade --dry-run --tree "$TREE" "$KERNEL" 2>&1); rc=$?
grep -q '^phase: check' <<<"$out" && grep -q '^phase: stage' <<<"$out"
check "a dry-run job goes through check and stage, one line per phase" $? "$out"
if [[ -e /sys/kernel/kexec_loaded ]]; then
  grep -q "failed in phase stage" <<<"$out" && [[ $rc == 1 ]]
  check "a dry run with a file that isn't a kernel fails at stage, exit 1" $? "rc $rc: $out"
else
  grep -q "failed in phase stage: the running kernel can't kexec" <<<"$out" && [[ $rc == 1 ]]
  check "a dry run on a kernel without kexec fails at stage saying why, exit 1" $? "rc $rc: $out"
fi
job1=$(last_job)
out=$(busctl --user introspect org.kleap.Upgrader1 "$job1" org.kleap.Upgrader1.Job)
missing=""
for want in '.Cancel method - -' '.Phase property s "failed"' '.Progress property u' \
            '.Cancelable property b false' '.Completed signal bsa{sv} -'; do
  grep -qF -- "$want" <<<"$(awk '{ print $1" "$2" "$3" "$4 }' <<<"$out")" || missing+=" [$want]"
done
[[ -z $missing ]]; check "introspection: a job has the documented Job interface, in its final state" $? "missing:$missing; $out"
out=$("$UK" --user --json upgrade --dry-run --tree "$TREE" "$KERNEL"); rc=$?
jq -e '.success == false and .details.phase == "stage" and .details["dry-run"] == true and
       .details.tasks >= 1 and (.details.error | startswith("org.kleap.Upgrader1.Error."))' \
  <<<"$out" >/dev/null && [[ $rc == 1 ]]
check "upgrade --json: parses, with the phase, the error name and the tasks" $? "rc $rc: $out"
json_job=$(jq -r .job <<<"$out")
[[ $(last_job) == "$json_job" ]]; check "LastUpgrade names the job upgrade-kernel followed" $? "$(prop LastUpgrade)"
idle; check "after a failed dry run kleapd is idle again" $? "$(prop State)"

# --- The question before the point of no return. -------------------------------------------
out=$("$UK" --user upgrade --tree "$TREE" "$KERNEL" </dev/null 2>&1); rc=$?
[[ $rc == 1 ]] && grep -q "stdin is not a terminal, so there is no one to ask before the point of no return; pass --yes" <<<"$out"
check "upgrade without --yes and without a terminal: refused, exit 1" $? "rc $rc: $out"
if command -v script >/dev/null; then
  out=$(echo n | script -qec "$UK --user upgrade --tree $TREE $KERNEL" /dev/null 2>&1); rc=$?
  [[ $rc == 2 ]] && grep -qE "Upgrade to $KERNEL now\? 1 tasks \([0-9]+ threads\) will be frozen" <<<"$out" &&
    grep -q "not upgrading" <<<"$out"
  check "upgrade on a terminal: asks first; 'n' stops it, exit 2" $? "rc $rc: $out"
  out=$(script -qec "$UK --user upgrade --dry-run --tree $TREE $KERNEL" /dev/null 2>&1); rc=$?
  grep -q $'\r\[#*  *\] *15% stage' <<<"$out"
  check "upgrade on a terminal: a progress bar" $? "rc $rc: $out"
else
  echo "note: no script(1) (bsdutils): the terminal prompt and progress bar are not tested"
fi
idle; check "no job started by the refused or answered-no upgrades" $? "$(prop State)"

# --- One upgrade at a time; cancel. ---------------------------------------------------------
out=$("$UK" --user --json upgrade --dry-run --no-block --tree "$TREE" "$KERNEL"); rc=$?
job=$(jq -r .job <<<"$out")
[[ $rc == 0 && $job == /org/kleap/Upgrader1/job/* ]]; check "upgrade --no-block prints the job and returns" $? "rc $rc: $out"
out=$(prop CurrentJob)
[[ $out == "o \"$job\"" ]]; check "CurrentJob is the running job" $? "$out"
out=$(prop State)
[[ $out == 's "upgrading"' ]]; check "State is upgrading while a job runs" $? "$out"
expect_error "a second upgrade: UpgradeInProgress naming the running job" \
  "org.kleap.Upgrader1.Error.UpgradeInProgress: Job $job is running" Upgrade "$KERNEL" "" "" "{'dry-run': <true>}"
out=$(nobody "$UK" --user --no-ask-password cancel); rc=$?
[[ $rc == 77 ]]; check "cancel by a caller that is not root: exit 77" $? "rc $rc: $out"
out=$("$UK" --user --json cancel); rc=$?
[[ $rc == 0 && $(jq -r .canceled <<<"$out") == "$job" ]]; check "upgrade-kernel cancel: the running job, exit 0" $? "rc $rc: $out"
wait_for 10 idle; check "a canceled job ends" $? "$(prop State)"
out=$(prop LastUpgrade)
grep -q "\"job\" o \"$job\"" <<<"$out" && grep -q '"error" s "org.kleap.Upgrader1.Error.Canceled"' <<<"$out" &&
  grep -q "canceled by uid 0; nothing was changed" <<<"$out"
check "LastUpgrade: canceled by uid 0, nothing changed" $? "$out"
out=$("$UK" --user cancel); rc=$?
[[ $rc == 2 ]]; check "cancel with nothing running: exit 2" $? "rc $rc: $out"

# --- A caller that is not root. -------------------------------------------------------------
if [[ -n $POLKITD ]]; then
  out=$(nobody "$UK" --user --no-ask-password upgrade --dry-run --tree "$TREE" "$KERNEL" 2>&1); rc=$?
  [[ $rc == 77 ]] && grep -q "uid 65534 must authenticate for org.kleap.upgrader1.upgrade (polkit)" <<<"$out"
  check "not root, polkitd running: authentication required, exit 77" $? "rc $rc: $out"
  out=$(nobody gdbus call --session --dest org.kleap.Upgrader1 --object-path /org/kleap/Upgrader1 \
    --method org.kleap.Upgrader1.Manager.Upgrade "$KERNEL" "" "" "{'dry-run': <true>}" 2>&1)
  grep -q "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" <<<"$out"
  check "not root, polkitd running: InteractiveAuthorizationRequired" $? "$out"
  kill "$POLKITD"; wait "$POLKITD" 2>/dev/null
  wait_for 10 sh -c '! busctl --user status org.freedesktop.PolicyKit1'
fi
out=$(nobody "$UK" --user --no-ask-password upgrade --dry-run --tree "$TREE" "$KERNEL" 2>&1); rc=$?
[[ $rc == 77 ]] && grep -q "uid 65534 is not root and polkit could not authorize org.kleap.upgrader1.upgrade: polkit (org.freedesktop.PolicyKit1) is not running" <<<"$out"
check "not root, no polkit: access denied saying why, exit 77" $? "rc $rc: $out"
idle; check "denied callers start no job" $? "$(prop State)"

# --- A client that disconnects mid-job. -----------------------------------------------------
"$UK" --user upgrade --dry-run --tree "$TREE" "$KERNEL" >"$WORK/client.out" 2>&1 &
client=$!
pids+=("$client")
wait_for 10 sh -c "busctl --user get-property ${M[*]} CurrentJob | grep -q job/"
job=$(prop CurrentJob | cut -d'"' -f2)
kill -KILL "$client"; wait "$client" 2>/dev/null
busctl --user call org.kleap.Upgrader1 /org/kleap/Upgrader1 org.freedesktop.DBus.Peer Ping >/dev/null
check "the client killed mid-job: kleapd still answers" $? "no answer"
wait_for 15 idle; check "the client killed mid-job: the job runs to its end" $? "$(prop State)"
[[ $(last_job) == "$job" ]]; check "the client killed mid-job: LastUpgrade reports that job" $? "$(prop LastUpgrade)"
out=$("$UK" --user --json upgrade --dry-run --no-block --tree "$TREE" "$KERNEL"); rc=$?
[[ $rc == 0 ]]; check "the client killed mid-job: the next upgrade starts" $? "rc $rc: $out"
"$UK" --user cancel >/dev/null
wait_for 10 idle

# --- upgrade-kernel --json against the bus. -------------------------------------------------
out=$("$UK" --user --json status); rc=$?
[[ $rc == 0 ]] && jq -e --arg k "$(uname -r)" --arg j "$(last_job)" --arg s "dir:$WORK/store" \
  '.state == "idle" and .running_kernel == $k and .current_job == null and .memstore == $s and
   .last_upgrade.job == $j and .last_upgrade.success == false' <<<"$out" >/dev/null
check "status --json parses and matches the bus state" $? "rc $rc: $out"

# --- Logs. ----------------------------------------------------------------------------------
grep -q "job 1 \[check\]: dry run started by uid 0" "$WORK/kleapd.log" &&
  grep -q "job 1 \[stage\]: failed in phase stage" "$WORK/kleapd.log"
check "without journald, job logs go to stderr with job and phase" $? "$(tail -n 20 "$WORK/kleapd.log")"
if [[ -S /run/systemd/journal/socket ]]; then
  out=$("$UK" log 1); rc=$?
  [[ $rc == 0 ]] && grep -q "job 1 \[check\]" <<<"$out"; check "upgrade-kernel log: the job's journal entries" $? "rc $rc: $out"
else
  out=$("$UK" log 2>&1); rc=$?
  [[ $rc == 2 ]] && grep -q "the journal holds no kleapd job entries" <<<"$out"
  check "upgrade-kernel log without journald: nothing logged, exit 2" $? "rc $rc: $out"
fi

# --- SIGTERM mid-job: the job is canceled, then kleapd exits. -------------------------------
"$UK" --user upgrade --dry-run --no-block --tree "$TREE" "$KERNEL" >/dev/null
kill -TERM "$KLEAPD_PID"
wait_for 10 sh -c "! kill -0 $KLEAPD_PID"; check "SIGTERM mid-job: kleapd exits" $? "still running"
wait "$KLEAPD_PID"; rc=$?
[[ $rc == 0 ]] && grep -q "canceling job" "$WORK/kleapd.log"
check "SIGTERM mid-job: the job is canceled first, exit 0" $? "rc $rc: $(tail -n 5 "$WORK/kleapd.log")"

echo "$passes passed, $fails failed"
((fails == 0))
