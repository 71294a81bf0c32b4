"""Scripted segments: packetdrill's ``<`` and ``>`` lines against a host of the lab.

A ``Wire`` taps the victim's switch port (an AF_PACKET socket in the
switch's namespace, as faults.inject does), records every TCP segment to
and from the victim with its kernel timestamp and decoded options, and
sends any segment *to* the victim as if the other end had sent it:

    async with faults.scripted_peer(server, client, port=9000) as wire:
        listener = await server.listen(9000)
        await wire.send("client > server S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>")
        await wire.expect("server > client S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 7>")
        await wire.send("client > server . 1:1(0) ack 1 win 257", wait=0.1)
        conn = await listener.accept()

Lines are harness._tcpline's notation (packetdrill's, with host names).
Sequence numbers are relative to each side's ISN: the ISN of a side the
script speaks for is drawn at random when its SYN is sent; the victim's is
learnt from its SYN; the numbers of a side whose SYN the wire has not seen
(a 4-tuple with no socket) are absolute.  Ports left out of a line are the wire's connection
(set by the first SYN, or by the connection the wire was attached to).
In a line to send, ``*`` (or a field left out) means what the real peer
would put now: ``seq`` its SND.NXT, ``ack`` the victim's SND.NXT, ``win`` the
last window that side advertised (65535 before any), ``TS val *`` its last
TSval, ``TS ecr *`` the victim's last TSval; a left-out ``<...>`` sends no
option.  ``wait=`` sends that many seconds after the wire's last event
(the previous line: packetdrill's ``+0.1``); ``at=`` at a time on
time.monotonic().

Two ways to get a wire:

- ``scripted_peer(victim, remote, port=...)``: the remote host's kernel is
  silenced for that TCP port (an iptables drop on its input), so the
  script is the only other end, as packetdrill's tun device is.  ``port``
  is the victim's listening port, or the remote port the victim connects
  to.  A line may name any 4-tuple of the two hosts, including one with no
  socket at all (the victim answers with a RST).
- ``await wire(conn)``: attach to a live connection whose real peer keeps
  talking; SND.NXT/RCV.NXT are learnt with a probe (faults.inject's) and
  both ISNs from them and the victim's tcp_info (bytes sent and received),
  so relative numbers work on it, and keep working after it is closed
  (TIME_WAIT, or no socket left).  ``wire(conn, capture=cap)`` takes the
  ISNs from the SYNs a capture saw instead: no probe, any state.

``reset_at(conn, at=...)`` is one use: the sequence is learnt when it is
called (a probe answered in ~0.1 ms), tracked from what crosses the port,
and the RST leaves at its time: trio sleeps until SPIN before it and the
rest is spun, so it is never early; late by p50 1.0 ms, max 12.7 ms in
bench/bench_rates.py at load 13.6 on 2 CPUs (the process must get a CPU:
this kernel has neither sch_fq nor sch_etf to send at a time itself).
"""

from __future__ import annotations

import random
import socket
import struct
import time

import trio

from .. import _netns, _tap, _tcpline, _wire
from .._wire import ACK, ETH_HLEN, SYN, Seg, decode_frame
from ..errors import FaultError, InvalidArgument, ObservationTimeout
from .._observe.expect import Isns, check_within, span_of, time_of, wait_segment
from ._base import Fault
from ._shared import check_injectable, link_mac, link_mtu

SOL_PACKET, PACKET_VNET_HDR = 263, 15
# struct virtio_net_hdr (linux/virtio_net.h): flags, gso_type, hdr_len,
# gso_size, csum_start, csum_offset
VNET_NONE = bytes(10)
VNET_NEEDS_CSUM, VNET_GSO_TCPV4, VNET_GSO_TCPV6 = 1, 1, 4
PROBE_WAIT = 0.5
# states in which the victim has sent / received a FIN (for ISNs from byte counts)
FIN_SENT = frozenset({"FIN_WAIT1", "FIN_WAIT2", "CLOSING", "LAST_ACK", "TIME_WAIT"})
FIN_RECEIVED = frozenset({"CLOSE_WAIT", "LAST_ACK", "CLOSING", "TIME_WAIT"})


