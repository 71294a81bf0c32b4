"""Real-kernel tests for harness._nfqueue.

Every test builds its own pair of network namespaces (``nq-c-<pid>-<n>`` client,
``nq-s-<pid>-<n>`` server) joined by a veth pair created directly inside them
(the root namespace is never touched), installs the NFQUEUE rule in the server
namespace and binds the queue from a netlink socket created in that namespace.
All sockets are created in their namespace via ``_netns.socket_in`` (a
throw-away thread does the ``setns``), so the tests run single-threaded.
"""

from __future__ import annotations

import itertools
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest

from harness._nfqueue import (
    NF_ACCEPT,
    NF_DROP,
    NFQA_SKB_GSO,
    NfQueue,
    NfQueueError,
    Packet,
    queue_socket,
)
from harness import _netns
from harness.errors import FaultError, InvalidArgument
from harness._wire import ACK as TCP_ACK, SYN as TCP_SYN, fix_checksums, internet_checksum, parse_tcp

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "iptables", "ip6tables")),
    reason="needs root, ip, iptables, ip6tables",
)

QNUM = 7
TCP_PORT = 9000
UDP_PORT = 9001
V4 = ("198.18.200.1", "198.18.200.2", 24)
V6 = ("fd66:6968:0:c8::1", "fd66:6968:0:c8::2", 64)
_counter = itertools.count()


def sh(*args: str) -> str:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


@dataclass
class Net:
    client: str
    server: str
    family: int
    client_addr: str
    server_addr: str

    def iptables(self, *rule: str) -> None:
        tool = "iptables" if self.family == socket.AF_INET else "ip6tables"
        sh("ip", "netns", "exec", self.server, tool, "-w", *rule)

    def sock(self, ns: str, kind: int) -> socket.socket:
        return _netns.socket_in(ns, self.family, kind, 0)

    def queue(self, num: int = QNUM, **kw: object) -> NfQueue:
        return NfQueue(num, sock=queue_socket(self.server), **kw)  # type: ignore[arg-type]

    def queue_stats(self, num: int = QNUM) -> dict[str, int] | None:
        """Parse /proc/net/netfilter/nfnetlink_queue of the server namespace."""
        out = sh("ip", "netns", "exec", self.server, "cat", "/proc/net/netfilter/nfnetlink_queue")
        keys = ("queue", "portid", "total", "copy_mode", "copy_range", "dropped", "user_dropped", "id_seq")
        for line in out.splitlines():
            f = [int(x) for x in line.split()]
            if f and f[0] == num:
                return dict(zip(keys, f))
        return None


