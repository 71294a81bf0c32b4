"""Destroy a socket from outside, as ``ss -K`` does: inet_diag SOCK_DESTROY.

    info = await faults.destroy(conn)       # an action: nothing to undo

The socket is found in its host's namespace by its exact 4-tuple and
destroyed by that tuple *and* its cookie, so a socket that reused the tuple
in between is never hit.  The kernel's tcp_abort() (net/ipv4/tcp.c) then:

- sends a RST if the state needs one (tcp_need_reset: ESTABLISHED,
  CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2, SYN_RECV): the peer sees ECONNRESET;
- closes the socket with ECONNABORTED, reported to the owner's blocked call
  or, failing that, its next one.

Validation happens when ``destroy(sock)`` is called, before anything is
touched: a socket the test closed is an InvalidArgument; one the kernel no
longer has (reset, timed out) is a FaultError naming it.
"""

from __future__ import annotations

import errno as _errno
import os
import socket as _socket
from typing import Awaitable

from .. import _diag
from ..errors import FaultError, InvalidArgument
from ..observe.snapshot import SocketInfo
from ..sockets import Socket

_AF = {4: _socket.AF_INET, 6: _socket.AF_INET6}


def destroy(sock: Socket) -> Awaitable[SocketInfo]:
    """Abort ``sock`` through SOCK_DESTROY; returns (awaitable) the socket as
    inet_diag saw it just before."""
    if not isinstance(sock, Socket):
        raise InvalidArgument(f"sock must be a Socket (from connect, listen or accept), got "
                              f"sock={sock!r} ({type(sock).__name__}) from destroy()")
    sock.host.lab.check_open(f"destroy(): {sock!r}")
    if sock.closed:
        raise InvalidArgument(f"{sock!r} was closed by the test; there is nothing to destroy "
                              f"(from destroy())")
    if sock.local is None:
        raise InvalidArgument(f"{sock!r} is neither bound nor connected: inet_diag cannot "
                              f"find it (from destroy())")
    return _destroy(sock)


def _packed(address: str, family: int) -> bytes:
    return _socket.inet_pton(_AF[family], address)


async def _destroy(sock: Socket) -> SocketInfo:
    try:
        return _destroy_sync(sock)
    except OSError as exc:  # the diag socket itself failed
        raise FaultError(f"inet_diag failed while destroying {sock!r}: {exc}",
                         netns=sock.host.netns, call="SOCK_DESTROY", errno=exc.errno) from exc


def _destroy_sync(sock: Socket) -> SocketInfo:
    host, family = sock.host, sock.family
    n = 4 if family == 4 else 16
    remote = sock.remote or (("0.0.0.0" if family == 4 else "::"), 0)
    want = (sock.local[1], remote[1], _packed(sock.local[0], family), _packed(remote[0], family))
    af = _AF[family]
    for buf, off, _length in _diag.dump(host._diag, af):
        head = _diag.decode_header(buf, off)
        if (head[4], head[5], bytes(head[6][:n]), bytes(head[7][:n])) != want:
            continue
        cookie = head[8]
        info = next((s for s in host.sockets() if s.cookie == cookie), None)
        if info is None:
            break  # gone in between: reported below
        # the sockid as the kernel sent it: 4-tuple, interface and cookie
        sockid = bytes(buf[off + 4: off + 52])
        err = _diag.destroy(host._diag, af, _socket.IPPROTO_TCP, sockid)
        if err == _errno.ENOENT:
            break
        if err:
            raise FaultError(f"SOCK_DESTROY of {sock!r} failed: {os.strerror(err)}",
                             netns=host.netns, call="SOCK_DESTROY", errno=err)
        return info
    raise FaultError(f"{sock!r}: the kernel has no such socket any more (reset, timed out or "
                     f"closed by its peer process); nothing to destroy",
                     netns=host.netns, call="SOCK_DESTROY", errno=_errno.ENOENT)
