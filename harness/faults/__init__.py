"""Faults: each an async context manager undone exactly on exit (see _base),
or an awaitable action where it cannot be undone (a kill)."""
from ._firewall import blackhole, drop, partition, reject
from ._packets import Action, PacketFault, TcpPacket, drop_first, drop_nth, packets
from ._lastack import DropLastAck, drop_last_ack, drop_nth_fin, drop_synack
from ._icmp import port_unreachable, unreachable_host
from ._process import kill, pause
from ._sockets import destroy
from ._host import power_off, power_on, reboot
from ._inject import inject_fin, inject_rst, inject_syn
from ._netem import Netem, netem
from ._segments import ScriptedPeer, Wire, reset_at, scripted_peer, wire
from ._stream import (Proxy, Toxic, latency, limit_data, proxy, reset_peer, slicer, slow_close,
                     timeout)

__all__ = [
    "Action", "DropLastAck", "Netem", "PacketFault", "TcpPacket", "blackhole", "destroy", "drop",
    "drop_first", "drop_last_ack", "drop_nth", "drop_nth_fin", "drop_synack", "inject_fin",
    "inject_rst", "inject_syn", "kill", "netem", "packets", "partition", "pause",
    "port_unreachable", "power_off", "power_on", "reboot", "reject", "unreachable_host",
    "ScriptedPeer", "Wire", "reset_at", "scripted_peer", "wire",
    "Proxy", "Toxic", "latency", "limit_data", "proxy", "reset_peer", "slicer", "slow_close",
    "timeout",
]

from .._bridge import install as _install  # noqa: E402 - after the names it wraps

_install()  # the same faults from asyncio and sync tests (harness._bridge)
