"""When the peer host has crashed and rebooted, our next segment meets a
kernel with no such connection: it answers with a RST, and we get
ECONNRESET (then EPIPE).

Seed 004 (主机宕机, 未宕机方传输数据): "如果服务端向客户端传输数据的过程中发现客户端宕机并
重启,客户端的TCP连接的数据结构已经丢失,那么会发送RST报文".  Holds: the rebooted
kernel finds no socket for the segment (__inet_lookup_skb() fails) and
answers from tcp_v4_rcv()/tcp_v6_rcv() with tcp_v4_send_reset() (reason
NO_SOCKET).  Our send() had already succeeded (the data was only queued);
tcp_reset() in ESTABLISHED sets sk_err = ECONNRESET, which the next call
reports once; later sends fail with EPIPE.
"""

import harness
from harness import faults

SEED = "004"
CLAIM = "peer rebooted (state lost): our next segment gets a RST, ECONNRESET"
VERDICT = "holds"


async def test_send_to_a_rebooted_peer_meets_a_rst(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    old = await listener.accept()

    await faults.reboot(server)                 # back up, with no TCP state
    sent = await conn.send(b"are you there?")
    assert sent.value == 14                     # accepted: the answer comes later
    rst = await lab.timeline.wait_for(harness.rst_received(conn))
    # (the old socket's own RST died in the crash: power_off lets nothing out)
    answered = await lab.timeline.wait_for(harness.rst_sent(old), since=sent.started)
    assert answered.reason == "NO_SOCKET"

    assert (await conn.recv()).errno == "ECONNRESET"
    assert (await conn.send(b"x")).errno == "EPIPE"
    await lab.wait_state(conn, "CLOSED", timeout=0)
    evidence("RST received after send() began", (rst.t - sent.started) * 1000, " ms")
    evidence("rebooted kernel's RST reason", answered.reason)
