"""With tcp_synack_retries at its default 5, a server whose SYN-ACK is never
acknowledged resends it at 1, 3, 7, 15, 31 s and drops the request silently
at 63 s.  Run as is, in virtual time.

Seed 002 (Server端口状态转换): "等待Client的ACK到来 ... 等待超时,进入CLOSED".  Holds
(cases/handshake/test_syn_recv_timeout.py shows it compressed): the request
socket's timer, reqsk_timer_handler() (net/ipv4/inet_connection_sock.c),
resends the SYN-ACK after TCP_TIMEOUT_INIT << num_timeout (1, 2, 4, 8, 16 s:
no linear phase on this side) and frees the request at the expiry after the
5th resend (+32 s), without a RST.  Each wait fires up to its timer-wheel
level's granularity late.  IPv4 and IPv6 side by side.
"""

import time
from types import SimpleNamespace

import pytest
import trio

from harness import faults
from rules import KERNEL, gaps, times, window

SEED = "002"
CLAIM = "SYN_RCVD (Linux defaults): with no ACK from the client, the server times out to CLOSED"
VERDICT = "holds"
pytestmark = pytest.mark.kernel(KERNEL)

SYNACK_RETRIES = 5
RESENDS = [1.0, 3.0, 7.0, 15.0, 31.0]
GONE = 63.0


async def test_synack_default_schedule(lab, evidence):
    client, server = await lab.pair()
    assert int(server.sysctl("net.ipv4.tcp_synack_retries")) == SYNACK_RETRIES
    cap = await lab.capture()
    requests = []
    async with faults.drop(server, direction="in", port=9000, tcp_flags="ACK"):
        for family in (4, 6):
            await server.listen(9000, family=family)
            conn = await client.connect(server, 9000, family=family)  # ESTABLISHED on the SYN-ACK
            requests.append((family, conn, SimpleNamespace(host=server, local=conn.remote,
                                                           remote=conn.local)))
        for family, conn, request in requests:
            assert (await lab.wait_state(request, "SYN_RECV")).timer == "retransmit"
        syn0 = min(cap.packets(conn, flags="S")[0].t for _, conn, _ in requests)
        # nothing to wait for: the requests live until 63 s; poll only from there
        await trio.sleep(max(0.0, syn0 + window(32.0)[0] + RESENDS[-1] - 0.1 - time.monotonic()))
        gone = {}
        for family, conn, request in requests:
            await lab.wait_state(request, "CLOSED", timeout=10)
            gone[family] = time.monotonic()
    for family, conn, request in requests:
        syn = cap.packets(conn, flags="S")[0]
        synacks = [p.t - syn.t for p in cap.packets(conn, flags="SA")]
        assert len(synacks) == 1 + SYNACK_RETRIES, (family, synacks)
        waits = gaps(synacks) + [gone[family] - syn.t - synacks[-1]]
        for got, want in zip(waits, gaps([0.0] + RESENDS) + [GONE - RESENDS[-1]]):
            lo, hi = window(want)
            assert lo - 0.01 <= got <= hi + 0.02, (family, waits)
        assert cap.packets(conn, flags="R") == []                 # silently
        times(evidence, f"request gone after (IPv{family})", gone[family] - syn.t)
    evidence("SYN-ACKs resent at", ", ".join(f"{t:g}" for t in RESENDS) + " s")
