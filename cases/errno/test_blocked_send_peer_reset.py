"""A send() blocked in the kernel when the peer resets the connection
returns the bytes it had copied; the error comes with the next send():
ECONNRESET, then EPIPE.  A blocked send() that had copied nothing fails at
once with ECONNRESET.

Seed 003 (三、 table, "服务器阻塞模式send,正阻塞在send函数未返回"): with the client's
SO_LINGER {1,0} "客户端TCP发送RST,服务器函数返回成功(返回字节数是实际拷贝到发送缓冲区
的字节数)。若服务器再次调用send,则返回-1,errno[104]:Connection reset by peer。若再次
调用send,则返回-1,errno[32]:Broken pipe".  Depends on whether the call had
copied anything.  tcp_reset() sets sk_err = ECONNRESET and tcp_done() wakes
the sender in sk_stream_wait_memory(); tcp_sendmsg_locked() then jumps to
do_error, where "if (copied) goto out" returns the count and leaves sk_err for
the next call, which consumes it (sock_error()): ECONNRESET; after that the
SEND_SHUTDOWN check gives EPIPE.  With nothing copied, do_error reports
sk_err at once.

On Linux the peer does not need SO_LINGER {1,0} for this: a peer that has
not read what it received (the reason our send() blocks) answers close()
with a RST anyway (__tcp_close(): data_was_unread, reason TCP_ABORT_ON_CLOSE,
checked before SO_LINGER), so the table's plain-close column ends the same
way; test_blocked_send_peer_fin.py has the FIN.
"""

import pytest

import harness

SEED = "003"
CLAIM = "peer resets while send() blocks: send returns its count, then ECONNRESET, EPIPE"
VERDICT = "depends"

BIG = 8 << 20   # the program's first send(): far more than the buffers hold


@pytest.mark.parametrize("linger", [0, None], ids=["linger0", "plain-close"])
async def test_blocked_send_returns_its_count(lab, blocked_sender, linger, evidence):
    s = await blocked_sender()                  # send(8 MiB) asleep, peer not reading

    await s.peer.close(linger=linger)
    rst = await lab.timeline.wait_for(harness.rst_sent(s.peer))
    assert rst.reason == "TCP_ABORT_ON_CLOSE"   # unread data: RST, whatever SO_LINGER says

    blocked, second, third = await s.results()
    assert blocked.ok and 0 < blocked.value < BIG            # the bytes it had copied
    assert (second.errno, third.errno) == ("ECONNRESET", "EPIPE")
    if linger is None:                          # the table's plain-close column
        evidence("plain close: blocked send", f"{blocked.value} bytes, then {second.errno}, "
                                              f"{third.errno}")


async def test_blocked_send_that_copied_nothing_fails(lab, blocked_sender, evidence):
    s = await blocked_sender(prefill=True)      # buffer full before the blocking call

    await s.peer.close(linger=0)
    await lab.timeline.wait_for(harness.rst_received(s.sender))

    blocked, second, third = await s.results()
    assert (blocked.errno, second.errno, third.errno) == ("ECONNRESET", "EPIPE", "EPIPE")
    evidence("blocked send that copied nothing", f"{blocked.errno}, {second.errno}, "
                                                 f"{third.errno}")
