"""Firewall faults: iptables rule sets loaded atomically inside a host.

    async with faults.drop(server, direction="in", port=9000) as f:
        ...                                  # the server's kernel never sees them
    assert await f.packets() == 2            # what the rules matched (kept after exit)

Each fault owns one chain per hook and family, ``fih<n>-in`` (jumped to from
the top of INPUT) and ``fih<n>-out`` (from OUTPUT), so the newest fault sees
a packet first and faults compose: the chains end in RETURN, never ACCEPT.
A fault is loaded by one ``iptables-restore --noflush`` per family (one
transaction each; if the IPv6 one fails the IPv4 one is taken back) and
removed the same way, so undo leaves ``iptables-save`` byte-identical,
counters aside.  On the nf_tables backend iptables-restore creates the
``filter`` table on first use; the last fault out deletes it again when the
harness created it and nothing else lives in it.  Lab hosts do not route, so
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
- ``family``: 4, 6 or None for both.
- ``probability`` (drop and reject): each matching packet is taken with
  that chance, an independent draw per packet (``-m statistic --mode
  random``); the rule counters count the packets taken.

Never matched: loopback (faults model the network, not the host's own
traffic) and IPv6 neighbour solicitations and advertisements.  ARP is not IP
and passes iptables, so ND passes too and both families fail alike, by
silence (ETIMEDOUT); ``icmp.unreachable_host`` makes address resolution fail
(EHOSTUNREACH).

What the sender sees of a packet dropped on the way *out* (nf_hook_slow:
NF_DROP is -EPERM to the sender): UDP and ICMP senders get EPERM; TCP's
send() succeeds, but a data segment dropped there counts as never sent: it
stays in the write queue and the zero-window-probe timer retries it (backing
off, and giving up after tcp_retries2 probes), with no retransmission event;
a pure ACK is simply lost.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import shutil
import subprocess
import time
import weakref

import trio

from ..errors import FaultError, InvalidArgument, ObservationTimeout, SetupError, Unsupported
from ..host import Host
from ._base import Fault

DIRECTIONS = ("in", "out", "both")
PROTOCOLS = ("tcp", "udp", "icmp", "all")
TCP_FLAGS = ("SYN", "ACK", "FIN", "RST", "PSH", "URG")
DEFAULT_FLAG_MASK = "SYN,ACK,FIN,RST"

# with_ -> (IPv4 --reject-with, IPv6 --reject-with or None when ICMPv6 has no
# equivalent).  The errno a connect() gets for each is measured in
# tests/test_faults_firewall.py::test_reject_answers.
REJECT_WITH = {
    "tcp-reset": ("tcp-reset", "tcp-reset"),
    "icmp-port-unreachable": ("icmp-port-unreachable", "icmp6-port-unreachable"),
    "icmp-host-unreachable": ("icmp-host-unreachable", "icmp6-addr-unreachable"),
    "icmp-net-unreachable": ("icmp-net-unreachable", "icmp6-no-route"),
    "icmp-admin-prohibited": ("icmp-admin-prohibited", "icmp6-adm-prohibited"),
    "icmp-host-prohibited": ("icmp-host-prohibited", None),
    "icmp-net-prohibited": ("icmp-net-prohibited", None),
    "icmp-proto-unreachable": ("icmp-proto-unreachable", None),
}

_HOOKS = {"in": ("INPUT", "-i", "-s"), "out": ("OUTPUT", "-o", "-d")}
_ND_TYPES = (135, 136)  # neighbour solicitation, advertisement (RFC 4861)
_ids = itertools.count(1)


# --- the iptables binaries ------------------------------------------------------


@functools.cache
def _tools() -> tuple[str, dict[int, tuple[list[str], list[str]]]]:
    """(backend, {family: (restore argv, save argv)}) for the backend that
    ``iptables --version`` names ("nf_tables" or "legacy")."""
    exe = shutil.which("iptables")
    if exe is None:
        raise Unsupported("iptables is not installed (apt-get install iptables)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    backend = "nf_tables" if "nf_tables" in out else ("legacy" if "legacy" in out else None)
    if backend is None:
        raise Unsupported(f"cannot tell the iptables backend from {out.strip()!r}")
    kind = "nft" if backend == "nf_tables" else "legacy"
    # the legacy backend serialises through /run/xtables.lock, shared by all
    # namespaces: wait for it rather than fail
    wait = ["-w"] if kind == "legacy" else []
    tools = {}
    for family, stem in ((4, "iptables"), (6, "ip6tables")):
        restore, save = f"{stem}-{kind}-restore", f"{stem}-{kind}-save"
        for tool in (restore, save):
            if shutil.which(tool) is None:
                raise Unsupported(f"{tool} is not installed (iptables backend {backend})")
        tools[family] = ([restore, "--noflush", *wait], [save, "-t", "filter"])
    return backend, tools


class _HostTables:
    """Per host: a lock serialising our table edits, and the families whose
    filter table a fault created (to delete it when the last one leaves)."""

    def __init__(self, generation: int) -> None:
        self.lock = trio.Lock()
        self.created: set[int] = set()
        self.generation = generation  # of the host's namespace these describe


_hosts: "weakref.WeakKeyDictionary[Host, _HostTables]" = weakref.WeakKeyDictionary()


def _tables(host: Host) -> _HostTables:
    t = _hosts.get(host)
    if t is None or t.generation != host.generation:  # a new namespace: nothing created yet
        t = _hosts[host] = _HostTables(host.generation)
    return t


async def _run(host: Host, argv: list[str], text: str | None = None) -> str:
    try:
        res = await host.run(argv, input=None if text is None else text.encode())
    except SetupError as exc:
        raise FaultError(str(exc), netns=host.netns, call=argv[0]) from exc
    return res.stdout.decode()


def _pristine_without(save: str, chains: set[str]) -> bool:
    """Would the filter table in ``save`` (iptables-save output) be empty,
    built-in chains with policy ACCEPT, once ``chains`` and the jumps to them
    are gone?"""
    for line in save.splitlines():
        if not line or line.startswith(("#", "*", "COMMIT")):
            continue
        if line.startswith("["):  # counters of a rule (-c)
            line = line.split("] ", 1)[1]
        if line.startswith(":"):
            name, policy = line[1:].split()[:2]
            if name in chains or (name in ("INPUT", "FORWARD", "OUTPUT") and policy == "ACCEPT"):
                continue
            return False
        parts = line.split()
        if parts[:1] == ["-A"] and (parts[1] in chains or parts[-1] in chains):
            continue
        return False
    return True


# --- one host's share of a fault ------------------------------------------------


class _Rules:
    """The chains a fault owns in one host: ``bodies[family][direction]`` is
    the list of rule bodies (without ``-A chain``) of that chain."""

    def __init__(self, host: Host, bodies: dict[int, dict[str, list[str]]]):
        self.host, self.bodies = host, bodies
        self.generation = host.generation  # the namespace the rules live in
        self.fid = f"fih{next(_ids)}"
        self.applied: set[int] = set()
        self.final: dict[int, int] = {}

    def chain(self, direction: str) -> str:
        return f"{self.fid}-{direction}"

    def chains(self, family: int) -> set[str]:
        return {self.chain(d) for d in self.bodies[family]}

    def apply_text(self, family: int) -> str:
        lines = ["*filter"]
        lines += [f":{self.chain(d)} - [0:0]" for d in self.bodies[family]]
        for d, body in self.bodies[family].items():
            lines.append(f"-I {_HOOKS[d][0]} 1 -j {self.chain(d)}")
            lines += [f"-A {self.chain(d)} {rule}" for rule in body]
        return "\n".join(lines + ["COMMIT", ""])

    def revert_text(self, family: int) -> str:
        lines = ["*filter"]
        for d in self.bodies[family]:
            lines += [f"-D {_HOOKS[d][0]} -j {self.chain(d)}", f"-F {self.chain(d)}",
                      f"-X {self.chain(d)}"]
        return "\n".join(lines + ["COMMIT", ""])

    async def apply(self) -> None:
        backend, tools = _tools()
        tables = _tables(self.host)
        async with tables.lock:
            try:
                absent: set[int] = set()
                if backend == "nf_tables" and shutil.which("nft"):
                    have = (await _run(self.host, ["nft", "list", "tables"])).splitlines()
                    absent = {f for f, name in ((4, "table ip filter"), (6, "table ip6 filter"))
                              if name not in have}
                for family in self.bodies:
                    await _run(self.host, tools[family][0], self.apply_text(family))
                    self.applied.add(family)
                    if family in absent:
                        tables.created.add(family)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._remove(tables)
                raise
        self.generation = self.host.generation

    async def revert(self) -> None:
        if self.host.generation != self.generation:
            # power_on replaced the namespace: the rules died with the old one
            self.applied.clear()
            return
        tables = _tables(self.host)
        async with tables.lock:
            await self._remove(tables)

    async def _remove(self, tables: _HostTables) -> None:
        """Remove what is applied (idempotent); the caller holds the lock."""
        _backend, tools = _tools()
        for family in sorted(self.applied, reverse=True):
            save = await _run(self.host, tools[family][1] + ["-c"])
            self.final[family] = _count(save, self.chains(family))
            if family in tables.created and _pristine_without(save, self.chains(family)):
                # a fault made this table and it would be left empty: take it
                # all back, so iptables-save shows what it showed before
                await _run(self.host, ["nft", "delete", "table", "ip" if family == 4 else "ip6",
                                       "filter"])
                tables.created.discard(family)
            else:
                await _run(self.host, tools[family][0], self.revert_text(family))
            self.applied.discard(family)

    async def packets(self) -> dict[int, int]:
        _backend, tools = _tools()
        out = dict(self.final)
        for family in self.applied:
            out[family] = _count(await _run(self.host, tools[family][1] + ["-c"]),
                                 self.chains(family))
        return out


def _count(save: str, chains: set[str]) -> int:
    """Packets matched by the DROP/REJECT rules of ``chains`` in the output
    of ``iptables-save -c`` (lines "[pkts:bytes] -A chain ... -j TARGET")."""
    total = 0
    for line in save.splitlines():
        if not line.startswith("["):
            continue
        counters, rule = line[1:].split("] ", 1)
        parts = rule.split()
        target = parts[parts.index("-j") + 1] if "-j" in parts else None
        if parts[:1] == ["-A"] and parts[1] in chains and target in ("DROP", "REJECT"):
            total += int(counters.split(":")[0])
    return total


# --- the fault ------------------------------------------------------------------


class Firewall(Fault):
    """A fault made of iptables rules in one or more hosts.  Built by
    ``drop``, ``reject``, ``partition`` and ``blackhole``."""

    def __init__(self, lab, label: str, parts: list[_Rules]):
        super().__init__(lab)
        self.label, self._parts = label, parts

    @property
    def chains(self) -> list[str]:
        """The chains this fault owns (in every host and family)."""
        return sorted({c for p in self._parts for f in p.bodies for c in p.chains(f)})

    async def _apply(self) -> None:
        done: list[_Rules] = []
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

    async def packets(self, family: int | None = None) -> int:
        """How many packets this fault's rules matched (dropped or rejected),
        summed over its hosts, in ``family`` or both.  After the fault is
        undone, the count it had when it was undone."""
        if family not in (None, 4, 6):
            raise InvalidArgument(f"family must be 4, 6 or None, got family={family!r} from "
                                  f"packets()")
        total = 0
        for part in self._parts:
            for fam, n in (await part.packets()).items():
                if family is None or fam == family:
                    total += n
        return total

    async def wait_packets(self, n: int, *, family: int | None = None,
                           timeout: float = 5.0) -> int:
        """Wait until the rules matched at least ``n`` packets; return the
        count.  Raises ObservationTimeout with the last count."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidArgument(f"n must be an int >= 0, got n={n!r} from wait_packets()")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise InvalidArgument(f"timeout must be seconds >= 0, got timeout={timeout!r} from "
                                  f"wait_packets()")
        from .._poll import until
        return await until(lambda: self.packets(family), time.monotonic() + timeout,
                           done=lambda got: got >= n, first=0.001, longest=0.02,
                           timeout=lambda got: ObservationTimeout(
                               f"{self.label} matched {got} packet(s), not {n}, within "
                               f"{timeout}s", last=got))


