"""When the last ACK is lost, the LAST_ACK side keeps its state and
retransmits its FIN, backing off exponentially, until an ACK gets through;
then it closes cleanly.

Seed 000 (常见问题 2): "Server如果没有收到ACK,将不断重复发送FIN片段"; seed 004
(报文丢失): "如果某次挥手的报文丢失了,TCP会进行超时重传".  Holds ("不断" = until ACKed
or until tcp_orphan_retries gives up, see timers/test_last_ack_silent_peer.py).
The FIN sits in the write queue like data: the first retransmission is a
tail-loss probe (tcp_schedule_loss_probe(): PTO = 2 SRTT + TCP_RTO_MIN 200 ms
for one packet in flight, capped by the RTO), the next ones come from the
RTO timer (tcp_retransmit_timer()), which restarts at RTO after the probe and
then doubles (icsk_backoff).  RTO here is tcp_rto_min 200 ms plus the tiny
veth SRTT, rounded up to jiffies (tcp_info rto_us 204000 at HZ=250).
Tolerance: a timer never fires early (at most one jiffy, 4 ms, of rounding)
and fires late by at most the timer wheel's granularity, which is at most
8/63 of the timeout (kernel/time/timer.c: level n starts at 63 * 8^(n-1)
jiffies and has a granularity of 8^n), plus 20 ms of scheduling.  The TIME_WAIT
side ACKs every copy (time_wait/test_time_wait_reacks_retransmitted_fin.py);
the first four ACKs are dropped here, the fifth passes and ends LAST_ACK
without any RST.
"""

import harness
from harness import faults

SEED = "000"
CLAIM = "without the last ACK the LAST_ACK side retransmits its FIN until it is ACKed"
VERDICT = "holds"

JIFFY = 0.004
SYSCTLS = {"net.ipv4.tcp_orphan_retries": 8,     # the closed LAST_ACK side: ~102 s of retries
           "net.ipv4.tcp_early_retrans": 3}      # tail-loss probes on (the default)


def on_time(gap: float, timeout: float) -> bool:
    return timeout - JIFFY <= gap <= timeout * (1 + 8 / 63) + 0.02


async def test_lost_last_ack_retransmits_fin(lab, family, evidence):
    client, server = await lab.pair(sysctls=SYSCTLS)
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    dropped = await faults.drop_last_ack(conn, count=4).start()  # conn's first 4 ACKs of the FIN
    await conn.close()
    await lab.wait_state(peer, "CLOSE_WAIT")
    await peer.close()
    rto = (await lab.wait_state(peer, "LAST_ACK")).rto
    await lab.wait_state(peer, "CLOSED", timeout=3.0)             # the 5th ACK passed
    await dropped.stop()

    fin = next(e.t for e in lab.timeline.events(peer, kind="state") if e.new == "LAST_ACK")
    retx = [e.t - fin for e in lab.timeline.events(peer, kind="retransmit")]
    gaps = [b - a for a, b in zip([0.0] + retx, retx)]
    assert len(retx) == 4 and dropped.counts["dropped"] == 4 and dropped.fins == 5
    assert 0.2 - JIFFY <= gaps[0] <= rto + 0.02                  # the tail-loss probe
    assert [on_time(g, rto * 2 ** k) for k, g in enumerate(gaps[1:])] == [True] * 3
    assert lab.timeline.states(peer)[-2:] == ["LAST_ACK", "CLOSE"]
    assert lab.timeline.count(harness.rst_sent(peer)) == 0
    assert lab.timeline.count(harness.rst_received(peer)) == 0
    assert conn.info().state == "TIME_WAIT"
    evidence("FIN retransmitted at", ", ".join(f"{t:.3f}" for t in retx), " s")
    evidence("RTO", rto, " s")
