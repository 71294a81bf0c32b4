"""Spoofed RST, FIN and SYN from the switch, against the real kernel.

RFC 5961 §3.2 and tcp_validate_incoming() (net/ipv4/tcp_input.c): a RST
resets only when its sequence number is exactly RCV.NXT; inside the window
it draws a challenge ACK; outside it is dropped.  §4: a SYN on a
synchronized connection draws a challenge ACK too.
"""

import errno

import pytest
import trio

from harness import FaultError, InvalidArgument, ObservationTimeout, rst_received
from harness.faults._inject import inject_fin, inject_rst, inject_syn
from helpers import still_works


async def connected(lab, family, **kw):
    client, server = await lab.pair(**kw)
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    # some data each way, so the sequence numbers are not the ISNs
    assert (await conn.send(b"hello")).value == 5
    assert (await peer.recv()).value == b"hello"
    assert (await peer.send(b"olleh")).value == 5
    assert (await conn.recv()).value == b"olleh"
    return client, server, listener, conn, peer



async def test_exact_rst_kills_the_connection(lab, family):
    *_, conn, peer = await connected(lab, family)
    inj = await inject_rst(conn, seq="exact")
    assert inj.sent.seq == inj.rcv_nxt and inj.sent.flags == "RA"
    ev = await lab.timeline.wait_for(rst_received(conn))
    assert ev.t >= inj.sent.t
    await lab.wait_state(conn, "CLOSED")
    assert (await conn.recv()).errno == "ECONNRESET"
    assert (await conn.send(b"x")).errno == "EPIPE"
    assert inj.counter("TCPChallengeACK") == 0 and inj.replies() == []  # reset in silence
    # the real peer saw nothing: it is still ESTABLISHED, unaware
    await lab.wait_state(peer, "ESTABLISHED")
    assert lab.timeline.count(rst_received(peer)) == 0


async def test_exact_rst_kills_the_accepted_side_too(lab):
    *_, conn, peer = await connected(lab, 4)
    await inject_rst(peer)  # "exact" is the default
    await lab.timeline.wait_for(rst_received(peer))
    assert (await peer.send(b"x")).errno == "ECONNRESET"


async def test_in_window_rst_draws_a_challenge_ack_and_the_connection_lives(lab, family):
    *_, conn, peer = await connected(lab, family)
    inj = await inject_rst(conn, seq="in_window")
    assert inj.rcv_nxt < inj.sent.seq <= inj.rcv_nxt + inj.learnt.window
    reply = await inj.wait_reply()
    # the challenge ACK: a pure ACK of what the victim really has (RFC 5961 §3.2)
    assert (reply.flags, reply.seq, reply.ack, reply.length) == ("A", inj.snd_nxt, inj.rcv_nxt, 0)
    assert reply.t - inj.sent.t < 0.05
    assert inj.counter("TCPChallengeACK") == 1
    assert lab.timeline.count(rst_received(conn)) == 0
    await lab.wait_state(conn, "ESTABLISHED")
    await still_works(conn, peer)


async def test_out_of_window_rst_is_ignored(lab, family):
    *_, conn, peer = await connected(lab, family)
    inj = await inject_rst(conn, seq="out_of_window")
    assert (inj.sent.seq - inj.rcv_nxt) % 2**32 == 2**30
    # to show nothing happens: no answer, no reset, within an interval ~500x
    # the ~0.1 ms the kernel takes to answer or reset
    await trio.sleep(0.05)
    assert inj.replies() == [] and inj.counter("TCPChallengeACK") == 0
    assert lab.timeline.count(rst_received(conn)) == 0
    await still_works(conn, peer)


async def test_challenge_acks_are_rate_limited_per_socket(lab):
    # tcp_send_challenge_ack(): one per tcp_invalid_ratelimit (500 ms, pinned)
    *_, conn, peer = await connected(lab, 4)
    first = await inject_rst(conn, seq="in_window")
    await first.wait_reply()
    second = await inject_rst(conn, seq="in_window")
    assert second.counter("TCPChallengeACK") == 0
    assert second.counter("TCPACKSkippedChallenge") == 1
    assert first.counter("TCPChallengeACK") == 1


async def test_a_reply_that_never_comes_says_what_the_kernel_did(lab):
    """wait_reply()'s timeout names the victim's counters that grew: here
    the second RST within tcp_invalid_ratelimit (pinned to 10 s) had its
    challenge ACK skipped, which the message shows."""
    *_, conn, peer = await connected(lab, 4, sysctls={"net.ipv4.tcp_invalid_ratelimit": 10_000})
    await (await inject_rst(conn, seq="in_window")).wait_reply()
    second = await inject_rst(conn, seq="in_window")
    with pytest.raises(ObservationTimeout, match=r"the tap saw 0 segment\(s\) of the connection "
                                                 r"since, and the victim's TcpExt counters grew "
                                                 r"by \{.*'TCPACKSkippedChallenge': 1"):
        await second.wait_reply(timeout=0.1)


