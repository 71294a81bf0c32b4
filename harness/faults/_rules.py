"""The rules of the firewall faults (drop, reject, partition, blackhole,
port_unreachable): their validation, their text, and one host's share of a
fault loaded and removed through harness._iptables.  The matching rules
are documented in harness.faults._firewall."""

from __future__ import annotations

import ipaddress
import itertools

import trio

from .. import _iptables
from .._wire import FlagFilter, flag_filter
from ..errors import InvalidArgument
from .._host import Host, check_host as _check_host

DIRECTIONS = ("in", "out", "both")
PROTOCOLS = ("tcp", "udp", "icmp", "all")

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


# --- one host's share of a fault ------------------------------------------------

class Rules:
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
        self.generation = self.host.generation
        async with _iptables.tables(self.host).lock:
            try:
                for family in self.bodies:
                    await _iptables.acquire(self.host, family, "filter")
                    try:
                        await _iptables.restore(self.host, family, self.apply_text(family))
                    except BaseException:
                        with trio.CancelScope(shield=True):
                            await _iptables.release(self.host, family, "filter")
                        raise
                    self.applied.add(family)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._remove()
                raise

    async def revert(self) -> None:
        if self.host.generation != self.generation:
            # power_on replaced the namespace: the rules died with the old one
            self.applied.clear()
            return
        async with _iptables.tables(self.host).lock:
            await self._remove()

    async def _remove(self) -> None:
        """Remove what is applied (idempotent); the caller holds the lock.
        The last fault out of a table the harness made takes the table
        away, so iptables-save shows what it showed before."""
        for family in sorted(self.applied, reverse=True):
            saved = await _iptables.save(self.host, family, "filter", counters=True)
            self.final[family] = count(saved, self.chains(family))
            if not await _iptables.release(self.host, family, "filter", self.chains(family)):
                await _iptables.restore(self.host, family, self.revert_text(family))
            self.applied.discard(family)

    async def matched(self) -> dict[int, int]:
        out = dict(self.final)
        for family in self.applied:
            out[family] = count(await _iptables.save(self.host, family, "filter", counters=True),
                                self.chains(family))
        return out


def count(save: str, chains: set[str]) -> int:
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


# --- validation and rendering -------------------------------------------------------------------


def check_host(host: object, name: str, where: str) -> Host:
    return _check_host(host, f"{where}()", name)


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


def _match_bodies(family: int, direction: str, peer: str | None, port: int | None,
                  protocol: str, flags: FlagFilter | None, target: str) -> list[str]:
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
        fl = " ".join(flags.iptables()) + " " if flags else ""
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


def build(kind: str, host: object, direction: object, peer: object, port: object,
          protocol: object, tcp_flags: object, family: object, with_: object = None, *,
          where: str | None = None, probability: object = 1.0
          ) -> tuple[Host, dict[int, dict[str, list[str]]], str]:
    """Validate everything (touching nothing) and render the rule bodies.
    ``kind`` is "drop" or "reject"; ``where`` names the public constructor
    in error messages."""
    where = where or kind
    probability = _check_probability(probability, where)
    host = check_host(host, "host", where)
    _check_choice(direction, "direction", DIRECTIONS, where)
    _check_port(port, where)
    if protocol is None:
        protocol = "tcp" if tcp_flags is not None or with_ == "tcp-reset" else "all"
    _check_choice(protocol, "protocol", PROTOCOLS, where)
    flags = flag_filter(tcp_flags, f"{where}()") if tcp_flags is not None else None
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
    if flags is not None:
        desc.append(f"flags={flags}")
    if with_ is not None:
        desc.append(f"with {with_}")
    if probability < 1:
        desc.append(f"probability={probability:g}")
    if family is not None:
        desc.append(f"IPv{family}")
    return host, bodies, f"{where}({', '.join(desc)})"
