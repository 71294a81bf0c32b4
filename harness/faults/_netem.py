"""netem: delay, jitter, loss, duplication, reordering, corruption and a rate
limit on a host's link; tc netem where the kernel has sch_netem, the NFQUEUE
packet engine where it has not.

    async with faults.netem(server, delay=0.1, jitter=0.01, loss=0.02) as f:
        ...                  # what server sends leaves 90-110 ms late, 2 % never
    f.engine                 # "tc" or "nfqueue"

Parameters are seconds, fractions in [0, 1] and bytes per second, never
strings.  ``jitter`` spreads the delay uniformly over [delay - jitter,
delay + jitter] (netem without a distribution table: tabledist() draws
uniformly), so packets can overtake each other, as in netem.  ``reorder`` is
netem's (with gap 1): that fraction of packets leaves at once, the rest gets
the delay; it needs a delay.  ``loss_correlation`` is netem's correlated
random (get_crandom()): next = corr * last + (1 - corr) * uniform, a packet
is lost when next < loss.  Like the kernel's, it does not keep the loss rate:
averaging narrows the distribution around 0.5, so loss=0.3 loses 0.30 of
packets with loss_correlation 0, 0.23 with 0.25, 0.13 with 0.5, 0.03 with
0.75 and 0.001 with 0.9 (tests/test_faults_netem.py checks 0, 0.5 and 0.9).
``limit`` is how many packets the link holds (netem's limit); beyond it
packets are dropped.  ``rate`` counts frame bytes (IP packet + 14 for
Ethernet), as tbf does on a veth.

Where.  ``direction="out"`` impairs what the host sends: the root qdisc of its
eth0.  ``"in"`` impairs what it receives: the root qdisc of the switch port
facing it (``p<n>`` in the lab's switch namespace).  That port's egress *is*
the host's ingress on the wire, so no ifb device or ingress redirect is
needed; every packet to the host crosses it, nothing else does.  ``"both"``
does both, each direction with its own state (two qdiscs, two models).

Engines.  ``engine="auto"`` takes tc when this kernel has every qdisc the
parameters need (sch_netem; sch_tbf for ``rate``; rate alone needs only
tbf, which this machine has), else the NFQUEUE fallback.  ``"tc"`` insists
(Unsupported naming the missing sch_netem or sch_tbf, which the plugin turns
into a skip); ``"nfqueue"`` forces the fallback.

- tc: netem at the root (handle fe01:) through netlink, tbf as its child
  (fe02:, "parent fe01:1") when ``rate`` is also asked, or tbf alone at the
  root when only ``rate`` is.  tbf gets burst max(2 frames, rate/250 s) and a
  queue of ``limit`` frames.  Undo deletes the root qdisc it added (children
  go with it), only if it is still there, so ``tc qdisc show`` is identical
  before and after.  One root qdisc per device: a second netem on the same
  link and direction fails with FaultError (EEXIST).
- nfqueue: every TCP packet crossing the host's eth0 in that direction
  goes to the packet engine (faults/_netem_link.py, on faults.intercept's
  queue), which replays netem_enqueue(): duplicate draw, loss draw (a
  duplicate survives a single loss), then per packet sent: corrupt draw,
  limit, reorder or delay with jitter, then rate as a virtual link clock
  (send = max(arrival + delay, link free) + frame / rate: a serialisation
  queue, no burst).  The copy of a duplicated packet goes through the model
  again (its own loss, delay, corruption; never duplicated), as netem
  re-enqueues it at the root, and is injected from a raw socket when due.
  Corruption flips one random bit of the TCP segment (header or payload,
  never the IP header) and fixes nothing: the packet reaches TCP, whose
  checksum rejects it (Tcp InCsumErrors).  netem flips a bit anywhere in the
  frame's linear head, which may hit the Ethernet or IP header instead.
- what the host receives (mangle PREROUTING ``-i eth0``) waits in the
  kernel's queue for its verdict: ip_rcv_core() has already orphaned it.
  What it sends must not wait there: until its verdict a queued skb counts
  in its socket's sk_wmem_alloc, and tcp_small_queue_check() then lets the
  sender send only as fast as the engine reads the queue (issue 11: 1 MB at
  delay 50 ms took 9-17 s while delayed packets were held, and was still
  8-19 % slower than on the receiver's way in with an NF_DROP verdict at
  once and a copy sent when due).  netem_enqueue() orphans a delayed skb
  for this reason.  So the kernel lets go of it at once: mangle POSTROUTING
  ``-o eth0`` sends a copy owned by no socket back through lo with TEE
  (that copy is what the engine queues, from PREROUTING ``-i lo``) and the
  original to a queue number nobody binds, where nf_queue() frees it and
  returns success to TCP.  The engine sends the copy's bytes from a raw
  socket when the model says.  faults/_netem_link.py tells the details.

Where the fallback differs, by construction.  Only TCP is impaired (UDP,
ICMP, ARP and neighbour discovery pass); the tc engine impairs everything.
Packets are impaired one MSS-sized segment at a time (the queue gets GSO
packets segmented), where netem on a veth sees whole GSO packets: a loss
there takes up to 64 KB at once.  With ``rate``, packets leave in the order
the model scheduled them, so reorder + rate reorders less than netem + tbf.
What the host sends leaves through lo once more as TEE's copy (untracked,
marked 0x4649, which every harness rule skips): the host's own OUTPUT and
POSTROUTING rules see it there, so a host firewall that drops untracked
packets or what goes out through lo would drop it.  At undo the wire heals
first: every packet passes and what is held leaves at once, in order
(before the engine deletes its mangle table, which would make the kernel
drop every packet still queued); copies not yet due are discarded.

Accuracy of the fallback (bench/bench_netem_fallback.py and
tests/test_faults_netem.py, 2-core VM, kernel 6.18, one run each):

- delay: packets leave late by the engine's timer (trio's epoll timeout is
  rounded up to a millisecond) and its read path: added one-way delay for
  1 / 10 / 50 ms asked measured p50 1.26 / 10.64 / 50.74 ms and p99 2.55 /
  11.83 / 53.75 ms; never early.  Round trips with delay=0.05 one way:
  0.0506 to 0.0510 s in a quiet run.  ``f.late`` is the most a packet
  left after it was due once the engine had read it (its loop starved on a
  loaded machine); the tests accept [delay, delay + 20 ms + f.late].  Time a
  packet waits in the queue before the engine reads it is not counted.
  Jitter 20 +- 10 ms: p1 10.9, p50 20.0, p99 31.2 ms.
- loss: the receiving kernel misses exactly the segments the model dropped;
  asked 0.01 / 0.1 / 0.3 over ~2000-2900 segments measured 0.0074 / 0.0975
  / 0.2992 (1.2, 0.4, 0.1 binomial sigma); in the tests 0.3 over ~700
  segments landed in 0.270-0.313 (sigma 0.017) over ten runs.
- rate: bulk goodput 0.955 of the rate at 0.2, 1 and 10 MB/s, which is
  exact (1448 B of payload per 1514 B frame).
- placement (delay 50 ms one way, connection made inside the fault, median
  of 5-9 interleaved runs, under a load average of 8-11 on the 2 cores): 1
  MB took 0.45-0.50 s in every placement (sender out, receiver in, sender
  in, receiver out) with BBR (this machine's default), the slowest 1.03-1.09
  x the fastest (the two placements that delay data, which crosses the
  engine three times as often as ACKs, were the slower ones); with cubic,
  medians 0.46-0.55 s and the slowest 1.03-1.17 x the fastest over three
  runs; 10 KB (one initial window: two round trips) 0.104-0.115 s, the
  slowest 1.04-1.10 x the fastest. Before the kernel let go of what the host
  sends, sender out was 1.08-1.19 x receiver in at this load (1.35 x with 3
  ms of engine latency added per wake-up), and 14.6-17.5 s before delayed
  packets stopped being held. Cubic's single runs spread (0.43-1.2 s in
  every placement, receive-window-limited 13-40 % of the time): a burst that
  reaches the receiver before its reader runs stalls its receive-buffer
  autotuning for a few round trips, which this load makes frequent.
- cost: 12-15 us of this process's CPU per packet in a quiet run (bare
  packet engine 11.5, netem with nothing to do 12.3, loss 13.0, delay 14.6);
  ~540-730 Mbit/s of bulk through it, against several Gbit/s for the
  kernel's veth.  Every packet the host sends now also costs a sendto()
  of its own: at load 7.5-10, netem with nothing to do / loss 0.01 / delay
  1 ms on the way out cost 1.13-1.37 / 1.00-1.51 / 1.03-1.62 x the bare
  engine's CPU per packet (23-50 us) in the same run, over three runs.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import trio

from .. import _features, _netlink
from ..errors import FaultError, InvalidArgument, SetupError, Unsupported
from ._base import Fault
from ._netem_link import LinkEngine

__all__ = ["Netem", "NetemParams", "netem"]

DIRECTIONS = ("out", "in", "both")
ENGINES = ("auto", "tc", "nfqueue")
MAX_SECONDS = 60.0              # netem's 32-bit tick fields hold ~274 s
MAX_RATE = 2**32 - 1            # tbf's 32-bit rate, bytes/s
MAX_LIMIT = 1_000_000
FRAME = 1514                    # a full Ethernet frame at MTU 1500
NETEM_HANDLE = 0xFE010000       # "fe01:"
TBF_HANDLE = 0xFE020000         # "fe02:"
WHERE = "netem()"
COUNTS = ("seen", "lost", "duplicated", "corrupted", "reordered", "delayed", "overlimit")


@dataclass(frozen=True)
class NetemParams:
    """The validated parameters (seconds, fractions, bytes/s, packets)."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    loss_correlation: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    rate: float | None = None
    limit: int = 1000

    @property
    def needs_netem(self) -> bool:
        """Whether the tc engine needs sch_netem (rate alone is tbf's)."""
        return self.rate is None or any((self.delay, self.jitter, self.loss, self.duplicate,
                                         self.reorder, self.corrupt))


