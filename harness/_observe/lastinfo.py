"""The last observation of a socket before it dies, kept.

When the kernel destroys a socket (a RST, a timeout, the end of TIME_WAIT,
an orphan giving up) inet_diag stops showing it, and with it go its
tcp_info, timers and counters.  Two ways to keep them:

- the owner of a file descriptor still reads tcp_info after the death:
  ``await conn.getsockopt("TCP_INFO")`` on a socket the kernel closed
  (tcp_done() leaves the counters; only close(2) frees them);
- for a socket nobody holds (an orphan after close(), a process's killed
  with it), ``async with last_info(conn) as keep`` polls inet_diag for
  its 4-tuple every ``every`` seconds and keeps the last SocketInfo seen
  (with its snapshot_time) and when it was first missing, so the
  observation is ``every`` plus one dump (~0.1 ms) older than the death
  on a quiet machine, more when the loop wakes up late under load (tens of
  ms at load 12 on 2 CPUs).  ``lab.timeline`` has the death's exact time
  (inet_sock_set_state to CLOSE).
"""

from __future__ import annotations


import trio

from ..errors import InvalidArgument, ObservationTimeout


class LastInfo:
    """``last``: the socket's latest SocketInfo; ``gone_at``: the time of
    the first snapshot without it (None while it lives)."""

    def __init__(self, host, local, remote, every: float):
        self.host, self.local, self.remote, self.every = host, local, remote, every
        self.last = None
        self.gone_at: float | None = None
        self._gone = trio.Event()

    def __repr__(self) -> str:
        return f"<LastInfo {self.local} > {self.remote} last={self.last!r} gone_at={self.gone_at}>"

    def look(self) -> None:
        snap = self.host.sockets()
        mine = [s for s in snap if s.local == self.local and s.remote == self.remote]
        if mine:
            self.last = mine[0]
        elif self.last is not None and self.gone_at is None:
            self.gone_at = snap.time
            self._gone.set()

    async def run(self) -> None:
        while self.gone_at is None:
            self.look()
            await trio.sleep(self.every)

    async def wait_gone(self, *, timeout: float = 5.0):
        """Wait until the socket is gone; returns its last SocketInfo."""
        with trio.move_on_after(timeout):
            await self._gone.wait()
            return self.last
        raise ObservationTimeout(f"{self.local} > {self.remote} still alive after {timeout}s",
                                 last=[self.last])


class last_info:
    """``async with last_info(sock, every=0.001) as keep:`` (see the module)."""

    def __init__(self, sock, *, every: float = 0.001):
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 < every <= 1:
            raise InvalidArgument(f"every must be seconds in (0, 1], got {every!r}")
        if getattr(sock, "local", None) is None or getattr(sock, "remote", None) is None:
            raise InvalidArgument(f"last_info() needs a connected socket, got {sock!r}")
        self._keep = LastInfo(sock.host, sock.local, sock.remote, every)
        self._nursery_cm = None

    async def __aenter__(self) -> LastInfo:
        self._keep.look()
        if self._keep.last is None:
            raise InvalidArgument(f"last_info(): no socket {self._keep.local} > "
                                  f"{self._keep.remote} in {self._keep.host.name} to watch")
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self._keep.run)
        self._scope = nursery.cancel_scope
        return self._keep

    async def __aexit__(self, *exc):
        self._scope.cancel()
        return await self._nursery_cm.__aexit__(*exc)
