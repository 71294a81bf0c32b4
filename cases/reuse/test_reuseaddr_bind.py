"""A socket bound with SO_REUSEADDR to the port of a TIME_WAIT connection
that also had SO_REUSEADDR can connect() over it at once, whatever
tcp_tw_reuse says, provided that connection used timestamps.

Seed 000: "为了防止过多的time_wait()状态描述符占用大量的资源,一种方法就是将处于
time_wait()状态下的套接字设置为可重用的".  Depends: bind() checks the port against
the TIME_WAIT with inet_bind_conflict(), which lets it through only when both
sockets set SO_REUSEADDR (the TIME_WAIT keeps the old socket's sk_reuse);
otherwise EADDRINUSE.  The connect() of an already-bound socket calls
__inet_check_established() with no twp, and tcp_twsk_unique() then allows
the takeover at once, tcp_tw_reuse and tcp_tw_reuse_delay unread, if
tw_ts_recent_stamp != 0 (timestamps); without them EADDRNOTAVAIL.  The new
connection starts at the old one's snd_nxt + 65537 (tcp_twsk_unique()).
"""

SEED = "000"
CLAIM = "a socket in TIME_WAIT can be made reusable (SO_REUSEADDR)"
VERDICT = "depends"

PORT = 41000


async def into_time_wait(lab, client, server, family, *, reuseaddr=True):
    listener = await server.listen(9000, family=family)
    options = {"SO_REUSEADDR": True} if reuseaddr else {}
    conn = await client.connect(server, 9000, family=family, bind_port=PORT, options=options)
    peer = await listener.accept()
    await conn.close()
    await lab.wait_state(peer, "CLOSE_WAIT")
    await peer.close()
    await lab.wait_state(conn, "TIME_WAIT")
    return conn


async def rebind(client, family, *, reuseaddr=True):
    sock = await client.socket(family)
    if reuseaddr:
        assert (await sock.setsockopt("SO_REUSEADDR", True)).ok
    return sock, await sock.bind(PORT)


async def test_reuseaddr_takes_over_time_wait_at_once(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_tw_reuse": 0,
                                             "net.ipv4.tcp_timestamps": 1})
    cap = await lab.capture()
    old = await into_time_wait(lab, client, server, family)
    old_fin = [p for p in cap.packets(old) if p.ingress == "client" and "F" in p.flags][0]

    assert (await rebind(client, family, reuseaddr=False))[1].errno == "EADDRINUSE"
    sock, bound = await rebind(client, family)
    assert bound.ok
    out = await sock.connect(server, 9000)
    assert out.ok and out.value == (old.local, old.remote)       # the same 4-tuple, at once
    assert [s.state for s in client.sockets(port=PORT)] == ["ESTABLISHED"]
    syn = [p for p in cap.packets(sock) if p.flags == "S"][-1]
    assert syn.seq == (old_fin.seq + 1 + 65537) % 2**32          # above the old sequence space
    evidence("bind+SO_REUSEADDR, tcp_tw_reuse=0", f"connect() OK after "
             f"{out.duration * 1000:.2f} ms, ISN = old snd_nxt + 65537")


async def test_needs_reuseaddr_on_the_old_socket_too(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_tw_reuse": 0,
                                             "net.ipv4.tcp_timestamps": 1})
    await into_time_wait(lab, client, server, family, reuseaddr=False)
    sock, bound = await rebind(client, family)
    assert bound.errno == "EADDRINUSE"
    evidence("old socket without SO_REUSEADDR", f"bind() {bound.errno}")


async def test_needs_timestamps(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_tw_reuse": 0,
                                             "net.ipv4.tcp_timestamps": 0})
    await into_time_wait(lab, client, server, family)
    sock, bound = await rebind(client, family)
    assert bound.ok
    out = await sock.connect(server, 9000)
    assert out.errno == "EADDRNOTAVAIL"
    assert len(client.sockets(state="TIME_WAIT", port=PORT)) == 1  # still there
    evidence("without timestamps", f"bind() OK, connect() {out.errno}")
