"""Packet capture on the wire: every frame that crosses the lab's switch.

An AF_PACKET socket in the switch's namespace receives each frame once, on
the port it entered by (outgoing copies are skipped), so ``ingress`` names
the host that sent it.  A packet dropped by a host's own firewall before it
left never crossed the wire and is not here; one dropped on arrival is.
Parsing is raw bytes (no scapy on this path).  Timestamps are the kernel's
receive time (SO_TIMESTAMPNS, CLOCK_REALTIME) moved to time.monotonic(), the
clock of the timeline and of socket outcomes.  ``write_pcap`` saves what was
seen for Wireshark/tcpdump.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

import trio

from .. import _netns
from .._nfqueue import parse_tcp

ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35


def flag_string(flags: int) -> str:
    """TCP flags as tcpdump-like letters in a fixed order: S, F, R, P, A."""
    order = (("S", 0x02), ("F", 0x01), ("R", 0x04), ("P", 0x08), ("A", 0x10), ("U", 0x20),
             ("E", 0x40), ("C", 0x80))
    return "".join(c for c, bit in order if flags & bit)


@dataclass(frozen=True)
class Packet:
    """One TCP segment on the wire (other frames are counted, not kept)."""

    t: float
    ingress: str          # the host whose link it came from
    family: int
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    ack: int
    flags: str            # e.g. "S", "SA", "A", "PA", "FA", "R", "RA"
    window: int
    length: int           # TCP payload bytes
    frame: bytes

    def __repr__(self) -> str:
        return (f"<{self.t:.6f} {self.src[0]}:{self.src[1]} > {self.dst[0]}:{self.dst[1]} "
                f"[{self.flags}] seq={self.seq} ack={self.ack} len={self.length}>")


class Capture:
    """Started with ``await lab.capture()``; runs until the lab ends or
    ``await stop()``."""

    def __init__(self, lab, switch_fd: int, ports: dict[str, str]):
        """``ports`` maps the switch's port names (p1, p2...) to host names."""
        self.lab, self._ports = lab, ports
        with _netns.entered(switch_fd):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                       socket.htons(ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._offset = time.monotonic() - time.time()
        self.packets_seen = 0
        self._packets: list[Packet] = []
        self._stopped = trio.Event()
        self._cancel = trio.CancelScope()

    async def run(self) -> None:
        try:
            with self._cancel:
                while True:
                    await trio.lowlevel.wait_readable(self._sock)
                    self.drain()
        finally:
            self._stopped.set()

    def drain(self) -> None:
        """Read every frame waiting in the socket (queries call it so they
        see everything captured so far)."""
        sock = self._sock
        if sock.fileno() < 0:
            return
        # the kernel stamps frames with CLOCK_REALTIME; measure its offset to
        # the monotonic clock now, not once at the start (realtime may be stepped)
        self._offset = time.monotonic() - time.time()
        while True:
            try:
                frame, anc, _flags, addr = sock.recvmsg(65536, 64)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            self.packets_seen += 1
            t = time.monotonic()
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[:16])
                    t = sec + nsec / 1e9 + self._offset
            proto = struct.unpack_from("!H", frame, 12)[0]
            if proto not in (ETH_P_IP, ETH_P_IPV6):
                continue
            view = parse_tcp(frame[14:])
            if view is None:
                continue
            self._packets.append(Packet(
                t, self._ports.get(addr[0], addr[0]),
                view.version, (view.src, view.sport), (view.dst, view.dport), view.seq, view.ack,
                flag_string(view.flags), view.window, view.payload_len, frame))

    def packets(self, conn=None, *, flags: str | None = None) -> list[Packet]:
        """Segments seen so far, in time order; of one connection (either
        direction) when ``conn`` is a Socket; with exactly ``flags`` if given."""
        self.lab.check_open(f"capture {self!r}")
        self.drain()
        out = self._packets
        if conn is not None:
            a, b = conn.local, conn.remote
            out = [p for p in out if (p.src, p.dst) in ((a, b), (b, a))]
        if flags is not None:
            out = [p for p in out if p.flags == flags]
        return list(out)

    async def expect(self, conn, line: str, *, within=None, after=None):
        """Wait for the next segment a line describes (packetdrill notation,
        relative seq/ack; see harness.observe.expect) and return it; a
        mismatch fails with the expected line beside what was seen."""
        __tracebackhide__ = True
        from .expect import expect_captured
        return await expect_captured(self, conn, line, within=within, after=after)

    def summary(self, conn=None) -> list[str]:
        """Flags per segment, prefixed by who sent it: ['client:S', 'server:SA', ...]."""
        return [f"{p.ingress}:{p.flags}" for p in self.packets(conn)]

    def write_pcap(self, path: str) -> str:
        self.drain()
        with open(path, "wb") as f:
            f.write(struct.pack("=IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))  # ns pcap, Ethernet
            for p in self._packets:
                wall = p.t - self._offset
                sec = int(wall)
                f.write(struct.pack("=IIII", sec, int((wall - sec) * 1e9), len(p.frame),
                                    len(p.frame)))
                f.write(p.frame)
        return path

    async def stop(self) -> None:
        """Stop capturing; the socket is closed only once run() has left its
        wait on it (closing under it would fail that wait, not cancel it)."""
        self.drain()
        self._cancel.cancel()
        await self._stopped.wait()
        if self._sock.fileno() >= 0:
            self._sock.close()