# --- validation -------------------------------------------------------------------


def _check_host(host: object, name: str, where: str) -> Host:
    if not isinstance(host, Host):
        raise InvalidArgument(f"{name} must be a Host (from lab.pair() or lab.host()), got "
                              f"{name}={host!r} ({type(host).__name__}) from {where}()")
    return host


def _check_choice(value: object, name: str, choices, where: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgument(f"{name} must be one of {', '.join(map(repr, choices))}, got "
                              f"{name}={value!r} from {where}()")


def _families(host: Host, family: object, where: str) -> list[int]:
    if family is not None and (isinstance(family, bool) or family not in (4, 6)):
        raise InvalidArgument(f"family must be 4, 6 or None (both), got family={family!r} "
                              f"from {where}()")
    have = [f for f, a in ((4, host.v4), (6, host.v6)) if a]
    if family is None:
        return have
    if family not in have:
        raise InvalidArgument(f"host {host.name} has no IPv{family} address ({where}())")
    return [family]


def _peers(host: Host, peer: object, families: list[int], family: object,
           where: str) -> dict[int, str | None]:
    if peer is None:
        return {f: None for f in families}
    if isinstance(peer, Host):
        if peer.lab is not host.lab:
            raise InvalidArgument(f"peer {peer.name!r} belongs to another lab than host "
                                  f"{host.name!r} (from {where}())")
        if peer is host:
            raise InvalidArgument(f"peer must be another host than {host.name!r} (a host's "
                                  f"traffic to itself is loopback, never matched) ({where}())")
        return {f: peer.address(f) for f in families if getattr(peer, f"v{f}")}
    if isinstance(peer, str):
        try:
            net = ipaddress.ip_network(peer, strict=False)
        except ValueError:
            raise InvalidArgument(f"peer must be a Host of the same lab or an IP address or "
                                  f"network, got peer={peer!r} (str) from {where}()") from None
        if family is not None and net.version != family:
            raise InvalidArgument(f"peer {peer} is IPv{net.version} but family={family} "
                                  f"(from {where}())")
        if net.version not in families:
            raise InvalidArgument(f"host {host.name} has no IPv{net.version} address ({where}())")
        return {net.version: str(net.network_address) if net.prefixlen == net.max_prefixlen
                else str(net)}
    raise InvalidArgument(f"peer must be a Host of the same lab, an IP address or None, got "
                          f"peer={peer!r} ({type(peer).__name__}) from {where}()")


def _check_port(port: object, where: str) -> None:
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 1 <= port <= 65535):
        raise InvalidArgument(f"port must be an int in 1..65535 or None, got port={port!r} "
                              f"({type(port).__name__}) from {where}()")


