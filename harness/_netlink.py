"""Links and queueing disciplines through pyroute2: the only module that
imports it.

Building and scrubbing a host, the hot paths, go through the lean
rtnetlink client ``_rtnl`` instead (measured: pyroute2's socket set-up and
decoding cost more than the kernel work there); this module keeps what
pyroute2 does well and is not on a per-lab path: switch ports (power_on),
link state, qdiscs (netem), the tcp_metrics flush.
Synchronous on purpose: called from a worker thread
(``trio.to_thread.run_sync``), so the trio loop never blocks on netlink.
Sockets are opened after ``setns`` (pyroute2's own ``IPRoute(netns=...)``
forks a helper per call: 27 ms for a two-host lab against 8.5 ms this way).
Foreign errors become SetupError with the call and the namespace.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from . import _netns
from .errors import SetupError

BRIDGE_INDEX = 2
HOST_IFINDEX = 2          # eth0 inside every host


@contextlib.contextmanager
def rtnl(fd: int, netns: str) -> Iterator[object]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with _netns.inside(fd):
        ipr = IPRoute()
    try:
        yield ipr
    except NetlinkError as exc:
        raise SetupError(f"netlink call failed: {exc}", netns=netns, errno=exc.code) from exc
    finally:
        ipr.close()


def detach_port(sw_fd: int, sw_name: str, port: int) -> None:
    """Delete the switch end of a host's veth (the host end goes with it)."""
    try:
        with rtnl(sw_fd, sw_name) as ipr:
            ipr.link("del", index=100 + port)
    except SetupError as exc:
        if exc.errno != "ENODEV":  # already gone with the host's namespace
            raise


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


def _genl(sock, family: int, cmd: int, attrs: bytes = b"", *, ack: bool = True) -> bytes:
    """One request, one message back: the reply (ack=False, for a query) or
    the ACK carrying the error (ack=True, for a command).  Asking a query for
    an ACK too would leave that ACK queued, to be read as the next
    command's answer."""
    import struct
    body = struct.pack("=BBH", cmd, 1, 0) + attrs
    sock.send(struct.pack("=IHHII", 16 + len(body), family, 0x1 | (0x4 if ack else 0), 1, 0)
              + body)
    return sock.recv(65536)


def flush_tcp_metrics(fd: int, netns: str) -> None:
    """``ip tcp_metrics flush``: TCP_METRICS_CMD_DEL without an address
    flushes the namespace's whole cache (tcp_metrics_nl_cmd_del())."""
    import socket
    import struct
    global _tcp_metrics_family
    with _netns.socket_in(fd, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                          16) as sock:
        if _tcp_metrics_family is None:
            name = b"tcp_metrics\0"
            attr = struct.pack("=HH", 4 + len(name), _CTRL_ATTR_FAMILY_NAME) + name
            attr += b"\0" * ((4 - len(attr) % 4) % 4)
            data = _genl(sock, _GENL_CTRL, _CTRL_CMD_GETFAMILY, attr, ack=False)
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
