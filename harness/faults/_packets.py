"""Packet faults: a userspace verdict on exactly the packets of one flow.

    async with faults.intercept(conn, direction="out", when=lambda p: p.payload_len > 0,
                              action=faults.Action.delay(0.2)) as f:
        ...
    f.counts["delayed"], f.log

How.  iptables rules in the host's namespace send *only* the flow (a
connection's 4-tuple, or a port; TCP flags and a length cap as cheap kernel
prefilters) to an NFQUEUE number unique in that namespace, with
``--queue-bypass`` so nothing waits when no engine listens.  The queue's
netlink socket is created inside the namespace; its verdict loop is a task in
the lab's nursery, woken by ``trio.lowlevel.wait_readable``.  Each packet is
parsed from raw bytes (``parse_tcp``, ~140k packets/s) into a ``TcpPacket``,
or into a scapy packet when the fault asks for one (``scapy=True``, ~4k/s).

Where it sits.  Inbound packets are queued in mangle PREROUTING, outbound
ones in mangle POSTROUTING (inserted first): the engine is the last thing a
packet meets before the wire and the first after it, so it acts like the
wire; the host's own firewall (filter table) still applies after it on input
and before it on output.

Actions (``Action``): accept, drop, delay(seconds), duplicate(n),
reorder(timeout) (hold the packet until the next queued one passes, or
``timeout``), rewrite(fn) / rewrite_payload(fn) (checksums recomputed: a
verdict with a payload makes the kernel verify them in software).
Duplicates are sent from a raw socket in the namespace with mark 0x4649,
which the rules skip (so copies are not queued again); an inbound copy
reaches the local stack through ``lo``.

Undo.  The rules are removed first (one atomic iptables-restore per family),
then the loop stops, and every packet still held (delayed, reordered) or
still in the kernel queue is ACCEPTED at once, in order: undoing a fault
heals the wire, and a packet in flight on it still arrives.  (A packet that
was traversing the rule in the instant of its removal can still land in the
queue after the drain and be dropped by the kernel when the queue unbinds;
the window is microseconds.)  The mangle table, when this module created it,
is deleted with ``nft`` once its last user leaves, so ``iptables-save`` is
identical before and after.

Accuracy.  A delay is counted from when the engine read the packet: the
verdict leaves within ~0.1-1 ms of the due time (trio's timer, one event
loop shared with the test).  A queue holds at most 16384 packets; beyond
that the kernel drops, as a congested link would.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import math
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import trio

from .. import _iptables, _netns, _nfqueue, _tap, _wire
from .._nfqueue import NF_ACCEPT, NF_DROP, NfQueue, NfQueueError
from .._names import owner_tag
from .._wire import FlagFilter, fix_checksums, flag_filter, parse_tcp
from ..errors import FaultError, InvalidArgument
from . import _shared
from ._base import Fault

__all__ = ["Action", "LogEntry", "PacketFault", "TcpPacket", "drop_first", "drop_nth", "packets"]

DIRECTIONS = ("in", "out", "both")
MARK = 0x4649           # copies we inject carry it; every rule skips it
QUEUE_BASE = 1000       # first queue number tried in a namespace
MAX_LEN = 16384         # kernel queue length
LOG_MAX = 10000         # log entries kept (counters keep counting)
_CHAIN = {"in": "PREROUTING", "out": "POSTROUTING"}
_HOOK_DIRECTION = {0: "in", 1: "in", 3: "out", 4: "out"}  # NF_INET_* hooks
_U32 = 0xFFFFFFFF
_CONTROL = _wire.SYN | _wire.FIN | _wire.RST | _wire.ACK


# --- the packet a predicate sees -------------------------------------------------

class TcpPacket:
    """One queued TCP segment, decoded from raw bytes (no scapy).

    ``direction`` is "in" or "out" from the host's point of view; ``t`` is
    when the engine read it (time.monotonic, the timeline's clock); ``raw``
    the bytes from the IP header on; ``data`` the TCP payload; ``bits`` the
    flag bits (harness._wire.SYN...) and ``flags`` the same as letters
    ("SA", "FA", "A"), as every segment the harness shows.
    """

    __slots__ = ("t", "direction", "raw", "version", "src", "dst", "sport", "dport", "seq",
                 "ack", "bits", "window", "payload_len", "_data_off")

    def __init__(self, t: float, direction: str, raw: bytes, v: _wire.TcpView):
        self.t, self.direction, self.raw = t, direction, raw
        self.version, self.src, self.dst = v.version, v.src, v.dst
        self.sport, self.dport, self.seq, self.ack = v.sport, v.dport, v.seq, v.ack
        self.bits, self.window, self.payload_len = v.flags, v.window, v.payload_len
        self._data_off = v.data_offset

    flags = property(lambda self: _wire.letters(self.bits))
    syn = property(lambda self: bool(self.bits & _wire.SYN))
    fin = property(lambda self: bool(self.bits & _wire.FIN))
    rst = property(lambda self: bool(self.bits & _wire.RST))
    psh = property(lambda self: bool(self.bits & _wire.PSH))
    ack_flag = property(lambda self: bool(self.bits & _wire.ACK))

    @property
    def pure_ack(self) -> bool:
        """ACK set, no SYN/FIN/RST, no payload."""
        return self.bits & _CONTROL == _wire.ACK and self.payload_len == 0

    @property
    def end_seq(self) -> int:
        """The sequence number after this segment (SYN and FIN count one)."""
        return (self.seq + self.payload_len + bool(self.bits & _wire.FIN)
                + bool(self.bits & _wire.SYN)) & _U32

    @property
    def data(self) -> bytes:
        return self.raw[self._data_off:self._data_off + self.payload_len]

    @property
    def flag_names(self) -> str:
        return _wire.names(self.bits)

    @property
    def summary(self) -> str:
        def ep(a, p):
            return f"[{a}]:{p}" if ":" in a else f"{a}:{p}"
        return (f"{self.direction} {ep(self.src, self.sport)} > {ep(self.dst, self.dport)} "
                f"[{self.flag_names}] seq={self.seq} ack={self.ack} len={self.payload_len}")

    def __repr__(self) -> str:
        return f"<TcpPacket {self.summary}>"


# --- actions ----------------------------------------------------------------------

class Action:
    """What the engine does with a packet.  Build with the class attributes
    and methods: ``Action.accept``, ``Action.drop``, ``Action.delay(0.2)``,
    ``Action.duplicate(1)``, ``Action.reorder()``, ``Action.rewrite(fn)``,
    ``Action.rewrite_payload(fn)``.  ``action=`` also takes the names
    "accept", "drop", "duplicate" and "reorder" (defaults)."""

    __slots__ = ("kind", "seconds", "n", "fn", "on_payload")
    accept: "Action"
    drop: "Action"
    NAMES = ("accept", "drop", "delay", "duplicate", "reorder", "rewrite", "rewrite_payload")

    def __init__(self, kind: str, *, seconds: float = 0.0, n: int = 0,
                 fn: Callable | None = None, on_payload: bool = False):
        self.kind, self.seconds, self.n, self.fn, self.on_payload = kind, seconds, n, fn, on_payload

    def __repr__(self) -> str:
        if self.kind == "delay":
            return f"delay({self.seconds:g})"
        if self.kind == "duplicate":
            return f"duplicate({self.n})"
        if self.kind == "reorder":
            return f"reorder(timeout={self.seconds:g})"
        return self.kind

    @staticmethod
    def delay(seconds: float) -> "Action":
        """Hold the packet ``seconds`` (0..3600), then accept it."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not 0 <= seconds <= 3600 or math.isnan(seconds):
            raise InvalidArgument(f"seconds must be a number in [0, 3600], got seconds={seconds!r} "
                                  f"({type(seconds).__name__}) from Action.delay()")
        return Action("delay", seconds=float(seconds))

    @staticmethod
    def duplicate(n: int = 1) -> "Action":
        """Accept the packet and send ``n`` (1..100) copies right after it."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100:
            raise InvalidArgument(f"n must be an int in 1..100, got n={n!r} "
                                  f"({type(n).__name__}) from Action.duplicate()")
        return Action("duplicate", n=n)

    @staticmethod
    def reorder(timeout: float = 1.0) -> "Action":
        """Hold the packet until the next queued packet of the fault has
        passed (then release it right after), or ``timeout`` seconds."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout <= 3600 or math.isnan(timeout):
            raise InvalidArgument(f"timeout must be a number in (0, 3600], got timeout={timeout!r} "
                                  f"({type(timeout).__name__}) from Action.reorder()")
        return Action("reorder", seconds=float(timeout))

    @staticmethod
    def rewrite(fn: Callable) -> "Action":
        """Replace the packet by ``fn(raw_bytes)`` (IP header onward; a scapy
        packet in and out with ``scapy=True``); lengths and checksums fixed."""
        if not callable(fn):
            raise InvalidArgument(f"fn must be callable, got fn={fn!r} from Action.rewrite()")
        return Action("rewrite", fn=fn)

    @staticmethod
    def rewrite_payload(fn: Callable[[bytes], bytes]) -> "Action":
        """Replace the TCP payload by ``fn(payload)``; lengths and checksums
        fixed (a different length desynchronises the sequence space: the
        peers will notice, as they would on a real wire)."""
        if not callable(fn):
            raise InvalidArgument(f"fn must be callable, got fn={fn!r} from Action.rewrite_payload()")
        return Action("rewrite", fn=fn, on_payload=True)


Action.accept = Action("accept")
Action.drop = Action("drop")
_BY_NAME = {"accept": Action.accept, "drop": Action.drop}


def _action(value: Any, where: str) -> Action:
    if isinstance(value, Action):
        return value
    if isinstance(value, str) and value in _BY_NAME:
        return _BY_NAME[value]
    if value == "duplicate":
        return Action.duplicate()
    if value == "reorder":
        return Action.reorder()
    raise InvalidArgument(
        f"action must be an Action (Action.accept, .drop, .delay(s), .duplicate(n), .reorder(), "
        f".rewrite(fn), .rewrite_payload(fn)) or one of 'accept', 'drop', 'duplicate', "
        f"'reorder', got action={value!r} ({type(value).__name__}) from {where}")


class LogEntry:
    """(time, summary, action) of one packet an engine acted on."""

    __slots__ = ("t", "packet", "action")

    def __init__(self, t: float, packet: Any, action: Action):
        self.t, self.packet, self.action = t, packet, action

    @property
    def summary(self) -> str:
        p = self.packet
        return p.summary if isinstance(p, TcpPacket) else p.summary()

    def __iter__(self):
        return iter((self.t, self.summary, repr(self.action)))

    def __repr__(self) -> str:
        return f"<{self.t:.6f} {self.summary} -> {self.action!r}>"


# --- validation -------------------------------------------------------------------

def check_count(count: Any, where: str, *, name: str = "count") -> int | None:
    if count is None:
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidArgument(f"{name} must be an int >= 1, or None for every packet, got "
                              f"{name}={count!r} ({type(count).__name__}) from {where}")
    return count


def check_positive(n: Any, where: str, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgument(f"{name} must be an int >= 1, got {name}={n!r} "
                              f"({type(n).__name__}) from {where}")
    return n


def check_direction(direction: Any, where: str, allowed=DIRECTIONS) -> str:
    if direction not in allowed:
        raise InvalidArgument(f"direction must be one of {allowed}, got direction={direction!r} "
                              f"from {where}")
    return direction


def check_connection(conn: Any, where: str, name: str = "conn"):
    """A connected, open harness Socket (the fault matches its 4-tuple)."""
    from .._sockets import check_socket
    return check_socket(conn, where, name, connected=True)


# --- the flows a fault queues -------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    """One prefilter rule: a direction of the target's flow, optionally
    narrowed by TCP flags, a maximum packet length (IPv4 bytes; IPv6 gets 20
    more for its longer header), or exact ports (for a host target:
    ``sport``/``dport`` instead of "either port is ``port``")."""

    direction: str
    tcp_flags: FlagFilter | None = None
    max_len: int | None = None
    sport: int | None = None
    dport: int | None = None


class _Target:
    """Where the rules go and what they match: a connection or a host+port."""

    def __init__(self, target: Any, port: Any, where: str):
        from .._host import Host
        from .._sockets import Socket, check_port
        self.conn = None
        if isinstance(target, Socket):
            check_connection(target, where, "target")
            if port is not None:
                raise InvalidArgument(f"port must be None when the target is a connection (its "
                                      f"4-tuple is matched), got port={port!r} from {where}")
            self.conn, self.host, self.families, self.port = target, target.host, (target.family,), None
        elif isinstance(target, Host):
            if port is None:
                raise InvalidArgument(f"port must be given when the target is a host (a fault "
                                      f"queues only one flow), got port=None from {where}")
            try:
                self.port = check_port(port)
            except InvalidArgument:
                raise InvalidArgument(f"port must be an int in 1..65535, got port={port!r} "
                                      f"from {where}") from None
            self.host, self.families = target, tuple(f for f, a in ((4, target.v4), (6, target.v6)) if a)
        else:
            raise InvalidArgument(f"target must be a connected Socket or a Host, got "
                                  f"{target!r} ({type(target).__name__}) from {where}")

    def match(self, flow: Flow, direction: str, family: int) -> str:
        """The iptables match for one direction of a flow, without the chain
        and target."""
        parts = ["-p", "tcp"]
        tcp: list[str] = []
        if self.conn is not None:
            (la, lp), (ra, rp) = self.conn.local, self.conn.remote
            (sa, sp), (da, dp) = ((ra, rp), (la, lp)) if direction == "in" else ((la, lp), (ra, rp))
            parts += ["-s", sa, "-d", da]
            tcp += ["--sport", str(sp), "--dport", str(dp)]
        elif flow.sport is not None or flow.dport is not None:
            tcp += ["--sport", str(flow.sport)] if flow.sport is not None else []
            tcp += ["--dport", str(flow.dport)] if flow.dport is not None else []
        if flow.tcp_flags is not None:
            tcp += flow.tcp_flags.iptables()
        if tcp:
            parts += ["-m", "tcp", *tcp]
        if self.conn is None and flow.sport is None and flow.dport is None:
            parts += ["-m", "multiport", "--ports", str(self.port)]
        if flow.max_len is not None:
            parts += ["-m", "length", "--length", f"0:{flow.max_len + (20 if family == 6 else 0)}"]
        parts += ["-m", "mark", "!", "--mark", hex(MARK)]
        return " ".join(parts)


# --- the queue ---------------------------------------------------------------------

def _open_queue(host) -> NfQueue:
    """Bind the lowest free queue number of the namespace, from a netlink
    socket created inside it."""
    used = _iptables.tables(host).queues
    last: Exception | None = None
    for num in range(QUEUE_BASE, QUEUE_BASE + 256):
        if num in used:
            continue
        sock = _netns.socket_in(host.ns_fd, socket.AF_NETLINK, socket.SOCK_RAW,
                                _nfqueue.NETLINK_NETFILTER)
        try:
            q = NfQueue(num, sock=sock, max_len=MAX_LEN)
        except NfQueueError as exc:
            last = exc
            if exc.code in (errno.EPERM, errno.EBUSY):  # bound by someone else
                continue
            raise FaultError(f"cannot bind NFQUEUE {num} in host {host.name}: {exc}",
                             netns=host.netns, call="nfnetlink_queue bind", errno=exc.code) from exc
        used.add(num)
        return q
    raise FaultError(f"no free NFQUEUE number in {QUEUE_BASE}..{QUEUE_BASE + 255} in host "
                     f"{host.name}", netns=host.netns, call="nfnetlink_queue bind") from last


SO_TIMESTAMPNS = 35  # asm-generic/socket.h (Python's socket module lacks it)
STAMP_TRUSTED = 60.0  # s: an older arrival stamp is not one (see PacketFault._arrival)


def _stamp_socket(host) -> socket.socket | None:
    """A socket that asks the kernel to timestamp what it receives, held
    while an engine runs.  Receive timestamps are one switch for the whole
    kernel (net_enable_timestamp(), as tcpdump or any SO_TIMESTAMP user
    turns on, off again with the last such socket); with it on, a queued
    packet carries the time it arrived (NFQA_TIMESTAMP), which the engine's
    delays count from.  The socket sends and receives nothing.  None where
    the option is refused: delays then count from the read."""
    s = _netns.socket_in(host.ns_fd, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        s.close()
        return None
    return s


# --- the engine --------------------------------------------------------------------

class PacketFault(Fault):
    """The NFQUEUE engine as a fault.  Build with ``intercept()`` (or the
    helpers built on it); subclasses pass ``flows`` and ``decide``.

    ``counts``: seen (queued by the rules), matched (the predicate chose an
    action), accepted, dropped, delayed, duplicated, reordered, rewritten,
    errors.  ``log``: a LogEntry per matched packet (the first 10000).
    """

    label = "packets"
    #: queue reads per wakeup of the reader loop (a subclass may drain more)
    READS_PER_WAKEUP = 1

    def __init__(self, target: Any, *, flows: list[Flow], decide: Callable[[Any], Action | None],
                 port: int | None = None, scapy: bool = False, where: str = "intercept()",
                 label: str | None = None):
        # a Socket or a Host (+ port), validated; or a ready target object with
        # .host, .families, .conn, .port and .match() (netem's whole link)
        self._target = target if hasattr(target, "match") else _Target(target, port, where)
        super().__init__(self._target.host.lab)
        self.label = label or f"{where.rstrip('()')} on {target!r}"
        self.host = self._target.host
        self.flows = tuple(flows)
        self._decide = decide
        self._scapy = bool(scapy)
        self._parse = None
        self.queue_num: int | None = None
        self.rules: dict[int, list[str]] = {}    # family -> rule specs installed
        self._q: NfQueue | None = None
        self._generation: int | None = None
        self._installed: list[int] = []
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None
        self._counts = dict.fromkeys(("seen", "matched", "accepted", "dropped", "delayed",
                                      "duplicated", "reordered", "rewritten", "errors"), 0)
        self._log: list[LogEntry] = []
        self._errors: list[BaseException] = []
        self._heap: list[list] = []              # [due_monotonic, order, id, payload, live]
        # the most a held packet left after it was due: the engine's own
        # wake-up lateness (a loaded machine's scheduling), for a test's bound
        self.late = 0.0
        self._order = itertools.count()
        self._held: list | None = None           # the reorder entry waiting for a successor
        self._alarm = _shared.Alarm()
        self._raw: dict[int, socket.socket] = {}
        self._stamps: socket.socket | None = None
        self._offset: float | None = None   # monotonic - realtime (_read_offset)
        self._pending: list[tuple] = []          # verdicts of the batch being handled

    # --- observation ------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    @property
    def log(self) -> tuple[LogEntry, ...]:
        return tuple(self._log)

    def __repr__(self) -> str:
        return f"<{self.label} q={self.queue_num} {'active' if self.active else 'inactive'} {self._counts}>"

    # --- apply / revert ---------------------------------------------------------
    async def _apply(self) -> None:
        if self._target.conn is not None and self._target.conn.closed:
            raise InvalidArgument(f"{self._target.conn!r} was closed before {self.label} was applied")
        if self._scapy:
            from .. import _scapy as _packets  # the only scapy importer; imported only when asked
            self._parse = _packets
        host = self.host
        self._generation = host.generation   # the namespace its rules and queue live in
        self._q = _open_queue(host)
        self.queue_num = self._q.queue_num
        try:
            self._stamps = _stamp_socket(host)
            self._read_offset()
            self._done = trio.Event()
            try:
                await self.lab.context.start(self._run)
            except BaseException:
                self._done = None  # the loop never ran: nothing to wait for
                raise
            async with _iptables.tables(host).lock:
                for family in self._target.families:
                    specs = self._specs(family)
                    await _iptables.acquire(host, family, "mangle")
                    try:
                        await self._restore(family, "-I", specs)
                    except BaseException:
                        with trio.CancelScope(shield=True):
                            await _iptables.release(host, family, "mangle")
                        raise
                    self.rules[family] = specs
                    self._installed.append(family)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._teardown()
            raise

    def _specs(self, family: int) -> list[str]:
        """The mangle rules (chain and match, without -I/-D) that queue the flows."""
        return [f"{_CHAIN[d]} {self._target.match(fl, d, family)} -m comment --comment "
                f"{owner_tag()}-q{self.queue_num} -j NFQUEUE --queue-num {self.queue_num} "
                f"--queue-bypass"
                for fl in self.flows for d in (("in", "out") if fl.direction == "both"
                                               else (fl.direction,))]

    async def _restore(self, family: int, op: str, specs: list[str]) -> None:
        text = "*mangle\n" + "".join(f"{op} {s}\n" for s in specs) + "COMMIT\n"
        await _iptables.restore(self.host, family, text)

    async def _revert(self) -> None:
        await self._teardown()
        if self._errors:
            first = self._errors[0]
            raise FaultError(f"{self.label}: the predicate or action raised on "
                             f"{len(self._errors)} packet(s) (accepted unchanged); first: "
                             f"{type(first).__name__}: {first}") from first

    async def _teardown(self) -> None:
        """Rules out first (nothing new is queued), then the loop stops and
        the held and still-queued packets are accepted, and only then the
        mangle table goes: deleting it would drop every packet still in the
        queue (they would arrive as retransmissions instead).  After
        power_on gave the host a new namespace, the rules, the table and the
        queue's binding died with the old one: only the loop is stopped."""
        failure: BaseException | None = None
        removed = []
        if self.host.generation != self._generation:
            self._installed.clear()
        async with _iptables.tables(self.host).lock:
            while self._installed:
                family = self._installed.pop()
                try:
                    await self._restore(family, "-D", self.rules[family])   # atomic
                    removed.append(family)
                except BaseException as exc:  # noqa: BLE001 - stop the loop anyway
                    failure = failure or exc
        if self._scope is not None:
            self._scope.cancel()
        if self._done is not None:
            await self._done.wait()
        self._close_queue()
        async with _iptables.tables(self.host).lock:
            for family in removed:
                try:
                    await _iptables.release(self.host, family, "mangle")
                except BaseException as exc:  # noqa: BLE001
                    failure = failure or exc
        if failure is not None:
            raise failure

    def _close_queue(self) -> None:
        q = self._q
        if q is None:
            return
        self._q = None
        try:
            if not q.closed:
                self._let_go(q)
        finally:
            q.close()
            if self.host.generation == self._generation:
                _iptables.tables(self.host).queues.discard(q.queue_num)
            for s in self._raw.values():
                s.close()
            self._raw.clear()
            if self._stamps is not None:
                self._stamps.close()
                self._stamps = None

    def _arrival(self, p: _nfqueue.Packet) -> float:
        """When the kernel queued ``p``, on the monotonic clock: its skb
        timestamp (CLOCK_REALTIME, taken as the packet was received; see
        _stamp_socket) where the kernel set one, never later than this
        process read it; else the read time.  A due time counted from here
        does not grow by how late this process got to the queue."""
        if p.stamp:
            t = p.stamp + self._offset
            if p.timestamp - STAMP_TRUSTED < t < p.timestamp:   # else a stepped clock, or
                return t                                        # a departure time (EDT)
        return p.timestamp

    def _read_offset(self) -> None:
        """CLOCK_MONOTONIC - CLOCK_REALTIME, for _arrival: from a realtime
        reading between two monotonic ones close together (a reading the
        scheduler cut in two would shift the due times of a whole batch
        against its neighbours', and reorder packets: seen under load as
        spurious retransmissions).  Kept until a tight reading comes."""
        offset, width = _tap.realtime_offset(3)
        if width < _tap.OFFSET_TIGHT or self._offset is None:
            self._offset = offset

    def _let_go(self, q) -> None:
        """At undo: the held packets first, in their order, then what is
        still queued, each with ``_last_verdict``."""
        for entry in sorted(self._heap, key=lambda e: e[0]):
            if entry[4]:
                entry[4] = False
                q.verdict(entry[2], NF_ACCEPT, entry[3])
        self._heap.clear()
        self._held = None
        while True:
            try:
                pkts = q.receive()
            except NfQueueError:
                continue
            if not pkts:
                break
            q.verdict_many([(p.id, self._last_verdict(p)) for p in pkts])
            self._counts["seen"] += len(pkts)
            self._counts["accepted"] += len(pkts)

    def _last_verdict(self, p) -> int:
        """The verdict of a packet still queued at undo: it passes."""
        return NF_ACCEPT

    # --- the verdict loop -------------------------------------------------------
    async def _run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as self._scope:
                task_status.started()
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._timer_loop)
                        await self._reader_loop()
                except Exception as exc:  # noqa: BLE001 - never take the lab down
                    self._errors.append(exc)
                    self._close_queue()    # unbound: --queue-bypass lets packets through
        finally:
            self._done.set()

    async def _reader_loop(self) -> None:
        q = self._q
        fd = q.fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            for _ in range(self.READS_PER_WAKEUP):
                try:
                    pkts = q.receive()
                except NfQueueError as exc:
                    self._errors.append(exc)
                    break
                if not pkts:
                    break
                self._read_offset()
                self._catch_up(time.monotonic())
                for p in pkts:
                    self._handle(p)
                if self._pending:
                    q.verdict_many(self._pending)
                    self._pending = []

    def _handle(self, p: _nfqueue.Packet) -> None:
        c = self._counts
        c["seen"] += 1
        v = parse_tcp(p.payload)
        if v is None:
            c["accepted"] += 1
            self._pending.append((p.id, NF_ACCEPT))
            return
        held, self._held = self._held, None
        pkt = (self._parse.from_bytes(p.payload) if self._parse is not None else
               TcpPacket(p.timestamp, _HOOK_DIRECTION.get(p.hook, "?"), p.payload, v))
        try:
            act = self._decide(pkt)
            if act is not None and not isinstance(act, Action):
                raise InvalidArgument(f"decide() must return an Action or None, got {act!r}")
        except Exception as exc:  # noqa: BLE001 - reported at undo
            self._errors.append(exc)
            c["errors"] += 1
            act = None
        if act is None or act.kind == "accept":
            if act is not None:
                self._matched(p, pkt, act)
            c["accepted"] += 1
            self._pending.append((p.id, NF_ACCEPT))
        else:
            self._matched(p, pkt, act)
            self._act(p, pkt, act)
        if held is not None and held[4]:     # "until the next passes": right after it
            held[4] = False
            self._pending.append((held[2], NF_ACCEPT))

    def _matched(self, p, pkt, act: Action) -> None:
        self._counts["matched"] += 1
        if len(self._log) < LOG_MAX:
            self._log.append(LogEntry(p.timestamp, pkt, act))

    def _act(self, p: _nfqueue.Packet, pkt: Any, act: Action) -> None:
        c, kind = self._counts, act.kind
        if kind == "drop":
            c["dropped"] += 1
            self._pending.append((p.id, NF_DROP))
        elif kind == "delay":
            c["delayed"] += 1
            self._hold(self._arrival(p) + act.seconds, p.id)
        elif kind == "reorder":
            c["reordered"] += 1
            self._held = self._hold(self._arrival(p) + act.seconds, p.id)
        elif kind == "duplicate":
            c["duplicated"] += 1
            self._pending.append((p.id, NF_ACCEPT))
            self._q.verdict_many(self._pending)   # the original first, then its copies
            self._pending = []
            self._inject(p.payload, act.n)
        elif kind == "rewrite":
            c["rewritten"] += 1
            self._pending.append((p.id, NF_ACCEPT, self._rewritten(p.payload, pkt, act)))

    def _rewritten(self, raw: bytes, pkt: Any, act: Action) -> bytes:
        if act.on_payload:
            v = parse_tcp(raw)
            new = act.fn(raw[v.data_offset:v.data_offset + v.payload_len])
            if not isinstance(new, (bytes, bytearray)):
                raise InvalidArgument(f"rewrite_payload fn must return bytes, got {type(new).__name__}")
            out = raw[:v.data_offset] + bytes(new)
        elif self._parse is not None:
            out = self._parse.to_bytes(act.fn(pkt))
        else:
            out = act.fn(raw)
            if not isinstance(out, (bytes, bytearray)):
                raise InvalidArgument(f"rewrite fn must return bytes, got {type(out).__name__}")
        return fix_checksums(bytes(out))

    def _hold(self, due: float, pid: int) -> list:
        entry = [due, next(self._order), pid, None, True]
        heapq.heappush(self._heap, entry)
        self._alarm.ring()
        return entry

    async def _timer_loop(self) -> None:
        while True:
            while self._heap and not self._heap[0][4]:
                heapq.heappop(self._heap)
            await self._alarm.sleep(self._heap)
            self._release_due(time.monotonic())

    def _release_due(self, now: float) -> None:
        out = []
        while self._heap and (not self._heap[0][4] or self._heap[0][0] <= now):
            entry = heapq.heappop(self._heap)
            if entry[4]:
                entry[4] = False
                self.late = max(self.late, now - entry[0])
                if entry is self._held:
                    self._held = None
                out.append((entry[2], NF_ACCEPT))
        if out:
            self._release(out)

    def _catch_up(self, now: float) -> None:
        """Before a batch is handled: what is already due leaves first.  A
        packet of the batch that is due too (this process read it late)
        goes at once, and must not overtake one due before it that waits
        for the timer loop's turn: netem's queue keeps a constant delay in
        order, and a reordered burst is SACK reordering and spurious
        retransmissions to TCP."""
        self._release_due(now)

    def _release(self, verdicts: list[tuple[int, int]]) -> None:
        """Accept held packets that are due (one netlink message)."""
        self._q.verdict_many(verdicts)

    def _inject(self, raw: bytes, n: int) -> None:
        family = raw[0] >> 4
        s = self._raw.get(family)
        if s is None:
            af = socket.AF_INET if family == 4 else socket.AF_INET6
            # IPPROTO_RAW: the header is ours (IP_HDRINCL; implied for IPv6 too)
            s = _netns.socket_in(self.host.ns_fd, af, socket.SOCK_RAW, socket.IPPROTO_RAW)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
            s.setblocking(False)
            self._raw[family] = s
        dst = socket.inet_ntop(socket.AF_INET, raw[16:20]) if family == 4 else \
            socket.inet_ntop(socket.AF_INET6, raw[24:40])
        for _ in range(n):
            s.sendto(raw, (dst, 0))


# --- constructors ------------------------------------------------------------------

def intercept(target: Any, *, direction: str = "both", port: int | None = None,
            tcp_flags: str | None = None,
            when: Callable[[Any], Any] | None = None, action: Any = "drop",
            count: int | None = None, skip: int = 0,
            decide: Callable[[Any], Action | None] | None = None,
            scapy: bool = False) -> PacketFault:
    """A packet fault on one flow of ``target``: a connected Socket (its
    4-tuple, in its host) or a Host with ``port`` (either end's port).

    Packets the rules queue (``direction`` "in", "out" or "both"; optional
    ``tcp_flags`` prefilter in the spelling of ``drop()``: "SYN,ACK" (exactly
    these among SYN, ACK, FIN, RST) or "FIN/FIN" (FIN set)) are handed to
    ``when(pkt)`` (a TcpPacket, or a scapy packet with ``scapy=True``); of
    those it selects, the first ``skip`` pass, the next ``count`` (None: all)
    get ``action``, the rest pass.  ``decide(pkt) -> Action | None`` replaces
    when/action/count/skip for stateful faults (None: accept, unlogged).
    """
    where = "intercept()"
    check_direction(direction, where)
    flags = None if tcp_flags is None else flag_filter(tcp_flags, where)
    if not isinstance(scapy, bool):
        raise InvalidArgument(f"scapy must be True or False, got scapy={scapy!r} from {where}")
    if decide is not None:
        if not callable(decide):
            raise InvalidArgument(f"decide must be callable, got decide={decide!r} from {where}")
        if when is not None or count is not None or skip or action != "drop":
            raise InvalidArgument(f"decide replaces when/action/count/skip: give one or the "
                                  f"other, got decide and when={when!r}, action={action!r}, "
                                  f"count={count!r}, skip={skip!r} from {where}")
        chooser = decide
    else:
        chooser = _shared.chooser(when, _action(action, where), check_count(count, where),
                                  _shared.check_skip(skip, where), where)
    return PacketFault(target, flows=[Flow(direction, flags)], decide=chooser, port=port,
                       scapy=scapy, where=where)


def drop_first(target: Any, n: int = 1, *, when: Callable[[Any], Any] | None = None,
               direction: str = "both", port: int | None = None,
               tcp_flags: str | None = None) -> PacketFault:
    """Drop the first ``n`` packets of the flow that ``when`` selects."""
    check_positive(n, "drop_first()", "n")
    return intercept(target, direction=direction, port=port, tcp_flags=tcp_flags, when=when,
                   action="drop", count=n)


def drop_nth(target: Any, n: int, *, when: Callable[[Any], Any] | None = None,
             direction: str = "both", port: int | None = None,
             tcp_flags: str | None = None) -> PacketFault:
    """Drop only the ``n``-th packet (1-based) of the flow that ``when`` selects."""
    check_positive(n, "drop_nth()", "n")
    return intercept(target, direction=direction, port=port, tcp_flags=tcp_flags, when=when,
                   action="drop", count=1, skip=n - 1)


def packets(*args, **kwargs) -> PacketFault:
    """Deprecated name of ``intercept()`` (``cap.packets()`` lists captured
    segments: one name, one meaning)."""
    warnings.warn("faults.packets() is now faults.intercept()", DeprecationWarning,
                  stacklevel=2)
    return intercept(*args, **kwargs)
