"""packetdrill's gtests/net/tcp/epoll/ scripts, ported line by line."""

from pd import TOL, server_conn


async def test_epoll_in_edge(lab, family):
    """gtests/net/tcp/epoll/epoll_in_edge.pkt: with EPOLLET, new data
    reports EPOLLIN again whether or not the socket was drained; without
    new data, nothing (a partial read does not re-arm it)."""
    w, conn = await server_conn(lab, family)
    ep = await conn.epoll("out,in", edge=True)
    assert (await ep.wait()).value == ("out",)
    assert (await ep.wait()).value == ()
    await w.send("client > server P. 1:4001(4000) ack 1 win 257")
    await w.expect("server > client . 1:1(0) ack 4001", within=TOL)
    assert (await ep.wait()).value == ("in", "out")
    assert (await ep.wait()).value == ()
    await w.send("client > server P. 4001:10001(6000) ack 1 win 257")
    await w.expect("server > client . 1:1(0) ack 10001", within=TOL)
    assert (await ep.wait()).value == ("in", "out")
    assert (await ep.wait()).value == ()
    assert len((await conn.recv(1000)).value) == 1000
    assert (await ep.wait()).value == ()
    await w.send("client > server P. 10001:12001(2000) ack 1 win 257")
    await w.expect("server > client . 1:1(0) ack 12001", within=TOL)
    assert (await ep.wait()).value == ("in", "out")
    assert (await ep.wait()).value == ()
    assert (await ep.close()).ok
    assert w.unmatched() == []  # packetdrill: no unexpected packet
