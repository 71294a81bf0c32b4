"""Container hosts: a real server image (redis, from Debian's packages, built
locally) as a host of the lab, under the same faults and observers as a
namespace host."""

import pytest
import trio

import harness
from harness import _docker, _netns, faults
from harness._names import owner_tag
from harness.errors import InvalidArgument

pytestmark = pytest.mark.requires("docker")

# redis enables SO_KEEPALIVE on its connections: TCP_KEEPIDLE = --tcp-keepalive,
# TCP_KEEPINTVL = a third of it (at least 1 s), TCP_KEEPCNT = 3 (anetKeepAlive())
REDIS = ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "",
         "--appendonly", "no", "--tcp-keepalive", "1"]


async def redis_lab(lab, **kw):
    client = await lab.host("client", **kw)
    server = await lab.container("server", image="redis", command=REDIS,
                                 ready=harness.listening(6379), **kw)
    return client, server


def server_side(server, conn):
    """The server's socket of the client's connection (redis owns it)."""
    (s,) = [s for s in server.sockets() if s.remote == conn.local]
    return s


async def test_a_container_is_a_host_like_any_other(lab, family):
    client, server = await redis_lab(lab)
    conn = await client.connect(server, 6379, family=family)
    await conn.send(b"PING\r\n")
    assert (await conn.recv()).value == b"+PONG\r\n"
    theirs = server_side(server, conn)
    assert theirs.state == "ESTABLISHED" and theirs.timer == "keepalive"  # redis's SO_KEEPALIVE
    cli = await server.spawn(["redis-cli", "ping"])        # a binary of the image, inside it
    assert await cli.wait(timeout=10) == 0 and cli.stdout() == "PONG\n"
    assert lab.timeline.states(conn)[:2] == ["SYN_SENT", "ESTABLISHED"]
    assert server.backend.container.name == server.netns and _netns.exists(server.netns)


async def test_client_power_off_server_socket_stays_established_until_keepalive(lab, family):
    client, server = await redis_lab(lab, profile="fast")
    conn = await client.connect(server, 6379, family=family)
    await conn.send(b"PING\r\n")
    assert (await conn.recv()).value == b"+PONG\r\n"
    theirs = server_side(server, conn)
    await faults.power_off(client)
    # nothing escaped the client: redis's socket is as it was
    assert (await lab.wait_state(theirs, "ESTABLISHED")).state == "ESTABLISHED"
    assert not lab.timeline.events(theirs, kind="rst_received")
    # keepalive: idle 1 s, then 3 unanswered probes 1 s apart -> ETIMEDOUT
    err = await lab.timeline.wait_for(harness.error_reported(theirs), timeout=10)
    assert err.errno == "ETIMEDOUT"
    assert 3.5 <= err.t - conn.since <= 6.0
    await lab.wait_state(theirs, "CLOSED")


async def test_server_container_killed_client_gets_fin(lab, family):
    client, server = await redis_lab(lab)
    conn = await client.connect(server, 6379, family=family)
    await conn.send(b"PING\r\n")
    assert (await conn.recv()).value == b"+PONG\r\n"
    assert await server.main.kill() == -9                # SIGKILL the main process
    # nothing unread in redis's buffer: the kernel closes with FIN
    assert (await conn.recv()).value == b""
    await lab.wait_state(conn, "CLOSE_WAIT")
    assert (await conn.send(b"PING\r\n")).ok            # CLOSE_WAIT may still send...
    await lab.timeline.wait_for(harness.rst_received(conn))
    assert (await conn.send(b"PING\r\n")).errno == "EPIPE"  # ...until the RST


async def test_server_container_killed_with_unread_data_resets(lab):
    client, server = await redis_lab(lab)
    conn = await client.connect(server, 6379)
    await server.main.pause()                             # frozen: its kernel still ACKs
    assert (await conn.send(b"PING\r\n")).ok
    await trio.to_thread.run_sync(lambda: None)
    theirs = server_side(server, conn)
    while theirs.recv_queue == 0:                         # the data reaches redis's buffer
        await trio.sleep(0.001)
        theirs = server_side(server, conn)
    await server.main.kill()
    await lab.timeline.wait_for(harness.rst_received(conn))
    assert (await conn.recv()).errno == "ECONNRESET"


async def test_drop_last_ack_between_a_namespace_client_and_a_container_server(lab):
    client, server = await redis_lab(lab)
    conn = await client.connect(server, 6379)
    theirs = server_side(server, conn)
    async with faults.drop_last_ack(conn) as dropped:
        await conn.close()                                # redis reads EOF and closes
        await lab.wait_state(conn, "TIME_WAIT")
        assert (await lab.wait_state(theirs, "LAST_ACK")).state == "LAST_ACK"
        await lab.timeline.wait_for(harness.retransmitted(theirs), timeout=3)
        assert server_side(server, conn).state == "LAST_ACK"  # still waiting for our ACK
    assert dropped.counts["dropped"] >= 1
    await lab.wait_state(theirs, "CLOSED", timeout=5)     # the next FIN gets its ACK


async def test_reboot_a_container_host(lab):
    client, server = await redis_lab(lab)
    conn = await client.connect(server, 6379)
    old = server.backend.container.id
    await faults.reboot(server)                           # a new container, same addresses
    assert server.backend.container.id != old
    await lab.wait_state(server_side(server, await client.connect(server, 6379)), "ESTABLISHED")
    assert (await conn.send(b"PING\r\n")).ok              # stale: the new server resets it
    await lab.timeline.wait_for(harness.rst_received(conn))
    assert (await conn.recv()).errno == "ECONNRESET"


async def test_missing_image_is_a_clear_error_and_leaves_nothing(lab):
    await lab.host("client")

    def mine():  # this process's containers: another run's come and go meanwhile (seen)
        return _docker.list_labelled("harness.owner", owner_tag())
    before = mine()
    with pytest.raises(InvalidArgument, match="image 'no-such-image' is neither a build context"):
        await lab.container("server", image="no-such-image")
    with pytest.raises(InvalidArgument, match="command must be a non-empty list of strings"):
        await lab.container("server", image="redis", command="redis-server")
    assert mine() == before
    assert sorted(lab.hosts) == ["client"]


async def test_netem_delay_to_a_container(lab, family):
    client, server = await redis_lab(lab)
    conn = await client.connect(server, 6379, family=family)

    async def rtt() -> float:
        sent = await conn.send(b"PING\r\n")
        got = await conn.recv()
        assert got.value == b"+PONG\r\n"
        return got.ended - sent.started

    before = await rtt()
    async with faults.netem(server, delay=0.05) as f:    # on the container's link
        delayed = [await rtt() for _ in range(3)]
    after = await rtt()
    # no delay outside the fault: a round trip shorter than the delay
    assert before < 0.05 and after < 0.05, (before, after)
    # never early; the quickest late by the engine's own recorded wake-up
    # lateness at most (0 with tc): each round trip also holds wake-ups of
    # redis and of this process, which a loaded machine delays (16 ms for
    # a plain PING at load 7)
    assert all(d >= 0.05 for d in delayed) and min(delayed) <= 0.07 + f.late, \
        (f.engine, delayed, f.late)
