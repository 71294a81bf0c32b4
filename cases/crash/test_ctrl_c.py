"""Ctrl-C (SIGINT) ends a program and its TCP connections still close
normally: the peer gets a FIN.

Seed 003 (补充细节 4): "在很多时候,TCP连接的断开都会由TCP层自动进行,例如你CTRL+C终止你
的程序,TCP连接依然会正常关闭,你可以写代码试试。"  Holds.  With SIGINT's default
action (a C program that does not handle it) the kernel kills the process and
closes its sockets in do_exit() -> exit_files(), as for SIGKILL
(test_process_killed.py): tcp_close() sends a FIN.  A Python program's default
handler raises KeyboardInterrupt instead; the interpreter unwinds and exits
by re-raising SIGINT, and its socket is closed on the way: a FIN too.
"""

import signal
import sys

import pytest
import trio

SEED = "003"
CLAIM = "Ctrl-C ends the program and its connections still close normally"
VERDICT = "holds"

HOLDER = """
import signal, socket, sys
if sys.argv[3] == "SIG_DFL":
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # a C program's disposition
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
signal.pause()                                     # hold the connection until a signal
"""


@pytest.mark.parametrize("handler", ["SIG_DFL", "python"])
async def test_ctrl_c_closes_with_fin(lab, family, handler, evidence):
    client, server = await lab.pair()
    listener = await server.listen(9000, family=family)
    program = await client.spawn([sys.executable, "-c", HOLDER, server.address(family),
                                  "9000", handler])
    with trio.fail_after(5):
        peer = await listener.accept()

    program.signal(signal.SIGINT)               # what the terminal sends on Ctrl-C
    assert await program.wait(timeout=5) == -signal.SIGINT
    await lab.wait_state(peer, "CLOSE_WAIT")    # a FIN...
    assert (await peer.recv()).value == b""     # ...end of stream, not ECONNRESET
    assert not [e for e in lab.timeline.events(peer, kind="rst_received")]
    evidence(f"SIGINT ({handler})", "FIN, peer reads end of stream")
