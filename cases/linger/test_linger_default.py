"""Without SO_LINGER, close() returns at once and the kernel still delivers
the unsent data, then the FIN.

Seed 003 (二、A): "l_onoff设置为0,这也是默认情况,函数close()是立即返回的,然后TCP
连接双方是通过FIN、ACK4分组来终止TCP连接的。当然,发送缓冲区还有数据的话,系统将试着
将这些数据发送到对方。" (and 补充细节 1).  Holds: __tcp_close() queues the FIN
behind the unsent data (tcp_send_fin()), orphans the socket (sock_orphan())
and returns; inet_release() waits only when SOCK_LINGER is set.  The orphan
in FIN_WAIT1 keeps the data and sends it, FIN last, as the peer's window
opens.
"""

SEED = "003"
CLAIM = "default close() returns at once; unsent data is still sent, then the FIN"
VERDICT = "holds"


async def test_close_returns_at_once_and_the_data_follows(lab, stalled, evidence):
    s = stalled                                  # peer not reading, window zero

    closed = await s.conn.close()
    assert closed.ok and closed.duration < 1.0   # no waiting for the data (l_linger: whole s)
    orphan = await lab.wait_state(s.conn, "FIN_WAIT1", timeout=0)
    assert orphan.send_queue == s.unsent + 1     # the unsent data, then the FIN

    received, end = await s.drain()              # the peer reads at last
    assert received == s.written and end.value == b""   # everything, then EOF
    assert lab.timeline.count(lambda e: e.kind == "rst_sent", s.conn) == 0
    await lab.wait_state(s.conn, "FIN_WAIT2")    # our FIN was acknowledged
    evidence("close() took", closed.duration * 1000, " ms")
    evidence("unsent at close, delivered later", s.unsent, " bytes")
