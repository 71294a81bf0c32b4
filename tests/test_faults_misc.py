"""ICMP/resolution faults, socket destroy and process faults against the real
kernel: what each side observes, and that undo is exact.
"""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing

from harness import (FaultError, InvalidArgument, error_reported, rst_received, rst_sent)
from harness import faults
from helpers import rules

PORT = 9000
NO_ICMP_LIMIT = {"net.ipv4.icmp_ratelimit": 0, "net.ipv6.icmp.ratelimit": 0}



async def established(lab, family, owner=None, **kw):
    """client, server and a connection; ``owner="peer"`` puts the server's
    end in a peer process."""
    client, server = await lab.pair(**kw)
    side = await server.program() if owner == "peer" else server
    listener = await side.listen(PORT, family=family)
    conn = await client.connect(server, PORT, family=family)
    peer = await listener.accept()
    return client, server, side, conn, peer


def fast_resolution(*hosts, retrans: float = 0.1) -> None:
    """Pin address resolution: 3 probes (mcast_solicit, the default),
    ``retrans`` seconds apart instead of 1 s.  Per device, so set once eth0
    exists."""
    for h in hosts:
        for fam in (4, 6):
            h.sysctl(f"net.ipv{fam}.neigh.eth0.mcast_solicit", 3)
            h.sysctl(f"net.ipv{fam}.neigh.eth0.retrans_time_ms", int(retrans * 1000))


# --- host_unreachable --------------------------------------------------------------


async def test_host_unreachable_fails_resolution_with_ehostunreach(lab, family):
    client, server, _s, conn, peer = await established(lab, family)
    fast_resolution(client, server)
    before = await rules(client, server)
    async with faults.host_unreachable(server):
        # a new connection: resolution fails after 3 probes 0.1 s apart
        sock = await client.socket(family)
        out = await sock.connect(server, PORT)
        assert out.errno == "EHOSTUNREACH"
        assert 0.25 < out.duration < 1.0
        # the established one: a soft error, reported when it gives up
        await conn.setsockopt("TCP_USER_TIMEOUT", 0.5)
        await conn.send(b"x")
        with trio.fail_after(6):   # ~1 s; more if the handshake lost its SYN (RTO 1 s+)
            assert (await conn.recv()).errno == "EHOSTUNREACH"
        assert peer.info().recv_queue == 0
    again = await client.connect(server, PORT, family=family)   # resolves afresh
    assert again.info().state == "ESTABLISHED"
    assert await rules(client, server) == before


async def test_blackhole_is_silence_not_unreachable(lab, family):
    """The contrast: a blackholed host still answers ARP/ND, so its peer
    times out (ETIMEDOUT) rather than failing resolution."""
    client, server, _s, conn, peer = await established(lab, family)
    async with faults.blackhole(server):
        await conn.setsockopt("TCP_USER_TIMEOUT", 0.5)
        await conn.send(b"x")
        with trio.fail_after(6):   # ~1 s; more if the handshake lost its SYN (RTO 1 s+)
            assert (await conn.recv()).errno == "ETIMEDOUT"


def test_host_unreachable_wants_a_host():
    with pytest.raises(InvalidArgument, match="host must be a Host"):
        faults.host_unreachable("server")


# --- port_unreachable ----------------------------------------------------------------


async def test_port_unreachable_refuses_connect(lab, family):
    client, server = await lab.pair(sysctls=NO_ICMP_LIMIT)
    await server.listen(PORT, family=family)
    before = await rules(server)
    async with faults.port_unreachable(server, PORT, family=family) as f:
        sock = await client.socket(family)
        out = await sock.connect(server, PORT)
        # ECONNREFUSED, as for a RST; IPv6 at the SYN's retransmission (see
        # test_faults_firewall.py::test_reject_answers)
        assert out.errno == "ECONNREFUSED"
        assert await f.matched() == 1 + (out.duration > 0.9)
    assert await rules(server) == before


async def test_port_unreachable_is_a_soft_error_when_established(lab, family):
    """An ICMP port unreachable does not kill an established connection
    (RFC 1122 4.2.3.9: only a soft error): it keeps retransmitting and, when
    it gives up, reports ECONNREFUSED instead of ETIMEDOUT."""
    client, server, _s, conn, peer = await established(lab, family, sysctls=NO_ICMP_LIMIT)
    async with faults.port_unreachable(server, PORT) as f:
        await conn.setsockopt("TCP_USER_TIMEOUT", 0.5)
        await conn.send(b"x")
        assert await f.wait_matched(2) >= 2
        assert conn.info().state == "ESTABLISHED"
        with trio.fail_after(6):   # ~1 s; more if the handshake lost its SYN (RTO 1 s+)
            assert (await conn.recv()).errno == "ECONNREFUSED"


