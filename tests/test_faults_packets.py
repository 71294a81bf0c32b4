"""The packet engine (harness.faults._packets): each action proven by what the
receiving socket observes, on IPv4 and IPv6; exact undo; bad input refused
before anything is touched."""

from __future__ import annotations

import time

import pytest

from harness import FaultError, InvalidArgument, retransmitted
from harness import faults
from harness.faults import Action
from helpers import wait_until

PORT = 9000


async def connected(lab, family):
    client, server = await lab.pair()
    listener = await server.listen(PORT, family=family)
    conn = await client.connect(server, PORT, family=family, options={"TCP_NODELAY": True})
    peer = await listener.accept()
    return client, server, conn, peer


def data(p) -> bool:
    return p.payload_len > 0



async def recv_exactly(sock, n: int) -> tuple[bytes, float]:
    got = b""
    while len(got) < n:
        out = await sock.recv()
        assert out.ok and out.value, out
        got += out.value
    return got, out.ended


def saved(host) -> str:
    """iptables-save and ip6tables-save of a host, without comments or counters."""
    text = ""
    for tool in ("iptables-save", "ip6tables-save"):
        out = host.run_sync([tool]).stdout.decode()
        text += "".join(ln + "\n" for ln in out.splitlines() if not ln.startswith("#"))
    return text


async def test_delay_holds_the_segment(lab, family):
    client, _, conn, peer = await connected(lab, family)
    async with faults.intercept(conn, direction="out", when=data,
                              action=Action.delay(0.2)) as f:
        sent = await conn.send(b"x")
        got, arrived = await recv_exactly(peer, 1)
    assert got == b"x"
    # from the send's start: the segment is queued somewhere inside the call
    # (which took 6.9 ms once under load, so its end is no lower bound)
    assert 0.2 <= arrived - sent.started < 0.5
    assert f.counts["delayed"] == 1 and f.counts["matched"] == 1
    (t, summary, action), = f.log
    assert action == "delay(0.2)" and "[PSH,ACK]" in summary and "len=1" in summary


async def test_drop_forces_a_retransmission(lab, family):
    client, _, conn, peer = await connected(lab, family)
    async with faults.drop_first(conn, 1, direction="out", when=data) as f:
        sent = await conn.send(b"lost once")
        got, arrived = await recv_exactly(peer, 9)
    assert got == b"lost once"
    assert arrived - sent.started >= 0.19      # a loss probe or the RTO, both ~200 ms
    assert f.counts["dropped"] == 1
    assert lab.timeline.count(retransmitted(conn)) >= 1


async def test_duplicate_reaches_the_receiver_twice(lab, family):
    client, _, conn, peer = await connected(lab, family)
    async with faults.intercept(conn, direction="out", when=data, action=Action.duplicate(1),
                              count=1) as f:
        await conn.send(b"twice")
        got, _ = await recv_exactly(peer, 5)
        # the receiving socket counted two data segments for one sent, and
        # answered the copy with a D-SACK (the sender saw it as a dsack_dup)
        await wait_until(lambda: peer.info().tcp_info["data_segs_in"] == 2, what="2 segments in")
        await wait_until(lambda: conn.info().tcp_info["dsack_dups"] == 1, what="a D-SACK")
    assert got == b"twice"
    assert conn.info().tcp_info["data_segs_out"] == 1
    assert f.counts["duplicated"] == 1


async def test_duplicate_inbound_copy_reaches_the_local_stack(lab, family):
    """An inbound copy is injected through lo; it must not be queued again."""
    client, _, conn, peer = await connected(lab, family)
    async with faults.intercept(conn, direction="in", when=data, action=Action.duplicate(2),
                              count=1) as f:
        await peer.send(b"thrice")
        got, _ = await recv_exactly(conn, 6)
        await wait_until(lambda: conn.info().tcp_info["data_segs_in"] == 3, what="3 segments in")
    assert got == b"thrice"
    assert f.counts["duplicated"] == 1 and f.counts["seen"] == f.counts["accepted"] + 1


