"""The cost of a lab call from each test style, in the same run: a socket
send + recv round trip on an established connection, called natively from
trio (the floor), awaited from asyncio and made blocking from a sync caller
(both crossing to the lab thread, harness._bridge).  Prints the median per
round trip and the ratio to the floor.  Most of the crossing is the GIL:
waking the lab thread (trio's wake-up socket) hands it the GIL, and the
caller gets it back only when trio blocks again.

    .venv/bin/python bench/bench_styles.py [ROUNDS]
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time

import trio

import harness
from harness._bridge import LAB_THREAD, install


async def connected(lab):
    client, server = await lab.pair()
    listener = await server.listen(7100)
    conn = await client.connect(server, 7100)
    return conn, await listener.accept()


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def trio_rounds(n: int) -> list[float]:
    async with harness.open_lab() as lab:
        conn, peer = await connected(lab)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await conn.send(b"x")
            await peer.recv()
            out.append(time.perf_counter() - t)
        return out


def bridged_rounds(n: int) -> tuple[list[float], list[float]]:
    artifacts = tempfile.mkdtemp(prefix="fih-bench-styles-")
    held = LAB_THREAD.open_lab(artifacts, 0, "")
    try:
        conn, peer = LAB_THREAD.run_blocking(connected(held.lab))
        sync = []
        for _ in range(n):
            t = time.perf_counter()
            conn.send(b"x")
            peer.recv()
            sync.append(time.perf_counter() - t)

        async def in_asyncio() -> list[float]:
            out = []
            for _ in range(n):
                t = time.perf_counter()
                await conn.send(b"x")
                await peer.recv()
                out.append(time.perf_counter() - t)
            return out
        return asyncio.run(in_asyncio()), sync
    finally:
        LAB_THREAD.close_lab(held)
        shutil.rmtree(artifacts, ignore_errors=True)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    install()
    floor = median_us(trio.run(trio_rounds, n))
    aio, sync = (median_us(s) for s in bridged_rounds(n))
    print(f"send+recv round trip, median of {n}: trio {floor:.0f} µs (floor); "
          f"asyncio {aio:.0f} µs ({aio / floor:.2f}x); sync {sync:.0f} µs ({sync / floor:.2f}x)")


if __name__ == "__main__":
    main()