# --- validation ----------------------------------------------------------------------

def _number(name: str, value: Any, lo: float, hi: float, what: str, *,
            lo_open: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and
          not math.isnan(value) and (lo < value if lo_open else lo <= value) and value <= hi)
    if not ok:
        hint = " (units are numbers, never strings)" if isinstance(value, str) else ""
        raise InvalidArgument(f"{name} must be {what}{hint}, got {name}={value!r} "
                              f"({type(value).__name__}) from {WHERE}")
    return float(value)


def _params(delay, jitter, loss, loss_correlation, duplicate, reorder, corrupt, rate,
            limit) -> NetemParams:
    secs = f"seconds in [0, {MAX_SECONDS:g}]"
    frac = "a fraction in [0, 1]"
    p = dict(delay=_number("delay", delay, 0, MAX_SECONDS, secs),
             jitter=_number("jitter", jitter, 0, MAX_SECONDS, secs),
             loss=_number("loss", loss, 0, 1, frac),
             loss_correlation=_number("loss_correlation", loss_correlation, 0, 1, frac),
             duplicate=_number("duplicate", duplicate, 0, 1, frac),
             reorder=_number("reorder", reorder, 0, 1, frac),
             corrupt=_number("corrupt", corrupt, 0, 1, frac))
    if rate is not None:
        rate = _number("rate", rate, 0, MAX_RATE, f"bytes per second in (0, {MAX_RATE}], "
                       f"or None for no limit", lo_open=True)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be an int of packets in 1..{MAX_LIMIT}, got "
                              f"limit={limit!r} ({type(limit).__name__}) from {WHERE}")
    for name, why in (("jitter", "netem varies the delay by +-jitter"),
                      ("reorder", "reordered packets are the ones sent without the delay")):
        if p[name] and not p["delay"]:
            raise InvalidArgument(f"{name} needs a delay > 0 ({why}), got {name}={p[name]:g} "
                                  f"with delay=0 from {WHERE}")
    if p["loss_correlation"] and not p["loss"]:
        raise InvalidArgument(f"loss_correlation needs loss > 0, got loss_correlation="
                              f"{p['loss_correlation']:g} with loss=0 from {WHERE}")
    return NetemParams(**p, rate=rate, limit=limit)


