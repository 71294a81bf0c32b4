"""Drop the last ACK of a close (harness.faults._lastack), on the real kernel,
IPv4 and IPv6: the peer stays in LAST_ACK retransmitting its FIN, the
TIME_WAIT side re-ACKs every copy (and the engine drops each), and after
undo the next FIN is ACKed and the peer goes CLOSED.  Also: dropping a FIN,
a SYN-ACK; bad input refused before anything is touched."""

from __future__ import annotations

import re
import time

import pytest

from harness import InvalidArgument, retransmitted
from harness import faults
from helpers import wait_until

PORT = 9000


async def connected(lab, family, **kw):
    client, server = await lab.pair(**kw)
    listener = await server.listen(PORT, family=family)
    conn = await client.connect(server, PORT, family=family)
    peer = await listener.accept()
    return client, server, listener, conn, peer



def saved(host) -> str:
    return "".join(ln + "\n" for tool in ("iptables-save", "ip6tables-save")
                   for ln in host.run_sync([tool]).stdout.decode().splitlines()
                   if not ln.startswith("#"))


async def test_peer_stays_in_last_ack_until_undo(lab, family):
    client, server, listener, conn, peer = await connected(lab, family)
    # an unrelated connection between the same hosts closes normally meanwhile
    other = await client.connect(server, PORT, family=family)
    other_peer = await listener.accept()
    before = saved(client)

    f = await faults.drop_last_ack(conn).start()
    assert (await conn.send(b"ping")).ok and (await peer.recv()).value == b"ping"
    assert (await peer.send(b"pong")).ok and (await conn.recv()).value == b"pong"
    await conn.close()                                  # conn: the active closer
    await lab.wait_state(peer, "CLOSE_WAIT")
    await peer.close()
    await lab.wait_state(peer, "LAST_ACK")
    await lab.wait_state(conn, "TIME_WAIT")
    await other.close()
    await other_peer.close()
    await lab.wait_state(other_peer, "CLOSED")          # its last ACK went through

    # the peer retransmits its FIN (RTO, backing off) and stays in LAST_ACK
    await wait_until(lambda: lab.timeline.count(retransmitted(peer)) >= 2, what="2 FIN retransmits")
    assert peer.info().state == "LAST_ACK"
    # each FIN reached the TIME_WAIT side, which ACKed it; the engine dropped every ACK
    await wait_until(lambda: f.counts["dropped"] == f.fins >= 3, what="every ACK dropped")
    assert conn.info().state == "TIME_WAIT"
    assert f.counts["dropped"] == f.counts["matched"]    # nothing else was touched
    dropped = f.counts["dropped"]

    await f.stop()                                       # the next FIN is ACKed
    await lab.wait_state(peer, "CLOSED", timeout=4.0)
    assert f.counts["dropped"] == dropped
    assert conn.info().state == "TIME_WAIT"
    assert lab.timeline.count(retransmitted(peer)) >= 2
    assert saved(client) == before


async def test_count_drops_only_the_first_acks(lab, family):
    client, server, listener, conn, peer = await connected(lab, family)
    async with faults.drop_last_ack(conn, count=1) as f:
        await conn.close()
        await lab.wait_state(peer, "CLOSE_WAIT")
        await peer.close()
        # the first retransmitted FIN is re-ACKed from TIME_WAIT, and that ACK passes
        await lab.wait_state(peer, "CLOSED", timeout=2.0)
    assert f.counts["dropped"] == 1 and f.fins >= 2
    assert lab.timeline.count(retransmitted(peer)) >= 1


async def test_drop_the_first_fin(lab, family):
    client, server, listener, conn, peer = await connected(lab, family)
    async with faults.drop_nth_fin(conn, 1, direction="out") as f:
        closed = await conn.close()
        eof = await peer.recv()                          # arrives with the retransmitted FIN
    assert eof.value == b""
    assert eof.ended - closed.started >= 0.19    # the FIN left inside close(): from its start
    assert f.counts["dropped"] == 1
    assert lab.timeline.count(retransmitted(conn)) >= 1


async def test_drop_the_synack_delays_connect(lab, family):
    client, server = await lab.pair()
    await server.listen(PORT, family=family)
    async with faults.drop_synack(server, PORT, count=1) as f:
        t0 = time.monotonic()
        conn = await client.connect(server, PORT, family=family)
        took = time.monotonic() - t0
    # the client's SYN (or the server's SYN-ACK) is retransmitted after the
    # initial RTO of 1 s (RFC 6298 2.1, TCP_TIMEOUT_INIT)
    assert 0.95 <= took < 2.0, took
    assert f.counts["dropped"] == 1
    assert conn.info().state == "ESTABLISHED"


@pytest.mark.parametrize("count,shown", [(0, "count=0 (int)"), (-1, "count=-1 (int)"),
                                         ("2", "count='2' (str)"), (True, "count=True (bool)")])
async def test_bad_count_is_refused(lab, count, shown):
    client, server, listener, conn, peer = await connected(lab, 4)
    before, steps = saved(client), len(lab.undo)
    with pytest.raises(InvalidArgument, match=re.escape(f"count must be an int >= 1, or None for "
                                                        f"every packet, got {shown} from "
                                                        f"drop_last_ack()")):
        faults.drop_last_ack(conn, count=count)
    with pytest.raises(InvalidArgument, match=re.escape(f"got {shown} from drop_synack()")):
        faults.drop_synack(server, PORT, count=count)
    assert saved(client) == before and len(lab.undo) == steps


async def test_bad_sockets_and_parameters_are_refused(lab):
    client, server, listener, conn, peer = await connected(lab, 4)
    steps = len(lab.undo)
    unconnected = await client.socket(4)
    with pytest.raises(InvalidArgument, match=r"conn must be a connected Socket .* not "
                                              r"connected .* from drop_last_ack\(\)"):
        faults.drop_last_ack(unconnected)
    with pytest.raises(InvalidArgument, match="not connected"):
        faults.drop_last_ack(listener)
    with pytest.raises(InvalidArgument, match=r"conn must be a harness Socket .*, got "
                                              r"conn=<Host"):
        faults.drop_last_ack(client)
    await peer.close()
    with pytest.raises(InvalidArgument, match="was closed by the test; drop_last_ack"):
        faults.drop_last_ack(peer)
    with pytest.raises(InvalidArgument, match=r"n must be an int >= 1, got n=0 \(int\) from "
                                              r"drop_nth_fin\(\)"):
        faults.drop_nth_fin(conn, 0)
    with pytest.raises(InvalidArgument, match=r"direction must be one of \('in', 'out'\), got "
                                              r"direction='both'"):
        faults.drop_nth_fin(conn, 1, direction="both")
    with pytest.raises(InvalidArgument, match=r"port must be an int in 1..65535, got port=70000"):
        faults.drop_synack(server, 70000)
    assert saved(client) == "" and saved(server) == "" and len(lab.undo) == steps
