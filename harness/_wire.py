"""Wire formats: the bytes of IPv4, IPv6 and TCP, parsed and built without
scapy, and the one type every observer and injector of TCP segments shares.

- **TCP flags** are defined here and nowhere else: their bits (``FIN`` ...
  ``CWR``), their names (``SYN``, ``ACK``...), the letters a segment's
  ``flags`` shows (``"SA"``: S F R P A U E C, capture's order) and
  tcpdump's notation (``"S."``, harness._tcpline's lines).  A fault that
  filters on flags (``drop(tcp_flags=)``, ``packets(tcp_flags=)``) takes them
  in **one** spelling, parsed by :func:`flag_filter`: ``"SYN"``,
  ``"FIN,ACK"``, ``"NONE"`` (exactly these among SYN, ACK, FIN, RST; PSH and
  URG ignored), or ``"FLAGS/MASK"`` (``"SYN/SYN"``: SYN set, the rest
  ignored).
- **Parsing**: :func:`parse_tcp` locates the TCP header of an IPv4/IPv6
  packet (IPv6 extension headers skipped, non-first fragments refused) from
  raw bytes (the NFQUEUE engine's ~140k packets/s, against ~4k/s when
  scapy parses each: DESIGN.md); :func:`decode_options` turns TCP options
  into tuples.
- **Building**: :func:`tcp_packet` (an IP packet carrying one segment,
  checksums filled in), :func:`ether` (its Ethernet frame),
  :func:`encode_options`, :func:`fix_checksums` after a rewrite
  (RFC 1071 sums, :func:`internet_checksum`).
- **Seg**: one TCP segment with the time it was seen; what a capture keeps,
  what ``expect()`` matches, what an injection sent and saw answered, what
  a scripted peer sends and records.

Nothing here raises on bad packet bytes (a parser answers None); bad user
input (a flag filter, an option to encode) is InvalidArgument.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from .errors import InvalidArgument

IPPROTO_TCP = 6
IPPROTO_UDP = 17
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
ETH_HLEN = 14
_V6_EXT = {0, 43, 60, 135, 139, 140}  # hop-by-hop, routing, dstopts, mobility, HIP, shim6
_V6_FRAG = 44
_V6_AH = 51
_U32 = 0xFFFFFFFF

# --- TCP flags (RFC 9293 §3.1; ECE and CWR: RFC 3168) ------------------------------

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
#: user and iptables names (``--tcp-flags`` knows these six), printed in bit order
NAMES = {"FIN": FIN, "SYN": SYN, "RST": RST, "PSH": PSH, "ACK": ACK, "URG": URG}
#: a filter without "/MASK" compares these bits (PSH and URG ride on data)
DEFAULT_MASK = SYN | ACK | FIN | RST
_LETTERS = (("S", SYN), ("F", FIN), ("R", RST), ("P", PSH), ("A", ACK), ("U", URG),
            ("E", ECE), ("C", CWR))
#: tcpdump's letters (print-tcp.c tcp_flag_values), "." for ACK
TCPDUMP = {"F": FIN, "S": SYN, "R": RST, "P": PSH, ".": ACK, "U": URG, "E": ECE, "W": CWR}
_TCPDUMP_ORDER = "FSRPUEW."
_SPELLING = ("tcp_flags must be TCP flags from SYN, ACK, FIN, RST, PSH, URG (or NONE) joined "
             "by ',' in one string, optionally '/MASK' (e.g. 'SYN', 'FIN,ACK', 'SYN/SYN'); "
             "without a mask the segment's SYN, ACK, FIN and RST are exactly these")


def letters(bits: int) -> str:
    """A segment's flags as letters in a fixed order, S F R P A U E C:
    ``letters(SYN | ACK) == "SA"``, ``"RA"``, ``"FA"``, ``"PA"``, ``""``."""
    return "".join(c for c, bit in _LETTERS if bits & bit)


def from_letters(text: object, where: str) -> int:
    """The bits of a flags string in :func:`letters`' alphabet, in any
    order (``"AS"`` is ``"SA"``); InvalidArgument otherwise."""
    alphabet = dict(_LETTERS)
    if not isinstance(text, str) or any(c not in alphabet for c in text) \
            or len(set(text)) != len(text):
        raise InvalidArgument(f"flags must be a segment's flag letters from "
                              f"{''.join(alphabet)} (S F R P A U E C), e.g. 'S', 'SA', 'FA', "
                              f"'RA', 'A', or '' for none; got flags={text!r} from {where}")
    return sum(alphabet[c] for c in text)


def tcpdump(bits: int) -> str:
    """tcpdump's (and packetdrill's) notation: ``"S."`` for SYN+ACK."""
    return "".join(c for c in _TCPDUMP_ORDER if bits & TCPDUMP[c])


def names(bits: int) -> str:
    """``"SYN,ACK"``; ``"NONE"`` for no flag (the filter spelling)."""
    return ",".join(n for n, b in NAMES.items() if bits & b) or "NONE"


@dataclass(frozen=True)
class FlagFilter:
    """Segments whose flags, masked by ``mask``, equal ``comp``."""

    mask: int
    comp: int

    def __str__(self) -> str:
        if self.mask == DEFAULT_MASK:
            return names(self.comp)
        return f"{names(self.comp)}/{names(self.mask)}"

    def matches(self, bits: int) -> bool:
        return bits & self.mask == self.comp

    def iptables(self) -> list[str]:
        """The arguments of iptables' ``-m tcp --tcp-flags MASK COMP``."""
        return ["--tcp-flags", names(self.mask), names(self.comp)]


