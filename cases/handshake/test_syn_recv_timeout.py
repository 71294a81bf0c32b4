"""A server whose SYN-ACK is never acknowledged retransmits it
tcp_synack_retries times, then drops the request silently: no RST, and the
client, ESTABLISHED since the SYN-ACK, is half-open until it sends.

Seed 002 (Server端口状态转换): "等待Client的ACK到来,接收到ACK后,进入ESTABLISHED;
等待超时,进入CLOSED".  Holds, with what the seed leaves out: the server never
had a full socket to close.  A SYN creates a request socket
(TCP_NEW_SYN_RECV, shown as SYN_RECV by inet_diag); reqsk_timer_handler()
(net/ipv4/inet_connection_sock.c) resends the SYN-ACK after 1, 2, 4... s
(no linear phase on this side) and after tcp_synack_retries resends frees the
request without a word.  The client's next segment then reaches only the
listener, which answers an ACK with a RST (tcp_rcv_state_process() in LISTEN;
tcp_v4_send_reset()), and the client's call fails with ECONNRESET.  The
request goes at the second expiry, 3 s after the SYN, late by at most the
timer wheel's granularity for a 2 s timer (8/63 of it) and early by at most a
jiffy: checked as "gone no sooner" and "never seen after", so the test's own
observation delay (a busy machine) plays no part.
"""

import time
from types import SimpleNamespace

import trio

from harness import faults

JIFFY = 0.004  # HZ=250

SEED = "002"
CLAIM = "SYN_RCVD: with no ACK from the client, the server times out to CLOSED"
VERDICT = "holds"


async def test_syn_recv_times_out(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_synack_retries": 1})
    listener = await server.listen(9000, family=family)
    cap = await lab.capture()

    async with faults.drop(server, direction="in", port=9000, tcp_flags="ACK") as lost:
        conn = await client.connect(server, 9000, family=family)  # ESTABLISHED on the SYN-ACK
        # the server's request socket: the test holds no handle to it
        request = SimpleNamespace(host=server, local=conn.remote, remote=conn.local)
        assert (await lab.wait_state(request, "SYN_RECV")).timer == "retransmit"
        with trio.fail_after(5):
            while seen := [s for s in server.sockets(state="SYN_RECV")
                           if (s.local, s.remote) == (request.local, request.remote)]:
                last_seen = seen[0].snapshot_time
                await trio.sleep(0.001)                      # poll, as wait_state does
        gone = time.monotonic()
    assert await lost.matched() == 2                             # the ACK and the re-ACK

    syn = cap.packets(conn, flags="S")[0]
    synacks = [p.t - syn.t for p in cap.packets(conn, flags="SA")]
    assert len(synacks) == 2 and 1.0 <= synacks[1] < 1.1         # tcp_synack_retries=1 resend
    assert 3.0 - JIFFY <= gone - syn.t                           # dropped at the next expiry (+2 s)
    assert last_seen - syn.t < 3.0 + 2.0 * 8 / 63 + JIFFY        # ...not later
    assert cap.packets(conn, flags="R") == []                    # silently
    assert conn.info().state == "ESTABLISHED"                    # the client was never told

    assert (await conn.send(b"hello")).ok
    assert (await conn.recv()).errno == "ECONNRESET"             # the listener's RST
    assert cap.summary(conn)[-2:] == ["client:PA", "server:R"]
    evidence("SYN-ACK resent at", synacks[1], " s")
    evidence("request gone at", gone - syn.t, " s")
    evidence("client's first send", "accepted, then recv() ECONNRESET")
