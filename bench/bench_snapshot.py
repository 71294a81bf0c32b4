"""Socket snapshot of 10,000 sockets: harness ``host.sockets()`` against a
direct inet_diag dump decoded with struct (goal: within 1.5x) and against
parsing ``ss -tanoi`` (goal: at least 2x faster), in the same run.

    .venv/bin/python bench/bench_snapshot.py [PAIRS]
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import subprocess
import sys
import time

import trio

import harness
from harness import _diag, _netns


def best_of(fn, n: int = 7) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def direct_dump(sock: socket.socket) -> int:
    """The floor: dump both families, walk the records, decode what the
    harness run reads too (state and ports)."""
    n = 0
    nlh, fields = struct.Struct("=IH"), struct.Struct("=17xBxxHH")
    for family in (socket.AF_INET, socket.AF_INET6):
        sock.send(_diag._request(family, socket.IPPROTO_TCP, _diag.STATES))
        done = False
        while not done:
            data = sock.recv(1 << 20)
            off = 0
            while off < len(data):
                length, mtype = nlh.unpack_from(data, off)
                if mtype in (_diag.NLMSG_DONE, _diag.NLMSG_ERROR):
                    done = True
                    break
                _state, _sport, _dport = fields.unpack_from(data, off)
                n += 1
                off += (length + 3) & ~3
    return n


def ss_parse(netns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-tanoi"], capture_output=True,
                         text=True, check=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        if line and not line[0].isspace():
            parts = line.split()
            rows.append((parts[0], parts[3], parts[4]))
    return len(rows)


async def empty_host() -> None:
    """An empty host's snapshot against the same bare two-family dump in a
    namespace with a private table of 1024 buckets (goal: within 1.5x), and
    the bare dump in a namespace sharing the machine's table (what every
    snapshot paid before hosts got a table of their own)."""
    async with harness.open_lab() as lab:
        host = await lab.host("empty")
        entries = int(host.sysctl("net.ipv4.tcp_ehash_entries"))
        private = _netns.create_unnamed()
        _netns.write_sysctl(private, "net.ipv4.tcp_child_ehash_entries", 1024)
        shared = _netns.create_unnamed()
        with _netns.inside(private):
            sub = _netns.create_unnamed()  # created from inside: a private table
        try:
            with _netns.inside(sub):
                assert _netns.read_sysctl(sub, "net.ipv4.tcp_ehash_entries") == "1024"
                floor_sock = _diag.open_socket()
            with _netns.inside(shared):
                shared_sock = _diag.open_socket()
            for _ in range(3):  # interleaved, best of each: the machine is shared
                floor = best_of(lambda: direct_dump(floor_sock), 300)
                mine = best_of(host.sockets, 300)
            old = best_of(lambda: direct_dump(shared_sock), 30)
        finally:
            for fd in (private, shared, sub):
                os.close(fd)
    print(f"empty host (tcp_ehash_entries {entries}): snapshot {mine * 1000:.3f} ms, bare "
          f"two-family dump with a private 1024-bucket table {floor * 1000:.3f} ms, with the "
          f"machine's shared table {old * 1000:.2f} ms")
    print(f"empty snapshot / bare private dump: {mine / floor:.2f}x (goal <= 1.5x)")


async def main(pairs: int) -> None:
    await empty_host()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * pairs + 1000), max(hard, 2 * pairs + 1000)))
    async with harness.open_lab() as lab:
        host = await lab.host("many")
        with _netns.inside(host.ns_fd):
            ls = socket.socket()
            ls.bind(("127.0.0.1", 5000))
            ls.listen(4096)
            held = []
            for _ in range(pairs):
                c = socket.socket()
                c.connect(("127.0.0.1", 5000))
                held += [c, ls.accept()[0]]
        try:
            count = len(host.sockets())
            with _netns.inside(host.ns_fd):
                raw = _diag.open_socket()

            def ours():
                snap = host.sockets()
                for s in snap:
                    s.state, s.sport, s.dport
            floor = best_of(lambda: direct_dump(raw))
            mine = best_of(ours)
            ss = best_of(lambda: ss_parse(host.netns), 3)
            raw.close()
        finally:
            for s in held + [ls]:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
    print(f"{count} sockets: direct inet_diag dump {floor * 1000:.1f} ms, harness snapshot "
          f"{mine * 1000:.1f} ms, ss -tanoi parsed {ss * 1000:.1f} ms")
    print(f"harness / direct dump: {mine / floor:.2f}x (goal <= 1.5x)")
    print(f"ss / harness:          {ss / mine:.1f}x (goal >= 2x)")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
