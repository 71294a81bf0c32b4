"""Frozen socket snapshots over inet_diag, TIME_WAIT sockets included.

One ``SocketInfo`` per socket: state, addresses, the kernel's timer (kind and
time left), retransmits, queues, and tcp_info decoded on first access.  A
TIME_WAIT socket (and an orphaned FIN_WAIT2 socket, which the kernel also
hands to a timewait socket: tcp_time_wait(sk, TCP_FIN_WAIT2, ...)) shows its
substate and a ``time_wait`` timer, with no tcp_info.
"""

from __future__ import annotations

import operator
import socket
import time
from typing import Iterable, Iterator

from .. import _diag
from .states import BY_NUMBER, TIMERS, canonical

def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


_I = operator.itemgetter
_FAM = {socket.AF_INET: 4, socket.AF_INET6: 6}
_ntohs = socket.ntohs


class SocketInfo(tuple):
    """One socket as inet_diag saw it at ``snapshot_time``.  Immutable.

    Built straight from the record's header (one struct call, see
    _diag.HEADER); names and byte orders are converted when read, so a
    snapshot of 10,000 sockets costs little more than the dump itself."""

    __slots__ = ()

    # 0-7: _diag.RECORD (len, type, family, state, timer, retrans, sport,
    # dport), then the buffer, the record's offset, host, time, [time done]
    family = property(lambda self: _FAM.get(self[2], self[2]), doc="4 or 6")
    state = property(lambda self: BY_NUMBER.get(self[3], str(self[3])),
                     doc="kernel state name, e.g. TIME_WAIT")
    timer = property(lambda self: TIMERS.get(self[4], str(self[4])),
                     doc="retransmit, keepalive, time_wait, zero_window_probe or None.  "
                         "None too for the instant the kernel runs the retransmit or "
                         "probe timer's handler: it clears icsk_pending before it "
                         "retransmits (or gives up and kills the socket), and the dump "
                         "reads without the socket lock; tcp_info still has the counts")
    retransmits = property(_I(5), doc="inet_diag idiag_retrans: retransmits (or keepalive "
                                      "probes) of the pending timer (0 without one)")
    sport = property(lambda self: _ntohs(self[6]))
    dport = property(lambda self: _ntohs(self[7]))
    host = property(_I(10))
    snapshot_time = property(_I(11), doc="time.monotonic() just before the dump")
    snapshot_done = property(lambda self: self[12][0],
                             doc="time.monotonic() just after the dump: the kernel read this "
                                 "socket (its timer too) at some instant in [snapshot_time, "
                                 "snapshot_done].  A bound on time elapsed since an event "
                                 "uses snapshot_done (a busy machine may preempt the test "
                                 "between the two)")

    def _rest(self) -> tuple:
        return _diag.REST.unpack_from(self[8], self[9] + 24)

    @property
    def timer_left(self) -> float | None:
        """Seconds until the timer fires (None without a timer)."""
        return self._rest()[5] / 1000.0 if self[4] else None

    @property
    def cookie(self) -> int:
        """The kernel's socket cookie."""
        r = self._rest()
        return r[3] | (r[4] << 32)

    @property
    def recv_queue(self) -> int:
        """Bytes unread (LISTEN: accept queue length)."""
        return self._rest()[6]

    @property
    def send_queue(self) -> int:
        """Bytes unacknowledged (LISTEN: backlog)."""
        return self._rest()[7]

    @property
    def uid(self) -> int:
        return self._rest()[8]

    @property
    def inode(self) -> int:
        """0 for a socket no process holds (orphan, timewait)."""
        return self._rest()[9]

    @property
    def local(self) -> tuple[str, int]:
        return (_addr(self._fam(), self._rest()[0]), self.sport)

    @property
    def remote(self) -> tuple[str, int]:
        return (_addr(self._fam(), self._rest()[1]), self.dport)

    def _fam(self) -> int:
        return socket.AF_INET if self.family == 4 else socket.AF_INET6

    def _attributes(self):
        return _diag.attributes(self[8], self[9] + 16, self[0] - 16)

    @property
    def tcp_info(self) -> dict[str, int]:
        """Fields of struct tcp_info (rto_us, rtt_us, retransmits, probes,
        backoff, unacked, total_retrans, bytes_*...); {} for timewait sockets."""
        raw = self._attributes().get(_diag.INET_DIAG_INFO)
        return _diag.decode_tcp_info(raw) if raw is not None else {}

    @property
    def shutdown(self) -> str:
        """Which directions are shut: '', 'r', 'w' or 'rw' (sk_shutdown)."""
        raw = self._attributes().get(_diag.INET_DIAG_SHUTDOWN)
        v = raw[0] if raw is not None and len(raw) else 0
        return ("r" if v & 1 else "") + ("w" if v & 2 else "")

    @property
    def probes(self) -> int:
        return self.tcp_info.get("probes", 0)

    @property
    def backoff(self) -> int:
        return self.tcp_info.get("backoff", 0)

    @property
    def rto(self) -> float | None:
        v = self.tcp_info.get("rto_us")
        return None if v is None else v / 1e6

    def matches(self, local: tuple[str, int] | None = None,
                remote: tuple[str, int] | None = None) -> bool:
        return (local is None or self.local == local) and (remote is None or self.remote == remote)

    def __repr__(self) -> str:
        timer = f" timer={self.timer}:{self.timer_left:.3f}s" if self.timer else ""
        return (f"<{self.state} {self.local[0]}:{self.sport} -> {self.remote[0]}:{self.dport}"
                f"{timer} rq={self.recv_queue} wq={self.send_queue} retrans={self.retransmits}>")


class Snapshot(tuple):
    """All TCP sockets of one host at one instant (a tuple of SocketInfo)."""

    host: str
    time: float

    def __new__(cls, items: Iterable[SocketInfo], host: str, t: float):
        self = super().__new__(cls, items)
        self.host, self.time = host, t
        return self

    def where(self, *, state: str | None = None, local: tuple[str, int] | None = None,
              remote: tuple[str, int] | None = None, port: int | None = None) -> "Snapshot":
        st = canonical(state) if state is not None else None
        keep = [s for s in self
                if (st is None or s.state == st) and s.matches(local, remote)
                and (port is None or port in (s.sport, s.dport))]
        return Snapshot(keep, self.host, self.time)

    def states(self) -> list[str]:
        return [s.state for s in self]

    def __repr__(self) -> str:
        lines = "\n  ".join(repr(s) for s in self) or "(no TCP sockets)"
        return f"Snapshot of {self.host} at {self.time:.6f}:\n  {lines}"


def take(diag_sock: socket.socket, host: str, families: Iterator[int] | None = None) -> Snapshot:
    t = time.monotonic()
    items: list = []
    done = [t]  # shared by the records: set once the dumps have returned
    for family in families or (socket.AF_INET, socket.AF_INET6):
        items += _diag.records(diag_sock, family, SocketInfo, (host, t, done))
    done[0] = time.monotonic()
    return Snapshot(items, host, t)
