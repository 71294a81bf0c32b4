"""A dump of the root network namespace's configuration: links, addresses,
routes, rules, firewall rules and every net sysctl.  The harness must leave
it byte-identical."""

import os
import subprocess

COMMANDS = [
    ["ip", "-d", "link", "show"], ["ip", "addr", "show"],
    ["ip", "route", "show", "table", "all"], ["ip", "-6", "route", "show", "table", "all"],
    ["ip", "rule", "show"], ["ip", "-6", "rule", "show"],
    ["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"],
]
VOLATILE = ("nf_conntrack_count",)  # a counter that moves with any traffic, not configuration


def _run(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except FileNotFoundError:
        return f"({argv[0]} not installed)"
    return "\n".join(l for l in out.splitlines()
                     if not l.startswith("#") and "statistics" not in l)


def sysctls():
    out = {}
    for root, _dirs, files in os.walk("/proc/sys/net"):
        for f in files:
            path = os.path.join(root, f)
            if any(v in path for v in VOLATILE):
                continue
            try:
                with open(path) as fh:
                    out[path] = fh.read()
            except OSError:
                continue
    return out


def dump():
    return {" ".join(c): _run(c) for c in COMMANDS}, sysctls()
