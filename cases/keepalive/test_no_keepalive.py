"""Without SO_KEEPALIVE, an idle connection to a dead peer stays ESTABLISHED:
no timer runs and nothing is sent, whatever the keepalive sysctls say.

Seed 004 (主机宕机, 长时间无数据传输): "服务端可以开启TCP保活机制...否则只有服务端重启才能
断开"; seed 003 (一、2 B): "服务器不发任何数据了,那只有靠应用层心跳检测机制或Keepalive,来
发觉TCP断连了".  Holds.  An idle ESTABLISHED socket with nothing unacknowledged
has no timer at all: the retransmission timer needs data in flight, and the
keepalive timer is armed only by SO_KEEPALIVE (tcp_set_keepalive()); the
tcp_keepalive_* sysctls are just its defaults.  Here they are compressed so
that a connection *with* SO_KEEPALIVE, to the same dead peer, is torn down
after 3 s (2 s idle, 1 probe, 1 s); the one without it is still ESTABLISHED
then.
"""

import time

import harness
from harness import faults

SEED = "004"
CLAIM = "without keepalive an idle connection to a crashed peer is never torn down"
VERDICT = "holds"

SYSCTLS = {"net.ipv4.tcp_keepalive_time": 2, "net.ipv4.tcp_keepalive_intvl": 1,
           "net.ipv4.tcp_keepalive_probes": 1,
           # the powered-off peer's MAC stays cached (15-45 s): the control
           # ends in ETIMEDOUT, not EHOSTUNREACH (test_crash_errno.py)
           **{f"net.ipv{f}.neigh.eth0.base_reachable_time_ms": 30000 for f in (4, 6)}}


async def test_idle_connection_to_a_dead_peer_stays(lab, family, evidence):
    client, server = await lab.pair(sysctls=SYSCTLS)
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    await listener.accept()
    control = await client.connect(server, 9000, family=family,
                                   options={"SO_KEEPALIVE": True})   # the sysctls' values
    await listener.accept()
    cap = await lab.capture()

    await faults.power_off(server)
    off = time.monotonic()
    # the interval: until keepalive has given up on the control connection
    error = await lab.timeline.wait_for(harness.error_reported(control, "ETIMEDOUT"))

    info = conn.info()
    assert info.state == "ESTABLISHED" and info.timer is None   # nothing will change it
    assert cap.packets(conn) == []              # and nothing was sent
    assert lab.timeline.events(conn, kind="error") == []
    evidence("with SO_KEEPALIVE: ETIMEDOUT after", error.t - off, " s")
    evidence("without: after the same interval", f"{info.state}, no timer, 0 packets")
