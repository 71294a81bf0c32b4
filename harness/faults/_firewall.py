"""Firewall faults: iptables rule sets loaded atomically inside a host.

    async with faults.drop(server, direction="in", port=9000) as f:
        ...                                  # the server's kernel never sees them
    assert await f.matched() == 2            # what the rules matched (kept after exit)

Each fault owns one chain per hook and family, ``fih<n>-in`` (jumped to from
the top of INPUT) and ``fih<n>-out`` (from OUTPUT), so the newest fault sees
a packet first and faults compose: the chains end in RETURN, never ACCEPT.
A fault is loaded by one ``iptables-restore --noflush`` per family (one
transaction each; if the IPv6 one fails the IPv4 one is taken back) and
removed the same way, so undo leaves ``iptables-save`` byte-identical,
counters aside.  On the nf_tables backend iptables-restore creates the
``filter`` table on first use; the last fault out deletes it again when the
harness created it and nothing else lives in it (harness._iptables keeps
that record, per namespace).  The rules are built in faults._rules.  Lab hosts do not route, so
FORWARD is never touched.

Matching (all optional, and-ed):

- ``direction``: "in" (INPUT: packets to the host), "out" (OUTPUT: packets
  from it) or "both".
- ``peer``: a Host of the same lab (its address of each family) or an
  address or network; the source on the way in, the destination on the way
  out.  An IPv4 peer restricts the fault to IPv4 (and vice versa).
- ``port``: packets with this port as source *or* destination, so one fault
  covers both directions of a connection; needs tcp or udp ("all" with a
  port means tcp and udp).
- ``protocol``: "tcp", "udp", "icmp" (ICMPv6 for IPv6) or "all"; by
  default "all", or "tcp" when ``tcp_flags`` or ``with_="tcp-reset"`` need it.
- ``tcp_flags``: "SYN", "FIN,ACK"...: the segment's SYN, ACK, FIN and RST
  bits are exactly these, PSH and URG ignored: "SYN" is the first SYN and not
  the SYN-ACK, "ACK" a pure ACK or a data segment, "FIN,ACK" a FIN, "RST" a
  bare RST.  "FLAGS/MASK" compares only the bits in MASK ("SYN/SYN": any
  segment with SYN set); "NONE" is the empty set.  Implies protocol tcp.
  The one spelling of every fault that filters on flags (harness._wire);
  iptables' ("MASK", "COMP") pair is refused with the spelling to use.
- ``family``: 4, 6 or None for both.
- ``probability`` (drop and reject): each matching packet is taken with
  that chance, an independent draw per packet (``-m statistic --mode
  random``); the rule counters count the packets taken.

Never matched: loopback (faults model the network, not the host's own
traffic) and IPv6 neighbour solicitations and advertisements.  ARP is not IP
and passes iptables, so ND passes too and both families fail alike, by
silence (ETIMEDOUT); ``icmp.host_unreachable`` makes address resolution fail
(EHOSTUNREACH).

What the sender sees of a packet dropped on the way *out* (nf_hook_slow:
NF_DROP is -EPERM to the sender): UDP and ICMP senders get EPERM; TCP's
send() succeeds, but a data segment dropped there counts as never sent: it
stays in the write queue and the zero-window-probe timer retries it (backing
off, and giving up after tcp_retries2 probes), with no retransmission event;
a pure ACK is simply lost.
"""

from __future__ import annotations

import time
import warnings

import trio

from .. import _check
from ..errors import InvalidArgument, ObservationTimeout
from .._host import Host
from ._base import Fault
from ._rules import Rules, build, check_host

# --- the fault ------------------------------------------------------------------


