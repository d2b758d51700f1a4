#!/usr/bin/env bash
# net.roundtrip: a namespace with a bridge and its ports, a veth pair, a tap, a dummy
# and a vlan (where the kernel has them), IPv4/IPv6 addresses (one with a lifetime),
# routes in two tables, rules, permanent neighbours, changed sysctls and an nftables
# ruleset with a named set is dumped, deleted, made anew empty and restored; its
# normalized state (normalize.py) must be the same as before.
source "$(dirname "$0")/net-lib.sh"
ns=kleap-test-$$-rt
new_ns "$ns"
n() { ip -n "$ns" "$@"; }

n link set lo up
n link add br0 type bridge forward_delay 500 ageing_time 20000 mcast_snooping 0
n link add vb0 type veth peer name vb1
n link set vb0 master br0
n link set dev vb0 type bridge_slave cost 7 priority 40
n tuntap add dev tap0 mode tap user 65534 group 65534
n link set tap0 master br0
n link set vb1 address 02:11:22:33:44:55 mtu 1400 txqlen 500 alias "kleap uplink"
extra=()
if kind_available "$ns" dummy; then
  n link add dm0 type dummy
  n link set dm0 up
  n addr add 10.77.0.1/16 dev dm0
  extra+=(dummy)
else
  echo "note: this kernel has no dummy devices (CONFIG_DUMMY): dummy not covered"
fi
if kind_available "$ns" vlan; then
  n link add link vb1 name vb1.42 type vlan id 42
  n link set vb1.42 up
  n addr add 10.42.0.1/24 dev vb1.42
  extra+=(vlan)
else
  echo "note: this kernel has no 802.1Q (CONFIG_VLAN_8021Q): vlan not covered"
fi
for l in br0 vb0 vb1 tap0; do n link set "$l" up; done
n addr add 192.0.2.1/24 brd + dev br0
n addr add 2001:db8:1::1/64 dev br0
n addr add 198.51.100.1/24 dev vb1 label vb1:a
n addr add 198.51.100.2/24 dev vb1
n -6 addr add 2001:db8:2::1/64 dev vb1 valid_lft 3600 preferred_lft 1800
n route add 203.0.113.0/24 via 192.0.2.254
n route add default via 198.51.100.254 table 100
n route add 10.20.0.0/16 dev vb1 table 100 metric 50
n route add blackhole 10.66.0.0/16 table 100
n -6 route add 2001:db8:99::/48 via 2001:db8:1::fe metric 200
n -6 route add 2001:db8:98::/48 dev vb1 table 200
n rule add from 198.51.100.0/24 table 100 pref 1000
n rule add fwmark 0x10/0xff lookup 100 pref 1002
n -6 rule add to 2001:db8:99::/48 lookup 200 pref 1001
n neigh add 192.0.2.10 lladdr 02:00:00:00:00:0a dev br0 nud permanent
n -6 neigh add 2001:db8:1::10 lladdr 02:00:00:00:00:0b dev br0 nud permanent
ip netns exec "$ns" sysctl -q -w net.ipv4.ip_forward=1 net.ipv4.conf.vb1.rp_filter=2 \
  net.ipv6.conf.all.forwarding=1 net.ipv4.conf.default.arp_announce=2 \
  net.ipv6.conf.br0.accept_ra=0 net.ipv4.tcp_syn_retries=4 net.ipv4.neigh.vb1.ucast_solicit=5
ip netns exec "$ns" nft -f - <<'NFT'
table inet kleap {
  set blocked {
    type ipv4_addr
    flags interval
    elements = { 10.0.0.0/8, 192.0.2.77 }
  }
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr @blocked drop
    tcp dport 22 accept
  }
}
NFT
settle "$ns"
python3 "$here/normalize.py" "$ns" >"$work/before.json"

# Dumped by a task inside it (--pid), restored by name (--netns).
ip netns exec "$ns" sleep 60 &
sleeper=$!
for _ in $(seq 50); do
  [[ $(readlink /proc/$sleeper/ns/net) == $(readlink /proc/self/ns/net) ]] || break
  sleep 0.1
done
"$KLEAP" net dump --pid "$sleeper" --images "$work/img" || fail "dump"
kill "$sleeper"
wait "$sleeper" 2>/dev/null || true
"$KLEAP" net show --images "$work/img" >"$work/show.txt" || fail "net show"
"$KLEAP" inspect "$work/img" --json >/dev/null || fail "inspect of a network image"
ip netns del "$ns"
ip netns add "$ns"
"$KLEAP" net restore --netns "$ns" --images "$work/img" || fail "restore"
settle "$ns"
python3 "$here/normalize.py" "$ns" >"$work/after.json"
if ! diff -u "$work/before.json" "$work/after.json"; then
  fail "the restored namespace differs (see the diff above)"
fi
echo "PASS: bridge, veth, tap${extra:+, ${extra[*]}}, addresses, routes, rules, neighbours, sysctls and nftables carried"
