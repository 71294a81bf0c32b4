"""Scripted inbound segments (harness.faults._segments) against the real kernel.

The script speaks for a host whose kernel is silenced (scripted_peer), or
for the real peer of a live connection (wire); what the victim's kernel
answers is asserted with expected lines.
"""

import itertools
import time

import pytest

from harness import InvalidArgument, rst_received
from harness._kernels import TICK_LAG_JIFFIES
from harness.faults._segments import reset_at, scripted_peer, wire
from helpers import wait_until


async def test_scripted_handshake_options_and_data(lab, family):
    client, server = await lab.pair()
    async with scripted_peer(server, client, port=9000, family=family) as w:
        listener = await server.listen(9000, family=family)
        await w.send("client > server S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>")
        # the victim's SYN-ACK echoes what it understood: MSS of its own link,
        # SACK permitted, window scale 7 (tcp_rmem's 131072 default needs 7; 6.18)
        synack = await w.expect("server > client S. 0:0(0) ack 1 <mss *,nop,nop,sackOK,nop,"
                                "wscale 7>", within=0.05)
        assert synack.option("mss") == ("mss", 1460 if family == 4 else 1440)
        ack = await w.send("client > server . 1:1(0) ack 1 win 257", wait=0.1)
        assert ack.t - synack.t >= 0.1  # never early (how late: bench_segments.py)
        conn = await listener.accept()
        await lab.wait_state(conn, "ESTABLISHED")
        # SYN-ACK to ACK is the first RTT sample (tcp_synack_rtt_meas(), µs
        # clock), as packetdrill's "+.1 < ." sets it
        rtt = conn.info().tcp_info["rtt_us"] / 1e6
        assert abs(rtt - (ack.t - synack.t)) < 0.001
        await w.send("client > server P. 1:6(5) ack 1 win 257", payload=b"hello")
        assert (await conn.recv()).value == b"hello"
        await w.expect("server > client . 1:1(0) ack 6", within=0.05)
        # our peer announced mss 1000: the victim's segments carry at most that
        # (the tap sees what veth carries: a GSO packet of several segments
        # is one frame here, so this is read from tcp_info)
        assert conn.info().tcp_info["snd_mss"] == 1000
        out = await conn.send(b"x" * 1000)
        await w.expect("server > client P. 1:1001(1000) ack 6", after=out, within=0.05)


async def test_frame_times_hold_when_the_clock_reading_is_preempted(lab, monkeypatch):
    """A frame's receive time is the kernel's realtime stamp moved onto the
    monotonic clock by an offset read at the tap's read.  Here every other
    realtime reading comes 3 ms after the monotonic one before it, as when
    the reading thread is preempted between the two: the offset must not
    take the gap in, or each data segment, sent within its send() call,
    appears to leave 3 ms before the call began and its expectation misses
    it (seen once: "nothing from server:8080", the segment in flight)."""
    client, server = await lab.pair()
    async with scripted_peer(server, client, port=9000) as w:
        listener = await server.listen(9000)
        await w.send("client > server S 0:0(0) win 65535 <mss 1460>")
        await w.expect("server > client S. 0:0(0) ack 1 <mss 1460>", within=0.05)
        await w.send("client > server . 1:1(0) ack 1 win 65535", wait=0.01)
        conn = await listener.accept()
        real, calls = time.time, itertools.count()

        def preempted() -> float:
            if next(calls) % 2 == 0:
                end = time.monotonic() + 0.003
                while time.monotonic() < end:
                    pass
            return real()
        monkeypatch.setattr(time, "time", preempted)
        for i in range(1, 21):
            out = await conn.send(b"x")
            await w.expect(f"server > client P. {i}:{i + 1}(1) ack 1", after=out, within=0.05)
            await w.send(f"client > server . 1:1(0) ack {i + 1} win 65535")
        assert next(calls) > 40  # the tap read the clock at least twice a segment


async def test_segment_to_a_tuple_with_no_socket_draws_a_rst(lab, family):
    client, server = await lab.pair()
    async with scripted_peer(server, client, port=9999, family=family) as w:
        syn = await w.send("client:5555 > server:9999 S 0:0(0) win 1000")
        # tcp_v4_send_reset(): no socket, so RST|ACK acking the SYN (RFC 9293 §3.10.7.1)
        rst = await w.expect("server:9999 > client:5555 R. 0:0(0) ack 1 win 0", after=syn,
                             within=0.05)
        assert rst.seq == 0
        # an ACK with no socket: a bare RST whose seq is the ACK's ack number
        ack = await w.send("client:5556 > server:9999 . 0:0(0) ack 0 win 1000")
        await w.expect("server:9999 > client:5556 R 0:0(0) win 0", after=ack, within=0.05)


