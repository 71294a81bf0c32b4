"""With the defaults (tcp_syn_retries 6, tcp_syn_linear_timeouts 4 since
6.5), a connect() to a host that drops SYNs sends SYNs at 0, 1, 2, 3, 4, 5,
7, 11, 19, 35, 67 s and fails with ETIMEDOUT at 131 s: ten retransmissions,
not six, and not the textbook 127 s.  Run as is, in virtual time.

Seed 002 ("超时后进入CLOSED") and the textbook schedule the seeds take for
granted (RTO doubling from 1 s, tcp_syn_retries retransmissions, 127 s).
False on 6.5+ (cases/handshake/test_syn_retransmit_schedule.py shows the
rule compressed): tcp_retransmit_timer() keeps a SYN_SENT socket's RTO at
TCP_TIMEOUT_INIT = 1 s until tp->total_rto exceeds tcp_syn_linear_timeouts,
then doubles it; tcp_write_timeout() gives up after tcp_syn_retries +
tcp_syn_linear_timeouts retransmissions, or once tcp_model_timeout(6) = 127 s
passed, whichever comes first, checked when the timer fires
(net/ipv4/tcp_timer.c): the 10th retransmission goes at 67 s, and the expiry
after it, 64 s later, ends the attempt.  Debian's 6.1 has no
linear phase: 1, 3, 7, 15, 31, 63 s and ETIMEDOUT at 127 s.  Each wait fires
up to its timer-wheel level's granularity late.  IPv4 and IPv6 side by side.
"""

import pytest
import trio

from harness import faults
from rules import KERNEL, TCP_TIMEOUT_INIT, gaps, model_timeout, times, window

SEED = "002"
CLAIM = "SYN (Linux defaults): resent with the RTO doubling from 1 s, 6 times, ETIMEDOUT at 127 s"
VERDICT = "false"
pytestmark = pytest.mark.kernel(KERNEL)

SYN_RETRIES, LINEAR = 6, 4


def kernel_schedule() -> tuple[list[float], float]:
    """SYN send times and the give-up time, by tcp_retransmit_timer() and
    tcp_write_timeout(), from TCP_TIMEOUT_INIT."""
    budget = model_timeout(SYN_RETRIES, TCP_TIMEOUT_INIT)
    t, rto, sends = 0.0, TCP_TIMEOUT_INIT, [0.0]
    while True:
        t += rto
        if len(sends) - 1 >= SYN_RETRIES + LINEAR or t >= budget:
            return sends, t
        sends.append(t)
        if len(sends) - 1 > LINEAR:
            rto *= 2


async def test_syn_default_schedule(lab, evidence):
    client, server = await lab.pair()
    assert int(client.sysctl("net.ipv4.tcp_syn_retries")) == SYN_RETRIES
    assert int(client.sysctl("net.ipv4.tcp_syn_linear_timeouts")) == LINEAR
    for family in (4, 6):
        await server.listen(9000, family=family)
    cap = await lab.capture()
    outcomes = {}

    async def attempt(family):
        sock = await client.socket(family)
        assert (await sock.bind(0)).ok
        outcomes[family] = (sock, await sock.connect(server, 9000))

    async with faults.drop(server, direction="in", port=9000, tcp_flags="SYN"):
        async with trio.open_nursery() as nursery:
            for family in (4, 6):
                nursery.start_soon(attempt, family)

    sends, give_up = kernel_schedule()
    assert sends == [0, 1, 2, 3, 4, 5, 7, 11, 19, 35, 67] and give_up == 131
    for family, (sock, out) in sorted(outcomes.items()):
        assert out.errno == "ETIMEDOUT"
        syns = [p.t for p in cap.packets(flags="S") if p.src == sock.local]
        assert len(syns) == len(sends), (family, gaps(syns))
        measured = gaps(syns) + [out.ended - syns[-1]]
        for got, want in zip(measured, gaps(sends) + [give_up - sends[-1]]):
            lo, hi = window(want)
            assert lo - 0.01 <= got <= hi + 0.01, (family, measured)
        times(evidence, f"ETIMEDOUT after (IPv{family})", out.ended - syns[0])
    evidence("SYNs at", ", ".join(f"{t:g}" for t in sends) + " s")
