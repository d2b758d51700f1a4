#!/usr/bin/env python3
"""Prints the network state of a namespace in a form that compares equal across a
dump and restore. Only what must differ is changed, each for the reason given."""
import json
import subprocess
import sys

ns = sys.argv[1]
# --ignore-qdisc: a device gets its default qdisc the first time it comes up and keeps
# it when it goes down again, so a restore that was undone leaves lo with "noqueue"
# where a never-used lo has "noop". Used only by the undo check.
ignore_qdisc = "--ignore-qdisc" in sys.argv[2:]

# Timers that run on their own: they count from when each bridge and port came up.
BRIDGE_TIMERS = {"hello_timer", "tcn_timer", "topology_change_timer", "gc_timer",
                 "hold_timer", "message_age_timer", "forward_delay_timer"}
FOREVER = 4294967295


def run(*cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


def ip(*args):
    return run("ip", "-n", ns, "-j", *args)


def drop_timers(obj):
    if isinstance(obj, dict):
        return {k: drop_timers(v) for k, v in obj.items()
                if k not in BRIDGE_TIMERS and not (ignore_qdisc and k == "qdisc")}
    if isinstance(obj, list):
        return [drop_timers(v) for v in obj]
    return obj


def addresses():
    links = drop_timers(ip("addr"))
    for link in links:
        for a in link.get("addr_info", []):
            # A finite lifetime counts down: only whether it is finite must match.
            for k in ("valid_life_time", "preferred_life_time"):
                if a.get(k, FOREVER) != FOREVER:
                    a[k] = "finite"
    return links


def routes(*family):
    rs = ip(*family, "-d", "route", "show", "table", "all")
    for r in rs:
        # The prefix route of an address with a lifetime expires with it.
        if "expires" in r:
            r["expires"] = "finite"
    # Routes to one prefix on several devices are listed in the order the devices came
    # up, which restore does not promise: compare them as a set.
    return sorted(rs, key=lambda r: json.dumps(r, sort_keys=True))


def drop_handles(obj):
    if isinstance(obj, dict):
        return {k: drop_handles(v) for k, v in obj.items() if k != "handle"}
    if isinstance(obj, list):
        return [drop_handles(v) for v in obj]
    return obj


def nft():
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"],
                         check=True, capture_output=True, text=True).stdout
    # Handles are numbers the kernel hands out in the order objects are made; nft
    # makes a script's chains before its sets, the restore makes them in listed order.
    return drop_handles(json.loads(out))


def sysctls():
    out = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-a", "-r", r"^net\.ipv[46]\."],
                         capture_output=True, text=True).stdout
    vals = {}
    for line in out.splitlines():
        k, _, v = line.partition(" = ")
        # stable_secret is unreadable until set; base_reachable_time and retrans_time
        # are the coarse twins of their _ms values, which are compared.
        if k.endswith((".stable_secret", ".base_reachable_time", ".retrans_time")):
            continue
        vals[k] = v
    return vals


state = {
    "link": drop_timers(ip("-d", "link")),
    "addr": addresses(),
    "route4": routes("-4"),
    "route6": routes("-6"),
    "rule4": ip("-4", "rule"),
    "rule6": ip("-6", "rule"),
    # Entries in other states are a cache filled by traffic; the hand-made ones count.
    "neigh": ip("neigh", "show", "nud", "permanent"),
    "nft": nft(),
    "sysctl": sysctls(),
}
json.dump(state, sys.stdout, indent=1, sort_keys=True)
print()
