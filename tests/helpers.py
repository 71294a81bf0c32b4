"""Helpers shared by the harness's own tests."""

import re
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


def dies_with_me(argv) -> list[str]:
    """``argv`` under ``setpriv --pdeathsig TERM``: the process gets SIGTERM
    when the thread that starts it dies, so a test run that is interrupted
    or killed leaves no orphan behind (a pytest or a script a test runs
    holds its lab for as long as it lives; SIGTERM makes it tear down).
    setpriv execs: the pid is the program's."""
    return ["setpriv", "--pdeathsig", "TERM", "--", *map(str, argv)]
