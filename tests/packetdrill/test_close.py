"""packetdrill's gtests/net/tcp/close/ scripts, ported line by line.

Each ``<`` line is a ``w.send``, each ``>`` line a ``w.expect`` with
packetdrill's tolerance (pd.TOL) unless the script gives a window.
"""

import trio

from harness import entered
from harness.faults._segments import scripted_peer
from pd import JIFFY, PORT, TICK_LAG, TOL, cubic, pair, server_conn



async def test_close_local_close_then_remote_fin(lab, family):
    """gtests/net/tcp/close/close-local-close-then-remote-fin.pkt: the local
    process closes first, so we send a FIN and receive an ACK; then we
    receive a FIN and ACK it.

    ``+.01...0.011 connect(3, ...) = 0`` (a blocking connect that returns
    once the SYN-ACK is in) is kept as its order: connect returns after the
    scripted SYN-ACK was sent; its 1 ms is the script's own reaction time."""
    client, server = await pair(lab)
    async with scripted_peer(client, server, port=PORT, family=family) as w:
        sock = await cubic(await client.socket(family))
        async with trio.open_nursery() as n:
            done = []

            async def connect():
                done.append(await sock.connect(server, PORT))
            n.start_soon(connect)
            await w.expect("client > server S 0:0(0)", within=1.0)
            synack = await w.send("server > client S. 0:0(0) ack 1 win 32768 "
                                  "<mss 1000,nop,wscale 6,nop,nop,sackOK>")
            await w.expect("client > server . 1:1(0) ack 1", within=TOL)
        assert done[0].ok and done[0].ended >= synack.t
        out = await sock.send(b"a" * 1000)
        assert out.value == 1000
        await w.expect("client > server P. 1:1001(1000) ack 1", after=out, within=TOL)
        await w.send("server > client . 1:1(0) ack 1001 win 257")
        out = await sock.close()
        assert out.ok
        await w.expect("client > server F. 1001:1001(0) ack 1", after=out, within=TOL)
        await w.send("server > client . 1:1(0) ack 1002 win 257")
        await w.send("server > client F. 1:1(0) ack 1002 win 257")
        await w.expect("client > server . 1002:1002(0) ack 2", within=TOL)
        assert w.unmatched() == []  # packetdrill: no unexpected packet



async def test_close_on_syn_sent(lab, family):
    """gtests/net/tcp/close/close-on-syn-sent.pkt: no RST is sent when
    close() is called on a socket in SYN_SENT; the SYN-ACK that comes
    later meets no socket and draws a bare RST."""
    client, server = await pair(lab)
    async with scripted_peer(client, server, port=PORT, family=family) as w:
        sock = await cubic(await client.socket(family))
        out = await sock.connect(server, PORT, nonblocking=True)
        assert out.errno == "EINPROGRESS"
        await w.expect("client > server S 0:0(0)", after=out, within=TOL)
        assert (await sock.close()).ok
        await w.send("server > client S. 0:0(0) ack 1 win 32000 <mss 1460,nop,wscale 7>",
                     wait=0.1)
        # the RST answers the SYN-ACK: nothing left between close() and it
        await w.expect("client > server R 1:1(0)", within=TOL)
        assert w.unmatched() == []  # packetdrill: no unexpected packet



async def test_close_remote_fin_then_close(lab, family):
    """gtests/net/tcp/close/close-remote-fin-then-close.pkt: the remote side
    sends FIN, then we close() (the LAST_ACK path); once our FIN is ACKed
    the kernel has no record of the connection and answers anything with
    a RST.

    The ACK of the FIN gets TOL + JIFFY + TICK_LAG: tcp_fin() puts the
    socket in pingpong mode, so __tcp_ack_snd_check() delays the ACK
    (tcp_send_delayed_ack()) with the connection's ato, still 0 on this
    passive side: the delack timer fires on the next jiffy (pd.JIFFY), or
    the one after on a CPU that does not keep jiffies (pd.TICK_LAG; seen:
    +11.1 ms at load 4)."""
    w, conn = await server_conn(lab, family)
    await w.send("client > server F. 1:1(0) ack 1 win 257", wait=0.01)
    await w.expect("server > client . 1:1(0) ack 2", within=TOL + JIFFY + TICK_LAG)
    assert (await conn.recv(1000)).value == b""
    await trio.sleep_until(trio.current_time() + 0.01)  # the script's +.01
    out = await conn.close()
    assert out.ok
    await w.expect("server > client F. 1:1(0) ack 2", after=out, within=TOL)
    await w.send("client > server . 2:2(0) ack 2 win 257", wait=0.01)
    await lab.wait_state(conn, "CLOSED")
    await w.send("client > server . 2:2(0) ack 2 win 257", wait=0.01)
    await w.expect("server > client R 2:2(0)", within=TOL)
    assert w.unmatched() == []  # packetdrill: no unexpected packet



