#!/usr/bin/env bash
# net.conflict: a restore onto a namespace that already holds a conflicting thing (an
# address that is taken, a link name taken by another kind, a table that exists) is
# refused with an error that names it, and the namespace is left as it was.
source "$(dirname "$0")/net-lib.sh"
CRAFT=${CRAFT:?set CRAFT to kleap_net_craft_image}
src=kleap-test-$$-src
new_ns "$src"
ip -n "$src" link set lo up
ip -n "$src" link add va type veth peer name vb
ip -n "$src" link set va up
ip -n "$src" link set vb up
ip -n "$src" addr add 192.0.2.1/24 dev va
ip -n "$src" route add 203.0.113.0/24 via 192.0.2.254 table 100
ip netns exec "$src" nft add table inet kleap
"$KLEAP" net dump --netns "$src" --images "$work/img" || fail "dump"

# expect_refused NS PATTERN [normalize options]: restoring $IMG (the dump above by
# default) fails, says PATTERN, and changes nothing.
expect_refused() {
  local ns=$1 pattern=$2 opts=${3:-}
  python3 "$here/normalize.py" "$ns" $opts >"$work/before.json"
  if "$KLEAP" net restore --netns "$ns" --images "${IMG:-$work/img}" 2>"$work/err"; then
    fail "restore onto $ns succeeded; it should have been refused ($pattern)"
  fi
  cat "$work/err"
  grep -q -- "$pattern" "$work/err" || fail "the error does not say '$pattern'"
  python3 "$here/normalize.py" "$ns" $opts >"$work/after.json"
  diff -u "$work/before.json" "$work/after.json" || fail "the refused restore changed $ns"
}

# The address is taken by another device.
t1=kleap-test-$$-addr
new_ns "$t1"
ip -n "$t1" link add xa type veth peer name xb
ip -n "$t1" link set xa up
ip -n "$t1" addr add 192.0.2.1/24 dev xa
expect_refused "$t1" "address 192.0.2.1/24 on va: the address is taken in the target namespace (on xa)"

# A link name exists with another kind.
t2=kleap-test-$$-name
new_ns "$t2"
ip -n "$t2" link add vb type bridge
expect_refused "$t2" "link vb: the name is taken in the target namespace by a bridge device"

# The nftables table exists: everything else would apply, so this one is found by
# the check before anything is applied too.
t3=kleap-test-$$-nft
new_ns "$t3"
ip netns exec "$t3" nft add table inet kleap
expect_refused "$t3" "nftables table inet kleap: exists already"

# A failure half-way, after links, sysctls, addresses, routes, rules and neighbours
# were applied (the test hook KLEAP_FAULT=net-restore), is undone.
t4=kleap-test-$$-undo
new_ns "$t4"
KLEAP_FAULT=net-restore expect_refused "$t4" "injected fault at net-restore" --ignore-qdisc
# An image whose ruleset is a command rather than a listing is refused before the
# target's own ruleset is touched.
t7=kleap-test-$$-craft
new_ns "$t7"
ip netns exec "$t7" nft add table ip mine
"$CRAFT" "$work/img-craft" nft-command || fail "craft_image"
IMG=$work/img-craft expect_refused "$t7" "nftables ruleset: 'flush' is not part of a ruleset listing"

# A veth whose other end is in another namespace is refused at dump, by name.
t5=kleap-test-$$-peer
t6=kleap-test-$$-peer2
new_ns "$t5"
new_ns "$t6"
ip -n "$t5" link add za type veth peer name zb netns "$t6"
if "$KLEAP" net dump --netns "$t5" --images "$work/img-peer" 2>"$work/err"; then
  fail "a veth with its peer elsewhere was dumped"
fi
cat "$work/err"
grep -q "link za: the other end of this veth pair is in another network namespace" "$work/err" ||
  fail "the dump refusal does not name the veth"

echo "PASS: conflicts refused with the object named, target namespaces unchanged"
