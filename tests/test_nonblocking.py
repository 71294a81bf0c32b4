"""Non-blocking calls as outcomes, options by name and queue ioctls, on the
real kernel: tcp_v4_connect()'s EINPROGRESS, poll/epoll readiness, SO_ERROR,
MSG_DONTWAIT's EAGAIN, SIOCINQ/SIOCOUTQ (tcp_ioctl())."""

import pytest

from harness import InvalidArgument, faults


async def test_connect_einprogress_then_poll_and_so_error(lab, family):
    client, server = await lab.pair()
    await server.listen(9000, family=family)
    sock = await client.socket(family)
    out = await sock.connect(server, 9000, nonblocking=True)
    # EINPROGRESS is the proof that it did not wait: a blocking connect()
    # never returns it.  (Its duration proves nothing here: the lab's
    # handshake takes 0.1 ms, and under load the call itself took > 10 ms.)
    assert out.errno == "EINPROGRESS"
    ready = await sock.poll("out", timeout=1.0)
    assert ready.value == ("out",)
    assert (await sock.getsockopt("SO_ERROR")).value is None
    await lab.wait_state(sock, "ESTABLISHED")


async def test_refused_nonblocking_connect_reports_through_so_error(lab, family):
    client, server = await lab.pair()
    sock = await client.socket(family)
    assert (await sock.connect(server, 9001, nonblocking=True)).errno == "EINPROGRESS"
    ready = await sock.poll("out", timeout=1.0)
    # the RST makes it writable with POLLERR and POLLHUP (tcp_poll())
    assert set(ready.value) == {"out", "err", "hup"}
    assert (await sock.getsockopt("SO_ERROR")).value == "ECONNREFUSED"
    assert (await sock.getsockopt("SO_ERROR")).value is None  # reading clears it


async def test_silent_peer_keeps_poll_empty_until_timeout(lab):
    client, server = await lab.pair()
    async with faults.drop(server, port=9002):
        sock = await client.socket(4)
        assert (await sock.connect(server, 9002, nonblocking=True)).errno == "EINPROGRESS"
        assert (await sock.poll("out", timeout=0.05)).value == ()
        assert (await sock.poll("out", epoll=True, timeout=0.05)).value == ()
        assert (await sock.getsockopt("SO_ERROR")).value is None
        await lab.wait_state(sock, "SYN_SENT")


async def test_eagain_and_queue_ioctls(lab, family):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    assert (await peer.recv(dontwait=True)).errno == "EAGAIN"
    assert (await peer.poll("in")).value == ()
    assert (await conn.send(b"x" * 1000)).value == 1000
    assert (await peer.poll("in", timeout=1.0)).value == ("in",)
    assert (await peer.poll("in", epoll=True, edge=True)).value == ("in",)
    assert (await peer.ioctl("SIOCINQ")).value == 1000
    assert (await peer.recv(1000, dontwait=True)).value == b"x" * 1000
    assert (await peer.ioctl("SIOCINQ")).value == 0
    # nothing in flight once the ACK is back
    await lab.wait_state(conn, "ESTABLISHED")
    async with faults.drop(server, port=9000):  # the data below is never ACKed
        assert (await conn.send(b"y" * 700)).value == 700
        assert (await conn.ioctl("SIOCOUTQ")).value == 700
        assert (await conn.ioctl("SIOCOUTQNSD")).value == 0  # sent, not acknowledged
    await conn.shutdown("w")
    # the data and the FIN reach the peer with the next RTO retransmission:
    # due within the current RTO (backed off by each one the fault dropped;
    # the timer wheel adds up to 1/8 of it), then the peer's wake-up
    # (an RTO between the undo and shutdown() brings the data alone first:
    # poll() returns at "in", so wait for the FIN itself)
    rto = conn.info().tcp_info["rto_us"] / 1e6
    assert (await peer.poll("rdhup", timeout=2 * rto * 1.125 + 1.0)).value == ("rdhup",)
    assert (await peer.poll("in,rdhup")).value == ("in", "rdhup")


async def test_send_eagain_when_the_buffers_are_full(lab):
    client, server = await lab.pair()
    listener = await server.listen(9000)
    conn = await client.connect(server, 9000, options={"SO_SNDBUF": 4096})
    peer = await listener.accept()
    total, out = 0, None
    for _ in range(10_000):  # the peer never reads: its window and our buffer fill
        out = await conn.send(b"z" * 65536, dontwait=True)
        if not out.ok:
            break
        total += out.value
    assert out.errno == "EAGAIN" and total > 0
    assert (await conn.poll("out")).value == ()


async def test_options_by_name(lab):
    client, server = await lab.pair()
    listener = await server.listen(9000)
    conn = await client.connect(server, 9000)
    assert (await listener.getsockopt("SO_ACCEPTCONN")).value is True
    assert (await conn.getsockopt("SO_ACCEPTCONN")).value is False
    assert (await conn.setsockopt("TCP_CONGESTION", "reno")).ok
    assert (await conn.getsockopt("TCP_CONGESTION")).value == "reno"
    assert (await conn.setsockopt("TCP_CONGESTION", "nosuchcc")).errno == "ENOENT"
    for name, value in (("TCP_NODELAY", True), ("TCP_NOTSENT_LOWAT", 16384),
                        ("TCP_USER_TIMEOUT", 2.5), ("TCP_KEEPIDLE", 7)):
        assert (await conn.setsockopt(name, value)).ok
        assert (await conn.getsockopt(name)).value == value
    # the kernel doubles SO_RCVBUF for its bookkeeping (sock_setsockopt(), socket(7))
    assert (await conn.setsockopt("SO_RCVBUF", 10000)).ok
    assert (await conn.getsockopt("SO_RCVBUF")).value == 20000
    mss = (await conn.getsockopt("TCP_MAXSEG")).value
    assert mss == 1448  # 1460 less the 12 bytes of the timestamp option
    info = (await conn.getsockopt("TCP_INFO")).value
    assert info["snd_mss"] == 1448 and info["rtt_us"] > 0
    assert (await conn.getsockopt("SO_LINGER")).value is None
    with pytest.raises(InvalidArgument, match="socket option must be one of"):
        await conn.getsockopt("SO_NOPE")
    with pytest.raises(InvalidArgument, match="TCP_CONGESTION takes a name"):
        await conn.setsockopt("TCP_CONGESTION", 3)
    with pytest.raises(InvalidArgument, match="poll events must be among"):
        await conn.poll("readable")
    with pytest.raises(InvalidArgument, match="ioctl must be one of"):
        await conn.ioctl("FIONREAD")


async def test_peer_program_speaks_the_same_calls(lab):
    client, server = await lab.pair()
    await server.listen(9000)
    p = await client.program()
    sock = await p.socket(4)
    assert (await sock.connect(server, 9000, nonblocking=True)).errno == "EINPROGRESS"
    assert (await sock.poll("out", timeout=1.0)).value == ("out",)
    assert (await sock.getsockopt("SO_ERROR")).value is None
    assert (await sock.recv(dontwait=True)).errno == "EAGAIN"
    assert (await sock.getsockopt("TCP_INFO")).value["snd_mss"] > 0
    ep = await sock.epoll("out", edge=True)   # edge-triggered: reported once
    assert (await ep.wait(1.0)).value == ("out",)
    assert (await ep.wait()).value == ()
    assert (await ep.close()).ok and (await ep.close()).errno == "EBADF"
