"""After the peer's RST, send() fails with ECONNRESET once, then EPIPE.

Seed 003 (总之 1): "收到对端RST后，仍然调用send()，则返回Connection reset by
peer，再次调用send()，则返回Broken pipe".  Holds on Linux: tcp_reset() stores
ECONNRESET in sk_err and closes the socket; the first send() consumes sk_err
(sock_error()), every later one fails the SEND_SHUTDOWN check with EPIPE
(and SIGPIPE, ignored by Python, unless MSG_NOSIGNAL).
"""

import harness

SEED = "003"
CLAIM = "after the peer's RST, send() returns ECONNRESET, then EPIPE"
VERDICT = "holds"


async def test_send_after_rst(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    await peer.close(linger=0)                                   # SO_LINGER {1,0}: RST
    await lab.timeline.wait_for(harness.rst_received(conn))
    await lab.wait_state(conn, "CLOSED")                         # tcp_done(): gone at once

    first, second, third = [await conn.send(b"x") for _ in range(3)]
    assert (first.errno, second.errno, third.errno) == ("ECONNRESET", "EPIPE", "EPIPE")
    evidence("send errnos", f"{first.errno}, {second.errno}, {third.errno}")
