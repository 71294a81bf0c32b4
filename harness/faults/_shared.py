"""What several fault modules share, under public names (no fault module
imports another's private names): the packet chooser of the NFQUEUE faults
and the alarm their timer heaps sleep on, the check that a connection can be
injected into, and the facts about a link (its MAC, its MTU) that segments
are built from."""

from __future__ import annotations

import fcntl
import socket
import struct
import time
from typing import Any

import trio

from .. import _netns, _wire
from ..errors import InvalidArgument

SIOCGIFMTU, SIOCGIFHWADDR = 0x8921, 0x8927
# full sockets that have a receive window (TIME_WAIT has none: tcp_timewait_state_process)
SYNCHRONIZED = frozenset({"ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "CLOSING",
                          "LAST_ACK"})


# --- the NFQUEUE faults' selection ------------------------------------------------

def check_skip(skip: Any, where: str) -> int:
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise InvalidArgument(f"skip must be an int >= 0, got skip={skip!r} "
                              f"({type(skip).__name__}) from {where}")
    return skip


def chooser(when, action, count: int | None, skip: int, where: str):
    """A ``decide(pkt)`` for a packet fault: of the packets ``when`` selects
    (all when None), the first ``skip`` pass, the next ``count`` (None: all)
    get ``action``, the rest pass (None)."""
    if when is not None and not callable(when):
        raise InvalidArgument(f"when must be callable (a predicate over packets) or None, got "
                              f"when={when!r} from {where}")
    n = 0
    last = None if count is None else skip + count

    def choose(pkt):
        nonlocal n
        if when is not None and not when(pkt):
            return None
        n += 1
        if n <= skip or (last is not None and n > last):
            return None
        return action
    return choose


class Alarm:
    """What a timer heap's loop sleeps on: until the heap's earliest due
    time (``heap[0][0]``, on time.monotonic()) or until ``ring()`` says an
    earlier entry came.  One task sleeps on it at a time."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: trio.Event | None = None

    def ring(self) -> None:
        if self._event is not None:
            self._event.set()

    async def sleep(self, heap: list) -> None:
        self._event = trio.Event()
        if heap:
            left = heap[0][0] - time.monotonic()
            with trio.move_on_at(trio.current_time() + max(left, 0.0)):
                await self._event.wait()
        else:
            await self._event.wait()


# --- injecting into a connection ----------------------------------------------------

def check_injectable(conn, what: str) -> None:
    """``conn`` is a test's Socket with a synchronized connection whose
    host is on: a segment spoofed from its peer lands in its window."""
    from .._sockets import check_socket
    from ._host import is_off
    check_socket(conn, f"{what}()", connected=True)
    if is_off(conn.host):
        raise InvalidArgument(f"{what}(): host {conn.host.name} is powered off")
    info = conn.info()
    if info is None:
        raise InvalidArgument(f"{what}(): the kernel has no socket {conn!r} any more "
                              f"(reset or closed)")
    if info.state not in SYNCHRONIZED or info.timer == "time_wait":
        raise InvalidArgument(f"{what}(): {conn!r} is {info.state}; injection needs a "
                              f"synchronized connection, one of {sorted(SYNCHRONIZED)}")


# --- a link's facts ---------------------------------------------------------------

def _ioctl(ns_fd: int, request: int, arg: bytes) -> bytes:
    with _netns.socket_in(ns_fd, socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        return fcntl.ioctl(s, request, arg)


def link_mac(ns_fd: int, ifname: str = "eth0") -> str:
    """A link's MAC address (SIOCGIFHWADDR) in a namespace, "aa:bb:..."."""
    raw = _ioctl(ns_fd, SIOCGIFHWADDR, struct.pack("256s", ifname.encode()))
    return _wire.mac_text(raw[18:24])


def link_mtu(ns_fd: int, ifname: str) -> int:
    """A link's MTU (SIOCGIFMTU) in a namespace."""
    raw = _ioctl(ns_fd, SIOCGIFMTU, struct.pack("16si", ifname.encode(), 0))
    return struct.unpack_from("i", raw, 16)[0]