async def test_reorder_swaps_two_segments(lab, family):
    client, _, conn, peer = await connected(lab, family)
    async with faults.intercept(conn, direction="out", when=data, action=Action.reorder(),
                              count=1) as f:
        await conn.send(b"a")
        await conn.send(b"b")
        got, _ = await recv_exactly(peer, 2)
    assert got == b"ab"                        # TCP puts them back in order...
    assert peer.info().tcp_info["rcv_ooopack"] == 1   # ...after "b" came first
    assert f.counts["reordered"] == 1
    assert [e.packet.data for e in f.log] == [b"a"]


async def test_rewrite_changes_what_recv_returns(lab, family):
    client, _, conn, peer = await connected(lab, family)
    async with faults.intercept(conn, direction="out", when=data,
                              action=Action.rewrite_payload(bytes.upper), count=1) as f:
        await conn.send(b"hello")
        got, _ = await recv_exactly(peer, 5)
        await conn.send(b"world")              # count=1: the next passes unchanged
        got2, _ = await recv_exactly(peer, 5)
    assert (got, got2) == (b"HELLO", b"world")
    assert f.counts["rewritten"] == 1


async def test_rewrite_whole_packet_with_scapy(lab, family):
    """scapy=True hands predicate and rewrite a scapy packet (via
    harness._scapy, the only scapy importer)."""
    client, _, conn, peer = await connected(lab, family)

    def shout(pkt):
        pkt["Raw"].load = pkt["Raw"].load[::-1]
        return pkt

    async with faults.intercept(conn, direction="out", scapy=True,
                              when=lambda pkt: pkt.haslayer("Raw"),
                              action=Action.rewrite(shout)) as f:
        await conn.send(b"stressed")
        got, _ = await recv_exactly(peer, 8)
    assert got == b"desserts"
    assert f.counts["rewritten"] == 1


async def test_delay_the_synack_by_flags(lab, family):
    """A host-wide fault on a port, narrowed by the TCP-flags prefilter."""
    client, server = await lab.pair()
    await server.listen(PORT, family=family)
    async with faults.intercept(server, port=PORT, direction="out", tcp_flags="SYN,ACK",
                              action=Action.delay(0.3)) as f:
        t0 = time.monotonic()
        await client.connect(server, PORT, family=family)
        took = time.monotonic() - t0
    assert 0.3 <= took < 0.9                   # below the 1 s SYN retransmission
    assert f.counts["seen"] == f.counts["delayed"] == 1


async def test_drop_nth_drops_only_that_one(lab):
    client, _, conn, peer = await connected(lab, 4)
    async with faults.drop_nth(conn, 2, direction="out", when=data) as f:
        for chunk in (b"1", b"2", b"3"):
            await conn.send(chunk)
            got, _ = await recv_exactly(peer, 1)
            assert got == chunk
    assert [e.packet.data for e in f.log] == [b"2"] and f.counts["dropped"] == 1


async def test_only_the_flow_is_queued(lab, family):
    client, server, conn, peer = await connected(lab, family)
    other = await client.connect(server, PORT, family=family)
    async with faults.intercept(conn, direction="both", when=lambda p: False) as f:
        await other.send(b"elsewhere")
        await conn.send(b"here")
        got, _ = await recv_exactly(peer, 4)
        await wait_until(lambda: f.counts["seen"] >= 2, what="the data and its ACK")
        await other.send(b"more elsewhere")
        assert conn.info().tcp_info["unacked"] == 0
    assert got == b"here"
    # the data segment and its ACK, nothing of the other connection
    assert f.counts["seen"] == 2 and f.counts["matched"] == 0


