#!/bin/bash
# run-init.sh: a whole system (a pid namespace whose PID 1 is the program) dumped and
# restored by `kleap restore --as-init` as PID 1 of a new namespace: the path
# kleap-init takes after a kexec, on the host.
#
#   run-init.sh --kleap PATH --prog PATH [--mode restore|fault|mounts]
#
# restore (default): start `unshare -p -f --mount-proc setsid PROG STATEDIR`,
#   wait for ready, `nsenter -p -m kleap dump --tree 1` (kills the namespace), then
#   `unshare -p -f --mount-proc kleap restore --as-init`; SIGUSR1 to the new
#   PID 1, and every role of STATEDIR/roles must report PASS.
# mounts: as restore, with `PROG STATEDIR mounts` (a tmpfs of the namespace's own at
#   STATEDIR/mnt), dumped with --mounts STATEDIR/mnt and restored with --mounts.
# fault: the restore runs with KLEAP_FAULT=restore-rebuild, which fails right after
#   PID 1's memory became the old init's: the controller must kill the other tasks and
#   exec --fallback-init in PID 1, which records that it ran as pid 1 with no other
#   task of the set alive.
#
# The short options of unshare are those that busybox's takes too (the guest batch,
# vm.cr32, runs this in a busybox guest).
#
# Exit: 0 pass, 1 fail, 77 skip. Only the PIDs started here are killed: each namespace
# goes with its PID 1.
set -u

KLEAP=""
PROG=""
MODE=restore
while [ $# -gt 0 ]; do
  case "$1" in
    --kleap) KLEAP="${2-}"; shift 2 ;;
    --prog) PROG="${2-}"; shift 2 ;;
    --mode) MODE="${2-}"; shift 2 ;;
    *) echo "usage: $0 --kleap PATH --prog PATH [--mode restore|fault]" >&2; exit 2 ;;
  esac
done
[ -n "$KLEAP" ] && [ -n "$PROG" ] || { echo "usage: $0 --kleap PATH --prog PATH" >&2; exit 2; }
case "$MODE" in restore | fault | mounts) ;; *) echo "unknown mode $MODE" >&2; exit 2 ;; esac

NAME="$(basename "$PROG") [init $MODE]"
say() { echo "run-init: $*"; }
for tool in unshare nsenter setsid; do
  command -v "$tool" >/dev/null || { say "SKIP: $NAME: no $tool (util-linux)"; exit 77; }
done
[ "$(id -u)" = 0 ] || { say "SKIP: $NAME: needs root (pid namespaces, ptrace)"; exit 77; }
# A 32-bit PID 1 needs a host that runs 32-bit code (tests/ia32/host-runs-ia32); where
# this one doesn't, the guest batch vm.cr32 runs it.
if ! why=$(bash "${KLEAP_IA32_CHECK:-$(dirname "$0")/../ia32/host-runs-ia32}" "$PROG"); then
  say "SKIP: $NAME: $why; the guest batch vm.cr32 runs it"
  exit 77
fi

STATEDIR=$(mktemp -d /tmp/kleap-init-state.XXXXXX)
IMG=$(mktemp -d /tmp/kleap-init-img.XXXXXX)
STARTED=() # the unshare processes: each namespace's PID 1 is their child

# The host pid of the namespace's PID 1: the child of unshare process $1.
ns_init() {
  local c
  c=$(cat /proc/"$1"/task/*/children 2>/dev/null | awk '{print $1; exit}')
  echo "${c:-}"
}

cleanup() {
  local rc=$? u i
  trap - EXIT INT TERM HUP
  for u in "${STARTED[@]}"; do
    i=$(ns_init "$u")
    [ -n "$i" ] && kill -KILL "$i" 2>/dev/null
    kill -KILL "$u" 2>/dev/null
    wait "$u" 2>/dev/null
  done
  if [ "${KLEAP_CR_KEEP:-0}" = 1 ]; then
    say "kept STATEDIR=$STATEDIR IMG=$IMG"
  else
    rm -rf -- "$STATEDIR" "$IMG"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

fail() {
  say "FAIL: $NAME: $*"
  for f in "$STATEDIR"/*.log "$STATEDIR"/*.out "$STATEDIR"/*.err; do
    [ -s "$f" ] && { say "--- ${f##*/}"; sed 's/^/  /' "$f"; }
  done
  exit 1
}

