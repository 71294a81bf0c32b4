"""TCP_USER_TIMEOUT bounds, per connection, how long sent data may stay
unacknowledged: the connection fails with ETIMEDOUT that long after the first
retransmission, silently (no RST), instead of after tcp_retries2's model.

Seed 003 (一、2 A): "注:15分钟超时可以在 /proc/sys/net/ipv4/tcp_retries2 中修改".
Holds, and there is a per-socket alternative: TCP_USER_TIMEOUT (RFC 5482).
retransmits_timed_out() then compares the time since retrans_stamp (the first
RTO retransmission) with the user timeout instead of tcp_model_timeout(), and
tcp_clamp_rto_to_user_timeout() shortens the last RTO so that the timer fires
when it is reached; tcp_write_err() reports ETIMEDOUT and closes the socket,
without a RST (unlike keepalive's abort).  With the default tcp_retries2 (15)
the same connection would retransmit for 924.6 s.
"""

import harness
from harness import faults

SEED = "003"
CLAIM = "the ~15 min give-up on unacknowledged data is changed with tcp_retries2"
VERDICT = "holds"

USER_TIMEOUT = 1.0
SYSCTLS = {"net.ipv4.tcp_retries2": 15,
           # the powered-off peer's MAC stays cached (15-45 s): ETIMEDOUT, not
           # EHOSTUNREACH (test_crash_errno.py)
           **{f"net.ipv{f}.neigh.eth0.base_reachable_time_ms": 30000 for f in (4, 6)}}


def late(expected: float) -> float:
    """The latest the clamped timer fires: the timer wheel rounds it up by
    at most 1/8 (kernel/time/timer.c), plus jiffy rounding."""
    return expected * 1.125 + 0.012


async def test_user_timeout_bounds_unacknowledged_data(lab, family, evidence):
    client, server = await lab.pair(sysctls=SYSCTLS)
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family,
                                options={"TCP_USER_TIMEOUT": USER_TIMEOUT})
    await listener.accept()

    await faults.power_off(server)
    sent = await conn.send(b"request")
    assert sent.value == 7
    failed = await conn.recv()                  # blocks until the user timeout
    assert failed.errno == "ETIMEDOUT"
    error = await lab.timeline.wait_for(harness.error_reported(conn, "ETIMEDOUT"))
    assert lab.timeline.count(lambda e: e.kind == "rst_sent", conn) == 0   # silently

    # tx[0] is the tail loss probe; the clock starts at tx[1], the first
    # RTO retransmission (retrans_stamp)
    tx = [e.t for e in lab.timeline.events(conn, kind="retransmit")]
    assert USER_TIMEOUT <= error.t - tx[1] <= late(USER_TIMEOUT)
    assert (await conn.send(b"again")).errno == "EPIPE"
    evidence("TCP_USER_TIMEOUT=1 s: ETIMEDOUT after the send", error.t - sent.ended, " s")
    evidence("after the first RTO retransmission", error.t - tx[1], " s")