def _choose_engine(engine: str, params: NetemParams) -> str:
    """The engine to use, or Unsupported naming what this machine lacks."""
    needed = ([("sch_netem", _features.host_netem)] if params.needs_netem else []) + \
             ([("sch_tbf", _features.host_tbf)] if params.rate is not None else [])
    missing = [] if engine == "nfqueue" else \
        [(module, reason) for module, probe in needed if (reason := probe())]
    if engine == "tc" and missing:
        module, reason = missing[0]
        raise Unsupported(f"netem(engine='tc') needs {module} in this kernel: {reason}")
    if engine == "tc" or (engine == "auto" and not missing):
        return "tc"
    reason = _features.nfqueue()
    if reason:
        lacks = "; ".join(f"no {m}" for m, _ in missing)
        raise Unsupported(f"netem(engine={engine!r}) has no engine: "
                          f"{lacks + ' for tc, and ' if lacks else ''}"
                          f"the NFQUEUE fallback is unavailable: {reason}")
    return "nfqueue"


# --- the fallback's model of netem_enqueue() --------------------------------------------

class _Model:
    """netem's enqueue decisions for one direction (net/sched/sch_netem.c,
    netem_enqueue(), 6.1), in seconds.  ``packet`` returns the fate of the
    packet and of its copy: each None (dropped) or (send time, corrupt)."""

    def __init__(self, params: NetemParams, rng: random.Random):
        self.p, self.rng = params, rng
        self.loss_last = 0.0        # get_crandom()'s state starts at 0
        self.free = 0.0             # when the rate-limited link is free again
        self.held: list[float] = []  # send times of packets still queued (for limit)
        self.counts = dict.fromkeys(COUNTS, 0)

    def _lost(self) -> bool:
        p = self.p
        if not p.loss:
            return False
        u = self.rng.random()
        if p.loss_correlation:     # get_crandom(): (1 - rho) * value + rho * last
            u = p.loss_correlation * self.loss_last + (1.0 - p.loss_correlation) * u
            self.loss_last = u
        if u < p.loss:
            self.counts["lost"] += 1
            return True
        return False

    def packet(self, now: float, size: int):
        p, c = self.p, self.counts
        c["seen"] += 1
        dup = bool(p.duplicate) and self.rng.random() < p.duplicate
        if self._lost():
            if not dup:
                return None, None          # count = 1 + dup - loss = 0
            dup = False                    # two became one
        copy = None
        if dup:
            c["duplicated"] += 1
            # re-enqueued at the root first, duplication off: its own loss,
            # corruption, limit and delay (a lost copy is just no copy)
            copy = None if self._lost() else self._send(now, size)
        return self._send(now, size), copy

    def _send(self, now: float, size: int):
        """One packet enters the queue: corrupt, limit, reorder or delay, rate."""
        p, c, rng = self.p, self.counts, self.rng
        bad = bool(p.corrupt) and rng.random() < p.corrupt
        held = self.held
        while held and held[0] <= now:
            heapq.heappop(held)
        if len(held) >= p.limit:
            c["overlimit"] += 1
            return None
        if p.reorder and rng.random() < p.reorder:
            c["reordered"] += 1                       # gap 1: "to the front", now
            t = now
        else:
            d = p.delay + (rng.uniform(-p.jitter, p.jitter) if p.jitter else 0.0)
            t = now + (d if d > 0.0 else 0.0)
        if p.rate is not None:
            t = (t if t > self.free else self.free) + size / p.rate
            self.free = t
        if t > now:
            heapq.heappush(held, t)
            c["delayed"] += 1
        if bad:
            c["corrupted"] += 1
        return t, bad


