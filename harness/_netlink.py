"""Links and addresses through pyroute2: the only module that imports it.

Synchronous on purpose: the lab runs a whole build in one worker thread
(``trio.to_thread.run_sync``), so the trio loop never blocks on netlink.
Sockets are opened after ``setns`` (pyroute2's own ``IPRoute(netns=...)``
forks a helper per call: 27 ms for a two-host lab against 8.5 ms this way).
Interface indexes are chosen by us in the create request, so no lookups.
Foreign errors become SetupError with the call and the namespace.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from . import _netns
from .errors import SetupError

BRIDGE_INDEX = 2
HOST_IFINDEX = 2          # eth0 inside every host
IFA_F_NODAD = 0x02        # usable at once: no duplicate address detection


@contextlib.contextmanager
def rtnl(fd: int, netns: str) -> Iterator[object]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with _netns.entered(fd):
        ipr = IPRoute()
    try:
        yield ipr
    except NetlinkError as exc:
        raise SetupError(f"netlink call failed: {exc}", netns=netns, errno=exc.code) from exc
    finally:
        ipr.close()


def make_switch(fd: int, netns: str) -> None:
    with rtnl(fd, netns) as ipr:
        # multicast snooping off: the switch floods multicast like a hub, so an
        # IPv6 neighbour solicitation never waits on an MLD report that was sent
        # before the port forwarded (measured: ~1 in 300 fresh labs stalled 1 s)
        ipr.link("add", index=BRIDGE_INDEX, ifname="br0", kind="bridge", state="up",
                 br_mcast_snooping=0)


def attach_host(sw_fd: int, sw_name: str, host_fd: int, host_name: str, port: int,
                v4: str, v6: str) -> None:
    """A veth from the switch (port ``p<port>``, ifindex 100+port) to the
    host's eth0, with the host's addresses; lo up."""
    with rtnl(sw_fd, sw_name) as ipr:
        ipr.link("add", index=100 + port, ifname=f"p{port}", kind="veth", master=BRIDGE_INDEX,
                 state="up", peer={"ifname": "eth0", "index": HOST_IFINDEX, "net_ns_fd": host_fd})
    configure_host(host_fd, host_name, v4, v6)


def configure_host(host_fd: int, host_name: str, v4: str, v6: str) -> None:
    with rtnl(host_fd, host_name) as ipr:
        ipr.addr("add", index=HOST_IFINDEX, address=v4, prefixlen=24)
        ipr.addr("add", index=HOST_IFINDEX, address=v6, prefixlen=64, flags=IFA_F_NODAD)
        ipr.link("set", index=HOST_IFINDEX, state="up")
        ipr.link("set", index=1, state="up")


def detach_port(sw_fd: int, sw_name: str, port: int) -> None:
    """Delete the switch end of a host's veth (the host end goes with it)."""
    try:
        with rtnl(sw_fd, sw_name) as ipr:
            ipr.link("del", index=100 + port)
    except SetupError as exc:
        if exc.errno != "ENODEV":  # already gone with the host's namespace
            raise


def _link_ready(ipr, index: int) -> bool:
    links = ipr.get_links(index)
    if not links:
        return False
    link = links[0]
    return link.get("qdisc") not in (None, "noop") and link.get("operstate") == "UP"


def wait_links_ready(checks: list[tuple[int, str, int]], timeout: float = 5.0) -> None:
    """Wait until each (ns fd, ns name, ifindex) has its qdisc attached and
    is operationally up.  Until the kernel's linkwatch attaches the qdisc a
    veth drops everything: without this wait ~2% of fresh labs lose the first
    ARP request and stall 1 s on the first connect."""
    from ._poll import until_sync
    deadline = time.monotonic() + timeout
    for fd, name, index in checks:
        with rtnl(fd, name) as ipr:
            until_sync(lambda: _link_ready(ipr, index), deadline, longest=0.0005,
                       timeout=lambda _: SetupError(f"link {index} not ready after {timeout}s "
                                                    f"(qdisc not attached or not up)",
                                                    netns=name))


