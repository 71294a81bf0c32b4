"""TIME_WAIT lasts 60 s, a constant; tcp_fin_timeout does not shorten it (it
bounds the orphaned FIN_WAIT2 before it).

Seed 002 (调优): "在Linux服务器上,/etc/sysctl.conf文件中修改time_wait缺省值(默认240秒):
net.ipv4.tcp_fin_timeout = 30".  False on Linux, twice: TIME_WAIT is
TCP_TIMEWAIT_LEN = 60 s (include/net/tcp.h, a compile-time constant, not
2 x MSL = 240 s), and tcp_time_wait(sk, TCP_TIME_WAIT, ...) always schedules
the timewait socket for TCP_TIMEWAIT_LEN.  tcp_fin_timeout (default 60, not
30) is read by tcp_fin_time() only for an orphaned FIN_WAIT2: the same socket
shows the sysctl's value on its FIN_WAIT2 timer, then 60 s on its TIME_WAIT
timer.  The FIN_WAIT2 timer is the timewait socket's (tcp_time_wait(sk,
TCP_FIN_WAIT2, tmo)) or, when the ACK of the FIN was processed while close()
still held the socket, the keepalive timer of the full socket; both are set
to tcp_fin_time().

The bounds are the kernel's rule and nothing else: a timer is set in whole
jiffies (HZ=250: 4 ms), after the call that caused it started, and read by
an inet_diag dump that ended at snapshot_done; so it reads at least its
length less (snapshot_done - call start) less one jiffy, and at most its length.
"""

import pytest

JIFFY = 0.004  # HZ=250

SEED = "002"
CLAIM = "TIME_WAIT defaults to 240 s and tcp_fin_timeout = 30 shortens it"
VERDICT = "false"


@pytest.mark.parametrize("fin_timeout", [2, 30])
async def test_time_wait_lasts_60s(lab, family, fin_timeout, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_fin_timeout": fin_timeout})
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    close = await conn.close()
    fw2 = await lab.wait_state(conn, "FIN_WAIT2")
    assert fw2.timer in ("time_wait", "keepalive")
    assert fin_timeout - (fw2.snapshot_done - close.started) - JIFFY <= fw2.timer_left \
        <= fin_timeout                                              # tcp_fin_timeout applies here
    await lab.wait_state(peer, "CLOSE_WAIT")
    fin = await peer.close()
    tw = await lab.wait_state(conn, "TIME_WAIT")
    assert tw.timer == "time_wait"
    assert 60.0 - (tw.snapshot_done - fin.started) - JIFFY <= tw.timer_left <= 60.0  # not here
    evidence(f"tcp_fin_timeout={fin_timeout}: FIN_WAIT2 / TIME_WAIT timers",
             f"{fw2.timer_left:.3f} s / {tw.timer_left:.3f} s")
