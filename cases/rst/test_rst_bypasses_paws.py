"""Timestamps (PAWS) discard an old data segment, but not an old RST: a RST
carrying a stale timestamp still resets the connection if its sequence
number is right.

Seed 004 (快速复用): "虽然有了时间戳控制可以避免历史报文,但是历史RST报文...就不会丢弃".
Holds for the timestamp part (which RST passes the sequence check is
test_rst_sequence_check.py).  tcp_validate_incoming() (net/ipv4/
tcp_input.c) applies PAWS first (RFC 7323 §5): a segment whose TSval is
older than ts_recent is dropped and counted (TcpExt PAWSEstab), and a
duplicate ACK goes back; but "Reset is accepted even if it did not pass
PAWS" (RFC 7323 §5.3 R1): a RST skips to the sequence check.  Here the
peer's next segment is aged 1 s (its TSval lowered by 1000) on arrival at
the client, once as data, once turned into a RST at RCV.NXT; the wire shows
the segment the peer sent.
"""

import struct

import harness
from harness import faults
from harness.faults import Action

SEED = "004"
CLAIM = "timestamps stop old segments, but an old RST is not discarded"
VERDICT = "holds"
# why a result differs on another kernel (the catalog table shows it)
KERNEL_NOTES = {
    'uml-6.1': 'tcp_rto_min_us is new in 6.11',
}

AGE_MS = 1000


def aged(raw: bytes, *, into_rst: bool = False) -> bytes:
    """The segment with its TSval AGE_MS older; as a bare RST-ACK if asked.
    (The engine fixes lengths and checksums.)"""
    p = bytearray(raw)
    tcp = (p[0] & 0x0F) * 4 if p[0] >> 4 == 4 else 40
    end = tcp + (p[tcp + 12] >> 4) * 4
    i = tcp + 20
    while i < end and p[i] != 0:                                 # TCP options, RFC 9293 3.1
        if p[i] == 1:
            i += 1
            continue
        if p[i] == 8:                                            # timestamps, RFC 7323 3
            tsval = struct.unpack_from("!I", p, i + 2)[0]
            struct.pack_into("!I", p, i + 2, (tsval - AGE_MS) % 2**32)
        i += p[i + 1]
    if into_rst:
        p[tcp + 13] = 0x14                                       # RST, ACK
        del p[end:]                                              # no payload
    return bytes(p)



def first_data(p):
    return p.payload_len > 0


def aged_rst(raw: bytes) -> bytes:
    return aged(raw, into_rst=True)


async def test_old_rst_passes_paws(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_timestamps": 1,
                                             "net.ipv4.tcp_rto_min_us": 200000})
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    before = client.counters("TcpExt")
    async with faults.intercept(conn, direction="in", when=first_data, count=1,
                              action=Action.rewrite(aged)) as old_data:
        assert (await peer.send(b"stale")).value == 5
        got = await conn.recv()                                  # only the retransmission
    assert old_data.counts["rewritten"] == 1 and got.value == b"stale"
    assert got.duration > 0.15                                   # one RTO (200 ms) late
    assert (client.counters("TcpExt"))["PAWSEstab"] - before["PAWSEstab"] == 1

    async with faults.intercept(conn, direction="in", when=first_data, count=1,
                              action=Action.rewrite(aged_rst)) as old_rst:
        assert (await peer.send(b"reset")).value == 5
        await lab.timeline.wait_for(harness.rst_received(conn))
    assert old_rst.counts["rewritten"] == 1
    assert (await conn.recv()).errno == "ECONNRESET"
    assert (client.counters("TcpExt"))["PAWSEstab"] - before["PAWSEstab"] == 1  # not counted
    evidence("data 1 s old", f"dropped by PAWS, delivered by the retransmission after "
             f"{got.duration:.2f} s")
    evidence("RST 1 s old, at RCV.NXT", "accepted: recv() ECONNRESET")
