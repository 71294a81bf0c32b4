"""Benchmark: do loss, duplicate, corrupt and drop-probability land within 3
standard deviations of what was asked, counted by the kernels?  And how
close to its time does a scheduled RST land?

    python bench/bench_rates.py [--segments 3000] [--datagrams 20000] [--resets 30]

* netem (NFQUEUE engine, the one this kernel has) on the client's link,
  a bulk TCP transfer of ``--segments`` MSS-sized segments through it;
  counted by the kernels, never by the engine: loss = 1 - receiver's
  data_segs_in / sender's data_segs_out; duplicate = receiver's
  data_segs_in / sender's data_segs_out - 1; corrupt = receiver's Tcp
  InCsumErrors / sender's data_segs_out.  Each against the binomial sigma
  sqrt(p (1 - p) / n).
* drop(probability=p) (xt_statistic): ``--datagrams`` UDP datagrams, the
  share the receiver missed.
* reset_at: ``--resets`` quiet connections, a RST scheduled 100 ms ahead
  on a wire attached first (the probe that learns the sequence is not timed);
  lateness of the segment on the wire (kernel stamp) and of the victim's
  tcp:tcp_receive_reset event; beside it, inject_rst's time from call to
  reset on the same kind of connection (it learns the sequence first).

Needs root; leaves nothing behind.
"""

from __future__ import annotations

import argparse
import math
import socket
import time


def pct(v: list[float], q: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))]


async def run(segments: int, datagrams: int, resets: int) -> None:
    import trio

    from harness import _netns, faults, open_lab, rst_received
    from harness.faults._inject import inject_rst

    async with open_lab() as lab:
        client, server = await lab.pair()
        listener = await server.listen(9100)
        conn = await client.connect(server, 9100, options={"TCP_NODELAY": True})
        peer = await listener.accept()

        async def bulk(**kw) -> tuple[int, int, int]:
            out0 = conn.info().tcp_info["data_segs_out"]
            in0 = peer.info().tcp_info["data_segs_in"]
            bad0 = server.counters("Tcp")["InCsumErrors"]
            size = segments * 1448
            async with faults.netem(client, engine="nfqueue", **kw):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lambda: conn.send(b"\x5a" * size, all=True))
                    got = 0
                    while got < size:
                        got += len((await peer.recv(1 << 20)).value)
                while conn.info().tcp_info["unacked"]:
                    await trio.sleep(0.002)
            return (conn.info().tcp_info["data_segs_out"] - out0,
                    peer.info().tcp_info["data_segs_in"] - in0,
                    server.counters("Tcp")["InCsumErrors"] - bad0)

        def row(what: str, p: float, n: int, measured: float) -> None:
            sigma = math.sqrt(p * (1 - p) / n)
            print(f"  {what:<22} asked {p:<5} n={n:<6} measured {measured:.4f} "
                  f"(error {measured - p:+.4f}, {abs(measured - p) / sigma:.2f} sigma)")

        print("netem, NFQUEUE engine, counted by the kernels")
        for p in (0.01, 0.1):
            out, inn, _ = await bulk(loss=p)
            row("loss", p, out, 1 - inn / out)
        for p in (0.01, 0.1):
            out, inn, _ = await bulk(duplicate=p)
            row("duplicate", p, out, inn / out - 1)
        for p in (0.01, 0.05):
            out, _, bad = await bulk(corrupt=p)
            row("corrupt", p, out, bad / out)

        print("drop(probability=p), xt_statistic, UDP datagrams")
        for p in (0.1, 0.5):
            with _netns.inside(server.ns_fd):
                rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with _netns.inside(client.ns_fd):
                tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with rx, tx:
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
                rx.bind((server.v4, 9999))
                rx.setblocking(False)
                got = 0
                async with faults.drop(server, protocol="udp", port=9999, probability=p):
                    for i in range(datagrams):
                        tx.sendto(b"x", (server.v4, 9999))
                        if i % 1000 == 999:  # drain as we go: the buffer must not overflow
                            while True:
                                try:
                                    rx.recv(8)
                                    got += 1
                                except BlockingIOError:
                                    break
                    while True:
                        try:
                            rx.recv(8)
                            got += 1
                        except BlockingIOError:
                            break
            row("drop probability", p, datagrams, 1 - got / datagrams)

        print(f"reset_at on quiet connections ({resets}), scheduled 100 ms ahead")
        wire_late, event_late, injected = [], [], []
        for i in range(resets):
            c = await client.connect(server, 9100)
            pr = await listener.accept()
            w = await faults.wire(c)           # the sequence learnt ahead
            target = time.monotonic() + 0.1
            seg = await faults.reset_at(c, at=target, via=w)
            w.close()
            ev = await lab.timeline.wait_for(rst_received(c))
            wire_late.append(seg.t - target)
            event_late.append(ev.t - target)
            await pr.close(linger=0)
            c2 = await client.connect(server, 9100)
            pr2 = await listener.accept()
            t0 = time.monotonic()
            await inject_rst(c2)
            ev2 = await lab.timeline.wait_for(rst_received(c2))
            injected.append(ev2.t - t0)
            await pr2.close(linger=0)
        ms = 1e3
        print(f"  RST on the wire, late by: p50 {pct(wire_late, .5) * ms:.2f} ms, "
              f"p99 {pct(wire_late, .99) * ms:.2f} ms, max {max(wire_late) * ms:.2f} ms, "
              f"min {min(wire_late) * ms:.3f} ms; within 10 ms: "
              f"{sum(x < 0.01 for x in wire_late)}/{len(wire_late)}")
        with open("/proc/loadavg") as f:
            print(f"  (load average during the run: {f.read().split()[0]} on "
                  f"{__import__('os').cpu_count()} CPUs)")
        print(f"  victim's reset event, late by: p50 {pct(event_late, .5) * ms:.2f} ms, "
              f"max {max(event_late) * ms:.2f} ms")
        print(f"  inject_rst (learns the sequence on the call) call to reset: p50 "
              f"{pct(injected, .5) * ms:.1f} ms, max {max(injected) * ms:.1f} ms")


def main() -> None:
    import trio
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=3000)
    ap.add_argument("--datagrams", type=int, default=20000)
    ap.add_argument("--resets", type=int, default=30)
    a = ap.parse_args()
    trio.run(run, a.segments, a.datagrams, a.resets)


if __name__ == "__main__":
    main()