@pytest.fixture(params=[socket.AF_INET, socket.AF_INET6], ids=["v4", "v6"])
def net(request: pytest.FixtureRequest) -> Iterator[Net]:
    tag = f"{os.getpid()}-{next(_counter)}"
    cli, srv = f"nq-c-{tag}", f"nq-s-{tag}"
    created: list[str] = []
    try:
        for ns in (cli, srv):
            sh("ip", "netns", "add", ns)
            created.append(ns)
        sh("ip", "-n", cli, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", srv)
        for ns, idx in ((cli, 0), (srv, 1)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{V4[idx]}/{V4[2]}", "dev", "veth0")
            sh("ip", "-n", ns, "addr", "add", f"{V6[idx]}/{V6[2]}", "dev", "veth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "veth0", "up")
        a = V4 if request.param == socket.AF_INET else V6
        n = Net(cli, srv, request.param, a[0], a[1])
        wait_reachable(n)
        yield n
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_reachable(net: Net, timeout: float = 10.0) -> None:
    """Wait until the server address answers (a TCP RST from a closed port).

    Right after ``link set up`` the veth carrier / IPv6 addrconf settle
    asynchronously (linkwatch); the first neighbour solicitations can go
    unanswered and the next retry is 1 s later, which would skew timing tests.
    """
    deadline = time.monotonic() + timeout
    for ns in (net.client, net.server):
        while "state UP" not in sh("ip", "-n", ns, "-o", "link", "show", "veth0"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"veth0 in {ns} never came up")
            time.sleep(0.01)
    while True:
        s = net.sock(net.client, socket.SOCK_STREAM)
        s.settimeout(0.2)
        try:
            rc = s.connect_ex((net.server_addr, 1))
        finally:
            s.close()
        if rc == 111:  # ECONNREFUSED: path and neighbour resolution work
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{net.server_addr} unreachable from {net.client}: {os.strerror(rc)}")
        time.sleep(0.05)


# -------------------------------------------------------------------------
# small single-threaded "engine"
# -------------------------------------------------------------------------

Policy = Callable[[Packet], "tuple[int, bytes | None] | None"]  # None = hold


def accept_all(_: Packet) -> tuple[int, None]:
    return NF_ACCEPT, None


def pump(q: NfQueue, policy: Policy, until: Callable[[], bool], timeout: float = 5.0) -> list[Packet]:
    """Feed queued packets to ``policy`` until ``until()`` is true; returns packets seen."""
    seen: list[Packet] = []
    deadline = time.monotonic() + timeout
    while not until():
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"condition not met within {timeout}s; saw {len(seen)} packets")
        select.select([q], [], [], min(left, 0.02))
        for p in q.receive():
            seen.append(p)
            r = policy(p)
            if r is not None:
                q.verdict(p.id, r[0], r[1])
    return seen


def listen(net: Net) -> socket.socket:
    s = net.sock(net.server, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((net.server_addr, TCP_PORT))
    s.listen(8)
    s.setblocking(False)
    return s


def start_connect(net: Net) -> socket.socket:
    c = net.sock(net.client, socket.SOCK_STREAM)
    c.setblocking(False)
    rc = c.connect_ex((net.server_addr, TCP_PORT))
    assert rc in (0, 115), os.strerror(rc)  # EINPROGRESS
    return c


def connected(c: socket.socket) -> bool:
    _, w, _ = select.select([], [c], [], 0)
    if not w:
        return False
    err = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    assert err == 0, os.strerror(err)
    return True


def try_accept(srv: socket.socket, box: list[socket.socket]) -> bool:
    if not box:
        try:
            box.append(srv.accept()[0])
        except BlockingIOError:
            return False
    return True


def recv_exactly(s: socket.socket, n: int, q: NfQueue | None = None, policy: Policy = accept_all) -> bytes:
    buf = bytearray()

    def done() -> bool:
        try:
            chunk = s.recv(n - len(buf))
        except BlockingIOError:
            return False
        buf.extend(chunk)
        return len(buf) >= n or not chunk

    s.setblocking(False)
    if q is None:
        deadline = time.monotonic() + 5
        while not done():
            assert time.monotonic() < deadline
            select.select([s], [], [], 0.05)
    else:
        pump(q, policy, done)
    return bytes(buf)


def establish(net: Net, q: NfQueue) -> tuple[socket.socket, socket.socket, socket.socket]:
    srv = listen(net)
    c = start_connect(net)
    box: list[socket.socket] = []
    pump(q, accept_all, lambda: connected(c) and try_accept(srv, box))
    return srv, c, box[0]


# -------------------------------------------------------------------------
# raw-bytes helpers (no kernel needed)
# -------------------------------------------------------------------------


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3 example words sum to 0xddf2 -> checksum 0x220d
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert internet_checksum(b"\xff\xff") == 0x0000
    assert internet_checksum(b"") == 0xFFFF


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_parse_and_fix_against_scapy(v6: bool) -> None:
    scapy = pytest.importorskip("scapy.all")
    if v6:
        ip = scapy.IPv6(src=V6[0], dst=V6[1]) / scapy.IPv6ExtHdrHopByHop()
    else:
        ip = scapy.IP(src=V4[0], dst=V4[1], id=4242)
    pkt = ip / scapy.TCP(sport=40000, dport=TCP_PORT, seq=123456789, ack=987654321, flags="PA") / b"hello world!"
    raw = bytes(pkt)
    v = parse_tcp(raw)
    assert v is not None
    assert (v.version, v.src, v.dst) == ((6, V6[0], V6[1]) if v6 else (4, V4[0], V4[1]))
    assert (v.sport, v.dport, v.seq, v.ack) == (40000, TCP_PORT, 123456789, 987654321)
    assert v.flags == 0x18 and v.payload_len == 12
    assert raw[v.data_offset :] == b"hello world!"
    # corrupt checksums, then fix -> identical to scapy's bytes
    bad = bytearray(raw)
    bad[v.l4_offset + 16 : v.l4_offset + 18] = b"\x12\x34"
    if not v6:
        bad[10:12] = b"\xab\xcd"
    assert fix_checksums(bytes(bad)) == raw
    # rewrite with a length change: fix_checksums also fixes the length fields
    longer = raw[: v.data_offset] + b"HELLO WORLD!!!"
    expected = bytes(ip / scapy.TCP(sport=40000, dport=TCP_PORT, seq=123456789, ack=987654321, flags="PA") / b"HELLO WORLD!!!")
    assert fix_checksums(longer) == expected
    # UDP as well
    u = bytes((scapy.IPv6(src=V6[0], dst=V6[1]) if v6 else scapy.IP(src=V4[0], dst=V4[1])) / scapy.UDP(sport=1, dport=2) / b"xyz")
    ck = (40 if v6 else 20) + 6
    assert fix_checksums(u[:ck] + b"\x55\x55" + u[ck + 2 :]) == u
    assert parse_tcp(u) is None


def test_parse_rejects_garbage_and_fragments() -> None:
    assert parse_tcp(b"") is None
    assert parse_tcp(b"\x45" + b"\0" * 10) is None
    # IPv4 non-first fragment of a TCP packet: no TCP header to parse
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x0010, 64, 6, 0, bytes(4), bytes(4)))
    assert parse_tcp(bytes(hdr) + bytes(20)) is None


# -------------------------------------------------------------------------
# kernel tests
# -------------------------------------------------------------------------


def test_connect_completes_only_when_engine_accepts(net: Net) -> None:
    net.iptables("-A", "INPUT", "-p", "tcp", "--dport", str(TCP_PORT), "-j", "NFQUEUE", "--queue-num", str(QNUM))
    with net.queue() as q:
        srv = listen(net)
        c = start_connect(net)
        held: list[Packet] = []
        pump(q, lambda p: held.append(p), lambda: bool(held))  # hold everything
        syn = parse_tcp(held[0].payload)
        assert syn is not None and syn.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        assert (syn.dst, syn.dport, syn.src) == (net.server_addr, TCP_PORT, net.client_addr)
        assert held[0].hw_protocol == (0x0800 if net.family == socket.AF_INET else 0x86DD)
        assert held[0].hook == 1  # NF_INET_LOCAL_IN
        # SYN is held: nothing completes (0.4 s < 1 s initial RTO, so no retransmit yet)
        time.sleep(0.4)
        assert not connected(c)
        with pytest.raises(BlockingIOError):
            srv.accept()
        assert q.receive() == []
        q.verdict(held[0].id, NF_ACCEPT)
        box: list[socket.socket] = []
        seen = pump(q, accept_all, lambda: connected(c) and try_accept(srv, box))
        # the handshake's final ACK also went through the queue
        assert any((v := parse_tcp(p.payload)) and v.flags & TCP_ACK and not v.flags & TCP_SYN for p in seen)
        c.sendall(b"ping")
        assert recv_exactly(box[0], 4, q) == b"ping"
        for s in (c, box[0], srv):
            s.close()


def test_dropped_syn_is_retransmitted(net: Net) -> None:
    net.iptables("-A", "INPUT", "-p", "tcp", "--dport", str(TCP_PORT), "-j", "NFQUEUE", "--queue-num", str(QNUM))
    with net.queue() as q:
        srv = listen(net)
        c = start_connect(net)
        syns: list[Packet] = []

        def policy(p: Packet) -> tuple[int, None]:
            v = parse_tcp(p.payload)
            if v is not None and v.flags & TCP_SYN:
                syns.append(p)
                return (NF_DROP, None) if len(syns) == 1 else (NF_ACCEPT, None)
            return NF_ACCEPT, None

        box: list[socket.socket] = []
        pump(q, policy, lambda: connected(c) and try_accept(srv, box), timeout=6)
        assert len(syns) == 2
        first, second = (parse_tcp(p.payload) for p in syns)
        assert first is not None and second is not None
        assert (first.sport, first.seq) == (second.sport, second.seq)  # same SYN, retransmitted
        assert syns[0].id != syns[1].id
        gap = syns[1].timestamp - syns[0].timestamp
        assert 0.5 < gap < 3.0, gap  # initial RTO is 1 s
        for s in (c, box[0], srv):
            s.close()


def _rewrite_world(fix: bool, log: list[Packet]) -> Policy:
    def policy(p: Packet) -> tuple[int, bytes | None]:
        v = parse_tcp(p.payload)
        if v is not None and v.payload_len and b"world" in p.payload[v.data_offset :] and not log:
            log.append(p)
            new = p.payload[: v.data_offset] + p.payload[v.data_offset :].replace(b"world", b"WORLD")
            return NF_ACCEPT, fix_checksums(new) if fix else new
        return NF_ACCEPT, None

    return policy


def test_rewritten_payload_reaches_server(net: Net) -> None:
    net.iptables("-A", "INPUT", "-p", "tcp", "--dport", str(TCP_PORT), "-j", "NFQUEUE", "--queue-num", str(QNUM))
    with net.queue() as q:
        srv, c, conn = establish(net, q)
        rewritten: list[Packet] = []
        c.sendall(b"hello world")
        assert recv_exactly(conn, 11, q, _rewrite_world(True, rewritten)) == b"hello WORLD"
        assert len(rewritten) == 1
        v = parse_tcp(rewritten[0].payload)
        assert v is not None and v.payload_len == 11 and v.dport == TCP_PORT
        # the connection stays healthy afterwards (sequence numbers untouched)
        c.sendall(b"more")
        assert recv_exactly(conn, 4, q) == b"more"
        for s in (c, conn, srv):
            s.close()


def test_rewrite_with_stale_checksum_is_dropped_by_stack(net: Net) -> None:
    """A payload verdict makes the skb CHECKSUM_NONE: the kernel verifies, and
    drops a segment whose checksum was not fixed; the client's retransmission
    (passed unmodified by the policy) then delivers the original bytes."""
    net.iptables("-A", "INPUT", "-p", "tcp", "--dport", str(TCP_PORT), "-j", "NFQUEUE", "--queue-num", str(QNUM))
    with net.queue() as q:
        srv, c, conn = establish(net, q)
        rewritten: list[Packet] = []
        c.sendall(b"hello world")
        assert recv_exactly(conn, 11, q, _rewrite_world(False, rewritten)) == b"hello world"
        assert len(rewritten) == 1
        for s in (c, conn, srv):
            s.close()


def _udp_pair(net: Net) -> tuple[socket.socket, socket.socket]:
    u_srv = net.sock(net.server, socket.SOCK_DGRAM)
    u_srv.bind((net.server_addr, UDP_PORT))
    u_srv.setblocking(False)
    u_cli = net.sock(net.client, socket.SOCK_DGRAM)
    u_cli.connect((net.server_addr, UDP_PORT))
    return u_srv, u_cli


def _drain(s: socket.socket, settle: float = 0.3) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        r, _, _ = select.select([s], [], [], 0.02)
        if r:
            out.append(s.recv(2048))
    return out


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_queue_full(net: Net, fail_open: bool) -> None:
    """max_len=1 with one packet held: without fail_open further packets are
    dropped by the kernel (counted in queue_dropped); with NFQA_CFG_F_FAIL_OPEN
    they bypass the queue and are accepted -- i.e. they overtake the held one."""
    net.iptables("-A", "INPUT", "-p", "udp", "--dport", str(UDP_PORT), "-j", "NFQUEUE", "--queue-num", str(QNUM))
    u_srv, u_cli = _udp_pair(net)
    with net.queue(max_len=1, fail_open=fail_open) as q:
        for i in range(5):
            u_cli.send(b"d%d" % i)
        got = _drain(u_srv)
        pkts = q.receive()
        assert len(pkts) == 1 and pkts[0].payload.endswith(b"d0")
        stats = net.queue_stats()
        assert stats is not None and stats["total"] == 1
        if fail_open:
            assert got == [b"d1", b"d2", b"d3", b"d4"]
            assert stats["dropped"] == 0
        else:
            assert got == []
            assert stats["dropped"] == 4
        q.verdict(pkts[0].id, NF_ACCEPT)
        assert _drain(u_srv) == [b"d0"]
    u_srv.close()
    u_cli.close()


def test_unbound_queue_drops_unless_queue_bypass(net: Net) -> None:
    """No listener bound: the kernel drops queued packets, unless the rule says
    --queue-bypass.  (Relevant when the engine process dies.)"""
    u_srv, u_cli = _udp_pair(net)
    net.iptables("-A", "INPUT", "-p", "udp", "--dport", str(UDP_PORT), "-j", "NFQUEUE", "--queue-num", str(QNUM))
    u_cli.send(b"lost")
    assert _drain(u_srv) == []
    net.iptables("-I", "INPUT", "-p", "udp", "--dport", str(UDP_PORT), "-j", "NFQUEUE", "--queue-num", str(QNUM), "--queue-bypass")
    u_cli.send(b"bypassed")
    assert _drain(u_srv) == [b"bypassed"]
    # and a queue closed with a packet pending drops that packet
    q = net.queue(num=QNUM)
    u_cli.send(b"pending")
    pump(q, lambda p: None, lambda: net.queue_stats() is not None and net.queue_stats()["total"] == 1)  # type: ignore[index]
    q.close()
    assert _drain(u_srv) == []
    u_srv.close()
    u_cli.close()


def test_double_bind_raises_clear_error(net: Net) -> None:
    with net.queue() as q:
        with pytest.raises(NfQueueError) as ei:
            net.queue()
        e = ei.value
        assert e.code == 1 and e.errno == "EPERM" and e.queue_num == QNUM and e.operation == "bind"
        assert str(e).startswith(f"NFQUEUE bind queue {QNUM} failed: EPERM (")
        assert "another" in str(e)
        assert isinstance(e, FaultError) and not isinstance(e, OSError)  # a harness error
        # the first binding is unaffected and usable
        assert q.receive() == []
    # once closed, the number can be bound again; close() is idempotent
    q2 = net.queue()
    q2.close()
    q2.close()
    with pytest.raises(NfQueueError, match=f"receive queue {QNUM}.*EBADF"):
        q2.receive()


def test_kernel_error_for_unknown_packet_id_is_raised(net: Net) -> None:
    with net.queue() as q:
        q.verdict(424242, NF_ACCEPT)
        deadline = time.monotonic() + 2
        with pytest.raises(NfQueueError) as ei:
            while time.monotonic() < deadline:
                select.select([q], [], [], 0.05)
                q.receive()
        assert ei.value.code == 2 and ei.value.errno == "ENOENT"
        assert f"NFQUEUE verdict queue {QNUM} failed: ENOENT" in str(ei.value)
        assert "packet id 424242" in str(ei.value)
        assert q.receive() == []  # error reported once; queue still usable


@pytest.mark.parametrize("gso", [False, True], ids=["segmented", "gso"])
def test_bulk_transfer_and_gso(net: Net, gso: bool) -> None:
    """1 MiB through the queue, every data segment rewritten (bytes +1 mod 256).
    Without NFQA_CFG_F_GSO the kernel segments super-packets (every packet fits
    the MTU); with it, whole GSO packets (> MTU, NFQA_SKB_GSO) are queued and
    must be rewritten + checksummed as one."""
    net.iptables("-A", "INPUT", "-p", "tcp", "--dport", str(TCP_PORT), "-j", "NFQUEUE", "--queue-num", str(QNUM))
    table = bytes((i + 1) & 0xFF for i in range(256))
    data = bytes(range(256)) * 4096
    with net.queue(gso=gso) as q:
        srv, c, conn = establish(net, q)
        sizes: list[int] = []
        flags: list[int] = []

        def policy(p: Packet) -> tuple[int, bytes | None]:
            assert not p.truncated
            sizes.append(len(p.payload))
            flags.append(p.skb_info)
            v = parse_tcp(p.payload)
            if v is None or not v.payload_len:
                return NF_ACCEPT, None
            new = p.payload[: v.data_offset] + p.payload[v.data_offset :].translate(table)
            return NF_ACCEPT, fix_checksums(new)

        c.setblocking(True)
        c.settimeout(10)
        import threading

        t = threading.Thread(target=c.sendall, args=(data,))
        t.start()
        got = recv_exactly(conn, len(data), q, policy)
        t.join()
        assert got == data.translate(table)
        if gso:
            assert max(sizes) > 1500 and any(f & NFQA_SKB_GSO for f in flags)
        else:
            assert max(sizes) <= 1500 and not any(f & NFQA_SKB_GSO for f in flags)
        for s in (c, conn, srv):
            s.close()


def test_bad_arguments_are_invalid_argument(net: Net) -> None:
    """The queue client's own checks are harness errors (InvalidArgument is
    also a ValueError), raised before anything is sent to the kernel."""
    with pytest.raises(InvalidArgument, match=r"queue_num must be an int in 0\.\.65535, got "
                                              r"queue_num=70000 from NfQueue\(\)"):
        NfQueue(70000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(InvalidArgument, match="sock must be an AF_NETLINK/NETLINK_NETFILTER"):
            NfQueue(QNUM, sock=udp)
    with net.queue() as q:
        with pytest.raises(InvalidArgument, match=r"payload must be at most 65531 bytes .*got "
                                                  r"70000 for packet 1 of queue"):
            q.verdict(1, NF_ACCEPT, b"x" * 70000)
        assert q.receive() == []   # nothing was sent: no error comes back either
