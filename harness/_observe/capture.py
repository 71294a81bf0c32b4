"""Packet capture on the wire: every frame that crosses the lab's switch.

An AF_PACKET socket in the switch's namespace receives each frame once, on
the port it entered by (outgoing copies are skipped), so ``ingress`` names
the host that sent it.  Every frame is kept as a :class:`Frame` (ARP,
neighbour discovery, ICMP, UDP, TCP, anything); TCP segments are also
decoded into the harness's one segment type, :class:`harness._wire.Seg`
(``packets()``, ``summary()``, ``expect()``), with ``ingress`` the host that
sent it and ``frame`` its bytes.  A packet
dropped by a host's own firewall before it left never crossed the wire and
is not here; one dropped on arrival is.  The bridge device's own copy of a
broadcast (ARP, ND) is skipped: the port it entered by already gave it.
Parsing is raw bytes (no scapy on this path).  Timestamps are the kernel's
receive time (SO_TIMESTAMPNS, CLOCK_REALTIME) moved to time.monotonic(), the
clock of the timeline and of socket outcomes.  ``write_pcapng`` saves every
frame for Wireshark/tshark with one interface per switch port, named after
the host on it (so a frame says whose port it crossed); ``write_pcap`` is the
older single-interface format.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass

import trio

from .. import _tap, _wire
from .._wire import Seg

ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
PACKET_OUTGOING = 4
_PORT_NAME = re.compile(r"p[0-9]+")  # the switch's ports; its bridge device is not one


_ICMP4 = {0: "echo-reply", 3: "unreachable", 8: "echo-request", 11: "time-exceeded",
          5: "redirect", 12: "parameter-problem"}
_ICMP6 = {1: "unreachable", 2: "packet-too-big", 3: "time-exceeded", 128: "echo-request",
          129: "echo-reply", 133: "router-solicitation", 134: "router-advertisement",
          135: "neighbor-solicitation", 136: "neighbor-advertisement", 137: "redirect",
          130: "mld-query", 131: "mld-report", 132: "mld-done", 143: "mldv2-report"}
_ND_TYPES = range(133, 138)
_MLD_TYPES = (130, 131, 132, 143)


@dataclass(frozen=True)
class Frame:
    """One frame on the wire, whatever it carries.

    ``kind`` is "arp", "nd" (ICMPv6 133-137), "mld" (multicast listener
    reports a new interface sends), "icmp", "icmp6", "tcp", "udp",
    "ipv4"/"ipv6" (another protocol) or "other"; ``src``/``dst`` are the IP
    addresses (ARP: sender and target), ``what`` a short description
    ("request", "reply", "echo-request", "unreachable/3", "neighbor-solicitation",
    TCP flags...)."""

    t: float
    ingress: str          # the host whose switch port it entered by
    port: str             # that switch port's name (p1, p2...)
    kind: str
    src: str | None
    dst: str | None
    what: str
    frame: bytes

    def __repr__(self) -> str:
        return f"<{self.t:.6f} {self.ingress} {self.kind} {self.src} > {self.dst} {self.what}>"


def _ip(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def classify(frame: bytes) -> tuple[str, str | None, str | None, str]:
    """(kind, src, dst, what) of an Ethernet frame; never raises."""
    try:
        proto = struct.unpack_from("!H", frame, 12)[0]
        body = frame[14:]
        if proto == ETH_P_ARP:
            op = struct.unpack_from("!H", body, 6)[0]
            return ("arp", _ip(body[14:18]), _ip(body[24:28]),
                    {1: "request", 2: "reply"}.get(op, f"op{op}"))
        if proto == ETH_P_IP:
            ihl, ip_proto = (body[0] & 0x0F) * 4, body[9]
            src, dst, l4 = _ip(body[12:16]), _ip(body[16:20]), body[ihl:]
            if ip_proto == 1:
                return "icmp", src, dst, _icmp_what(_ICMP4, l4[0], l4[1])
            return _l4(ip_proto, src, dst, l4, "ipv4")
        if proto == ETH_P_IPV6:
            nxt, src, dst, l4 = body[6], _ip(body[8:24]), _ip(body[24:40]), body[40:]
            if nxt == 0:  # hop-by-hop options (MLD reports carry one)
                nxt, l4 = l4[0], l4[(l4[1] + 1) * 8:]
            if nxt == 58:
                kind = "nd" if l4[0] in _ND_TYPES else "mld" if l4[0] in _MLD_TYPES else "icmp6"
                return kind, src, dst, _icmp_what(_ICMP6, l4[0], l4[1])
            return _l4(nxt, src, dst, l4, "ipv6")
    except (IndexError, struct.error, ValueError):
        pass
    return "other", None, None, f"ethertype 0x{struct.unpack_from('!H', frame, 12)[0]:04x}" \
        if len(frame) >= 14 else "runt"


def _icmp_what(names: dict, typ: int, code: int) -> str:
    name = names.get(typ, f"type{typ}")
    return f"{name}/{code}" if code else name


def _l4(proto: int, src: str, dst: str, l4: bytes, family: str):
    if proto == 6:
        return "tcp", src, dst, _wire.letters(l4[13])
    if proto == 17:
        sport, dport = struct.unpack_from("!HH", l4)
        return "udp", src, dst, f"{sport} > {dport}"
    return family, src, dst, f"proto {proto}"


class Capture:
    """Started with ``await lab.capture()``; runs until the lab ends or
    ``await stop()``."""

    def __init__(self, lab, switch_fd: int, ports: dict[str, str]):
        """``ports`` maps the switch's port names (p1, p2...) to host names."""
        self.lab, self._ports = lab, ports
        self._sock = _tap.open_tap(switch_fd, rcvbuf=4 << 20)
        self._offset = _tap.realtime_offset()[0]
        self.packets_seen = 0
        self._packets: list[Seg] = []
        self._frames: list[Frame] = []
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
        # the offset to the realtime clock the pcapng is written in, measured
        # again now as _tap.read_frames does (realtime may be stepped)
        self._offset = _tap.realtime_offset()[0]
        for frame, t, addr in _tap.read_frames(self._sock):
            if addr[2] == PACKET_OUTGOING:
                continue
            if addr[0] not in self._ports and not _PORT_NAME.fullmatch(addr[0]):
                continue  # the bridge's own copy of a broadcast a port already gave us
            self.packets_seen += 1
            ingress = self._host_of(addr[0])
            kind, src, dst, what = classify(frame)
            self._frames.append(Frame(t, ingress, addr[0], kind, src, dst, what, frame))
            if kind != "tcp":
                continue
            seg = _wire.decode_frame(frame, t, ingress=ingress)
            if seg is not None:
                self._packets.append(seg)

    def _host_of(self, port: str) -> str:
        """The host on a switch port (hosts added after the capture started
        are looked up in the lab)."""
        host = self._ports.get(port)
        if host is None:
            for h in self.lab.hosts.values():
                if f"p{h.index}" == port:
                    host = self._ports[port] = h.name
                    break
        return host or port

    def frames(self, kind: str | None = None, *, host: str | None = None) -> list[Frame]:
        """Every frame seen so far, in time order; of one ``kind`` ("arp",
        "nd", "icmp", "icmp6", "tcp", "udp"...) and/or that entered the
        switch from ``host`` (a name or a Host) if given."""
        self.drain()
        name = getattr(host, "name", host)
        return [f for f in self._frames
                if (kind is None or f.kind == kind) and (name is None or f.ingress == name)]

    def packets(self, conn=None, *, flags: str | None = None) -> list[Seg]:
        """Segments seen so far, in time order; of one connection (either
        direction) when ``conn`` is a Socket; with exactly ``flags`` if given
        (letters as a segment's ``flags`` shows them: "S", "SA", "FA", "RA")."""
        self.lab.check_open(f"capture {self!r}")
        self.drain()
        out = self._packets
        if conn is not None:
            a, b = conn.local, conn.remote
            out = [p for p in out if (p.src, p.dst) in ((a, b), (b, a))]
        if flags is not None:
            want = _wire.from_letters(flags, "packets()")
            out = [p for p in out if p.bits == want]
        return list(out)

    async def expect(self, conn, line: str, *, within=None, after=None):
        """Wait for the next segment a line describes (packetdrill notation,
        relative seq/ack; see harness._observe.expect) and return it; a
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

    def write_pcapng(self, path: str) -> str:
        """Every frame as pcapng: one interface per switch port, named after
        its host (if_name) and described as the port (if_description);
        nanosecond timestamps; each frame on the interface it entered by."""
        self.drain()
        ports = sorted({f.port for f in self._frames} | set(self._ports),
                       key=lambda p: (len(p), p))
        index = {p: i for i, p in enumerate(ports)}
        with open(path, "wb") as f:
            f.write(_block(0x0A0D0D0A, struct.pack("=IHHq", 0x1A2B3C4D, 1, 0, -1)))
            for port in ports:
                host = self._host_of(port)
                opts = (_option(2, host.encode()) +
                        _option(3, f"switch port {port} of host {host}".encode()) +
                        _option(9, b"\x09") + _option(0, b""))
                f.write(_block(1, struct.pack("=HHI", 1, 0, 0) + opts))
            for fr in self._frames:
                ns = int(round((fr.t - self._offset) * 1e9))
                data = fr.frame + b"\0" * (-len(fr.frame) % 4)
                flags = _option(2, struct.pack("=I", 1)) + _option(0, b"")  # inbound
                f.write(_block(6, struct.pack("=IIIII", index[fr.port], ns >> 32,
                                              ns & 0xFFFFFFFF, len(fr.frame), len(fr.frame))
                               + data + flags))
        return path

    async def stop(self) -> None:
        """Stop capturing; the socket is closed only once run() has left its
        wait on it (closing under it would fail that wait, not cancel it)."""
        self.drain()
        self._cancel.cancel()
        await self._stopped.wait()
        if self._sock.fileno() >= 0:
            self._sock.close()



def _option(code: int, value: bytes) -> bytes:
    return struct.pack("=HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("=II", kind, length) + body + struct.pack("=I", length)
