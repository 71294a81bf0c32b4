"""In CLOSE_WAIT a socket still reads every byte that arrived before the
peer's FIN, then reads end-of-stream (0, never an error) as often as it asks;
it can still send.

Seed 000 (四次挥手 2): "server端收到FIN并发送了ACK之后,进入close_wait状态,不能够在读取数据,
但仍然能向client发送数据"; seed 002 (CLOSE_WAIT): "自己只能发送数据,但不能接收数据".
Sending: holds (tcp_sendmsg_locked() sends in ESTABLISHED and CLOSE_WAIT
alike; the peer only shut its own direction).  Reading: depends.  Nothing new
can arrive after the FIN, but the FIN does not discard what came before it:
tcp_fin() sets RCV_SHUTDOWN and SOCK_DONE and leaves sk_receive_queue alone,
so tcp_recvmsg_locked() returns the earlier data first, then 0 on every later
call.  inet_diag's receive queue counts the unread bytes plus one for
the FIN (rcv_nxt - copied_seq).
"""

SEED = "000"
CLAIM = "CLOSE_WAIT: the socket can no longer read, but can still send"
VERDICT = "depends"


async def test_close_wait_reads_queued_data_then_eof(lab, family, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    conn = await client.connect(server, 9000, family=family)
    peer = await listener.accept()

    assert (await conn.send(b"before-fin")).value == 10
    assert (await conn.shutdown("w")).ok                 # the FIN follows the data
    cw = await lab.wait_state(peer, "CLOSE_WAIT")
    assert cw.recv_queue == 10 + 1                       # unread data, plus the FIN

    data, eof, again = await peer.recv(), await peer.recv(), await peer.recv()
    assert (data.value, eof.value, again.value) == (b"before-fin", b"", b"")
    reply = await peer.send(b"reply")
    assert reply.value == 5
    assert (await conn.recv()).value == b"reply"         # the half-closed closer reads it
    assert peer.info().state == "CLOSE_WAIT"
    evidence("recv in CLOSE_WAIT", f"{data.value!r}, {eof.value!r}, {again.value!r}")
    evidence("send in CLOSE_WAIT", reply.value, " bytes")
