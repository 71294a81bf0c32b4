"""A probability on drop and reject (xt_statistic random mode), against
the kernel: the share of packets dropped is within 4 standard deviations
of the requested one (bench/bench_rates.py shows the 3-sigma figures)."""

import math
import socket
import time

import pytest
import trio

from harness import InvalidArgument, faults


async def datagrams(client, server, n: int) -> int:
    """UDP datagrams received by the server, of n the client sent."""
    from harness import _netns
    with _netns.inside(server.ns_fd):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with _netns.inside(client.ns_fd):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((server.address(4), 9999))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i in range(n):
            tx.sendto(b"%d" % i, (server.address(4), 9999))
        got = 0
        rx.setblocking(False)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # all sent: what came is queued by now
            try:
                rx.recv(64)
                got += 1
            except BlockingIOError:
                if got:
                    break
                await trio.sleep(0.001)
        return got


@pytest.mark.parametrize("p", [0.1, 0.5])
async def test_drop_with_probability(lab, p):
    client, server = await lab.pair()
    n = 1000
    async with faults.drop(server, protocol="udp", port=9999, probability=p) as f:
        got = await datagrams(client, server, n)
        dropped = await f.matched()
    assert dropped == n - got  # the rule's counter is exactly the loss
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(dropped - n * p) < 4 * sigma, (dropped, n * p, sigma)


async def test_reject_with_probability_answers_those_it_takes(lab):
    client, server = await lab.pair()
    listener = await server.listen(9000)
    refused = 0
    async with faults.reject(server, port=9000, tcp_flags="SYN", with_="tcp-reset",
                             probability=0.5) as f:
        for _ in range(200):
            s = await client.socket(4)
            out = await s.connect(server, 9000)
            refused += out.errno == "ECONNREFUSED"
            await s.close(linger=0)
        assert refused == await f.matched()
    sigma = math.sqrt(200 * 0.25)
    assert abs(refused - 100) < 4 * sigma


async def test_probability_is_validated_before_anything(lab):
    client, server = await lab.pair()
    for bad in (0, 1.5, -0.1, True, "0.5"):
        with pytest.raises(InvalidArgument, match=r"probability must be a fraction in \(0, 1\]"):
            faults.drop(server, probability=bad)
    with pytest.raises(InvalidArgument, match="probability"):
        faults.reject(server, probability=2)
