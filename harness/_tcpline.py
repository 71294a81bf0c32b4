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
Parsing and option bytes only: the numbers are made relative (or absolute)
by observe.expect's Isns.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .errors import InvalidArgument

FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, ".": 0x10, "U": 0x20, "E": 0x40,
             "W": 0x80}
# tcpdump's order (print-tcp.c tcp_flag_values): F S R P U E W, then "." for ACK
_ORDER = "FSRPUEW."
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


def flags_text(bits: int) -> str:
    return "".join(c for c in _ORDER if bits & FLAG_BITS[c])


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
        flags |= FLAG_BITS[c]
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


def decode_options(raw: bytes) -> tuple:
    """The TCP options of a header (bytes after the fixed 20), absolute
    numbers.  Unknown kinds come out as ("opt<kind>",)."""
    out, i = [], 0
    while i < len(raw):
        kind = raw[i]
        if kind == 0:
            out.append(("eol",))
            break
        if kind == 1:
            out.append(("nop",))
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2 or i + raw[i + 1] > len(raw):
            out.append((f"opt{kind}",))
            break
        size, body = raw[i + 1], raw[i + 2: i + raw[i + 1]]
        if kind == 2 and size == 4:
            out.append(("mss", struct.unpack("!H", body)[0]))
        elif kind == 3 and size == 3:
            out.append(("wscale", body[0]))
        elif kind == 4 and size == 2:
            out.append(("sackOK",))
        elif kind == 8 and size == 10:
            out.append(("TS",) + struct.unpack("!II", body))
        elif kind == 5 and size >= 10 and (size - 2) % 8 == 0:
            out.append(("sack", tuple(struct.unpack_from("!II", body, j)
                                      for j in range(0, size - 2, 8))))
        else:
            out.append((f"opt{kind}",))
        i += size
    return tuple(out)


def encode_options(options: tuple) -> bytes:
    """Option tuples (absolute numbers, no wildcards) to header bytes,
    padded with EOL to a multiple of 4 (RFC 9293 §3.1)."""
    out = bytearray()
    for o in options:
        name = o[0]
        if name == "nop":
            out += b"\x01"
        elif name == "eol":
            out += b"\x00"
        elif name == "mss":
            out += struct.pack("!BBH", 2, 4, o[1])
        elif name == "wscale":
            out += struct.pack("!BBB", 3, 3, o[1])
        elif name == "sackOK":
            out += b"\x04\x02"
        elif name == "TS":
            out += struct.pack("!BBII", 8, 10, o[1] & 0xFFFFFFFF, o[2] & 0xFFFFFFFF)
        elif name == "sack":
            out += struct.pack("!BB", 5, 2 + 8 * len(o[1]))
            for a, b in o[1]:
                out += struct.pack("!II", a & 0xFFFFFFFF, b & 0xFFFFFFFF)
        else:
            raise InvalidArgument(f"cannot encode TCP option {o!r}")
    if len(out) > 40:
        raise InvalidArgument(f"TCP options take {len(out)} bytes; a header has room for 40: "
                              f"{options_text(options)}")
    out += b"\x00" * (-len(out) % 4)
    return bytes(out)
