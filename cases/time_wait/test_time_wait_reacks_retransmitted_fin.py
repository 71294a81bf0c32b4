"""A socket in TIME_WAIT answers every retransmitted FIN with an ACK and
restarts its 60 s wait, so a lost last ACK is repaired.

Seed 000 (常见问题 2): "如果在该时间内再次收到FIN,那么Client会重发ACK并再次等待2MSL"; seed
001: TIME_WAIT exists because "HOST1发送的ACK可能丢失并导致HOST2重新发送FIN消息".  Holds
(the wait restarted is TCP_TIMEWAIT_LEN, 60 s, not 2MSL).  A retransmitted
FIN reaching the timewait socket is a segment it has seen already:
tcp_timewait_state_process() reschedules the timer for TCP_TIMEWAIT_LEN
(inet_twsk_reschedule()) and returns TCP_TW_ACK, and tcp_v4_timewait_ack()
(tcp_v6_timewait_ack()) sends the ACK again.  A FIN is exempt from the
out-of-window ACK rate limit (tcp_oow_rate_limited()), so every copy is
answered.  Here the first three ACKs are dropped on their way out: the peer
retransmits its FIN (tail-loss probe at ~0.2 s, RTO at ~0.4 s, ~0.8 s) and the
third copy's ACK passes.  After each copy the timer shows 60 s less the time
since that copy arrived (jiffies: 4 ms steps), not since the first FIN.

When to read the timer: only once the host has *answered* the copy (the
fault sees its re-ACK go out), which proves TCP processed it; a copy merely
seen in the fault's queue may not have reached TCP yet.  The time elapsed
since the copy is bounded by the end of the inet_diag dump (snapshot_done),
not its start: a busy machine may preempt the test between the two.  What is
left is the kernel's rule: the timer is set in whole jiffies (HZ=250), so
the read can be one jiffy below 60 s less the elapsed time.
"""

import time

import trio

import harness
from harness import faults

SEED = "000"
CLAIM = "TIME_WAIT re-ACKs a retransmitted FIN and restarts its wait"
VERDICT = "holds"

JIFFY = 0.004


async def wait_until(predicate, timeout: float = 2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await trio.sleep(0.001)


async def test_time_wait_reacks_and_restarts(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_orphan_retries": 8})
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    acks = await faults.drop_last_ack(conn, count=3).start()
    await conn.close()
    await lab.wait_state(peer, "CLOSE_WAIT")
    first_fin = (await peer.close()).started
    await lab.wait_state(conn, "TIME_WAIT")

    restarts, since = [], first_fin
    for copy in (1, 2, 3):
        retx = await lab.timeline.wait_for(harness.retransmitted(peer), since=since)
        since = retx.t + 1e-6
        await wait_until(lambda: acks.acks > copy)          # conn's TCP answered the copy
        tw = conn.info()
        assert tw.state == "TIME_WAIT"
        since_copy, since_first = tw.snapshot_done - retx.t, tw.snapshot_time - first_fin
        assert 60.0 - since_copy - JIFFY <= tw.timer_left <= 60.0    # restarted at the copy ...
        assert tw.timer_left > 60.0 - since_first + (retx.t - first_fin) / 2  # ... not at entry
        restarts.append((tw.timer_left, 60.0 - since_first))

    await lab.wait_state(peer, "CLOSED", timeout=2.0)        # the third copy's ACK passed
    await acks.stop()
    assert acks.fins == acks.acks == 4 and acks.counts["dropped"] == 3  # FIN, copies 1-2: dropped
    assert lab.timeline.count(harness.rst_received(peer)) == 0
    assert conn.info().state == "TIME_WAIT"
    for copy, (left, unrestarted) in enumerate(restarts, 1):
        evidence(f"TIME_WAIT timer after FIN copy {copy}",
                 f"{left:.3f} s (without restart ~{unrestarted:.3f} s)")