def _parse_flags(value: object, where: str) -> tuple[str, str]:
    """"FIN,ACK" -> (mask, set) for --tcp-flags."""
    usage = (f"tcp_flags must be TCP flags from {', '.join(TCP_FLAGS)} (or NONE) joined by ',', "
             f"optionally '/MASK' (e.g. 'SYN', 'FIN,ACK', 'SYN/SYN')")
    if not isinstance(value, str):
        raise InvalidArgument(f"{usage}, got tcp_flags={value!r} ({type(value).__name__}) "
                              f"from {where}()")

    def names(part: str) -> list[str]:
        if part == "NONE":
            return []
        items = part.split(",")
        if not part or any(x not in TCP_FLAGS for x in items) or len(set(items)) != len(items):
            raise InvalidArgument(f"{usage}, got tcp_flags={value!r} from {where}()")
        return items

    spec = value.upper().replace(" ", "")
    flags, slash, mask = spec.partition("/")
    on = names(flags)
    bits = names(mask) if slash else DEFAULT_FLAG_MASK.split(",")
    if not bits:
        raise InvalidArgument(f"{usage}; the mask cannot be empty, got tcp_flags={value!r} "
                              f"from {where}()")
    outside = [f for f in on if f not in bits]
    if outside:
        raise InvalidArgument(f"tcp_flags={value!r}: {','.join(outside)} outside the mask "
                              f"{','.join(bits)} can never match (from {where}())")
    return ",".join(bits), ",".join(on) or "NONE"