def flush_neighbours(fd: int, netns: str) -> None:
    with rtnl(fd, netns) as ipr:
        for n in ipr.get_neighbours():
            dst = n.get_attr("NDA_DST")
            if dst:
                try:
                    ipr.neigh("del", ifindex=n["ifindex"], dst=dst, family=n["family"])
                except SetupError:
                    pass  # already expired


# --- queueing disciplines (faults.netem) -------------------------------------

TC_H_ROOT = 0xFFFFFFFF


def qdiscs(fd: int, netns: str, index: int) -> list[tuple[str, int, int]]:
    """(kind, handle, parent) of every qdisc on link ``index``, root first."""
    with rtnl(fd, netns) as ipr:
        return [(q.get_attr("TCA_KIND"), q["handle"], q["parent"])
                for q in ipr.get_qdiscs(index)]


def qdisc_add(fd: int, netns: str, index: int, kind: str, *, handle: int,
              parent: int = TC_H_ROOT, **options) -> None:
    """Add a qdisc (create, exclusive: EEXIST if ``parent`` already holds a
    non-default one).  ``options`` are pyroute2's for ``kind``: netem takes
    delay/jitter in microseconds and loss, loss_corr, duplicate, prob_reorder,
    prob_corrupt in percent; tbf rate in bytes/s, burst and limit in bytes.
    An unknown kind (no sch_<kind> in the kernel) fails with ENOENT."""
    with rtnl(fd, netns) as ipr:
        ipr.tc("add", kind, index, handle=handle, parent=parent, **options)


def qdisc_del_root(fd: int, netns: str, index: int, *, kind: str, handle: int) -> bool:
    """Delete the root qdisc of link ``index`` (and its children) if it is
    still ours: of ``kind`` with ``handle``.  False when it is not there
    (the link or its namespace went away, or someone replaced it)."""
    import errno
    from pyroute2.netlink.exceptions import NetlinkError
    with rtnl(fd, netns) as ipr:
        if not any(q["parent"] == TC_H_ROOT and q["handle"] == handle and
                   q.get_attr("TCA_KIND") == kind for q in ipr.get_qdiscs(index)):
            return False
        try:
            ipr.tc("del", index=index, handle=handle, parent=TC_H_ROOT)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return False  # gone in the meantime
            raise
        return True


_GENL_CTRL, _CTRL_CMD_GETFAMILY, _CTRL_ATTR_FAMILY_NAME, _CTRL_ATTR_FAMILY_ID = 0x10, 3, 2, 1
_TCP_METRICS_CMD_DEL = 2
_tcp_metrics_family: int | None = None


def _genl(sock, family: int, cmd: int, attrs: bytes = b"") -> bytes:
    import struct
    body = struct.pack("=BBH", cmd, 1, 0) + attrs
    sock.send(struct.pack("=IHHII", 16 + len(body), family, 0x1 | 0x4, 1, 0) + body)
    return sock.recv(65536)


def flush_tcp_metrics(fd: int, netns: str) -> None:
    """``ip tcp_metrics flush``: TCP_METRICS_CMD_DEL without an address
    flushes the namespace's whole cache (tcp_metrics_nl_cmd_del())."""
    import socket
    import struct
    global _tcp_metrics_family
    with _netns.entered(fd):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 16)
    with sock:
        if _tcp_metrics_family is None:
            name = b"tcp_metrics\0"
            attr = struct.pack("=HH", 4 + len(name), _CTRL_ATTR_FAMILY_NAME) + name
            attr += b"\0" * ((4 - len(attr) % 4) % 4)
            data = _genl(sock, _GENL_CTRL, _CTRL_CMD_GETFAMILY, attr)
            pos = 20
            while pos + 4 <= len(data):
                alen, atype = struct.unpack_from("=HH", data, pos)
                if atype == _CTRL_ATTR_FAMILY_ID:
                    _tcp_metrics_family = struct.unpack_from("=H", data, pos + 4)[0]
                    break
                pos += (alen + 3) & ~3
            else:
                raise SetupError("generic netlink has no tcp_metrics family", netns=netns)
        data = _genl(sock, _tcp_metrics_family, _TCP_METRICS_CMD_DEL)
        err = struct.unpack_from("=i", data, 16)[0]
        if err and err != -2:  # ENOENT: nothing cached
            raise SetupError(f"tcp_metrics flush failed: {err}", netns=netns, errno=-err)
