"""Without TIME_WAIT, the peer's retransmitted FIN finds no connection and is
answered with a RST, so the peer ends with an error instead of an orderly
close.

Seed 001 (为什么需要time_wait 1): "如果执行主动关闭的一方HOST1 不进入到TIME_WAIT状态就关闭连接
那会发生什么呢?当重传的FIN消息到达时,因为TCP已经不再有连接的信息了,所以就用RST(重新启动)消息应答,
导致HOST2进入错误的状态而不是有序终止状态".  Holds.  tcp_max_tw_buckets=0 on the
closer makes every tcp_time_wait() overflow (LINUX_MIB_TCPTIMEWAITOVERFLOW, no
log line on modern kernels): the socket is destroyed (tcp_done()) the moment
it ACKs the peer's FIN.  That ACK is dropped here, so the peer in LAST_ACK
retransmits its FIN (the tail-loss probe, ~0.2 s); the closer's host has no
socket for it and answers with a RST (tcp_v4_send_reset()/tcp_v6_send_reset(),
reason NO_SOCKET).  The peer, which only half-closed and so still owns its
socket, takes the RST in LAST_ACK: tcp_reset() reports ECONNRESET, and its
next send() returns that error instead of the EPIPE of an orderly close.
"""

import harness
from harness import faults

SEED = "001"
CLAIM = "without TIME_WAIT the retransmitted FIN is answered with a RST"
VERDICT = "holds"


async def test_no_time_wait_means_rst(lab, family, evidence):
    client = await lab.host("client", sysctls={"net.ipv4.tcp_max_tw_buckets": 0})
    server = await lab.host("server", sysctls={"net.ipv4.tcp_max_tw_buckets": 131072})
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    cap = await lab.capture()

    async with faults.drop_last_ack(conn) as lost:
        await conn.shutdown("w")                             # a real FIN_WAIT2 (fd kept)
        await lab.wait_state(conn, "FIN_WAIT2")
        await peer.shutdown("w")                             # LAST_ACK, fd kept
        await lab.wait_state(conn, "CLOSED")                 # no TIME_WAIT to go to
        rst = await lab.timeline.wait_for(harness.rst_sent(conn), timeout=2.0)
        await lab.timeline.wait_for(harness.error_reported(peer, "ECONNRESET"))
    await lab.wait_state(peer, "CLOSED")

    assert rst.reason == "NO_SOCKET"
    assert lab.timeline.states(conn) == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
                                         "CLOSE"]
    assert lab.timeline.states(peer)[-3:] == ["CLOSE_WAIT", "LAST_ACK", "CLOSE"]
    assert lab.timeline.count(harness.retransmitted(peer)) == 1
    assert cap.summary(conn) == ["client:FA", "server:A", "server:FA", "server:FA", "client:R"]
    assert lost.counts["dropped"] == 1
    after = await peer.send(b"x")
    assert after.errno == "ECONNRESET"
    evidence("answer to the retransmitted FIN", f"RST ({rst.reason})")
    evidence("peer's next send()", after.errno)
