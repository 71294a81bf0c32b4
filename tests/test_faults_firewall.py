"""Firewall faults against the real kernel: what the peer observes, what the
rules counted, and that undo leaves the rule sets exactly as they were.

Every test snapshots ``iptables-save``, ``ip6tables-save`` (counters and
comments stripped) and ``nft list ruleset`` of the hosts it breaks, before
the fault and after its undo, and asserts them equal.
"""

from __future__ import annotations

import re

import pytest
import trio

from harness import InvalidArgument, ObservationTimeout, retransmitted, rst_received
from harness.faults import blackhole, drop, partition, reject
from harness import _wire
from helpers import rules

PORT = 9000
# ICMP errors are rate limited per destination (a burst of 6, then one per
# icmp_ratelimit ms); tests that draw several pin it off
NO_ICMP_LIMIT = {"net.ipv4.icmp_ratelimit": 0, "net.ipv6.icmp.ratelimit": 0}



async def established(lab, family, **kw):
    client, server = await lab.pair(**kw)
    listener = await server.listen(PORT, family=family)
    conn = await client.connect(server, PORT, family=family)
    peer = await listener.accept()
    return client, server, listener, conn, peer


async def test_drop_in_silences_the_port_until_undone(lab, family):
    client, server, _l, conn, peer = await established(lab, family)
    before = await rules(server)
    async with drop(server, direction="in", port=PORT, family=family) as f:
        assert (await conn.send(b"x")).value == 1
        await lab.timeline.wait_for(retransmitted(conn), since=conn.since)
        # the segment and every retransmission of it, none other: a tail loss
        # probe ~10 ms later, the RTO's ~200 ms after that (a late
        # observation may already see it)
        sent = 1 + conn.info().tcp_info["total_retrans"]
        got = await f.wait_matched(sent)
        assert 2 <= sent <= got <= 1 + conn.info().tcp_info["total_retrans"]
        assert peer.info().recv_queue == 0
        assert f.chains == sorted(f.chains) and all(c.startswith("fih") for c in f.chains)
    with trio.fail_after(6):  # the next retransmission (RTO backoff) gets through
        assert (await peer.recv()).value == b"x"
    assert await f.matched() >= 2 and await f.matched(family=10 - family) == 0
    assert await rules(server) == before


async def test_drop_out_drops_the_acks_not_the_data(lab, family):
    client, server, _l, conn, peer = await established(lab, family)
    before = await rules(server)
    async with drop(server, direction="out", port=PORT) as f:
        await conn.send(b"hello")
        with trio.fail_after(2):
            assert (await peer.recv()).value == b"hello"   # in: untouched
        await lab.timeline.wait_for(retransmitted(conn), since=conn.since)
        assert await f.wait_matched(2, family=family) >= 2  # ACK, then D-SACK ACK
        assert conn.info().send_queue == 5                  # never acknowledged
    with trio.fail_after(6):
        while conn.info().send_queue:
            await trio.sleep(0.01)
    assert await rules(server) == before


async def test_drop_syn_spares_established_connections(lab, family):
    client, server, listener, conn, peer = await established(lab, family)
    before = await rules(server)
    async with drop(server, port=PORT, tcp_flags="SYN") as f:
        await conn.send(b"still")                           # established: passes
        with trio.fail_after(2):
            assert (await peer.recv()).value == b"still"
        late = await client.socket(family)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(late.connect, server, PORT)
            assert await f.wait_matched(1) == 1             # the SYN, dropped
            assert client.sockets(state="SYN_SENT", port=PORT).states() == ["SYN_SENT"]
            nursery.cancel_scope.cancel()
        await late.close(linger=0)
    again = await client.connect(server, PORT, family=family)  # undone: at once
    assert again.info().state == "ESTABLISHED"
    assert await rules(server) == before


@pytest.mark.parametrize("spec, bits", [("SYN", ("FIN,SYN,RST,ACK", "SYN")),
                                        ("fin,ack", ("FIN,SYN,RST,ACK", "FIN,ACK")),
                                        ("SYN/SYN", ("SYN", "SYN")),
                                        ("NONE/RST", ("RST", "NONE"))])
def test_tcp_flags_mask_semantics(spec, bits):
    assert _wire.flag_filter(spec, "drop()").iptables() == ["--tcp-flags", *bits]


# what connect() gets for each REJECT answer, measured on this kernel (6.18)
ANSWERS = {
    4: {"tcp-reset": "ECONNREFUSED", "icmp-port-unreachable": "ECONNREFUSED",
        "icmp-host-unreachable": "EHOSTUNREACH", "icmp-net-unreachable": "ENETUNREACH",
        "icmp-admin-prohibited": "EHOSTUNREACH", "icmp-host-prohibited": "EHOSTUNREACH",
        "icmp-net-prohibited": "ENETUNREACH", "icmp-proto-unreachable": "ENOPROTOOPT"},
    6: {"tcp-reset": "ECONNREFUSED", "icmp-port-unreachable": "ECONNREFUSED",
        "icmp-host-unreachable": "EHOSTUNREACH", "icmp-net-unreachable": "ENETUNREACH",
        "icmp-admin-prohibited": "EACCES"},
}


