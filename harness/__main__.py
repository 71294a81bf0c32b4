"""``python -m harness doctor``: what this machine supports, and what is
skipped for lack of it.  ``python -m harness kernel build``: build (once,
cached) the uml-6.12-tt guest kernel; ``python -m harness kernel list``:
the kernels a test can run on, and why one cannot here."""

from __future__ import annotations

import sys

USAGE = "usage: python -m harness doctor | kernel build [--force] | kernel list"

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
    "private_ipc": "(a host's processes then share the machine's SysV IPC and /dev/shm, and a "
                   "server killed in a lab leaves its segments there)",
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


def kernel(args: list[str]) -> int:
    from . import _kernels
    from .errors import HarnessError
    if args[:1] == ["list"] and len(args) == 1:
        for name, k in _kernels.KERNELS.items():
            reason = _kernels.unavailable_reason(name)
            print(f"  {'yes' if reason is None else 'no ':<4} {name:<12} {k.release:<8} "
                  f"{k.time} time" + (f"\n       {reason}" if reason else ""))
        return 0
    if args[:1] == ["build"] and set(args[1:]) <= {"--force"}:
        try:
            _kernels.build(progress=lambda msg: print(msg, flush=True), force="--force" in args)
        except HarnessError as exc:
            print(f"kernel build: {exc}", file=sys.stderr)
            return 1
        return 0
    print(USAGE, file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if argv[1:2] == ["kernel"]:
        return kernel(argv[2:])
    if argv[1:] != ["doctor"]:
        print(USAGE, file=sys.stderr)
        return 2
    return doctor()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