def test_port_unreachable_bad_input():
    with pytest.raises(InvalidArgument, match="port must be an int in 1..65535, got port=None"):
        faults.port_unreachable(object(), None)


async def test_port_unreachable_bad_port(lab):
    client, server = await lab.pair()
    with pytest.raises(InvalidArgument, match=r"port=70000 \(int\) from port_unreachable\(\)"):
        faults.port_unreachable(server, 70000)


# --- destroy ----------------------------------------------------------------------------


async def test_destroy_aborts_the_owner_and_resets_the_peer(lab, family):
    client, server, _s, conn, peer = await established(lab, family)
    victim, other = (conn, peer)
    results = {}

    async def blocked():
        results["recv"] = await victim.recv()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked)
        await trio.testing.wait_all_tasks_blocked()     # the recv is blocked
        info = await faults.destroy(victim)
    assert info.state == "ESTABLISHED" and info.local == victim.local
    assert results["recv"].errno == "ECONNABORTED"          # the blocked call
    await lab.timeline.wait_for(rst_sent(victim, reason="TCP_STATE"))
    await lab.timeline.wait_for(rst_received(other))
    assert (await other.recv()).errno == "ECONNRESET"
    # the error is consumed: then end of stream, and EPIPE for a send
    assert (await victim.recv()).value == b""
    assert (await victim.send(b"x")).errno == "EPIPE"
    await lab.wait_state(victim, "CLOSED")


async def test_destroy_reaches_a_peer_process_socket(lab, family):
    client, server, side, conn, peer = await established(lab, family, owner="peer")
    await faults.destroy(peer)                                  # in another process
    await lab.timeline.wait_for(error_reported(peer, "ECONNABORTED"))
    assert (await peer.recv()).errno == "ECONNABORTED"          # its next call
    await lab.timeline.wait_for(rst_received(conn))
    assert (await conn.send(b"x")).errno == "ECONNRESET"


async def test_destroy_refuses_what_is_not_there(lab, family):
    client, server, _s, conn, peer = await established(lab, family)
    await conn.close(linger=0)
    with pytest.raises(InvalidArgument, match=re.escape(f"{conn!r} was closed by the test")):
        faults.destroy(conn)
    await lab.wait_state(peer, "CLOSED")                        # reset, not closed by us
    with pytest.raises(FaultError, match="no such socket any more"):
        await faults.destroy(peer)
    with pytest.raises(InvalidArgument, match="sock must be a harness Socket"):
        faults.destroy("conn")


# --- kill and pause ---------------------------------------------------------------------


async def test_kill_closes_with_fin(lab, family):
    client, server, side, conn, peer = await established(lab, family, owner="peer")
    assert await faults.kill(side) == -9
    assert (await conn.recv()).value == b""                     # the kernel's FIN
    await lab.wait_state(conn, "CLOSE_WAIT")
    assert lab.timeline.count(rst_received(conn)) == 0
    with pytest.raises(InvalidArgument, match="has already exited"):
        faults.kill(side)


async def test_kill_with_unread_data_resets(lab, family):
    client, server, side, conn, peer = await established(lab, family, owner="peer")
    await conn.send(b"never read")
    with trio.fail_after(2):
        while peer.info().recv_queue == 0:
            await trio.sleep(0.001)
    await faults.kill(side.process)                             # a Process works too
    await lab.timeline.wait_for(rst_sent(peer, reason="TCP_ABORT_ON_CLOSE"))
    await lab.timeline.wait_for(rst_received(conn))
    assert (await conn.recv()).errno == "ECONNRESET"


async def test_pause_the_kernel_acks_while_the_app_is_silent(lab, family):
    client, server, side, conn, peer = await established(lab, family, owner="peer")
    async with faults.pause(side) as f:
        assert f.active
        with open(f"/proc/{side.process.pid}/stat") as stat:
            assert stat.read().rsplit(")", 1)[1].split()[0] == "T"
        async with trio.open_nursery() as nursery:
            reply = {}

            async def ask():
                reply["recv"] = await peer.recv()   # sent now, answered after SIGCONT
            nursery.start_soon(ask)
            await conn.send(b"ping")
            with trio.fail_after(2):                # ACKed by the paused host's kernel
                while conn.info().send_queue or peer.info().recv_queue != 4:
                    await trio.sleep(0.001)
            # nothing answers while paused (time must pass to show it)
            await trio.sleep(0.1)
            assert "recv" not in reply and conn.info().state == "ESTABLISHED"
            await f.stop()                          # SIGCONT
        assert reply["recv"].value == b"ping"
    await f.stop()                                  # idempotent


def test_process_faults_bad_input():
    for fault in (faults.kill, faults.pause):
        with pytest.raises(InvalidArgument, match="target must be a Process"):
            fault("server")