async def test_reject_answers(lab, family):
    """Each answer on its own port, all at once.  An ICMP error that comes
    back while connect() still owns the socket (same CPU, inside the SYN's
    own softirq) is kept as a soft error only (tcp_v4_err/tcp_v6_err:
    TcpExtLockDroppedIcmps counts it); connect() then fails when the SYN is
    retransmitted 1 s later and draws a second one.  Measured: always so for
    IPv6, and for IPv4 when several connects race; a lone IPv4 connect fails
    at once.  A RST is queued to the socket's backlog instead, so tcp-reset
    fails connect() at once in both families."""
    client, server = await lab.pair(sysctls=NO_ICMP_LIMIT)
    before = await rules(server)
    answers = ANSWERS[family]
    results: dict = {}
    faults, ports = {}, {}
    for i, with_ in enumerate(answers):
        ports[with_] = PORT + i
        await server.listen(PORT + i, family=family)
        faults[with_] = await reject(server, port=PORT + i, with_=with_, family=family).start()

    socks: dict = {}

    async def attempt(with_):
        sock = socks[with_] = await client.socket(family)
        await sock.bind(0)
        results[with_] = await sock.connect(server, ports[with_])
        if with_ == "tcp-reset":
            await lab.timeline.wait_for(
                lambda e: e.kind == "rst_received" and e.local == sock.local)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for with_ in answers:
                nursery.start_soon(attempt, with_)
    assert {w: o.errno for w, o in results.items()} == answers
    # "at once": the RST ended the attempt at its first SYN, which the kernel
    # never retransmitted (connect()'s own duration also counts the peer's
    # wake-up: 665 ms once at load 9)
    assert lab.timeline.count(retransmitted(socks["tcp-reset"])) == 0
    for sock in socks.values():   # no SYN leaves after this
        await sock.close()
    for with_, f in faults.items():
        # one answer per SYN the kernel sent: the first and each retransmission
        # (the timeline's tcp_retransmit_skb events).  Seen under load: the
        # peer's connect() (trio's: non-blocking, poll, SO_ERROR, which hands
        # out sk_err_soft) reported the soft error within 1 ms while the
        # kernel kept the socket in SYN_SENT and retransmitted at +1 s.
        syns = 1 + lab.timeline.count(retransmitted(socks[with_]))
        assert await f.matched() == syns, (with_, results[with_].duration, syns)
        await f.stop()
    assert await rules(server) == before


async def test_reject_out_answers_the_local_sender(lab, family):
    client, server = await lab.pair()
    await server.listen(PORT, family=family)
    before = await rules(client)
    async with reject(client, direction="out", port=PORT, with_="tcp-reset") as f:
        sock = await client.socket(family)
        assert (await sock.connect(server, PORT)).errno == "ECONNREFUSED"
        assert await f.matched() == 1 and await f.matched(family=family) == 1
    assert server.sockets(state="SYN_RECV") == ()
    assert await rules(client) == before


async def test_reject_both_lets_its_own_answers_out(lab, family):
    client, server, _l, conn, peer = await established(lab, family)
    before = await rules(server)
    async with reject(server, direction="both", port=PORT, with_="tcp-reset") as f:
        await conn.send(b"x")
        await lab.timeline.wait_for(rst_received(conn), since=conn.since)
        assert (await conn.recv()).errno == "ECONNRESET"
        assert await f.matched() == 1
    async with reject(server, direction="both", port=PORT, with_="icmp-port-unreachable"):
        sock = await client.socket(family)
        assert (await sock.connect(server, PORT)).errno == "ECONNREFUSED"
    assert await rules(server) == before


async def test_partition_cuts_both_ways_and_heals(lab, family):
    client, server, _l, conn, peer = await established(lab, family)
    before = await rules(client, server)
    async with partition(client, server) as f:
        await conn.send(b"c")
        await peer.send(b"s")
        await lab.timeline.wait_for(retransmitted(conn), since=conn.since)
        await lab.timeline.wait_for(retransmitted(peer), since=peer.since)
        assert await f.wait_matched(4, family=family) >= 4
        assert await f.matched(family=10 - family) == 0
        assert conn.info().recv_queue == 0 and peer.info().recv_queue == 0
    with trio.fail_after(6):
        assert (await conn.recv()).value == b"s"
        assert (await peer.recv()).value == b"c"
    assert await rules(client, server) == before


