"""A peer's FIN does not release a send() blocked in the kernel; the RST the
closed peer answers our next data with does: the send() returns the bytes it
had copied, and the next send() fails with EPIPE.

Seed 003 (三、 table, "服务器阻塞模式send,正阻塞在send函数未返回", client closes
normally): "客户端TCP发送FIN,服务器send函数返回成功(返回字节数是实际拷贝到发送缓冲区的
字节数)。客户端发送RST。如果服务器再次调用send,将返回errno[32]:Broken pipe".
Depends.  A peer that has not read everything answers close() with a RST, not
a FIN (test_blocked_send_peer_reset.py: then ECONNRESET comes first).  When it
has read everything, its FIN only sets RCV_SHUTDOWN on our side, and
sk_stream_wait_memory() waits for room, an error or SEND_SHUTDOWN: the send()
stays asleep in CLOSE_WAIT.  Our next segment reaches the closed (orphaned)
socket, which answers it with a RST (tcp_rcv_state_process(): abort on data);
tcp_reset() in CLOSE_WAIT sets sk_err = EPIPE, the blocked send()
returns its count (do_error: "if (copied) goto out") and the next two fail
with EPIPE.

So that the peer can read everything while our send() keeps pushing, what we
send is held back at the peer (a firewall drop) from the first read until
after its FIN, then let through.
"""

import harness
from harness import faults

SEED = "003"
CLAIM = "peer closes (FIN) while send() blocks: send returns its count, then EPIPE"
VERDICT = "depends"


async def test_fin_leaves_send_blocked_until_the_rst(lab, blocked_sender, evidence):
    s = await blocked_sender()                  # send(8 MiB) asleep, peer not reading

    async with faults.drop(s.server, direction="in", peer=s.client, port=9000):
        while s.peer.info().recv_queue:         # the peer reads all it has...
            assert (await s.peer.recv()).ok
        await s.peer.close()                    # ...so its close() sends a FIN
        await lab.wait_state(s.sender, "CLOSE_WAIT")
        await s.wait_blocked()                  # the FIN did not release the send()
        assert lab.timeline.count(lambda e: e.kind == "rst_sent", s.peer) == 0

    # our held-back data now reaches the closed socket: it aborts on data or,
    # when our ACK of its FIN came first and made it a FIN_WAIT2 timewait
    # socket (tcp_time_wait()), that one answers (tcp_timewait_state_process())
    rst = await lab.timeline.wait_for(harness.rst_sent(s.peer))
    assert rst.reason in ("TCP_ABORT_ON_DATA", "TCP_TIMEWAIT_SOCKET")
    blocked, second, third = await s.results()
    assert blocked.ok and blocked.value > 0
    assert (second.errno, third.errno) == ("EPIPE", "EPIPE")
    evidence("blocked send", f"{blocked.value} bytes, then {second.errno}, {third.errno}")
    evidence("released after the FIN by", rst.reason)
