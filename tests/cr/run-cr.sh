#!/bin/bash
# run-cr.sh: the harness of the kleap `cr` test tier.
#
#   run-cr.sh --kleap PATH --prog PATH [--prog-arg X]... [--restore-arg X]...
#             [--mode MODE] [--expect STR]... [--fault NAME]
#
# MODE:
#   restore        (default) check, dump (kills the tree), wait until its pids are
#                  gone, restore --detach, SIGUSR1, every result must read PASS.
#   leave-running  dump --leave-running, then the original tree must PASS.
#   refuse         check must fail naming every --expect STR, dump must fail, and
#                  the tree must still be alive and PASS.
#   corrupt-image  dump, flip a byte in the largest pages-*.img, restore must fail
#                  naming that file and leave no process behind.
#   pid-taken      dump --leave-running, restore must fail saying "taken", the
#                  original tree must still PASS.
#   change-file    dump, overwrite STATEDIR/lib.so with another ELF, restore must
#                  fail naming STATEDIR/lib.so and leave no process behind.
#   fault-dump     dump with KLEAP_FAULT=dump-write (or --fault NAME) must fail,
#                  naming the fault (or every --expect STR), write no inventory, and
#                  the tree must still be alive and PASS.
#   fault-restore  restore with KLEAP_FAULT=restore-rebuild (tasks exist, one has its
#                  memory rebuilt) must fail and leave no process behind; a second
#                  restore without the fault must then succeed and PASS.
#   plain          no kleap at all: start, ready, SIGUSR1, results (checks the
#                  program's own checks).
#
# The workload protocol is described in workload.h and shared/DESIGN.md.
# Exit: 0 pass, 1 fail, 77 skip. KLEAP_CR_KEEP=1 keeps STATEDIR and IMG;
# KLEAP_CR_STEP_TIMEOUT (default 60) bounds each kleap command, in seconds.
# Processes are only ever killed by PID, and only after checking that the PID
# still belongs to the program (its environment token or its executable).

set -u

KLEAP=""
PROG=""
PROG_ARGS=()
RESTORE_ARGS=()
EXPECTS=()
FAULT=dump-write
MODE=restore

usage() {
  echo "usage: $0 --kleap PATH --prog PATH [--prog-arg X]... [--restore-arg X]..." \
    "[--mode restore|leave-running|refuse|corrupt-image|pid-taken|change-file|fault-dump|fault-restore|plain]" \
    "[--expect STR]... [--fault NAME]" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --kleap) KLEAP="${2-}"; shift 2 || usage ;;
    --prog) PROG="${2-}"; shift 2 || usage ;;
    --prog-arg) PROG_ARGS+=("${2-}"); shift 2 || usage ;;
    --restore-arg) RESTORE_ARGS+=("${2-}"); shift 2 || usage ;;
    --expect) EXPECTS+=("${2-}"); shift 2 || usage ;;
    --mode) MODE="${2-}"; shift 2 || usage ;;
    --fault) FAULT="${2-}"; shift 2 || usage ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done

case "$MODE" in
  restore|leave-running|refuse|corrupt-image|pid-taken|change-file|fault-dump|fault-restore|plain) ;;
  *) echo "unknown mode: $MODE" >&2; usage ;;
esac
[ -n "$PROG" ] || usage
[ "$MODE" = plain ] || [ -n "$KLEAP" ] || usage

NAME="$(basename "$PROG") [$MODE]"
STATEDIR=""
IMG=""
BGPID=""
ROOT=""
TOKEN="kleapcr$$.$RANDOM$RANDOM"
declare -a TREE=()      # pids of the tree (processes)
declare -a TREE_TIDS=() # every tid of the tree, "pid/tid"
declare -A KNOWN=()     # every pid this harness may have to kill
declare -A COMM=()      # pid -> its comm when the tree was recorded
declare -A WAS_ZOMBIE=()  # pid/tid -> 1 when it was a zombie when the tree was recorded
declare -A WAS_STOPPED=() # pid/tid -> 1 when it was in a group stop (T) then

STEP_TIMEOUT=${KLEAP_CR_STEP_TIMEOUT:-60}
TIMED_OUT=""

say() { echo "run-cr: $*"; }

skip() {
  say "SKIP: $NAME: $*"
  exit 77
}

# ---------------------------------------------------------------- identity
# True when pid $1 is a live (non-zombie) process.
alive() {
  local st
  st=$(proc_state "$1") || return 1
  [ "$st" != Z ] && [ "$st" != X ]
}