class Wire:
    """A tap on one host's switch port that sends and expects scripted
    segments (see the module docstring)."""

    def __init__(self, victim, remote, family: int, port: int | None = None):
        self.victim, self.remote, self.family, self.port = victim, remote, family, port
        self.lab = victim.lab
        self._addr = {victim.name: victim.address(family), remote.name: remote.address(family)}
        self._names = {a: n for n, a in self._addr.items()}
        self._victim_mac = link_mac(victim.ns_fd)
        self._remote_mac = link_mac(remote.ns_fd)
        sock = _tap.open_tap(self.lab.context.switch[1], self.lab.context.port(victim),
                             rcvbuf=4 << 20)
        try:
            # a second socket only sends: the kernel shows a frame to every
            # packet socket but its sender (dev_queue_xmit_nit()), so the tap
            # stamps our own segments when they really leave
            out = _netns.socket_in(self.lab.context.switch[1], socket.AF_PACKET,
                                   socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
            try:
                out.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
                out.bind((f"p{victim.index}", 0))
            except BaseException:
                out.close()
                raise
        except BaseException:
            sock.close()
            raise
        self._sock, self._out = sock, out
        self._mtu = link_mtu(self.lab.context.switch[1], self.lab.context.port(victim))
        self._segs: list[Seg] = []
        self._matched: set[int] = set()   # ids of segments an expect() took
        self.isns = Isns()
        self.ends: dict[str, tuple[str, int]] = {}   # host name -> (address, port) of the flow
        self.last = time.monotonic()                  # the wire's last event

    def __repr__(self) -> str:
        flow = " ".join(f"{n}:{e[1]}" for n, e in self.ends.items())
        return f"<Wire {self.victim.name}<->{self.remote.name} {flow}>"

    # --- what crossed the port -----------------------------------------
    def _drain(self) -> None:
        victim = self._addr[self.victim.name]
        for frame, t, _addr in _tap.read_frames(self._sock):
            seg = decode_frame(frame, t)
            if seg is not None and victim in (seg.src[0], seg.dst[0]):
                self._record(seg)

    def _record(self, seg: Seg) -> None:
        self.isns.learn(seg)
        if seg.bits & SYN and not self.ends and {seg.src[0], seg.dst[0]} <= set(self._names):
            self.ends = {self._names[seg.src[0]]: seg.src, self._names[seg.dst[0]]: seg.dst}
        self._segs.append(seg)

    def segments(self, *, flow_only: bool = True) -> list[Seg]:
        """Segments seen and sent so far, in order; of the wire's flow only
        unless ``flow_only=False``."""
        self._drain()
        segs = sorted(self._segs, key=lambda s: s.t)
        if flow_only and self.ends:
            pair = set(self.ends.values())
            segs = [s for s in segs if s.src in pair and s.dst in pair]
        return segs

    # --- resolving a line ------------------------------------------------
    def _end(self, name: str, port: int | None, text: str) -> tuple[str, int]:
        if name not in self._addr:
            raise InvalidArgument(f"{name!r} in {text!r} is neither {self.victim.name!r} nor "
                                  f"{self.remote.name!r}, the hosts of {self!r}")
        if port is not None:
            return (self._addr[name], port)
        if name in self.ends:
            return self.ends[name]
        if name == self.victim.name and self.port is not None:
            return (self._addr[name], self.port)  # before any flow: the victim's service port
        return (self._addr[name], None)

    def _next(self, sender: tuple[str, int], receiver: tuple[str, int]) -> int:
        """The sequence number ``sender`` would send next: past everything it
        sent, and at least what the receiver acknowledged."""
        best = None
        for s in self.segments(flow_only=False):
            if s.src == sender and s.dst == receiver:
                cand = s.end()
            elif s.src == receiver and s.dst == sender and s.bits & ACK:
                cand = s.ack
            else:
                continue
            if best is None or ((cand - best) & 0xFFFFFFFF) < 2**31:
                best = cand
        if best is None:
            raise InvalidArgument(f"nothing seen from {self._label(sender)} nor acknowledged "
                                  f"to it: give seq/ack explicitly")
        return best

    def _last(self, sender, pred):
        for s in reversed(self.segments(flow_only=False)):
            if s.src == sender and pred(s):
                return s
        return None

    def _label(self, end) -> str:
        return f"{self._names.get(end[0], end[0])}:{end[1]}"

    # --- sending ---------------------------------------------------------
    async def send(self, line: str, *, payload: bytes | None = None, wait: float | None = None,
                   at: float | None = None) -> Seg:
        """Send the segment the line describes to the victim; returns it
        (with its send time).  ``wait``: seconds after the wire's last
        event; ``at``: a time.monotonic() instant."""
        parsed = _tcpline.parse(line)
        if wait is not None and at is not None:
            raise InvalidArgument("give wait= or at=, not both")
        if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float))):
            raise InvalidArgument(f"at must be a time on time.monotonic(), got {at!r}")
        if wait is not None and (isinstance(wait, bool) or not isinstance(wait, (int, float))
                                 or wait < 0):
            raise InvalidArgument(f"wait must be seconds >= 0, got {wait!r}")
        if parsed.dst != self.victim.name:
            raise InvalidArgument(f"a wire sends only to its victim {self.victim.name!r} (it "
                                  f"speaks for {self.remote.name!r}); got {line!r}")
        src = self._end(parsed.src, parsed.sport, line)
        dst = self._end(parsed.dst, parsed.dport, line)
        if src[1] is None:
            src = (src[0], random.randint(32768, 60999))
        if dst[1] is None:
            raise InvalidArgument(f"{line!r}: no port for {parsed.dst!r} and the wire has no "
                                  f"connection yet; write {parsed.dst}:PORT")
        if payload is not None and not isinstance(payload, (bytes, bytearray)):
            raise InvalidArgument(f"payload must be bytes, got {type(payload).__name__}")
        length = parsed.length
        if payload is not None and length is not None and len(payload) != length:
            raise InvalidArgument(f"payload has {len(payload)} bytes, the line says "
                                  f"({length}): {line!r}")
        data = bytes(payload) if payload is not None else b"\0" * (length or 0)
        seq, ack = self._numbers(parsed, src, dst, line)
        window = parsed.window
        if window is None:
            prev = self._last(src, lambda s: True)
            window = prev.window if prev is not None else 65535
        options = self._options(parsed.options or (), src, dst)
        frame = self._frame(src, dst, seq, ack, parsed.flags, window, options, data)
        when = at if at is not None else (self.last + wait if wait is not None else None)
        if when is not None:
            await _until(when)
        seg = await self._transmit(frame)
        self.last = seg.t
        return seg

    async def _transmit(self, frame: bytes) -> Seg:
        """Send a frame; the segment as the tap saw it leave (kernel time)."""
        t = time.monotonic()
        n = len(self._segs)
        self._send(self._vnet(frame))
        want = decode_frame(frame, t)
        deadline = t + 0.5
        while True:
            expired = time.monotonic() > deadline  # before the look (see _poll.until)
            self._drain()
            for s in self._segs[n:]:
                if (s.src, s.dst, s.seq, s.ack, s.bits, s.payload) == \
                        (want.src, want.dst, want.seq, want.ack, want.bits, want.payload):
                    return s
            if expired:  # not seen (a full tap buffer): our own clock
                self._record(want)
                return want
            await trio.lowlevel.checkpoint()

    def _numbers(self, parsed, src, dst, line) -> tuple[int, int]:
        if parsed.flags & SYN and src not in self.isns.of:
            self.isns.of[src] = random.getrandbits(32)
        if parsed.seq is not None:
            seq = self.isns.abs(src, parsed.seq)
        else:
            seq = self._next(src, dst)
        ack = 0
        if parsed.flags & ACK:
            if parsed.ack is not None:
                ack = self.isns.abs(dst, parsed.ack)
            else:
                ack = self._next(dst, src)
        return seq, ack

    def _options(self, options: tuple, src, dst) -> tuple:
        out = []
        for o in options:
            if o[0] == "TS":
                val, ecr = o[1], o[2]
                if val is None:
                    prev = self._last(src, lambda s: s.tsval is not None)
                    val = prev.tsval if prev is not None else 1
                if ecr is None:
                    prev = self._last(dst, lambda s: s.tsval is not None)
                    ecr = prev.tsval if prev is not None else 0
                out.append(("TS", val, ecr))
            elif o[0] == "sack":
                out.append(("sack", tuple((self.isns.abs(dst, a), self.isns.abs(dst, b))
                                          for a, b in o[1])))
            elif len(o) > 1 and o[1] is None:
                raise InvalidArgument(f"option {o[0]} needs a value to be sent, got *")
            else:
                out.append(o)
        return tuple(out)

    def _vnet(self, frame: bytes) -> bytes:
        """The frame behind a virtio_net_hdr (PACKET_VNET_HDR).  A segment
        larger than the link's MTU goes as one GSO packet, as packetdrill's
        tun device takes it: the victim's TCP receives it whole, as after
        GRO (gso_size: the MSS the sender announced, else the link's)."""
        if len(frame) <= ETH_HLEN + self._mtu:
            return VNET_NONE + frame
        ip_len = 20 if self.family == 4 else 40
        tcp_len = (frame[ETH_HLEN + ip_len + 12] >> 4) * 4
        syn = self._last_syn_mss()
        mss = syn or (self._mtu - ip_len - 20)
        return struct.pack("=BBHHHH", VNET_NEEDS_CSUM,
                           VNET_GSO_TCPV4 if self.family == 4 else VNET_GSO_TCPV6,
                           ETH_HLEN + ip_len + tcp_len, mss, ETH_HLEN + ip_len, 16) + frame

    def _last_syn_mss(self) -> int | None:
        remote = self._addr[self.remote.name]
        for s in self._segs:
            if s.bits & SYN and s.src[0] == remote and s.option("mss"):
                return s.option("mss")[1]
        return None

    def _send(self, data: bytes) -> None:
        try:
            self._out.send(data)
        except OSError as exc:
            raise FaultError(f"{self!r}: cannot send a segment out of switch port "
                             f"p{self.victim.index}: {exc}", call="send on AF_PACKET",
                             errno=exc.errno) from exc

    def _frame(self, src, dst, seq, ack, flags, window, options, data) -> bytes:
        opts = _wire.encode_options(options) if options else b""
        packet = _wire.tcp_packet(self.family, src, dst, seq, ack, flags, window, opts, data)
        return _wire.ether(self._victim_mac, self._remote_mac, packet)

    # --- expecting ------------------------------------------------------
    async def expect(self, line: str, *, within=None, after=None) -> Seg:
        """Wait for the victim's next segment to the other end after
        ``after`` (default: the wire's last event) and check it against the
        line (see harness._observe.expect); returns it."""
        __tracebackhide__ = True
        parsed = _tcpline.parse(line)
        if parsed.src != self.victim.name:
            raise InvalidArgument(f"a wire expects segments from its victim "
                                  f"{self.victim.name!r}; got {line!r}")
        sender = self._end(parsed.src, parsed.sport, line)
        receiver = self._end(parsed.dst, parsed.dport, line)
        after = self.last if after is None else after
        if not self.ends and (parsed.sport is None or parsed.dport is None):
            # the first SYN on the port names the flow
            deadline = span_of(after, self.last)[1] + check_within(within)[1] + 0.05
            while not self.ends:
                expired = time.monotonic() > deadline  # before the look (see _poll.until)
                self._drain()
                if not self.ends:
                    if expired:
                        raise ObservationTimeout(f"no segment from {self.victim.name} opened a "
                                                 f"flow for {line!r}", last=self._segs[-3:])
                    await trio.sleep(0.001)
            sender, receiver = self.ends[parsed.src], self.ends[parsed.dst]
        seg = await wait_segment(lambda: self.segments(flow_only=False), parsed, sender,
                                 receiver, lambda: self.isns, self._names, within, after,
                                 time.monotonic(), self._matched)
        self.last = seg.t
        return seg

    def unmatched(self) -> list[Seg]:
        """The victim's segments of the flow that no ``expect()`` took:
        packetdrill fails a script on any outbound packet it did not
        expect; ``assert wire.unmatched() == []`` is that check."""
        victim = self._addr[self.victim.name]
        return [s for s in self.segments() if s.src[0] == victim and id(s) not in self._matched]

    async def expect_nothing(self, seconds: float, *, after=None) -> None:
        """Nothing from the victim in the flow for ``seconds`` after
        ``after`` (default: the wire's last event; a segment at that very
        time is not counted, so ``after=seg`` looks past ``seg``)."""
        __tracebackhide__ = True
        from .._observe.expect import SegmentMismatch, render
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise InvalidArgument(f"seconds must be >= 0, got {seconds!r}")
        t0 = time_of(after, self.last)
        await trio.sleep(max(0.0, t0 + seconds - time.monotonic()))
        victim = self._addr[self.victim.name]
        seen = [s for s in self.segments() if s.src[0] == victim and t0 < s.t <= t0 + seconds
                and id(s) not in self._matched]
        if seen:
            rows = "\n".join("  seen     " + render(s, self._names, self.isns, t0) for s in seen)
            raise SegmentMismatch(f"expected nothing from {self.victim.name} for "
                                  f"{seconds}s\n{rows}")

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            try:
                trio.lowlevel.notify_closing(self._sock)
            except RuntimeError:
                pass
            self._sock.close()
        if self._out.fileno() >= 0:
            self._out.close()


