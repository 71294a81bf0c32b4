"""Spoofed RST, FIN and SYN segments from a third position: the blind
attacker (or the confused middlebox) of RFC 5961.

The segment is built from raw bytes (harness._wire) and sent from the
lab's switch namespace straight out of the victim's switch port (an
AF_PACKET socket bound to ``p<n>``), so it reaches the victim's eth0 as if
its peer had sent it: the peer's addresses, ports and MAC, the timestamp
option the connection negotiated.  It never crosses the bridge, so the
bridge learns nothing from it.

Sequence numbers are learnt from the live connection, never guessed: a
1-byte data segment with an arbitrary sequence number is sent to the
victim first.  It is almost surely outside the receive window, and
tcp_validate_incoming() answers any out-of-window segment with a duplicate
ACK (RFC 793 p.69) carrying SND.NXT and RCV.NXT; the per-socket rate limit
(tcp_oow_rate_limited(), tcp_invalid_ratelimit) exempts segments carrying
data, so the probe does not spend the budget of a challenge ACK that
follows.  If the probe happened to fall inside the window the victim drops
it silently (its ACK number is out of range too) and a second probe, half
the sequence space away, is outside it.

What the kernel does with each injection (tcp_validate_incoming(),
net/ipv4/tcp_input.c; measured in tests/test_faults_inject.py):

- RST, seq == RCV.NXT ("exact"): tcp_reset(); the owner's next call gets
  ECONNRESET (RFC 5961 §3.2: only an exact match resets).
- RST, in the window but not exact (True): a challenge ACK
  (tcp_send_challenge_ack(), TcpExt TCPChallengeACK); the connection lives.
  The real peer would answer that ACK with a RST carrying the exact
  sequence number; a blind attacker does not see it.
- RST, out of the window ("out_of_window"): silently dropped.
- FIN at RCV.NXT: accepted; the victim ACKs it, enters CLOSE_WAIT and its
  owner reads end-of-stream (b"").
- SYN on a synchronized connection, in the window or not: a challenge ACK
  (RFC 5961 §4.2; TCPSYNChallenge), the connection lives.

Challenge ACKs share a per-socket rate limit with out-of-window dupacks:
one per tcp_invalid_ratelimit (500 ms, pinned by the harness) per socket;
set it to 0 on the victim host to see every one.  These are actions, not
undoable faults: a segment once sent cannot be taken back.
"""

from __future__ import annotations

import random
import time

import trio

from .. import _tap, _wire
from .._wire import ACK, FIN, RST, SYN, Seg
from ..errors import FaultError, InvalidArgument, ObservationTimeout
from ._shared import check_injectable, link_mac

PROBE_WAIT = 0.5  # seconds a probe may take to be answered (it takes ~0.05 ms)
SEQS = ("exact", "in_window", "out_of_window")
OUT_OF_WINDOW = 1 << 30  # beyond any window: RFC 7323 caps it below 2**30