async def test_live_wire_learns_both_isns(lab, family):
    client, server = await lab.pair()
    cap = await lab.capture()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    assert (await conn.send(b"hello")).value == 5
    assert (await peer.recv()).value == b"hello"
    assert (await peer.send(b"ab")).value == 2
    assert (await conn.recv()).value == b"ab"
    w = await wire(conn)
    syn = cap.packets(conn, flags="S")[0]
    synack = cap.packets(conn, flags="SA")[0]
    assert w.isns.of[conn.local] == syn.seq and w.isns.of[conn.remote] == synack.seq
    # speak for the server: its next byte is 3, the client's next is 6
    data = await w.send("server > client P. 3:6(3) ack 6 win 502", payload=b"xyz")
    assert (await conn.recv()).value == b"xyz"
    await w.expect("client > server . 6:6(0) ack 6", after=data, within=0.05)


async def test_time_wait_answers_a_stray_segment_with_its_ack(lab, family):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    w = await wire(conn)
    await conn.close()
    await lab.wait_state(peer, "CLOSE_WAIT")
    await peer.close()
    await lab.wait_state(conn, "TIME_WAIT")
    # an old duplicate of the server's FIN: tcp_timewait_state_process() re-ACKs it
    fin = await w.send("server > client F. 1:1(0) ack 2")
    await w.expect("client > server . 2:2(0) ack 2", after=fin, within=0.05)


async def test_reset_at_a_chosen_time_on_a_quiet_connection(lab, family):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    target = time.monotonic() + 0.2
    sent = await reset_at(conn, at=target)
    ev = await lab.timeline.wait_for(rst_received(conn))
    # never before its time; how close after it is bench/bench_segments.py's
    # figure (issue 12 asks for 10 ms), not a timed assertion
    assert target <= sent.t <= ev.t
    assert (await conn.recv()).errno == "ECONNRESET"


async def test_bad_lines_and_targets_are_refused(lab):
    client, server = await lab.pair()
    with pytest.raises(InvalidArgument, match="port must be an int"):
        scripted_peer(server, client, port=0)
    with pytest.raises(InvalidArgument, match="two hosts of one lab"):
        scripted_peer(server, server, port=9000)
    async with scripted_peer(server, client, port=9000) as w:
        with pytest.raises(InvalidArgument, match="sends only to its victim"):
            await w.send("server > client S 0:0(0)")
        with pytest.raises(InvalidArgument, match="payload has 2 bytes"):
            await w.send("client > server S 0:1(1)", payload=b"ab")
        with pytest.raises(InvalidArgument, match="at must be a time"):
            await w.send("client > server S 0:0(0)", at="now")
        with pytest.raises(InvalidArgument, match="wait must be seconds"):
            await w.send("client > server S 0:0(0)", wait=-1)
        with pytest.raises(InvalidArgument, match="neither 'server' nor 'client'"):
            await w.send("router > server S 0:0(0)")
        w.port = None  # a wire attached to nothing yet, with no service port
        with pytest.raises(InvalidArgument, match="no port for 'server'"):
            await w.send("client > server . 1:1(0)")
    with pytest.raises(InvalidArgument, match="exactly one of at="):
        await reset_at(None)


async def test_injected_window_and_sack_blocks_reach_the_victims_state(lab):
    client, server = await lab.pair()
    async with scripted_peer(server, client, port=9000) as w:
        listener = await server.listen(9000)
        await w.send("client > server S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>")
        await w.expect("server > client S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale *>")
        await w.send("client > server . 1:1(0) ack 1 win 257")
        conn = await listener.accept()
        # the window is scaled by the wscale the script announced: 257 << 7
        await lab.wait_state(conn, "ESTABLISHED")
        assert conn.info().tcp_info["snd_wnd"] == 257 << 7
        out = await conn.send(b"d" * 3000)
        assert out.value == 3000
        # all three MSS segments sent (packets_out counts segments): as one
        # GSO packet of 3000 or, when the handshake's RTT sample was slow
        # (under load), as 2000 + 1000: tcp_tso_autosize() sizes the skbs by
        # the pacing rate, which follows that RTT
        await wait_until(lambda: conn.info().tcp_info["unacked"] == 3, what="3 segments out")
        # the first 1000 bytes acknowledged, the last 1000 selectively
        await w.send("client > server . 1:1(0) ack 1001 win 257 <nop,nop,sack 2001:3001>")
        # tcp_sacktag_write_queue(): 2 segments still out, 1 of them SACKed
        await wait_until(lambda: conn.info().tcp_info["unacked"] == 2, what="ack processed")
        assert conn.info().tcp_info["sacked"] == 1


