"""A SYN arriving on an established connection (the peer rebooted and reuses
the port) is not taken as a new connection: it draws a challenge ACK and
the connection is left as it was.

Seed 004 (主机宕机, 宕机方传输数据): "如果客户端SYN报文中端口号与历史连接相同,服务端会
认为这个SYN是乱序的,所以回复历史连接中的正确ACK(Challenge ACK)".  Holds (RFC 5961
§4): tcp_validate_incoming() (net/ipv4/tcp_input.c) answers a SYN in a
synchronized state, in the window or not, with tcp_send_challenge_ack() (an
ACK with SND.NXT/RCV.NXT; TcpExt TCPSYNChallenge and TCPChallengeACK) and
drops it.  The SYN is forged from the peer's address at RCV.NXT
(faults.inject_syn); what a rebooted client then does with that ACK (RST,
then a new SYN) needs the client's own state and is not shown here.
"""

import harness
from harness import faults

SEED = "004"
CLAIM = "a SYN on an established connection is answered with a challenge ACK"
VERDICT = "holds"


async def test_syn_gets_a_challenge_ack(lab, family, evidence):
    client, server = await lab.pair(sysctls={"net.ipv4.tcp_invalid_ratelimit": 500})
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()
    assert (await conn.send(b"before")).value == 6 and (await peer.recv()).value == b"before"

    syn = await faults.inject_syn(peer)                          # "the client" sends a SYN again
    reply = await syn.wait_reply()
    assert (reply.flags, reply.seq, reply.ack) == ("A", syn.snd_nxt, syn.rcv_nxt)
    assert syn.counter("TCPSYNChallenge") == 1 and syn.counter("TCPChallengeACK") == 1
    assert lab.timeline.count(harness.rst_received(peer)) == 0
    await lab.wait_state(peer, "ESTABLISHED")
    assert (await conn.send(b"after")).value == 5 and (await peer.recv()).value == b"after"
    evidence("SYN on ESTABLISHED", f"challenge ACK (ack = RCV.NXT) after "
             f"{(reply.t - syn.sent.t) * 1e6:.0f} us; connection unchanged")
