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

import harness
from harness import faults

SEED = "002"
CLAIM = "FIN_WAIT_1 without an ACK goes to CLOSED after a timeout"
VERDICT = "holds"

ORPHAN_RETRIES, RETRIES2 = 1, 0
SYSCTLS = {"net.ipv4.tcp_orphan_retries": ORPHAN_RETRIES, "net.ipv4.tcp_retries2": RETRIES2,
           "net.ipv4.tcp_early_retrans": 3}
JIFFY = 0.004


def model(n: int) -> float:
    """tcp_model_timeout() with TCP_RTO_MIN as the base, for n <= 9."""
    return ((2 << n) - 1) * 0.2


def on_time(gap: float, timeout: float) -> bool:
    return timeout - JIFFY <= gap <= timeout * (1 + 8 / 63) + 0.02


def gave_up(lab, sock, retries: int, rto: float) -> tuple[list[float], float]:
    """Check the retransmissions and the end of ``sock`` against the rule;
    return (retransmission times, end time), relative to its FIN."""
    states = lab.timeline.events(sock, kind="state")
    fin = next(e.t for e in states if e.new == "FIN_WAIT1")
    end = next(e.t for e in states if e.old == "FIN_WAIT1" and e.new == "CLOSE") - fin
    retx = [e.t - fin for e in lab.timeline.events(sock, kind="retransmit")]
    assert 0.2 - JIFFY <= retx[0] <= rto + 0.02                          # tail-loss probe
    assert all(on_time(b - a, rto * 2 ** k) for k, (a, b) in enumerate(zip(retx, retx[1:] + [end])))
    assert retx[-1] - retx[1] < model(retries) <= end - retx[1]          # the first expiry past it
    assert lab.timeline.count(harness.rst_sent(sock)) == 0
    return retx, end


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

    o_retx, o_end = gave_up(lab, orphan, ORPHAN_RETRIES, rto)
    h_retx, h_end = gave_up(lab, half, RETRIES2, rto)
    assert (len(o_retx), len(h_retx)) == (3, 2)
    assert (await half.recv()).errno == "ETIMEDOUT"
    evidence(f"orphan (tcp_orphan_retries={ORPHAN_RETRIES}) gone",
             f"{o_end:.3f} s after its FIN, {len(o_retx)} retransmissions")
    evidence(f"half-closed (tcp_retries2={RETRIES2}) ETIMEDOUT",
             f"{h_end:.3f} s after its FIN, {len(h_retx)} retransmissions")
