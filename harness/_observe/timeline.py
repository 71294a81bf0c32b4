"""The kernel timeline of a lab: tracepoints, inet_diag observations and the
test's own socket calls, in one order.

Sources:
- sock:inet_sock_set_state (every state change but one: TIME_WAIT, because
  the kernel hands the socket to a timewait socket at FIN_WAIT2 -> CLOSE;
  tcp_time_wait() in net/ipv4/tcp_minisocks.c),
- tcp:tcp_send_reset (with its sk_rst_reason), tcp:tcp_receive_reset,
  sock:inet_sk_error_report (with the errno), tcp:tcp_retransmit_skb and
  tcp:tcp_retransmit_synack,
- inet_diag snapshots the harness takes (the only witness of TIME_WAIT and of
  the orphaned FIN_WAIT2 that also lives as a timewait socket),
- the outcome of each socket call the test makes,
- the failing socket calls (syscall exits, and getsockopt(SO_ERROR) handing
  over an error) of every process the lab started and of its descendants,
  with the kernel's pid, its ancestors and its host (harness._tracer).

``states(endpoint)`` merges the first two: a trace "X -> CLOSE" that inet_diag
later still saw as a timewait socket was a handoff, not a close.
"""

from __future__ import annotations

import errno as _errno
import time
from dataclasses import dataclass, field
from typing import Callable

from .. import _check
from ..errors import InvalidArgument, ObservationTimeout
from .states import canonical

Addr = tuple[str, int]

KINDS = ("state", "rst_sent", "rst_received", "error", "retransmit", "synack_retransmit",
         "observed", "call", "syscall")
NOWHERE = ("", 0)
_TRACE_KIND = {"inet_sock_set_state": "state", "tcp_send_reset": "rst_sent",
               "tcp_receive_reset": "rst_received", "inet_sk_error_report": "error",
               "tcp_retransmit_skb": "retransmit", "tcp_retransmit_synack": "synack_retransmit"}
_TIMEWAIT_FROM = {"FIN_WAIT2", "CLOSING", "FIN_WAIT1", "LAST_ACK"}


@dataclass(frozen=True)
class Event:
    """One thing that happened.  ``local``/``remote`` are from the point of
    view of the socket concerned (for rst_sent: the sender's)."""

    t: float
    kind: str
    local: Addr
    remote: Addr
    old: str | None = None
    new: str | None = None
    reason: str | None = None     # rst_sent: the kernel's sk_rst_reason
    errno: str | None = None      # error: the errno reported; retransmit: why it failed
    source: str = "trace"         # trace | diag | call
    host: str | None = None       # known for diag, call and syscall events
    detail: str | None = None     # call/syscall: what was called
    pid: int | None = None        # syscall: the process (the kernel's pid)
    ancestors: tuple = ()         # syscall: its ancestors' pids up to the process the lab started

    def __repr__(self) -> str:
        what = {"state": f"{self.old}->{self.new}", "rst_sent": f"RST sent ({self.reason})",
                "error": f"error {self.errno}", "observed": f"observed {self.new}",
                "call": f"{self.detail}"}.get(self.kind, self.kind)
        if self.kind == "syscall":
            what = f"{self.detail}({self.reason})" if self.reason else f"{self.detail}()"
            return f"<{self.t:.6f} {self.host} pid {self.pid} {what} -> {self.errno}>"
        return f"<{self.t:.6f} {self.local[0]}:{self.local[1]}>{self.remote[0]}:{self.remote[1]} {what}>"


def event_from_trace(raw) -> Event | None:
    kind = _TRACE_KIND.get(raw.name)
    if kind is None:
        return None
    f = raw.fields
    try:
        local, remote = (f["saddr"], int(f["sport"])), (f["daddr"], int(f["dport"]))
    except (KeyError, TypeError, ValueError):
        return None
    # inet_sk_error_report's error; tcp_retransmit_skb's err (the transmit
    # attempt failed: e.g. an earlier copy still queued, or dropped on the way out)
    err = f.get("error", f.get("err"))
    if err == 0:
        err = None
    return Event(t=raw.t, kind=kind, local=local, remote=remote,
                 old=f.get("oldstate") or (f.get("state") if kind != "state" else None),
                 new=f.get("newstate"), reason=f.get("reason"),
                 errno=_errno.errorcode.get(abs(err), str(err)) if isinstance(err, int) else None)


