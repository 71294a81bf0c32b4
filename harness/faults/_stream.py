"""Stream faults on one connection: toxiproxy's toxics, in a host of the lab.

    async with faults.proxy(server, port=9100, upstream=9000,
                            toxics=[faults.limit_data(100, close="rst")]) as px:
        conn = await client.connect(server, 9100)   # through the proxy to :9000

A TCP proxy (trio, sockets made in ``host``'s namespace) listens on
``port`` and relays each connection it accepts to ``upstream`` (a port of
the same host, or ``(Host, port)``), like toxiproxy.  Toxics act on the
data each way: ``direction="down"`` (toxiproxy's downstream: from the
upstream server to the client, the default) or ``"up"``; each applies to a
connection with probability ``toxicity`` (drawn once per connection, as
toxiproxy does; ``px.connections[i].toxics`` says which did).

- ``limit_data(n, close="fin"|"rst")``: pass n bytes, then end the
  connection both ways with FIN (close) or RST (SO_LINGER 0).
- ``slicer(size, delay=0.0)``: cut the data into writes of ``size`` bytes
  (TCP_NODELAY, so each is its own segment), ``delay`` seconds apart.
- ``timeout(after, close="fin"|"rst")``: pass nothing more; end the
  connection ``after`` seconds from its start (0: never, it hangs).
- ``slow_close(delay)``: hold the FIN ``delay`` seconds before passing it.
- ``reset_peer(after)``: RST both ends ``after`` seconds from the start.
- ``latency(delay)``: pass each chunk ``delay`` seconds late.

The proxy is a real process-less program: its sockets are real sockets of
the host, so everything else (captures, snapshots, the timeline) sees them.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from dataclasses import dataclass, field

import trio

from ..errors import InvalidArgument
from ._base import Fault

DIRECTIONS = ("down", "up")
CLOSES = ("fin", "rst")


def _seconds(v, name: str, where: str, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (positive and v == 0):
        raise InvalidArgument(f"{name} must be seconds {'> 0' if positive else '>= 0'}, got "
                              f"{name}={v!r} from {where}()")
    return float(v)


@dataclass(frozen=True)
class Toxic:
    kind: str
    direction: str = "down"
    toxicity: float = 1.0
    params: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.kind}({args}, direction={self.direction!r}, toxicity={self.toxicity})"


def _toxic(kind: str, direction, toxicity, **params) -> Toxic:
    if direction not in DIRECTIONS:
        raise InvalidArgument(f"direction must be 'down' (server to client) or 'up', got "
                              f"direction={direction!r} from {kind}()")
    if isinstance(toxicity, bool) or not isinstance(toxicity, (int, float)) or \
            not 0 <= toxicity <= 1:
        raise InvalidArgument(f"toxicity must be a fraction in [0, 1], got "
                              f"toxicity={toxicity!r} from {kind}()")
    if "close" in params and params["close"] not in CLOSES:
        raise InvalidArgument(f"close must be 'fin' or 'rst', got close={params['close']!r} "
                              f"from {kind}()")
    return Toxic(kind, direction, float(toxicity), params)


def limit_data(nbytes: int, *, close: str = "fin", direction: str = "down",
               toxicity: float = 1.0) -> Toxic:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise InvalidArgument(f"bytes must be an int >= 0, got {nbytes!r} from limit_data()")
    return _toxic("limit_data", direction, toxicity, bytes=nbytes, close=close)


def slicer(size: int, *, delay: float = 0.0, direction: str = "down",
           toxicity: float = 1.0) -> Toxic:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidArgument(f"size must be an int >= 1, got {size!r} from slicer()")
    return _toxic("slicer", direction, toxicity, size=size,
                  delay=_seconds(delay, "delay", "slicer"))


def timeout(after: float, *, close: str = "fin", direction: str = "down",
            toxicity: float = 1.0) -> Toxic:
    return _toxic("timeout", direction, toxicity, after=_seconds(after, "after", "timeout"),
                  close=close)


def slow_close(delay: float, *, direction: str = "down", toxicity: float = 1.0) -> Toxic:
    return _toxic("slow_close", direction, toxicity,
                  delay=_seconds(delay, "delay", "slow_close"))


def reset_peer(after: float = 0.0, *, direction: str = "down",
               toxicity: float = 1.0) -> Toxic:
    return _toxic("reset_peer", direction, toxicity,
                  after=_seconds(after, "after", "reset_peer"))


def latency(delay: float, *, direction: str = "down", toxicity: float = 1.0) -> Toxic:
    return _toxic("latency", direction, toxicity,
                  delay=_seconds(delay, "delay", "latency", positive=True))


class Relayed:
    """One connection through the proxy: its toxics, when it started, how it
    ended ("fin", "rst", or None while open), bytes passed each way."""

    def __init__(self, toxics: list[Toxic], started: float):
        self.toxics, self.started = toxics, started
        self.ended: str | None = None
        self.passed = {"down": 0, "up": 0}

    def __repr__(self) -> str:
        return f"<Relayed toxics={self.toxics} passed={self.passed} ended={self.ended}>"


class Proxy(Fault):
    def __init__(self, host, port: int, upstream: tuple, toxics: list[Toxic], family: int):
        super().__init__(host.lab)
        self.host, self.port, self.upstream, self.toxics = host, port, upstream, toxics
        self.family = family
        self.label = f"proxy({host.name}:{port} -> {upstream[0].name}:{upstream[1]})"
        self.connections: list[Relayed] = []
        self._cancel = trio.CancelScope()
        self._done = trio.Event()
        self._socks: set = set()

    async def _apply(self) -> None:
        from .._sockets import make_socket_in
        fam = socket.AF_INET if self.family == 4 else socket.AF_INET6
        raw = make_socket_in(self.host.ns_fd)(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            raw.bind((self.host.address(self.family), self.port))
            raw.listen(128)
        except BaseException:
            raw.close()
            raise
        self._listener = trio.socket.from_stdlib_socket(raw)
        self._make = make_socket_in(self.host.ns_fd)  # upstream connects leave from here
        self.lab.context.start_soon(self._serve)

    async def _revert(self) -> None:
        self._cancel.cancel()
        await self._done.wait()
        for s in list(self._socks):
            _abort(s)
        self._listener.close()

    async def _serve(self) -> None:
        try:
            with self._cancel:
                async with trio.open_nursery() as n:
                    while True:
                        client, _ = await self._listener.accept()
                        n.start_soon(self._relay, client)
        finally:
            self._done.set()

    async def _relay(self, client) -> None:
        chosen = [t for t in self.toxics if random.random() < t.toxicity]
        rec = Relayed(chosen, time.monotonic())
        self.connections.append(rec)
        fam = socket.AF_INET if self.family == 4 else socket.AF_INET6
        up = trio.socket.from_stdlib_socket(self._make(fam, socket.SOCK_STREAM
                                                       | socket.SOCK_CLOEXEC))
        self._socks |= {client, up}
        try:
            await up.connect((self.upstream[0].address(self.family), self.upstream[1]))
        except OSError:
            _abort(client)
            _abort(up)
            rec.ended = "rst"
            return
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        async with trio.open_nursery() as n:
            def end(how: str) -> None:  # the sockets are closed once no task waits on them
                if rec.ended is None:
                    rec.ended = how
                n.cancel_scope.cancel()
            for t in chosen:
                if t.kind == "reset_peer":
                    n.start_soon(_at, rec.started + t.params["after"], end, "rst")
                elif t.kind == "timeout" and t.params["after"] > 0:
                    n.start_soon(_at, rec.started + t.params["after"], end, t.params["close"])
            n.start_soon(self._pump, up, client, "down", rec, end)
            n.start_soon(self._pump, client, up, "up", rec, end)
        if rec.ended is None:  # both directions ended with a FIN
            rec.ended = "fin"
        for s in (client, up):
            (_abort if rec.ended == "rst" else _close)(s)
        self._socks -= {client, up}

    async def _pump(self, src, dst, direction: str, rec: Relayed, end) -> None:
        mine = {t.kind: t.params for t in rec.toxics if t.direction == direction}
        while True:
            try:
                data = await src.recv(65536)
            except OSError:  # ECONNRESET from one end: reset the other
                return end("rst")
            if not data:  # end of stream from src: pass the FIN on (maybe late)
                if "slow_close" in mine:
                    await trio.sleep(mine["slow_close"]["delay"])
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if "timeout" in mine:
                continue  # swallowed: nothing gets through
            if "latency" in mine:
                await trio.sleep(mine["latency"]["delay"])
            if "limit_data" in mine:
                room = mine["limit_data"]["bytes"] - rec.passed[direction]
                data = data[:max(0, room)]
            size = mine["slicer"]["size"] if "slicer" in mine else len(data) or 1
            for i in range(0, len(data), size):
                if i and mine.get("slicer", {}).get("delay"):
                    await trio.sleep(mine["slicer"]["delay"])
                try:
                    await _send_all(dst, data[i:i + size])
                except OSError:
                    return end("rst")
                rec.passed[direction] += len(data[i:i + size])
            if "limit_data" in mine and rec.passed[direction] >= mine["limit_data"]["bytes"]:
                return end(mine["limit_data"]["close"])


async def _send_all(sock, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = await sock.send(view)
        view = view[n:]


async def _at(when: float, fn, *args) -> None:
    await trio.sleep(max(0.0, when - time.monotonic()))
    fn(*args)


def _abort(s) -> None:
    """close with SO_LINGER {1, 0}: a RST to the other end."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def _close(s) -> None:
    s.close()


