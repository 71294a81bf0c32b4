"""Expected segments: assert what a host sends, packetdrill-style.

    synack = await cap.expect(conn, "server > client S. 0:0(0) ack 1 <mss 1460,*>")
    fin = await cap.expect(conn, "server > client F. 1:1(0) ack 2", within=(0.3, 0.4),
                           after=close_outcome)

The line (syntax in harness._tcpline) describes the *next* segment its
sender puts on the wire for this connection after ``after`` (a time on
time.monotonic(), an Outcome — its end —, or an earlier segment; default:
now).  Sequence and acknowledgment numbers are relative to each side's ISN,
learnt from the SYNs seen (so the capture must have been running before the
handshake); a side whose SYN was never seen (the kernel's RST for a 4-tuple
with no socket) has its numbers compared as they are.  ``within=(lo, hi)`` bounds, in seconds after ``after``, when it
may be seen (packetdrill's ``+.3~+.4``); a number is an upper bound only
(default 1 s).  Times are the kernel's stamps at the switch, not when the
test looked.

On a mismatch ``SegmentMismatch`` (an AssertionError) shows the expected
line above every segment seen since ``after``, both directions, in order,
each rendered in the same notation with its time offset, and which field
differed.
"""

from __future__ import annotations

import time

import trio

from .. import _tcpline, _wire
from .._wire import Seg  # the one segment type (harness._wire)
from ..errors import InvalidArgument

DEFAULT_WITHIN = 1.0
POLL = 0.001  # seconds between looks at the capture while waiting (stamps are the kernel's)


class SegmentMismatch(AssertionError):
    """The expected segment did not come, or another came first."""


class Isns:
    """Each end's initial sequence number, by address, for relative numbers."""

    def __init__(self) -> None:
        self.of: dict[tuple[str, int], int] = {}

    def learn(self, seg: Seg) -> None:
        if seg.bits & _wire.SYN and seg.src not in self.of:
            self.of[seg.src] = seg.seq

    def rel(self, end: tuple[str, int], n: int) -> int:
        """``n`` relative to ``end``'s ISN; absolute when no SYN of that
        end is known (a RST from a 4-tuple with no socket, say)."""
        isn = self.of.get(end)
        return n if isn is None else (n - isn) & 0xFFFFFFFF

    def abs(self, end: tuple[str, int], n: int) -> int:
        """The inverse of rel (absolute when no ISN of ``end`` is known)."""
        return (self.of.get(end, 0) + n) & 0xFFFFFFFF


def render(seg: Seg, names: dict, isns: Isns, t0: float | None = None) -> str:
    """A seen segment in the line notation (numbers relative to the ISNs
    known, see Isns.rel)."""
    def rel(end, n):
        return str(isns.rel(end, n))

    def side(a):
        return f"{names.get(a[0], a[0])}:{a[1]}"
    start = isns.rel(seg.src, seg.seq)
    seq = f"{start}:{(start + seg.length) & 0xFFFFFFFF}({seg.length})"
    text = f"{side(seg.src)} > {side(seg.dst)} {seg.flag_text} {seq}"
    if seg.bits & _wire.ACK:
        text += f" ack {rel(seg.dst, seg.ack)}"
    text += f" win {seg.window}"
    if seg.options:
        shown = tuple(("sack", tuple((rel(seg.dst, a), rel(seg.dst, b)) for a, b in o[1]))
                      if o[0] == "sack" else o for o in seg.options)
        text += " " + _tcpline.options_text(shown)
    if t0 is not None:
        text = f"{seg.t - t0:+.4f} {text}"
    return text


def mismatches(line: _tcpline.Line, seg: Seg, isns: Isns) -> list[str]:
    """What differs between a line and a segment ([] when it matches)."""
    out = []
    if seg.bits != line.flags:
        out.append(f"flags {seg.flag_text} != {_wire.tcpdump(line.flags)}")
    if line.seq is not None:
        r = isns.rel(seg.src, seg.seq)
        if r != line.seq:
            out.append(f"seq {r} != {line.seq}")
        if seg.length != line.length:
            out.append(f"length {seg.length} != {line.length}")
    if line.ack is not None:
        r = isns.rel(seg.dst, seg.ack) if seg.bits & _wire.ACK else None
        if r != line.ack:
            out.append(f"ack {r} != {line.ack}")
    if line.window is not None and seg.window != line.window:
        out.append(f"win {seg.window} != {line.window}")
    if line.options is not None and not _options_match(line.options, seg.options, seg, isns):
        out.append(f"options {_tcpline.options_text(seg.options)} != "
                   f"{_tcpline.options_text(line.options)}")
    return out


def _options_match(want: tuple, seen: tuple, seg: Seg, isns: Isns) -> bool:
    if len(want) != len(seen):
        return False
    for w, s in zip(want, seen):
        if w[0] != s[0]:
            return False
        if w[0] == "sack":
            if len(w[1]) != len(s[1]):
                return False
            for (wa, wb), (sa, sb) in zip(w[1], s[1]):
                if wa is not None and isns.rel(seg.dst, sa) != wa:
                    return False
                if wb is not None and isns.rel(seg.dst, sb) != wb:
                    return False
            continue
        if any(a is not None and a != b for a, b in zip(w[1:], s[1:])):
            return False
    return True


def check_within(within) -> tuple[float, float]:
    if within is None:
        return (0.0, DEFAULT_WITHIN)
    if isinstance(within, (int, float)) and not isinstance(within, bool):
        if within < 0:
            raise InvalidArgument(f"within must be seconds >= 0 or (lo, hi), got {within!r}")
        return (0.0, float(within))
    if (isinstance(within, tuple) and len(within) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in within)
            and 0 <= within[0] <= within[1]):
        return (float(within[0]), float(within[1]))
    raise InvalidArgument(f"within must be seconds >= 0 (an upper bound) or a pair (lo, hi) "
                          f"with 0 <= lo <= hi, like packetdrill's +.3~+.4 -> (0.3, 0.4); got "
                          f"{within!r}")


