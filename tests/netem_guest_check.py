"""Run inside a user-mode Linux guest by tests/test_faults_netem.py: the
harness itself (open_lab, lab.pair, faults.netem) on a 6.1 kernel that has
sch_netem, so the tc code path of harness/faults/_netem.py runs for real.
Prints one JSON object of measurements; the test asserts on them.

    python tests/netem_guest_check.py     # inside the guest, from the repo

The guest has no tracefs instance worth having, so nothing here touches the
timeline (it would raise Unsupported).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import trio

from harness import _features, faults, open_lab

PORT = 9000


async def recv_exactly(sock, n: int) -> bytes:
    got = b""
    while len(got) < n:
        out = await sock.recv(1 << 20)
        assert out.ok and out.value, out
        got += out.value
    return got


async def rtts(conn, peer, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        await conn.send(b"q")
        await recv_exactly(peer, 1)
        await peer.send(b"r")
        await recv_exactly(conn, 1)
        out.append(time.monotonic() - t0)
    return out


def show(netns: str, dev: str) -> str:
    return subprocess.run(["tc", "-n", netns, "qdisc", "show", "dev", dev], check=True,
                          capture_output=True, text=True).stdout


async def main() -> dict:
    start = time.monotonic()
    r: dict = {"host_netem": _features.host_netem(), "t": {}}
    mark = lambda what: r["t"].__setitem__(what, round(time.monotonic() - start, 3))  # noqa: E731
    async with open_lab() as lab:
        client, server = await lab.pair()
        listener = await server.listen(PORT)
        conn = await client.connect(server, PORT, options={"TCP_NODELAY": True})
        peer = await listener.accept()
        sw = lab._switch[0]
        eth0 = lambda: show(client.netns, "eth0")            # noqa: E731
        port = lambda: show(sw, f"p{client.index}")          # noqa: E731
        r["baseline"] = await rtts(conn, peer, 3)
        mark("lab")

        # delay out: netem at the root of the client's eth0
        before = eth0()
        async with faults.netem(client, delay=0.1) as f:     # engine="auto" picks tc here
            r["delay_out"] = {"engine": f.engine, "during": eth0(),
                              "rtts": await rtts(conn, peer, 4)}
        r["delay_out"]["undone"] = eth0() == before
        mark("delay_out")

        # delay in: netem at the root of the switch port towards the client
        before_port, before = port(), eth0()
        async with faults.netem(client, delay=0.1, direction="in", engine="tc") as f:
            r["delay_in"] = {"engine": f.engine, "during": port(), "eth0_during": eth0(),
                             "rtts": await rtts(conn, peer, 4)}
        r["delay_in"]["undone"] = port() == before_port and eth0() == before
        mark("delay_in")

        # loss=1.0: connect() fails with ETIMEDOUT.  TCP_USER_TIMEOUT 1.1 s: the
        # SYN goes at 0 and 1 s, then the timer is clamped to the user timeout
        # (tcp_clamp_rto_to_user_timeout()), so it fails at ~1.1 s, not 3 s.
        sock = await client.socket(4)
        await sock.setsockopt("TCP_USER_TIMEOUT", 1.1)
        before, known = eth0(), len(server.sockets(port=PORT))
        async with faults.netem(client, loss=1.0, engine="tc"):
            out = await sock.connect(server, PORT)
            r["loss"] = {"errno": out.errno, "elapsed": out.duration,
                         "server_saw": len(server.sockets(port=PORT)) - known}
        r["loss"]["undone"] = eth0() == before
        mark("loss")

        # duplicate=1.0: the receiver counts two data segments for one sent
        n0 = peer.info().tcp_info["data_segs_in"]
        async with faults.netem(client, duplicate=1.0, engine="tc"):
            await conn.send(b"twice")
            await recv_exactly(peer, 5)
            deadline = time.monotonic() + 2
            while peer.info().tcp_info["data_segs_in"] - n0 < 2 and time.monotonic() < deadline:
                await trio.sleep(0.005)
        r["duplicate"] = {"data_segs_in": peer.info().tcp_info["data_segs_in"] - n0,
                          "undone": eth0() == before}
        mark("duplicate")

        # delay and rate: netem with tbf as its child
        rate = 400_000
        async with faults.netem(client, delay=0.02, rate=rate, engine="tc"):
            during = eth0()
            # how long the guest could not run when asked (see the test): a
            # 5 ms ticker's oversleeps beyond its ordinary slack, the median
            # of 21 ticks just before
            async def tick() -> float:
                t = time.monotonic()
                await trio.sleep(0.005)
                return time.monotonic() - t - 0.005
            slack = sorted([await tick() for _ in range(21)])[10]
            stolen = [0.0]

            async def ticker():
                while True:
                    stolen[0] += max(0.0, await tick() - slack)

            t0 = time.monotonic()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                nursery.start_soon(lambda: conn.send(b"\xa5" * (rate // 2), all=True))
                await recv_exactly(peer, rate // 2)
                nursery.cancel_scope.cancel()
            took = time.monotonic() - t0
            r["rate"] = {"rate": rate, "goodput": (rate // 2) / took, "took": took,
                         "stolen": stolen[0], "slack": slack, "during": during}
        r["rate"]["undone"] = eth0() == before
        mark("rate")

        try:
            faults.netem(client, delay=0.1, engine="tc")
            r["engine_tc_unsupported"] = None
        except Exception as exc:  # noqa: BLE001 - reported
            r["engine_tc_unsupported"] = repr(exc)
    mark("torn down")
    return r


if __name__ == "__main__":
    print(json.dumps(trio.run(main)))
    sys.stdout.flush()
