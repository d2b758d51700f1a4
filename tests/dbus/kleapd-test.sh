#!/usr/bin/env bash
# kleapd on a real, private D-Bus (run under dbus-run-session): properties, Check on real
# trees, and the errors callers get for bad arguments.
#   kleapd-test.sh --kleapd PATH --ok-prog PATH --refused-prog PATH
set -u
while (($#)); do
  case $1 in
    --kleapd) KLEAPD=$2; shift 2 ;;
    --ok-prog) OK_PROG=$2; shift 2 ;;
    --refused-prog) BAD_PROG=$2; shift 2 ;;
    --upgrade-kernel) UK=$2; shift 2 ;;
    *) echo "kleapd-test: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z ${DBUS_SESSION_BUS_ADDRESS:-} ]]; then
  exec dbus-run-session -- "$0" --kleapd "$KLEAPD" --ok-prog "$OK_PROG" --refused-prog "$BAD_PROG" \
    --upgrade-kernel "$UK"
fi
pids=()
dirs=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "${dirs[@]}"
}
trap cleanup EXIT
fails=0
check() {  # check NAME CONDITION-EXIT-STATUS DETAIL
  if [[ $2 == 0 ]]; then echo "ok: $1"; else echo "FAIL: $1: $3"; fails=$((fails + 1)); fi
}
start_prog() {  # start_prog PROG -> sets STARTED to its pid
  local d
  d=$(mktemp -d /tmp/kleapd-test.XXXXXX)
  dirs+=("$d")
  setsid "$1" "$d" </dev/null >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [[ -e $d/ready ]] && break; sleep 0.1; done
  STARTED=$(cat "$d/pid")
}
call() { busctl --user call org.kleap.Upgrader1 /org/kleap/Upgrader1 org.kleap.Upgrader1.Manager "$@"; }
send() {  # gdbus prints the D-Bus error name of a failed call
  gdbus call --session --dest org.kleap.Upgrader1 --object-path /org/kleap/Upgrader1 \
    --method org.kleap.Upgrader1.Manager.Check "$1" 2>&1
}

"$KLEAPD" --user --no-exit-on-idle &
pids+=($!)
for _ in $(seq 100); do busctl --user status org.kleap.Upgrader1 >/dev/null 2>&1 && break; sleep 0.1; done

out=$(busctl --user get-property org.kleap.Upgrader1 /org/kleap/Upgrader1 org.kleap.Upgrader1.Manager RunningKernel)
[[ $out == "s \"$(uname -r)\"" ]]; check "RunningKernel is the running kernel" $? "$out"
out=$(busctl --user get-property org.kleap.Upgrader1 /org/kleap/Upgrader1 org.kleap.Upgrader1.Manager State)
[[ $out == 's "idle"' ]]; check "State is idle" $? "$out"

start_prog "$OK_PROG"
out=$(call Check 'a{sv}' 1 tree u "$STARTED")
grep -q '"dumpable" b true' <<<"$out"; check "Check: a plain tree is dumpable" $? "$out"
grep -q '"problems" a(isss) 0' <<<"$out"; check "Check: no problems listed" $? "$out"

# upgrade-kernel is a client of the same API.
out=$("$UK" --user status); rc=$?
grep -q "Running kernel: $(uname -r)" <<<"$out" && [[ $rc == 0 ]]; check "upgrade-kernel status" $? "rc $rc: $out"
out=$("$UK" --user --json check --tree "$STARTED" --kernel "$KLEAPD"); rc=$?
grep -q '"upgradable":true' <<<"$out" && [[ $rc == 0 ]]; check "upgrade-kernel check: upgradable, exit 0" $? "rc $rc: $out"
out=$("$UK" --user check --tree "$STARTED" --kernel /nonexistent/vmlinuz); rc=$?
[[ $rc == 2 ]] && grep -q "target kernel: none found" <<<"$out"; check "upgrade-kernel check: no kernel, exit 2" $? "rc $rc: $out"

start_prog "$BAD_PROG"
out=$(call Check 'a{sv}' 1 tree u "$STARTED")
grep -q '"dumpable" b false' <<<"$out"; check "Check: a tree with io_uring is not dumpable" $? "$out"
grep -q "io_uring is not supported" <<<"$out"; check "Check: the io_uring fd is named with its reason" $? "$out"
grep -q "$STARTED \"fd " <<<"$out"; check "Check: the problem names the pid and the fd" $? "$out"
out=$("$UK" --user check --tree "$STARTED" --kernel "$KLEAPD"); rc=$?
[[ $rc == 1 ]] && grep -q "pid $STARTED fd .*io_uring is not supported" <<<"$out"; check "upgrade-kernel check: blocked, exit 1, names pid and fd" $? "rc $rc: $out"

out=$(send "{'bogus': <'x'>}")
grep -q "org.freedesktop.DBus.Error.InvalidArgs: Unknown option 'bogus'" <<<"$out"; check "unknown option: InvalidArgs naming the key" $? "$out"
out=$(send "{'tree': <'x'>}")
grep -q "org.freedesktop.DBus.Error.InvalidArgs: Option 'tree' must be a PID" <<<"$out"; check "tree of the wrong type: InvalidArgs" $? "$out"
out=$(send "{'tree': <uint32 999999>}")
grep -q "org.kleap.Upgrader1.Error.TaskGone" <<<"$out"; check "a tree that doesn't exist: TaskGone" $? "$out"

echo "$((14 - fails)) passed, $fails failed"
((fails == 0))
