"""The only importer of scapy: raw packet bytes to a scapy packet and back.

Kept tiny on purpose: scapy costs ~0.5 s to import and ~35x the raw parser
per packet (see DESIGN.md), so the harness parses with
``harness._wire`` (parse_tcp, and tcp_packet to build) and comes here only
when a user asks for a scapy packet.  Scapy's own errors become InvalidArgument.
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