# The state letter of /proc/$1/stat (R, S, D, T, t, Z, ...).
proc_state() {
  local line rest
  line=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$line" ] || return 1
  rest=${line##*) }
  echo "${rest%% *}"
}

# Field N (1-based, as in proc(5)) of /proc/$1/stat.
proc_stat_field() {
  local line rest idx=$(($2 - 2))
  line=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  rest=${line##*) }
  # rest starts at field 3
  local -a f
  read -r -a f <<<"$rest"
  echo "${f[$((idx - 1))]}"
}

# True when pid $1 is one of ours: it carries our environment token, runs one
# of our executables, or has the comm it had when the tree was recorded (a
# restored task whose environment or exe link the engine got wrong).
# Zombies and gone pids are not "ours": there is nothing left to kill.
ours() {
  local p=$1 exe comm
  alive "$p" || return 1
  if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "KLEAP_CR_TOKEN=$TOKEN"; then
    return 0
  fi
  comm=$(cat "/proc/$p/comm" 2>/dev/null) || return 1
  [ -n "${COMM[$p]-}" ] && [ "$comm" = "${COMM[$p]}" ] && return 0
  exe=$(readlink "/proc/$p/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)}
  [ "$exe" = "$PROG_REAL" ] && return 0
  local a
  for a in "${PROG_ARGS[@]}"; do
    [ -f "$a" ] && [ "$exe" = "$(readlink -f "$a")" ] && return 0
  done
  return 1
}

kill_known() {
  local p
  for p in "${!KNOWN[@]}"; do
    if ours "$p"; then kill -KILL "$p" 2>/dev/null; fi
  done
}

# Waits up to $1 seconds until none of the pids in TREE exists in
# /proc, zombies included. Returns 1 on timeout (the leftovers in LEFT).
wait_tree_gone() {
  local limit=$(($1 * 10)) i p
  for ((i = 0; i <= limit; i++)); do
    LEFT=""
    for p in "${TREE[@]}"; do
      [ -e "/proc/$p" ] && LEFT="$LEFT $p($(proc_state "$p"))"
    done
    [ -z "$LEFT" ] && return 0
    sleep 0.1
  done
  return 1
}

# Up to $1 seconds until no pid of TREE is alive (zombies allowed).
wait_tree_dead() {
  local limit=$(($1 * 10)) i p
  for ((i = 0; i <= limit; i++)); do
    LEFT=""
    for p in "${TREE[@]}"; do
      alive "$p" && LEFT="$LEFT $p($(proc_state "$p"))"
    done
    [ -z "$LEFT" ] && return 0
    sleep 0.1
  done
  return 1
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  exec 2>/dev/null # no "Killed" job notices from bash while reaping
  if [ -n "$ROOT" ]; then KNOWN[$ROOT]=1; fi
  kill_known
  if [ -n "$BGPID" ]; then { wait "$BGPID"; } 2>/dev/null; fi
  local p i
  for ((i = 0; i < 100; i++)); do
    local left=""
    for p in "${!KNOWN[@]}"; do
      if ours "$p"; then left="$left $p"; fi
    done
    [ -z "$left" ] && break
    [ $((i % 10)) -eq 9 ] && kill_known
    sleep 0.1
  done
  if [ "${KLEAP_CR_KEEP:-0}" = 1 ]; then
    say "kept STATEDIR=$STATEDIR IMG=$IMG"
  else
    [ -n "$STATEDIR" ] && rm -rf -- "$STATEDIR"
    [ -n "$IMG" ] && rm -rf -- "$IMG"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# ---------------------------------------------------------------- reporting
show_file() {
  local f=$1
  [ -f "$f" ] || return 0
  echo "----- $f"
  tail -c 20000 "$f"
  echo "-----"
}

dump_logs() {
  [ -n "$STATEDIR" ] || return 0
  show_file "$STATEDIR/out.log"
  local f
  for f in "$STATEDIR"/result.*; do
    [ -f "$f" ] && echo "$(basename "$f"): $(cat "$f")"
  done
  for f in "$STATEDIR"/kleap.*; do
    show_file "$f"
  done
}

fail() {
  [ -n "$TIMED_OUT" ] && set -- "$* ($TIMED_OUT)"
  say "step failed: $*"
  dump_logs
  say "FAIL: $NAME: $*"
  exit 1
}

pass() {
  say "PASS: $NAME${1:+: $1}"
  exit 0
}

# ---------------------------------------------------------------- preconditions
[ "$(id -u)" = 0 ] || skip "needs root (uid is $(id -u))"
[ -x "$PROG" ] || fail "program $PROG is not an executable"
PROG_REAL=$(readlink -f "$PROG")
if [ "$MODE" != plain ]; then
  [ -x "$KLEAP" ] || fail "kleap binary $KLEAP is not an executable"
fi
command -v setsid >/dev/null || skip "setsid (util-linux) is not installed"
command -v timeout >/dev/null || skip "timeout (coreutils) is not installed"
[ -e /proc/self/task/$$/children ] || [ -e "/proc/$$/task/$$/children" ] ||
  skip "/proc/PID/task/TID/children is missing (CONFIG_PROC_CHILDREN)"
# 32-bit programs (the program, or one it starts: mixed00) need a host that runs 32-bit
# code: the one rule (tests/ia32/host-runs-ia32, or $KLEAP_IA32_CHECK) says whether this
# one does. Where it doesn't, the guest batch vm.cr32 runs them instead.
if ! why=$(bash "${KLEAP_IA32_CHECK:-$(dirname "$0")/../ia32/host-runs-ia32}" \
  "$PROG" "${PROG_ARGS[@]}"); then
  skip "$why; the guest batch vm.cr32 runs it"
fi
for a in "$PROG" "${PROG_ARGS[@]}"; do
  [ -f "$a" ] && [ -x "$a" ] || continue
  "$a" --wl-probe </dev/null >/dev/null 2>&1 || fail "cannot execute $a here"
done

STATEDIR=$(mktemp -d /tmp/kleap-cr-state.XXXXXX) || fail "mktemp"
IMG=$(mktemp -d /tmp/kleap-cr-img.XXXXXX) || fail "mktemp"
say "$NAME: STATEDIR=$STATEDIR IMG=$IMG"

# ---------------------------------------------------------------- steps
# Runs kleap, stdout to STATEDIR/kleap.$1.out and stderr to .err; echoes both.
# Sets KRC to the exit code.
# Each step gets STEP_TIMEOUT seconds (then SIGTERM, SIGKILL 5 s later).
run_kleap() {
  local tag=$1
  shift
  say "+ kleap $*"
  timeout -k 5 "$STEP_TIMEOUT" "$KLEAP" "$@" </dev/null \
    >"$STATEDIR/kleap.$tag.out" 2>"$STATEDIR/kleap.$tag.err"
  KRC=$?
  sed 's/^/  | /' "$STATEDIR/kleap.$tag.out"
  sed 's/^/  ! /' "$STATEDIR/kleap.$tag.err"
  if [ $KRC = 124 ] || [ $KRC = 137 ]; then
    say "  kleap $tag did not finish within $STEP_TIMEOUT s (exit $KRC)"
    echo "kleap $tag timed out after $STEP_TIMEOUT s" >>"$STATEDIR/kleap.$tag.err"
    TIMED_OUT="kleap $tag timed out after $STEP_TIMEOUT s"
  fi
  say "  exit $KRC"
}

start_prog() {
  say "start: setsid $PROG $STATEDIR ${PROG_ARGS[*]}"
  # The program gets only fds 0-2: whatever this shell inherited (ctest's
  # pipes, a terminal) must not become part of the dumped tree.
  (
    for f in /proc/$BASHPID/fd/*; do
      n=${f##*/}
      [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt 2 ] && eval "exec $n>&-"
    done
    KLEAP_CR_TOKEN=$TOKEN exec setsid "$PROG" "$STATEDIR" "${PROG_ARGS[@]}"
  ) </dev/null >"$STATEDIR/out.log" 2>&1 &
  BGPID=$!
  KNOWN[$BGPID]=1
  local i
  for ((i = 0; i < 100; i++)); do
    [ -f "$STATEDIR/ready" ] && break
    if [ -f "$STATEDIR/skip" ]; then
      skip "$(basename "$PROG"): $(cat "$STATEDIR/skip")"
    fi
    if ! alive "$BGPID"; then
      [ -f "$STATEDIR/skip" ] && skip "$(basename "$PROG"): $(cat "$STATEDIR/skip")"
      fail "the program exited before it was ready"
    fi
    sleep 0.1
  done
  [ -f "$STATEDIR/ready" ] || fail "the program was not ready within 10 s"
  ROOT=$(cat "$STATEDIR/pid" 2>/dev/null)
  [[ "$ROOT" =~ ^[0-9]+$ ]] || fail "STATEDIR/pid holds '$ROOT', not a pid"
  KNOWN[$ROOT]=1
  [ "$ROOT" = "$BGPID" ] || say "note: root pid $ROOT differs from the started pid $BGPID"
  local sid
  sid=$(proc_stat_field "$ROOT" 6)
  [ "$sid" = "$ROOT" ] || fail "the root $ROOT is not a session leader (sid $sid)"
}

# Prints the processes and threads of the tree under $1 (walking
# /proc/PID/task/TID/children), sorted, one a line: "P pid" and "T pid/tid".
collect_tree() {
  local root=$1
  local -a queue=("$root")
  local p t c
  while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    [ -d "/proc/$p" ] || continue
    echo "P $p"
    for t in /proc/"$p"/task/*; do
      [ -d "$t" ] || continue
      echo "T $p/${t##*/}"
      for c in $(cat "$t/children" 2>/dev/null); do
        queue+=("$c")
      done
    done
  done | sort -u
}

record_tree() {
  TREE_LIST=$(collect_tree "$ROOT")
  TREE=()
  TREE_TIDS=()
  local kind id
  while read -r kind id; do
    case "$kind" in
      P)
        TREE+=("$id")
        KNOWN[$id]=1
        COMM[$id]=$(cat "/proc/$id/comm" 2>/dev/null)
        ;;
      T)
        TREE_TIDS+=("$id")
        # Zombies of the program (zombie00) stay zombies, and stopped tasks (stop00)
        # stopped; any other is a failure.
        case "$(proc_state "${id%/*}/task/${id#*/}")" in
          Z) WAS_ZOMBIE[$id]=1 ;;
          T) WAS_STOPPED[$id]=1 ;;
        esac
        ;;
    esac
  done <<<"$TREE_LIST"
  say "tree: ${#TREE[@]} processes (${TREE[*]}), ${#TREE_TIDS[@]} threads (${TREE_TIDS[*]})"
}

