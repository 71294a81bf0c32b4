"""Benchmark the NFQUEUE fallback of faults.netem: how close it comes to what
was asked (delay p50/p99, jitter's spread, loss fraction, rate) and what it
costs (CPU per packet in this process, which runs the engine in its trio loop
as a test does), all in one run, in one lab.

    python bench/bench_netem_fallback.py [--seconds 1.0] [--only placement] [--runs 5]
                                         [--cc cubic]

A lab with two hosts; the server host runs an echo server (port 9000) and a
sink (port 9001) as processes, the client host the load processes, and the
fault sits on the client's link ("out"), so every request, and every bulk
data segment, crosses the engine once.

* delay: round trips of 64 B without, then with netem(delay=d) for d in 1,
  10, 50 ms: the added one-way delay (RTT - kernel RTT) at p50 and p99,
  against d; then delay 20 ms +- 10 ms jitter: p1..p99 against [10, 30] ms;
* loss: bulk data segments with loss p (0.01, 0.1, 0.3), counted by the
  kernels (sender's data_segs_out against receiver's data_segs_in, on the
  harness's own sockets): measured fraction, against p and the binomial
  sigma;
* rate: a bulk transfer's goodput under rate r (1 and 10 MB/s), against r
  (frames count 1514 B for 1448 B of payload, so 0.956 r is exact);
* placement: 1 MB bulk, and 10 KB (within TCP's initial window: two round
  trips, the handshake's and the data's), with delay 50 ms on each end and
  direction (sender out, receiver in, sender in, receiver out), the
  connection made inside the fault: seconds and MB/s each, and each
  against the fastest placement (the same delay must give the same
  throughput wherever it sits: within 10 %), and for the bulk transfer the
  share of the sender's busy time it was limited by the receiver's window
  (tcp_info's rwnd_limited / busy); the sender's congestion control is the
  namespace's (inherited from the machine's default) unless ``--cc`` names
  one;
* cost: this process's CPU time per packet through the engine for bulk
  traffic: the bare packet engine (faults.intercept, accept all), netem with
  nothing to do, with loss 0.01, with delay 1 ms.

Needs root; leaves nothing behind (the lab is torn down).
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time

RR_PORT, BULK_PORT = 9000, 9001
MSG = 64
BULK_BYTES = 1 << 20
SMALL_BYTES = 10_000        # < 10 segments of 1448 B: one initial window
PLACEMENT_RUNS = 5


# --- roles run as processes inside the lab hosts (stdlib only: fast to start) --------

def role_server() -> None:
    """The engine bench's request/response and bulk server (both families)."""
    from bench_nfqueue_engine import role_server as serve
    serve()


def role_client(mode: str, addr: str, amount: float, cc: str = "") -> None:
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if cc:   # a namespace may not make a restricted one its default; a socket may
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    pc = time.perf_counter
    if mode == "rr":                     # amount: round trips
        s.connect((addr, RR_PORT))
        msg, rtts = b"q" * MSG, []
        for _ in range(int(amount)):
            t0 = pc()
            s.sendall(msg)
            got = 0
            while got < MSG:
                got += len(s.recv(MSG - got))
            rtts.append(pc() - t0)
        s.close()
        print(json.dumps({"rtts": rtts}))
    elif mode == "bytes":                # amount: bytes, timed from before connect()
        t0 = pc()
        s.connect((addr, BULK_PORT))
        s.sendall(b"\xa5" * int(amount))
        s.shutdown(socket.SHUT_WR)
        total = int(s.recv(64))          # the sink counted them all
        seconds = pc() - t0
        cc = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0")
        # tcp_info's chrono times (linux/tcp.h): busy, rwnd_limited, sndbuf_limited (us)
        busy, rwnd, sndbuf = struct.unpack_from("QQQ", s.getsockopt(
            socket.IPPROTO_TCP, socket.TCP_INFO, 192), 168)
        print(json.dumps({"bytes": total, "seconds": seconds, "cc": cc.decode(),
                          "busy": busy / 1e6, "rwnd_limited": rwnd / 1e6,
                          "sndbuf_limited": sndbuf / 1e6}))
    else:                                # amount: seconds
        s.connect((addr, BULK_PORT))
        chunk = b"\xa5" * (64 * 1024)
        t0 = pc()
        while pc() < t0 + amount:
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        total = int(s.recv(64))
        print(json.dumps({"bytes": total, "seconds": pc() - t0}))


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * q))]


