"""tcp_info at the moment a socket dies, kept (harness._observe.lastinfo)."""

import pytest

from harness import InvalidArgument, entered, faults
from harness._observe.lastinfo import last_info


async def test_orphan_giving_up_keeps_its_last_tcp_info(lab, family):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_orphan_retries": 1})
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    async with faults.drop(server, port=9000):       # the FIN is never ACKed
        async with last_info(conn) as keep:
            await conn.close()                           # an orphan in FIN_WAIT1 now
            last = await keep.wait_gone(timeout=10)
    # the orphan died after tcp_orphan_retries=1... (tcp_orphan_retries(): at
    # least one retransmission); its last look shows the timer and backoff -
    # or no timer, when that look fell inside the final timer's handler:
    # tcp_write_timer_handler() clears icsk_pending before
    # tcp_retransmit_timer() gives up and kills the socket, and the dump
    # reads without the socket lock (once in 13 suite runs; back-to-back dumps
    # caught the same window at an earlier retransmission: FIN_WAIT1, no
    # timer, tcpi_retransmits 1).  tcp_info has the counts either way.
    ev = await lab.timeline.wait_for(entered(conn, "CLOSE"))
    assert last.state == "FIN_WAIT1"
    assert last.timer == "retransmit" or (last.timer is None and last.tcp_info["retransmits"] >= 1)
    assert last.tcp_info["backoff"] >= 1 and last.tcp_info["total_retrans"] >= 1
    # the last look came before the death (the tracepoint's clock is
    # converted to monotonic: no sub-ms order is claimed); how close before
    # is the poll interval plus how late trio wakes up, not asserted here
    assert last.snapshot_time < keep.gone_at and last.snapshot_time < ev.t + 0.001


async def test_owner_reads_tcp_info_after_the_kernel_closed_the_socket(lab):
    client, server = await lab.pair()
    listener = await server.listen(9000)
    conn = await client.connect(server, 9000)
    peer = await listener.accept()
    assert (await conn.send(b"x" * 3000)).value == 3000
    assert len((await peer.recv(4000)).value) > 0
    await peer.close(linger=0)
    await lab.wait_state(conn, "CLOSED")
    info = (await conn.getsockopt("TCP_INFO")).value
    # bytes_acked counts the SYN too on the active side (tcp_snd_una_update()
    # in tcp_rcv_synsent_state_process()); bytes_sent only data
    assert info["bytes_acked"] == 3001 and info["bytes_sent"] == 3000


async def test_bad_arguments(lab):
    client, server = await lab.pair()
    sock = await client.socket(4)
    with pytest.raises(InvalidArgument, match="needs a connected socket"):
        last_info(sock)
    listener = await server.listen(9000)
    conn = await client.connect(server, 9000)
    with pytest.raises(InvalidArgument, match="every must be seconds"):
        last_info(conn, every=0)
