"""Benchmark harness._nfqueue against the plain kernel path.

    python bench/bench_nfqueue.py [--seconds 1.5] [--family 4|6]

Creates two network namespaces (``nq-bc-<pid>`` client, ``nq-bs-<pid>``
server) joined by a veth pair, and removes them at the end.  The engine runs in
its own process (so it does not share a GIL with the traffic generators); it
accepts every packet.  Measures:

* TCP bulk throughput client->server: no rule vs NFQUEUE (kernel-segmented,
  i.e. one queue entry per MSS segment) vs NFQUEUE with NFQA_CFG_F_GSO;
* UDP small-packet (64 B payload) flood: packets/s delivered, and the rate
  the engine processed;
* TCP request/response (64 B each way) round-trip latency p50/p99, with the
  request direction going through the queue (one queue traversal per RTT).

Needs root, ``ip`` and ``iptables``/``ip6tables``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import select
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from harness import _netns  # noqa: E402
from harness._nfqueue import NF_ACCEPT, NfQueue, queue_socket  # noqa: E402

QNUM = 5
TCP_PORT = 9000
UDP_PORT = 9001
ADDR = {4: ("198.18.200.1", "198.18.200.2", 24), 6: ("fd66:6968:0:c8::1", "fd66:6968:0:c8::2", 64)}
CTX = mp.get_context("fork")


def sh(*args: str) -> str:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


class Env:
    def __init__(self, family: int) -> None:
        self.v = family
        self.af = socket.AF_INET if family == 4 else socket.AF_INET6
        self.cli = f"nq-bc-{os.getpid()}"
        self.srv = f"nq-bs-{os.getpid()}"
        self.created: list[str] = []
        self.caddr, self.saddr, _ = ADDR[family]

    def __enter__(self) -> "Env":
        try:
            for ns in (self.cli, self.srv):
                sh("ip", "netns", "add", ns)
                self.created.append(ns)
            sh("ip", "-n", self.cli, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", self.srv)
            for ns, i in ((self.cli, 0), (self.srv, 1)):
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                a = ADDR[self.v]
                sh("ip", "-n", ns, "addr", "add", f"{a[i]}/{a[2]}", "dev", "veth0", *(["nodad"] if self.v == 6 else []))
                sh("ip", "-n", ns, "link", "set", "veth0", "up")
            for ns in (self.cli, self.srv):
                deadline = time.monotonic() + 10
                while "state UP" not in sh("ip", "-n", ns, "-o", "link", "show", "veth0"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("veth did not come up")
                    time.sleep(0.01)
            deadline = time.monotonic() + 10
            while True:  # wait for a RST from a closed port: neighbour resolution works
                s = self.sock(self.cli, socket.SOCK_STREAM)
                s.settimeout(0.2)
                rc = s.connect_ex((self.saddr, 1))
                s.close()
                if rc == 111:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("server unreachable")
                time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created = []

    def sock(self, ns: str, kind: int) -> socket.socket:
        return _netns.socket_in(ns, self.af, kind, 0)

    def rule(self, action: str, proto: str, port: int) -> None:
        tool = "iptables" if self.v == 4 else "ip6tables"
        sh("ip", "netns", "exec", self.srv, tool, "-w", action, "INPUT", "-p", proto, "--dport", str(port),
           "-j", "NFQUEUE", "--queue-num", str(QNUM))

    def queue_dropped(self) -> tuple[int, int]:
        """(queue-full drops, netlink-delivery drops) from /proc; read while bound."""
        out = sh("ip", "netns", "exec", self.srv, "cat", "/proc/net/netfilter/nfnetlink_queue")
        for line in out.splitlines():
            f = line.split()
            if f and int(f[0]) == QNUM:
                return int(f[5]), int(f[6])
        return 0, 0


# ---------------------------------------------------------------------------
# engine process: accept everything
# ---------------------------------------------------------------------------


def _engine_main(ns: str, gso: bool, many: bool, ready: "mp.synchronize.Event", stop_r: int, result: "mp.connection.Connection") -> None:
    q = NfQueue(QNUM, sock=queue_socket(ns), gso=gso, max_len=8192)
    ready.set()
    n = 0
    t0 = t1 = 0.0
    try:
        while True:
            r, _, _ = select.select([q.fileno(), stop_r], [], [])
            if stop_r in r:
                break
            pkts = q.receive()
            if pkts:
                if not n:
                    t0 = pkts[0].timestamp
                if many:  # one send() for the whole batch
                    q.verdict_many([(p.id, NF_ACCEPT) for p in pkts])
                else:
                    for p in pkts:
                        q.verdict(p.id, NF_ACCEPT)
                n += len(pkts)
                t1 = time.monotonic()
    finally:
        q.close()
        result.send((n, t1 - t0, q.overruns))


class Engine:
    def __init__(self, env: Env, gso: bool = False, many: bool = False) -> None:
        self.ready = CTX.Event()
        self.stop_r, self.stop_w = os.pipe()
        self.res_r, res_w = CTX.Pipe(duplex=False)
        self.p = CTX.Process(target=_engine_main, args=(env.srv, gso, many, self.ready, self.stop_r, res_w), daemon=True)
        self.p.start()
        res_w.close()
        if not self.ready.wait(5):
            self.p.kill()
            raise RuntimeError("engine did not start")
        self.stats: tuple[int, float, int] = (0, 0.0, 0)

    def stop(self) -> tuple[int, float, int]:
        os.write(self.stop_w, b"x")
        if self.res_r.poll(5):
            self.stats = self.res_r.recv()
        self.p.join(5)
        if self.p.is_alive():
            self.p.kill()
            self.p.join()
        os.close(self.stop_r)
        os.close(self.stop_w)
        return self.stats


# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------


def _tcp_sender(env: Env, seconds: float) -> None:
    c = env.sock(env.cli, socket.SOCK_STREAM)
    c.connect((env.saddr, TCP_PORT))
    chunk = b"\xa5" * (256 * 1024)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        c.sendall(chunk)
    c.close()


def tcp_bulk(env: Env, seconds: float) -> float:
    """Bytes/s received by the server during a ``seconds``-long bulk send."""
    srv = env.sock(env.srv, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((env.saddr, TCP_PORT))
    srv.listen(1)
    p = CTX.Process(target=_tcp_sender, args=(env, seconds), daemon=True)
    p.start()
    srv.settimeout(10)
    conn, _ = srv.accept()
    conn.settimeout(30)
    buf = bytearray(1 << 20)
    total = 0
    t0 = None
    while True:
        n = conn.recv_into(buf)
        if not n:
            break
        if t0 is None:
            t0 = time.monotonic()
        total += n
    dt = time.monotonic() - (t0 or time.monotonic())
    p.join(10)
    conn.close()
    srv.close()
    return total / dt if dt > 0 else 0.0


def _udp_sender(env: Env, seconds: float, result: "mp.connection.Connection") -> None:
    c = env.sock(env.cli, socket.SOCK_DGRAM)
    c.connect((env.saddr, UDP_PORT))
    msg = b"u" * 64
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(256):
            try:
                c.send(msg)
                n += 1
            except OSError:  # ENOBUFS on a full device queue
                pass
    result.send(n)


def udp_flood(env: Env, seconds: float) -> tuple[int, int, float]:
    """Returns (sent, received, receive window seconds)."""
    srv = env.sock(env.srv, socket.SOCK_DGRAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    srv.bind((env.saddr, UDP_PORT))
    srv.setblocking(False)
    rr, rw = CTX.Pipe(duplex=False)
    p = CTX.Process(target=_udp_sender, args=(env, seconds, rw), daemon=True)
    p.start()
    rw.close()
    got = 0
    t0 = t1 = time.monotonic()
    deadline = time.monotonic() + seconds + 3
    idle_since = None
    while time.monotonic() < deadline:
        r, _, _ = select.select([srv], [], [], 0.1)
        if not r:
            if not p.is_alive():
                if idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > 0.3:
                    break
            continue
        idle_since = None
        while True:
            try:
                srv.recv(2048)
            except BlockingIOError:
                break
            if not got:
                t0 = time.monotonic()
            got += 1
        t1 = time.monotonic()
    sent = rr.recv() if rr.poll(5) else 0
    p.join(5)
    srv.close()
    return sent, got, max(t1 - t0, 1e-9)


def _echo_server(env: Env, ready: "mp.synchronize.Event") -> None:
    srv = env.sock(env.srv, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((env.saddr, TCP_PORT))
    srv.listen(1)
    ready.set()
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = conn.recv(4096)
        if not d:
            break
        conn.sendall(d)


def rtt(env: Env, n: int) -> list[float]:
    ready = CTX.Event()
    p = CTX.Process(target=_echo_server, args=(env, ready), daemon=True)
    p.start()
    ready.wait(5)
    c = env.sock(env.cli, socket.SOCK_STREAM)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.connect((env.saddr, TCP_PORT))
    msg = b"r" * 64
    out: list[float] = []
    for i in range(n + 50):
        t0 = time.perf_counter()
        c.sendall(msg)
        got = 0
        while got < len(msg):
            got += len(c.recv(4096))
        if i >= 50:  # warm-up
            out.append(time.perf_counter() - t0)
    c.close()
    p.join(5)
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.5, help="duration of each throughput run")
    ap.add_argument("--family", type=int, choices=(4, 6), default=4)
    ap.add_argument("--rtts", type=int, default=2000)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    t_start = time.monotonic()
    with Env(a.family) as env:
        print(f"IPv{a.family}, veth between two namespaces, {os.cpu_count()} CPUs, {a.seconds}s per throughput run")

        # --- TCP bulk ---
        base = tcp_bulk(env, a.seconds)
        env.rule("-A", "tcp", TCP_PORT)
        res = {}
        for key in ("seg", "many", "gso"):
            eng = Engine(env, gso=key == "gso", many=key == "many")
            try:
                bps = tcp_bulk(env, a.seconds)
            finally:
                n, dt, ovr = eng.stop()
            res[key] = (bps, n, dt, ovr)
        env.rule("-D", "tcp", TCP_PORT)
        print("\nTCP bulk client->server")
        print(f"  kernel (no rule)          : {base / 1e6:9.1f} MB/s")
        for key, label in (("seg", "nfqueue (segmented)"), ("many", "  same, verdict_many()"), ("gso", "nfqueue + F_GSO")):
            bps, n, dt, ovr = res[key]
            pps = n / dt if dt > 0 else 0
            print(f"  {label:<26}: {bps / 1e6:9.1f} MB/s  ({n} queued pkts, {pps:,.0f} pkts/s, "
                  f"{bps / max(pps, 1):,.0f} B/pkt, overruns {ovr})")
        print(f"  nfqueue/kernel throughput: {res['seg'][0] / base:.3f}x (segmented), "
              f"{res['many'][0] / base:.3f}x (segmented, verdict_many), {res['gso'][0] / base:.3f}x (F_GSO)")

        # --- UDP small packets ---
        sent0, got0, dt0 = udp_flood(env, a.seconds)
        env.rule("-A", "udp", UDP_PORT)
        eng = Engine(env)
        try:
            sent1, got1, dt1 = udp_flood(env, a.seconds)
            full, undeliv = env.queue_dropped()
        finally:
            n, dt, ovr = eng.stop()
        env.rule("-D", "udp", UDP_PORT)
        k_pps, q_pps = got0 / dt0, got1 / dt1
        print("\nUDP flood, 64 B payload (sender is one Python process)")
        print(f"  kernel (no rule)          : {k_pps:12,.0f} pkts/s delivered  (sent {sent0}, received {got0})")
        print(f"  nfqueue                   : {q_pps:12,.0f} pkts/s delivered  (sent {sent1}, received {got1}; "
              f"engine verdicts {n} = {n / dt if dt > 0 else 0:,.0f}/s; queue-full drops {full}, "
              f"netlink-delivery drops {undeliv}, overruns {ovr})")
        print(f"  nfqueue/kernel packet rate: {q_pps / k_pps:.3f}x")

        # --- latency ---
        lat0 = rtt(env, a.rtts)
        env.rule("-A", "tcp", TCP_PORT)
        eng = Engine(env)
        try:
            lat1 = rtt(env, a.rtts)
        finally:
            eng.stop()
        env.rule("-D", "tcp", TCP_PORT)
        p50_0, p99_0 = pct(lat0, 0.5) * 1e6, pct(lat0, 0.99) * 1e6
        p50_1, p99_1 = pct(lat1, 0.5) * 1e6, pct(lat1, 0.99) * 1e6
        print(f"\nTCP request/response RTT, 64 B, {a.rtts} round trips (request direction queued)")
        print(f"  kernel (no rule)          : p50 {p50_0:7.1f} us   p99 {p99_0:7.1f} us   mean {statistics.mean(lat0) * 1e6:7.1f} us")
        print(f"  nfqueue                   : p50 {p50_1:7.1f} us   p99 {p99_1:7.1f} us   mean {statistics.mean(lat1) * 1e6:7.1f} us")
        print(f"  added latency per queued packet: p50 {p50_1 - p50_0:+.1f} us, p99 {p99_1 - p99_0:+.1f} us "
              f"(nfqueue/kernel p50 RTT: {p50_1 / p50_0:.2f}x)")
    print(f"\ntotal {time.monotonic() - t_start:.1f}s")


if __name__ == "__main__":
    main()
