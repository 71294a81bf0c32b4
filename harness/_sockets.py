"""Sockets in hosts, owned by the test or by a peer process.

``Socket`` is one class for a listener, a connection and an unconnected
socket, as in the BSD API.  Its calls return an ``Outcome`` (value or errno
name, with timestamps) because the errno is usually what a test asserts; the
factories (``host.listen``, ``host.connect``, ``listener.accept``) return a
Socket and raise ``CallFailed`` when the call fails, since a test that needs
the object cannot go on without it.  Every outcome is also written to the
lab's timeline, between the kernel's events.

Blocking calls run concurrently in a nursery; cancel one with trio's cancel
scopes (``with trio.fail_after(2): await conn.recv()``).
"""

from __future__ import annotations

import ipaddress
import json
import socket as _socket
from typing import Any

import trio

from . import _check
from ._sockops import Outcome, SocketTable, encode_option
from .errors import CallFailed, HarnessError, InvalidArgument
from ._observe.timeline import Event


def check_family(family: object) -> int:
    if family not in (4, 6):
        raise InvalidArgument(f"family must be 4 or 6, got {family!r}")
    return family  # type: ignore[return-value]


def check_port(port: object, *, zero_ok: bool = False) -> int:
    lo = 0 if zero_ok else 1
    if isinstance(port, bool) or not isinstance(port, int) or not lo <= port < 65536:
        raise InvalidArgument(f"port must be an int in {lo}..65535, got {port!r}")
    return port


def check_socket(sock: object, where: str, name: str = "conn", *, connected: bool = False,
                 bound: bool = False) -> "Socket":
    """``sock`` is a test's Socket of an open lab, not closed by the test;
    with ``connected``, one with a peer (a 4-tuple); with ``bound``, one
    with a local address.  The one check every entry point that takes a
    socket makes, before anything is touched."""
    if not isinstance(sock, Socket):
        raise InvalidArgument(f"{name} must be a harness Socket (from connect(), listen() or "
                              f"accept()), got {name}={sock!r} ({type(sock).__name__}) from "
                              f"{where}")
    sock.host.lab.check_open(f"{where}: {sock!r}")
    if sock.closed:
        raise InvalidArgument(f"{name}={sock!r} was closed by the test; {where} needs an open "
                              f"socket")
    if connected and (sock.local is None or sock.remote is None or not sock.remote[1]):
        raise InvalidArgument(f"{name} must be a connected Socket (a 4-tuple), got {name}="
                              f"{sock!r}, which is not connected (a listener or an unconnected "
                              f"socket has no peer), from {where}")
    if bound and sock.local is None:
        raise InvalidArgument(f"{name}={sock!r} is neither bound nor connected: inet_diag "
                              f"cannot find it (from {where})")
    return sock


class LocalDriver:
    """Calls run in the pytest process, sockets created in the host's
    namespace."""

    def __init__(self, make_socket):
        self.table = SocketTable(make_socket)
        self.alive = True

    async def call(self, op: str, **args: Any) -> Outcome:
        return await self.table.call(op, args)

    def abort_all(self) -> None:
        self.table.abort_all()


