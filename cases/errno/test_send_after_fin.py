"""After the peer's FIN, the first send() succeeds; only after the peer's
RST answers it does send() fail, and then with EPIPE, never ECONNRESET.

Seed 003 (总之 2): "收到对端FIN后，仍然调用send()，直接返回Broken pipe".  False on
Linux: a FIN only shuts the peer's sending side, so in CLOSE_WAIT sending is
legal and the first send() is accepted.  The peer's closed (orphaned) socket
answers the new data with a RST, and tcp_reset() in CLOSE_WAIT sets sk_err =
EPIPE (not ECONNRESET), so every later send() fails with EPIPE.

Which code sends that RST is a race the kernel resolves per connection: when
our ACK of its FIN reached the peer after close() had released the socket,
the orphan was handed to a timewait socket in substate FIN_WAIT2
(tcp_rcv_state_process(), FIN_WAIT1: tcp_time_wait(sk, TCP_FIN_WAIT2, tmo))
and tcp_timewait_state_process() resets (TCP_TIMEWAIT_SOCKET); otherwise it
is still a full FIN_WAIT2 socket and aborts on data (TCP_ABORT_ON_DATA).  A
snapshot tells which: a timewait socket carries the time_wait timer.
"""

import harness

SEED = "003"
CLAIM = "after the peer's FIN, send() fails with EPIPE at once"
VERDICT = "false"


async def test_send_after_fin(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    await peer.close()                                           # FIN
    await lab.wait_state(conn, "CLOSE_WAIT")
    orphan = await lab.wait_state(peer, "FIN_WAIT2")
    expected = "TCP_TIMEWAIT_SOCKET" if orphan.timer == "time_wait" else "TCP_ABORT_ON_DATA"

    first = await conn.send(b"hello")
    assert first.ok and first.value == 5                         # accepted, not EPIPE
    rst = await lab.timeline.wait_for(harness.rst_sent(peer))    # the peer resets on data
    assert rst.reason == expected
    await lab.timeline.wait_for(harness.rst_received(conn))

    second, third = await conn.send(b"x"), await conn.send(b"x")
    assert (second.errno, third.errno) == ("EPIPE", "EPIPE")
    evidence("send results", f"{first.value} bytes, {second.errno}, {third.errno}")
    evidence("peer RST reason", rst.reason)