def flag_filter(value: object, where: str) -> FlagFilter:
    """The one spelling of a TCP flag filter (see the module docstring) to a
    FlagFilter; anything else is InvalidArgument showing the spelling.
    ``where`` names the public call in the message."""
    if isinstance(value, FlagFilter):
        return value
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        mask, comp = (v.replace(" ", "").upper() for v in value)
        raise InvalidArgument(f"{_SPELLING}; got tcp_flags={value!r}, iptables' (MASK, COMP) "
                              f"pair: write tcp_flags={f'{comp}/{mask}'!r} from {where}")
    if not isinstance(value, str):
        raise InvalidArgument(f"{_SPELLING}; got tcp_flags={value!r} ({type(value).__name__}) "
                              f"from {where}")

    def bits(part: str, what: str) -> int:
        if part == "NONE":
            return 0
        if what == "mask" and part == "ALL":
            return sum(NAMES.values())
        items = part.split(",")
        if not part or any(x not in NAMES for x in items) or len(set(items)) != len(items):
            raise InvalidArgument(f"{_SPELLING}; got tcp_flags={value!r} from {where}")
        return sum(NAMES[x] for x in items)

    spec = value.upper().replace(" ", "")
    on, slash, mask_text = spec.partition("/")
    comp = bits(on, "flags")
    mask = bits(mask_text, "mask") if slash else DEFAULT_MASK
    if not mask:
        raise InvalidArgument(f"{_SPELLING}; the mask cannot be empty, got tcp_flags={value!r} "
                              f"from {where}")
    if comp & ~mask:
        raise InvalidArgument(f"tcp_flags={value!r}: {names(comp & ~mask)} outside the mask "
                              f"{names(mask)} can never match (from {where})")
    return FlagFilter(mask, comp)


# --- parsing ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TcpView:
    """Decoded IPv4/IPv6 + TCP header fields.

    Offsets are into the packet bytes: ``l4_offset`` = start of the TCP header,
    ``data_offset`` = start of TCP payload; ``payload_len`` = TCP payload bytes
    (by the IP length field, clamped to what was captured).  ``flags`` are
    the header's bits (FIN ... CWR, and NS as 0x100).
    """

    version: int
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    l4_offset: int
    data_offset: int
    payload_len: int


def _l4_locate(pkt: bytes) -> tuple[int, int, int, int] | None:
    """Return (ip_version, l4_proto, l4_offset, l4_end) or None (non-first fragment, garbage)."""
    if len(pkt) < 20:
        return None
    ver = pkt[0] >> 4
    if ver == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if ihl < 20 or len(pkt) < ihl:
            return None
        total = struct.unpack_from("!H", pkt, 2)[0]
        frag = struct.unpack_from("!H", pkt, 6)[0]
        if frag & 0x1FFF:  # non-first fragment: no L4 header
            return None
        return 4, pkt[9], ihl, min(total, len(pkt))
    if ver == 6:
        if len(pkt) < 40:
            return None
        plen = struct.unpack_from("!H", pkt, 4)[0]
        end = min(40 + plen, len(pkt)) if plen else len(pkt)  # plen 0: jumbogram / BIG TCP
        nh = pkt[6]
        off = 40
        while True:
            if nh in _V6_EXT:
                if off + 8 > end:
                    return None
                nh, hl = pkt[off], (pkt[off + 1] + 1) * 8
                off += hl
            elif nh == _V6_FRAG:
                if off + 8 > end:
                    return None
                fo = struct.unpack_from("!H", pkt, off + 2)[0]
                if fo & 0xFFF8:
                    return None
                nh = pkt[off]
                off += 8
            elif nh == _V6_AH:
                if off + 8 > end:
                    return None
                nh, hl = pkt[off], (pkt[off + 1] + 2) * 4
                off += hl
            else:
                break
        if off > end:
            return None
        return 6, nh, off, end
    return None