async def test_rate_limit_off_every_rst_is_challenged(lab):
    *_, conn, peer = await connected(lab, 4, sysctls={"net.ipv4.tcp_invalid_ratelimit": 0})
    for _ in range(3):
        inj = await inject_rst(conn, seq="in_window")
        assert (await inj.wait_reply()).ack == inj.rcv_nxt
        assert inj.counter("TCPChallengeACK") == 1
    await still_works(conn, peer)


async def test_fin_ends_the_stream_for_the_owner(lab, family):
    *_, conn, peer = await connected(lab, family)
    inj = await inject_fin(conn)
    reply = await inj.wait_reply()
    assert (reply.flags, reply.ack) == ("A", (inj.rcv_nxt + 1) % 2**32)  # the FIN is ACKed
    await lab.wait_state(conn, "CLOSE_WAIT")
    assert (await conn.recv()).value == b""
    await lab.wait_state(peer, "ESTABLISHED")  # the real peer never sent a FIN


async def test_in_window_syn_draws_a_challenge_ack(lab, family):
    *_, conn, peer = await connected(lab, family)
    inj = await inject_syn(conn)
    assert inj.sent.flags == "S" and inj.sent.seq == inj.rcv_nxt
    reply = await inj.wait_reply()
    assert (reply.flags, reply.seq, reply.ack) == ("A", inj.snd_nxt, inj.rcv_nxt)
    assert inj.counter("TCPSYNChallenge") == 1 and inj.counter("TCPChallengeACK") == 1
    await lab.wait_state(conn, "ESTABLISHED")
    assert lab.timeline.count(rst_received(conn)) == 0
    await still_works(conn, peer)


# --- bad input: InvalidArgument before anything is touched ----------------------

async def test_bad_parameters(lab):
    client, server, listener, conn, peer = await connected(lab, 4)
    steps = len(lab.undo)
    with pytest.raises(InvalidArgument, match=r"seq must be one of 'exact', 'in_window', "
                                              r"'out_of_window' .* got seq='inside'"):
        await inject_rst(conn, seq="inside")
    with pytest.raises(InvalidArgument, match=r"seq must be one of .* got seq=True"):
        await inject_rst(conn, seq=True)
    # the old name says what to write now
    with pytest.raises(InvalidArgument, match=r"inject_rst\(in_window=True\): the argument is "
                                              r"now seq=.*write seq='in_window'"):
        await inject_rst(conn, in_window=True)
    with pytest.raises(InvalidArgument, match=r"conn must be a harness Socket"):
        await inject_fin(client)
    with pytest.raises(InvalidArgument, match=r"is not connected"):
        await inject_syn(listener)
    unconnected = await client.socket()
    with pytest.raises(InvalidArgument, match=r"is not connected"):
        await inject_rst(unconnected)
    # a socket in TIME_WAIT has no receive window to inject into
    await conn.close()
    await lab.wait_state(peer, "CLOSE_WAIT")
    await peer.close()
    await lab.wait_state(conn, "TIME_WAIT")
    with pytest.raises(InvalidArgument, match=r"was closed by the test"):
        await inject_rst(conn)
    conn.closed = False  # as if the test still held it: the kernel's state decides
    with pytest.raises(InvalidArgument, match=r"is TIME_WAIT; injection needs a synchronized"):
        await inject_rst(conn)
    assert len(lab.undo) == steps  # nothing was opened


class _Refusing:
    """A packet socket whose sends fail as a full device queue makes them."""

    def send(self, data):
        raise OSError(errno.ENOBUFS, "No buffer space available")


def test_a_failed_send_is_a_fault_error():
    """The tap's OSError does not leak: FaultError naming the port, with the
    errno and the OSError as its cause (mocked: a full queue on demand)."""
    from harness.faults import _inject as inject, _segments as segments
    tap = inject._Tap.__new__(inject._Tap)
    tap._sock, tap.port = _Refusing(), "p3"
    with pytest.raises(FaultError, match="cannot send a segment out of switch port p3") as info:
        tap.send(b"frame")
    assert info.value.errno == "ENOBUFS" and isinstance(info.value.__cause__, OSError)
    w = segments.Wire.__new__(segments.Wire)
    w._out, w.ends = _Refusing(), {}
    w.victim = w.remote = type("H", (), {"name": "server", "index": 2})()
    with pytest.raises(FaultError, match="cannot send a segment out of switch port p2") as info:
        w._send(b"frame")
    assert info.value.errno == "ENOBUFS"