async def test_blackhole_spares_loopback(lab, family):
    """In: the client's segment is dropped and retransmitted.  Out: the
    server's send() succeeds, but the segment the firewall drops on its way
    out (NF_DROP is -EPERM to the sender) counts as never sent: it stays in
    the write queue and the zero-window-probe timer retries it, with no
    retransmission event."""
    client, server, _l, conn, peer = await established(lab, family)
    before = await rules(server)
    async with blackhole(server) as f:
        local = await server.listen(PORT + 1, family=family)
        inside = await server.connect(server, PORT + 1, family=family)  # via lo
        assert inside.info().state == "ESTABLISHED"
        await conn.send(b"x")
        assert (await peer.send(b"y")).value == 1
        await lab.timeline.wait_for(retransmitted(conn), since=conn.since)
        assert await f.wait_matched(3) >= 3  # x, its retransmission, y
        info = peer.info()
        assert (info.timer, info.send_queue) == ("zero_window_probe", 1)
        assert lab.timeline.count(retransmitted(peer), peer) == 0
        assert conn.info().recv_queue == 0
        await inside.close(linger=0)
        await local.close()
    with trio.fail_after(6):
        assert (await conn.recv()).value == b"y"
    assert await rules(server) == before


async def test_faults_stack_and_undo_independently(lab, family):
    client, server, _l, conn, peer = await established(lab, family)
    before = await rules(server)
    first = await drop(server, port=PORT + 1).start()
    middle = await rules(server)
    second = await drop(server, port=PORT, family=family).start()
    await first.stop()  # out of order: the other's chains stay
    await conn.send(b"x")
    assert await second.wait_matched(1) >= 1
    assert await first.matched() == 0
    await second.stop()
    await second.stop()  # idempotent
    assert middle != before and await rules(server) == before


async def test_half_applied_fault_is_taken_back(lab, monkeypatch):
    """If the IPv6 transaction fails, the IPv4 one is undone before the
    error propagates."""
    client, server = await lab.pair()
    before = await rules(server)
    f = drop(server, port=PORT)
    part = f._parts[0]
    real = part.apply_text
    broken = "-A nosuchchain -j DROP\nCOMMIT"
    monkeypatch.setattr(part, "apply_text",
                        lambda fam: real(fam).replace("COMMIT", broken) if fam == 6 else real(fam))
    with pytest.raises(Exception, match="ip6tables"):
        await f.start()
    assert not f.active and part.applied == set()
    assert await rules(server) == before


async def test_wait_matched_times_out_with_the_count(lab):
    client, server = await lab.pair()
    async with drop(server, port=PORT) as f:
        with pytest.raises(ObservationTimeout, match="matched 0 packet"):
            await f.wait_matched(1, timeout=0.05)


# --- bad input: InvalidArgument before anything is touched -----------------------


BAD = [
    (lambda c, s, o: drop(s, direction="sideways"), "direction must be one of"),
    (lambda c, s, o: drop(s, port=70000), "port must be an int in 1..65535"),
    (lambda c, s, o: drop(s, port=True), "port must be an int"),
    (lambda c, s, o: drop(s, protocol="sctp"), "protocol must be one of"),
    (lambda c, s, o: drop(s, tcp_flags="XYZ"), "tcp_flags must be TCP flags"),
    (lambda c, s, o: drop(s, tcp_flags="SYN/ACK"), "outside the mask"),
    (lambda c, s, o: drop(s, protocol="udp", tcp_flags="SYN"), "tcp_flags needs protocol"),
    (lambda c, s, o: drop(s, protocol="icmp", port=80), "port needs protocol"),
    (lambda c, s, o: drop(s, family=5), "family must be 4, 6 or None"),
    (lambda c, s, o: reject(s, with_="icmp-go-away"), "with_ must be one of"),
    (lambda c, s, o: reject(s, with_="tcp-reset", protocol="udp"), "needs protocol='tcp'"),
    (lambda c, s, o: reject(s, with_="icmp-proto-unreachable", family=6), "no ICMPv6"),
    (lambda c, s, o: drop("server"), "host must be a Host"),
    (lambda c, s, o: drop(s, peer="not-an-address"), "peer must be a Host of the same lab"),
    (lambda c, s, o: drop(s, peer=o), "belongs to another lab"),
    (lambda c, s, o: drop(s, peer=s), "another host"),
    (lambda c, s, o: drop(s, peer="198.18.0.1", family=6), "is IPv4 but family=6"),
    (lambda c, s, o: partition(c, o), "different labs"),
    (lambda c, s, o: partition(c, "server"), "b must be a Host"),
    (lambda c, s, o: blackhole(o.lab), "host must be a Host"),
]


async def test_bad_input_touches_nothing(lab):
    from harness import open_lab
    client, server = await lab.pair()
    before = await rules(client, server)
    async with open_lab() as other_lab:
        (other,) = [await other_lab.host("other")]
        for make, message in BAD:
            with pytest.raises(InvalidArgument, match=re.escape(message)):
                make(client, server, other)
    assert await rules(client, server) == before


async def test_peer_address_restricts_the_family(lab):
    client, server = await lab.pair()
    f = drop(server, peer=client.v4)
    assert set(f._parts[0].bodies) == {4}
    g = reject(server, with_="icmp-proto-unreachable")   # IPv4-only answer: IPv4 only
    assert set(g._parts[0].bodies) == {4}
