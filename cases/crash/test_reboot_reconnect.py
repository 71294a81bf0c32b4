"""A rebooted client that reconnects from its old source port meets its old
connection on the server: the SYN gets a challenge ACK, the client answers it
with a RST that tears the old connection down, and its SYN, resent a few
milliseconds later, makes the new connection.

Seed 004 (主机宕机, 宕机方传输数据): "如果客户端宕机之后重启,希望与同一服务端连接,会发送
SYN报文。如果客户端SYN报文中端口号与历史连接相同,服务端会认为这个SYN是乱序的,所以回复
历史连接中的正确ACK(Challenge ACK),但是客户端发现这个ACK不是自己希望收到的,就会发送
RST,双方断开连接。"  Holds, and the reconnect then succeeds at once.  Server:
tcp_validate_incoming() answers a SYN on an established connection with
tcp_send_challenge_ack() (RFC 5961 §4; tcp_challenge_ack_limit pinned
unlimited).  Client: tcp_rcv_synsent_state_process() finds the ACK
unacceptable and resets ("reset_and_undo"), with seq = the ACK's number,
which is exactly the server's rcv_nxt, so the server accepts the RST (RFC 5961
§3) and its old socket fails with ECONNRESET.  Before that, since the SYN has
not been retransmitted yet, the client re-arms its SYN timer to
TCP_TIMEOUT_MIN (2 jiffies: "Previous FIN/ACK or RST/ACK might be ignored"),
so the retransmitted SYN follows in milliseconds, not after the 1 s initial
RTO, and finds no old connection.
"""

import harness
from harness import faults

SEED = "004"
CLAIM = "rebooted client reconnects from the same port: challenge ACK, client RST"
VERDICT = "holds"


async def test_reconnect_meets_a_challenge_ack(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    old = await listener.accept()

    await faults.reboot(client)                 # the client forgets, the server does not
    cap = await lab.capture()
    again = await client.connect(server, 9000, family=family, bind_port=conn.local[1])
    new = await listener.accept()
    assert again.local == conn.local and new.remote == old.remote  # the old 4-tuple

    assert cap.summary(again) == ["client:S", "server:A", "client:R",   # challenge, RST
                                  "client:S", "server:SA", "client:A"]  # then the handshake
    syn, challenge, rst, syn2 = cap.packets(again)[:4]
    assert rst.seq == challenge.ack             # exactly the server's rcv_nxt
    # the old server socket's only RST: power_off's aborts died in its blackhole
    await lab.timeline.wait_for(harness.rst_received(old))
    assert (await old.recv()).errno == "ECONNRESET"
    assert syn2.t - syn.t < 0.1                 # TCP_TIMEOUT_MIN, not the 1 s initial RTO
    assert (await again.send(b"hello")).value == 5 and (await new.recv()).value == b"hello"
    evidence("SYN resent after", (syn2.t - syn.t) * 1000, " ms")
