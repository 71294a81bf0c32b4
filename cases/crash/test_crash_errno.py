"""Which error a connection to a crashed peer ends with depends on whether
the peer's address still resolves: ETIMEDOUT while its link-layer address is
known (cached, or answered by a live host behind a firewall), EHOSTUNREACH
once address resolution fails.  Either way the next send() fails with EPIPE.

Seed 003 (一、2 A): "重传8次,相对第一次传的15分钟后仍没收到ACK,则返回ETIMEDOUT或
EHOSTUNREAC错误。如果服务器不理会这个错误,再次调用send,则立马返回Broken pipe错误。"
Depends.  When the retransmission timer gives up, tcp_write_err() reports
sk->sk_err_soft ?: ETIMEDOUT.  A soft error is left there when neighbour
resolution fails: the queued segments are reported (arp_error_report() ->
ipv4_link_failure(), ndisc_error_report() -> ip6_link_failure()) as an ICMP
host unreachable to ourselves, which tcp_v4_err()/tcp_v6_err() store in
sk_err_soft for an established socket instead of failing it.  A crashed
host's MAC stays usable for reachable_time (15-45 s from base_reachable_time,
30 s); after that, traffic to it starts probes (after delay_first_probe_time,
5 s), which fail within seconds.  With the default tcp_retries2 (924.6 s) a
crashed host on the same link therefore ends in EHOSTUNREACH; ETIMEDOUT needs
a give-up before that, or a silent host whose address still resolves.

Here tcp_retries2 = 1 (give-up ~1.7 s after the send) and the neighbour
timers are pinned: the kernel's defaults (the MAC outlives the connection),
or compressed to 0.2 s reachable, no probe delay, 3 probes 0.1 s apart.
"""

import pytest

import harness
from harness import faults

SEED = "003"
CLAIM = "a crashed peer: the send side fails with ETIMEDOUT or EHOSTUNREACH"
VERDICT = "depends"


def neighbour(reachable_ms: int, delay_s: int, retrans_ms: int) -> dict:
    keys = {"base_reachable_time_ms": reachable_ms, "delay_first_probe_time": delay_s,
            "retrans_time_ms": retrans_ms, "ucast_solicit": 3, "mcast_solicit": 3}
    return {f"net.ipv{f}.neigh.eth0.{k}": v for f in (4, 6) for k, v in keys.items()}


CACHED = neighbour(30000, 5, 1000)      # the kernel's defaults
EXPIRES = neighbour(200, 0, 100)


@pytest.mark.parametrize("crash, neigh, errno", [
    ("power_off", CACHED, "ETIMEDOUT"),          # its MAC still cached: silence
    ("power_off", EXPIRES, "EHOSTUNREACH"),      # resolution fails first
    ("firewall", EXPIRES, "ETIMEDOUT"),          # a live kernel still answers ARP/ND
], ids=["power-off-mac-cached", "power-off-mac-expired", "firewall-drop"])
async def test_error_depends_on_address_resolution(lab, family, crash, neigh, errno, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_retries2": 1, **neigh})
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    await listener.accept()

    if crash == "power_off":
        await faults.power_off(server)
    else:
        await faults.drop(server, direction="in").start()   # undone at teardown
    sent = await conn.send(b"request")
    assert sent.ok
    failed = await conn.recv()                   # blocks until the kernel gives up
    assert failed.errno == errno
    await lab.timeline.wait_for(harness.error_reported(conn, errno))
    assert (await conn.send(b"again")).errno == "EPIPE"
    evidence("error", f"{errno} after {failed.ended - sent.ended:.2f} s")
