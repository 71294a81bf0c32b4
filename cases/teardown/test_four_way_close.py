"""Four-way close: the active closer passes FIN_WAIT1, FIN_WAIT2 and ends in
TIME_WAIT; the passive side passes CLOSE_WAIT and LAST_ACK.

Seed 000 (四次挥手 1-4): the client passes FIN_WAIT_1, FIN_WAIT_2, TIME_WAIT; the
server CLOSE_WAIT and LAST_ACK.  Holds.  The kernel's tracepoint never shows
TIME_WAIT (the socket is handed to a timewait socket at FIN_WAIT2 -> CLOSE,
tcp_time_wait()); the harness merges inet_diag's view, which does.
"""

SEED = "000"
CLAIM = "four-way close: FIN_WAIT_1, FIN_WAIT_2, TIME_WAIT / CLOSE_WAIT, LAST_ACK"
VERDICT = "holds"


async def test_four_way_close(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    await conn.close()
    await lab.wait_state(peer, "CLOSE_WAIT")
    await peer.close()
    tw = await lab.wait_state(conn, "TIME_WAIT")

    assert lab.timeline.states(peer) == ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]
    assert lab.timeline.states(conn) == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
                                         "TIME_WAIT"]
    evidence("TIME_WAIT timer at entry", tw.timer_left, " s")