def parse_tcp(payload: bytes) -> TcpView | None:
    """Parse an IPv4/IPv6 packet (IP header onward); ``None`` unless it carries a TCP header."""
    loc = _l4_locate(payload)
    if loc is None:
        return None
    ver, proto, off, end = loc
    if proto != IPPROTO_TCP or off + 20 > len(payload):
        return None
    sport, dport, seq, ack, doff_flags, window = struct.unpack_from("!HHIIHH", payload, off)
    thl = (doff_flags >> 12) * 4
    if thl < 20:
        return None
    if ver == 4:
        src = socket.inet_ntop(socket.AF_INET, payload[12:16])
        dst = socket.inet_ntop(socket.AF_INET, payload[16:20])
    else:
        src = socket.inet_ntop(socket.AF_INET6, payload[8:24])
        dst = socket.inet_ntop(socket.AF_INET6, payload[24:40])
    return TcpView(
        version=ver,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=doff_flags & 0x1FF,
        window=window,
        l4_offset=off,
        data_offset=off + thl,
        payload_len=max(0, end - off - thl),
    )


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data`` (one's complement of the one's complement sum).

    ``initial`` is an unfolded partial sum to add (e.g. of a pseudo-header).
    Uses the identity ``sum of 16-bit words == value mod 0xffff`` on one big int.
    """
    if len(data) & 1:
        data = bytes(data) + b"\0"
    n = int.from_bytes(data, "big") + initial
    s = n % 0xFFFF
    if s == 0 and n:
        s = 0xFFFF
    return (~s) & 0xFFFF


def fix_checksums(payload: bytes, *, fix_lengths: bool = True) -> bytes:
    """Recompute the IPv4 header checksum and the TCP/UDP checksum of a packet.

    With ``fix_lengths`` the IPv4 total length / IPv6 payload length is first
    set to match ``len(payload)`` (so a rewrite may change the size).  Handles
    IPv6 extension headers (the pseudo-header uses the IPv6 header's
    destination; routing headers are not followed).  Fragments beyond the
    first and other protocols only get the IP-level fix.  UDP over IPv4 keeps
    a zero ("no checksum") checksum.
    """
    p = bytearray(payload)
    if len(p) < 20:
        return bytes(p)
    ver = p[0] >> 4
    if ver == 4:
        ihl = (p[0] & 0x0F) * 4
        if ihl < 20 or len(p) < ihl:
            return bytes(p)
        if fix_lengths and len(p) <= 0xFFFF:
            struct.pack_into("!H", p, 2, len(p))
        struct.pack_into("!H", p, 10, 0)
        struct.pack_into("!H", p, 10, internet_checksum(p[:ihl]))
    elif ver == 6:
        if len(p) < 40:
            return bytes(p)
        if fix_lengths:
            struct.pack_into("!H", p, 4, len(p) - 40 if len(p) - 40 <= 0xFFFF else 0)
    else:
        return bytes(p)
    loc = _l4_locate(bytes(p))
    if loc is None:
        return bytes(p)
    _, proto, off, end = loc
    if proto == IPPROTO_TCP:
        ck_off = off + 16
        if end < off + 20:
            return bytes(p)
    elif proto == IPPROTO_UDP:
        ck_off = off + 6
        if end < off + 8:
            return bytes(p)
        if ver == 4 and p[ck_off] == 0 and p[ck_off + 1] == 0:
            return bytes(p)  # IPv4 UDP without checksum stays so
        if fix_lengths:
            struct.pack_into("!H", p, off + 4, (end - off) & 0xFFFF)
    else:
        return bytes(p)
    l4len = end - off
    if ver == 4:
        pseudo = bytes(p[12:20]) + struct.pack("!BBH", 0, proto, l4len)
    else:
        pseudo = bytes(p[8:40]) + struct.pack("!IxxxB", l4len, proto)
    struct.pack_into("!H", p, ck_off, 0)
    ck = internet_checksum(bytes(pseudo) + bytes(p[off:end]))
    if proto == IPPROTO_UDP and ck == 0:
        ck = 0xFFFF
    struct.pack_into("!H", p, ck_off, ck)
    return bytes(p)


# --- TCP options (RFC 9293 §3.1, RFC 7323, RFC 2018) -----------------------------

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
                              f"{options!r}")
    out += b"\x00" * (-len(out) % 4)
    return bytes(out)


# --- building ---------------------------------------------------------------------

def tcp_packet(family: int, src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int,
               bits: int, window: int, options: bytes = b"", payload: bytes = b"") -> bytes:
    """An IP packet carrying one TCP segment, as a Linux stack sends it (DF
    set, TTL / hop limit 64), lengths and checksums filled in.  ``options``
    are header bytes (:func:`encode_options`)."""
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & _U32, ack & _U32,
                      (20 + len(options)) // 4 << 4, bits & 0xFF, window, 0, 0)
    tcp += options + payload
    if family == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, IPPROTO_TCP, 0,
                         socket.inet_pton(socket.AF_INET, src[0]),
                         socket.inet_pton(socket.AF_INET, dst[0]))
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), IPPROTO_TCP, 64,
                         socket.inet_pton(socket.AF_INET6, src[0]),
                         socket.inet_pton(socket.AF_INET6, dst[0]))
    return fix_checksums(ip + tcp)


def mac_bytes(mac: str | bytes) -> bytes:
    return mac if isinstance(mac, bytes) else bytes.fromhex(mac.replace(":", ""))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw[:6])


def ether(dst_mac: str | bytes, src_mac: str | bytes, packet: bytes) -> bytes:
    """``packet`` (IPv4 or IPv6, by its version nibble) in an Ethernet frame."""
    kind = ETH_P_IP if packet[0] >> 4 == 4 else ETH_P_IPV6
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", kind) + packet


# --- the segment ------------------------------------------------------------------

@dataclass(frozen=True)
class Seg:
    """One TCP segment seen (or sent) at time ``t`` (time.monotonic()).

    ``src``/``dst`` are (address, port); ``seq``/``ack`` absolute;
    ``bits`` the flag bits (FIN ... CWR) and ``flags`` the same as letters
    (``"SA"``, ``"RA"``, ``"FA"``, ``"A"``); ``window`` raw (unscaled);
    ``length`` the payload's bytes; ``options`` decoded (``("TS", val,
    ecr)``, ``("mss", 1460)``...).  A capture also fills ``ingress`` (the
    host whose switch port it entered by) and ``frame`` (the Ethernet
    frame)."""

    t: float
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    ack: int
    bits: int
    window: int
    length: int
    options: tuple = ()
    payload: bytes = field(repr=False, default=b"")
    ingress: str | None = None
    frame: bytes = field(repr=False, default=b"", compare=False)

    @property
    def flags(self) -> str:
        return letters(self.bits)

    @property
    def flag_text(self) -> str:
        """The flags in tcpdump's notation (``"S."``), as lines write them."""
        return tcpdump(self.bits)

    @property
    def family(self) -> int:
        return 6 if ":" in self.src[0] else 4

    def option(self, name: str):
        """The first option of that name (e.g. "TS" -> ("TS", val, ecr)), or None."""
        return next((o for o in self.options if o[0] == name), None)

    @property
    def timestamps(self) -> tuple[int, int] | None:
        """(TSval, TSecr) of the timestamp option (RFC 7323), or None."""
        o = self.option("TS")
        return None if o is None else (o[1], o[2])

    @property
    def tsval(self) -> int | None:
        o = self.option("TS")
        return None if o is None else o[1]

    @property
    def tsecr(self) -> int | None:
        o = self.option("TS")
        return None if o is None else o[2]

    def end(self) -> int:
        """Sequence number after this segment (SYN and FIN count one): its
        sender's SND.NXT when it was sent."""
        return (self.seq + self.length + bool(self.bits & SYN) + bool(self.bits & FIN)) & _U32

    def __repr__(self) -> str:
        return (f"<{self.t:.6f} {self.src[0]}:{self.src[1]} > {self.dst[0]}:{self.dst[1]} "
                f"[{self.flags}] seq={self.seq} ack={self.ack} win={self.window} "
                f"len={self.length}>")


def decode(packet: bytes, t: float, *, ingress: str | None = None,
           frame: bytes = b"") -> Seg | None:
    """An IP packet (IP header onward) to a Seg; None unless TCP."""
    v = parse_tcp(packet)
    if v is None:
        return None
    opts = decode_options(bytes(packet[v.l4_offset + 20: v.data_offset]))
    payload = bytes(packet[v.data_offset: v.data_offset + v.payload_len])
    return Seg(t, (v.src, v.sport), (v.dst, v.dport), v.seq, v.ack, v.flags & 0xFF, v.window,
               v.payload_len, opts, payload, ingress, frame)


def decode_frame(frame: bytes, t: float, *, ingress: str | None = None) -> Seg | None:
    """An Ethernet frame to a Seg (keeping the frame); None unless IPv4/IPv6 TCP."""
    if len(frame) < ETH_HLEN or struct.unpack_from("!H", frame, 12)[0] not in (ETH_P_IP,
                                                                               ETH_P_IPV6):
        return None
    return decode(frame[ETH_HLEN:], t, ingress=ingress, frame=frame)
