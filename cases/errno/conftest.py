"""The blocked-send cases' set-up: a program (blocking_sender.py) whose
send() sleeps in the kernel because the test's accepted socket never reads.

The program's socket is not a harness Socket; ``Endpoint`` names it by host
and 4-tuple, which is all lab.wait_state() and the timeline's conditions
need.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass

import pytest
import trio

import harness

PROGRAM = os.path.join(os.path.dirname(__file__), "blocking_sender.py")
BUFFER = 32768


@dataclass(frozen=True)
class Endpoint:
    """A socket some other process owns: its host and 4-tuple."""

    host: object
    local: tuple[str, int]
    remote: tuple[str, int]
    since: float


@dataclass
class BlockedSender:
    client: object
    server: object
    process: harness.Process
    sender: Endpoint          # the program's socket, in client
    peer: harness.Socket      # the test's accepted socket, in server: never reads

    def in_send(self) -> bool:
        """Whether the program sleeps in sk_stream_wait_memory(): a send()
        waiting for room in its send buffer (its kernel stack)."""
        try:
            with open(f"/proc/{self.process.pid}/stack") as f:
                return "sk_stream_wait_memory" in f.read()
        except FileNotFoundError:
            if os.path.exists(f"/proc/{self.process.pid}"):
                pytest.skip("the kernel shows no task stacks (/proc/PID/stack needs "
                            "CONFIG_STACKTRACE)")
            raise

    def window_zero(self) -> bool:
        """Whether the program's socket sends zero-window probes: the peer's
        window is zero, nothing it sends can be accepted."""
        info = [s for s in self.client.sockets()
                if s.local == self.sender.local and s.remote == self.sender.remote]
        return bool(info) and info[0].timer == "zero_window_probe"

    async def wait_blocked(self, *, window_zero: bool = False, timeout: float = 5.0) -> None:
        """Until the program sleeps in a send() (and, with ``window_zero``,
        the peer's window is zero).  Fails if a send() returned."""
        with trio.fail_after(timeout):
            while not (self.in_send() and (not window_zero or self.window_zero())):
                await trio.sleep(0.001)
        assert self.process.stdout() == "", "a send() returned: " + self.process.stdout()

    async def results(self, timeout: float = 5.0) -> list[harness.Outcome]:
        """The program's three send() outcomes, once it has exited."""
        assert await self.process.wait(timeout) == 0, self.process.stderr()
        return [harness.Outcome("send", d.get("value"), d.get("errno"), d["started"], d["ended"])
                for d in map(json.loads, self.process.stdout().splitlines())]


@pytest.fixture
def blocked_sender(lab, family):
    """start(prefill=False): a BlockedSender whose first send() is blocked
    (with ``prefill``, one that found the send buffer already full)."""

    async def start(*, prefill: bool = False) -> BlockedSender:
        since = time.monotonic()
        client, server = await lab.pair()
        listener = await server.listen(9000, family=family)
        await listener.setsockopt("SO_RCVBUF", BUFFER)   # inherited by the accepted socket
        argv = [sys.executable, PROGRAM, server.address(family), "9000"]
        proc = await client.spawn(argv + (["--prefill"] if prefill else []))
        with trio.fail_after(5):
            peer = await listener.accept()
        sender = Endpoint(client, peer.remote, peer.local, since)
        s = BlockedSender(client, server, proc, sender, peer)
        if prefill:
            with trio.fail_after(5):
                while not s.window_zero():
                    await trio.sleep(0.001)
            proc.signal(signal.SIGUSR1)                  # top up, then the blocking send
        await s.wait_blocked(window_zero=True)
        return s

    return start