# --- the fault ---------------------------------------------------------------------------

class Netem(Fault):
    """netem on one host's link.  Build with ``netem()``.

    ``engine``: "tc" or "nfqueue" (resolved); ``params``: NetemParams;
    ``qdiscs``: (netns, ifindex, kind, handle) of what the tc engine added;
    ``counts``: the fallback's decisions (seen, lost, duplicated, corrupted,
    reordered, delayed, overlimit), summed over directions; empty with tc,
    where the kernel decides.
    """

    def __init__(self, host, params: NetemParams, direction: str, engine: str,
                 peer=None, port: int | None = None):
        super().__init__(host.lab)
        self.host, self.params, self.direction, self.engine = host, params, direction, engine
        self.peer, self.port = peer, port
        shown = ", ".join(f"{k}={v:g}" for k, v in asdict(params).items()
                          if v and k != "limit")
        sel = "".join(f" {k}={getattr(v, 'name', v)}" for k, v in (("peer", peer), ("port", port))
                      if v is not None)
        self.label = f"netem({shown or 'nothing'}){sel} {direction} on {host.name} [{engine}]"
        self.qdiscs: list[tuple[str, int, str, int]] = []
        self._links: list[tuple[str, int, str, int]] = []   # (which, ifindex, kind, handle)
        self._models: dict[str, _Model] = {}
        self._engine: LinkEngine | None = None

    @property
    def late(self) -> float:
        """With the NFQUEUE engine: the most any packet left after it was
        due, in seconds (the engine's own wake-up lateness on a loaded
        machine; never early).  0.0 with tc."""
        return self._engine.late if self._engine is not None else 0.0

    @property
    def counts(self) -> dict[str, int]:
        total = dict.fromkeys(COUNTS, 0) if self._models else {}
        for m in self._models.values():
            for k, v in m.counts.items():
                total[k] += v
        return total

    def __repr__(self) -> str:
        return f"<{self.label} {'active' if self.active else 'inactive'}>"

    async def _apply(self) -> None:
        if self.engine == "tc":
            await trio.to_thread.run_sync(self._tc_apply)
        else:
            await self._nfqueue_apply()

    async def _revert(self) -> None:
        if self.engine == "tc":
            await trio.to_thread.run_sync(self._tc_revert)
        elif self._engine is not None:
            await self._engine.stop()

    # --- tc -----------------------------------------------------------------------
    def _ns(self, which: str) -> tuple[int, str]:
        """(fd, name) of the namespace now: the host's (its namespace may have
        been replaced by power_on since) or the switch's."""
        if which == "host":
            return self.host.ns_fd, self.host.netns
        name, fd = self.lab.context.switch
        return fd, name

    def _tc_targets(self) -> list[tuple[str, int, str]]:
        out = []
        if self.direction in ("out", "both"):
            out.append(("host", _netlink.HOST_IFINDEX, f"eth0 of host {self.host.name}"))
        if self.direction in ("in", "both"):
            n = self.host.index
            out.append(("switch", 100 + n, f"switch port {self.lab.context.port(self.host)} "
                                           f"(towards {self.host.name})"))
        return out

    def _netem_options(self) -> dict:
        p = self.params
        opts: dict[str, Any] = {"limit": p.limit}
        if p.delay:
            opts["delay"] = round(p.delay * 1e6)           # microseconds
        if p.jitter:
            opts["jitter"] = round(p.jitter * 1e6)
        for name, key in (("loss", "loss"), ("loss_correlation", "loss_corr"),
                          ("duplicate", "duplicate"), ("reorder", "prob_reorder"),
                          ("corrupt", "prob_corrupt")):
            if getattr(p, name):
                opts[key] = getattr(p, name) * 100.0          # percent
        return opts

    def _tbf_options(self) -> dict:
        rate = max(1, int(self.params.rate))
        burst = max(2 * FRAME, int(rate / 250))
        return {"rate": rate, "burst": burst, "limit": max(self.params.limit * FRAME, burst)}

    def _tc_apply(self) -> None:
        p = self.params
        try:
            for which, index, where in self._tc_targets():
                fd, netns = self._ns(which)
                kind, handle = ("netem", NETEM_HANDLE) if p.needs_netem else ("tbf", TBF_HANDLE)
                try:
                    if kind == "netem":
                        _netlink.qdisc_add(fd, netns, index, "netem", handle=NETEM_HANDLE,
                                           **self._netem_options())
                    else:
                        _netlink.qdisc_add(fd, netns, index, "tbf", handle=TBF_HANDLE,
                                           **self._tbf_options())
                    self._links.append((which, index, kind, handle))
                    self.qdiscs.append((netns, index, kind, handle))
                    if kind == "netem" and p.rate is not None:
                        _netlink.qdisc_add(fd, netns, index, "tbf", handle=TBF_HANDLE,
                                           parent=NETEM_HANDLE | 1, **self._tbf_options())
                        self.qdiscs.append((netns, index, "tbf", TBF_HANDLE))
                except SetupError as exc:
                    why = (f"{where} already has a root qdisc (another netem on this link "
                           f"and direction?)" if exc.errno == "EEXIST" else f"on {where}")
                    raise FaultError(f"{self.label}: adding {kind} failed: {why}",
                                     netns=netns, call=f"tc qdisc add {kind}",
                                     errno=exc.errno) from exc
        except BaseException:
            self._tc_revert()
            raise

    def _tc_revert(self) -> None:
        failure: BaseException | None = None
        while self._links:
            which, index, kind, handle = self._links.pop()
            try:
                fd, netns = self._ns(which)
                _netlink.qdisc_del_root(fd, netns, index, kind=kind, handle=handle)
            except BaseException as exc:  # noqa: BLE001 - the other direction too
                failure = failure or exc
        if failure is not None:
            raise failure

    # --- nfqueue ------------------------------------------------------------------
    async def _nfqueue_apply(self) -> None:
        rng = random.Random()
        dirs = ("in", "out") if self.direction == "both" else (self.direction,)
        self._models = {d: _Model(self.params, rng) for d in dirs}
        self._engine = LinkEngine(self.host, self.direction, self._models, rng, self.label,
                                  self.peer, self.port, self.params.limit)
        await self._engine.start()

    @property
    def engine_counts(self) -> dict[str, int]:
        """The packet engine's own counters (nfqueue), e.g. "seen", "errors"."""
        return self._engine.counts if self._engine is not None else {}


