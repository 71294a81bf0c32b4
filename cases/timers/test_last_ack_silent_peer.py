"""LAST_ACK whose peer has gone silent follows the same rule as FIN_WAIT1: the
FIN is retransmitted with backoff until a time limit, then the socket goes
to CLOSED without a RST; tcp_orphan_retries sets the limit for a closed
socket, tcp_retries2 for one the application still holds.

Seed 002 (被动方端口状态转换): "等待对端的ACK,如果在超时时间内收到了ACK则直接进入CLOSED状态,
否则超时后进入CLOSED状态"; seed 004 (报文丢失): "达到最大次数之后就强制断开连接".  Holds.
The FIN of LAST_ACK is retransmitted by the same RTO timer as any data
(tcp_retransmit_timer()), and tcp_write_timeout() chooses the limit the same
way: tcp_orphan_retries() for a SOCK_DEAD socket, else tcp_retries2, turned
into a time by tcp_model_timeout() (((2 << n) - 1) x 200 ms for n <= 9) counted
from the first RTO retransmission; the socket dies at the first RTO expiry
past it (tcp_write_err(): ETIMEDOUT, tcp_done(), no RST).  The client closes
first, then drops everything (it has vanished); the server closes one
connection (orphan, tcp_orphan_retries=1: 0.6 s) and half-closes the other
(tcp_retries2=0: 0.2 s).  The half-closed one already read end-of-stream, so
the ETIMEDOUT waits in sk_err and comes out of its next send().  Timing
tolerances as in test_fin_wait1_silent_peer.py.
"""

import harness
from harness import faults
from retransmit_rule import ORPHAN_RETRIES, RETRIES2, SYSCTLS, gave_up

SEED = "002"
CLAIM = "LAST_ACK without the final ACK goes to CLOSED after a timeout"
VERDICT = "holds"


async def test_last_ack_silent_peer(lab, family, evidence):
    client, server = await lab.pair(sysctls=SYSCTLS)
    listener = await server.listen(9000, family=family)
    conns, peers = [], []
    for _ in range(2):
        conns.append(await client.connect(server, 9000, family=family))
        peers.append(await listener.accept())
    orphan, half = peers
    rto = orphan.info().rto
    for conn, peer in zip(conns, peers):
        await conn.close()
        await lab.wait_state(peer, "CLOSE_WAIT")
    assert (await half.recv()).value == b""

    async with faults.blackhole(client):
        await orphan.close()
        await half.shutdown("w")
        await lab.wait_state(half, "CLOSED", timeout=3.0)
        await lab.wait_state(orphan, "CLOSED", timeout=3.0)

    o_retx, o_end = gave_up(lab, orphan, "LAST_ACK", ORPHAN_RETRIES, rto)
    h_retx, h_end = gave_up(lab, half, "LAST_ACK", RETRIES2, rto)
    assert (len(o_retx), len(h_retx)) == (3, 2)
    assert lab.timeline.count(harness.error_reported(half, "ETIMEDOUT")) == 1
    assert (await half.send(b"x")).errno == "ETIMEDOUT"
    evidence(f"orphan (tcp_orphan_retries={ORPHAN_RETRIES}) gone",
             f"{o_end:.3f} s after its FIN, {len(o_retx)} retransmissions")
    evidence(f"half-closed (tcp_retries2={RETRIES2}) ETIMEDOUT",
             f"{h_end:.3f} s after its FIN, {len(h_retx)} retransmissions")
