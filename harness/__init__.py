"""A network fault-injection test harness: real little networks of Linux
network namespaces, broken on purpose, observed exactly.

The public surface is this list; everything else is private.
"""

from ._sockops import Outcome
from .errors import (CallFailed, CleanupError, FaultError, HarnessError, InvalidArgument,
                     LabClosed, ObservationTimeout, SetupError, Unsupported)
from .host import Host, Peer
from .lab import Lab, open_lab
from .observe.snapshot import SocketInfo, Snapshot
from .observe.timeline import (Event, Timeline, entered, error_reported, retransmitted,
                               rst_received, rst_sent, syscall_failed)
from .process import Process, listening
from .sockets import Socket

__all__ = [
    "CallFailed", "CleanupError", "Event", "FaultError", "HarnessError", "Host",
    "InvalidArgument", "Lab", "LabClosed", "ObservationTimeout", "Outcome", "Peer", "Process",
    "SetupError", "Snapshot", "Socket", "SocketInfo", "Timeline", "Unsupported", "entered",
    "error_reported", "listening", "open_lab", "retransmitted", "rst_received", "rst_sent",
    "syscall_failed",
]
