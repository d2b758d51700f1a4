# Shared by the net tests: root and `ip netns` or skip (77), unique namespace names,
# and cleanup of every namespace a test made, whatever way it ends.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KLEAP=${KLEAP:?set KLEAP to the kleap binary}

skip() { echo "SKIP: $*"; exit 77; }
[[ $(id -u) == 0 ]] || skip "needs root (network namespaces)"
command -v ip >/dev/null || skip "no ip(8)"
command -v nft >/dev/null || skip "no nft(8)"
probe=kleap-test-$$-probe
ip netns add "$probe" 2>/dev/null || skip "ip netns add does not work here"
ip netns del "$probe"

made=()
cleanup() {
  for n in "${made[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  [[ -n ${work:-} ]] && rm -rf "$work"
  return 0
}
trap cleanup EXIT
work=$(mktemp -d /tmp/kleap-net-test.XXXXXX)

# new_ns NAME: makes the namespace and remembers it for cleanup.
new_ns() {
  ip netns add "$1"
  made+=("$1")
}

fail() { echo "FAIL: $*"; exit 1; }

# Waits until duplicate address detection is done: no IPv6 address is tentative and
# the address list has stayed the same for half a second (link-local addresses appear
# a moment after a link gets its carrier).
settle() {
  local a b
  for _ in $(seq 40); do
    a=$(ip -n "$1" -6 addr)
    if ! grep -q tentative <<<"$a"; then
      sleep 0.5
      b=$(ip -n "$1" -6 addr)
      [[ $a == "$b" ]] && return 0
    else
      sleep 0.25
    fi
  done
  fail "IPv6 addresses in $1 do not settle"
}

# kind_available NS KIND: whether this kernel can make a device of that kind.
kind_available() {
  if ip -n "$1" link add kleap-probe type "$2" 2>/dev/null; then
    ip -n "$1" link del kleap-probe
    return 0
  fi
  return 1
}
