"""CLOSE_WAIT has no timer: a socket whose application never calls close()
stays in CLOSE_WAIT for as long as the process keeps it.

Seed 002 (被动方端口状态转换): "在CLOSE_WAIT状态等待应用层调用close方法关闭socket连接;如果在
超时时间内没调用close,则直接进入CLOSED状态".  False on Linux (the same post says
so itself elsewhere: "没有调用close关闭socket,则会一直停留在CLOSE_WAIT").  No kernel
timer is armed on the way into CLOSE_WAIT (tcp_fin() only changes the state),
and no sysctl bounds it: tcp_fin_timeout is for orphaned FIN_WAIT2
(tcp_fin_time()); inet_diag shows no timer at all.  Only SO_KEEPALIVE gives a
CLOSE_WAIT socket a timer (tcp_keepalive_timer() runs in CLOSE_WAIT too), and
its probes kill the socket only if the peer answers with a RST or not at all.
Here the closer only half-closes (shutdown(SHUT_WR)), so its own socket has no
timer either and nothing from its side can end the connection; the CLOSE_WAIT
side still reads end-of-stream and still sends, and only its close() ends it.
"""

import trio

SEED = "002"
CLAIM = "CLOSE_WAIT without close() goes to CLOSED after a timeout"
VERDICT = "false"

FIN_TIMEOUT = 1


async def test_close_wait_never_times_out(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_fin_timeout": FIN_TIMEOUT,
                                             "net.ipv4.tcp_keepalive_time": 7200})
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    await conn.shutdown("w")
    cw = await lab.wait_state(peer, "CLOSE_WAIT")
    assert cw.timer is None                                  # nothing scheduled
    assert (await peer.recv()).value == b""

    # nothing to wait for: show that nothing happens in twice tcp_fin_timeout
    await trio.sleep(2 * FIN_TIMEOUT)
    later = peer.info()
    assert later.state == "CLOSE_WAIT" and later.timer is None
    assert (await peer.recv()).value == b""
    assert (await peer.send(b"still here")).value == 10
    assert (await conn.recv()).value == b"still here"

    await peer.close()                                       # the only way out
    await lab.wait_state(peer, "CLOSED")
    await lab.wait_state(conn, "TIME_WAIT")
    assert lab.timeline.states(peer)[-3:] == ["CLOSE_WAIT", "LAST_ACK", "CLOSE"]
    evidence("CLOSE_WAIT age without a timer", later.snapshot_time - cw.snapshot_time, " s")
