#!/usr/bin/env bash
# net.sock.ipv4 / net.sock.ipv6: a server with clients connected from another network
# namespace is dumped, killed and restored; every connection goes on with no error and
# no byte lost either way, the data the clients sent while it was down included.
# net.sock.conflict: a restore onto the namespace where another socket has taken the
# server's address is refused, naming it, and leaves nothing behind (no task, no lock).
# kleap runs inside the server's namespace (nsenter --net keeps the mount namespace;
# check refuses tasks in another network namespace than kleap's).
#   net-sock.sh ipv4|ipv6|conflict
source "$(dirname "$0")/net-lib.sh"
SERVER=${SERVER:?set SERVER to kleap_net_sock_server}
CLIENT=${CLIENT:?set CLIENT to kleap_net_sock_client}
command -v nsenter >/dev/null || skip "no nsenter(1)"
mode=${1:?ipv4 or ipv6}
case $mode in
  ipv4 | conflict) fam=4 saddr=10.77.0.1 ;;
  ipv6) fam=6 saddr=fd77::1 ;;
  *) fail "unknown mode $mode" ;;
esac
nconn=4
port=5000
uport=5001

srv=kleap-test-$$-srv
cli=kleap-test-$$-cli
new_ns "$srv"
new_ns "$cli"
ip -n "$srv" link set lo up
ip -n "$cli" link set lo up
ip -n "$srv" link add sv type veth peer name cv netns "$cli"
ip -n "$srv" addr add 10.77.0.1/24 dev sv
ip -n "$cli" addr add 10.77.0.2/24 dev cv
ip -n "$srv" addr add fd77::1/64 dev sv nodad
ip -n "$cli" addr add fd77::2/64 dev cv nodad
ip -n "$srv" link set sv up
ip -n "$cli" link set cv up

in_srv() { nsenter --net="/run/netns/$srv" "$@"; }
server_pid=
client_pid=
stop_peers() {
  if [[ -n $client_pid ]]; then kill "$client_pid" 2>/dev/null || true; fi
  if [[ -n $server_pid ]]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  if [[ -n ${squatter:-} ]]; then kill "$squatter" 2>/dev/null || true; fi
  cleanup
}
trap stop_peers EXIT

# wait_file PATH SECONDS
wait_file() {
  for _ in $(seq $(($2 * 10))); do
    [[ -e $1 ]] && return 0
    sleep 0.1
  done
  return 1
}

mkdir -p "$work/srv" "$work/cli"
in_srv setsid "$SERVER" "$work/srv" "$fam" "$saddr" "$port" "$nconn" "$uport" \
  </dev/null >"$work/server.log" 2>&1 &
spawned=$!
sleep 0.2
ip netns exec "$cli" "$CLIENT" "$work/cli" "$fam" "$saddr" "$port" "$nconn" \
  </dev/null >"$work/client.log" 2>&1 &
client_pid=$!
wait_file "$work/srv/ready" 20 || { cat "$work/server.log" "$work/client.log"; fail "the server is not ready"; }
server_pid=$(cat "$work/srv/pid")
sleep 1

# One connection the server closes first: TIME_WAIT on its port, which check names.
ip netns exec "$cli" python3 -c "
import socket, sys
s = socket.create_connection(('$saddr', $port))
s.sendall(b'x' * 256)
while s.recv(4096): pass
" || fail "the echo connection"
in_srv "$KLEAP" check --tree "$server_pid" >"$work/check.out" || { cat "$work/check.out"; fail "check found problems"; }
cat "$work/check.out"
grep -q "note: 1 TCP connection in TIME_WAIT on port $port: they belong to the kernel" "$work/check.out" ||
  fail "check does not name the TIME_WAIT connection"
