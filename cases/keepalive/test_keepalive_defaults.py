"""Keepalive's defaults are 7200 s idle, then a probe every 75 s, and the
connection is dropped after 9 unanswered probes (not 10): 7875 s in all.

Seed 000 (问题4): "时间通常是设置为2小时,若两小时还没有收到客户端的任何数据,服务器就会发送
一个探测报文段,以后每隔75秒钟发送一次。若一连发送10个探测报文仍然没反应,服务器就认为客户
端出了故障,接着就关闭连接。"  False in the count: tcp_sk_init() starts every
network namespace with TCP_KEEPALIVE_TIME (2 h), TCP_KEEPALIVE_INTVL (75 s)
and TCP_KEEPALIVE_PROBES (9) (include/net/tcp.h); 10 is not Linux's.  And
none of it applies until the application sets SO_KEEPALIVE: then
tcp_set_keepalive() arms the timer for keepalive_time_when() (the sysctl, or
TCP_KEEPIDLE).  The harness pins the same values (harness._timers.DEFAULT); a
namespace nobody configured shows the kernel's own.
"""

from harness._timers import DEFAULT

SEED = "000"
CLAIM = "keepalive: first probe after 2 h idle, then every 75 s, 10 probes"
VERDICT = "false"

KEYS = ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes")


async def test_keepalive_defaults(lab, family, evidence):
    client, server = await lab.pair()
    # the kernel's own: a new namespace, never configured by anyone
    out = await client.run(["unshare", "--net", "cat"] +
                           [f"/proc/sys/net/ipv4/{k}" for k in KEYS])
    kernel = tuple(int(v) for v in out.stdout.split())
    pinned = tuple(int(client.sysctl(f"net.ipv4.{k}")) for k in KEYS)
    assert kernel == pinned == tuple(DEFAULT[f"net.ipv4.{k}"] for k in KEYS) == (7200, 75, 9)

    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    await listener.accept()
    assert conn.info().timer is None            # off unless the application asks
    await conn.setsockopt("SO_KEEPALIVE", True)
    armed = conn.info()
    assert armed.timer == "keepalive" and 7199 < armed.timer_left <= 7200

    idle, interval, probes = kernel
    evidence("kernel defaults", f"{idle} s / {interval} s / {probes} probes")
    evidence("detection after", idle + probes * interval, " s (the seed's: 7950 s)")
