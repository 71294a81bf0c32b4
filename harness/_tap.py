"""AF_PACKET taps on the lab's switch ports: the one place that opens them and
reads frames with the kernel's receive time.  Capture, injection and scripted
peers all read through here.

The kernel stamps each frame with CLOCK_REALTIME (SO_TIMESTAMPNS); the
harness's clock is time.monotonic().  The offset between the two is measured
again at every read, not once: the realtime clock may be stepped (NTP) while a
tap is open.  It is measured tight (``realtime_offset``): a realtime reading
between two monotonic ones close together.  A plain ``monotonic() - time()``
is off by however long the thread lost the CPU between the two calls (a
preemption or the hypervisor's steal: over 0.1 ms in 1 of ~87,000 readings on
the 2-core VM, up to 3.9 ms), and every frame of the read moves that much
earlier: a segment
the kernel sent within a send() call then appears to have left before the
call began, and an expectation timed from the call misses it.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Iterator

from . import _netns
from .errors import SetupError

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35  # <asm-generic/socket.h>; the socket module lacks it


def open_tap(switch_fd: int, port: str | None = None, *, rcvbuf: int | None = None
             ) -> socket.socket:
    """A non-blocking packet socket in the switch's namespace, stamping frames
    with their receive time, bound to ``port`` (every port when None).  The
    OS's refusal (no CAP_NET_RAW, no such port) is SetupError naming it."""
    what = f"AF_PACKET socket on switch port {port}" if port else "AF_PACKET socket"
    try:
        sock = _netns.socket_in(switch_fd, socket.AF_PACKET, socket.SOCK_RAW
                                | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                socket.htons(ETH_P_ALL))
    except OSError as exc:
        raise SetupError(f"cannot open an {what}: {exc}", call="socket(AF_PACKET)",
                         errno=exc.errno) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if port is not None:
            sock.bind((port, 0))
    except OSError as exc:
        sock.close()
        raise SetupError(f"cannot set up the {what}: {exc}", call="setsockopt/bind",
                         errno=exc.errno) from exc
    except BaseException:
        sock.close()
        raise
    return sock


#: s: the widest pair of monotonic readings an offset is taken from at once
OFFSET_TIGHT = 50e-6


def realtime_offset(tries: int = 5) -> tuple[float, float]:
    """(CLOCK_MONOTONIC - CLOCK_REALTIME, its uncertainty): from a realtime
    reading between two monotonic ones, the closest pair of up to ``tries``
    (the first under OFFSET_TIGHT ends the search)."""
    best = None
    for _ in range(tries):
        m1 = time.monotonic()
        r = time.time()
        m2 = time.monotonic()
        if best is None or m2 - m1 < best[1]:
            best = ((m1 + m2) / 2 - r, m2 - m1)
        if best[1] < OFFSET_TIGHT:
            break
    return best


def read_frames(sock: socket.socket) -> Iterator[tuple[bytes, float, tuple]]:
    """Every frame waiting on the non-blocking ``sock``: (frame, receive time
    on the monotonic clock, sockaddr_ll tuple).  Nothing on a closed socket."""
    if sock.fileno() < 0:
        return
    offset = realtime_offset()[0]
    while True:
        try:
            frame, anc, _flags, addr = sock.recvmsg(65536, 64)
        except BlockingIOError:
            return
        t = time.monotonic()
        for level, typ, data in anc:
            if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", data[:16])
                t = sec + nsec / 1e9 + offset
        yield frame, t, addr