def time_of(after, default: float) -> float:
    """``after`` as a time: a float, an Outcome (its end), a Seg/Packet (its t)."""
    if after is None:
        return default
    if isinstance(after, (int, float)) and not isinstance(after, bool):
        return float(after)
    for attr in ("ended", "t"):
        v = getattr(after, attr, None)
        if isinstance(v, float):
            return v
    raise InvalidArgument(f"after must be a time (time.monotonic()), an Outcome or a segment, "
                          f"got {after!r}")


def span_of(after, default: float) -> tuple[float, float]:
    """``after`` as a span of time: an Outcome's call, from its start to its
    end (a segment the call makes the kernel send leaves during it, at a
    moment the caller cannot see); a time or a segment, an instant."""
    if after is None:
        return default, default
    started, ended = getattr(after, "started", None), getattr(after, "ended", None)
    if isinstance(started, float) and isinstance(ended, float):
        return started, ended
    t = time_of(after, default)
    return t, t


async def wait_segment(segments, line: _tcpline.Line, sender: tuple[str, int],
                       receiver: tuple[str, int], isns_of, names: dict, within, after,
                       now: float, matched: set | None = None) -> Seg:
    """Wait for the next segment from ``sender`` to ``receiver`` seen after
    ``after``; check it against ``line`` and the time window: ``lo`` after
    the start of ``after`` at the earliest, ``hi`` after its end at the
    latest (see span_of).
    ``segments()`` returns every Seg seen so far, in order; ``isns_of()``
    the Isns learnt from them.  ``matched``: ids of segments an earlier
    expectation took (each is matched once, as in packetdrill); the one
    returned is added to it."""
    __tracebackhide__ = True
    lo, hi = check_within(within)
    t0, t1 = span_of(after, now)
    call = f" (+{hi} after the call, which took {t1 - t0:.4f}s)" if t1 > t0 else ""
    hi_from_t0 = hi + (t1 - t0)
    slack = 0.05  # wait a little past hi so a late segment is shown, not just "none"
    while True:
        # the clock before the look: a look that starts past the deadline
        # (the process may pause between the two) is the last one
        expired = time.monotonic() > t1 + hi + slack
        seen = [s for s in segments() if s.t >= t0]
        mine = [s for s in seen if s.src == sender and s.dst == receiver
                and (matched is None or id(s) not in matched)]
        if mine:
            seg = mine[0]
            isns = isns_of()
            problems = mismatches(line, seg, isns)
            dt = seg.t - t0
            if not lo <= dt <= hi_from_t0:
                problems.append(f"time +{dt:.4f}s outside +{lo}~+{hi_from_t0:.4f}{call}")
            if problems:
                raise SegmentMismatch(_report(line, seen, names, isns, t0, lo, hi_from_t0,
                                              "; ".join(problems)))
            if matched is not None:
                matched.add(id(seg))
            return seg
        if expired:
            window = f"+{hi_from_t0:.4f}s{call}" if call else f"+{hi}s"
            raise SegmentMismatch(_report(line, seen, names, isns_of(), t0, lo, hi_from_t0,
                                          f"nothing from {names.get(sender[0], sender[0])}"
                                          f":{sender[1]} within {window}"))
        await trio.sleep(POLL)


def _report(line, seen, names, isns, t0, lo, hi, why) -> str:
    rows = "\n".join("  seen     " + render(s, names, isns, t0) for s in seen) or \
        "  seen     (no segment of this connection)"
    return (f"expected segment did not match: {why}\n"
            f"  expected +{lo:.4f}~+{hi:.4f} {line.text}\n{rows}")


async def expect_captured(cap, conn, text: str, *, within=None, after=None) -> Seg:
    """``Capture.expect``: the line's hosts are lab host names (or
    addresses); ports, when left out, are ``conn``'s."""
    __tracebackhide__ = True
    now = time.monotonic()
    line = _tcpline.parse(text)
    if conn.local is None or conn.remote is None:
        raise InvalidArgument(f"expect(): {conn!r} has no 4-tuple (not connected)")
    lab = conn.host.lab
    ends = {conn.local, conn.remote}
    names = {}
    for h in lab.hosts.values():
        try:
            names[h.address(conn.family)] = h.name
        except Exception:  # a host without this family
            pass
    sender = _end(line.src, line.sport, ends, names, text)
    receiver = _end(line.dst, line.dport, ends - {sender}, names, text)

    def segments():
        return cap.packets(conn)

    def isns_of():
        isns = Isns()
        for s in segments():
            isns.learn(s)
        return isns
    if line.seq is not None or line.ack is not None:
        known = isns_of().of
        if sender not in known or receiver not in known:
            raise InvalidArgument(f"expect({text!r}): relative sequence numbers need both SYNs "
                                  f"of {conn!r} in the capture; start the capture before the "
                                  f"connection (or leave seq/ack out of the line)")
    return await wait_segment(segments, line, sender, receiver, isns_of, names, within, after,
                              now)


def _end(name: str, port: int | None, ends: set, names: dict, text: str):
    for e in ends:
        if (names.get(e[0]) == name or e[0] == name) and (port is None or port == e[1]):
            return e
    raise InvalidArgument(f"{name}{'' if port is None else f':{port}'} in {text!r} is not an end "
                          f"of the connection; its ends are "
                          f"{sorted(f'{names.get(a, a)}:{p}' for a, p in ends)}")
