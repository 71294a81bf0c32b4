"""SO_LINGER {1, 0}: close() returns at once with a RST instead of a FIN, the
socket skips TIME_WAIT, and the data still in the send buffer is discarded.

Seed 003 (二、B): "l_onoff非0,l_linger设置0,函数close()立即返回,并发送RST终止连接,
发送缓冲区的数据丢弃。"; seed 001: "通过设置SO_LINGER标志来避免socket进入TIME_WAIT状
态。这种方法可以通过发送RST包来代替正常的TCP四次握手来终止连接".  Holds: __tcp_close()
with SOCK_LINGER and sk_lingertime == 0 calls tcp_disconnect(), which sends the
RST (tcp_send_active_reset(), reason TCP_STATE), purges the write queue and
moves the socket to CLOSE, no TIME_WAIT.  What the peer had already received
is not lost: tcp_reset() on its side leaves the receive queue alone, so it
reads those bytes, then ECONNRESET.
"""

import harness

SEED = "003"
CLAIM = "SO_LINGER {1,0}: close() sends RST, no TIME_WAIT, unsent data discarded"
VERDICT = "holds"


async def test_linger_zero_resets_and_discards(lab, stalled, evidence):
    s = stalled                                  # peer not reading, window zero

    closed = await s.conn.close(linger=0)
    assert closed.ok and closed.duration < 1.0   # a wait would be whole seconds (l_linger)
    rst = await lab.timeline.wait_for(harness.rst_sent(s.conn))
    assert rst.reason == "TCP_STATE"             # tcp_disconnect()'s, not an abort on close
    await lab.wait_state(s.conn, "CLOSED", timeout=0)            # gone: no TIME_WAIT
    assert lab.timeline.states(s.conn) == ["SYN_SENT", "ESTABLISHED", "CLOSE"]

    received, end = await s.drain()
    assert end.errno == "ECONNRESET"
    assert received == s.written - s.unsent      # what it had; the unsent bytes are gone
    evidence("RST reason", rst.reason)
    evidence("discarded", s.unsent, " bytes")
