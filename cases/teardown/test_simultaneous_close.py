"""When both ends close at once and their FINs cross, each goes FIN_WAIT1 ->
CLOSING -> TIME_WAIT.

Seed 002 (主动方端口状态转换): "如果在FIN_WAIT_1状态时收到了对端的FIN,则进入CLOSING状态".
Holds.  A FIN that arrives in FIN_WAIT1 and does not acknowledge our own FIN
moves the socket to CLOSING (tcp_fin(): tcp_send_ack() + TCP_CLOSING); the
ACK of our FIN then ends CLOSING in TIME_WAIT (tcp_rcv_state_process():
tcp_time_wait(sk, TCP_TIME_WAIT, 0)), so both ends keep a TIME_WAIT.  On
veth two close() calls rarely cross (a FIN arrives within microseconds), so
the case makes the crossing certain: every segment of the connection is held
50 ms on the client's side, in and out.  Both close() calls happen well
within those 50 ms, so each FIN is built before the other arrives (neither
acknowledges the other's FIN), and each end gets the other's FIN before the
ACK of its own.  The hold is the test process's (NFQUEUE), and a busy
machine can stretch 50 ms past the 200 ms tail-loss probe and minimum RTO
(measured: 107 ms per hold at a load average of 10 on 2 cores), so the
hosts keep retransmissions out of the picture by more than that slack: no
tail-loss probe (tcp_early_retrans=0) and, where the kernel has it (6.11+),
a 1 s minimum RTO (tcp_rto_min_us).  Without the hold, a FIN that arrives
first makes that end skip CLOSING (FIN_WAIT1 -> FIN_WAIT2 -> TIME_WAIT);
both still end in TIME_WAIT.
"""

import os

from harness import faults

SEED = "002"
CLAIM = "a FIN received in FIN_WAIT_1 leads to CLOSING (simultaneous close)"
VERDICT = "holds"

HOLD = 0.05
QUIET = {"net.ipv4.tcp_early_retrans": 0}
if os.path.exists("/proc/sys/net/ipv4/tcp_rto_min_us"):  # per namespace, 6.11+
    QUIET["net.ipv4.tcp_rto_min_us"] = 1_000_000


async def test_simultaneous_close(lab, family, evidence):
    client, server = await lab.pair(sysctls=QUIET)
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    cap = await lab.capture()

    async with faults.intercept(conn, direction="both", action=faults.Action.delay(HOLD)) as held:
        first, second = await conn.close(), await peer.close()
        assert second.ended - first.started < HOLD
        await lab.wait_state(conn, "TIME_WAIT")
        await lab.wait_state(peer, "TIME_WAIT")

    crossing = ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "CLOSING", "TIME_WAIT"]
    assert lab.timeline.states(conn) == crossing
    assert lab.timeline.states(peer) == crossing[1:]
    assert cap.summary(conn) == ["server:FA", "client:FA", "server:A", "client:A"]
    fin_s, fin_c, ack_s, ack_c = cap.packets(conn)
    assert (fin_c.ack, fin_s.ack) == (fin_s.seq, fin_c.seq)      # the FINs crossed
    assert (ack_s.ack, ack_c.ack) == (fin_c.seq + 1, fin_s.seq + 1)
    assert held.counts["delayed"] == 4                           # nothing retransmitted
    evidence("states (both ends)", " -> ".join(crossing[2:]))
