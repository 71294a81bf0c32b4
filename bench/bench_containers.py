"""A two-host lab of containers against a two-host lab of namespaces:
set-up (both hosts ready, one connect) and teardown, in the same run.

    .venv/bin/python bench/bench_containers.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time

import trio

import harness
from harness import _docker


async def lab_of(kind: str) -> float:
    t = time.perf_counter()
    async with harness.open_lab() as lab:
        lab._tainted = True  # fresh every time, as containers are
        if kind == "netns":
            client, server = await lab.pair()
            await server.listen(8080)
        else:
            client = await lab.container("client", image="echo")
            server = await lab.container("server", image="echo", ready=harness.listening(8080))
        await client.connect(server, 8080)
    return time.perf_counter() - t


async def main(n: int) -> None:
    if _docker.daemon_unavailable_reason():
        print("no docker daemon: skipped")
        return
    await trio.to_thread.run_sync(_docker.ensure_image, "echo")
    await lab_of("containers")  # warm up
    ns = [await lab_of("netns") for _ in range(n)]
    ct = [await lab_of("containers") for _ in range(n)]
    a, b = statistics.median(ns), statistics.median(ct)
    print(f"two-host lab, set-up + teardown (median of {n}): namespaces {a * 1000:.1f} ms, "
          f"containers {b * 1000:.1f} ms; containers cost {b / a:.1f}x namespaces")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 20)
