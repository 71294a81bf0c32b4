"""The only importer of scapy: raw packet bytes to a scapy packet and back.

Kept tiny on purpose: scapy costs ~0.5 s to import and ~35x the raw parser
per packet (see DESIGN.md), so the harness parses with
``harness._nfqueue.parse_tcp`` and comes here only when a user asks for a
scapy packet.  Scapy's own errors become InvalidArgument.
"""

from __future__ import annotations

from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet

from .errors import InvalidArgument

__all__ = ["Packet", "from_bytes", "to_bytes"]


def from_bytes(data: bytes) -> Packet:
    """An IPv4 or IPv6 packet (IP header onward) as a scapy packet."""
    if not data or data[0] >> 4 not in (4, 6):
        raise InvalidArgument(f"expected an IPv4 or IPv6 packet, got {bytes(data[:8])!r}...")
    return (IP if data[0] >> 4 == 4 else IPv6)(bytes(data))


def to_bytes(pkt: object) -> bytes:
    """The wire bytes of a scapy packet (checksums left as scapy builds them)."""
    if not isinstance(pkt, Packet):
        raise InvalidArgument(f"expected a scapy packet, got {type(pkt).__name__}")
    try:
        return bytes(pkt)
    except Exception as exc:  # scapy raises many kinds while building
        raise InvalidArgument(f"scapy could not build {pkt!r}: {exc}") from exc


def tcp_frame(*, family: int, src_mac: str, dst_mac: str, src: str, dst: str, sport: int,
              dport: int, seq: int, ack: int, flags: str, window: int,
              timestamps: tuple[int, int] | None = None, payload: bytes = b"") -> bytes:
    """An Ethernet frame carrying one TCP segment, checksums filled in, as a
    Linux stack would send it (DF set, TTL/hop limit 64, the timestamp option
    when the connection negotiated it).  Used by faults.inject."""
    from scapy.layers.inet import TCP
    from scapy.layers.l2 import Ether

    options = [("NOP", None), ("NOP", None), ("Timestamp", timestamps)] if timestamps else []
    l3 = (IP(src=src, dst=dst, ttl=64, flags="DF") if family == 4
          else IPv6(src=src, dst=dst, hlim=64))
    seg = TCP(sport=sport, dport=dport, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF,
              flags=flags, window=window, options=options)
    return to_bytes(Ether(src=src_mac, dst=dst_mac) / l3 / seg / payload)
