"""ICMP and address-resolution faults: the peer is told, or finds out, that
it cannot get there.

``host_unreachable(host)``: the host drops off its link.  Its namespace gets
one nftables transaction of two tables of its own: ``arp fih<n>`` drops every
ARP packet in and out, ``inet fih<n>`` every IP packet in and out but
loopback's (IPv6 neighbour discovery included, which is ICMPv6); and every
other host of the lab forgets the host's link-layer addresses (its neighbour
entries are deleted, as if they had expired).  The next packet a peer sends
it starts address resolution, which fails after ``mcast_solicit`` probes
``retrans_time_ms`` apart (3 x 1 s by default; both per device,
net.ipv4.neigh.eth0.* and net.ipv6.neigh.eth0.*).  Then:

- connect() fails with EHOSTUNREACH (the neighbour layer reports the failed
  resolution as a local ICMP host unreachable: arp_error_report() ->
  ipv4_link_failure(), ndisc_error_report() -> ip6_link_failure());
- an established connection gets it as a *soft* error: it keeps
  retransmitting and, when it gives up, reports EHOSTUNREACH instead of
  ETIMEDOUT.

This is what a powered-off or unplugged host looks like from its link, and
what ``firewall.blackhole`` (ARP still answered, so only silence: ETIMEDOUT)
is not.  The other ways considered were worse: NOARP on the host's link
changes its own neighbour handling, and taking the link down makes the
kernel drop the host's IPv6 addresses and routes, which an undo would have
to rebuild.  Undo deletes both tables in one transaction and the peers'
failed entries, so the next packet resolves afresh.

``port_unreachable(host, port)``: REJECT with ICMP port unreachable (ICMPv6
port unreachable) for TCP and UDP to or from ``port``; what connect() and an
established connection get is measured in tests/test_faults_misc.py.
"""

from __future__ import annotations

import itertools
import shutil

from ..errors import FaultError, InvalidArgument, SetupError, Unsupported
from .._host import Host, check_host
from ._base import Fault
from ._rules import Rules, build
from ._firewall import Firewall

_ids = itertools.count(1)


class HostUnreachable(Fault):
    def __init__(self, host: Host):
        super().__init__(host.lab)
        self.host = host
        self.table = f"fihu{next(_ids)}"
        self.label = f"host_unreachable({host.name!r})"
        self._loaded = False

    def _ruleset(self) -> str:
        t = self.table
        return "\n".join([
            f"table arp {t} {{",
            "  chain in { type filter hook input priority 0; policy accept; counter drop; }",
            "  chain out { type filter hook output priority 0; policy accept; counter drop; }",
            "}",
            f"table inet {t} {{",
            '  chain in { type filter hook input priority 0; policy accept; iif "lo" accept; '
            "counter drop; }",
            '  chain out { type filter hook output priority 0; policy accept; oif "lo" accept; '
            "counter drop; }",
            "}", ""])

    async def _nft(self, script: str) -> None:
        try:
            await self.host.run(["nft", "-f", "-"], input=script.encode())
        except SetupError as exc:
            raise FaultError(str(exc), netns=self.host.netns, call="nft -f") from exc

    async def _forget(self) -> None:
        """Delete every other host's neighbour entries for this host."""
        for other in self.lab.hosts.values():
            if other is self.host:
                continue
            for flag, addr in (("-4", self.host.v4), ("-6", self.host.v6)):
                if addr:
                    try:
                        await other.run(["ip", flag, "neigh", "flush", "to", addr])
                    except SetupError as exc:
                        raise FaultError(str(exc), netns=other.netns, call="ip neigh flush") \
                            from exc

    async def _apply(self) -> None:
        if shutil.which("nft") is None:
            raise Unsupported("nft (nftables) is not installed: host_unreachable needs it "
                              "(apt-get install nftables)")
        await self._nft(self._ruleset())
        self._loaded = True
        try:
            await self._forget()
        except BaseException:
            await self._delete_tables()
            raise

    async def _delete_tables(self) -> None:
        if self._loaded:
            await self._nft(f"delete table arp {self.table}\ndelete table inet {self.table}\n")
            self._loaded = False

    async def _revert(self) -> None:
        if self._loaded:
            await self._delete_tables()
            await self._forget()


def host_unreachable(host: Host) -> HostUnreachable:
    """Make ``host`` vanish from its link (see the module docstring): its
    peers' next packets fail address resolution and they get EHOSTUNREACH."""
    check_host(host, "host_unreachable()")
    return HostUnreachable(host)


def port_unreachable(host: Host, port: int, *, family: int | None = None) -> Firewall:
    """Answer every TCP and UDP packet to or from ``port`` of ``host`` with an
    ICMP (ICMPv6) port unreachable, as a host does for a closed UDP port."""
    if port is None:
        raise InvalidArgument("port must be an int in 1..65535, got port=None from "
                              "port_unreachable()")
    host, bodies, label = build("reject", host, "in", None, port, "all", None, family,
                                 "icmp-port-unreachable", where="port_unreachable")
    label = f"port_unreachable({host.name!r}, {port}" + (f", IPv{family})" if family else ")")
    return Firewall(host.lab, label, [Rules(host, bodies)])
