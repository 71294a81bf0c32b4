"""Sustained two-host lab throughput: create, one connect + echo, teardown,
including the kernel's deferred namespace teardown, over N labs; against a
raw-rtnetlink floor doing the same (goals: a lab reusing the pool's scrubbed
namespaces >= 5x its rate, a lab with fresh namespaces >= 0.5x) and against two
`docker run --network none` containers when a daemon answers (goal: >= 20x).

    .venv/bin/python bench/bench_lab.py [N]
"""

from __future__ import annotations

import os
import sys
import time

import trio

sys.path.insert(0, os.path.dirname(__file__))
import _floor  # noqa: E402

import harness  # noqa: E402
from harness import _netns  # noqa: E402


def floor_rate(n: int) -> float:
    base = _floor.live_namespaces()
    t = time.perf_counter()
    for i in range(n):
        names, fds = _floor.lab(f"fih{os.getpid()}-floor{i}", 200 + i % 50)
        _floor.connect_echo(fds, 200 + i % 50)
        _floor.teardown(names, fds)
    return n / (_floor.wait_kernel_cleanup(base) - t)


class _Deletions:
    """Counts the namespaces the harness deletes during a run (a wrapper of
    the real _netns.delete).  A run that deleted none (labs reusing the
    pool's namespaces) caused no deferred kernel teardown to wait for: the
    machine's live-namespace count then moves only with other processes."""

    def __init__(self) -> None:
        self.n, self.real = 0, _netns.delete

    def __enter__(self) -> "_Deletions":
        def counted(name: str) -> None:
            self.n += 1
            self.real(name)
        _netns.delete = counted
        return self

    def __exit__(self, *exc) -> None:
        _netns.delete = self.real


async def harness_rate(n: int, fresh: bool = False) -> float:
    """Labs per second; ``fresh`` taints each lab so that none is reused
    (every lab pays for new namespaces and their deferred teardown)."""
    with _Deletions() as deleted:
        base = _floor.live_namespaces()
        t = time.perf_counter()
        await _labs(n, fresh)
        end = time.perf_counter()
    if deleted.n:
        end = await trio.to_thread.run_sync(_floor.wait_kernel_cleanup, base)
    return n / (end - t)


async def _labs(n: int, fresh: bool) -> None:
    for _ in range(n):
        async with harness.open_lab() as lab:
            lab._tainted = fresh
            client, server = await lab.pair()
            listener = await server.listen(9000)
            conn = await client.connect(server, 9000)
            peer = await listener.accept()
            await conn.send(b"ping")
            await peer.send((await peer.recv()).value)
            assert (await conn.recv()).value == b"ping"


def docker_rate(n: int) -> float | None:
    from harness import _docker
    if _docker.daemon_unavailable_reason():
        return None
    tag = _docker.ensure_image("echo")
    base = _floor.live_namespaces()
    t = time.perf_counter()
    for i in range(n):
        ids = [_docker.run(tag, name=f"fih{os.getpid()}-bench{i}{k}", command=None,
                           labels={"harness.owner": str(os.getpid())}).id for k in "ab"]
        for cid in ids:
            _docker.remove(cid)
    return n / (_floor.wait_kernel_cleanup(base) - t)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    trio.run(harness_rate, 5)  # warm up imports and the tracefs instance
    floor = floor_rate(n)
    ours = trio.run(harness_rate, n)
    fresh = trio.run(harness_rate, n, True)
    print(f"labs/s  floor (raw rtnetlink, fresh namespaces): {floor:8.1f}")
    print(f"labs/s  harness (reusing scrubbed namespaces):   {ours:8.1f}   "
          f"ratio {ours / floor:.2f}x of the floor (goal >= 5x)")
    print(f"labs/s  harness (fresh namespaces every lab):    {fresh:8.1f}   "
          f"ratio {fresh / floor:.2f}x of the floor (goal >= 0.5x)")
    dock = docker_rate(max(10, n // 30))
    if dock is None:
        print("labs/s  docker: no daemon answers; skipped")
    else:
        print(f"labs/s  docker (2 containers): {dock:8.2f}   harness is {ours / dock:.1f}x docker "
              f"(goal >= 20x)")


if __name__ == "__main__":
    main()