SPIN = 0.005  # the last stretch before a scheduled send is spun, not slept


async def _until(when: float) -> None:
    """Return at ``when`` (time.monotonic()).  trio's sleep wakes up to ~8 ms
    late on a loaded 2-core machine (measured at load 9.7), so it sleeps
    until SPIN before and spins the rest without yielding to other tasks."""
    early = when - SPIN - time.monotonic()
    if early > 0:
        await trio.sleep(early)
    while time.monotonic() < when:
        pass


# --- the two ways in ---------------------------------------------------------------

class ScriptedPeer(Fault):
    """The remote host's kernel silenced for one TCP port; its ``wire``
    speaks for it."""

    def __init__(self, victim, remote, port: int, family: int):
        from ._firewall import drop
        super().__init__(victim.lab)
        self.label = f"scripted_peer({victim.name}, {remote.name}, port={port})"
        self._fw = drop(remote, direction="in", peer=victim, port=port, protocol="tcp",
                        family=family)
        self._args = (victim, remote, family, port)
        self.wire: Wire | None = None

    async def _apply(self) -> None:
        await self._fw.start()
        try:
            self.wire = Wire(*self._args)
        except BaseException:
            await self._fw.stop()
            raise

    async def _revert(self) -> None:
        if self.wire is not None:
            self.wire.close()
        await self._fw.stop()

    async def __aenter__(self) -> Wire:
        await self.start()
        return self.wire


