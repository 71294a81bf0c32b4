"""Past tcp_max_tw_buckets, an active close skips TIME_WAIT: the socket is
destroyed at once and TcpExt TCPTimeWaitOverflow counts it.

Seed 004 (快速复用): "tcp_max_tw_buckets选项可以设定当前主机最多存在的TIME_WAIT
状态的TCP连接的数量,当超过这个上限就可以直接关闭".  Holds; the limit is per network
namespace and counts every timewait socket, including an orphaned FIN_WAIT2
(which also lives as one, tcp_time_wait(sk, TCP_FIN_WAIT2, ...)).
tcp_time_wait() (net/ipv4/tcp_minisocks.c) gets no socket from
inet_twsk_alloc() when tw_refcount exceeds the limit, bumps
TCPTimeWaitOverflow (no log line any more) and tcp_done() closes the socket.
So a close()d socket over the limit dies on entering FIN_WAIT2, before the
peer's FIN, which then finds no socket and draws a RST (harmless here: the
peer has closed too); one that is still open (shutdown()) dies only on the
peer's FIN, after ACKing it: no RST.
"""

import harness

SEED = "004"
CLAIM = "past tcp_max_tw_buckets, connections skip TIME_WAIT and close at once"
VERDICT = "holds"

LIMIT, CLOSES = 2, 5



async def active_closes(lab, client, server, family, *, how: str) -> list:
    listener = await server.listen(9000, family=family)
    conns = []
    for _ in range(CLOSES):
        conn = await client.connect(server, 9000, family=family)
        peer = await listener.accept()
        await (conn.close() if how == "close" else conn.shutdown("w"))
        await lab.wait_state(peer, "CLOSE_WAIT")
        await lab.timeline.wait_for(harness.entered(conn, "FIN_WAIT2"),  # our FIN is ACKed
                                    since=conn.since)
        await peer.close()
        await lab.wait_state(peer, "CLOSED")
        conns.append(conn)
    return conns


async def test_close_past_the_limit(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_max_tw_buckets": LIMIT})
    before = client.counters("TcpExt")
    conns = await active_closes(lab, client, server, family, how="close")
    after = client.counters("TcpExt")

    assert len(client.sockets(state="TIME_WAIT")) == LIMIT
    assert (after["TW"] - before["TW"], after["TCPTimeWaitOverflow"] -
            before["TCPTimeWaitOverflow"]) == (LIMIT, CLOSES - LIMIT)
    for conn in conns[:LIMIT]:
        assert conn.info().state == "TIME_WAIT"
    for conn in conns[LIMIT:]:
        assert conn.info() is None                               # no TIME_WAIT at all
        rst = lab.timeline.events(conn, kind="rst_sent")         # the peer's FIN found no socket
        assert [e.reason for e in rst] == ["NO_SOCKET"]
    evidence("close() x5, limit 2", f"{len(client.sockets(state='TIME_WAIT'))} TIME_WAIT, "
             f"TCPTimeWaitOverflow +{after['TCPTimeWaitOverflow'] - before['TCPTimeWaitOverflow']}"
             f", the peer's FIN answered by RST (NO_SOCKET)")


async def test_shutdown_past_the_limit(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_max_tw_buckets": LIMIT})
    before = client.counters("TcpExt")
    conns = await active_closes(lab, client, server, family, how="shutdown")
    after = client.counters("TcpExt")

    assert len(client.sockets(state="TIME_WAIT")) == LIMIT
    assert after["TCPTimeWaitOverflow"] - before["TCPTimeWaitOverflow"] == CLOSES - LIMIT
    for conn in conns[LIMIT:]:
        assert conn.info() is None
        assert lab.timeline.events(conn, kind="rst_sent") == []  # the FIN was ACKed first
        assert (await conn.recv()).value == b""                  # the owner saw a normal end
    evidence("shutdown() x5, limit 2", f"{len(client.sockets(state='TIME_WAIT'))} TIME_WAIT, "
             f"TCPTimeWaitOverflow +{after['TCPTimeWaitOverflow'] - before['TCPTimeWaitOverflow']}"
             f", no RST")
