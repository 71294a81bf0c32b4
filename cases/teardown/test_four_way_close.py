"""Four-way close: the active closer passes FIN_WAIT1, FIN_WAIT2 and ends in
TIME_WAIT; the passive side passes CLOSE_WAIT and LAST_ACK.

Seed: 000 (四次挥手), 001, 002, 003.  Verdict: holds.
"""


async def test_four_way_close(lab, family):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    await conn.close()
    await lab.wait_state(peer, "CLOSE_WAIT")
    await peer.close()
    await lab.wait_state(conn, "TIME_WAIT")

    assert lab.timeline.states(peer) == ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]
    assert lab.timeline.states(conn) == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2",
                                         "TIME_WAIT"]
