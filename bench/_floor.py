"""The floor: the same two-host lab built with raw rtnetlink (struct, no
library), the minimum the kernel needs.  Used by bench_lab.py and
bench_first_connect.py to measure the harness against it in one run."""

from __future__ import annotations

import os
import socket
import struct
import time

from harness import _netns

RTM_NEWLINK, RTM_NEWADDR = 16, 20
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL = 1, 4, 0x400, 0x200
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_LOCAL, IFA_ADDRESS, IFA_FLAGS = 2, 1, 8
IFF_UP = 1


def _attr(t: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return struct.pack("=HH", n, t) + data + b"\0" * ((4 - n % 4) % 4)


def _ifinfo(index: int = 0, flags: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, flags, flags)


class Rtnl:
    def __init__(self, fd: int):
        with _netns.inside(fd):
            self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        self.seq = 0

    def req(self, mtype: int, body: bytes, flags: int = NLM_F_CREATE | NLM_F_EXCL) -> None:
        self.seq += 1
        self.s.send(struct.pack("=IHHII", 16 + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK | flags,
                                self.seq, 0) + body)
        data = self.s.recv(65536)
        err = struct.unpack_from("=i", data, 16)[0]
        if err:
            raise OSError(-err, f"rtnetlink {mtype}")

    def bridge(self, index: int) -> None:
        self.req(RTM_NEWLINK, _ifinfo(index, IFF_UP) + _attr(IFLA_IFNAME, b"br0\0")
                 + _attr(IFLA_LINKINFO, _attr(IFLA_INFO_KIND, b"bridge\0")))

    def veth(self, index: int, name: str, master: int, peer_index: int, peer_fd: int) -> None:
        peer = _ifinfo(peer_index) + _attr(IFLA_IFNAME, b"eth0\0") + \
            _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_fd))
        info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer))
        self.req(RTM_NEWLINK, _ifinfo(index, IFF_UP) + _attr(IFLA_IFNAME, name.encode() + b"\0")
                 + _attr(IFLA_MASTER, struct.pack("=I", master)) + _attr(IFLA_LINKINFO, info))

    def up(self, index: int) -> None:
        self.req(RTM_NEWLINK, _ifinfo(index, IFF_UP), flags=0)

    def addr(self, index: int, family: int, address: str, plen: int) -> None:
        raw = socket.inet_pton(family, address)
        body = struct.pack("=BBBBI", family, plen, 0, 0, index) + _attr(IFA_LOCAL, raw) + \
            _attr(IFA_ADDRESS, raw) + _attr(IFA_FLAGS, struct.pack("=I", 0x02))  # nodad
        self.req(RTM_NEWADDR, body)

    def ready(self, index: int) -> bool:
        """Operationally up with its qdisc attached (RTM_GETLINK): before
        that a veth drops what it is given (the first-ARP stall)."""
        self.seq += 1
        body = _ifinfo(index)
        self.s.send(struct.pack("=IHHII", 16 + len(body), 18, NLM_F_REQUEST, self.seq, 0) + body)
        data = self.s.recv(65536)
        pos, operstate, qdisc = 32, None, None
        while pos + 4 <= len(data):
            alen, atype = struct.unpack_from("=HH", data, pos)
            if alen < 4:
                break
            if atype == 16:        # IFLA_OPERSTATE
                operstate = data[pos + 4]
            elif atype == 6:       # IFLA_QDISC
                qdisc = data[pos + 4:pos + alen].rstrip(b"\0")
            pos += (alen + 3) & ~3
        return operstate == 6 and qdisc not in (None, b"noop")

    def close(self) -> None:
        self.s.close()


def lab(tag: str, net: int) -> tuple[list[str], list[int]]:
    """Switch + two hosts, addresses 198.18.<net>.1/.2; returns (names, fds)."""
    names = [f"{tag}-sw", f"{tag}-a", f"{tag}-b"]
    fds = []
    for n in names:
        _netns.create(n)
        fds.append(_netns.open_fd(_netns.path(n)))
    sw = Rtnl(fds[0])
    sw.bridge(2)
    hosts = []
    for k in (1, 2):
        sw.veth(100 + k, f"p{k}", 2, 2, fds[k])
        h = Rtnl(fds[k])
        h.addr(2, socket.AF_INET, f"198.18.{net}.{k}", 24)
        h.addr(2, socket.AF_INET6, f"fd66:6968:0:{net:x}::{k}", 64)
        h.up(2)
        h.up(1)
        hosts.append(h)
    for rt, index in [(h, 2) for h in hosts] + [(sw, 101), (sw, 102)]:
        while not rt.ready(index):
            time.sleep(0.0001)
    for rt in hosts + [sw]:
        rt.close()
    return names, fds


def connect_echo(fds: list[int], net: int, port: int = 9000) -> float:
    """One connect + echo from host a to host b; returns the connect time."""
    with _netns.inside(fds[2]):
        ls = socket.socket()
    ls.bind((f"198.18.{net}.2", port))
    ls.listen()
    with _netns.inside(fds[1]):
        c = socket.socket()
    t = time.perf_counter()
    c.connect((f"198.18.{net}.2", port))
    took = time.perf_counter() - t
    s, _ = ls.accept()
    c.send(b"ping")
    s.send(s.recv(4))
    assert c.recv(4) == b"ping"
    for sock in (c, s, ls):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    return took


def teardown(names: list[str], fds: list[int]) -> None:
    for name, fd in zip(names, fds):
        os.close(fd)
        _netns.delete(name)


def live_namespaces() -> int:
    """Namespaces the kernel still holds (its deferred cleanup included)."""
    with open("/proc/slabinfo") as f:
        for line in f:
            if line.startswith("net_namespace "):
                return int(line.split()[1])
    return -1


def wait_kernel_cleanup(baseline: int, timeout: float = 60.0) -> float:
    """Wait until the kernel has freed the namespaces deleted so far: the
    live count is back at ``baseline``, or (other processes making namespaces
    too) it has stopped falling for 0.5 s.  Returns when the cleanup was
    seen to end (time.perf_counter()): the moment the count reached the
    baseline or last fell, not the end of the 0.5 s it took to be sure, so
    the window does not inflate a short run (a reused lab deletes nothing)."""
    t = last_fall = time.perf_counter()
    count = live_namespaces()
    while count > baseline and time.perf_counter() - t < timeout:
        time.sleep(0.002)
        now = live_namespaces()
        if now < count:
            last_fall = time.perf_counter()
        elif time.perf_counter() - last_fall > 0.5:
            return last_fall
        count = now
    return time.perf_counter()
