"""SO_REUSEADDR lets a restarted server bind its port while its old
connections sit in TIME_WAIT, but only when the old listener had set it too;
the TIME_WAIT sockets stay.

Seed 000 (四次挥手 4): "为了防止过多的time_wait()状态描述符占用大量的资源,一种方法就是将处于
time_wait()状态下的套接字设置为可重用的".  Depends.  A timewait socket stays in
its port's bind bucket and conflicts with a new bind() unless both sockets
allow reuse (inet_bind_conflict(): sk->sk_reuse && sk2->sk_reuse &&
sk2->sk_state != TCP_LISTEN); the timewait socket carries the flag of the
socket it replaced (inet_twsk_alloc(): tw_reuse = sk_reuse), which an accepted
socket inherits from its listener.  So the old listener's setting decides as
much as the new one's, and without reuse on both bind() fails with
EADDRINUSE.  Nothing is freed: the TIME_WAIT sockets keep their 60 s.
"""

import pytest

SEED = "000"
CLAIM = "TIME_WAIT sockets can be made reusable (SO_REUSEADDR) so the port can be bound again"
VERDICT = "depends"


@pytest.mark.parametrize("old_reuse,new_reuse,expected", [
    (True, True, None), (True, False, "EADDRINUSE"),
    (False, True, "EADDRINUSE"), (False, False, "EADDRINUSE"),
], ids=["both", "old-only", "new-only", "neither"])
async def test_rebind_over_time_wait(lab, family, old_reuse, new_reuse, expected, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family, reuseaddr=old_reuse)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    await peer.close()                                       # the server closes first ...
    await lab.wait_state(conn, "CLOSE_WAIT")
    await conn.close()
    await lab.wait_state(peer, "TIME_WAIT")                  # ... and keeps the TIME_WAIT
    assert (await listener.close()).ok                       # the server stops

    again = await server.socket(family)                      # and starts again
    if new_reuse:
        assert (await again.setsockopt("SO_REUSEADDR", True)).ok
    bound = await again.bind(9000)
    assert bound.errno == expected
    if bound.ok:
        assert (await again.listen()).ok
        fresh = await client.connect(server, 9000, family=family)
        assert (await again.accept()).remote == fresh.local
    assert peer.info().state == "TIME_WAIT"                  # the old connection is still there
    evidence(f"bind() old={old_reuse} new={new_reuse}", bound.errno or "OK")
