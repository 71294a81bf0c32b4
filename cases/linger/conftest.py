"""The linger cases' set-up: a connection whose receiver does not read, so
that the sender closes with data still waiting in its send buffer.

Small buffers (SO_SNDBUF and SO_RCVBUF 32 KiB; the kernel doubles both) keep
the amounts small; the sender writes until a send() blocks: the receiver's
buffer is full, its window is zero, the sender's buffer is full and its
kernel sends zero-window probes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import trio

BUFFER = 32768
CHUNK = b"x" * 65536
# a send() that has not returned after this long is blocked: the receiver
# reads nothing, so nothing will free the send buffer (asserted below by the
# zero-window-probe timer, which only runs when the peer's window is zero)
BLOCKED = 0.2


@dataclass
class Stalled:
    """``conn`` (client) wrote ``written`` bytes; ``unsent`` of them are
    still in its send buffer, the rest sit unread in ``peer``'s receive
    buffer."""

    client: object
    server: object
    conn: object
    peer: object
    written: int
    unsent: int

    async def drain(self):
        """Read the peer's side until end of stream or an error: (bytes
        received, the last recv's Outcome)."""
        received = 0
        while True:
            out = await self.peer.recv()
            if not out.ok or out.value == b"":
                return received, out
            received += len(out.value)


@pytest.fixture
async def stalled(lab, family) -> Stalled:
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    await listener.setsockopt("SO_RCVBUF", BUFFER)   # inherited by the accepted socket
    conn = await client.connect(server, 9000, family=family, options={"SO_SNDBUF": BUFFER})
    peer = await listener.accept()                    # and never read (until drain())

    written = 0
    while True:
        with trio.move_on_after(BLOCKED) as blocked:  # a cancelled send copied nothing
            out = await conn.send(CHUNK)
            assert out.ok, out
            written += out.value
        if blocked.cancelled_caught:
            break
    info = conn.info()
    assert info.timer == "zero_window_probe", info     # the peer's window is zero
    assert 0 < info.send_queue < written
    assert peer.info().recv_queue == written - info.send_queue   # the rest: transmitted, unread
    return Stalled(client, server, conn, peer, written, info.send_queue)
