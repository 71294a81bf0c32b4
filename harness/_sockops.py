"""Socket calls as outcomes: the one implementation of what a call returned.

Runs in two places with the same code: in the pytest process (sockets the
test owns) and in the harness's peer program (sockets a process owns, so that
they can die with it).  It imports only the standard library and trio so the
peer starts fast.

Every call returns an ``Outcome``: its value or the errno *name*, and when it
started and ended on ``time.monotonic()``, the clock the kernel timeline uses.
SIGPIPE never kills the caller: Python ignores it, so EPIPE is reported.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable

import trio

FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
KINDS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}

# name -> (level, optname, encoder) for setsockopt; values in seconds/bools
OPTIONS: dict[str, tuple[int, int, str]] = {
    "SO_REUSEADDR": (socket.SOL_SOCKET, socket.SO_REUSEADDR, "bool"),
    "SO_REUSEPORT": (socket.SOL_SOCKET, socket.SO_REUSEPORT, "bool"),
    "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE, "bool"),
    "SO_RCVBUF": (socket.SOL_SOCKET, socket.SO_RCVBUF, "int"),
    "SO_SNDBUF": (socket.SOL_SOCKET, socket.SO_SNDBUF, "int"),
    "TCP_NODELAY": (socket.IPPROTO_TCP, socket.TCP_NODELAY, "bool"),
    "TCP_KEEPIDLE": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, "seconds"),
    "TCP_KEEPINTVL": (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, "seconds"),
    "TCP_KEEPCNT": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, "int"),
    "TCP_USER_TIMEOUT": (socket.IPPROTO_TCP, 18, "milliseconds"),
    "TCP_QUICKACK": (socket.IPPROTO_TCP, 12, "bool"),
    "TCP_LINGER2": (socket.IPPROTO_TCP, 8, "seconds"),
    "TCP_SYNCNT": (socket.IPPROTO_TCP, 7, "int"),
    "TCP_MAXSEG": (socket.IPPROTO_TCP, 2, "int"),
    "TCP_CORK": (socket.IPPROTO_TCP, 3, "bool"),
    "TCP_DEFER_ACCEPT": (socket.IPPROTO_TCP, 9, "seconds"),
    "TCP_WINDOW_CLAMP": (socket.IPPROTO_TCP, 10, "int"),
    "TCP_CONGESTION": (socket.IPPROTO_TCP, 13, "str"),
    "TCP_NOTSENT_LOWAT": (socket.IPPROTO_TCP, 25, "int"),
    "TCP_FASTOPEN": (socket.IPPROTO_TCP, 23, "int"),
    "SO_RCVLOWAT": (socket.SOL_SOCKET, socket.SO_RCVLOWAT, "int"),
    "SO_OOBINLINE": (socket.SOL_SOCKET, socket.SO_OOBINLINE, "bool"),
}
# read-only options (getsockopt only): name -> (level, optname, decoder)
READ_ONLY: dict[str, tuple[int, int, str]] = {
    "SO_ERROR": (socket.SOL_SOCKET, socket.SO_ERROR, "errno"),
    "SO_TYPE": (socket.SOL_SOCKET, socket.SO_TYPE, "int"),
    "SO_ACCEPTCONN": (socket.SOL_SOCKET, socket.SO_ACCEPTCONN, "bool"),
    "SO_LINGER": (socket.SOL_SOCKET, socket.SO_LINGER, "linger"),
    "TCP_INFO": (socket.IPPROTO_TCP, 11, "bytes"),
}
# ioctls on a TCP socket (linux/sockios.h): bytes queued
IOCTLS = {"SIOCINQ": 0x541B, "SIOCOUTQ": 0x5411, "SIOCOUTQNSD": 0x894B}
# poll(2) event bits (poll.h) by name; POLLRDHUP is Linux's
POLL_EVENTS = {"in": 0x001, "pri": 0x002, "out": 0x004, "err": 0x008, "hup": 0x010,
               "rdhup": 0x2000}


def errno_name(code: int) -> str:
    return _errno.errorcode.get(code, f"E{code}")


@dataclass(frozen=True)
class Outcome:
    """What one socket call returned: ``value`` or ``errno`` (a name such as
    "EPIPE"), and when it started and ended."""

    call: str
    value: Any = None
    errno: str | None = None
    started: float = 0.0
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return self.errno is None

    @property
    def duration(self) -> float:
        return self.ended - self.started

    def __repr__(self) -> str:
        res = self.errno if self.errno else repr(self.value)
        return f"<{self.call} -> {res} after {self.duration * 1000:.1f} ms>"

    def to_wire(self) -> dict:
        v = self.value
        if isinstance(v, (bytes, bytearray)):
            v = {"b": bytes(v).hex()}
        return {"call": self.call, "value": v, "errno": self.errno,
                "started": self.started, "ended": self.ended}

    @classmethod
    def from_wire(cls, d: dict) -> "Outcome":
        v = d["value"]
        if isinstance(v, dict) and "b" in v:
            v = bytes.fromhex(v["b"])
        elif isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        return cls(d["call"], v, d["errno"], d["started"], d["ended"])


def encode_option(name: str, value: Any) -> tuple[int, int, int]:
    """Validate and encode a socket option; raises ValueError with the
    expected form."""
    if name not in OPTIONS:
        raise ValueError(f"socket option must be one of {sorted(OPTIONS)}, got {name!r}")
    level, opt, kind = OPTIONS[name]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} takes True/False, got {value!r}")
        return level, opt, int(value)
    if kind == "str":
        if not isinstance(value, str) or not value.isascii() or not 0 < len(value) < 16:
            raise ValueError(f"{name} takes a name of 1..15 ASCII characters (e.g. 'cubic', "
                             f"'reno'), got {value!r}")
        return level, opt, value.encode()  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} takes a number >= 0 ({kind}), got {value!r}")
    if kind == "seconds":
        if value != int(value) or value < 1:
            raise ValueError(f"{name} is whole seconds >= 1 in the kernel, got {value!r}")
        return level, opt, int(value)
    if kind == "milliseconds":  # given in seconds, the kernel wants ms
        return level, opt, int(round(value * 1000))
    if value != int(value):
        raise ValueError(f"{name} takes an integer, got {value!r}")
    return level, opt, int(value)


def _sockaddr(family: int, address: str, port: int):
    return (address, port) if family == socket.AF_INET else (address, port, 0, 0)


def _name(sockname) -> tuple[str, int]:
    return (sockname[0], sockname[1])


def decode_option(name: str, raw: bytes) -> Any:
    """A getsockopt result in the unit setsockopt takes (seconds, bools,
    names); SO_ERROR as an errno name or None; TCP_INFO as raw bytes."""
    kind = OPTIONS[name][2] if name in OPTIONS else READ_ONLY[name][2]
    if kind == "bytes":
        return raw
    if kind == "str":
        return raw.split(b"\0", 1)[0].decode()
    if kind == "linger":
        onoff, secs = struct.unpack("ii", raw[:8])
        return None if not onoff else secs
    v = struct.unpack("i", raw[:4])[0]
    if kind == "errno":
        return errno_name(v) if v else None
    if kind == "bool":
        return bool(v)
    if kind == "milliseconds":
        return v / 1000
    return v


def poll_names(mask: int) -> tuple[str, ...]:
    return tuple(n for n, bit in POLL_EVENTS.items() if mask & bit)


def poll_mask(events: Any) -> int:
    """("in", "out") or "in,out" -> a poll(2) mask; ValueError names the choices."""
    names = events.split(",") if isinstance(events, str) else list(events)
    mask = 0
    for n in names:
        n = n.strip().lower()
        if n not in POLL_EVENTS:
            raise ValueError(f"poll events must be among {sorted(POLL_EVENTS)}, got {events!r}")
        mask |= POLL_EVENTS[n]
    return mask


class SocketTable:
    """Handles to sockets and the calls on them.  ``make_socket(family,
    type)`` creates a socket in the right namespace."""

    def __init__(self, make_socket: Callable[[int, int], socket.socket] = socket.socket):
        self._make = make_socket
        self._socks: dict[int, trio.socket.SocketType] = {}
        self._epolls: dict[int, Any] = {}   # persistent epoll sets (select.epoll)
        self._next = 1

    def _get(self, h: int) -> trio.socket.SocketType:
        try:
            return self._socks[h]
        except KeyError:
            raise OSError(_errno.EBADF, f"socket handle {h} is closed") from None

    def _add(self, sock) -> int:
        h, self._next = self._next, self._next + 1
        self._socks[h] = sock
        return h

    async def call(self, op: str, args: dict) -> Outcome:
        fn = getattr(self, "op_" + op, None)
        if fn is None:
            raise ValueError(f"unknown socket call {op!r}")
        started = time.monotonic()
        try:
            value = await fn(**args)
        except OSError as exc:
            code = exc.errno if exc.errno is not None else _errno.EIO
            return Outcome(op, None, errno_name(code), started, time.monotonic())
        return Outcome(op, value, None, started, time.monotonic())

    # --- the calls ------------------------------------------------------
    async def op_socket(self, family: int, kind: str = "tcp") -> int:
        raw = self._make(FAMILIES[family], KINDS[kind] | socket.SOCK_CLOEXEC)
        if family == 6:
            raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return self._add(trio.socket.from_stdlib_socket(raw))

    async def op_setsockopt(self, h: int, name: str, value: Any) -> None:
        level, opt, v = encode_option(name, value)
        self._get(h).setsockopt(level, opt, v)

    async def op_bind(self, h: int, address: str, port: int) -> tuple:
        s = self._get(h)
        await s.bind(_sockaddr(s.family, address, port))
        return _name(s.getsockname())

    async def op_listen(self, h: int, backlog: int = 128) -> None:
        self._get(h).listen(backlog)

    async def op_connect(self, h: int, address: str, port: int) -> tuple:
        s = self._get(h)
        await s.connect(_sockaddr(s.family, address, port))
        return (_name(s.getsockname()), _name(s.getpeername()))

    async def op_accept(self, h: int) -> tuple:
        conn, _ = await self._get(h).accept()
        return (self._add(conn), _name(conn.getsockname()), _name(conn.getpeername()))

    async def op_send(self, h: int, data: bytes, all: bool = False) -> int:
        s = self._get(h)
        if not all:
            return await s.send(data)
        view, sent = memoryview(data), 0
        while sent < len(data):
            sent += await s.send(view[sent:])
        return sent

    async def op_recv(self, h: int, size: int = 65536) -> bytes:
        return await self._get(h).recv(size)

    async def op_shutdown(self, h: int, how: str) -> None:
        self._get(h).shutdown({"r": socket.SHUT_RD, "w": socket.SHUT_WR, "rw": socket.SHUT_RDWR}[how])

    async def op_close(self, h: int, linger: int | None = None) -> None:
        s = self._socks.pop(h, None)
        if s is None:
            raise OSError(_errno.EBADF, f"socket handle {h} is closed")
        if linger is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, linger))
        fd = s.detach()
        trio.lowlevel.notify_closing(fd)
        if linger:  # close() blocks up to `linger` seconds: not on the loop
            await trio.to_thread.run_sync(os.close, fd)
        else:
            os.close(fd)

    # --- non-blocking calls and queries (a dup of the descriptor, so the
    # trio socket object is untouched; the flags live on the shared file)
    def _dup(self, h: int) -> socket.socket:
        s = self._get(h)
        return socket.socket(s.family, s.type, fileno=os.dup(s.fileno()))

    async def op_connect_nb(self, h: int, address: str, port: int) -> tuple:
        """connect(2) on a non-blocking socket: EINPROGRESS, result later
        through poll and SO_ERROR."""
        s = self._get(h)
        with self._dup(h) as d:
            d.setblocking(False)
            code = d.connect_ex(_sockaddr(s.family, address, port))
            if code:
                raise OSError(code, os.strerror(code))
            return (_name(d.getsockname()), _name(d.getpeername()))

    async def op_recv_nb(self, h: int, size: int = 65536) -> bytes:
        with self._dup(h) as d:
            return d.recv(size, socket.MSG_DONTWAIT)

    async def op_send_nb(self, h: int, data: bytes) -> int:
        with self._dup(h) as d:
            return d.send(data, socket.MSG_DONTWAIT)

    async def op_getsockopt(self, h: int, name: str) -> Any:
        level, opt, _kind = OPTIONS[name] if name in OPTIONS else READ_ONLY[name]
        size = 256 if name in ("TCP_INFO", "TCP_CONGESTION") else 8
        return decode_option(name, self._get(h).getsockopt(level, opt, size))

    async def op_ioctl(self, h: int, name: str) -> int:
        import fcntl
        raw = fcntl.ioctl(self._get(h).fileno(), IOCTLS[name], struct.pack("i", 0))
        return struct.unpack("i", raw)[0]

    async def op_poll(self, h: int, events: int, timeout: float = 0.0,
                      edge: bool = False, epoll: bool = False) -> tuple:
        """poll(2) (or epoll_wait on a fresh epoll set) for ``events``;
        value: the names of the events ready (an empty tuple on timeout)."""
        import select
        fd = self._get(h).fileno()
        if epoll:
            ep = select.epoll()
            try:
                ep.register(fd, events | (select.EPOLLET if edge else 0))
                ready = await trio.to_thread.run_sync(ep.poll, timeout) if timeout else \
                    ep.poll(0)
            finally:
                ep.close()
        else:
            p = select.poll()
            p.register(fd, events)
            ms = int(timeout * 1000)
            ready = await trio.to_thread.run_sync(p.poll, ms) if ms else p.poll(0)
        return poll_names(ready[0][1]) if ready else ()

    async def op_epoll_create(self, h: int, events: int, edge: bool = False) -> int:
        """A persistent epoll set watching this socket (EPOLLET with
        ``edge``): its handle, for epoll_wait and epoll_close."""
        import select
        ep = select.epoll()
        try:
            ep.register(self._get(h).fileno(), events | (select.EPOLLET if edge else 0))
        except BaseException:
            ep.close()
            raise
        eh, self._next = self._next, self._next + 1
        self._epolls[eh] = ep
        return eh

    async def op_epoll_wait(self, h: int, timeout: float = 0.0) -> tuple:
        ep = self._epolls.get(h)
        if ep is None:
            raise OSError(_errno.EBADF, f"epoll handle {h} is closed")
        ready = await trio.to_thread.run_sync(ep.poll, timeout) if timeout else ep.poll(0)
        return poll_names(ready[0][1]) if ready else ()

    async def op_epoll_close(self, h: int) -> None:
        ep = self._epolls.pop(h, None)
        if ep is None:
            raise OSError(_errno.EBADF, f"epoll handle {h} is closed")
        ep.close()

    async def op_sockname(self, h: int) -> tuple:
        return _name(self._get(h).getsockname())

    def abort_all(self) -> None:
        """Close every socket with linger 0 (RST, no orphan left behind)."""
        for ep in self._epolls.values():
            ep.close()
        self._epolls.clear()
        for h in list(self._socks):
            s = self._socks.pop(h)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            s.close()
