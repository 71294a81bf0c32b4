"""The namespace backend: realises host specs as named network namespaces
joined by a bridge in a namespace of its own (nothing in the root namespace).

Synchronous; the lab calls it from one worker thread per build.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .. import _diag, _netlink, _netns, _rtnl
from .._names import Slot, check_host_name
from .._poll import until_sync
from ..errors import InvalidArgument, SetupError, Unsupported
from .._timers import explicit, resolve


@dataclass(frozen=True)
class HostSpec:
    """A host as plain data.  ``number`` picks its addresses (.n, ::n)."""

    name: str
    number: int
    profile: str = "default"
    sysctls: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    explicit: frozenset = frozenset()  # sysctls the test set itself

    @classmethod
    def make(cls, name: str, number: int, profile: str = "default",
             sysctls: dict | None = None) -> "HostSpec":
        check_host_name(name)
        if name == "sw":
            raise InvalidArgument("host name 'sw' is reserved for the lab's switch")
        if not 1 <= number <= 250:
            raise InvalidArgument(f"a lab holds at most 250 hosts, got host number {number}")
        return cls(name, number, profile, MappingProxyType(resolve(profile, sysctls)),
                   explicit(sysctls))


# --- the parent namespace: a private established-connection table per host --

#: Buckets of each host's own TCP established hash table.  A namespace
#: created by a thread whose current namespace has
#: net.ipv4.tcp_child_ehash_entries set gets a table of its own of that size
#: (tcp_set_hashinfo(), net/ipv4/tcp_ipv4.c); otherwise it shares the
#: machine's (262,144 buckets on a 24 GiB VM; it grows with RAM), and every
#: inet_diag dump -- each snapshot, each wait_state poll, each teardown --
#: walks all of it: 4.6 ms for an empty namespace, against 0.07 ms at 1024.
#: The kernel also derives tcp_max_tw_buckets (entries / 2) and
#: tcp_max_syn_backlog (entries / 128, at least 128) from the size: both
#: are pinned in timers.DEFAULT to what a 262,144-bucket table gives, so
#: results do not depend on the machine or on this setting.
CHILD_EHASH_ENTRIES = 1024


class _Parent:
    """A namespace of this process's own, held only by an fd (it dies with
    the process: nothing to sweep), with tcp_child_ehash_entries set; hosts
    are unshared from inside it.  The root namespace is never written.  On
    a kernel without the sysctl (before 6.1) hosts share the machine's
    table, as before, and ``unavailable`` says why."""

    def __init__(self) -> None:
        self.pid = 0
        self.fd: int | None = None
        self.unavailable: str | None = None
        self._lock = threading.Lock()

    def get(self) -> int | None:
        with self._lock:
            if self.pid != os.getpid():  # first use, or a forked child (which makes its own)
                if self.fd is not None:
                    os.close(self.fd)
                self.pid, self.fd, self.unavailable = os.getpid(), None, None
                fd = _netns.create_unnamed()
                try:
                    _netns.write_sysctl(fd, "net.ipv4.tcp_child_ehash_entries",
                                        CHILD_EHASH_ENTRIES)
                except (Unsupported, OSError) as exc:
                    os.close(fd)
                    self.unavailable = f"net.ipv4.tcp_child_ehash_entries: {exc}"
                else:
                    self.fd = fd
            return self.fd


_parent = _Parent()


def build_switch(slot: Slot) -> tuple[str, int]:
    """The switch: a bridge in a namespace of its own (from the parent too:
    its teardown's socket dump then walks a small private table)."""
    name = slot.netns_name("sw")
    _netns.create(name, parent=_parent.get())
    fd = _netns.open_fd(_netns.path(name))
    try:
        with _rtnl.Rtnl(fd, name) as rt:
            rt.bridge(_netlink.BRIDGE_INDEX, "br0")
    except BaseException:
        os.close(fd)
        _netns.delete(name)
        raise
    return name, fd


def create_host_ns(slot: Slot, spec: HostSpec) -> tuple[str, int]:
    name = slot.netns_name(spec.name)
    _netns.create(name, parent=_parent.get())
    return name, _netns.open_fd(_netns.path(name))


def wire_host(slot: Slot, spec: HostSpec, sw: tuple[str, int], ns: tuple[str, int],
              timeout: float = 5.0) -> None:
    """A veth from the switch (port ``p<n>``, ifindex 100+n) to the host's
    eth0, its addresses, lo and eth0 up, sysctls; then wait until both ends
    pass traffic.  Raw rtnetlink (_rtnl): the per-host hot path of a fresh
    lab, where pyroute2 cost more than the kernel work."""
    plumb(slot, spec, sw, ns)
    wait_wired(slot, [(spec, ns)], sw, time.monotonic() + timeout)


def plumb(slot: Slot, spec: HostSpec, sw: tuple[str, int], ns: tuple[str, int]) -> None:
    """wire_host without the wait (``wait_wired``)."""
    name, fd = ns
    with _rtnl.Rtnl(sw[1], sw[0]) as switch:
        switch.veth(100 + spec.number, f"p{spec.number}", _netlink.BRIDGE_INDEX,
                    _netlink.HOST_IFINDEX, "eth0", fd)
    with _rtnl.Rtnl(fd, name) as host:
        host.address(_netlink.HOST_IFINDEX, slot.v4(spec.number), 24)
        host.address(_netlink.HOST_IFINDEX, slot.v6(spec.number), 64)
        host.up(_netlink.HOST_IFINDEX)
        host.up(1)
    apply_sysctls(fd, name, spec.sysctls, spec.explicit)  # after eth0: per-device keys work


def wait_wired(slot: Slot, hosts: list[tuple[HostSpec, tuple[str, int]]],
               sw: tuple[str, int], deadline: float) -> None:
    """Until every host's eth0 and its switch port are up with a qdisc
    (until linkwatch attaches it a veth drops everything: without this wait
    ~2% of fresh labs lost the first ARP and stalled 1 s), and its IPv6
    address is fully installed (``v6_ready``)."""
    with _rtnl.Rtnl(sw[1], sw[0]) as switch:
        for spec, (name, fd) in hosts:
            with _rtnl.Rtnl(fd, name) as host:
                for rt, index in ((host, _netlink.HOST_IFINDEX), (switch, 100 + spec.number)):
                    until_sync(lambda: rt.link_ready(index), deadline, longest=0.0005,
                               timeout=lambda _: SetupError(
                                   f"link {index} not ready before the deadline (qdisc not "
                                   f"attached or not up)", netns=rt.netns))
            v6 = slot.v6(spec.number)
            until_sync(lambda: v6_ready(fd, v6), deadline, longest=0.0005,
                       timeout=lambda _: SetupError(
                           f"IPv6 address {v6} not installed before the deadline "
                           f"(addrconf's work did not run)", netns=name))


def v6_ready(fd: int, address: str) -> bool:
    """Whether the kernel finished adding ``address``: even without
    duplicate address detection (IFA_F_NODAD) the join of its
    solicited-node multicast group and its local route are deferred work
    (addrconf_dad_work(), on a workqueue, under the rtnl lock).  Until it
    runs the host ignores neighbour solicitations for the address and
    packets to it: measured, 4 in 100 fresh labs stalled 1 s on their first
    IPv6 connect when the lab was returned before that work ran."""
    target = ipaddress.IPv6Address(address).exploded.replace(":", "") + " 80 "
    with _netns.inside(fd):
        f = open("/proc/thread-self/net/ipv6_route")
    with f:
        return any(line.startswith(target) for line in f)


def apply_sysctls(fd: int, netns: str, sysctls: Mapping[str, str],
                  explicit: frozenset = frozenset()) -> None:
    from .._timers import OPTIONAL
    errors = _netns.write_sysctls(fd, sysctls.items())
    for key, exc in errors.items():  # in the order given: the first one is reported
        if isinstance(exc, Unsupported):
            if exc.call:  # the key exists, /proc/sys cannot be written here
                raise exc
            if key in OPTIONAL and key not in explicit:
                continue
            if key in OPTIONAL:
                raise Unsupported(f"sysctl {key} (asked for by the test) does not exist in "
                                  f"this kernel") from None
            raise InvalidArgument(f"sysctl {key} does not exist in a host namespace on this "
                                  f"kernel (only per-namespace sysctls can be set)") from None
        raise InvalidArgument(f"sysctl {key}={sysctls[key]!r} rejected by the kernel: "
                              f"{os.strerror(getattr(exc, 'errno', 0) or 0)}") from None


def destroy_ns(name: str, fd: int, diag_sock=None) -> int:
    """Abort every socket left in the namespace, then delete it.  Returns the
    number of sockets aborted.  A kernel without SOCK_DESTROY still gets its
    namespace deleted: what sockets are left die by their own timers (an
    orphan keeps the deleted namespace alive until then)."""
    n = 0
    own = diag_sock is None
    if own:
        diag_sock = _diag.open_socket(fd)
    try:
        n = _diag.destroy_all(diag_sock)
    except Unsupported:
        pass
    finally:
        if own:
            diag_sock.close()
    os.close(fd)
    _netns.delete(name)
    return n


def scrub(netns: str, fd: int) -> None:
    """Leave a host namespace as a fresh one: no socket of any kind, no
    neighbour entry, no cached per-destination TCP metrics."""
    with _diag.open_socket(fd) as sock:
        _diag.destroy_all(sock)
    flush_caches(netns, fd)


def flush_caches(netns: str, fd: int) -> None:
    """Neighbour entries and cached per-destination TCP metrics (which seed a
    new connection's RTT and ssthresh) go, as in a fresh namespace."""
    with _rtnl.Rtnl(fd, netns) as rt:
        rt.flush_neighbours()
    _netlink.flush_tcp_metrics(fd, netns)


# --- the backend: a host that is just a namespace ------------------------------


#: why hosts' processes cannot get IPC and mount namespaces of their own
#: here (then they share the machine's), or None; set by the first failure
world_unavailable: str | None = None


def new_world() -> _netns.World | None:
    """A fresh ``_netns.World``, or None (and ``world_unavailable`` says
    why) where the kernel refuses one."""
    global world_unavailable
    if world_unavailable is not None:
        return None
    try:
        return _netns.World.create()
    except (SetupError, OSError) as exc:
        world_unavailable = f"no private IPC and /dev/shm for hosts' processes: {exc}"
        return None


class NamespaceHost:
    """A host that is a bare network namespace (the default kind).  The
    ``HostBackend`` protocol (topology.backend).  Its processes also get an
    IPC and a mount namespace of their own (``_netns.World``), made at the
    first spawn, gone with the host."""

    reusable = True
    main = None

    def __init__(self, netns: str, fd: int):
        self.netns, self.fd = netns, fd
        self._world: _netns.World | None = None

    def world(self) -> _netns.World | None:
        if self._world is None:
            self._world = new_world()
        return self._world

    def _drop_world(self) -> None:
        if self._world is not None:
            self._world.close()
            self._world = None

    def __repr__(self) -> str:
        return f"<NamespaceHost {self.netns}>"

    def command(self, argv: list[str]) -> list[str]:
        return argv

    async def start_tasks(self, context) -> None:
        return None

    async def booted(self, host) -> None:
        return None

    def stop(self) -> None:
        self._drop_world()
        destroy_ns(self.netns, self.fd)

    def rebuild(self, slot: Slot, spec: HostSpec) -> "NamespaceHost":
        self._drop_world()  # a power cycle empties /dev/shm and IPC, as a real one does
        _netns.delete(self.netns)  # unmount + unlink; self.fd keeps the old one alive
        return NamespaceHost(*create_host_ns(slot, spec))

    def describe(self) -> str:
        return f"netns {self.netns}"


class _NamespaceKind:
    """Creates NamespaceHost hosts; sweeps namespaces of dead processes."""

    name = "netns"

    def unavailable(self) -> str | None:
        return None

    def create(self, slot: Slot, spec: HostSpec, switch: tuple[str, int]) -> NamespaceHost:
        return self.create_many(slot, [spec], switch)[0]

    def create_many(self, slot: Slot, specs: list[HostSpec], switch: tuple[str, int],
                    timeout: float = 5.0) -> list[NamespaceHost]:
        """``create`` for several hosts, one after the other, each waited
        for before the next.  A failure removes every one of them."""
        made: list[tuple[str, int]] = []
        try:
            for spec in specs:
                ns = create_host_ns(slot, spec)
                made.append(ns)
                wire_host(slot, spec, switch, ns, timeout)
        except BaseException:
            for ns in made:
                destroy_ns(*ns)
            raise
        return [NamespaceHost(*ns) for ns in made]

    def sweep(self) -> list[str]:
        from .. import _sweep
        removed = []
        for name in _sweep.stale_netns():
            if _sweep.remove_netns(name):  # False: someone else removed it meanwhile
                removed.append(f"netns {name}")
        return removed


KIND = _NamespaceKind()