class PeerDriver:
    """Calls sent to a peer program over its stdin, answers read from its
    stdout by a reader task in the lab's nursery."""

    def __init__(self, process, send_stream, receive_stream):
        self.process = process
        self._send, self._recv = send_stream, receive_stream
        self._pending: dict[int, list] = {}
        self._next = 1
        self._lock = trio.Lock()
        self.alive = True

    async def reader(self) -> None:
        buf = b""
        try:
            while True:
                data = await self._recv.receive_some(65536)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    msg = json.loads(line)
                    slot = self._pending.pop(msg["id"], None)
                    if slot is not None:
                        slot[1] = msg
                        slot[0].set()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            self.alive = False
            for slot in self._pending.values():
                slot[0].set()

    def _gone(self, op: str) -> HarnessError:
        return HarnessError(f"peer process {self.process.pid} is gone "
                            f"(returncode {self.process.returncode}); cannot {op}")

    async def call(self, op: str, **args: Any) -> Outcome:
        if not self.alive or self.process.returncode is not None:
            raise self._gone(op)
        mid, self._next = self._next, self._next + 1
        slot = [trio.Event(), None]
        self._pending[mid] = slot
        wire = {k: ({"b": v.hex()} if isinstance(v, (bytes, bytearray)) else v)
                for k, v in args.items()}
        try:
            # cancelled before it is sent: nothing to undo in the peer; once
            # sending, the line goes out whole (a half line would corrupt the
            # pipe), so the send is shielded, within a bound
            await trio.lowlevel.checkpoint_if_cancelled()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5) as sending:
                    async with self._lock:
                        await self._send.send_all(
                            (json.dumps({"id": mid, "op": op, "args": wire}) + "\n").encode())
            if sending.cancelled_caught:
                raise trio.BrokenResourceError("the peer's stdin stayed full for 5 s")
        except (trio.BrokenResourceError, trio.ClosedResourceError, BrokenPipeError) as exc:
            self._pending.pop(mid, None)
            raise self._gone(op) from exc
        except trio.Cancelled:
            self._pending.pop(mid, None)
            raise
        try:
            await slot[0].wait()
        except trio.Cancelled:
            # The call runs in the peer: cancel it there too, and wait for
            # its answer, or a recv cancelled here would go on in the peer
            # and swallow the next data (issue 11, point 6).
            with trio.CancelScope(shield=True):
                await self._cancel_remote(mid, slot)
            msg = slot[1]
            if msg is None or "outcome" not in msg:
                raise
            # it completed before the cancel reached the peer: its effect
            # happened, so its outcome is returned rather than lost
        msg = slot[1]
        if msg is None:
            raise HarnessError(f"peer process {self.process.pid} died during {op} "
                               f"(returncode {self.process.returncode})")
        if "error" in msg:
            raise HarnessError(f"the harness's program failed on {op}: {msg['error']}")
        return Outcome.from_wire(msg["outcome"])

    async def _cancel_remote(self, mid: int, slot: list) -> None:
        """Ask the peer to cancel call ``mid``; wait (up to 5 s) for the call
        to answer: "cancelled" or, if it had completed, its outcome."""
        cancel_id, self._next = self._next, self._next + 1
        try:
            async with self._lock:
                await self._send.send_all((json.dumps(
                    {"id": cancel_id, "op": "cancel", "args": {"id": mid}}) + "\n").encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError, BrokenPipeError):
            self._pending.pop(mid, None)
            return  # the peer is gone: nothing runs there any more
        with trio.move_on_after(5):
            await slot[0].wait()
        self._pending.pop(mid, None)

    async def aclose(self) -> None:
        self.alive = False
        await self._send.aclose()