class Injection:
    """What an injection sent and learnt; the victim's answers on the wire.

    ``rcv_nxt``/``snd_nxt`` are the victim's, as its last segment before the
    injection showed them; ``sent`` is the spoofed segment.  The victim's
    port stays tapped until the lab ends (or ``close()``)."""

    def __init__(self, kind: str, mode: str | None, victim, tap: "_Tap", mark: int,
                 learnt: Seg, sent: Seg, counters: dict[str, int]):
        self.kind, self.mode, self.victim = kind, mode, victim
        self._tap, self._mark, self.learnt, self.sent = tap, mark, learnt, sent
        self.rcv_nxt, self.snd_nxt = learnt.ack, learnt.end()
        self._counters = counters

    def __repr__(self) -> str:
        return f"<Injection {self.kind} {self.mode or ''} {self.sent!r}>"

    def replies(self) -> list[Seg]:
        """The victim's segments to its peer since the injection."""
        return [s for s in self._tap.segments(self._mark) if s.src == self.victim.local]

    async def wait_reply(self, *, timeout: float = 1.0) -> Seg:
        """The victim's first segment to its peer after the injection (a
        challenge ACK, the ACK of a FIN...)."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise InvalidArgument(f"timeout must be seconds >= 0, got {timeout!r}")
        try:
            return await self._tap.wait(self._mark, lambda s: s.src == self.victim.local,
                                        timeout, f"no segment from {self.victim!r} after {self!r}")
        except ObservationTimeout as exc:
            # what the victim's kernel did with it: answered (then the tap
            # missed it), skipped the answer (a rate limit), or never saw it
            now = self.victim.host.counters("TcpExt")
            grew = {k: v - self._counters.get(k, 0) for k, v in now.items()
                    if v != self._counters.get(k, 0)}
            seen = self._tap.segments(self._mark)
            raise ObservationTimeout(f"{exc}; the tap saw {len(seen)} segment(s) of the "
                                     f"connection since, and the victim's TcpExt counters grew "
                                     f"by {grew or 'nothing'}", last=exc.last) from None

    def counter(self, name: str) -> int:
        """How much a TcpExt counter of the victim's namespace (e.g.
        TCPChallengeACK, TCPSYNChallenge) grew since just before the
        injection (after the probe)."""
        now = self.victim.host.counters("TcpExt")
        if name not in now:
            raise InvalidArgument(f"TcpExt has no counter {name!r}; e.g. TCPChallengeACK, "
                                  f"TCPSYNChallenge")
        return now[name] - self._counters.get(name, 0)

    def close(self) -> None:
        self._tap.close()


async def inject_rst(conn, seq: str = "exact", **renamed) -> Injection:
    """Send ``conn`` a RST spoofed from its peer, its sequence number
    ``seq``: "exact" (== RCV.NXT: the connection dies), "in_window" (inside
    the window, not exact: a challenge ACK, it lives, RFC 5961 §3) or
    "out_of_window" (ignored)."""
    mode = _check_seq(seq, renamed)
    check_injectable(conn, "inject_rst")
    return await _inject(conn, "RST", mode)


async def inject_fin(conn) -> Injection:
    """Send ``conn`` a FIN at RCV.NXT spoofed from its peer: its owner reads
    end-of-stream, the socket enters CLOSE_WAIT."""
    check_injectable(conn, "inject_fin")
    return await _inject(conn, "FIN", None)


async def inject_syn(conn) -> Injection:
    """Send ``conn`` an in-window SYN spoofed from its peer (a peer that
    rebooted and reconnects from the same port): a challenge ACK, the
    connection lives (RFC 5961 §4)."""
    check_injectable(conn, "inject_syn")
    return await _inject(conn, "SYN", None)


# --- validation (before anything is touched) ---------------------------------

def _check_seq(seq, renamed: dict) -> str:
    if "in_window" in renamed:  # its old name took True/False/"exact"/"out_of_window"
        old = renamed.pop("in_window")
        new = {True: "in_window", False: "out_of_window"}.get(old, old) \
            if isinstance(old, (bool, str)) else old
        raise InvalidArgument(f"inject_rst(in_window={old!r}): the argument is now seq=, one "
                              f"of {', '.join(map(repr, SEQS))}: write seq={new!r}")
    if renamed:
        raise InvalidArgument(f"inject_rst() got unexpected arguments {sorted(renamed)}")
    if not isinstance(seq, str) or seq not in SEQS:
        raise InvalidArgument(f"seq must be one of {', '.join(map(repr, SEQS))} (where the "
                              f"RST's sequence number falls: RCV.NXT, inside the window, "
                              f"outside it), got seq={seq!r}")
    return seq


# --- the injection --------------------------------------------------------------

async def _inject(conn, kind: str, mode: str | None) -> Injection:
    host = conn.host
    lab = host.lab
    tap = _Tap(lab.context.switch[1], lab.context.port(host), conn)
    try:
        victim_mac = link_mac(host.ns_fd)
        learnt, peer_mac = await _learn(tap, conn, victim_mac)
        rcv_nxt, snd_nxt = learnt.ack, learnt.end()
        ts = (learnt.tsecr, learnt.tsval) if learnt.timestamps else None
        if kind == "RST":
            if mode == "exact":
                seq = rcv_nxt
            elif mode == "in_window":
                if learnt.window == 0:
                    raise FaultError(f"inject_rst(seq='in_window'): {conn!r} advertises a zero "
                                     f"window; only RCV.NXT itself is in it")
                seq = rcv_nxt + max(1, learnt.window // 2)
            else:
                seq = rcv_nxt + OUT_OF_WINDOW
            flags, ack = RST | ACK, snd_nxt
        elif kind == "FIN":
            seq, flags, ack = rcv_nxt, FIN | ACK, snd_nxt
        else:
            seq, flags, ack = rcv_nxt, SYN, 0
        counters = host.counters("TcpExt")
        mark = tap.mark()
        t = tap.send(_frame(conn, peer_mac, victim_mac, seq, ack, flags, ts))
        sent = Seg(t, conn.remote, conn.local, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, 0xFFFF,
                   0, _timestamp_option(ts))
    except BaseException:
        tap.close()
        raise
    lab.undo.push(f"close injection tap on p{host.index}", tap.close)
    return Injection(kind, mode, conn, tap, mark, learnt, sent, counters)


async def _learn(tap: "_Tap", conn, victim_mac: str) -> tuple[Seg, str]:
    """Make the victim tell its SND.NXT and RCV.NXT: a probe it answers with
    a duplicate ACK (see the module's docstring).  Returns the victim's most
    recent segment and the peer's MAC (that segment's destination)."""
    seq = random.getrandbits(32)
    for attempt in range(2):
        mark = tap.mark()
        tap.send(_frame(conn, tap.port_mac, victim_mac, seq, random.getrandbits(32), ACK, None,
                        payload=b"\0"))
        try:
            await tap.wait(mark, lambda s: s.src == conn.local, PROBE_WAIT, "")
        except ObservationTimeout:
            seq ^= 0x80000000  # it fell in the window: the other half cannot
            continue
        mine = [s for s in tap.segments() if s.src == conn.local]
        return mine[-1], tap.mac_of(mine[-1])
    raise FaultError(f"{conn!r} did not answer two probes within {PROBE_WAIT}s each; is its "
                     f"host reachable and the connection alive?", netns=conn.host.netns)


def _timestamp_option(ts: tuple[int, int] | None) -> tuple:
    """The options a Linux peer puts on a segment of a connection that
    negotiated timestamps (nop, nop, TS: tcp_options_write())."""
    return (("nop",), ("nop",), ("TS", ts[0], ts[1])) if ts else ()


def _frame(conn, src_mac: str, dst_mac: str, seq: int, ack: int, flags: int, ts,
           payload: bytes = b"") -> bytes:
    """A segment from conn's peer to conn, as the peer's stack would send it."""
    options = _wire.encode_options(_timestamp_option(ts))
    packet = _wire.tcp_packet(conn.family, conn.remote, conn.local, seq, ack, flags, 0xFFFF,
                              options, payload)
    return _wire.ether(dst_mac, src_mac, packet)


class _Tap:
    """An AF_PACKET socket on one switch port: sends frames out of it (to the
    host behind it) and keeps the segments of one connection seen there."""

    def __init__(self, switch_fd: int, port: str, conn):
        self._pair = {conn.local, conn.remote}
        sock = _tap.open_tap(switch_fd, port)
        try:
            self.port_mac = _wire.mac_text(sock.getsockname()[4])
        except BaseException:
            sock.close()
            raise
        self._sock, self.port = sock, port
        self._segments: list[Seg] = []
        self._macs: dict[int, str] = {}

    def send(self, frame: bytes) -> float:
        t = time.monotonic()
        try:
            self._sock.send(frame)
        except OSError as exc:
            raise FaultError(f"cannot send a segment out of switch port {self.port}: {exc}",
                             call="send on AF_PACKET", errno=exc.errno) from exc
        return t

    def drain(self) -> None:
        for frame, t, _addr in _tap.read_frames(self._sock):
            seg = _wire.decode_frame(frame, t)
            if seg is not None and seg.src in self._pair and seg.dst in self._pair:
                self._macs[id(seg)] = _wire.mac_text(frame[0:6])
                self._segments.append(seg)

    def mark(self) -> int:
        """Where the segments seen from now on will start."""
        self.drain()
        return len(self._segments)

    def segments(self, start: int = 0) -> list[Seg]:
        self.drain()
        return self._segments[start:]

    def mac_of(self, seg: Seg) -> str:
        """The destination MAC of a captured segment."""
        return self._macs[id(seg)]

    async def wait(self, start: int, pred, timeout: float, message: str) -> Seg:
        deadline = trio.current_time() + timeout
        while True:
            for s in self.segments(start):
                if pred(s):
                    return s
            if self._sock.fileno() < 0:
                raise InvalidArgument("the injection's tap was closed")
            with trio.move_on_at(deadline):
                await trio.lowlevel.wait_readable(self._sock)
                continue
            raise ObservationTimeout(f"{message} within {timeout}s" if message else "timeout",
                                     last=self._segments[-3:])

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            try:
                trio.lowlevel.notify_closing(self._sock)
            except RuntimeError:  # not in trio (closed by a synchronous undo)
                pass
            self._sock.close()
