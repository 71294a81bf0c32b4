"""Power a host off, on, or both (a reboot): the host crash of the seeds.

``power_off`` must let nothing escape, because what a case asserts is the
*peer's* view of a host that vanished: its connection stays ESTABLISHED and
learns nothing until it sends.  So the order matters:

1. blackhole: iptables DROP of everything in and out of the host's
   namespace, loaded atomically (iptables-restore, ip6tables-restore);
2. kill every process in it (the kernel closes their sockets: FIN, or RST
   when data was unread -- all dropped by 1);
3. abort every socket left (inet_diag SOCK_DESTROY, tcp_abort(): the RST
   tcp_send_active_reset() builds dies in OUTPUT too; orphans are gone);
4. take eth0 down, so it stops answering ARP, which iptables does not see
   (neighbour discovery is ICMPv6 and already dropped).

``power_on`` gives the host a fresh namespace under the same name, with the
same addresses, the same MAC (the same NIC: the peers' neighbour caches
stay right, as after a real reboot) on the same switch port, the same
sysctls, and no TCP state.  The ``Host`` object is kept, so the test's
references stay valid; sockets and peers of the old life are gone (their
calls fail with EBADF, or the program (host.program()) is reported dead).

These are actions, not undoable faults: the undo of ``power_off`` is
``power_on``, and a lab torn down while a host is off removes it as usual.
"""

from __future__ import annotations

import weakref

import trio

from .. import _iptables, _netlink
from ..errors import FaultError, InvalidArgument
from .._topology import netns as _backend

# hosts currently powered off (by this module); weak: a lab's hosts die with it
_off: "weakref.WeakSet" = weakref.WeakSet()

# inserted at the top of the built-in chains, ahead of any fault's jump; with
# --noflush, so other faults' chains stay and their own undo still finds them
_BLACKHOLE = ("*filter\n"
              "-I INPUT 1 -j DROP\n-I FORWARD 1 -j DROP\n-I OUTPUT 1 -j DROP\n"
              "COMMIT\n")


def _check_host(host, what: str):
    from .._host import check_host
    check_host(host, f"{what}()")
    if not host.lab.context.holds(host):
        raise InvalidArgument(f"{what}(): host {host.name!r} is not (or no longer) in its lab")
    return host


def is_off(host) -> bool:
    """Whether ``power_off`` left this host off (and ``power_on`` has not run)."""
    return host in _off


async def power_off(host) -> None:
    """Turn the host off like pulling its plug: returns once it is silent.
    No FIN, no RST, no ARP answer leaves it; its peers' sockets stay as they
    were (ESTABLISHED) until they send and time out."""
    _check_host(host, "power_off")
    if host in _off:
        raise InvalidArgument(f"host {host.name} is already powered off; power_on() it first")
    await _blackhole(host)
    _off.add(host)
    await host.stop_processes()
    host.abort_sockets()  # trio sockets: closed on the loop
    await trio.to_thread.run_sync(_link_down, host)


async def power_on(host) -> None:
    """Boot a powered-off host: a fresh namespace, same name, addresses, MAC,
    switch port and sysctls, no TCP state.  Returns when its link passes
    traffic and, for a container host created with ``ready=``, when that
    condition holds again."""
    _check_host(host, "power_on")
    if host not in _off:
        raise InvalidArgument(f"host {host.name} is not powered off; use reboot() to restart "
                              f"a running host (power_off first, so nothing escapes)")
    # anything started while it was off (nothing should be) dies unseen too
    await host.stop_processes()
    host.abort_sockets()  # trio sockets: closed on the loop
    new = await trio.to_thread.run_sync(_rebuild, host)
    await host.lab.context.replace_backend(host, new)
    _off.discard(host)
    await new.booted(host)  # e.g. a container's server listens again


async def reboot(host) -> None:
    """power_off, then power_on: the host comes back with no memory of its
    connections.  Its peers' next segments meet a RST (no socket); a
    reconnect from the same source port meets the peer's old socket and a
    challenge ACK (RFC 5961 §4)."""
    await power_off(host)
    await power_on(host)


async def _blackhole(host) -> None:
    """DROP everything in and out of the host, loopback included, both
    families (atomically per family: one iptables-restore each)."""
    async with _iptables.tables(host).lock:
        for family in _iptables.FAMILIES:
            await _iptables.restore(host, family, _BLACKHOLE)


def _link_down(host) -> None:
    with _netlink.rtnl(host.ns_fd, host.netns) as ipr:
        ipr.link("set", index=_netlink.HOST_IFINDEX, state="down")


def _mac(fd: int, netns: str) -> str | None:
    with _netlink.rtnl(fd, netns) as ipr:
        links = ipr.get_links(_netlink.HOST_IFINDEX)
        return links[0].get("address") if links else None


def _rebuild(host):
    """Worker thread: a fresh namespace of the host's kind, wired, with the
    old MAC; returns its backend.  On failure the host still points at its
    old (dead) namespace, which the lab's teardown removes as usual."""
    lab = host.lab
    sw_name, sw_fd = lab.context.switch
    spec = _backend.HostSpec.make(host.name, host.index, host.profile, host.sysctls)
    mac = _mac(host.ns_fd, host.netns)
    # the veth first: deleting a namespace frees its links only later, in the
    # kernel's cleanup_net work (60-120 ms), and the port's name and ifindex
    # are about to be reused
    _netlink.detach_port(sw_fd, sw_name, host.index)
    new = host.backend.rebuild(lab.slot, spec)
    try:
        if new.netns != host.netns:  # pragma: no cover - names are derived from the slot
            raise FaultError(f"power_on: namespace {new.netns} is not the host's {host.netns}")
        _backend.wire_host(lab.slot, spec, (sw_name, sw_fd), (new.netns, new.fd))
        if mac:
            with _netlink.rtnl(new.fd, new.netns) as ipr:
                ipr.link("set", index=_netlink.HOST_IFINDEX, address=mac)
    except BaseException:
        try:
            _netlink.detach_port(sw_fd, sw_name, host.index)
        finally:
            new.stop()
        raise
    return new