t_down=$(date +%s.%N)
in_srv "$KLEAP" dump --tree "$server_pid" --images "$work/img" || fail "dump"
"$KLEAP" inspect "$work/img" --json >"$work/img.json" || fail "inspect"
# What the connections held at the dump, for the log: the repair-mode queues.
python3 - "$work/img.json" <<'PY'
import base64, json, sys
def walk(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k in ("inetSock", "inet_sock"):
                yield v
            else:
                yield from walk(v)
    elif isinstance(o, list):
        for v in o:
            yield from walk(v)
for s in walk(json.load(open(sys.argv[1]))):
    t = s.get("tcp", {})
    q = lambda k: len(base64.b64decode(t.get(k, t.get(k.replace("Q", "_q"), ""))))
    print("dumped socket: state %s port %s, send queue %d bytes (%s unsent), receive queue %d" %
          (s.get("state"), s.get("localPort", s.get("local_port")), q("sendQueue"),
           t.get("unsent", 0), q("recvQueue")))
PY
wait "$spawned" 2>/dev/null || true
# The lock stays on while nothing holds the sockets.
ip netns exec "$srv" nft list table inet kleap_lock >/dev/null 2>&1 ||
  fail "no network lock after the dump"
for _ in $(seq 100); do [[ -e /proc/$server_pid ]] || break; sleep 0.05; done
[[ -e /proc/$server_pid ]] && fail "pid $server_pid is still there"
sleep 1  # the clients keep sending while the server is down
if [[ $mode == conflict ]]; then
  nsenter --net="/run/netns/$srv" python3 -c "
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$saddr', $port))
s.listen()
open('$work/squatter', 'w').close()
time.sleep(120)
" &
  squatter=$!
  wait_file "$work/squatter" 10 || fail "the squatter did not start"
  if in_srv "$KLEAP" restore --images "$work/img" --detach 2>"$work/err"; then
    fail "the restore succeeded though $saddr:$port is taken"
  fi
  kill "$squatter"
  wait "$squatter" 2>/dev/null || true
  squatter=
  cat "$work/err"
  grep -q "bind $saddr:$port: the address is taken in this network namespace" "$work/err" ||
    fail "the error does not name the address"
  [[ -e /proc/$server_pid ]] && fail "a task is left behind: $server_pid"
  if ip netns exec "$srv" nft list table inet kleap_lock >/dev/null 2>&1; then
    fail "the network lock is still on after the failed restore"
  fi
  server_pid=
  echo "PASS: a restore onto a taken address is refused and leaves nothing behind"
  exit 0
fi
in_srv "$KLEAP" restore --images "$work/img" --detach >/dev/null || fail "restore"
t_up=$(date +%s.%N)
if ip netns exec "$srv" nft list table inet kleap_lock >/dev/null 2>&1; then
  fail "the network lock is still on after the restore"
fi
sleep 2  # data flows again
kill -USR1 "$server_pid"
wait_file "$work/srv/result.server" 40 || fail "no result from the server"
wait_file "$work/cli/result.client" 40 || fail "no result from the client"
cat "$work/server.log" "$work/client.log"
srv_res=$(cat "$work/srv/result.server")
cli_res=$(cat "$work/cli/result.client")
[[ $srv_res == PASS ]] || fail "server: $srv_res"
[[ $cli_res == PASS ]] || fail "client: $cli_res"

# Every byte one side sent, the other received: the client's counts and the server's,
# per connection (client port, sent, received).
while read -r p sent recvd; do
  read -r _ ssent srecvd < <(grep "^$p " "$work/srv/server.counts") || fail "conn $p: unknown to the server"
  [[ $sent == "$srecvd" ]] || fail "conn $p: the client sent $sent bytes, the server received $srecvd"
  [[ $recvd == "$ssent" ]] || fail "conn $p: the server sent $ssent bytes, the client received $recvd"
  echo "conn $p: client sent $sent, server sent $ssent: all received"
done <"$work/cli/client.counts"
[[ $(wc -l <"$work/cli/client.counts") == "$nconn" ]] || fail "not $nconn connections"
read -r gap gap_sent <"$work/cli/downtime"
printf 'downtime: the server was down %.3f s (dump to restore); the client saw no data for %s s at most, and sent %s bytes meanwhile\n' \
  "$(echo "$t_up - $t_down" | bc)" "$gap" "$gap_sent"
echo "PASS: $nconn $mode connections and a UDP pair carried"