class Socket:
    """A TCP socket in a host.  ``local``/``remote`` are (address, port).

    ``since`` (time.monotonic, the timeline's clock) is where its history
    starts: the start of its socket() call, or for an accepted socket the
    kernel's last move of its 4-tuple to ESTABLISHED/SYN_RECV before accept()
    returned; ``timeline.events(sock)`` begins there."""

    def __init__(self, owner, driver, handle: int, family: int, since: float,
                 local: tuple[str, int] | None = None, remote: tuple[str, int] | None = None):
        self.owner, self._driver, self._h = owner, driver, handle
        self.family, self.since = family, since
        self.local = local
        self.remote = remote
        self.closed = False

    @property
    def host(self):
        return self.owner.host

    def __repr__(self) -> str:
        def fmt(a):
            return "?" if a is None else (f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}")
        return f"<Socket {self.host.name} {fmt(self.local)} > {fmt(self.remote)}>"

    async def _call(self, op: str, *, then=None, **args: Any) -> Outcome:
        """Make the call; ``then(outcome)`` updates this socket's addresses
        before the outcome is written to the timeline."""
        self.host.lab.check_open(repr(self))
        out = await self._driver.call(op, h=self._h, **args)
        if then is not None and out.ok:
            then(out)
        lab = self.host.lab
        if self.local is not None:
            lab.timeline.add(Event(t=out.ended, kind="call", local=self.local,
                                   remote=self.remote or ("0.0.0.0", 0), source="call",
                                   host=self.host.name, errno=out.errno,
                                   detail=f"{op} -> {out.errno or _short(out.value)}"))
        return out

    # --- calls returning outcomes ---------------------------------------
    async def send(self, data: bytes, *, all: bool = False, dontwait: bool = False) -> Outcome:
        """send(2) once (value: bytes accepted), or until all is sent.
        ``dontwait``: MSG_DONTWAIT, EAGAIN when the send buffer is full."""
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidArgument(f"data must be bytes, got {type(data).__name__}")
        if dontwait:
            if all:
                raise InvalidArgument("send(): all=True waits; it cannot go with dontwait=True")
            return await self._call("send_nb", data=bytes(data))
        return await self._call("send", data=bytes(data), all=all)

    async def recv(self, size: int = 65536, *, dontwait: bool = False) -> Outcome:
        """recv(2) once: value b"" means the peer's FIN (end of stream).
        ``dontwait``: MSG_DONTWAIT, EAGAIN when nothing is queued."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidArgument(f"size must be an int >= 1, got {size!r}")
        return await self._call("recv_nb" if dontwait else "recv", size=size)

    async def shutdown(self, how: str = "w") -> Outcome:
        """shutdown(2): "w" sends FIN (half-close), "r", or "rw"."""
        if how not in ("r", "w", "rw"):
            raise InvalidArgument(f"how must be 'r', 'w' or 'rw', got {how!r}")
        return await self._call("shutdown", how=how)

    async def close(self, *, linger: int | None = None) -> Outcome:
        """close(2).  ``linger`` sets SO_LINGER {1, linger} first: 0 aborts
        with a RST; N > 0 makes close() block up to N seconds (the kernel's
        unit is seconds) while unsent data drains."""
        if linger is not None and (isinstance(linger, bool) or not isinstance(linger, int)
                                   or linger < 0):
            raise InvalidArgument(f"linger must be whole seconds >= 0 (SO_LINGER's l_linger is "
                                  f"an int of seconds) or None, got {linger!r}")
        out = await self._call("close", linger=linger)
        self.closed = True
        return out

    async def setsockopt(self, name: str, value: Any) -> Outcome:
        """Set an option by name (see harness._sockops.OPTIONS); durations in
        seconds (TCP_USER_TIMEOUT too: converted to the kernel's ms)."""
        try:
            encode_option(name, value)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        return await self._call("setsockopt", name=name, value=value)

    async def getsockopt(self, name: str) -> Outcome:
        """Read an option by name, in setsockopt's units (see
        harness._sockops.OPTIONS), or a read-only one: SO_ERROR (an errno
        name, None when there is none; reading it clears it), SO_TYPE,
        SO_ACCEPTCONN, SO_LINGER (seconds or None), TCP_INFO (a dict, as
        SocketInfo.tcp_info)."""
        from ._sockops import OPTIONS, READ_ONLY
        if name not in OPTIONS and name not in READ_ONLY:
            raise InvalidArgument(f"socket option must be one of "
                                  f"{sorted(set(OPTIONS) | set(READ_ONLY))}, got {name!r}")
        out = await self._call("getsockopt", name=name)
        if name == "TCP_INFO" and out.ok:
            from . import _diag
            out = Outcome(out.call, _diag.decode_tcp_info(memoryview(out.value)), None,
                          out.started, out.ended)
        return out

    async def ioctl(self, name: str) -> Outcome:
        """ioctl(2) by name: SIOCINQ (bytes unread), SIOCOUTQ (bytes not yet
        acknowledged), SIOCOUTQNSD (bytes not yet sent)."""
        from ._sockops import IOCTLS
        if name not in IOCTLS:
            raise InvalidArgument(f"ioctl must be one of {sorted(IOCTLS)}, got {name!r}")
        return await self._call("ioctl", name=name)

    async def poll(self, events="in", *, timeout: float = 0.0, epoll: bool = False,
                   edge: bool = False) -> Outcome:
        """poll(2) (or, with ``epoll=True``, epoll_wait on a fresh epoll set;
        ``edge`` adds EPOLLET) for ``events`` ("in", "out", "rdhup", "pri",
        or several: "in,out"), waiting up to ``timeout`` seconds (0: just
        look).  Value: the names of the ready events ("err" and "hup" are
        always reported), () on timeout."""
        from ._sockops import poll_mask
        try:
            mask = poll_mask(events)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        _check.seconds(timeout)
        return await self._call("poll", events=mask, timeout=timeout, epoll=epoll, edge=edge)

    async def epoll(self, events="in,out", *, edge: bool = False) -> "EpollSet":
        """A persistent epoll set watching this socket for ``events``
        (``edge``: EPOLLET, so a wait reports only what changed since the
        last one); ``await ep.wait(timeout)`` returns an Outcome whose
        value is the ready event names, () when none."""
        from ._sockops import poll_mask
        try:
            mask = poll_mask(events)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        out = await self._call("epoll_create", events=mask, edge=edge)
        _ok(out, self)
        return EpollSet(self, out.value)

    async def keepalive(self, *, idle: int, interval: int, count: int) -> None:
        """SO_KEEPALIVE with TCP_KEEPIDLE/KEEPINTVL/KEEPCNT (seconds)."""
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                            ("TCP_KEEPCNT", count), ("SO_KEEPALIVE", True)):
            _ok(await self.setsockopt(name, value), self)

    async def bind(self, port: int = 0, address: str | None = None) -> Outcome:
        check_port(port, zero_ok=True)
        addr = address or self.host.address(self.family)
        return await self._call("bind", address=addr, port=port,
                                then=lambda o: setattr(self, "local", o.value))

    async def connect(self, target, port: int, *, nonblocking: bool = False) -> Outcome:
        """connect(2) to a Host (its address of this socket's family) or an
        address string.  ``nonblocking``: the call returns at once, with
        EINPROGRESS; the result comes through ``poll("out")`` and
        ``getsockopt("SO_ERROR")``."""
        address = self.host.lab.resolve(target, self.family)
        check_port(port)

        def connected(o: Outcome) -> None:
            self.local, self.remote = o.value
        out = await self._call("connect_nb" if nonblocking else "connect", address=address,
                               port=port, then=connected)
        if not out.ok:  # the attempt still had a 4-tuple: its events stay matchable
            self.remote = (address, port)
            named = await self._driver.call("sockname", h=self._h)
            if named.ok and named.value[1]:
                self.local = named.value
        return out

    async def listen(self, backlog: int = 128) -> Outcome:
        wildcard = ("0.0.0.0" if self.family == 4 else "::", 0)
        return await self._call("listen", backlog=backlog,
                                then=lambda o: setattr(self, "remote", wildcard))

    async def accept(self) -> "Socket":
        """Accept one connection; raises CallFailed if accept(2) fails."""
        out = await self._call("accept")
        _ok(out, self)
        handle, local, remote = out.value
        since = self.host.lab.connection_start(local, remote, out.ended)
        return Socket(self.owner, self._driver, handle, self.family, since, local, remote)

    # --- observation ----------------------------------------------------
    def info(self):
        """This socket as inet_diag sees it now (SocketInfo), or None if the
        kernel no longer has it."""
        if self.local is None:
            return None
        for s in self.host.sockets():
            if s.local == self.local and s.remote == self.remote:
                return s
        return None


