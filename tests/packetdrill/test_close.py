"""packetdrill's gtests/net/tcp/close/ scripts, ported line by line.

Each ``<`` line is a ``w.send``, each ``>`` line a ``w.expect`` with
packetdrill's tolerance (pd.TOL) unless the script gives a window.
"""

import trio

from harness.faults.segments import scripted_peer
from pd import JIFFY, PORT, TOL, cubic, pair, server_conn


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
        await w.expect("client > server P. 1:1001(1000) ack 1", after=out.started, within=TOL)
        await w.send("server > client . 1:1(0) ack 1001 win 257")
        out = await sock.close()
        assert out.ok
        await w.expect("client > server F. 1001:1001(0) ack 1", after=out.started, within=TOL)
        await w.send("server > client . 1:1(0) ack 1002 win 257")
        await w.send("server > client F. 1:1(0) ack 1002 win 257")
        await w.expect("client > server . 1002:1002(0) ack 2", within=TOL)


async def test_close_on_syn_sent(lab, family):
    """gtests/net/tcp/close/close-on-syn-sent.pkt: no RST is sent when
    close() is called on a socket in SYN_SENT; the SYN-ACK that comes
    later meets no socket and draws a bare RST."""
    client, server = await pair(lab)
    async with scripted_peer(client, server, port=PORT, family=family) as w:
        sock = await cubic(await client.socket(family))
        out = await sock.connect(server, PORT, nonblocking=True)
        assert out.errno == "EINPROGRESS"
        await w.expect("client > server S 0:0(0)", after=out.started, within=TOL)
        assert (await sock.close()).ok
        await w.send("server > client S. 0:0(0) ack 1 win 32000 <mss 1460,nop,wscale 7>",
                     wait=0.1)
        # the RST answers the SYN-ACK: nothing left between close() and it
        await w.expect("client > server R 1:1(0)", within=TOL)


async def test_close_remote_fin_then_close(lab, family):
    """gtests/net/tcp/close/close-remote-fin-then-close.pkt: the remote side
    sends FIN, then we close() (the LAST_ACK path); once our FIN is ACKed
    the kernel has no record of the connection and answers anything with
    a RST.

    The ACK of the FIN gets TOL + JIFFY: tcp_fin() puts the socket in
    pingpong mode, so __tcp_ack_snd_check() delays the ACK
    (tcp_send_delayed_ack()) with the connection's ato, still 0 on this
    passive side: the delack timer fires on the next jiffy (pd.JIFFY)."""
    w, conn = await server_conn(lab, family)
    await w.send("client > server F. 1:1(0) ack 1 win 257", wait=0.01)
    await w.expect("server > client . 1:1(0) ack 2", within=TOL + JIFFY)
    assert (await conn.recv(1000)).value == b""
    await trio.sleep_until(trio.current_time() + 0.01)  # the script's +.01
    out = await conn.close()
    assert out.ok
    await w.expect("server > client F. 1:1(0) ack 2", after=out.started, within=TOL)
    await w.send("client > server . 2:2(0) ack 2 win 257", wait=0.01)
    await lab.wait_state(conn, "CLOSED")
    await w.send("client > server . 2:2(0) ack 2 win 257", wait=0.01)
    await w.expect("server > client R 2:2(0)", within=TOL)