# The tree under ROOT must have exactly the pids and tids recorded.
compare_tree() {
  local now
  now=$(collect_tree "$ROOT")
  if [ "$now" != "$TREE_LIST" ]; then
    echo "before:"; echo "$TREE_LIST" | sed 's/^/  /'
    echo "after:"; echo "$now" | sed 's/^/  /'
    fail "$1: the tree's pids/tids differ from before the dump"
  fi
}

# No process of the tree may be stopped or traced after kleap let go of it.
check_not_stopped() {
  local pt st tracer
  for pt in "${TREE_TIDS[@]}"; do
    st=$(proc_state "${pt%/*}/task/${pt#*/}") || fail "$1: thread $pt is gone"
    case "$st" in
      T) [ -n "${WAS_STOPPED[$pt]:-}" ] || fail "$1: thread $pt (pid/tid) is left stopped (state T)" ;;
      t) fail "$1: thread $pt (pid/tid) is left stopped (state t)" ;;
      Z) [ -n "${WAS_ZOMBIE[$pt]:-}" ] || fail "$1: thread $pt (pid/tid) is a zombie" ;;
      X) fail "$1: thread $pt (pid/tid) is dead" ;;
    esac
    tracer=$(awk '/^TracerPid:/ {print $2}' "/proc/${pt%/*}/task/${pt#*/}/status" 2>/dev/null)
    [ "${tracer:-0}" = 0 ] || fail "$1: thread $pt (pid/tid) is still traced by $tracer"
  done
}

