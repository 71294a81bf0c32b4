"""recv() returns 0 (end of stream) on the peer's FIN, again and again; after
the peer's RST it fails once with ECONNRESET and then returns 0.

Seed 003 (补充细节 3): "当你调用recv时，如果返回0，则表示对端关闭".  Holds:
tcp_recvmsg() returns 0 once RCV_SHUTDOWN is set.  After a RST it reports
sk_err once (ECONNRESET), then 0: tcp_done() set RCV_SHUTDOWN too.
"""

import harness

SEED = "003"
CLAIM = "recv() returns 0 when the peer has closed"
VERDICT = "holds"


async def test_recv_returns_zero_on_fin(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    await peer.send(b"last words")
    await peer.close()
    assert (await conn.recv()).value == b"last words"            # data before the FIN
    assert [(await conn.recv()).value for _ in range(2)] == [b"", b""]
    assert (await lab.wait_state(conn, "CLOSE_WAIT")).state == "CLOSE_WAIT"
    evidence("recv after FIN", "b'' twice")


async def test_recv_after_rst(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    await peer.close(linger=0)
    await lab.timeline.wait_for(harness.rst_received(conn))
    results = [await conn.recv() for _ in range(3)]
    assert [r.errno or r.value for r in results] == ["ECONNRESET", b"", b""]
    evidence("recv after RST", "ECONNRESET, b'', b''")
