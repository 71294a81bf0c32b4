"""With tcp_fin_timeout at its default 60 s, an orphaned socket in FIN_WAIT2
(closed by its application, the peer never sending its FIN) disappears 60 s
after the ACK of its FIN: run as is, in virtual time.

Seed 002 (主动方端口状态转换): "如果在超时时间内没有收这个FIN则直接进入CLOSED状态".
Holds for an orphan (cases/timers/test_fin_wait2_timeout.py shows it
compressed, and that a half-closed socket waits for ever).  On the ACK of
the orphan's FIN, tcp_rcv_state_process() takes tmo = tcp_fin_time() =
max(tcp_fin_timeout, 3.5 RTO) = 60 s and, since tmo <= TCP_TIMEWAIT_LEN,
hands the connection to a timewait socket in substate FIN_WAIT2 for tmo
(tcp_time_wait(sk, TCP_FIN_WAIT2, tmo)); its timer fires up to the timer
wheel's granularity at 60 s late: 5.12 s at HZ=100.  IPv4 and IPv6 side by
side.
"""

import time

import pytest
import trio

from rules import KERNEL, times, window

SEED = "002"
CLAIM = "FIN_WAIT_2 (Linux defaults): without the peer's FIN, CLOSED after tcp_fin_timeout"
VERDICT = "holds"
pytestmark = pytest.mark.kernel(KERNEL)

FIN_TIMEOUT = 60


async def test_orphaned_fin_wait2_default_timeout(lab, evidence):
    client, server = await lab.pair()
    assert int(client.sysctl("net.ipv4.tcp_fin_timeout")) == FIN_TIMEOUT
    orphans = []
    for family in (4, 6):
        listener = await server.listen(9000, family=family)
        conn = await client.connect(server, 9000, family=family)
        await listener.accept()                     # the server keeps it open: no FIN
        await conn.close()
        fw2 = await lab.wait_state(conn, "FIN_WAIT2")
        orphans.append((family, conn, fw2))
    lo, hi = window(FIN_TIMEOUT)
    # nothing to wait for: show that both are still there just before the minute
    await trio.sleep(max(0.0, orphans[-1][2].snapshot_time + lo - 0.1 - time.monotonic()))
    assert [conn.info().state for _, conn, _ in orphans] == ["FIN_WAIT2", "FIN_WAIT2"]
    for family, conn, fw2 in orphans:
        assert fw2.timer in ("time_wait", "keepalive") and fw2.timer_left <= FIN_TIMEOUT
        await lab.wait_state(conn, "CLOSED",
                             timeout=max(0.0, fw2.snapshot_time + hi - time.monotonic()))
        lifetime = time.monotonic() - fw2.snapshot_time
        assert lo - 0.02 <= lifetime <= hi + 0.02, (family, lifetime)
        times(evidence, f"orphaned FIN_WAIT2 lifetime (IPv{family})", lifetime)
    evidence("allowed window", f"{lo:.2f}..{hi:.2f} s")