def netem(host, *, delay: float = 0.0, jitter: float = 0.0, loss: float = 0.0,
          loss_correlation: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0,
          corrupt: float = 0.0, rate: float | None = None, direction: str = "out",
          limit: int = 1000, engine: str = "auto", peer=None, port: int | None = None) -> Netem:
    """netem on ``host``'s link (see the module's docstring): ``delay`` and
    ``jitter`` in seconds, ``loss``, ``loss_correlation``, ``duplicate``,
    ``reorder`` and ``corrupt`` fractions in [0, 1], ``rate`` in bytes/s
    (None: unlimited), ``direction`` "out", "in" or "both", ``limit`` in
    packets, ``engine`` "auto", "tc" or "nfqueue".  ``peer`` (another Host
    or an address) and ``port`` (source or destination) limit it to that
    traffic, as Chaos Mesh's target and pumba's --target/--egress-port do;
    they take the NFQUEUE engine (TCP only).  Everything is checked
    here, before anything is touched."""
    from .._host import Host, check_host
    check_host(host, WHERE)
    params = _params(delay, jitter, loss, loss_correlation, duplicate, reorder, corrupt, rate,
                     limit)
    if direction not in DIRECTIONS:
        raise InvalidArgument(f"direction must be one of {DIRECTIONS}, got "
                              f"direction={direction!r} from {WHERE}")
    if engine not in ENGINES:
        raise InvalidArgument(f"engine must be one of {ENGINES}, got engine={engine!r} "
                              f"from {WHERE}")
    if peer is not None:
        ok = isinstance(peer, Host) and peer.lab is host.lab and peer is not host
        if isinstance(peer, str):
            import ipaddress
            try:
                ok = bool(ipaddress.ip_address(peer))
            except ValueError:
                ok = False
        if not ok:
            raise InvalidArgument(f"peer must be another Host of the lab or an IP address, "
                                  f"got peer={peer!r} from {WHERE}")
    if port is not None:
        from .._sockets import check_port
        check_port(port)
    if (peer is not None or port is not None) and engine == "tc":
        raise Unsupported("netem(engine='tc') with peer= or port= needs tc filters, which "
                          "the harness does not build yet; engine='nfqueue' selects them")
    chosen = "nfqueue" if (peer is not None or port is not None) else \
        _choose_engine(engine, params)
    if chosen == "nfqueue" and (peer is not None or port is not None):
        reason = _features.nfqueue()
        if reason:
            raise Unsupported(f"netem(peer=, port=) needs the NFQUEUE engine: {reason}")
    if chosen == "nfqueue" and direction != "in":
        reason = _features.tee()
        if reason:
            raise Unsupported(f"netem(direction={direction!r}) on the NFQUEUE engine lets "
                              f"what the host sends go through iptables' TEE target "
                              f"(xt_TEE, nf_dup_ipv4/6): {reason}")
    return Netem(host, params, direction, chosen, peer, port)
