"""Benchmark the packet-fault engine (harness.faults._packets) against the
plain kernel path, in one run, in one lab.

    python bench/bench_nfqueue_engine.py [--seconds 2.0]

A lab with two hosts; the server host runs an echo server (port 9000) and a
sink (port 9001) as processes, the client host a load process, so the
engine, which runs in this process's trio loop as it does in a test, has a
core of its own to contend for only with them.  Four phases, each
``--seconds`` long:

* request/response (64 B each way) without, then with a pass-through engine
  on the server host for port 9000 in both directions (every round trip
  crosses the queue twice: the request in, the response out): round-trip
  p50/p99, the latency the engine adds per crossing, packets/s through it;
* bulk transfer client -> server without, then with the engine on port 9001
  (data segments in, ACKs out): throughput and the engine's packets/s.

The engine's predicate is ``when=lambda p: False``: every packet is parsed
(raw bytes, no scapy) and accepted.  Ratios are printed at the end.
Needs root; leaves nothing behind (the lab is torn down).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

RR_PORT, BULK_PORT = 9000, 9001
MSG = 64


# --- roles run as processes inside the lab hosts (stdlib only: fast to start) --------

def role_server() -> None:
    import selectors
    sel = selectors.DefaultSelector()
    for port in (RR_PORT, BULK_PORT):
        for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, port))
            s.listen(16)
            sel.register(s, selectors.EVENT_READ, ("listen", port))
    counts: dict = {}
    while True:
        for key, _ in sel.select():
            kind, port = key.data
            if kind == "listen":
                c, _ = key.fileobj.accept()
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(c, selectors.EVENT_READ, ("rr" if port == RR_PORT else "bulk", port))
                counts[c] = 0
                continue
            c = key.fileobj
            data = c.recv(1 << 20)
            if not data:
                if kind == "bulk":
                    c.sendall(str(counts[c]).encode())
                sel.unregister(c)
                c.close()
                continue
            if kind == "rr":
                c.sendall(data)
            else:
                counts[c] += len(data)


def role_client(mode: str, addr: str, seconds: float) -> None:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "rr":
        s.connect((addr, RR_PORT))
        msg, rtts = b"q" * MSG, []
        pc = time.perf_counter
        end = pc() + seconds
        while True:
            t0 = pc()
            if t0 > end:
                break
            s.sendall(msg)
            got = 0
            while got < MSG:
                got += len(s.recv(MSG - got))
            rtts.append(pc() - t0)
        s.close()
        rtts.sort()
        print(json.dumps({"n": len(rtts), "p50": rtts[len(rtts) // 2],
                          "p99": rtts[int(len(rtts) * 0.99)], "seconds": seconds}))
    else:
        s.connect((addr, BULK_PORT))
        chunk = b"\xa5" * (256 * 1024)
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        total = int(s.recv(64))
        dt = time.perf_counter() - t0
        print(json.dumps({"bytes": total, "seconds": dt}))


# --- the bench ----------------------------------------------------------------------

async def run(seconds: float) -> dict:
    import trio

    from harness import faults, listening, open_lab

    me = os.path.abspath(__file__)
    results: dict = {}
    async with open_lab() as lab:
        client, server = await lab.pair()
        await server.spawn([sys.executable, me, "--role", "server"], ready=listening(BULK_PORT))

        async def load(mode: str) -> dict:
            proc = await client.spawn([sys.executable, me, "--role", mode, server.v4,
                                       str(seconds)])
            code = await proc.wait(timeout=seconds + 30)
            if code != 0:
                raise RuntimeError(f"{mode} client failed: {proc.stderr()[-800:]}")
            return json.loads(proc.stdout())

        for mode, port in (("rr", RR_PORT), ("bulk", BULK_PORT)):
            results[mode, "kernel"] = await load(mode)
            async with faults.intercept(server, port=port, direction="both",
                                      when=lambda p: False) as f:
                t0 = time.monotonic()
                results[mode, "engine"] = await load(mode)
                elapsed = time.monotonic() - t0
            results[mode, "engine"]["packets"] = f.counts["seen"]
            results[mode, "engine"]["pps"] = f.counts["seen"] / elapsed
        await trio.sleep(0)
    return results


def report(r: dict) -> None:
    rk, re_ = r["rr", "kernel"], r["rr", "engine"]
    bk, be = r["bulk", "kernel"], r["bulk", "engine"]
    us = 1e6
    print(f"request/response, {MSG} B each way, {rk['seconds']:.1f} s per phase")
    print(f"  kernel : p50 {rk['p50'] * us:7.1f} us  p99 {rk['p99'] * us:7.1f} us  "
          f"{rk['n'] / rk['seconds']:8.0f} rtt/s")
    print(f"  engine : p50 {re_['p50'] * us:7.1f} us  p99 {re_['p99'] * us:7.1f} us  "
          f"{re_['n'] / re_['seconds']:8.0f} rtt/s  ({re_['pps']:.0f} packets/s through it)")
    added = (re_["p50"] - rk["p50"]) / 2
    print(f"  added latency per queue crossing (p50): {added * us:.1f} us")
    mb = lambda d: d["bytes"] * 8 / d["seconds"] / 1e6  # noqa: E731
    print("bulk client -> server")
    print(f"  kernel : {mb(bk):9.0f} Mbit/s")
    print(f"  engine : {mb(be):9.0f} Mbit/s  ({be['pps']:.0f} packets/s through it, "
          f"{be['packets']} packets)")
    print("ratios (engine / kernel)")
    print(f"  rr p50 latency   x{re_['p50'] / rk['p50']:.2f}")
    print(f"  rr p99 latency   x{re_['p99'] / rk['p99']:.2f}")
    print(f"  rr round trips/s x{(re_['n'] / re_['seconds']) / (rk['n'] / rk['seconds']):.3f}")
    print(f"  bulk throughput  x{mb(be) / mb(bk):.3f}")


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        if args.role[0] == "server":
            role_server()
        else:
            role_client(args.role[0], args.role[1], float(args.role[2]))
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import trio
    t0 = time.monotonic()
    report(trio.run(run, args.seconds))
    print(f"(bench took {time.monotonic() - t0:.1f} s)")


if __name__ == "__main__":
    main()