def scripted_peer(victim, remote, *, port: int, family: int = 4) -> ScriptedPeer:
    """Let a test speak for ``remote`` to ``victim`` on TCP ``port`` (the
    victim's listening port, or the remote port it connects to):
    ``async with scripted_peer(server, client, port=9000) as wire``."""
    from .._host import check_host
    from .._sockets import check_family, check_port
    for h, what in ((victim, "victim"), (remote, "remote")):
        check_host(h, "scripted_peer()", what)
    if victim is remote or victim.lab is not remote.lab:
        raise InvalidArgument("scripted_peer(): victim and remote must be two hosts of one lab")
    check_port(port)
    check_family(family)
    return ScriptedPeer(victim, remote, port, family)


async def wire(conn, *, capture=None) -> Wire:
    """Attach a wire to a connection whose peer stays real: the flow is
    conn's 4-tuple.  Both ISNs come from ``capture`` (a lab capture that saw
    the handshake: then the connection may be in any state, TIME_WAIT or
    gone) or are learnt from the live connection (see the module
    docstring).  The tap stays until the lab ends or ``wire.close()``."""
    from .._sockets import Socket
    if capture is None:
        check_injectable(conn, "wire")
    elif not isinstance(conn, Socket) or conn.local is None or conn.remote is None \
            or conn.remote[1] == 0:
        raise InvalidArgument(f"wire() takes a connected Socket, got {conn!r}")
    lab = conn.host.lab
    remote = next((h for h in lab.hosts.values() if h is not conn.host
                   and h.address(conn.family) == conn.remote[0]), None)
    if remote is None:
        raise InvalidArgument(f"wire(): the peer of {conn!r} is not a host of this lab")
    isns = None
    if capture is not None:
        isns = {p.src: p.seq for p in capture.packets(conn) if "S" in p.flags}
        if conn.local not in isns or conn.remote not in isns:
            raise InvalidArgument(f"wire(capture=...): the capture did not see both SYNs of "
                                  f"{conn!r}; start it before the connection")
    w = Wire(conn.host, remote, conn.family)
    lab.undo.push(f"close wire on p{conn.host.index}", w.close)
    w.ends = {conn.host.name: conn.local, remote.name: conn.remote}
    if isns is not None:
        w.isns.of.update(isns)
        return w
    try:
        await _learn_isns(w, conn)
    except BaseException:
        w.close()
        raise
    return w


