"""power_off, power_on and reboot against the real kernel.

power_off lets nothing escape (the peer's socket stays ESTABLISHED and
hears nothing); power_on brings back a fresh namespace with the same name,
addresses and MAC and no TCP state; after a reboot stale segments meet a
RST, and a reconnect from the same source port meets the old connection's
challenge ACK (RFC 5961 §4), which the client answers with the RST that
clears it, so the SYN's retransmission (initial RTO, 1 s) connects.
"""

import time

import pytest
import trio

from harness import (InvalidArgument, open_lab, retransmitted, rst_received, rst_sent)
from harness import _netns
from harness.faults._host import power_off, power_on, reboot
from helpers import still_works


async def connected(lab, family, **kw):
    client, server = await lab.pair(**kw)
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    assert (await conn.send(b"hello")).value == 5
    assert (await peer.recv()).value == b"hello"
    return client, server, listener, conn, peer


async def test_power_off_lets_nothing_escape(lab, family):
    client, server, listener, conn, peer = await connected(lab, family)
    # a process's connection with unread data: its kill would send a RST
    prog = await client.program()
    doomed = await prog.connect(server, 9000, family=family)
    victim_peer = await listener.accept()
    assert (await victim_peer.send(b"unread")).value == 6
    cap = await lab.capture()

    await power_off(client)
    off = time.monotonic()

    assert prog.process.returncode == -9
    assert not client.sockets()  # aborted: no orphan keeps retransmitting
    # both of the client's connections did send a RST -- into the blackhole
    await lab.timeline.wait_for(rst_sent(conn))
    await lab.timeline.wait_for(rst_sent(doomed))
    # to show nothing reaches the peers: an interval ~500x what a RST takes
    await trio.sleep(0.05)
    for ep in (peer, victim_peer):
        assert lab.timeline.count(rst_received(ep)) == 0
        assert lab.timeline.states(ep) == ["ESTABLISHED"]
        await lab.wait_state(ep, "ESTABLISHED", timeout=0)
    assert [p for p in cap.packets() if p.ingress == "client"] == []
    assert time.monotonic() - off < 1

    # a dead NIC: the peer's data is retransmitted, never answered
    assert (await peer.send(b"anyone?")).value == 7
    await lab.timeline.wait_for(retransmitted(peer))
    assert lab.timeline.count(rst_received(peer)) == 0
    assert [p for p in cap.packets() if p.ingress == "client"] == []  # not even an ACK
    link = (await client.run(["ip", "-br", "link", "show", "eth0"])).stdout.split()
    assert link[1] == b"DOWN"  # a dead NIC answers no ARP either (iptables never sees ARP)


async def mac(host) -> str:
    out = await host.run(["ip", "-br", "link", "show", "eth0"])
    return out.stdout.split()[2].decode()


async def test_power_on_brings_back_a_fresh_usable_host(lab, family):
    client, server, listener, conn, peer = await connected(
        lab, family, profile="fast", sysctls={"net.ipv4.tcp_fin_timeout": 7})
    netns, v4, v6, nic = client.netns, client.v4, client.v6, await mac(client)
    await power_off(client)
    await power_on(client)
    # the same machine: name, addresses, NIC (MAC) and pinned sysctls
    assert (client.netns, client.v4, client.v6, await mac(client)) == (netns, v4, v6, nic)
    assert client.sysctl("net.ipv4.tcp_fin_timeout") == "7"
    assert client.sysctl("net.ipv4.tcp_retries2") == "3"  # the fast profile
    assert _netns.list_names().count(netns) == 1
    assert not client.sockets()  # no TCP state survived
    assert (await conn.send(b"x")).errno == "EBADF"  # the old life's socket is gone
    # usable both ways: as a client and as a server
    again = await client.connect(server, 9000, family=family)
    accepted = await listener.accept()
    await still_works(again, accepted)
    back = await client.listen(9001, family=family)
    out = await server.connect(client, 9001, family=family)
    await still_works(out, await back.accept())



