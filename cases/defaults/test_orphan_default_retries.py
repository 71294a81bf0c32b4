"""With tcp_orphan_retries at its default 0, a closed socket whose FIN is
never acknowledged is not given up on at once: 0 means 8 while the RTO is
below TCP_RTO_MAX, a time budget of tcp_model_timeout(8) = 102.2 s from the
first RTO retransmission.  Run as is, in virtual time.

Seed 002 (调优: "tcp_orphan_retries ... 缺省值是8") and seed 004 ("超时重传,达到最大次数之后
就强制断开连接").  Holds, read right: the sysctl says 0; tcp_orphan_retries()
(net/ipv4/tcp_timer.c) turns 0 into 8 "if socket sent something recently"
(icsk_rto < TCP_RTO_MAX), and tcp_write_timeout() -> retransmits_timed_out()
makes 8 a time, (2^9 - 1) x 200 ms = 102.2 s counted from retrans_stamp and
checked when the retransmission timer fires; then tcp_write_err() closes
the orphan without a RST (cases/timers/ has the rule compressed).  Each
wait doubles from the socket's RTO and fires up to its timer-wheel level's
granularity late.  IPv4 and IPv6 side by side.
"""

import pytest

from harness import faults
from rules import KERNEL, model_timeout, times, wait_event, window

SEED = "002"
CLAIM = "tcp_orphan_retries (Linux defaults): a closed socket's FIN is retried, then dropped"
VERDICT = "holds"
pytestmark = pytest.mark.kernel(KERNEL)


async def test_orphan_default_retries(lab, evidence):
    client, server = await lab.pair()
    assert int(client.sysctl("net.ipv4.tcp_orphan_retries")) == 0
    conns = []
    for family in (4, 6):
        listener = await server.listen(9000, family=family)
        conns.append((family, await client.connect(server, 9000, family=family)))
        await listener.accept()
    rto = {family: conn.info().rto for family, conn in conns}
    async with faults.drop(server, direction="in", port=9000):
        for _, conn in conns:
            await conn.close()                          # orphaned in FIN_WAIT1
        for _, conn in conns:                           # 102.2 s + one RTO backoff at most
            await wait_event(lab, conn, lambda e: e.kind == "state" and e.old == "FIN_WAIT1",
                             timeout=2 * model_timeout(8) + 120)
    model = model_timeout(8)
    for family, conn in conns:
        states = lab.timeline.events(conn, kind="state")
        fin = next(e.t for e in states if e.new == "FIN_WAIT1")
        end = next(e.t for e in states if e.old == "FIN_WAIT1")
        assert next(e.new for e in states if e.old == "FIN_WAIT1") == "CLOSE"
        tx = [e.t for e in lab.timeline.events(conn, kind="retransmit")]
        waits = [b - a for a, b in zip(tx[1:], tx[2:] + [end])]
        for i, waited in enumerate(waits):
            lo, hi = window(rto[family] * 2 ** (i + 1))
            assert lo <= waited <= hi + 0.01, (family, i, waits)
        assert tx[-1] < tx[1] + model <= end                     # 8 became 102.2 s
        assert lab.timeline.count(lambda e: e.kind == "rst_sent", conn) == 0
        times(evidence, f"orphan gone after its FIN (IPv{family})", end - fin)
        evidence(f"FIN retransmissions (IPv{family})", len(tx))
    evidence("tcp_model_timeout(8)", model, " s")
