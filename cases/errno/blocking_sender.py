"""A program with one *blocking* TCP socket, as a C client has: the errno
cases need a send() that really sleeps in the kernel, which the harness's
own sockets (non-blocking, trio's) never do.

    python blocking_sender.py ADDRESS PORT [--prefill]

Connects with SO_SNDBUF 32 KiB; with --prefill, first fills its send buffer
with non-blocking sends (MSG_DONTWAIT) until EAGAIN, waits for SIGUSR1 (the
test sends it once the peer's window is zero, so that no ACK can free room
any more) and tops the buffer up again: the next call copies nothing.  Then
it makes three blocking send() calls: 8 MiB, 1 byte, 1 byte.
Each result is printed as one JSON line, {"value": n} or {"errno": "EPIPE"},
with "started" and "ended" (time.monotonic(), the timeline's clock).
SIGPIPE stays ignored (Python's default), so a broken pipe shows as EPIPE.
"""

import errno
import json
import signal
import socket
import sys
import time


def fill(s: socket.socket) -> None:
    while True:
        try:
            s.send(b"p" * 65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return


def main() -> None:
    address, port = sys.argv[1], int(sys.argv[2])
    prefill = "--prefill" in sys.argv
    if prefill:  # held until sigwait(), so that it cannot kill us
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    s.connect((address, port))
    if prefill:
        fill(s)
        signal.sigwait({signal.SIGUSR1})   # the peer's window is zero now
        fill(s)
    for size in (8 << 20, 1, 1):
        started = time.monotonic()
        try:
            result = {"value": s.send(b"x" * size)}
        except OSError as exc:
            result = {"errno": errno.errorcode.get(exc.errno, str(exc.errno))}
        result.update(started=started, ended=time.monotonic())
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