async def test_after_reboot_a_stale_segment_meets_a_rst(lab, family):
    client, server, listener, conn, peer = await connected(lab, family)
    await reboot(client)
    since = time.monotonic()
    assert (await peer.send(b"are you there?")).value == 14  # queued: the error comes later
    await lab.timeline.wait_for(rst_received(peer), since=since)
    # the rebooted kernel has no socket for it (tcp_v4_send_reset/tcp_v6_send_reset)
    sent = await lab.timeline.wait_for(rst_sent(conn), since=since)
    assert sent.reason == "NO_SOCKET"
    assert (await peer.recv()).errno == "ECONNRESET"
    await lab.wait_state(peer, "CLOSED")


async def test_after_reboot_a_reconnect_from_the_same_port_meets_a_challenge_ack(lab, family):
    client, server, listener, conn, peer = await connected(lab, family)
    port = conn.local[1]
    await reboot(client)
    cap = await lab.capture()
    since = time.monotonic()

    again = await client.connect(server, 9000, family=family, bind_port=port)
    took = time.monotonic() - since
    accepted = await listener.accept()
    assert again.local == conn.local and accepted.remote == peer.remote

    # the old server socket was torn down by the client's RST...
    reset = await lab.timeline.wait_for(rst_received(peer), since=since)
    rst = await lab.timeline.wait_for(rst_sent(again), since=since)
    assert rst.t <= reset.t
    # (the 4-tuple's history: the old connection closed, the new one made)
    assert lab.timeline.states(peer) == ["ESTABLISHED", "CLOSE", "SYN_RECV", "ESTABLISHED"]
    # ...which answered the challenge ACK to its SYN (RFC 5961 §4); the SYN's
    # retransmission then met no old connection
    assert cap.summary(again) == ["client:S", "server:A", "client:R",
                                  "client:S", "server:SA", "client:A"]
    syn, challenge, rst_pkt, syn2, _, _ = cap.packets(again)
    assert challenge.ack == peer_rcv_nxt(cap, peer) and rst_pkt.seq == challenge.ack
    # Not the initial RTO (1 s): tcp_rcv_synsent_state_process() rearms the
    # SYN's timer to TCP_TIMEOUT_MIN (2 jiffies, 8 ms at HZ=250) when an
    # unacceptable ACK arrives before any retransmission ("Previous FIN/ACK
    # or RST/ACK might be ignored"), so the reconnect costs milliseconds
    assert 0.003 < syn2.t - syn.t < 0.2 and took < 0.5
    await still_works(again, accepted)


def peer_rcv_nxt(cap, peer) -> int:
    """What the server had received of the old connection: the next sequence
    number after the client's data, as the server last acknowledged it."""
    old = [p for p in cap.packets() if p.src == peer.local and p.dst == peer.remote
           and p.flags != "SA"]
    return old[-1].ack


# --- bad input: InvalidArgument before anything is touched ------------------------

async def test_bad_parameters(lab):
    client, server = await lab.pair()
    with pytest.raises(InvalidArgument, match=r"host must be a Host .* from power_off\(\)"):
        await power_off("client")
    with pytest.raises(InvalidArgument, match=r"host client is not powered off; use reboot"):
        await power_on(client)
    await power_off(client)
    with pytest.raises(InvalidArgument, match=r"host client is already powered off"):
        await power_off(client)
    with pytest.raises(InvalidArgument, match=r"host must be a Host .* from power_off\(\)"):
        await reboot(None)


async def test_teardown_removes_a_rebooted_host_and_leaves_nothing():
    async with open_lab() as lab:
        client, server = await lab.pair()
        await server.listen(9000)
        await client.connect(server, 9000)
        await reboot(client)
        await power_off(server)   # left off: the teardown removes it as usual
        names = [h.netns for h in lab.hosts.values()] + [lab._switch[0]]
        assert all(_netns.exists(n) for n in names)
    assert not any(_netns.exists(n) for n in names)


async def test_a_firewall_fault_open_across_a_reboot_exits_cleanly(lab):
    """Its rules died with the old namespace: exit has nothing to undo, and
    the new namespace's rule set is left as it is."""
    from harness import faults as _f
    client, server = await lab.pair()
    async with _f.drop(server, direction="in", port=9999):
        await _f.reboot(server)
        fresh = (await server.run(["iptables-save"])).stdout
    assert (await server.run(["iptables-save"])).stdout == fresh