# SIGUSR1 to the root, then wait for results: until every role in
# STATEDIR/roles reported, else until 2 s pass without a new result (10 s max).
# Passes when at least one result exists and all read PASS.
signal_and_judge() {
  local what=$1
  rm -f "$STATEDIR"/result.*
  say "SIGUSR1 -> $ROOT ($what)"
  kill -USR1 "$ROOT" 2>/dev/null || fail "$what: cannot signal root $ROOT (gone?)"
  local roles="" r
  [ -f "$STATEDIR/roles" ] && roles=$(cat "$STATEDIR/roles")
  local i count last=-1 idle=0 all
  for ((i = 0; i < 100; i++)); do
    sleep 0.1
    count=$(find "$STATEDIR" -maxdepth 1 -name 'result.*' | wc -l)
    if [ -n "$roles" ]; then
      all=1
      for r in $roles; do [ -f "$STATEDIR/result.$r" ] || all=0; done
      [ $all = 1 ] && break
    else
      if [ "$count" != "$last" ]; then
        last=$count
        idle=0
      else
        idle=$((idle + 1))
        [ "$count" -gt 0 ] && [ $idle -ge 20 ] && break
      fi
    fi
  done
  local bad="" f res
  for f in "$STATEDIR"/result.*; do
    [ -f "$f" ] || continue
    res=$(cat "$f")
    say "  ${f##*/}: $res"
    [ "$res" = PASS ] || bad="$bad ${f##*/result.}: $res;"
  done
  for r in $roles; do
    [ -f "$STATEDIR/result.$r" ] || bad="$bad $r: no result within 10 s;"
  done
  count=$(find "$STATEDIR" -maxdepth 1 -name 'result.*' | wc -l)
  [ "$count" -gt 0 ] || fail "$what: no result file within 10 s of SIGUSR1"
  [ -z "$bad" ] || fail "$what:$bad"
}