def proxy(host, *, port: int, upstream, toxics: list[Toxic] | tuple = (),
          family: int = 4) -> Proxy:
    """A toxiproxy-like TCP proxy in ``host`` on ``port``, relaying to
    ``upstream`` (a port of ``host`` or ``(Host, port)``), with ``toxics``
    (see the module docstring)."""
    from .._host import Host, check_host
    from .._sockets import check_family, check_port
    check_host(host, "proxy()")
    check_port(port)
    check_family(family)
    if isinstance(upstream, int) and not isinstance(upstream, bool):
        upstream = (host, upstream)
    if not (isinstance(upstream, tuple) and len(upstream) == 2
            and isinstance(upstream[0], Host)):
        raise InvalidArgument(f"proxy(): upstream must be a port of the same host or "
                              f"(Host, port), got {upstream!r}")
    check_port(upstream[1])
    if upstream == (host, port):
        raise InvalidArgument(f"proxy(): upstream {host.name}:{port} is the proxy itself")
    toxics = list(toxics)
    for t in toxics:
        if not isinstance(t, Toxic):
            raise InvalidArgument(f"proxy(): toxics are made by limit_data(), slicer(), "
                                  f"timeout(), slow_close(), reset_peer(), latency(); got {t!r}")
    return Proxy(host, port, upstream, toxics, family)
