"""After the peer's RST, the second send() "returns EPIPE" only in a process
that ignores SIGPIPE: with the default action the kernel kills the process
in that call.

Seed 003 (三、 table and 总之 1): "若服务器再次调用send,则返回-1,errno[32]:Broken
pipe"; "收到对端RST后,仍然调用send(),则返回Connection reset by peer,再次调用
send(),则返回Broken pipe".  Depends on the SIGPIPE disposition.  The first
send() reports the RST's ECONNRESET (sock_error()), with no signal; the second
fails the SEND_SHUTDOWN check, and sk_stream_error() then sends SIGPIPE unless
the call had MSG_NOSIGNAL: send_sig(SIGPIPE, current, 0).  A C program that
did not ignore it dies (the shell's "Broken pipe" is the signal's name, not an
errno); Python ignores SIGPIPE at start-up, so a Python program sees EPIPE.
"""

import pytest

import harness

SEED = "003"
CLAIM = "after the peer's RST, the second send() returns EPIPE (Broken pipe)"
VERDICT = "depends"


@pytest.mark.parametrize("sigpipe", ["default", "ignored"])
async def test_second_send_after_rst(lab, family, sigpipe, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    program = await client.program()                 # a separate process owns the socket
    if sigpipe == "default":
        await program.sigpipe_default()           # SIG_DFL, as in a C program
    conn = await program.connect(server, 9000, family=family)
    peer = await listener.accept()

    await peer.close(linger=0)                    # RST
    await lab.timeline.wait_for(harness.rst_received(conn))

    first = await conn.send(b"x")
    assert first.errno == "ECONNRESET"            # no signal for this one
    if sigpipe == "default":
        with pytest.raises(harness.HarnessError, match="died during send"):
            await conn.send(b"x")                 # never returns
        assert await program.process.wait(timeout=5) == -13         # killed by SIGPIPE
        evidence("SIG_DFL: second send", "process killed by SIGPIPE (returncode -13)")
    else:
        second = await conn.send(b"x")
        assert second.errno == "EPIPE" and program.process.returncode is None
        evidence("SIG_IGN: second send", second.errno)