dump_tree() {
  # stderr of this shell is muted meanwhile: bash would print "Killed" for the
  # started job once the dump kills it.
  run_kleap dump dump --tree "$ROOT" --images "$IMG" "$@" 2>/dev/null
}

# Reaps the started process and waits until the whole tree left /proc.
wait_gone_after_dump() {
  { wait "$BGPID"; } 2>/dev/null
  BGPID=""
  if ! wait_tree_dead 5; then
    fail "the tree is still alive after the dump:$LEFT"
  fi
  say "waiting until every pid of the tree left /proc (orphans are reaped late here)"
  if ! wait_tree_gone 30; then
    fail "pids of the tree still in /proc 30 s after the dump:$LEFT"
  fi
}

# Restore; sets RESTORED to the printed root pid. Returns kleap's exit code.
restore() {
  run_kleap restore restore --images "$IMG" --detach "${RESTORE_ARGS[@]}"
  RESTORED=$(grep -E '^[[:space:]]*[0-9]+[[:space:]]*$' "$STATEDIR/kleap.restore.out" | tail -n 1 |
    tr -d '[:space:]')
  return $KRC
}

# After a refused restore: no pid of the tree may be alive (zombies get 10 s to go).
check_no_stray() {
  if ! wait_tree_dead 3; then
    fail "$1: pids of the tree are alive after the refused restore:$LEFT"
  fi
  if ! wait_tree_gone 10; then
    say "note: zombies of the tree are still in /proc:$LEFT"
  fi
}

kleap_output() {
  cat "$STATEDIR/kleap.$1.out" "$STATEDIR/kleap.$1.err" 2>/dev/null
}

# ---------------------------------------------------------------- modes
start_prog
record_tree