async def test_keepalive_probes_and_the_final_rst_as_lines(lab):
    """Not a packetdrill port (google/packetdrill has no keepalive script
    outside Fast Open): the same style, against a silent scripted peer.
    A keepalive probe is an ACK one byte behind SND.UNA (tcp_xmit_probe_skb():
    seq SND.UNA - 1, no data); after TCP_KEEPCNT unanswered probes the kernel
    resets the connection (tcp_keepalive_timer(): tcp_send_active_reset()).
    Times: 1 s timers land on the timer wheel's level 1, 8 jiffies (32 ms
    at HZ=250) apart, rounded up: never early, up to 32 ms late, and a tick
    more on a CPU that does not keep jiffies (TICK_LAG_JIFFIES); plus
    packetdrill's 4 ms tolerance for the observation."""
    client, server = await lab.pair()
    slack = (8 + TICK_LAG_JIFFIES) * 0.004 + 0.004
    async with scripted_peer(server, client, port=9000) as w:
        listener = await server.listen(9000)
        await w.send("client > server S 0:0(0) win 65535 <mss 1000>")
        await w.expect("server > client S. 0:0(0) ack 1 <mss 1460>")
        await w.send("client > server . 1:1(0) ack 1 win 65535")
        conn = await listener.accept()
        t0 = time.monotonic()
        await conn.keepalive(idle=1, interval=1, count=2)  # SO_KEEPALIVE arms the timer
        armed = time.monotonic() - t0
        probe = await w.expect("server > client . 0:0(0) ack 1", after=t0,
                               within=(1.0, 1.0 + armed + slack))
        probe = await w.expect("server > client . 0:0(0) ack 1", after=probe,
                               within=(1.0, 1.0 + slack))
        await w.expect("server > client R. 1:1(0) ack 1", after=probe, within=(1.0, 1.0 + slack))
        assert (await conn.recv()).errno == "ETIMEDOUT"


async def test_live_wire_outlives_the_socket(lab):
    client, server = await lab.pair()
    listener = await server.listen(9000)
    conn = await client.connect(server, 9000)
    peer = await listener.accept()
    w = await wire(conn)
    await conn.close(linger=0)            # gone at once: no TIME_WAIT
    await lab.wait_state(conn, "CLOSED")
    await lab.wait_state(peer, "CLOSED")  # the abort's RST reached the server
    # a stale segment from the server's side finds no socket: a bare RST
    # carrying the ACK's number (RFC 9293 §3.10.7.1)
    stale = await w.send("server > client . 1:1(0) ack 1 win 502")
    await w.expect("client > server R 1:1(0)", after=stale, within=0.05)


async def test_wire_from_a_capture_reaches_time_wait_late(lab, family):
    client, server = await lab.pair()
    cap = await lab.capture()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    await conn.close()
    await lab.wait_state(peer, "CLOSE_WAIT")
    await peer.close()
    await lab.wait_state(conn, "TIME_WAIT")
    w = await wire(conn, capture=cap)   # attached only now: ISNs from the SYNs captured
    fin = await w.send("server > client F. 1:1(0) ack 2")
    await w.expect("client > server . 2:2(0) ack 2", after=fin, within=0.05)
    with pytest.raises(InvalidArgument, match="did not see both SYNs"):
        late = await lab.capture()
        await wire(conn, capture=late)


async def test_unexpected_segments_are_reported(lab):
    from harness._observe.expect import SegmentMismatch
    client, server = await lab.pair()
    async with scripted_peer(server, client, port=9000) as w:
        listener = await server.listen(9000)
        await w.send("client > server S 0:0(0) win 65535 <mss 1000>")
        await w.expect("server > client S. 0:0(0) ack 1 <mss 1460>")
        await w.send("client > server . 1:1(0) ack 1 win 65535")
        conn = await listener.accept()
        assert w.unmatched() == []
        data = await w.send("client > server P. 1:4(3) ack 1 win 65535", payload=b"abc")
        assert (await conn.recv()).value == b"abc"
        # the victim's ACK of the data was never expected: packetdrill would fail here
        await wait_until(lambda: w.unmatched(), what="the ACK")
        [ack] = w.unmatched()
        assert (ack.flag_text, ack.ack - data.seq) == (".", 3)
        with pytest.raises(SegmentMismatch, match=r"expected nothing from server for 0.05s"):
            await w.expect_nothing(0.05, after=data)
        await w.expect_nothing(0.05, after=ack)  # and nothing after that ACK
