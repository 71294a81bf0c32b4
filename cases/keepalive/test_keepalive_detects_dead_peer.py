"""Keepalive detects a peer host that died while the connection was idle:
after the idle time, one probe per interval, and when ``count`` probes went
unanswered the connection is reset and the application gets ETIMEDOUT.

Seed 003 (一、2 B): "服务器不发任何数据了,那只有靠应用层心跳检测机制或Keepalive,来发觉TCP
断连了"; seed 004 (主机宕机, 长时间无数据传输): "服务端可以开启TCP保活机制,发送探测报文来
探测客户端还是否处于正常状态".  Holds.  tcp_keepalive_timer(): once the connection
has been idle keepalive_time_when() (TCP_KEEPIDLE), tcp_write_wakeup() sends a
probe, a segment with no data and the sequence number just below snd_una, so
the peer must answer with an ACK; each unanswered probe bumps icsk_probes_out
and re-arms the timer for keepalive_intvl_when() (TCP_KEEPINTVL); when
icsk_probes_out reaches keepalive_probes() (TCP_KEEPCNT) the kernel sends a
RST (reason TCP_KEEPALIVE_TIMEOUT) and tcp_write_err() reports ETIMEDOUT.
Detection therefore takes idle + count * interval.
"""

import time

import harness
from harness import faults

SEED = "003"
CLAIM = "an idle connection to a dead peer is detected by keepalive"
VERDICT = "holds"

IDLE, INTERVAL, COUNT = 1, 1, 3
# the powered-off peer's MAC stays cached (15-45 s), so no EHOSTUNREACH soft
# error replaces ETIMEDOUT (test_crash_errno.py)
CACHED_MAC = {f"net.ipv{f}.neigh.eth0.base_reachable_time_ms": 30000 for f in (4, 6)}
DETECTION = IDLE + COUNT * INTERVAL


def late(expected: float) -> float:
    """The latest a chain of timers adding up to ``expected`` seconds ends:
    the timer wheel fires each up to 1/8 of its timeout late
    (kernel/time/timer.c), plus the wake-up of our recv()."""
    return expected * 1.125 + 0.05


async def test_keepalive_detects_a_powered_off_peer(lab, family, evidence):
    client, server = await lab.pair(sysctls=CACHED_MAC)
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    await listener.accept()
    cap = await lab.capture()

    await faults.power_off(server)              # silently: the connection is idle
    armed = time.monotonic()
    await conn.keepalive(idle=IDLE, interval=INTERVAL, count=COUNT)
    failed = await conn.recv()                  # blocks until keepalive gives up
    assert failed.errno == "ETIMEDOUT"
    error = await lab.timeline.wait_for(harness.error_reported(conn, "ETIMEDOUT"))
    rst = await lab.timeline.wait_for(harness.rst_sent(conn))
    assert rst.reason == "TCP_KEEPALIVE_TIMEOUT"
    assert DETECTION <= error.t - armed <= late(DETECTION)

    sent = [p for p in cap.packets(conn) if p.ingress == "client"]
    probes, last = sent[:-1], sent[-1]
    assert [p.flags for p in probes] == ["A"] * COUNT and last.flags == "RA"
    assert {(p.seq, p.length) for p in probes} == {(last.seq - 1, 0)}   # snd_una - 1, no data
    for a, b in zip(probes, probes[1:] + [last]):
        assert INTERVAL <= b.t - a.t <= late(INTERVAL)
    evidence("ETIMEDOUT after keepalive(1, 1, 3)", error.t - armed, " s")
    evidence("probes before the RST", len(probes))