class EpollSet:
    """An epoll set of one socket (see Socket.epoll)."""

    def __init__(self, sock: "Socket", handle: int):
        self.sock, self._h = sock, handle

    async def wait(self, timeout: float = 0.0) -> Outcome:
        """epoll_wait for up to ``timeout`` seconds (0: just look)."""
        _check.seconds(timeout)
        return await self.sock._driver.call("epoll_wait", h=self._h, timeout=timeout)

    async def close(self) -> Outcome:
        return await self.sock._driver.call("epoll_close", h=self._h)


def _short(v: Any) -> str:
    if isinstance(v, bytes):
        return repr(v[:16]) + ("..." if len(v) > 16 else "")
    return repr(v)


def _ok(out: Outcome, where) -> Outcome:
    if not out.ok:
        raise CallFailed(f"{out.call} on {where} failed with {out.errno}", out)
    return out


class SocketFactory:
    """listen/connect/socket for anything that owns sockets in a host: the
    host itself (sockets in the test process) or a peer process."""

    host: Any
    _driver: Any

    async def socket(self, family: int = 4) -> Socket:
        """An unconnected TCP socket (set options, bind, then connect)."""
        self.host.lab.check_open(f"{self!r}")
        check_family(family)
        self.host.address(family)  # the host must have this family
        out = await self._driver.call("socket", family=family)
        _ok(out, self.host)
        return Socket(self, self._driver, out.value, family, out.started)

    async def listen(self, port: int, *, family: int = 4, backlog: int = 128,
                     reuseaddr: bool = True) -> Socket:
        """A listening socket on the host's address; CallFailed names the port
        when it is already bound."""
        check_port(port)
        sock = await self.socket(family)
        if reuseaddr:
            await sock.setsockopt("SO_REUSEADDR", True)
        out = await sock.bind(port)
        if not out.ok:
            await sock.close(linger=0)
            raise CallFailed(f"cannot listen on port {port} of host {self.host.name}: bind "
                             f"failed with {out.errno}"
                             + (" (port already bound)" if out.errno == "EADDRINUSE" else ""), out)
        _ok(await sock.listen(backlog), sock)
        return sock

    async def connect(self, target, port: int, *, family: int = 4, bind_port: int | None = None,
                      options: dict | None = None) -> Socket:
        """Connect to ``target`` (a Host or an address); raises CallFailed
        with the errno when connect(2) fails (use ``socket()`` and
        ``Socket.connect`` to assert a connect errno as an outcome)."""
        check_port(port)
        self.host.lab.resolve(target, family)  # validate before creating anything
        sock = await self.socket(family)
        try:
            for name, value in (options or {}).items():
                _ok(await sock.setsockopt(name, value), sock)
            if bind_port is not None:
                _ok(await sock.bind(bind_port), sock)
            _ok(await sock.connect(target, port), sock)
        except BaseException:
            if not sock.closed:
                with trio.CancelScope(shield=True):
                    await sock.close(linger=0)
            raise
        return sock


def make_socket_in(netns_fd: int):
    from . import _netns

    def make(family: int, kind: int) -> _socket.socket:
        return _netns.socket_in(netns_fd, family, kind)
    return make


def resolve_address(value: str, family: int) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidArgument(f"target must be a Host or an IP address, got {value!r}") from None
    if ip.version != family:
        raise InvalidArgument(f"address {value} is IPv{ip.version} but family={family}")
    return str(ip)

