"""packetdrill's gtests/net/tcp/shutdown/ scripts, ported line by line.

A server socket after the standard handshake (pd.server_conn); ``+.01``
between syscalls is kept with ``pause`` (a scheduled wait, not a wait for
the kernel: the script's own pacing).
"""

import trio

from pd import TOL, server_conn


async def pause(seconds: float) -> None:
    await trio.sleep(seconds)


async def test_shutdown_rd_close(lab, family):
    """gtests/net/tcp/shutdown/shutdown-rd-close.pkt: shutdown(SHUT_RD),
    then close(); writing and sending still work after SHUT_RD."""
    w, conn = await server_conn(lab, family)
    await pause(0.01)
    assert (await conn.shutdown("r")).ok
    assert (await conn.recv(1000)).value == b""
    await pause(0.01)
    out = await conn.send(b"a" * 1000)
    assert out.value == 1000
    await w.expect("server > client P. 1:1001(1000) ack 1", after=out.started, within=TOL)
    await w.send("client > server . 1:1(0) ack 1001 win 257")
    await pause(0.01)
    out = await conn.close()
    assert out.ok
    await w.expect("server > client F. 1001:1001(0) ack 1", after=out.started, within=TOL)
    await w.send("client > server . 1:1(0) ack 1002 win 257")
    await w.send("client > server F. 1:1(0) ack 1002 win 257", wait=0.01)
    await w.expect("server > client . 1002:1002(0) ack 2", within=TOL)


async def test_shutdown_rd_wr_close(lab, family):
    """gtests/net/tcp/shutdown/shutdown-rd-wr-close.pkt: shutdown(SHUT_RD),
    receive, send, shutdown(SHUT_WR), close().  After SHUT_RD Linux still
    ACKs incoming data, queues it, and read() returns it."""
    w, conn = await server_conn(lab, family)
    await pause(0.01)
    assert (await conn.shutdown("r")).ok
    assert (await conn.recv(1000)).value == b""
    await w.send("client > server . 1:1001(1000) ack 1 win 257")
    await w.expect("server > client . 1:1(0) ack 1001", within=TOL)
    assert len((await conn.recv(1000)).value) == 1000
    await pause(0.01)
    out = await conn.send(b"a" * 1000)
    assert out.value == 1000
    await w.expect("server > client P. 1:1001(1000) ack 1001", after=out.started, within=TOL)
    await w.send("client > server . 1001:1001(0) ack 1001 win 257")
    await pause(0.01)
    out = await conn.shutdown("w")
    assert out.ok
    await w.expect("server > client F. 1001:1001(0) ack 1001", after=out.started, within=TOL)
    await w.send("client > server . 1001:1001(0) ack 1002 win 257")
    assert (await conn.send(b"a" * 1000)).errno == "EPIPE"
    await pause(0.01)
    assert (await conn.close()).ok
    await w.send("client > server F. 1001:1001(0) ack 1002 win 257", wait=0.01)
    await w.expect("server > client . 1002:1002(0) ack 1002", within=TOL)


async def test_shutdown_rdwr_close(lab, family):
    """gtests/net/tcp/shutdown/shutdown-rdwr-close.pkt: shutdown(SHUT_RDWR),
    close()."""
    w, conn = await server_conn(lab, family)
    await pause(0.01)
    out = await conn.shutdown("rw")
    assert out.ok
    await w.expect("server > client F. 1:1(0) ack 1", after=out.started, within=TOL)
    await w.send("client > server . 1:1(0) ack 2 win 257")
    assert (await conn.recv(1000)).value == b""
    assert (await conn.send(b"a" * 1000)).errno == "EPIPE"
    await pause(0.01)
    assert (await conn.close()).ok
    await w.send("client > server F. 1:1(0) ack 2 win 257", wait=0.01)
    await w.expect("server > client . 2:2(0) ack 2", within=TOL)


async def test_shutdown_wr_close(lab, family):
    """gtests/net/tcp/shutdown/shutdown-wr-close.pkt: shutdown(SHUT_WR),
    close(); receiving and reading still work after SHUT_WR."""
    w, conn = await server_conn(lab, family)
    await pause(0.01)
    out = await conn.shutdown("w")
    assert out.ok
    await w.expect("server > client F. 1:1(0) ack 1", after=out.started, within=TOL)
    await w.send("client > server . 1:1(0) ack 2 win 257")
    assert (await conn.send(b"a" * 1000)).errno == "EPIPE"
    await w.send("client > server . 1:1001(1000) ack 2 win 257", wait=0.01)
    await w.expect("server > client . 2:2(0) ack 1001", within=TOL)
    assert len((await conn.recv(1000)).value) == 1000
    await pause(0.01)
    assert (await conn.close()).ok
    await w.send("client > server F. 1001:1001(0) ack 2 win 257", wait=0.01)
    await w.expect("server > client . 2:2(0) ack 1002", within=TOL)
