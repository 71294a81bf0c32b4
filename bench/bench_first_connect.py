"""The first connect after a lab is ready never stalls: N fresh labs (no
reuse), the slowest first connect (goal < 50 ms).  Without waiting for the
links' qdiscs, ~2% of fresh labs lose the first ARP request and stall 1 s.

    .venv/bin/python bench/bench_first_connect.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time

import trio

import harness


async def first_connects(n: int) -> list[float]:
    took = []
    for i in range(n):
        async with harness.open_lab() as lab:
            lab._tainted = True  # never reuse: each lab is brand new
            client, server = await lab.pair()
            family = 4 if i % 2 else 6
            listener = await server.listen(9000, family=family)
            t = time.perf_counter()
            await client.connect(server, 9000, family=family)
            took.append(time.perf_counter() - t)
            await listener.accept()
    return took


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    took = trio.run(first_connects, n)
    print(f"first connect over {n} fresh labs (IPv4 and IPv6 alternating): "
          f"median {statistics.median(took) * 1000:.2f} ms, "
          f"p99 {sorted(took)[int(n * 0.99) - 1] * 1000:.2f} ms, "
          f"slowest {max(took) * 1000:.2f} ms (goal < 50 ms): "
          f"{'ok' if max(took) < 0.05 else 'MISSED'}")


if __name__ == "__main__":
    main()
