"""Faults: each an async context manager undone exactly on exit (see _base),
or an awaitable action where it cannot be undone (a kill)."""
from ._base import Fault
from ._firewall import Firewall, blackhole, drop, partition, reject
from ._packets import Action, PacketFault, TcpPacket, drop_first, drop_nth, intercept, packets
from ._lastack import DropLastAck, drop_last_ack, drop_nth_fin, drop_synack
from ._icmp import HostUnreachable, host_unreachable, port_unreachable
from ._process import Pause, kill, pause
from ._sockets import destroy
from ._host import power_off, power_on, reboot
from ._inject import Injection, inject_fin, inject_rst, inject_syn
from ._netem import Netem, netem
from ._segments import ScriptedPeer, Wire, reset_at, scripted_peer, wire
from ._stream import (Proxy, Toxic, latency, limit_data, proxy, reset_peer, slicer, slow_close,
                     timeout)

# every fault function, and the type each returns (for annotations and isinstance)
__all__ = [
    "Fault",
    "Firewall", "blackhole", "drop", "partition", "reject",
    "Action", "PacketFault", "TcpPacket", "drop_first", "drop_nth", "intercept",
    "DropLastAck", "drop_last_ack", "drop_nth_fin", "drop_synack",
    "HostUnreachable", "host_unreachable", "port_unreachable",
    "Pause", "kill", "pause",
    "destroy",
    "power_off", "power_on", "reboot",
    "Injection", "inject_fin", "inject_rst", "inject_syn",
    "Netem", "netem",
    "ScriptedPeer", "Wire", "reset_at", "scripted_peer", "wire",
    "Proxy", "Toxic", "latency", "limit_data", "proxy", "reset_peer", "slicer", "slow_close",
    "timeout",
    "packets",  # deprecated name of intercept
]

from .._bridge import install as _install  # noqa: E402 - after the names it wraps

_install()  # the same faults from asyncio and sync tests (harness._bridge)
