"""With Linux's keepalive defaults untouched, an idle connection whose peer
went silent is given up on after 7200 s + 9 x 75 s (2 h 11 min 15 s), with
9 probes, not 10: run as is, in virtual time.

Seed 000 (问题4): "若两小时还没有收到客户端的任何数据,服务器就会发送一个探测报文段,以后每隔
75秒钟发送一次。若一连发送10个探测报文仍然没反应,服务器就认为客户端出了故障,接着就关闭连接。"
False in the count.  tcp_keepalive_timer() (net/ipv4/tcp_timer.c) fires
keepalive_time_when() = 7200 s after SO_KEEPALIVE armed it, sends a probe
(tcp_write_wakeup()) and re-arms for keepalive_intvl_when() = 75 s; when
icsk_probes_out reaches keepalive_probes() = 9 it sends a RST and
tcp_write_err() reports ETIMEDOUT.  Each of the 10 timers fires up to its
timer-wheel level's granularity late: 327.68 s for 7200 s and 5.12 s for 75 s
at HZ=100 (kernel/time/timer.c), so ETIMEDOUT comes between 7875 s and
8248.8 s.  The peer drops what the client sends (an iptables DROP, so its
MAC stays known and no EHOSTUNREACH soft error replaces ETIMEDOUT).  IPv4
and IPv6 run side by side, so the two hours are paid once.
"""

import time

import pytest
import trio

from harness import faults
from rules import KERNEL, chain, times

SEED = "000"
CLAIM = "keepalive (Linux defaults): probes after 2 h idle, every 75 s, 10 unanswered -> closed"
VERDICT = "false"
pytestmark = pytest.mark.kernel(KERNEL)

IDLE, INTERVAL, PROBES = 7200, 75, 9


async def test_keepalive_defaults_give_up(lab, evidence):
    client, server = await lab.pair()              # the default profile: Linux's own values
    assert [int(client.sysctl(f"net.ipv4.tcp_keepalive_{k}")) for k in
            ("time", "intvl", "probes")] == [IDLE, INTERVAL, PROBES]
    conns = []
    for family in (4, 6):
        listener = await server.listen(9000, family=family)
        conns.append((family, await client.connect(server, 9000, family=family)))
        await listener.accept()
    cap = await lab.capture()
    ended = {}

    async def idle_until_error(family, conn):
        armed = time.monotonic()
        await conn.setsockopt("SO_KEEPALIVE", True)
        out = await conn.recv()                     # blocks until keepalive gives up
        ended[family] = (out, out.ended - armed)

    wall = time.time()
    async with faults.drop(server, direction="in", port=9000):
        async with trio.open_nursery() as nursery:
            for family, conn in conns:
                nursery.start_soon(idle_until_error, family, conn)
    wall = time.time() - wall

    lo, hi = chain([IDLE] + [INTERVAL] * PROBES)
    for family, conn in conns:
        out, waited = ended[family]
        assert out.errno == "ETIMEDOUT"
        assert lo <= waited <= hi, (family, waited, lo, hi)
        sent = [p for p in cap.packets(conn) if p.ingress == "client"]
        probes, last = sent[:-1], sent[-1]
        assert len(probes) == PROBES and last.flags == "RA"       # 9 probes, then a RST
        times(evidence, f"ETIMEDOUT after (IPv{family})", waited)
    evidence("allowed window", f"{lo:.2f}..{hi:.2f} s")
    evidence("probes before the RST", PROBES)
