"""Stream faults (harness.faults._stream): toxiproxy's toxics on real
connections through a proxy in a lab host."""

import time

import pytest
import trio

from harness import InvalidArgument, rst_received
from harness.faults import _stream as stream


async def through(lab, *toxics, family=4, **kw):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    px = await stream.proxy(server, port=9100, upstream=9000, toxics=list(toxics),
                            family=family, **kw).start()
    conn = await client.connect(server, 9100, family=family)
    peer = await listener.accept()
    return client, server, px, conn, peer


async def read_until_end(sock, limit=1 << 20):
    got = b""
    while True:
        out = await sock.recv()
        if not out.ok:
            return got, out.errno
        if out.value == b"":
            return got, "EOF"
        got += out.value
        assert len(got) <= limit


async def test_limit_data_with_fin(lab, family):
    *_, px, conn, peer = await through(lab, stream.limit_data(100), family=family)
    assert (await peer.send(b"x" * 300, all=True)).value == 300
    assert await read_until_end(conn) == (b"x" * 100, "EOF")
    assert px.connections[0].ended == "fin" and px.connections[0].passed["down"] == 100


async def test_limit_data_with_rst(lab):
    *_, px, conn, peer = await through(lab, stream.limit_data(100, close="rst"))
    assert (await peer.send(b"x" * 300, all=True)).value == 300
    got, end = await read_until_end(conn)
    assert end == "ECONNRESET" and len(got) <= 100
    await lab.timeline.wait_for(rst_received(conn))
    await lab.timeline.wait_for(rst_received(peer))  # the server side is reset too


async def test_limit_data_upstream(lab):
    *_, px, conn, peer = await through(lab, stream.limit_data(5, direction="up"))
    assert (await conn.send(b"0123456789")).value == 10
    assert await read_until_end(peer) == (b"01234", "EOF")


async def test_slicer_cuts_segments(lab):
    client, server = await lab.pair()
    cap = await lab.capture()
    listener = await server.listen(9000)
    px = await stream.proxy(server, port=9100, upstream=9000,
                            toxics=[stream.slicer(10, delay=0.01)]).start()
    conn = await client.connect(server, 9100)
    peer = await listener.accept()
    assert (await peer.send(b"y" * 50)).value == 50
    got = b""
    while len(got) < 50:
        got += (await conn.recv()).value
    data = [p for p in cap.packets(conn) if p.length and p.src == conn.remote]
    assert [p.length for p in data] == [10] * 5
    gaps = [b.t - a.t for a, b in zip(data, data[1:])]
    assert all(g >= 0.01 for g in gaps)  # never early; lateness is trio's timer


async def test_timeout_swallows_then_closes(lab):
    *_, px, conn, peer = await through(lab, stream.timeout(0.3, close="rst"))
    t0 = px.connections[0].started
    assert (await peer.send(b"z" * 10)).value == 10
    with trio.move_on_after(0.1):
        await conn.recv()
        pytest.fail("data got through a timeout toxic")
    got, end = await read_until_end(conn)
    assert (got, end) == (b"", "ECONNRESET")
    assert time.monotonic() - t0 >= 0.3


async def test_slow_close_holds_the_fin(lab):
    *_, px, conn, peer = await through(lab, stream.slow_close(0.2))
    out = await peer.shutdown("w")
    assert (await conn.recv()).value == b""
    assert time.monotonic() - out.started >= 0.2   # the FIN left inside shutdown(): from its start


async def test_reset_peer_at_a_time(lab):
    *_, px, conn, peer = await through(lab, stream.reset_peer(0.2))
    ev = await lab.timeline.wait_for(rst_received(conn))
    assert ev.t - px.connections[0].started >= 0.2
    assert (await conn.recv()).errno == "ECONNRESET"


async def test_toxicity_is_drawn_per_connection(lab):
    client, server = await lab.pair()
    listener = await server.listen(9000)
    async with stream.proxy(server, port=9100, upstream=9000,
                            toxics=[stream.limit_data(0, toxicity=0.5)]) as px:
        for _ in range(40):
            c = await client.connect(server, 9100)
            p = await listener.accept()
            await c.close(linger=0)
            await p.close(linger=0)
    hit = sum(bool(r.toxics) for r in px.connections)
    assert len(px.connections) == 40 and 4 < hit < 36  # 40 draws at 0.5: 6 sigma each side


async def test_bad_toxics_are_refused(lab):
    client, server = await lab.pair()
    with pytest.raises(InvalidArgument, match="direction must be 'down'"):
        stream.slicer(10, direction="upstream")
    with pytest.raises(InvalidArgument, match="toxicity must be a fraction"):
        stream.limit_data(10, toxicity=2)
    with pytest.raises(InvalidArgument, match="close must be 'fin' or 'rst'"):
        stream.timeout(1, close="reset")
    with pytest.raises(InvalidArgument, match="is the proxy itself"):
        stream.proxy(server, port=9000, upstream=9000)
    with pytest.raises(InvalidArgument, match="toxics are made by"):
        stream.proxy(server, port=9100, upstream=9000, toxics=["latency"])


async def test_stopping_the_proxy_is_toxiproxys_down(lab):
    client, server, px, conn, peer = await through(lab)
    await px.stop()
    # open connections are reset, new ones refused
    assert (await conn.recv()).errno == "ECONNRESET"
    sock = await client.socket(4)
    assert (await sock.connect(server, 9100)).errno == "ECONNREFUSED"