# --- the bench ----------------------------------------------------------------------

async def run(seconds: float, only: str | None = None, runs: int = PLACEMENT_RUNS,
              cc: str = "") -> None:
    import trio

    from harness import faults, listening, open_lab

    me = os.path.abspath(__file__)
    rto = ({"net.ipv4.tcp_rto_min_us": 5000}
           if os.path.exists("/proc/sys/net/ipv4/tcp_rto_min_us") else {})
    async with open_lab() as lab:
        client, server = await lab.pair(sysctls=rto)
        await server.spawn([sys.executable, me, "--role", "server"], ready=listening(BULK_PORT))

        async def load(mode: str, amount: float) -> dict:
            proc = await client.spawn([sys.executable, me, "--role", mode, server.v4,
                                       str(amount), cc])
            code = await proc.wait(timeout=120)
            if code != 0:
                raise RuntimeError(f"{mode} client failed: {proc.stderr()[-800:]}")
            return json.loads(proc.stdout())

        ms = 1e3
        if only in (None, "delay"):
            # --- delay ---------------------------------------------------------------
            base = (await load("rr", 500))["rtts"]
            b50 = pct(base, 0.5)
            print(f"delay (one way, added to the round trip; kernel RTT p50 {b50 * 1e6:.0f} us)")
            print(f"  {'asked':>8} {'n':>5} {'p50':>9} {'p99':>9} {'p50 err':>9} {'p99 err':>9}")
            for d in (0.001, 0.01, 0.05):
                n = int(min(500, max(100, 2.0 / d)))
                async with faults.netem(client, delay=d, engine="nfqueue"):
                    r = (await load("rr", n))["rtts"]
                p50, p99 = pct(r, 0.5) - b50, pct(r, 0.99) - b50
                print(f"  {d * ms:6.1f}ms {n:5d} {p50 * ms:7.3f}ms {p99 * ms:7.3f}ms "
                      f"{(p50 - d) * ms:+7.3f}ms {(p99 - d) * ms:+7.3f}ms")
            async with faults.netem(client, delay=0.02, jitter=0.01, engine="nfqueue"):
                r = [x - b50 for x in (await load("rr", 200))["rtts"]]
            print(f"  jitter: delay 20 ms +- 10 ms, 200 round trips: min {min(r) * ms:.2f} "
                  f"p1 {pct(r, 0.01) * ms:.2f} p50 {pct(r, 0.5) * ms:.2f} p99 {pct(r, 0.99) * ms:.2f} "
                  f"max {max(r) * ms:.2f} ms (uniform over [10, 30] ms asked)")

        if only in (None, "loss"):
            # --- loss: counted by the two kernels on the harness's own sockets ---------
            print("loss (data segments client -> server, counted by the kernels)")
            listener = await server.listen(9100)
            conn = await client.connect(server, 9100, options={"TCP_NODELAY": True})
            peer = await listener.accept()
            for p in (0.01, 0.1, 0.3):
                out0 = conn.info().tcp_info["data_segs_out"]
                in0 = peer.info().tcp_info["data_segs_in"]
                size = 2000 * 1448
                async with faults.netem(client, loss=p, engine="nfqueue") as f:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(lambda: conn.send(b"\x5a" * size, all=True))
                        got = 0
                        while got < size:
                            got += len((await peer.recv(1 << 20)).value)
                    while conn.info().tcp_info["unacked"]:
                        await trio.sleep(0.002)
                sent = conn.info().tcp_info["data_segs_out"] - out0
                arrived = peer.info().tcp_info["data_segs_in"] - in0
                m, sigma = 1 - arrived / sent, math.sqrt(p * (1 - p) / sent)
                print(f"  asked {p:4.2f}: {sent:5d} segments, measured {m:.4f} "
                      f"(error {m - p:+.4f}, {abs(m - p) / sigma:.1f} sigma; model dropped "
                      f"{f.counts['lost']}, kernels missed {sent - arrived})")
            await conn.close(linger=0)
            await peer.close(linger=0)

        if only in (None, "rate"):
            # --- rate ------------------------------------------------------------------
            print("rate (bulk goodput client -> server)")
            for rate in (1e6, 1e7):
                async with faults.netem(client, rate=rate, engine="nfqueue"):
                    b = await load("bulk", seconds)
                g = b["bytes"] / b["seconds"]
                print(f"  asked {rate / 1e6:5.1f} MB/s: goodput {g / 1e6:6.3f} MB/s "
                      f"= {g / rate:.3f} of it (0.956 is exact: 1448 B per 1514 B frame)")

        if only in (None, "placement"):
            # --- placement: the same delay on either end, in either direction ----------
            # Each connection is made inside the fault, so TCP starts from a
            # 50 ms RTT (its pacing rate, hence its TSO size and its TCP Small
            # Queues budget, follow from it): the case where packets held on the
            # sender used to cap it at ~2 skbs per RTT (issue 11, point 4), and
            # where a sender's packets waiting for this process's verdict made
            # its rate follow the engine's wake-ups.
            places = {"sender out": (client, "out"), "receiver in": (server, "in"),
                      "sender in": (client, "in"), "receiver out": (server, "out")}
            sizes = {"bulk": BULK_BYTES, "small": SMALL_BYTES}
            times = {(k, z): [] for k in places for z in sizes}
            limited = {k: [] for k in places}            # bulk: rwnd_limited / busy
            ccs = set()
            for _ in range(runs):                    # interleaved: load drifts hit all alike
                for name, (host, direction) in places.items():
                    async with faults.netem(host, delay=0.05, direction=direction,
                                            engine="nfqueue"):
                        for size, n in sizes.items():
                            b = await load("bytes", n)
                            assert b["bytes"] == n, b
                            times[name, size].append(b["seconds"])
                            ccs.add(b["cc"])
                            if size == "bulk":
                                limited[name].append(b["rwnd_limited"] / b["busy"])
            print(f"placement: delay 50 ms one way, connection made inside the fault, "
                  f"client -> server, congestion control {'/'.join(sorted(ccs))}; "
                  f"median of {runs}")
            for size, n in sizes.items():
                med = {k: sorted(times[k, size])[runs // 2] for k in places}
                best = min(med.values())
                print(f"  {size}: {n / 1e6:g} MB")
                for name, t in med.items():
                    rwnd = (f"  receive-window-limited {sorted(limited[name])[runs // 2]:4.0%}"
                            if size == "bulk" else "")
                    print(f"    {name:<13} {t:6.3f} s  {n / t / 1e6:6.2f} MB/s  "
                          f"{t / best:5.2f} x the fastest{rwnd}  (runs: "
                          f"{', '.join(f'{x:.3f}' for x in times[name, size])})")
                print(f"    slowest / fastest: {max(med.values()) / best:.2f}; data delayed "
                      f"(sender out / receiver in): {med['sender out'] / med['receiver in']:.2f};"
                      f" acks delayed (sender in / receiver out): "
                      f"{med['sender in'] / med['receiver out']:.2f}")

        if only in (None, "cost"):
            # --- cost ------------------------------------------------------------------
            print("cost: this process's CPU per packet through the engine (bulk, "
                  f"{seconds:g} s each)")
            variants = [
                ("packets() accept all", lambda: faults.intercept(client, port=BULK_PORT,
                                                                 direction="out",
                                                                 when=lambda p: False)),
                ("netem(), nothing to do", lambda: faults.netem(client, engine="nfqueue")),
                ("netem(loss=0.01)", lambda: faults.netem(client, loss=0.01, engine="nfqueue")),
                ("netem(delay=0.001)", lambda: faults.netem(client, delay=0.001,
                                                            engine="nfqueue")),
            ]
            for name, make in variants:
                fault = make()
                async with fault:
                    c0 = time.process_time()
                    b = await load("bulk", seconds)
                    cpu = time.process_time() - c0
                n = (fault.engine_counts if hasattr(fault, "engine_counts") else fault.counts)["seen"]
                print(f"  {name:<24} {n:7d} packets  {cpu / n * 1e6:6.1f} us CPU/packet  "
                      f"{b['bytes'] / b['seconds'] * 8 / 1e6:7.0f} Mbit/s")


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--only", choices=("delay", "loss", "rate", "placement", "cost"),
                    help="run one section")
    ap.add_argument("--runs", type=int, default=PLACEMENT_RUNS,
                    help="transfers per placement and size (the median is shown)")
    ap.add_argument("--cc", default="", help="the sender's congestion control (TCP_CONGESTION)"
                    " in the placement section; default: the namespace's")
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        if args.role[0] == "server":
            role_server()
        else:
            role_client(args.role[0], args.role[1], float(args.role[2]), *args.role[3:])
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import trio
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    trio.run(run, args.seconds, args.only, args.runs, args.cc)
    print(f"(bench took {time.monotonic() - t0:.1f} s; load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