# wait_for SECONDS CMD...: polls CMD every 0.1 s.
wait_for() {
  local n=$(($1 * 10))
  shift
  for ((; n > 0; n--)); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

# 1. The system: PID 1 is the program, in a session of its own.
say "start: unshare -p -f --mount-proc setsid $PROG $STATEDIR"
PROG_ARGS=()
DUMP_ARGS=()
ARGS=(restore --images "$IMG" --as-init)
if [ "$MODE" = mounts ]; then
  PROG_ARGS=(mounts)
  DUMP_ARGS=(--mounts "$STATEDIR/mnt")
  ARGS+=(--mounts)
fi
unshare -p -f --mount-proc setsid "$PROG" "$STATEDIR" "${PROG_ARGS[@]}" </dev/null \
  >"$STATEDIR/prog.log" 2>&1 &
U1=$!
STARTED+=("$U1")
wait_for 10 test -f "$STATEDIR/ready" || fail "the program was not ready within 10 s"
INIT1=$(ns_init "$U1")
[ -n "$INIT1" ] || fail "no PID 1 under unshare $U1"
# The set's pids, as its namespace numbers them.
SET_PIDS=$(nsenter -t "$INIT1" -p -m sh -c 'cd /proc && for p in [0-9]*; do [ $p != $$ ] && echo $p; done')
say "pids of the set: $(echo $SET_PIDS)"
say "PID 1 of the first namespace is $INIT1 on the host"

# 2. Dump the whole namespace from inside it (kleap leaves itself out of the walk).
say "+ nsenter -t $INIT1 -p -m kleap dump --tree 1 --images $IMG"
nsenter -t "$INIT1" -p -m "$KLEAP" dump --tree 1 --images "$IMG" "${DUMP_ARGS[@]}" \
  >"$STATEDIR/dump.out" 2>"$STATEDIR/dump.err" ||
  fail "dump failed: $(cat "$STATEDIR/dump.err")"
sed 's/^/  ! /' "$STATEDIR/dump.err"
# Everything else is gone; PID 1 ignores SIGKILL from inside its namespace.
kill -KILL "$INIT1"
wait_for 10 sh -c "! test -d /proc/$INIT1" || fail "the namespace outlived its dumped PID 1"
wait "$U1" 2>/dev/null
rm -f "$STATEDIR"/result.*

# 3. Restore as PID 1 of a new namespace.
ENVS=()
if [ "$MODE" = fault ]; then
  # It records its pid, then every other task as "pid (comm) state", with builtins only.
  cat >"$STATEDIR/fallback" <<END
#!/bin/sh
out="pid=\$\$"
for d in /proc/[0-9]*; do
  [ "\${d#/proc/}" = "\$\$" ] && continue
  read -r l <"\$d/stat" 2>/dev/null && out="\$out;\${l%% [0-9]*}"
done
echo "\$out" >"$STATEDIR/fell-back"
END
  chmod +x "$STATEDIR/fallback"
  ARGS+=(--fallback-init "$STATEDIR/fallback")
  ENVS=(KLEAP_FAULT=restore-rebuild)
fi
say "+ ${ENVS[*]} unshare -p -f --mount-proc kleap ${ARGS[*]}"
env "${ENVS[@]}" unshare -p -f --mount-proc "$KLEAP" "${ARGS[@]}" </dev/null \
  >"$STATEDIR/restore.out" 2>"$STATEDIR/restore.err" &
U2=$!
STARTED+=("$U2")

if [ "$MODE" = fault ]; then
  wait_for 30 test -s "$STATEDIR/fell-back" || fail "PID 1 did not exec the fallback init"
  sed 's/^/  ! /' "$STATEDIR/restore.err"
  got=$(cat "$STATEDIR/fell-back")
  say "fallback init: $got"
  case "$got" in
    pid=1 | "pid=1;"*) ;;
    *) fail "the fallback init did not run as pid 1: $got" ;;
  esac
  # Every task of the set other than PID 1 must be dead (a zombie PID 1 may reap).
  IFS=';' read -ra tasks <<<"${got#pid=1}"
  for t in "${tasks[@]}"; do
    p=${t%% *}
    for s in $SET_PIDS; do
      [ "$s" = "$p" ] && [ "$s" != 1 ] && [ "${t##* }" != Z ] && fail "task $t of the set is alive"
    done
  done
  wait_for 10 grep -q "injected fault at restore-rebuild" "$STATEDIR/restore.err" ||
    fail "kleap did not report the injected fault"
  say "PASS: $NAME: PID 1 fell back to its init, alone"
  exit 0
fi

wait_for 30 grep -q "tasks as init" "$STATEDIR/restore.err" ||
  fail "no 'restored ... tasks as init' within 30 s"
sed 's/^/  ! /' "$STATEDIR/restore.err"
INIT2=$(ns_init "$U2")
[ -n "$INIT2" ] || fail "the restored namespace has no PID 1"
[ "$(cat /proc/"$INIT2"/comm)" = "$(basename "$PROG" | cut -c1-15)" ] ||
  fail "PID 1 of the new namespace is $(cat /proc/"$INIT2"/comm), not the program"
say "SIGUSR1 -> $INIT2 (PID 1 of the restored namespace)"
kill -USR1 "$INIT2"
for r in $(cat "$STATEDIR/roles"); do
  wait_for 10 test -f "$STATEDIR/result.$r" || fail "no result.$r within 10 s"
done
bad=""
for r in $(cat "$STATEDIR/roles"); do
  res=$(cat "$STATEDIR/result.$r")
  say "  result.$r: $res"
  [ "$res" = PASS ] || bad="$bad $r: $res;"
done
[ -z "$bad" ] || fail "after the restore:$bad"
say "PASS: $NAME: restored as PID 1 and every check passed"
