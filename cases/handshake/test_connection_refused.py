"""A segment for a connection that does not exist is answered with a RST; a
SYN answered so fails connect() with ECONNREFUSED at once, whether the
peer's kernel sent the RST or a firewall forged it.

Seed 001: "通常情况下,因为TCP仅仅丢弃该数据并响应RST消息".  Holds: with no socket
for the segment, tcp_v4_rcv()/tcp_v6_rcv() reach no_tcp_socket and
tcp_v4_send_reset() answers (reason NO_SOCKET; to a SYN a RST-ACK acking
it).  In SYN_SENT tcp_rcv_synsent_state_process() accepts a RST that acks
the SYN and tcp_reset() reports ECONNREFUSED (ECONNRESET in other states).
iptables' REJECT --reject-with tcp-reset (nf_send_reset()) builds the same
segment without the kernel's TCP ever seeing the SYN: the client cannot tell.
"""

from harness import faults

SEED = "001"
CLAIM = "a segment for no connection is answered with a RST (a SYN: ECONNREFUSED)"
VERDICT = "holds"


async def refused(lab, client, server, port, family):
    """connect() from a bound socket: its outcome, its kernel events, the wire."""
    cap = await lab.capture()
    sock = await client.socket(family)
    assert (await sock.bind(0)).ok                               # to know its port
    out = await sock.connect(server, port)
    mine = [e for e in lab.timeline.events() if e.local == sock.local and e.source == "trace"]
    wire = [(p.ingress, p.flags) for p in cap.packets() if sock.local in (p.src, p.dst)]
    return sock, out, mine, wire


async def test_no_listener(lab, family, evidence):
    client, server = await lab.pair()
    sock, out, mine, wire = await refused(lab, client, server, 9000, family)  # nothing listens
    assert out.errno == "ECONNREFUSED" and out.duration < 1.0, out  # before a SYN resend (1 s)
    assert wire == [("client", "S"), ("server", "RA")]
    sent = lab.timeline.events(kind="rst_sent")                  # by the server's kernel
    assert [(e.reason, e.remote) for e in sent] == [("NO_SOCKET", sock.local)]
    assert [e.kind for e in mine if e.kind in ("rst_received", "error")] == [
        "rst_received", "error"]
    assert [e.errno for e in mine if e.kind == "error"] == ["ECONNREFUSED"]
    evidence("connect()", f"{out.errno} after {out.duration * 1000:.2f} ms, RST reason NO_SOCKET")


async def test_firewall_reset(lab, family, evidence):
    client, server = await lab.pair()
    await server.listen(9000, family=family)
    async with faults.reject(server, port=9000, with_="tcp-reset") as fw:
        sock, out, mine, wire = await refused(lab, client, server, 9000, family)
    assert await fw.matched() == 1
    assert out.errno == "ECONNREFUSED" and out.duration < 1.0, out  # before a SYN resend (1 s)
    assert wire == [("client", "S"), ("server", "RA")]           # the same answer
    assert lab.timeline.events(kind="rst_sent") == []            # but not from TCP
    assert [e.errno for e in mine if e.kind == "error"] == ["ECONNREFUSED"]
    evidence("connect()", f"{out.errno} after {out.duration * 1000:.2f} ms, RST from iptables")
