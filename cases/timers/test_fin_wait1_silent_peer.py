"""A FIN that is never ACKed is retransmitted with backoff until a time
limit, then the socket goes straight to CLOSED, silently: the limit comes from
tcp_orphan_retries for a closed (orphaned) socket and from tcp_retries2 for
one the application still holds (shutdown(SHUT_WR)), which then gets
ETIMEDOUT.

Seed 002 (主动方端口状态转换): "等待对端的确认ACK到来,接收到ACK后进入FIN_WAIT_2状态;如果在
超时时间内没有收到ACK则直接进入CLOSED状态"; seed 004 (报文丢失): "TCP会进行超时重传,达到最大
次数之后就强制断开连接".  Holds, with the retry count turned into a time.
tcp_write_timeout() uses retry_until = tcp_retries2, or tcp_orphan_retries()
for a SOCK_DEAD socket (the sysctl; 0 means 8), and gives up at the first RTO
expiry at which retransmits_timed_out() finds that the time since the first
RTO retransmission (retrans_stamp; the tail-loss probe before it does not
count) has reached tcp_model_timeout() = ((2 << n) - 1) x 200 ms for n <= 9;
then tcp_write_err(): sk_err = ETIMEDOUT, tcp_done(), no RST.  With
tcp_orphan_retries=1 (0.6 s) and tcp_retries2=0 (0.2 s) the two sockets die at
different expiries, each after its own sysctl's time and not the other's.
Retransmissions: the tail-loss probe at ~0.2 s, then RTO, 2 RTO, 4 RTO...,
each late by at most 8/63 of its timeout (timer wheel) and early by at most a
jiffy.  The peer is made silent by dropping everything in its host.
"""

from harness import faults
from retransmit_rule import ORPHAN_RETRIES, RETRIES2, SYSCTLS, gave_up

SEED = "002"
CLAIM = "FIN_WAIT_1 without an ACK goes to CLOSED after a timeout"
VERDICT = "holds"


async def test_fin_wait1_silent_peer(lab, family, evidence):
    client, server = await lab.pair(sysctls=SYSCTLS)
    listener = await server.listen(9000, family=family)
    orphan = await client.connect(server, 9000, family=family)
    await listener.accept()
    half = await client.connect(server, 9000, family=family)
    await listener.accept()
    rto = orphan.info().rto

    async with faults.blackhole(server):
        await orphan.close()
        await half.shutdown("w")
        await lab.wait_state(half, "CLOSED", timeout=3.0)
        await lab.wait_state(orphan, "CLOSED", timeout=3.0)

    o_retx, o_end = gave_up(lab, orphan, "FIN_WAIT1", ORPHAN_RETRIES, rto)
    h_retx, h_end = gave_up(lab, half, "FIN_WAIT1", RETRIES2, rto)
    assert (len(o_retx), len(h_retx)) == (3, 2)
    assert (await half.recv()).errno == "ETIMEDOUT"
    evidence(f"orphan (tcp_orphan_retries={ORPHAN_RETRIES}) gone",
             f"{o_end:.3f} s after its FIN, {len(o_retx)} retransmissions")
    evidence(f"half-closed (tcp_retries2={RETRIES2}) ETIMEDOUT",
             f"{h_end:.3f} s after its FIN, {len(h_retx)} retransmissions")