def _match_bodies(family: int, direction: str, peer: str | None, port: int | None,
                  protocol: str, flags: tuple[str, str] | None, target: str) -> list[str]:
    _hook, iface, addr_opt = _HOOKS[direction]
    body = [f"{iface} lo -j RETURN"]
    icmp = "icmp" if family == 4 else "ipv6-icmp"
    if family == 6 and protocol in ("icmp", "all"):
        body += [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN" for t in _ND_TYPES]
    where = f"{addr_opt} {peer} " if peer else ""
    protos = {"tcp": ["tcp"], "udp": ["udp"], "icmp": [icmp],
              "all": ["tcp", "udp"] if port is not None else [None]}[protocol]
    for proto in protos:
        p = f"-p {proto} " if proto else ""
        fl = f"--tcp-flags {flags[0]} {flags[1]} " if flags else ""
        if port is None:
            body.append(f"{where}{p}{'-m tcp ' + fl if fl else ''}-j {target}")
        else:
            for opt in ("--dport", "--sport"):
                body.append(f"{where}{p}-m {proto} {opt} {port} {fl}-j {target}")
    return body


def _check_probability(p: object, where: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise InvalidArgument(f"probability must be a fraction in (0, 1], got "
                              f"probability={p!r} ({type(p).__name__}) from {where}()")
    return float(p)


def _with_probability(bodies: dict, target: str, p: float) -> None:
    """Each rule that ends in ``target`` matches a packet with probability p
    (xt_statistic, --mode random: an independent draw per packet)."""
    for per_dir in bodies.values():
        for d, body in per_dir.items():
            per_dir[d] = [line[: -len(f"-j {target}")]
                          + f"-m statistic --mode random --probability {p:.6f} -j {target}"
                          if line.endswith(f"-j {target}") else line for line in body]


def _build(kind: str, host: object, direction: object, peer: object, port: object,
           protocol: object, tcp_flags: object, family: object, with_: object = None, *,
           where: str | None = None, probability: object = 1.0
           ) -> tuple[Host, dict[int, dict[str, list[str]]], str]:
    """Validate everything (touching nothing) and render the rule bodies.
    ``kind`` is "drop" or "reject"; ``where`` names the public constructor
    in error messages."""
    where = where or kind
    probability = _check_probability(probability, where)
    host = _check_host(host, "host", where)
    _check_choice(direction, "direction", DIRECTIONS, where)
    _check_port(port, where)
    if protocol is None:
        protocol = "tcp" if tcp_flags is not None or with_ == "tcp-reset" else "all"
    _check_choice(protocol, "protocol", PROTOCOLS, where)
    flags = _parse_flags(tcp_flags, where) if tcp_flags is not None else None
    if flags and protocol != "tcp":
        raise InvalidArgument(f"tcp_flags needs protocol='tcp', got protocol={protocol!r} "
                              f"from {where}()")
    if port is not None and protocol == "icmp":
        raise InvalidArgument(f"port needs protocol 'tcp', 'udp' or 'all', got "
                              f"protocol='icmp' from {where}()")
    families = _families(host, family, where)
    if kind == "reject":
        _check_choice(with_, "with_", tuple(REJECT_WITH), where)
        if with_ == "tcp-reset" and protocol != "tcp":
            raise InvalidArgument(f"with_='tcp-reset' answers TCP only and needs "
                                  f"protocol='tcp', got protocol={protocol!r} from {where}()")
        if REJECT_WITH[with_][1] is None:
            if family == 6 or (isinstance(peer, str) and ":" in peer) or \
                    (isinstance(peer, Host) and not peer.v4):
                raise InvalidArgument(f"with_={with_!r} has no ICMPv6 equivalent; it rejects "
                                      f"IPv4 only (from {where}())")
            families = [f for f in families if f == 4]
    peers = _peers(host, peer, families, family, where)
    bodies: dict[int, dict[str, list[str]]] = {}
    for fam, addr in peers.items():
        if kind == "reject":
            target = f"REJECT --reject-with {REJECT_WITH[with_][0 if fam == 4 else 1]}"
        else:
            target = "DROP"
        dirs = ("in", "out") if direction == "both" else (direction,)
        bodies[fam] = {}
        for d in dirs:
            body = _match_bodies(fam, d, addr, port, protocol, flags, target)
            if kind == "reject" and direction == "both" and d == "out":
                # the answer to a rejected incoming packet leaves through OUTPUT:
                # let it out instead of rejecting the rejection (which drops it)
                icmp = "icmp -m icmp --icmp-type" if fam == 4 else \
                    "ipv6-icmp -m icmp6 --icmpv6-type"
                answer = ("-p tcp -m tcp --tcp-flags RST RST -j RETURN" if with_ == "tcp-reset"
                          else f"-p {icmp} destination-unreachable -j RETURN")
                body.insert(1, answer)
            bodies[fam][d] = body
        if probability < 1:
            _with_probability({fam: bodies[fam]}, target, probability)
    desc = [repr(host.name), direction]
    if peer is not None:
        desc.append(f"peer={peer.name if isinstance(peer, Host) else peer}")
    if port is not None:
        desc.append(f"port={port}")
    if protocol != "all":
        desc.append(protocol)
    if tcp_flags is not None:
        desc.append(f"flags={tcp_flags}")
    if with_ is not None:
        desc.append(f"with {with_}")
    if probability < 1:
        desc.append(f"probability={probability:g}")
    if family is not None:
        desc.append(f"IPv{family}")
    return host, bodies, f"{where}({', '.join(desc)})"


# --- constructors -------------------------------------------------------------------


def drop(host: Host, *, direction: str = "in", peer: Host | str | None = None,
         port: int | None = None, protocol: str | None = None, tcp_flags: str | None = None,
         family: int | None = None, probability: float = 1.0) -> Firewall:
    """Silently drop the matching packets (see the module docstring for the
    matching rules).  The peer sees silence: retransmissions, then ETIMEDOUT.
    ``probability`` < 1 drops each matching packet independently with that
    chance (pumba's iptables --probability; xt_statistic random mode)."""
    host, bodies, label = _build("drop", host, direction, peer, port, protocol, tcp_flags, family,
                                 probability=probability)
    return Firewall(host.lab, label, [_Rules(host, bodies)])


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
    host, bodies, label = _build("reject", host, direction, peer, port, protocol, tcp_flags,
                                 family, with_, probability=probability)
    return Firewall(host.lab, label, [_Rules(host, bodies)])


def partition(a: Host, b: Host, *, family: int | None = None) -> Firewall:
    """Cut ``a`` and ``b`` apart, both directions, both families: each drops
    on the way *in* what comes from the other, so packets leave their sender
    as on a real broken path (no local EPERM) and vanish."""
    a = _check_host(a, "a", "partition")
    b = _check_host(b, "b", "partition")
    if a.lab is not b.lab:
        raise InvalidArgument(f"a={a.name!r} and b={b.name!r} belong to different labs "
                              f"(from partition())")
    if a is b:
        raise InvalidArgument(f"partition() needs two different hosts, got {a.name!r} twice")
    parts = []
    for host, other in ((a, b), (b, a)):
        _h, bodies, _l = _build("drop", host, "in", other, None, "all", None, family,
                                where="partition")
        parts.append(_Rules(host, bodies))
    label = f"partition({a.name!r}, {b.name!r}" + (f", IPv{family})" if family else ")")
    return Firewall(a.lab, label, parts)


def blackhole(host: Host, *, family: int | None = None) -> Firewall:
    """Drop everything in and out of ``host`` except loopback (and ARP and
    IPv6 neighbour discovery, see the module docstring): the host is alive
    but nothing it sends or is sent escapes."""
    host, bodies, _label = _build("drop", host, "both", None, None, "all", None, family,
                                  where="blackhole")
    return Firewall(host.lab, f"blackhole({host.name!r}" + (f", IPv{family})" if family else ")"),
                    [_Rules(host, bodies)])
