"""Faults: each an async context manager undone exactly on exit (see _base),
or an awaitable action where it cannot be undone (a kill)."""
from .firewall import blackhole, drop, partition, reject
from .packets import Action, PacketFault, TcpPacket, drop_first, drop_nth, packets
from .lastack import DropLastAck, drop_last_ack, drop_nth_fin, drop_synack
from .icmp import port_unreachable, unreachable_host
from .process import kill, pause
from .sockets import destroy
from .host import power_off, power_on, reboot
from .inject import inject_fin, inject_rst, inject_syn
from .netem import Netem, netem
from .segments import ScriptedPeer, Wire, reset_at, scripted_peer, wire
from .stream import (Proxy, Toxic, latency, limit_data, proxy, reset_peer, slicer, slow_close,
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
