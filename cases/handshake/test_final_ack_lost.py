"""The server counts a connection as established only when the third segment
arrives: with the client's final ACK lost, accept() waits until the SYN-ACK
is resent and answered; a data segment from the client, which carries the
same ACK, completes it at once.

Seed 000 (常见问题 3): the third segment is what lets "双方都知道彼此已准备好";
without it "S认为连接已经成功地建立了" would be premature.  Holds: until an
acceptable ACK of its SYN-ACK arrives, the server has only a request socket
in SYN_RECV and nothing to accept.  reqsk_timer_handler() resends the
SYN-ACK after 1 s; the client, already ESTABLISHED, takes it for a SYN on a
synchronized connection and answers with a challenge ACK
(tcp_validate_incoming(), RFC 5961 §4: TcpExt TCPSYNChallenge), which
acknowledges the server's ISN all the same, and tcp_check_req() creates the
socket.  Any client segment with that ACK does the same, so data sent right
after connect() is accepted and delivered with no delay (RFC 9293 3.5: the
ACK may ride on data).  "At once" is told apart from the only other way in,
the SYN-ACK resent after 1 s, by the timeline (no SYN-ACK retransmission)
and by accept() returning before that second, not by a guessed budget that
a busy machine can exceed.
"""

import time
from types import SimpleNamespace

import trio

from harness import faults

SEED = "000"
CLAIM = "the server is not ready until the third segment (the ACK of its SYN-ACK) arrives"
VERDICT = "holds"


def pure_ack(p):
    return p.pure_ack



async def test_server_waits_for_the_final_ack(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    before = client.counters("TcpExt")
    async with faults.drop_first(server, 1, direction="in", port=9000, when=pure_ack) as lost:
        t0 = time.monotonic()
        conn = await client.connect(server, 9000, family=family)
        assert conn.info().state == "ESTABLISHED"                # the client is done
        request = SimpleNamespace(host=server, local=conn.remote, remote=conn.local)
        assert (await lab.wait_state(request, "SYN_RECV")).timer == "retransmit"
        with trio.fail_after(2):
            peer = await listener.accept()                       # only after the re-ACK
        waited = time.monotonic() - t0
    assert lost.counts["dropped"] == 1

    resend = await lab.timeline.wait_for(
        lambda e: e.kind == "synack_retransmit" and e.local == peer.local)
    made = next(e for e in lab.timeline.events(kind="state")
                if e.local == peer.local and e.remote == peer.remote and e.new == "SYN_RECV")
    resends = [e for e in lab.timeline.events(kind="synack_retransmit")
               if e.local == peer.local and e.t < made.t]
    assert resends == [resend]                                   # made by the first re-ACK
    assert 1.0 <= waited < 3.0, waited                           # after the 1 s resend, before 3 s
    after = client.counters("TcpExt")
    assert after["TCPSYNChallenge"] - before["TCPSYNChallenge"] == 1  # the re-ACK
    evidence("accept() returned after", waited, " s")
    evidence("client's answer to the resent SYN-ACK", "challenge ACK (TCPSYNChallenge +1)")


async def test_data_carries_the_final_ack(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    async with faults.drop_first(server, 1, direction="in", port=9000, when=pure_ack) as lost:
        t0 = time.monotonic()
        conn = await client.connect(server, 9000, family=family)
        assert (await conn.send(b"hello")).value == 5            # carries ack = ISN(server) + 1
        with trio.fail_after(2):
            peer = await listener.accept()
        waited = time.monotonic() - t0
        assert (await peer.recv()).value == b"hello"
    assert lost.counts["dropped"] == 1
    assert lab.timeline.events(kind="synack_retransmit") == []   # no timeout was needed
    assert waited < 1.0, waited                                  # before the SYN-ACK's 1 s
    evidence("accept() returned after", waited * 1000, " ms")