async def _learn_isns(w: Wire, conn) -> None:
    """SND.NXT and RCV.NXT from the victim's answer to an out-of-window probe
    (faults.inject explains why it answers), then
    ISS = SND.NXT - 1 - data bytes sent once - FIN, IRS = RCV.NXT - 1 -
    bytes received - FIN, from tcp_info (bytes_sent counts retransmissions
    too, bytes_retrans only them)."""
    info = conn.info()
    probe_seq = random.getrandbits(32)
    for _ in range(2):
        t0 = time.monotonic()
        w._send(w._vnet(w._frame(conn.remote, conn.local, probe_seq,
                                     random.getrandbits(32), ACK, 65535, (), b"\0")))
        deadline = t0 + PROBE_WAIT
        while time.monotonic() < deadline:
            reply = next((s for s in w.segments() if s.t >= t0 and s.src == conn.local), None)
            if reply is not None:
                break
            await trio.sleep(0.0005)
        else:
            probe_seq ^= 0x80000000
            continue
        # the probes are not the peer's: forget them (they would skew _next)
        w._segs = [s for s in w._segs if not (s.src == conn.remote and s.length == 1
                                               and s.seq in (probe_seq, probe_seq ^ 0x80000000))]
        info = conn.info() or info
        ti = info.tcp_info if info is not None else {}
        if "bytes_sent" not in ti:
            raise FaultError(f"wire(): no tcp_info for {conn!r}; cannot learn its ISNs")
        sent = ti["bytes_sent"] - ti.get("bytes_retrans", 0)
        w.isns.of[conn.local] = (reply.seq - 1 - sent - (info.state in FIN_SENT)) & 0xFFFFFFFF
        w.isns.of[conn.remote] = (reply.ack - 1 - ti["bytes_received"]
                                  - (info.state in FIN_RECEIVED)) & 0xFFFFFFFF
        w.last = reply.t
        return
    raise FaultError(f"{conn!r} did not answer two probes within {PROBE_WAIT}s each",
                     netns=conn.host.netns)


async def reset_at(conn, *, at: float | None = None, delay: float | None = None,
                   via: Wire | None = None) -> Seg:
    """Send ``conn`` a RST at RCV.NXT (it dies with ECONNRESET) at time ``at``
    (time.monotonic()) or ``delay`` seconds from now, on a quiet connection
    too: the sequence is learnt now (a probe; or ``via``, a wire attached
    earlier) and tracked until then."""
    if (at is None) == (delay is None):
        raise InvalidArgument("reset_at(): give exactly one of at= (time.monotonic()) or "
                              "delay= (seconds from now)")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                              or delay < 0):
        raise InvalidArgument(f"reset_at(): delay must be seconds >= 0, got {delay!r}")
    when = at if at is not None else time.monotonic() + delay
    w = via or await wire(conn)
    return await w.send(f"{w.remote.name} > {conn.host.name} R. * ack *", at=when)
