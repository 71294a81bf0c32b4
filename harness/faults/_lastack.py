"""Drop the last ACK of a close, and the other drops of a connection's
opening and closing segments, precise to one connection.

``drop_last_ack(conn)``: ``conn`` is the active closer (the end that will sit
in TIME_WAIT).  Only the pure ACK (no SYN/FIN/RST, no payload) that
acknowledges the peer's FIN is dropped, for that 4-tuple; every other packet
passes.  The engine queues just two things in conn's host: the inbound FINs
of the 4-tuple (to learn the FIN's sequence number: seq + payload length)
and its outbound packets with only ACK among SYN/FIN/RST/ACK that are short
enough to be header-only; it drops an outbound pure ACK whose
ack == peer FIN seq + 1.

What the kernel then does (RFC 9293 3.6, 3.10.7.4): the peer in LAST_ACK
retransmits its FIN on its RTO timer (tcp_retransmit_timer, the 200 ms
minimum doubling: measured here 0.21, 0.42, 0.85, 1.69 s after its FIN),
and the TIME_WAIT side answers every retransmitted FIN with the same ACK and
restarts its 60 s timer (tcp_timewait_state_process() -> TCP_TW_ACK,
inet_twsk_reschedule()).  ``count=None`` drops those re-ACKs too, until
undone; ``count=N`` drops only the first N.  After undo the next
retransmitted FIN is ACKed and the peer goes CLOSED.  Should the peer be an
orphan (closed by its program, the usual case), tcp_orphan_retries bounds
how long it keeps trying (0 means 8); the "fast" profile's 2 gives up
after the second retransmission, so pin it when the test needs the peer to
wait.  Given the passive closer instead, the fault drops its ACK of the
peer's FIN (the second segment of the close, not the last).
"""

from __future__ import annotations

from typing import Any

from .._wire import flag_filter
from ._shared import chooser
from ._packets import (Action, Flow, PacketFault, check_connection, check_count, check_direction,
                      check_positive)

__all__ = ["DropLastAck", "drop_last_ack", "drop_nth_fin", "drop_synack"]

_U32 = 0xFFFFFFFF
# the longest pure ACK: IPv4 header 20 + TCP header with the most options 60
_PURE_ACK_MAX = 80


class DropLastAck(PacketFault):
    """The fault ``drop_last_ack`` returns.  ``peer_fin_seq`` is the peer's
    FIN sequence number once seen, ``fins`` how many of its FINs (original
    and retransmitted) reached the host's queue (not yet its TCP: the
    verdict lets each in), ``acks`` how many ACKs of it the host sent (each
    proves TCP has processed the FIN copy it answers, e.g. restarted
    TIME_WAIT), ``counts["dropped"]`` how many of those were dropped."""

    def __init__(self, conn: Any, count: int | None = None):
        where = "drop_last_ack()"
        check_connection(conn, where)
        self.count = check_count(count, where)
        self.peer_fin_seq: int | None = None
        self.fins = 0
        self.acks = 0
        flows = [Flow("in", tcp_flags=flag_filter("FIN/FIN", where)),
                 Flow("out", tcp_flags=flag_filter("ACK", where), max_len=_PURE_ACK_MAX)]
        super().__init__(conn, flows=flows, decide=self._decide, where=where,
                         label=f"drop_last_ack on {conn!r}")

    def _decide(self, p) -> Action | None:
        if p.direction == "in":
            if p.fin:
                self.peer_fin_seq = (p.seq + p.payload_len) & _U32
                self.fins += 1
            return None
        if self.peer_fin_seq is not None and p.pure_ack and \
                p.ack == (self.peer_fin_seq + 1) & _U32:
            self.acks += 1
            if self.count is None or self._counts["dropped"] < self.count:
                return Action.drop
        return None


def drop_last_ack(conn: Any, count: int | None = None) -> DropLastAck:
    """Drop the ACK with which ``conn`` (the active closer) acknowledges its
    peer's FIN: every one (None, default) or the first ``count``."""
    return DropLastAck(conn, count)


def drop_nth_fin(conn: Any, n: int = 1, *, direction: str = "out") -> PacketFault:
    """Drop the ``n``-th FIN (1-based; retransmissions count) of ``conn``'s
    4-tuple: the ones ``conn`` sends ("out") or receives ("in")."""
    where = "drop_nth_fin()"
    check_connection(conn, where)
    check_positive(n, where, "n")
    check_direction(direction, where, ("in", "out"))
    return PacketFault(conn, flows=[Flow(direction, tcp_flags=flag_filter("FIN/FIN", where))],
                       decide=chooser(None, Action.drop, 1, n - 1, where), where=where,
                       label=f"drop FIN #{n} {direction} on {conn!r}")


def drop_synack(host: Any, port: int, count: int | None = 1) -> PacketFault:
    """Drop the first ``count`` SYN-ACKs (None: all) sent from ``port``, in
    ``host``: outbound if it is the server, inbound if it is the client."""
    where = "drop_synack()"
    count = check_count(count, where)
    synack = flag_filter("SYN,ACK", where)
    flows = [Flow("in", tcp_flags=synack, sport=port), Flow("out", tcp_flags=synack, sport=port)]
    return PacketFault(host, flows=flows, decide=chooser(None, Action.drop, count, 0, where),
                       port=port, where=where, label=f"drop_synack from port {port} in {host!r}")
