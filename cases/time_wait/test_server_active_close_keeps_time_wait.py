"""Whoever sends the first FIN keeps the TIME_WAIT: a server that closes its
short connections collects one per connection, the client none.

Seed 002 (调优): "在高并发场景下,服务器主动关闭连接的情况,在服务端会出现大量的TIME_WAIT状态的
端口"; seed 004 (主动断开连接): "没有使用长连接...短链接一般由服务端主动关闭" and "应该尽量让
客户端承受TIME_WAIT".  Holds.  TIME_WAIT follows the order of the FINs, not the
roles: the end whose FIN went first receives the other's FIN in FIN_WAIT2 and
calls tcp_time_wait(sk, TCP_TIME_WAIT, 0); the other end passes CLOSE_WAIT and
LAST_ACK and is destroyed when its FIN is ACKed (tcp_rcv_state_process():
tcp_done()).  The timewait sockets all share the server's listening port and
differ only by the client's port.
"""

SEED = "002"
CLAIM = "a server that actively closes short connections accumulates TIME_WAIT, the client none"
VERDICT = "holds"

CONNECTIONS = 50


async def test_server_active_close_keeps_time_wait(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)

    for _ in range(CONNECTIONS):                          # HTTP/1.0 style: one request each
        conn = await client.connect(server, 9000, family=family)
        peer = await listener.accept()
        assert (await conn.send(b"GET /")).ok and (await peer.recv()).value == b"GET /"
        assert (await peer.send(b"200 OK")).ok
        await peer.close()                                # the server closes first
        assert (await conn.recv()).value == b"200 OK"
        assert (await conn.recv()).value == b""
        await conn.close()
    await lab.wait_state(conn, "CLOSED")                  # the last one, via LAST_ACK
    await lab.wait_state(peer, "TIME_WAIT")

    on_server = server.sockets(state="TIME_WAIT", port=9000)
    on_client = client.sockets(state="TIME_WAIT")
    assert len(on_server) == CONNECTIONS and len(on_client) == 0
    assert {s.local for s in on_server} == {listener.local}   # all on the listening port
    assert len(client.sockets(port=9000)) == 0                # the client keeps nothing
    evidence("TIME_WAIT on server / client", f"{len(on_server)} / {len(on_client)}")