case "$MODE" in
  plain)
    signal_and_judge "no dump"
    pass "the program's own checks pass without a dump"
    ;;

  restore)
    run_kleap check check --tree "$ROOT"
    [ $KRC = 0 ] || fail "kleap check exited $KRC"
    dump_tree
    [ $KRC = 0 ] || fail "kleap dump exited $KRC"
    wait_gone_after_dump
    restore || fail "kleap restore exited $KRC"
    [ -n "$RESTORED" ] || fail "kleap restore printed no pid on stdout"
    [ "$RESTORED" = "$ROOT" ] || fail "kleap restore printed pid $RESTORED, the root was $ROOT"
    for p in "${TREE[@]}"; do KNOWN[$p]=1; done
    check_not_stopped "after restore"
    compare_tree "after restore"
    signal_and_judge "after restore"
    pass "restored with the same pids and every check passed"
    ;;

  leave-running)
    run_kleap check check --tree "$ROOT"
    [ $KRC = 0 ] || fail "kleap check exited $KRC"
    dump_tree --leave-running
    [ $KRC = 0 ] || fail "kleap dump --leave-running exited $KRC"
    check_not_stopped "after dump --leave-running"
    compare_tree "after dump --leave-running"
    signal_and_judge "after dump --leave-running"
    pass "the tree kept running undisturbed"
    ;;

  refuse)
    run_kleap check check --tree "$ROOT"
    [ $KRC != 0 ] || fail "kleap check exited 0 on a tree it must refuse"
    out=$(kleap_output check)
    for e in "${EXPECTS[@]}"; do
      grep -qF -- "$e" <<<"$out" || fail "kleap check did not name '$e'"
    done
    dump_tree
    [ $KRC != 0 ] || fail "kleap dump exited 0 on a tree it must refuse"
    [ -s "$STATEDIR/kleap.dump.err" ] || fail "kleap dump failed without a message on stderr"
    check_not_stopped "after the refused dump"
    compare_tree "after the refused dump"
    signal_and_judge "after the refused dump"
    pass "refused with the expected reasons and the tree kept running"
    ;;

  corrupt-image)
    dump_tree
    [ $KRC = 0 ] || fail "kleap dump exited $KRC"
    wait_gone_after_dump
    # The largest (no find -printf: busybox's find, in the guest batch, has none).
    victim="" size=-1
    while IFS= read -r f; do
      s=$(stat -c %s "$f")
      [ "$s" -gt "$size" ] && { size=$s; victim=$f; }
    done < <(find "$IMG" -type f -name 'pages-*.img')
    [ -n "$victim" ] || fail "no pages-*.img in $IMG ($(ls "$IMG" | tr '\n' ' '))"
    [ "$size" -gt 0 ] || fail "$victim is empty"
    off=$((size / 2))
    byte=$(od -An -tu1 -j "$off" -N1 "$victim" | tr -d ' ')
    printf "\\$(printf '%03o' $((byte ^ 255)))" |
      dd of="$victim" bs=1 seek="$off" count=1 conv=notrunc status=none ||
      fail "cannot modify $victim"
    say "flipped byte $off of $victim ($byte -> $((byte ^ 255)))"
    restore && fail "kleap restore accepted a damaged image ($victim)"
    base=${victim##*/}
    kleap_output restore | grep -qF -- "$base" ||
      fail "kleap restore failed but did not name the damaged image $base"
    check_no_stray "after the refused restore"
    pass "the damaged image $base was refused"
    ;;

  pid-taken)
    dump_tree --leave-running
    [ $KRC = 0 ] || fail "kleap dump --leave-running exited $KRC"
    restore && fail "kleap restore succeeded although the original tree holds its pids"
    kleap_output restore | grep -qi -- "taken" ||
      fail "kleap restore failed without saying the pid is taken"
    check_not_stopped "after the refused restore"
    compare_tree "after the refused restore"
    signal_and_judge "the original tree after the refused restore"
    pass "restore refused because the pids are taken; the original tree is intact"
    ;;

  fault-dump)
    KLEAP_FAULT=$FAULT dump_tree
    [ $KRC != 0 ] || fail "kleap dump succeeded through an injected fault ($FAULT)"
    [ ${#EXPECTS[@]} -gt 0 ] || EXPECTS=("injected fault at $FAULT")
    for e in "${EXPECTS[@]}"; do
      kleap_output dump | grep -qF -- "$e" ||
        fail "kleap dump failed without saying: $e"
    done
    [ ! -e "$IMG/inventory.img" ] || fail "a failed dump committed an inventory"
    check_not_stopped "after the failed dump"
    compare_tree "after the failed dump"
    signal_and_judge "after the failed dump"
    pass "a dump that failed half-way left the tree running as before and no set behind"
    ;;

  fault-restore)
    dump_tree
    [ $KRC = 0 ] || fail "kleap dump exited $KRC"
    wait_gone_after_dump
    export KLEAP_FAULT=restore-rebuild
    restore && fail "kleap restore succeeded through an injected fault"
    unset KLEAP_FAULT
    kleap_output restore | grep -qF "injected fault at restore-rebuild" ||
      fail "kleap restore failed without naming the injected fault"
    check_no_stray "after the failed restore"
    wait_tree_gone 30 || fail "pids of the tree still in /proc 30 s after the failed restore:$LEFT"
    restore || fail "the restore after the failed one exited $KRC"
    [ "$RESTORED" = "$ROOT" ] || fail "kleap restore printed pid $RESTORED, the root was $ROOT"
    for p in "${TREE[@]}"; do KNOWN[$p]=1; done
    compare_tree "after the second restore"
    signal_and_judge "after the second restore"
    pass "a restore that failed with tasks half-built left none behind; the next one worked"
    ;;

  change-file)
    [ -f "$STATEDIR/lib.so" ] || fail "the program did not create $STATEDIR/lib.so"
    dump_tree
    [ $KRC = 0 ] || fail "kleap dump exited $KRC"
    wait_gone_after_dump
    cp /bin/true "$STATEDIR/lib.so" || fail "cannot overwrite $STATEDIR/lib.so"
    say "overwrote $STATEDIR/lib.so with /bin/true"
    restore && fail "kleap restore accepted a changed file mapping ($STATEDIR/lib.so)"
    kleap_output restore | grep -qF -- "$STATEDIR/lib.so" ||
      fail "kleap restore failed but did not name $STATEDIR/lib.so"
    check_no_stray "after the refused restore"
    pass "the changed $STATEDIR/lib.so was refused"
    ;;
esac
