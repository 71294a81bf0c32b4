"""A process that is killed or crashes does not leave its connections open:
its kernel closes them as close() would, with a FIN, or with a RST when the
process left received data unread.

Seed 003 (一、1): "没close但进程正常结束、进程core掉、在shell命令行中kill掉进程,都可
抽象成“正常”关闭。因为即使core掉,内核也会马上帮应用程序回收(close)socket文件描述符。
“正常”关闭,默认情况下...关闭端即客户端TCP层会发FIN包"; seed 004 (进程崩溃): "如果
进程崩溃,操作系统会在回收资源的时候代为进行挥手过程".  Depends on unread data.
do_exit() -> exit_files() -> fput() -> inet_release() -> tcp_close(): the
kernel, not the process, closes the socket, so SIGKILL and a crash (SIGSEGV,
core) end the same way.  __tcp_close() sends a FIN, unless data was received
and never read: then it sends a RST instead (data_was_unread, reason
TCP_ABORT_ON_CLOSE; RFC 2525 2.17) and the peer gets ECONNRESET, not end of
stream.
"""

import resource
import signal

import pytest
import trio

import harness

SEED = "003"
CLAIM = "a killed or crashed (core) process's connections are closed with a FIN"
VERDICT = "depends"


async def connected_program(lab, family):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    program = await client.program()               # a process that owns the socket
    conn = await program.connect(server, 9000, family=family)
    peer = await listener.accept()
    return program, conn, peer


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV],
                         ids=["SIGKILL", "SIGSEGV-core"])
async def test_killed_process_sends_fin(lab, family, sig, evidence):
    program, conn, peer = await connected_program(lab, family)
    resource.prlimit(program.process.pid, resource.RLIMIT_CORE, (0, 0))  # no core file

    program.process.signal(sig)
    assert await program.process.wait(timeout=5) == -sig
    await lab.wait_state(peer, "CLOSE_WAIT")    # the kernel sent the FIN
    assert (await peer.recv()).value == b""     # end of stream, not an error
    assert lab.timeline.count(lambda e: e.kind == "rst_sent", conn) == 0
    await lab.wait_state(conn, "FIN_WAIT2")     # the orphan waits for our FIN
    if sig == signal.SIGSEGV:
        evidence("crash (SIGSEGV)", "FIN, peer reads end of stream")


async def test_killed_process_with_unread_data_sends_rst(lab, family, evidence):
    program, conn, peer = await connected_program(lab, family)
    assert (await peer.send(b"unread")).value == 6
    with trio.fail_after(5):                    # until it sits in the program's buffer
        while (info := conn.info()) is None or info.recv_queue != 6:
            await trio.sleep(0.001)

    assert await program.process.kill() == -9
    rst = await lab.timeline.wait_for(harness.rst_sent(conn))
    assert rst.reason == "TCP_ABORT_ON_CLOSE"
    assert (await peer.recv()).errno == "ECONNRESET"
    await lab.wait_state(conn, "CLOSED", timeout=0)             # no FIN_WAIT, no TIME_WAIT
    evidence("SIGKILL with 6 bytes unread", f"RST ({rst.reason}), peer ECONNRESET")