async def test_close_no_rst(lab, family):
    """tools/testing/selftests/net/packetdrill/tcp_close_no_rst.pkt (the
    kernel's selftests): a retransmitted payload plus FIN, all of it
    already read, then close(): RFC 2525 §2.17 says no RST, as there was no
    data left to consume: a FIN."""
    from pd import accepted, listening, mss
    w, listener = await listening(lab, family)
    conn = await accepted(lab, family, w, listener,
                          syn="S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop>",
                          synack=f"S. 0:0(0) ack 1 <mss {mss(family)},nop,nop,sackOK>",
                          ack=". 1:1(0) ack 1 win 32792", ack_wait=0.1)
    await w.send("client > server . 1:1001(1000) ack 1 win 32792")
    await w.expect("server > client . 1:1(0) ack 1001", within=TOL)
    assert len((await conn.recv(1000)).value) == 1000
    await w.send("client > server F. 1:1001(1000) ack 1 win 32792")
    # "+0~+.04": the delayed ACK (TCP_DELACK_MIN, 40 ms), whose timer fires
    # on a jiffy boundary: one more jiffy at HZ=250 (pd.JIFFY), and maybe one
    # tick more (pd.TICK_LAG).  The timer
    # starts when the server's TCP takes the segment in, the moment tcp_fin()
    # moves it to CLOSE_WAIT (the timeline's event), not when the wire sent
    # it: on a loaded machine the receiving softirq may run later, in
    # ksoftirqd (seen: the ACK at +48.3 ms from the send, at load 7).
    fin = await lab.timeline.wait_for(entered(conn, "CLOSE_WAIT"))
    await w.expect("server > client . 1:1(0) ack 1002", after=fin.t,
                   within=(0, 0.04 + JIFFY + TICK_LAG + TOL))
    out = await conn.close()
    assert out.ok
    await w.expect("server > client F. 1:1(0) ack 1002", after=out, within=TOL)
    assert w.unmatched() == []  # packetdrill: no unexpected packet



async def test_disorder_fin_in_fin_wait(lab, family):
    """tools/testing/selftests/net/packetdrill/tcp_disorder_fin_in_FIN_WAIT.pkt
    (the kernel's selftests; the fix 795a7dfbc3d9 "net: tcp: accept old ack
    during closing"): in FIN_WAIT, a FIN that was sent before the ACK of our
    FIN arrives after it, out of order; it is still ACKed.  ``*`` (any
    time) is an upper bound of 1 s here."""
    from pd import accepted, listening, mss
    w, listener = await listening(lab, family)
    conn = await accepted(lab, family, w, listener,
                          syn="S 0:0(0) win 65535 <mss 1000,sackOK,nop,nop,nop,wscale 7>",
                          synack=f"S. 0:0(0) ack 1 <mss {mss(family)},nop,nop,sackOK,nop,"
                                 f"wscale 8>",
                          ack=". 1:1(0) ack 1 win 257")
    out = await conn.shutdown("w")
    assert out.ok
    await w.expect("server > client F. 1:1(0) ack 1", after=out, within=1.0)
    await w.send("client > server . 2:2(0) ack 2 win 257")
    await w.send("client > server F. 1:1(0) ack 1 win 257")
    await w.expect("server > client . 2:2(0) ack 2", within=1.0)
    assert w.unmatched() == []  # packetdrill: no unexpected packet
