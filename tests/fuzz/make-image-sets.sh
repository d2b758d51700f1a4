#!/usr/bin/env bash
# Real image sets for the seeds of images_fuzz (tests/fuzz/images_fuzz.cc): dumps, with
# --leave-running, a `sleep` and a few programs of the cr tier (tests/cr, when built),
# each into OUT/NAME, then kills every process it started, by pid. Root only (kleap dump
# seizes the tree).
#
#   tests/fuzz/make-image-sets.sh KLEAP OUT [CR_DIR]
#
# KLEAP is the kleap binary (build/kleap); CR_DIR holds the built cr programs (default:
# the directory tests/cr beside KLEAP). A program that is missing, not ready within 10 s
# or that kleap refuses is left out, with a note. Exit status: 0 when at least one set was
# written, 1 otherwise.
set -uo pipefail

kleap=${1:?usage: make-image-sets.sh KLEAP OUT [CR_DIR]}
out=${2:?usage: make-image-sets.sh KLEAP OUT [CR_DIR]}
cr=${3:-$(dirname "$kleap")/tests/cr}
# Each program shows kinds of image the others don't: a tree with sessions, groups and a
# zombie, shared tables and address spaces, every fd kind, SysV IPC, timers, seccomp,
# locks, a time namespace.
progs=(tree00 zombie00 vmshare00 share00 fd00 pipe00 eventfd00 timerfd00 signalfd00 epoll00
  inotify00 memfd00 unix00 scm00 inet00 netlink00 tty00 sysv00 timer00 timens00 seccomp00
  locks00 fown00 aio00 mem00 sig00)

say() { echo "make-image-sets: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "needs root"; exit 1; }
[ -x "$kleap" ] || { say "no kleap at $kleap"; exit 1; }
mkdir -p "$out" || exit 1

# Every descendant of $1 (through /proc/PID/task/TID/children), $1 first.
tree_pids() {
  local -a queue=("$1")
  local p t c
  while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    echo "$p"
    for t in /proc/"$p"/task/*/children; do
      [ -r "$t" ] || continue
      for c in $(cat "$t" 2>/dev/null); do queue+=("$c"); done
    done
  done
}

# Kills the tree under $1 (and $2, the process started, when it differs), by pid.
kill_tree() {
  local p
  for p in $(tree_pids "$1") ${2:+$2}; do
    kill -KILL "$p" 2>/dev/null
  done
}

written=0
dump() {  # NAME ROOT
  local name=$1 root=$2
  rm -rf -- "${out:?}/$name"
  if timeout -k 5 60 "$kleap" dump --tree "$root" --images "$out/$name" --leave-running \
    </dev/null >"$out/.$name.log" 2>&1; then
    written=$((written + 1))
    say "$name: $(ls "$out/$name" | wc -l) images"
  else
    say "$name: left out, kleap dump failed: $(tail -n 1 "$out/.$name.log")"
    rm -rf -- "${out:?}/$name"
  fi
}

# A sleep in a session of its own.
setsid sleep 1000 </dev/null >/dev/null 2>&1 &
pid=$!
sleep 0.3
dump sleep "$pid"
kill_tree "$pid"
{ wait "$pid"; } 2>/dev/null

# mounts.img and a tmpfs's files: a sleep dumped with --mounts, in a mount namespace of
# its own (with kleap) holding a small tmpfs; the namespace goes with its last process.
if command -v unshare >/dev/null; then
  rm -rf -- "${out:?}/mounts"
  # shellcheck disable=SC2016
  if unshare -m --propagation private sh -c '
      m=$(mktemp -d /tmp/kleap-fuzz-mnt.XXXXXX) || exit 1
      mount -t tmpfs -o size=1m kleap-fuzz "$m" || exit 1
      mkdir "$m/d" && echo hello >"$m/d/f" && ln -s f "$m/d/l" && ln "$m/d/f" "$m/h" &&
        mkfifo "$m/p" || exit 1
      setsid sleep 1000 </dev/null >/dev/null 2>&1 &
      p=$!
      sleep 0.3
      timeout -k 5 60 "$1" dump --tree "$p" --images "$2" --leave-running --mounts "$m"
      rc=$?
      kill -KILL "$p"
      umount "$m"
      rmdir "$m"
      exit $rc' sh "$kleap" "$out/mounts" </dev/null >"$out/.mounts.log" 2>&1; then
    written=$((written + 1))
    say "mounts: $(ls "$out/mounts" | wc -l) images"
  else
    say "mounts: left out: $(tail -n 1 "$out/.mounts.log")"
    rm -rf -- "${out:?}/mounts"
  fi
  # netns.img: the configuration of a network namespace made for it, with an address
  # and a route.
  rm -rf -- "${out:?}/netns"
  # shellcheck disable=SC2016
  if unshare -n sh -c '
      ip link set lo up && ip addr add 10.9.8.7/24 dev lo &&
        ip route add 10.1.0.0/16 via 10.9.8.1 dev lo || exit 1
      timeout -k 5 60 "$1" net dump --pid $$ --images "$2"' sh "$kleap" "$out/netns" \
    </dev/null >"$out/.netns.log" 2>&1; then
    written=$((written + 1))
    say "netns: $(ls "$out/netns" | wc -l) images"
  else
    say "netns: left out: $(tail -n 1 "$out/.netns.log")"
    rm -rf -- "${out:?}/netns"
  fi
fi

for prog in "${progs[@]}"; do
  exe=$cr/$prog
  [ -x "$exe" ] || { say "$prog: not built, left out"; continue; }
  state=$(mktemp -d /tmp/kleap-fuzz-state.XXXXXX) || exit 1
  (
    # Only fds 0-2 go into the tree.
    for f in /proc/$BASHPID/fd/*; do
      n=${f##*/}
      [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt 2 ] && eval "exec $n>&-"
    done
    KLEAP_CR_TOKEN=kleap-fuzz-seed exec setsid "$exe" "$state"
  ) </dev/null >"$state/out.log" 2>&1 &
  bg=$!
  for _ in $(seq 100); do
    [ -f "$state/ready" ] || [ -f "$state/skip" ] && break
    kill -0 "$bg" 2>/dev/null || break
    sleep 0.1
  done
  root=$(cat "$state/pid" 2>/dev/null)
  if [ -f "$state/ready" ] && [[ "$root" =~ ^[0-9]+$ ]]; then
    dump "$prog" "$root"
    kill_tree "$root" "$bg"
  else
    say "$prog: not ready, left out"
    kill_tree "$bg"
  fi
  { wait "$bg"; } 2>/dev/null
  rm -rf -- "$state"
done

[ "$written" -gt 0 ] || { say "no set written"; exit 1; }
say "$written sets in $out"
