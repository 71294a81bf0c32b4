"""One line per TCP segment, in packetdrill's (and tcpdump's) notation.

    server > client F. 1:1(0) ack 2 win 509 <nop,nop,TS val * ecr *>

reads: from host ``server`` to host ``client`` (either may carry ``:port``),
flags FIN+ACK (``.`` is ACK; S F R P U E W as tcpdump prints them), sequence
1 to 1 carrying 0 bytes, acknowledging 2, raw (unscaled) window 509, and
these options in this order.  Sequence numbers are relative to the sender's
ISN and ``ack`` and SACK blocks to the receiver's, as packetdrill and
``tcpdump -S``-less output print them, so ``1`` is the first byte after the
SYN.  The same line both describes a segment to inject (faults.segments)
and one expected on the wire (observe.expect):

- expected: ``*`` in a field, or a field left out (``ack``, ``win``, the
  whole ``<...>``), matches anything; flags are always compared exactly;
- injected: ``*`` or a left-out field means "what the real peer would put
  now" (see faults.segments).

Options: ``nop``, ``eol``, ``mss N``, ``sackOK``, ``wscale N``, ``TS val N
ecr N``, ``sack A:B C:D ...`` (other kinds are decoded as ``opt<kind>``).
Parsing and text only (the flags' letters and the option bytes are
harness._wire's): the numbers are made relative (or absolute) by
observe.expect's Isns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._wire import TCPDUMP
from .errors import InvalidArgument

ANY = None  # a wildcard field

_LINE = re.compile(
    r"^\s*(?P<src>[\w.-]+)(?::(?P<sport>\d+))?\s*>\s*(?P<dst>[\w.-]+)(?::(?P<dport>\d+))?\s+"
    r"(?P<flags>[FSRPUEW.]+)"
    r"(?:\s+(?P<seq>\*|(?P<start>\d+):(?P<end>\d+)\((?P<len>\d+)\)))?"
    r"(?:\s+ack\s+(?P<ack>\*|\d+))?"
    r"(?:\s+win\s+(?P<win>\*|\d+))?"
    r"(?:\s+<(?P<opts>[^>]*)>)?\s*$")


@dataclass(frozen=True)
class Line:
    """A parsed line.  ``None`` in a field is a wildcard (or "left out")."""

    src: str
    sport: int | None
    dst: str
    dport: int | None
    flags: int
    seq: int | None           # relative start
    length: int | None        # payload bytes
    ack: int | None
    window: int | None
    options: tuple | None     # ((kind, values...), ...); values may be None
    text: str = ""

    def __str__(self) -> str:
        return self.text


def _num(text: str | None, what: str, line: str, limit: int = 2**32) -> int | None:
    if text is None or text == "*":
        return None
    v = int(text)
    if not 0 <= v < limit:
        raise InvalidArgument(f"{what} must be in 0..{limit - 1}, got {v} in {line!r}")
    return v


def parse(text: object) -> Line:
    """Parse one segment line; InvalidArgument names what is wrong."""
    if not isinstance(text, str):
        raise InvalidArgument(f"a segment line must be a str like 'server > client F. 1:1(0) "
                              f"ack 2 win 509 <nop,nop,TS val * ecr *>', got {text!r}")
    m = _LINE.match(text)
    if m is None:
        raise InvalidArgument(
            f"cannot parse segment line {text!r}; expected 'SRC[:PORT] > DST[:PORT] FLAGS "
            f"[START:END(LEN)] [ack N] [win N] [<options>]' with FLAGS from 'FSRPUEW.' "
            f"('.' is ACK) and '*' for any value")
    flags = 0
    for c in m["flags"]:
        flags |= TCPDUMP[c]
    seq = length = None
    if m["seq"] and m["seq"] != "*":
        start, end, length = (_num(m[k], "sequence", text) for k in ("start", "end", "len"))
        if (end - start) % 2**32 != length:
            raise InvalidArgument(f"sequence {start}:{end}({length}) in {text!r}: END - START "
                                  f"must equal LEN")
        seq = start
    return Line(m["src"], _num(m["sport"], "port", text, 65536), m["dst"],
                _num(m["dport"], "port", text, 65536), flags, seq, length,
                _num(m["ack"], "ack", text), _num(m["win"], "win", text, 65536),
                parse_options(m["opts"], text) if m["opts"] is not None else None, text.strip())


def parse_options(text: str, line: str = "") -> tuple:
    """``"mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7"`` -> option tuples."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        words = part.split()
        name = words[0]

        def val(w: str, limit: int) -> int | None:
            return _num(w, f"option {name}", line or text, limit)
        try:
            if name in ("nop", "eol", "sackOK") and len(words) == 1:
                out.append((name,))
            elif name == "mss" and len(words) == 2:
                out.append(("mss", val(words[1], 65536)))
            elif name == "wscale" and len(words) == 2:
                out.append(("wscale", val(words[1], 256)))
            elif name == "TS" and len(words) == 5 and words[1] == "val" and words[3] == "ecr":
                out.append(("TS", val(words[2], 2**32), val(words[4], 2**32)))
            elif name == "sack" and len(words) >= 2:
                blocks = []
                for w in words[1:]:
                    a, _, b = w.partition(":")
                    blocks.append((val(a, 2**32), val(b, 2**32)))
                out.append(("sack", tuple(blocks)))
            else:
                raise ValueError
        except ValueError:
            raise InvalidArgument(
                f"unknown TCP option {part!r} in {line or text!r}; known: nop, eol, mss N, "
                f"sackOK, wscale N, TS val N ecr N, sack A:B [C:D...]") from None
    return tuple(out)


def options_text(options: tuple) -> str:
    def v(x):
        return "*" if x is None else str(x)
    parts = []
    for o in options:
        if o[0] in ("nop", "eol", "sackOK"):
            parts.append(o[0])
        elif o[0] == "TS":
            parts.append(f"TS val {v(o[1])} ecr {v(o[2])}")
        elif o[0] == "sack":
            parts.append("sack " + " ".join(f"{v(a)}:{v(b)}" for a, b in o[1]))
        else:
            parts.append(f"{o[0]} {v(o[1])}")
    return "<" + ",".join(parts) + ">"
