"""TIME_WAIT sockets hold no file descriptor and do not stop the server from
accepting new connections, not even one on the very same address and port
pair.

Seed 002 (调优): "服务器主动关闭连接的情况,在服务端会出现大量的TIME_WAIT状态的端口,会占用操作
系统文件句柄资源,导致新的连接可能无法建立".  False on Linux for the server.  A TIME_WAIT
connection is an inet_timewait_sock, a small kernel object with no struct
file behind it (inet_diag shows inode 0): the application's close() released
the descriptor long before.  It lives in the listener's port but is found
only by its own 4-tuple (the established hash), so a SYN from any other
client port reaches the listener as usual, and a SYN on its own 4-tuple with
a newer sequence number or timestamp is accepted in its place
(tcp_timewait_state_process() -> TCP_TW_SYN, inet_twsk_deschedule_put()).
What TIME_WAIT can exhaust is the *connecting* side's ephemeral ports, which
is the client's problem when the client closes first (tcp_tw_reuse's business).
"""

SEED = "002"
CLAIM = "server TIME_WAIT sockets hold file handles, so new connections may fail"
VERDICT = "false"

CONNECTIONS = 20


async def test_time_wait_holds_no_descriptor(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)

    for _ in range(CONNECTIONS):
        conn = await client.connect(server, 9000, family=family)
        peer = await listener.accept()
        await peer.close()                                   # the server closes first
        await lab.wait_state(conn, "CLOSE_WAIT")
        await conn.close()
        await lab.wait_state(peer, "TIME_WAIT")
    waiting = server.sockets(state="TIME_WAIT", port=9000)
    assert len(waiting) == CONNECTIONS
    assert {s.inode for s in waiting} == {0}                 # no socket file: no descriptor

    other = await client.connect(server, 9000, family=family)        # a new client port
    assert (await listener.accept()).remote == other.local
    await lab.wait_state(conn, "CLOSED")                     # the client keeps nothing of it
    same = await client.socket(family)                       # so its last 4-tuple again:
    assert (await same.bind(conn.local[1])).ok
    assert (await same.connect(server, 9000)).ok
    again = await listener.accept()
    assert again.remote == conn.local and again.info().state == "ESTABLISHED"
    assert len(server.sockets(state="TIME_WAIT", port=9000)) == CONNECTIONS - 1
    evidence("TIME_WAIT sockets / their descriptors", f"{len(waiting)} / 0 (inode 0)")
    evidence("new connection on a TIME_WAIT 4-tuple", "accepted")
