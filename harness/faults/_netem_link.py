"""The NFQUEUE fallback of faults.netem: netem's verdicts, in this process,
on every TCP packet crossing a host's eth0 (or the part of it a peer or a
port selects).  faults/_netem.py holds the parameters and the model; this is
where packets wait.

In: what the host receives.  mangle PREROUTING ``-i eth0`` queues every
packet, and a delayed one waits in the kernel's queue for its verdict.  That
costs the host nothing: ip_rcv_core() orphaned it before the hook.  When
due, each leaves with a verdict of its own (LinkEngine._release tells why).

Out: what the host sends cannot wait in the queue.  Until its verdict a
queued skb still counts in its socket's sk_wmem_alloc, and
tcp_small_queue_check() lets only about a millisecond of data at the pacing
rate (at least two skbs) wait below TCP: each packet then waits for the
engine to read the ones before it, and the sender's rate follows this
process's wake-up latency instead of the link.  netem_enqueue() orphans a
delayed skb (skb_orphan_partial()) for the same reason.  Issue 11: holding
delayed packets kept 1 MB at delay 50 ms at 9-17 s; answering each with an
immediate NF_DROP and sending a copy when due still left the sender's way
out behind the receiver's way in, the more so the busier the machine (with
3 ms of engine latency per wake-up, 1.35x slower under BBR).  So the
original is let go in the kernel, in the sender's own context, and only a
copy owned by no socket reaches the queue::

    mangle POSTROUTING -o eth0 [-d peer] -p tcp [ports] ! mark 0x4649 -j fih<pid>-n<q>
      fih<pid>-n<q>: MARK 0x4649; TEE --gateway 127.0.0.1 (::1);
                     NFQUEUE --queue-num <a number nobody binds>
    mangle PREROUTING -i lo [-d peer] -p tcp [ports] mark 0x4649
                      addrtype ! --dst-type LOCAL -j NFQUEUE --queue-num <q>

TEE (nf_dup_ipv4(), nf_dup_ipv6()) sends a pskb_copy() of the packet, owned
by no socket, through lo; it comes back in at PREROUTING and is queued like
any packet (MSS-sized segments, checksums completed).  The original then
meets a queue nobody has bound: without ``--queue-bypass``, nf_queue() frees
it and returns success.  (DROP would not do: NF_DROP on the way out is
-EPERM to TCP, which keeps the segment as never sent and retries it from the
zero-window-probe timer.)  Freeing it releases its socket's TSQ budget at
once, as netem does.  The engine then answers the copy with NF_DROP and
sends its bytes from a raw socket when the model says (at once, later, or
never).  The mark, set before TEE, makes the copy invisible to the host's
other harness rules on its way through lo (every harness rule skips 0x4649;
firewall faults never match lo), and tells it apart from the engine's own
packets to the host (an inbound duplicate enters through lo too, to a local
address).  The copy is untracked (conntrack never sees it), but the host's
own rules in OUTPUT and POSTROUTING see it leave through lo: a host whose
firewall drops untracked packets or everything on lo would lose it.

Should the engine's loop die (an error it cannot go on after; undo then
reports it), what the host receives passes (``--queue-bypass``), but what
it sends is lost until undo: its original is already let go, and its copy
meets an unbound queue.

Undo, in this order: every packet passes from now on (a copy read now is
sent at once); the copies still waiting for their time are sent at once, in
order; the rules that feed the queue go (atomically, per family); the loop
stops; held packets are accepted and what is still queued passes (a copy
from lo is sent, the rest accepted); the queue is unbound; and only then
the lo rule and the chain go, so that a copy made in the instant the
POSTROUTING rule went still meets a rule that drops it (it would otherwise
reach routing, which answers a non-local packet from lo with an ICMP host
unreachable to the host itself).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import random
import socket
import time

import trio

from .. import _iptables, _netns, _nfqueue
from .._names import owner_tag
from .._nfqueue import NF_ACCEPT, NF_DROP, NfQueue, NfQueueError
from ..errors import FaultError
from ._shared import Alarm
from ._packets import MARK, Flow, PacketFault

__all__ = ["LinkEngine", "corrupted"]

ETH_HLEN = 14                 # rate counts frames, as tbf on a veth does
LOOPBACK_IFINDEX = 1          # every namespace's lo (include/net/net_namespace.h)
NF_INET_PRE_ROUTING = 0
TEE_GATEWAY = {4: "127.0.0.1", 6: "::1"}
SINKS = range(65535, 65535 - 16, -1)   # queue numbers tried for the one nobody binds
# A raw socket's skbs count in its sk_wmem_alloc until the receiving host
# orphans them; a burst of copies due at once must not meet EAGAIN.  Upper
# bound of one queued copy's truesize (a 1514-byte frame: ~2.3 KB).
COPY_TRUESIZE = 4096
SO_SNDBUFFORCE = 32             # asm-generic/socket.h (not in Python's socket module)


def corrupted(raw: bytes, rng: random.Random) -> bytes:
    """Flip one random bit of the TCP segment (after the IP header); fix nothing."""
    start = (raw[0] & 0x0F) * 4 if raw[0] >> 4 == 4 else 40
    if len(raw) <= start:
        start = 0
    out = bytearray(raw)
    out[rng.randrange(start, len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


class _LinkTarget:
    """What the engine's rules match: every TCP packet crossing the host's
    eth0 in a direction (duck-types _packets._Target; loopback and the
    engine's own injected copies are never queued)."""

    conn = None
    port = None

    def __init__(self, host, peer=None, port: int | None = None):
        self.host = host
        self.families = tuple(f for f, a in ((4, host.v4), (6, host.v6)) if a)
        self.selectors = (peer, port)
        if peer is not None:  # a peer limits the rules to the families it has
            self.families = tuple(f for f in self.families if _peer_address(peer, f))

    def _selected(self, direction: str, family: int) -> str:
        peer, port = self.selectors
        where = ""
        if peer is not None:  # the other end: source on the way in, destination out
            where += f"{'-s' if direction == 'in' else '-d'} {_peer_address(peer, family)} "
        ports = f"-m multiport --ports {port} " if port is not None else ""
        return f"{where}-p tcp {ports}"

    def match(self, flow: Flow, direction: str, family: int) -> str:
        dev = "-i eth0" if direction == "in" else "-o eth0"
        return f"{dev} {self._selected(direction, family)}-m mark ! --mark {hex(MARK)}"

    def copy_match(self, family: int) -> str:
        """The copies TEE sends back through lo (see the module's docstring)."""
        return (f"-i lo {self._selected('out', family)}-m mark --mark {hex(MARK)} "
                f"-m addrtype ! --dst-type LOCAL")


def _peer_address(peer, family: int) -> str | None:
    """A peer Host's address of that family, or an address string's own."""
    if isinstance(peer, str):
        return peer if (":" in peer) == (family == 6) else None
    return peer.v4 if family == 4 else peer.v6


def _sink(host) -> int:
    """A queue number nobody in the host's namespace has bound (an original
    queued there is freed by nf_queue()); bind-and-release proves it free."""
    last: Exception | None = None
    for num in SINKS:
        sock = _netns.socket_in(host.ns_fd, socket.AF_NETLINK, socket.SOCK_RAW,
                                _nfqueue.NETLINK_NETFILTER)
        try:
            NfQueue(num, sock=sock, max_len=1).close()
            return num
        except NfQueueError as exc:
            last = exc
            if exc.code in (errno.EPERM, errno.EBUSY):   # somebody's
                continue
            raise FaultError(f"cannot probe NFQUEUE {num} in host {host.name}: {exc}",
                             netns=host.netns, call="nfnetlink_queue bind",
                             errno=exc.code) from exc
    raise FaultError(f"no unbound NFQUEUE number in {SINKS[-1]}..{SINKS[0]} in host "
                     f"{host.name} to let sent packets go", netns=host.netns,
                     call="nfnetlink_queue bind") from last


class LinkEngine(PacketFault):
    """The packet engine on a whole link with netem's verdicts: ``models``
    maps "in"/"out" to a _netem._Model (``packet(now, frame_bytes)`` ->
    (original, copy), each None or (send time, corrupt)).  Keeps counts
    but no per-packet log.  ``limit``: netem's, which bounds how many copies
    wait to be sent (the raw sockets' send buffers are sized for them)."""

    def __init__(self, host, direction: str, models: dict, rng: random.Random, label: str,
                 peer=None, port: int | None = None, limit: int = 1000):
        # _handle below replaces the generic engine's decide(): no predicate
        super().__init__(_LinkTarget(host, peer, port), flows=[Flow(direction)], where="netem()",
                         label=label, decide=None)
        self._models, self._rng = models, rng
        self._in = direction in ("in", "both")
        self._out = direction in ("out", "both")
        self._healing = False
        self._sink: int | None = None
        self._sndbuf = max(1 << 20, min(limit * COPY_TRUESIZE, 1 << 30))
        self._copies: list[tuple[float, int, bytes, bool]] = []  # (due, order, raw, original)
        self._copy_order = itertools.count()
        self._copy_alarm = Alarm()
        self._copy_scope: trio.CancelScope | None = None

    # --- rules -------------------------------------------------------------------
    @property
    def _chain(self) -> str:
        return f"{owner_tag()}-n{self.queue_num}"

    def _specs(self, family: int) -> list[str]:
        """What feeds the queue, removed first at undo."""
        t, tag, out = self._target, f"{owner_tag()}-q{self.queue_num}", []
        if self._in:
            out.append(f"PREROUTING {t.match(None, 'in', family)} -m comment --comment {tag} "
                       f"-j NFQUEUE --queue-num {self.queue_num} --queue-bypass")
        if self._out:
            out.append(f"POSTROUTING {t.match(None, 'out', family)} -m comment --comment {tag} "
                       f"-j {self._chain}")
        return out

    def _copy_rule(self, family: int) -> str:
        """Queues TEE's copies; no --queue-bypass: unbound, it drops them."""
        return (f"PREROUTING {self._target.copy_match(family)} -m comment --comment "
                f"{owner_tag()}-q{self.queue_num} -j NFQUEUE --queue-num {self.queue_num}")

    async def _restore(self, family: int, op: str, specs: list[str]) -> None:
        lines = [f"{op} {s}" for s in specs]
        if self._out and op == "-I":
            c = self._chain
            lines = [f":{c} - [0:0]", f"-A {c} -j MARK --set-xmark {hex(MARK)}/0xffffffff",
                     f"-A {c} -j TEE --gateway {TEE_GATEWAY[family]}",
                     f"-A {c} -j NFQUEUE --queue-num {self._sink}",
                     f"-I {self._copy_rule(family)}"] + lines
        await _iptables.restore(self.host, family, "*mangle\n" + "".join(
            ln + "\n" for ln in lines) + "COMMIT\n")

    # --- apply / undo -----------------------------------------------------------
    async def _apply(self) -> None:
        if self._out:
            self._sink = _sink(self.host)
        try:
            for family in self._target.families:
                self._raw[family] = self._raw_socket(family)
            await super()._apply()
        except BaseException:
            for s in self._raw.values():   # (the base closed them if it got that far)
                s.close()
            self._raw.clear()
            raise
        self._copy_scope = trio.CancelScope()
        self.lab.context.start_soon(self._copy_loop, self._copy_scope)

    def _raw_socket(self, family: int) -> socket.socket:
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        s = _netns.socket_in(self.host.ns_fd, af, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, self._sndbuf)
            except PermissionError:   # needs the machine's CAP_NET_ADMIN (a user
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sndbuf)  # namespace)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    async def _teardown(self) -> None:
        # Heal the wire first: from now on every packet passes and no copy is
        # made; the engine's teardown then lets go of what it holds, in due
        # order, before it gives up the mangle table.
        self._healing = True
        if self._copy_scope is not None:
            self._copy_scope.cancel()
        held = sorted(c for c in self._copies if c[3])  # delayed originals: they leave now
        self._copies.clear()
        for _, _, raw, _ in held:
            self._send(raw)
        same = self.host.generation == self._generation  # else they died with it
        copying = list(self._installed) if self._out and same else []
        tables = _iptables.tables(self.host)
        async with tables.lock:
            for family in copying:          # the table outlives the base's release
                await _iptables.acquire(self.host, family, "mangle")
        failure: BaseException | None = None
        try:
            await super()._teardown()
        except BaseException as exc:  # noqa: BLE001 - the lo rules and chain too
            failure = exc
        async with tables.lock:
            for family in copying:
                try:
                    await _iptables.restore(self.host, family, (
                        f"*mangle\n-D {self._copy_rule(family)}\n-F {self._chain}\n"
                        f"-X {self._chain}\nCOMMIT\n"))
                except BaseException as exc:  # noqa: BLE001
                    failure = failure or exc
                finally:
                    await _iptables.release(self.host, family, "mangle")
        if failure is not None:
            raise failure

    def _last_verdict(self, p) -> int:
        """At undo, a copy from lo still queued is sent (its original is
        gone); the rest passes."""
        if self._is_copy(p):
            self._send(p.payload)
            return NF_DROP
        return NF_ACCEPT

    # --- the verdicts ------------------------------------------------------------
    @staticmethod
    def _is_copy(p) -> bool:
        """A copy TEE sent back through lo: something the host sends."""
        return p.hook == NF_INET_PRE_ROUTING and p.indev == LOOPBACK_IFINDEX

    def _handle(self, p) -> None:
        c, now, raw = self._counts, p.timestamp, p.payload
        c["seen"] += 1
        out = self._is_copy(p)
        if self._healing:
            orig, copy = (now, False), None
        else:   # the model's clock is the packet's arrival: not later for a late read
            arrived = self._arrival(p)
            orig, copy = self._models["out" if out else "in"].packet(arrived, len(raw) + ETH_HLEN)
            if orig is not None and arrived < orig[0] < now:   # due before it was read
                self.late = max(self.late, now - orig[0])
        if out:
            self._pending.append((p.id, NF_DROP))   # the copy; its original is gone
            if orig is None:
                c["dropped"] += 1
            else:
                t, bad = orig
                c["rewritten" if bad else "delayed" if t > now else "accepted"] += 1
                self._copy(t, corrupted(raw, self._rng) if bad else raw, now,
                           original=not bad, first=False)
        elif orig is None:
            c["dropped"] += 1
            self._pending.append((p.id, NF_DROP))
        else:
            t, bad = orig
            if not bad and t <= now:
                c["accepted"] += 1
                self._pending.append((p.id, NF_ACCEPT))
            elif not bad:
                c["delayed"] += 1
                self._hold(t, p.id)
            elif t <= now:                         # mangled in place: CHECKSUM_NONE
                c["rewritten"] += 1
                self._pending.append((p.id, NF_ACCEPT, corrupted(raw, self._rng)))
            else:                                  # sent corrupted when due, as a copy
                c["dropped"] += 1
                self._pending.append((p.id, NF_DROP))
                self._copy(t, corrupted(raw, self._rng), now)
        if copy is not None:
            c["duplicated"] += 1
            t, bad = copy
            self._copy(t, corrupted(raw, self._rng) if bad else raw, now, first=not out)

    def _release(self, verdicts: list[tuple[int, int]]) -> None:
        """Held packets that are due leave one verdict (one syscall) each,
        as copies leave one sendto() each.  In one message the kernel would
        hand a whole burst to the receiving socket before its reader can
        run; tcp_rcv_space_adjust() then finds almost all of it still
        queued (it counts what was copied minus what is queued), does not
        grow the receive buffer, and a bulk transfer stays stuck at its
        first windows for RTT after RTT (seen with cubic: 1 MB at delay 50
        ms took 0.42 or 0.75 s on the receiver's way in, one run in two)."""
        verdict = self._q.verdict
        for pid, v in verdicts:
            verdict(pid, v)

    def _send(self, raw: bytes) -> None:
        try:
            self._inject(raw, 1)
        except OSError as exc:   # e.g. ENOBUFS: a copy lost, as on a wire
            self._errors.append(exc)

    def _copy(self, due: float, raw: bytes, now: float, original: bool = False,
              first: bool = True) -> None:
        """Send ``raw`` from the raw socket when due.  ``original``: it
        stands for a packet the host sent, which undo sends at once rather
        than discarding.  ``first``: verdicts given before it go first (an
        inbound duplicate follows its original)."""
        if due <= now:
            if first and self._pending:
                self._q.verdict_many(self._pending)
                self._pending = []
            self._send(raw)
            return
        head = self._copies[0][0] if self._copies else None
        heapq.heappush(self._copies, (due, next(self._copy_order), raw, original))
        # wake the loop only if this copy is due before the one it sleeps for
        if head is None or due < head:
            self._copy_alarm.ring()

    async def _copy_loop(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await self._copy_alarm.sleep(self._copies)
                self._send_due(time.monotonic())

    def _send_due(self, now: float) -> None:
        while self._copies and self._copies[0][0] <= now:
            due, _, raw, _ = heapq.heappop(self._copies)
            self.late = max(self.late, now - due)
            self._send(raw)

    def _catch_up(self, now: float) -> None:
        super()._catch_up(now)   # held packets the host receives
        self._send_due(now)      # copies: what it sends, its duplicates
