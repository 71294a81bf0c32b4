"""A connect() whose SYNs are never answered stays in SYN_SENT until the SYN
retransmission timer gives up; then the socket is gone and connect() fails
with ETIMEDOUT.

Seed 002 (Client端口状态转换): "等待对端的ACK和SYN期间,端口状态一直为SYN_SENT,
超时后进入CLOSED".  Holds.  tcp_retransmit_timer() resends the SYN;
tcp_write_timeout() gives up once the time since the first SYN reaches
tcp_model_timeout(tcp_syn_retries) = (2^(tcp_syn_retries+1) - 1) s (3 s for
1), or after tcp_syn_retries + tcp_syn_linear_timeouts retransmissions,
whichever comes first (net/ipv4/tcp_timer.c); tcp_write_err() then sets
sk_err = ETIMEDOUT and tcp_done() moves the socket to CLOSE and unhashes it.
How many SYNs that takes is test_syn_retransmit_schedule.py.
"""

from harness import faults

SEED = "002"
CLAIM = "SYN_SENT: on timeout the socket goes to CLOSED (connect() fails)"
VERDICT = "holds"
# why a result differs on another kernel (the catalog table shows it)
KERNEL_NOTES = {
    'uml-6.1': 'tcp_syn_linear_timeouts is new in 6.5 (the linear first SYN retransmissions)',
}

SYSCTLS = {"net.ipv4.tcp_syn_retries": 1, "net.ipv4.tcp_syn_linear_timeouts": 4}


async def test_syn_sent_times_out(lab, family, evidence):
    client, server = await lab.pair(sysctls=SYSCTLS)
    await server.listen(9000, family=family)
    cap = await lab.capture()

    async with faults.drop(server, direction="in", port=9000, tcp_flags="SYN"):
        sock = await client.socket(family)
        assert (await sock.bind(0)).ok                           # to know its port
        out = await sock.connect(server, 9000)

    assert out.errno == "ETIMEDOUT"
    assert 3.0 <= out.duration < 3.5, out                        # (2^2 - 1) s after the first SYN
    syns = [p for p in cap.packets(flags="S") if p.src == sock.local]
    assert len(syns) == 3                                        # the SYN and 2 retransmissions
    mine = [e for e in lab.timeline.events() if e.local == sock.local and e.source == "trace"]
    assert [(e.old, e.new) for e in mine if e.kind == "state"] == [("CLOSE", "SYN_SENT"),
                                                                   ("SYN_SENT", "CLOSE")]
    assert [e.errno for e in mine if e.kind == "error"] == ["ETIMEDOUT"]
    assert len(client.sockets(port=sock.local[1])) == 0          # gone, not lingering
    evidence("connect() result", f"{out.errno} after {out.duration:.2f} s, {len(syns)} SYNs")
