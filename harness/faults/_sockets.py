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

from typing import Awaitable

from .._host import destroy_socket
from .._observe.snapshot import SocketInfo
from .._sockets import Socket, check_socket

def destroy(sock: Socket) -> Awaitable[SocketInfo]:
    """Abort ``sock`` through SOCK_DESTROY; returns (awaitable) the socket as
    inet_diag saw it just before."""
    check_socket(sock, "destroy()", "sock", bound=True)
    return _destroy(sock)


async def _destroy(sock: Socket) -> SocketInfo:
    return destroy_socket(sock.host, sock.family, sock.local, sock.remote, repr(sock))