async def test_undo_releases_held_packets_themselves_not_retransmissions(lab, family):
    """The engine is the mangle table's last user: the held segment is
    accepted before the table goes, so it is the original that arrives."""
    client, server, conn, peer = await connected(lab, family)
    f = await faults.intercept(conn, direction="out", when=data, action=Action.delay(30)).start()
    await conn.send(b"held")
    await wait_until(lambda: f.counts["delayed"] == 1, what="the segment held")
    await f.stop()
    got, _ = await recv_exactly(peer, 4)
    assert got == b"held"
    assert conn.info().tcp_info["total_retrans"] == 0


async def test_undo_is_exact_and_releases_held_packets(lab, family):
    """Undo removes the rules (iptables-save identical in both families,
    mangle table included) and accepts what the engine still held."""
    client, server, conn, peer = await connected(lab, family)
    before = saved(client)
    f = await faults.intercept(client, port=PORT, direction="out", when=data,
                             action=Action.delay(30)).start()
    g = await faults.intercept(conn, direction="in", when=lambda p: False).start()
    during = saved(client)
    assert during.count("--queue-bypass") == 2 + 1   # f in both families, g in one
    assert f.queue_num != g.queue_num
    sent = await conn.send(b"held")
    await wait_until(lambda: f.counts["delayed"] == 1, what="the segment held")
    await f.stop()
    got, arrived = await recv_exactly(peer, 4)
    assert got == b"held" and arrived - sent.ended < 1.0
    assert saved(client) != before                   # g still there
    await g.stop()
    await f.stop()                                   # twice is fine
    assert saved(client) == before
    assert not f.active and not g.active


async def test_state_is_fresh_after_power_off_and_on(lab, family):
    """A packet fault alive across power_off/power_on: its rules, its queue
    and the mangle table died with the old namespace, so its undo touches
    nothing of the new one, and the harness's record of the host starts
    afresh (keyed by the namespace's generation, not its name): the next
    fault makes the mangle table and takes it away again."""
    from harness import _iptables
    client, server, conn, peer = await connected(lab, family)
    before = saved(client)
    f = await faults.intercept(client, port=PORT, direction="out", when=data,
                             action=Action.delay(30)).start()
    old = _iptables.tables(client)
    assert f.queue_num in old.queues and old.users == {("mangle", 4): 1, ("mangle", 6): 1}
    await faults.power_off(client)
    await faults.power_on(client)
    assert saved(client) == before                   # the new namespace never saw it
    await f.stop()                                   # nothing to remove, nothing raised
    assert not f.active and saved(client) == before
    fresh = _iptables.tables(client)
    assert fresh is not old and fresh.users == {} and fresh.queues == set()
    again = await client.connect(server, PORT, family=family)
    g = await faults.intercept(again, direction="out", when=data,
                             action=Action.delay(0.2)).start()
    assert fresh.users == {("mangle", family): 1} and fresh.created == {("mangle", family)}
    assert g.queue_num == f.queue_num                # the new namespace's first free number
    sent = await again.send(b"x")
    await wait_until(lambda: g.counts["delayed"] == 1, what="the segment held")
    await g.stop()
    assert saved(client) == before                   # the table it made is gone again
    assert sent.errno is None


async def test_tcp_flags_take_one_spelling(lab):
    """packets() and the helpers on it take the firewall's spelling
    ("FLAGS[/MASK]"); iptables' ("MASK", "COMP") pair is refused with the
    spelling to write instead, before anything is touched."""
    client, server, conn, peer = await connected(lab, 4)
    before, steps = saved(client), len(lab.undo)
    for make in (lambda f: faults.intercept(conn, tcp_flags=f),
                 lambda f: faults.drop_first(conn, tcp_flags=f),
                 lambda f: faults.drop_nth(conn, 2, tcp_flags=f),
                 lambda f: faults.drop(server, tcp_flags=f),
                 lambda f: faults.reject(server, tcp_flags=f, with_="tcp-reset")):
        with pytest.raises(InvalidArgument, match=r"iptables' \(MASK, COMP\) pair: write "
                                                  r"tcp_flags='FIN/FIN'"):
            make(("FIN", "FIN"))
        with pytest.raises(InvalidArgument, match=r"write tcp_flags='SYN,ACK/SYN,ACK,FIN,RST'"):
            make(("SYN,ACK,FIN,RST", "SYN,ACK"))
        make("FIN/FIN")                              # built, not started
    assert saved(client) == before and len(lab.undo) == steps
    f = faults.intercept(conn, direction="out", tcp_flags="FIN/FIN")
    assert [fl.tcp_flags.iptables() for fl in f.flows] == [["--tcp-flags", "FIN", "FIN"]]


