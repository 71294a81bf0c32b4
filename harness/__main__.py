"""``python -m harness doctor``: what this machine supports, and what is
skipped for lack of it."""

from __future__ import annotations

import sys

USAGE = "usage: python -m harness doctor"

SKIPPED_WITHOUT = {
    "root": "everything", "sysctls": "everything (every host pins its TCP sysctls)",
    "netns": "everything", "tracefs": "timeline queries",
    "iptables": "firewall faults, drop-last-ACK, power off", "nfqueue": "packet-engine faults",
    "host_netem": "(netem then runs in a user-mode Linux guest)",
    "host_tbf": "netem(rate=...) through tc (the NFQUEUE engine paces instead)",
    "uml": "netem tests when the host kernel lacks sch_netem",
    "netem": "netem tests", "syscall_tracepoints": "syscall events in the timeline",
    "sock_destroy": "destroy-socket fault and clean namespace teardown",
    "netns_reuse": "(labs then cost fresh namespaces: slower, same results)",
    "docker": "container hosts",
}


def doctor() -> int:
    from ._features import PROBES, environment, iptables_backend
    print("environment:")
    for line in environment():
        print(f"  {line}")
    print("features:")
    width = max(map(len, PROBES))
    for name, probe in PROBES.items():
        try:
            reason = probe()
        except Exception as exc:  # noqa: BLE001 - doctor reports, never crashes
            reason = f"probe failed: {type(exc).__name__}: {exc}"
        extra = f" (backend {iptables_backend()})" if name == "iptables" and not reason else ""
        if reason:
            print(f"  no   {name:<{width}}  {reason}\n       {'':<{width}}  skipped: "
                  f"{SKIPPED_WITHOUT[name]}")
        else:
            print(f"  yes  {name:<{width}}{extra}")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] != ["doctor"]:
        print(USAGE, file=sys.stderr)
        return 2
    return doctor()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
