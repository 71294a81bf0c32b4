"""The three-way handshake exchanges both initial sequence numbers and
acknowledges each; the client is ESTABLISHED on the second segment, the
server only on the third.

Seed 000 (常见问题 3): "3次握手完成两个重要的功能,既要双方做好发送数据的准备工作(双方
都知道彼此已准备好),也要允许双方就初始序列号进行协商,这个序列号在握手过程中被发送和
确认".  Holds: SYN carries the client's ISN x, SYN-ACK the server's ISN y
with ack x+1, the final ACK ack y+1.  tcp_rcv_synsent_state_process()
makes the client ESTABLISHED (tcp_finish_connect()) before it sends that
ACK; the server holds only a request socket until the ACK arrives, when
tcp_check_req() creates the real socket (inet_csk_clone_lock(): LISTEN ->
SYN_RECV, then ESTABLISHED).  (The seed's other argument, that a two-way
handshake could deadlock, is about a protocol Linux does not implement;
test_final_ack_lost.py shows what the third segment is for.)
"""

SEED = "000"
CLAIM = "three-way handshake: both ISNs are sent and acknowledged"
VERDICT = "holds"


async def test_three_way_handshake(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    cap = await lab.capture()
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    syn, synack, ack = cap.packets(conn)[:3]
    assert [(p.ingress, p.flags) for p in (syn, synack, ack)] == [
        ("client", "S"), ("server", "SA"), ("client", "A")]
    x, y = syn.seq, synack.seq                                   # the two ISNs
    assert synack.ack == (x + 1) % 2**32                         # the server acknowledges x
    assert (ack.seq, ack.ack) == ((x + 1) % 2**32, (y + 1) % 2**32)  # and the client y

    states = [e for e in lab.timeline.events(kind="state") if e.source == "trace"]
    client_up = next(e for e in states if e.local == conn.local and e.new == "ESTABLISHED")
    accepted = [e for e in states if e.local == peer.local and e.remote == peer.remote]
    assert [(e.old, e.new) for e in accepted] == [("LISTEN", "SYN_RECV"),
                                                  ("SYN_RECV", "ESTABLISHED")]
    server_made = accepted[0]
    assert client_up.t < server_made.t                           # the server waits for segment 3
    evidence("ISNs", f"client {x}, server {y}")
    evidence("server socket made after client ESTABLISHED by",
             (server_made.t - client_up.t) * 1e6, " us")
