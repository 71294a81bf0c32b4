"""A RST inside the receive window does not reset an established connection:
only a RST whose sequence number is exactly RCV.NXT does; one elsewhere in
the window draws a challenge ACK, one outside it is dropped in silence.

Seed 004 (快速复用): "历史RST报文只要在接收窗口内就不会丢弃".  False on Linux since
3.6 (RFC 5961 §3, blind reset attacks): tcp_validate_incoming()
(net/ipv4/tcp_input.c) resets only when seq == RCV.NXT (tcp_reset());
for any other in-window RST it calls tcp_send_challenge_ack(), a pure ACK
with SND.NXT/RCV.NXT (TcpExt TCPChallengeACK), and drops the RST.  The real
peer, if it did want to reset, answers that ACK with an exact RST; an old or
forged RST gets no further.  An out-of-window RST is dropped without a reply.
The RSTs are forged from the peer's address (faults.inject_rst).
"""

import trio

import harness
from harness import faults

SEED = "004"
CLAIM = "an old RST is not discarded as long as it falls in the receive window"
VERDICT = "false"

SYSCTLS = {"net.ipv4.tcp_invalid_ratelimit": 500, "net.ipv4.tcp_challenge_ack_limit": 2147483647}


async def connected(lab, family):
    client, server = await lab.pair(sysctls=SYSCTLS)
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    assert (await conn.send(b"hello")).value == 5 and (await peer.recv()).value == b"hello"
    return conn, peer


async def still_works(conn, peer):
    assert (await peer.send(b"alive")).value == 5
    assert (await conn.recv()).value == b"alive"


async def test_in_window_rst_gets_a_challenge_ack(lab, family, evidence):
    conn, peer = await connected(lab, family)
    rst = await faults.inject_rst(conn, seq="in_window")
    assert 0 < (rst.sent.seq - rst.rcv_nxt) % 2**32 <= rst.learnt.window   # in the window
    reply = await rst.wait_reply()
    assert (reply.flags, reply.seq, reply.ack) == ("A", rst.snd_nxt, rst.rcv_nxt)
    assert rst.counter("TCPChallengeACK") == 1
    assert lab.timeline.count(harness.rst_received(conn)) == 0
    await still_works(conn, peer)
    evidence("in-window RST", f"{(rst.sent.seq - rst.rcv_nxt) % 2**32} bytes past RCV.NXT: "
             f"challenge ACK after {(reply.t - rst.sent.t) * 1e6:.0f} us, connection lives")


async def test_only_the_exact_rst_resets(lab, family, evidence):
    conn, peer = await connected(lab, family)
    rst = await faults.inject_rst(conn, seq="exact")
    assert rst.sent.seq == rst.rcv_nxt
    await lab.timeline.wait_for(harness.rst_received(conn))
    await lab.wait_state(conn, "CLOSED")
    assert (await conn.recv()).errno == "ECONNRESET"
    assert rst.replies() == [] and rst.counter("TCPChallengeACK") == 0
    evidence("RST at RCV.NXT", "connection reset, recv() ECONNRESET")


async def test_out_of_window_rst_is_ignored(lab, family, evidence):
    conn, peer = await connected(lab, family)
    rst = await faults.inject_rst(conn, seq="out_of_window")
    # nothing may happen: the kernel answers or resets within ~0.1 ms, this
    # waits 500 times that
    await trio.sleep(0.05)
    assert rst.replies() == [] and rst.counter("TCPChallengeACK") == 0
    assert lab.timeline.count(harness.rst_received(conn)) == 0
    await still_works(conn, peer)
    evidence("out-of-window RST", "no reply, connection lives")
