"""The closer can no longer send but still reads what the peer sends, in
FIN_WAIT1 and FIN_WAIT2, as long as it only shut down its sending side; after
close() nothing can be read and the peer's data is answered with a RST.

Seed 000 (四次挥手 1): "client端进入FIN_WAIT_1状态...此时客户端不能发送数据,但仍然能够从
server端读取数据"; seed 002 (FIN_WAIT_2): "此时无法再发送数据,但是可以接收数据".
Depends on how the closer closed.  shutdown(SHUT_WR) sets SEND_SHUTDOWN only
(tcp_shutdown(): tcp_close_state() + tcp_send_fin()): send() fails with EPIPE
at once (tcp_sendmsg_locked()), while the peer's data is queued as usual in
FIN_WAIT1 and FIN_WAIT2 (tcp_rcv_state_process() step 7 queues it as long as
RCV_SHUTDOWN is not set) and recv() reads it.  close() shuts both directions
and orphans the socket: no descriptor is left to read with, and data that
still arrives is aborted with a RST: TCP_ABORT_ON_DATA when it reaches the
orphan as a full socket (tcp_rcv_state_process(), e.g. when the data carries
the peer's still-delayed ACK of our FIN), TCP_TIMEWAIT_SOCKET when it reaches
the timewait socket an orphaned FIN_WAIT2 is turned into
(tcp_timewait_state_process() -> TCP_TW_RST).  Which of the two is a race of
the peer's delayed ACK; the RST is not.
"""

import harness
from harness import faults

SEED = "002"
CLAIM = "FIN_WAIT_1/FIN_WAIT_2: the closer can no longer send but can still receive"
VERDICT = "depends"


async def test_half_closed_closer_reads(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    # hold conn in FIN_WAIT1: its FIN (and the FIN's retransmissions) never leave
    async with faults.intercept(conn, direction="out", tcp_flags="FIN/FIN", action="drop"):
        assert (await conn.shutdown("w")).ok
        await lab.wait_state(conn, "FIN_WAIT1")
        refused = await conn.send(b"x")
        assert (await peer.send(b"one")).value == 3
        one = await conn.recv()
        fw1 = conn.info()
    assert refused.errno == "EPIPE"
    assert one.value == b"one" and fw1.state == "FIN_WAIT1"

    resend = conn.info()        # the FIN's retransmit timer, backed off by every drop
    left = resend.timer_left if resend.timer == "retransmit" else 0.0
    await lab.wait_state(conn, "FIN_WAIT2", timeout=left + 2.0)  # the resent FIN passes
    assert (await peer.recv()).value == b""                     # the peer: CLOSE_WAIT, EOF
    assert (await peer.send(b"two")).value == 3
    two = await conn.recv()
    assert two.value == b"two" and conn.info().state == "FIN_WAIT2"
    assert (await conn.send(b"x")).errno == "EPIPE"

    await peer.close()
    await lab.wait_state(conn, "TIME_WAIT")
    assert (await conn.recv()).value == b""
    assert lab.timeline.states(conn) == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
                                         "TIME_WAIT"]
    evidence("half-closed closer", f"send {refused.errno}; recv {one.value!r} in FIN_WAIT1, "
                                   f"{two.value!r} in FIN_WAIT2")


async def test_closed_closer_answers_data_with_rst(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    await conn.close()
    await lab.wait_state(peer, "CLOSE_WAIT")
    assert (await peer.send(b"late")).value == 4                 # accepted locally ...
    rst = await lab.timeline.wait_for(harness.rst_sent(conn))    # ... and reset by the orphan
    assert rst.reason in ("TCP_ABORT_ON_DATA", "TCP_TIMEWAIT_SOCKET")
    await lab.timeline.wait_for(harness.rst_received(peer))
    await lab.wait_state(conn, "CLOSED")
    await lab.wait_state(peer, "CLOSED")
    evidence("closed closer's answer to data", f"RST ({rst.reason})")
