"""Benchmark: loading a rule set with one iptables-restore against one
iptables call per rule, in the same run.

    .venv/bin/python bench/bench_iptables.py [--rules 50] [--rounds 5]

Creates a lab (one host) with harness.open_lab, and in that host's namespace
repeatedly: adds N rules in a chain of their own and removes them, (a) as one
``iptables-restore --noflush`` transaction each way, (b) as one ``iptables``
process per rule (plus the chain's create and jump; removal: unjump, flush,
delete).  Prints the median time of applying and of removing each way, and
the ratios.  Uses the binaries of the backend that
``iptables --version`` names, through harness._iptables as the faults do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness import open_lab  # noqa: E402
from harness import _iptables  # noqa: E402


def rule_bodies(n: int) -> list[str]:
    return [f"-s 198.18.{200 + i // 250}.{i % 250 + 1} -p tcp -m tcp --dport {10000 + i} -j DROP"
            for i in range(n)]


async def one_restore(host, restore: list[str], chain: str,
                      bodies: list[str]) -> tuple[float, float]:
    add = "\n".join(["*filter", f":{chain} - [0:0]", f"-I INPUT 1 -j {chain}",
                     *[f"-A {chain} {b}" for b in bodies], "COMMIT", ""])
    remove = "\n".join(["*filter", f"-D INPUT -j {chain}", f"-F {chain}", f"-X {chain}",
                        "COMMIT", ""])
    t0 = time.perf_counter()
    await host.run(restore, input=add.encode())
    t1 = time.perf_counter()
    await host.run(restore, input=remove.encode())
    return t1 - t0, time.perf_counter() - t1


async def per_rule(host, iptables: list[str], chain: str,
                   bodies: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    await host.run([*iptables, "-N", chain])
    for b in bodies:
        await host.run([*iptables, "-A", chain, *b.split()])
    await host.run([*iptables, "-I", "INPUT", "1", "-j", chain])
    t1 = time.perf_counter()
    await host.run([*iptables, "-D", "INPUT", "-j", chain])
    await host.run([*iptables, "-F", chain])
    await host.run([*iptables, "-X", chain])
    return t1 - t0, time.perf_counter() - t1


async def main(n: int, rounds: int) -> None:
    backend = _iptables.backend()
    restore, save = _iptables.tools(4)
    iptables = _iptables.command(4)
    wait = ["-w"] if backend == "legacy" else []  # the xtables lock, as restore does
    bodies = rule_bodies(n)
    async with open_lab() as lab:
        host = await lab.host("fw")
        batch, single = [], []
        for r in range(rounds):  # interleaved, so drift hits both alike
            batch.append(await one_restore(host, restore, f"bench{r}a", bodies))
            single.append(await per_rule(host, [iptables, *wait], f"bench{r}b", bodies))
        assert (await host.run(save)).stdout.count(b"bench") == 0, "rules left behind"
    print(f"iptables backend: {backend} ({restore[0]}, {iptables})")
    print(f"{n} rules in a chain of their own, median of {rounds} rounds:")
    for i, what, calls in ((0, "apply ", n + 2), (1, "remove", 3)):
        b = statistics.median(x[i] for x in batch)
        s = statistics.median(x[i] for x in single)
        print(f"  {what}: one iptables-restore {b * 1000:7.1f} ms | one iptables call per "
              f"rule {s * 1000:7.1f} ms ({calls} calls) | ratio {s / b:5.1f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.rules < 1 or args.rounds < 1:
        ap.error("--rules and --rounds must be >= 1")
    trio.run(main, args.rules, args.rounds)
