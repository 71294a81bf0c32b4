"""With tcp_retries2 at its default 15, data to a peer gone silent is
retransmitted until tcp_model_timeout(15) = 924.6 s after the first RTO
retransmission has passed, then ETIMEDOUT: run as is, in virtual time.

Seed 003 (一、2 A): "重传8次,相对第一次传的15分钟后仍没收到ACK,则返回ETIMEDOUT".  False in
its numbers (see cases/crash/test_retransmission_timeout.py for the rule,
there compressed): retransmits_timed_out() turns tcp_retries2 into a time,
(2^10 - 1) x 200 ms + 6 x 120 s = 924.6 s counted from retrans_stamp (the
first RTO retransmission; the tail loss probe before it does not count),
read only when the retransmission timer fires, so the error comes at the
first expiry at or after it.  Each wait doubles from the socket's RTO up to
TCP_RTO_MAX (120 s) and fires up to its timer-wheel level's granularity late
(kernel/time/timer.c).  IPv4 and IPv6 side by side.
"""

import time

import pytest
import trio

from harness import faults
from rules import KERNEL, TCP_RTO_MAX, model_timeout, times, window

SEED = "003"
CLAIM = "a dead peer (defaults): 8 retransmissions over 15 minutes, then ETIMEDOUT"
VERDICT = "false"
pytestmark = pytest.mark.kernel(KERNEL)

RETRIES2 = 15


async def test_dead_peer_default_retries2(lab, evidence):
    client, server = await lab.pair()
    assert int(client.sysctl("net.ipv4.tcp_retries2")) == RETRIES2
    conns = []
    for family in (4, 6):
        listener = await server.listen(9000, family=family)
        conns.append((family, await client.connect(server, 9000, family=family)))
        await listener.accept()
    results = {}

    async def send_until_error(family, conn):
        rto = conn.info().rto
        sent = await conn.send(b"request")
        out = await conn.recv()                      # blocks until the kernel gives up
        results[family] = (rto, sent, out)

    async with faults.drop(server, direction="in", port=9000):
        async with trio.open_nursery() as nursery:
            for family, conn in conns:
                nursery.start_soon(send_until_error, family, conn)

    model = model_timeout(RETRIES2)
    assert f"{model:.1f}" == "924.6"
    for family, conn in conns:
        rto, sent, out = results[family]
        assert sent.value == 7 and out.errno == "ETIMEDOUT"
        tx = [e.t for e in lab.timeline.events(conn, kind="retransmit")]
        # tx[0] is the tail loss probe; from tx[1] the waits double from the RTO
        waits = [b - a for a, b in zip(tx[1:], tx[2:] + [out.ended])]
        for i, waited in enumerate(waits):
            lo, hi = window(min(rto * 2 ** (i + 1), TCP_RTO_MAX))
            assert lo <= waited <= hi + 0.01, (family, i, waited, lo, hi)
        assert tx[-1] < tx[1] + model <= out.ended              # the first expiry past the model
        times(evidence, f"ETIMEDOUT after the first RTO retransmission (IPv{family})",
              out.ended - tx[1])
        evidence(f"RTO retransmissions (IPv{family})", len(tx) - 1)
    evidence("tcp_model_timeout(15)", model, " s")