class Condition:
    """A predicate over events, with a name for error messages."""

    def __init__(self, description: str, test: Callable[[Event], bool]):
        self.description, self._test = description, test

    def __call__(self, event: Event) -> bool:
        return self._test(event)

    def __repr__(self) -> str:
        return self.description


def _on(ep) -> Callable[[Event], bool]:
    """Events of the endpoint's 4-tuple (see Timeline._syn_sent for the one
    event that carries no source port)."""
    local, remote = ep.local, ep.remote
    return lambda e: e.local == local and e.remote == remote


def rst_received(ep) -> Condition:
    on = _on(ep)
    return Condition(f"RST received by {ep}", lambda e: e.kind == "rst_received" and on(e))


def rst_sent(ep, reason: str | None = None) -> Condition:
    on = _on(ep)
    return Condition(f"RST sent by {ep}" + (f" with reason {reason}" if reason else ""),
                     lambda e: e.kind == "rst_sent" and on(e) and (reason is None or e.reason == reason))


def error_reported(ep, errno: str | None = None) -> Condition:
    on = _on(ep)
    return Condition(f"error {errno or ''} reported to {ep}",
                     lambda e: e.kind == "error" and on(e) and (errno is None or e.errno == errno))


def entered(ep, state: str) -> Condition:
    on, st = _on(ep), canonical(state)
    return Condition(f"{ep} entered {st}",
                     lambda e: e.kind in ("state", "observed") and e.new == st and on(e))


def _traced(target) -> tuple[str, Callable[[Event], bool]]:
    """Who a syscall condition is about: a process the lab started (spawned,
    a peer, a container's main process) together with all its descendants,
    or a whole host (every traced process in it)."""
    if hasattr(target, "ns_fd") and hasattr(target, "lab"):  # a Host
        name = target.name
        return f"host {name}", lambda e: e.host == name
    proc = getattr(target, "process", target)  # a Program stands for its process
    if not hasattr(proc, "pid"):
        raise InvalidArgument(f"expected a process (host.spawn(), host.main, a peer) or a "
                              f"host, got {target!r}")

    def mine(e: Event) -> bool:
        pid = getattr(proc, "kernel_pid", None) or proc.pid
        host = getattr(proc, "host", None)
        return (e.pid == pid or pid in e.ancestors) and \
            (host is None or e.host == host.name)
    return f"pid {proc.pid} and its descendants", mine


def syscall_failed(target, call: str | None = None, errno: str | None = None) -> Condition:
    """A socket call that failed in a process the lab started or any of its
    descendants (workers, backends, children of ``sh -c``), or anywhere in a
    host: ``target`` is a Process, ``host.main``, a Program or a Host.  ``call``
    is the name without sys_ (sendto, writev, sendfile, accept4...);
    "getsockopt" also matches a getsockopt(SO_ERROR) that handed the program
    a pending error (its Event has reason "SO_ERROR").  ``errno`` a name."""
    who, mine = _traced(target)
    return Condition(f"{call or 'a socket call'} of {who} failing with {errno or 'any errno'}",
                     lambda e: e.kind == "syscall" and mine(e)
                     and (call is None or e.detail == call) and (errno is None or e.errno == errno))


def retransmitted(ep) -> Condition:
    on = _on(ep)
    return Condition(f"retransmission by {ep}", lambda e: e.kind == "retransmit" and on(e))