async def test_predicate_errors_are_reported_at_undo(lab):
    client, _, conn, peer = await connected(lab, 4)
    f = await faults.intercept(conn, direction="out", when=lambda p: 1 / 0).start()
    await conn.send(b"still delivered")
    got, _ = await recv_exactly(peer, 15)
    assert got == b"still delivered"
    with pytest.raises(FaultError, match="ZeroDivisionError"):
        await f.stop()
    assert f.counts["errors"] >= 1


BAD = [
    (dict(count=0), "count must be an int >= 1, or None for every packet, got count=0"),
    (dict(count=-1), "got count=-1"),
    (dict(count=1.5), "got count=1.5 (float)"),
    (dict(skip=-1), "skip must be an int >= 0, got skip=-1"),
    (dict(action="explode"), "action must be an Action"),
    (dict(action=None), "action must be an Action"),
    (dict(direction="sideways"), "direction must be one of ('in', 'out', 'both'), got direction='sideways'"),
    (dict(tcp_flags="SYN,BOGUS"), "tcp_flags must be"),
    (dict(when=3), "when must be callable"),
    (dict(decide=lambda p: None, count=2), "decide replaces when/action/count/skip"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m.split(" ")[0] + str(i) for i, (_, m)
                                                     in enumerate(BAD)])
async def test_bad_input_is_refused_before_anything_is_touched(lab, kwargs, message):
    client, _, conn, _ = await connected(lab, 4)
    before, steps = saved(client), len(lab.undo)
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        faults.intercept(conn, **kwargs)
    assert saved(client) == before and len(lab.undo) == steps


async def test_bad_actions_and_targets(lab):
    client, server, conn, peer = await connected(lab, 4)
    with pytest.raises(InvalidArgument, match=r"seconds must be a number in \[0, 3600\], got "
                                              r"seconds=-1 \(int\) from Action.delay\(\)"):
        Action.delay(-1)
    with pytest.raises(InvalidArgument, match=r"n must be an int in 1..100, got n=0"):
        Action.duplicate(0)
    with pytest.raises(InvalidArgument, match="timeout must be"):
        Action.reorder(0)
    with pytest.raises(InvalidArgument, match="fn must be callable"):
        Action.rewrite(b"x")
    with pytest.raises(InvalidArgument, match="port must be given when the target is a host"):
        faults.intercept(client)
    with pytest.raises(InvalidArgument, match=r"port must be an int in 1..65535, got port=0"):
        faults.intercept(client, port=0)
    with pytest.raises(InvalidArgument, match="target must be a connected Socket or a Host"):
        faults.intercept("client", port=1)
    unconnected = await client.socket(4)
    with pytest.raises(InvalidArgument, match="which is not connected"):
        faults.intercept(unconnected)
    listener = await server.listen(PORT + 1)
    with pytest.raises(InvalidArgument, match="which is not connected"):
        faults.drop_first(listener)
    await peer.close()
    with pytest.raises(InvalidArgument,
                       match=r"was closed by the test; intercept\(\) needs an open socket"):
        faults.intercept(peer)
    with pytest.raises(InvalidArgument, match=r"n must be an int >= 1, got n=0"):
        faults.drop_first(conn, 0)
    assert saved(client) == "" and saved(server) == ""
