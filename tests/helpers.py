"""Helpers shared by the harness's own tests."""

import os
import re
import sys
import time

import trio


async def wait_until(fn, *, timeout: float = 3.0, what: str = "condition"):
    """Poll ``fn`` until it returns a truthy value (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        expired = time.monotonic() >= deadline  # before the look (see harness._poll)
        value = fn()
        if value:
            return value
        if expired:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {value!r})")
        await trio.sleep(delay)
        delay = min(delay * 2, 0.02)


async def rules(*hosts) -> dict:
    """The hosts' firewall state (iptables-save, ip6tables-save, the nft
    ruleset), counters and comments stripped."""
    out = {}
    for h in hosts:
        for argv in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
            text = (await h.run(argv)).stdout.decode()
            out[(h.name, argv[0])] = [re.sub(r"\[\d+:\d+\]", "", line) for line in
                                      text.splitlines() if not line.startswith("#")]
    return out


async def still_works(a, b):
    """Data flows both ways between two connected sockets."""
    assert (await a.send(b"ping")).value == 4
    assert (await b.recv()).value == b"ping"
    assert (await b.send(b"pong")).value == 4
    assert (await a.recv()).value == b"pong"


_LAUNCH = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)    # PR_SET_PDEATHSIG: survives the exec
if os.getppid() != int(sys.argv[1]):
    os._exit(70)                               # the test process died before that
how = signal.SIG_IGN if sys.argv[2] == "ignored" else signal.SIG_DFL
signal.signal(signal.SIGINT, how)
signal.pthread_sigmask(signal.SIG_SETMASK, [])
os.execvp(sys.argv[3], sys.argv[3:])
"""


def dies_with_me(argv, sigint: str = "default") -> list[str]:
    """``argv`` as a process of a test's own: it gets SIGTERM when the test
    process dies, so a test run that is interrupted or killed leaves no
    orphan (a pytest or a script a test runs holds its lab for as long as
    it lives; SIGTERM makes it tear down).  It starts with SIGINT as a
    terminal gives it (``sigint="default"``; the run itself may have been
    started in the background, with SIGINT ignored) or ignored
    (``"ignored"``: a background start), and no signal blocked.  The
    launcher execs: the pid is the program's."""
    if sigint not in ("default", "ignored"):
        raise ValueError(f"sigint must be 'default' or 'ignored', got {sigint!r}")
    return [sys.executable, "-c", _LAUNCH, str(os.getpid()), sigint, *map(str, argv)]
