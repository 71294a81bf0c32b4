"""FIN_WAIT2 times out only for a closed (orphaned) socket, after
tcp_fin_timeout; a socket that only shut down its sending side waits in
FIN_WAIT2 for the peer's FIN for ever.

Seed 002 (主动方端口状态转换): "如果在FIN_WAIT_2状态时收到了对端的FIN,则进入TIME_WAIT状态;
如果在超时时间内没有收这个FIN则直接进入CLOSED状态".  Depends on whether the application
still owns the socket.  When the ACK of an orphan's FIN arrives,
tcp_rcv_state_process() (or __tcp_close()) computes tmo = tcp_fin_time() =
max(tcp_fin_timeout or TCP_LINGER2, 3.5 RTO) and, for tmo <= 60 s, replaces
the socket by a timewait socket in substate FIN_WAIT2 (tcp_time_wait(sk,
TCP_FIN_WAIT2, tmo)): inet_diag shows FIN_WAIT2 with a time_wait timer, and
the timewait socket is removed when it fires (no RST).  Rarely, when the ACK
is processed while close() still holds the socket, the full socket waits on
its keepalive timer for the same tmo instead.  A socket after
shutdown(SHUT_WR) is not orphaned: no timer is armed, and tcp_fin_timeout
does not apply.  The timer fires late by at most the timer wheel's
granularity, at most 8/63 of the timeout (kernel/time/timer.c), and early by
at most a jiffy (4 ms at HZ=250).  The test's own observation delay is kept
out of both bounds: the timer's start is bounded by the end of the dump that
read it (snapshot_done), and "not late" means never *seen* after the bound
(a busy machine may delay when the test looks, never what the kernel did).
"""

import time

import trio

SEED = "002"
CLAIM = "FIN_WAIT_2 without the peer's FIN goes to CLOSED after a timeout"
VERDICT = "depends"

FIN_TIMEOUT = 1
JIFFY = 0.004


async def test_fin_wait2_timeout(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_fin_timeout": FIN_TIMEOUT})
    listener = await server.listen(9000, family=family)
    orphan = await client.connect(server, 9000, family=family)
    await listener.accept()
    half = await client.connect(server, 9000, family=family)
    await listener.accept()

    closed = await orphan.close()                            # orphaned: no fd left
    assert (await half.shutdown("w")).ok                     # fd kept
    fw2 = await lab.wait_state(orphan, "FIN_WAIT2")
    assert fw2.timer in ("time_wait", "keepalive")
    assert FIN_TIMEOUT - (fw2.snapshot_done - closed.started) - JIFFY <= fw2.timer_left \
        <= FIN_TIMEOUT
    hw2 = await lab.wait_state(half, "FIN_WAIT2")
    assert hw2.timer is None

    last_seen = fw2.snapshot_time
    with trio.fail_after(FIN_TIMEOUT * 2):
        while (info := orphan.info()) is not None:        # poll until the kernel removes it
            last_seen = info.snapshot_time
            await trio.sleep(0.001)
    lifetime = time.monotonic() - closed.started
    assert FIN_TIMEOUT - JIFFY <= lifetime
    assert last_seen <= fw2.snapshot_done + fw2.timer_left * (1 + 8 / 63) + JIFFY  # not late

    # nothing to wait for: show that the half-closed one outlives 2 x tcp_fin_timeout
    await trio.sleep(max(0.0, closed.started + 2 * FIN_TIMEOUT - time.monotonic()))
    still = half.info()
    assert still.state == "FIN_WAIT2" and still.timer is None
    evidence("orphaned FIN_WAIT2 lifetime", f"{lifetime:.3f} s ({fw2.timer} timer)")
    evidence("half-closed FIN_WAIT2", f"still there after {time.monotonic() - closed.started:.2f}"
                                      f" s, no timer")