class Firewall(Fault):
    """A fault made of iptables rules in one or more hosts.  Built by
    ``drop``, ``reject``, ``partition`` and ``blackhole``."""

    def __init__(self, lab, label: str, parts: list[Rules]):
        super().__init__(lab)
        self.label, self._parts = label, parts

    @property
    def chains(self) -> list[str]:
        """The chains this fault owns (in every host and family)."""
        return sorted({c for p in self._parts for f in p.bodies for c in p.chains(f)})

    async def _apply(self) -> None:
        done: list[Rules] = []
        try:
            for part in self._parts:
                await part.apply()
                done.append(part)
        except BaseException:
            with trio.CancelScope(shield=True):
                for part in reversed(done):
                    await part.revert()
            raise

    async def _revert(self) -> None:
        for part in reversed(self._parts):
            await part.revert()

    async def matched(self, family: int | None = None) -> int:
        """How many packets this fault's rules matched (dropped or rejected),
        summed over its hosts, in ``family`` or both.  After the fault is
        undone, the count it had when it was undone."""
        if family not in (None, 4, 6):
            raise InvalidArgument(f"family must be 4, 6 or None, got family={family!r} from "
                                  f"matched()")
        total = 0
        for part in self._parts:
            for fam, n in (await part.matched()).items():
                if family is None or fam == family:
                    total += n
        return total

    async def wait_matched(self, n: int, *, family: int | None = None,
                           timeout: float = 5.0) -> int:
        """Wait until the rules matched at least ``n`` packets; return the
        count.  Raises ObservationTimeout with the last count."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidArgument(f"n must be an int >= 0, got n={n!r} from wait_matched()")
        _check.seconds(timeout, where="wait_matched()")
        from .._poll import until
        return await until(lambda: self.matched(family), time.monotonic() + timeout,
                           done=lambda got: got >= n, first=0.001, longest=0.02,
                           timeout=lambda got: ObservationTimeout(
                               f"{self.label} matched {got} packet(s), not {n}, within "
                               f"{timeout}s", last=got))

    async def packets(self, family: int | None = None) -> int:
        """Deprecated name of ``matched()``."""
        warnings.warn("Firewall.packets() is now matched()", DeprecationWarning, stacklevel=2)
        return await self.matched(family)

    async def wait_packets(self, n: int, **kw) -> int:
        """Deprecated name of ``wait_matched()``."""
        warnings.warn("Firewall.wait_packets() is now wait_matched()", DeprecationWarning,
                      stacklevel=2)
        return await self.wait_matched(n, **kw)


# --- constructors -------------------------------------------------------------------


def drop(host: Host, *, direction: str = "in", peer: Host | str | None = None,
         port: int | None = None, protocol: str | None = None, tcp_flags: str | None = None,
         family: int | None = None, probability: float = 1.0) -> Firewall:
    """Silently drop the matching packets (see the module docstring for the
    matching rules).  The peer sees silence: retransmissions, then ETIMEDOUT.
    ``probability`` < 1 drops each matching packet independently with that
    chance (pumba's iptables --probability; xt_statistic random mode)."""
    host, bodies, label = build("drop", host, direction, peer, port, protocol, tcp_flags, family,
                                 probability=probability)
    return Firewall(host.lab, label, [Rules(host, bodies)])


def reject(host: Host, *, direction: str = "in", peer: Host | str | None = None,
           port: int | None = None, protocol: str | None = None, tcp_flags: str | None = None,
           family: int | None = None, with_: str = "icmp-port-unreachable",
           probability: float = 1.0) -> Firewall:
    """Drop the matching packets and answer each with ``with_``: a TCP RST
    ("tcp-reset", needs protocol tcp) or an ICMP destination unreachable
    (ICMPv6 for IPv6: host -> addr-unreachable, net -> no-route, admin ->
    adm-prohibited; the other ICMP codes are IPv4 only).  With
    direction "both", the answers themselves are let out.  ``probability``
    < 1: each matching packet is rejected with that chance (as drop's)."""
    host, bodies, label = build("reject", host, direction, peer, port, protocol, tcp_flags,
                                 family, with_, probability=probability)
    return Firewall(host.lab, label, [Rules(host, bodies)])


def partition(a: Host, b: Host, *, family: int | None = None) -> Firewall:
    """Cut ``a`` and ``b`` apart, both directions, both families: each drops
    on the way *in* what comes from the other, so packets leave their sender
    as on a real broken path (no local EPERM) and vanish."""
    a = check_host(a, "a", "partition")
    b = check_host(b, "b", "partition")
    if a.lab is not b.lab:
        raise InvalidArgument(f"a={a.name!r} and b={b.name!r} belong to different labs "
                              f"(from partition())")
    if a is b:
        raise InvalidArgument(f"partition() needs two different hosts, got {a.name!r} twice")
    parts = []
    for host, other in ((a, b), (b, a)):
        _h, bodies, _l = build("drop", host, "in", other, None, "all", None, family,
                                where="partition")
        parts.append(Rules(host, bodies))
    label = f"partition({a.name!r}, {b.name!r}" + (f", IPv{family})" if family else ")")
    return Firewall(a.lab, label, parts)


def blackhole(host: Host, *, family: int | None = None) -> Firewall:
    """Drop everything in and out of ``host`` except loopback (and ARP and
    IPv6 neighbour discovery, see the module docstring): the host is alive
    but nothing it sends or is sent escapes."""
    host, bodies, _label = build("drop", host, "both", None, None, "all", None, family,
                                  where="blackhole")
    return Firewall(host.lab, f"blackhole({host.name!r}" + (f", IPv{family})" if family else ")"),
                    [Rules(host, bodies)])