@dataclass
class Timeline:
    """Per-lab event log.  ``refresh`` (set by the lab) drains the session's
    trace buffer into every live timeline; ``observe`` snapshots a host."""

    refresh: Callable[[], None] = lambda: None
    observe: Callable[[object], None] = lambda ep: None
    _events: list[Event] = field(default_factory=list)
    _seen: dict = field(default_factory=dict)  # (host, local, remote) -> last diag state

    # --- feeding -------------------------------------------------------
    def add(self, event: Event) -> None:
        self._events.append(event)

    def add_diag(self, snapshot, keys: set | None = None) -> None:
        """Record what an inet_diag snapshot shows that differs from what we
        last saw of each socket, and the sockets that vanished (CLOSED).
        ``keys``: the (local, remote) pairs the snapshot is complete for."""
        host, t = snapshot.host, snapshot.time
        present = set()
        for s in snapshot:
            if s.state == "LISTEN":
                continue
            key = (host, s.local, s.remote)
            present.add(key)
            state = "TIME_WAIT" if s.timer == "time_wait" and s.state == "TIME_WAIT" else s.state
            if self._seen.get(key) != state:
                self._seen[key] = state
                self._events.append(Event(t=t, kind="observed", local=s.local, remote=s.remote,
                                          new=state, source="diag", host=host,
                                          detail="timewait" if s.timer == "time_wait" else None))
        for key in [k for k in self._seen if k[0] == host and k not in present
                    and (keys is None or (k[1], k[2]) in keys)]:
            if self._seen[key] != "CLOSED":
                self._seen[key] = "CLOSED"
                self._events.append(Event(t=t, kind="observed", local=key[1], remote=key[2],
                                          new="CLOSED", source="diag", host=host))

    # --- queries -------------------------------------------------------
    def events(self, ep=None, *, kind: str | None = None, since: float | None = None) -> list[Event]:
        """Events in time order, optionally of one endpoint and one kind."""
        if kind is not None and kind not in KINDS:
            raise InvalidArgument(f"kind must be one of {KINDS}, got {kind!r}")
        self.refresh()
        on = _on(ep) if ep is not None else (lambda e: True)
        # a Socket knows when its connection began; a SocketInfo from a
        # snapshot (a socket some process owns) stands for the whole lab
        start = since if since is not None else getattr(ep, "since", float("-inf"))
        out = [e for e in self._events
               if e.t >= start and on(e) and (kind is None or e.kind == kind)]
        if ep is not None and kind in (None, "state"):
            out += self._syn_sent(ep, start, out)
        out.sort(key=lambda e: e.t)
        return out

    def _syn_sent(self, ep, start: float, own: list[Event]) -> list[Event]:
        """tcp_v4_connect() sets SYN_SENT before inet_hash_connect() picks
        the source port, so that event carries sport 0.  It is this
        connection's if it is the last such event towards the same remote
        between the socket's start and the connection's first own event."""
        if not ep.local:
            return []
        unbound, first = (ep.local[0], 0), min((e.t for e in own), default=float("inf"))
        candidates = [e for e in self._events
                      if e.kind == "state" and e.new == "SYN_SENT" and e.local == unbound
                      and e.remote == ep.remote and start <= e.t <= first]
        return candidates[-1:]

    def states(self, ep) -> list[str]:
        """The endpoint's state sequence, TIME_WAIT included: the tracepoint's
        transitions, corrected by what inet_diag saw (a fresh look is taken
        now)."""
        self.observe(ep)
        evs = [e for e in self.events(ep) if e.kind in ("state", "observed")]
        seq: list[list] = []  # [t, state, source]
        for e in evs:
            if e.kind == "state":
                seq.append([e.t, e.new, "trace", e.old])
                continue
            if e.new in ("TIME_WAIT", "FIN_WAIT2") and e.detail == "timewait":
                # the last trace "X -> CLOSE" before this was the timewait handoff
                for item in reversed(seq):
                    if item[2] == "trace" and item[1] == "CLOSE" and item[3] in _TIMEWAIT_FROM:
                        item[1], item[2] = e.new, "handoff"
                        break
                    if item[2] == "handoff":
                        break
            elif e.new == "CLOSED" and seq and seq[-1][2] == "handoff":
                seq.append([e.t, "CLOSE", "diag", None])
        out: list[str] = []
        for item in seq:
            if not out or out[-1] != item[1]:
                out.append(item[1])
        return out

    def syscalls(self, target=None) -> list[Event]:
        """Failing socket calls of the processes the lab started (and their
        descendants), optionally of one process and its descendants or of
        one host (as syscall_failed)."""
        mine = _traced(target)[1] if target is not None else (lambda e: True)
        return [e for e in self.events(kind="syscall") if mine(e)]

    def count(self, cond: Condition | Callable[[Event], bool], ep=None) -> int:
        return sum(1 for e in self.events(ep) if cond(e))

    async def wait_for(self, cond: Condition | Callable[[Event], bool], *, timeout: float = 5.0,
                       since: float | None = None) -> Event:
        """Wait until an event satisfying ``cond`` is in the timeline."""
        _check.seconds(timeout)
        from .._poll import until
        return await until(
            lambda: next((e for e in self.events(since=since) if cond(e)), None),
            time.monotonic() + timeout, done=lambda e: e is not None, first=0.0005,
            longest=0.02, timeout=lambda _: ObservationTimeout(
                f"no event {cond!r} within {timeout}s; last events: {self._events[-5:]}",
                last=self._events[-5:]))
