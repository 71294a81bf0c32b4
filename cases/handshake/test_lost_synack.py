"""A lost SYN-ACK does not deadlock the handshake: it is sent again after the
1 s initial RTO and the connection completes.

Seed 000 (常见问题 3): "C在S的应答分组在传输中被丢失的情况下,将不知道S是否已准备好
... S在发出的分组超时后,重复发送同样的分组".  Holds for TCP's three-way
handshake: the server's request socket resends its SYN-ACK on its own timer
(reqsk_timer_handler(), TCP_TIMEOUT_INIT = 1 s), and the client, still in
SYN_SENT, resends its SYN after the same 1 s, which makes the server resend
the SYN-ACK at once (tcp_check_req(): a retransmitted SYN is answered by
inet_rtx_syn_ack()).  Whichever comes first, connect() returns about 1 s late.
"""

import time

from harness import faults

SEED = "000"
CLAIM = "a lost SYN-ACK is sent again after a timeout and the handshake completes"
VERDICT = "holds"


async def test_lost_synack_is_resent(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    cap = await lab.capture()

    async with faults.drop_synack(server, 9000, count=1) as lost:
        t0 = time.monotonic()
        conn = await client.connect(server, 9000, family=family)
        took = time.monotonic() - t0
    peer = await listener.accept()

    assert lost.counts["dropped"] == 1
    assert 1.0 <= took < 1.2, took                               # one initial RTO late
    synacks = lab.timeline.events(kind="synack_retransmit")
    assert synacks and all(e.local == peer.local and e.remote == peer.remote for e in synacks)
    assert cap.summary(conn)[0] == "client:S" and "server:SA" in cap.summary(conn)
    assert conn.info().state == peer.info().state == "ESTABLISHED"
    assert (await conn.send(b"ok")).ok and (await peer.recv()).value == b"ok"
    evidence("connect() took", took, " s")
    evidence("SYN-ACK resends", len(synacks))
