"""Polling with a deadline: the one loop behind the ``wait_*`` helpers.

The harness never sleeps to wait for the kernel; it asks, and asks again
until the answer is the awaited one or a deadline passes.  The first asks
come fast (most conditions hold within a millisecond: a link's qdisc, a
state change after a packet), then the interval doubles up to ``longest``
so a long wait costs little CPU.  The timeout error is the caller's, built
from the last answer, so it can say what was seen instead.

    info = await until(lambda: observe(ep), deadline,
                       done=lambda seen: state_of(seen) == "TIME_WAIT",
                       timeout=lambda seen: ObservationTimeout(f"... it is {seen}"))
"""

from __future__ import annotations

import inspect
import time
from typing import Callable, TypeVar

import trio

T = TypeVar("T")

FIRST, LONGEST = 0.0002, 0.01


def _check(deadline: float) -> None:
    from .errors import InvalidArgument
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        raise InvalidArgument(f"deadline must be a time.monotonic() value, got {deadline!r}")


async def until(poll: Callable[[], T], deadline: float, *,
                done: Callable[[T], bool] = bool,
                timeout: Callable[[T], BaseException],
                first: float = FIRST, longest: float = LONGEST) -> T:
    """Call ``poll()`` until ``done(answer)``; return that answer.  Once
    ``deadline`` (time.monotonic()) has passed with the condition false,
    raise ``timeout(last answer)``.  The clock is read before each poll, so
    the last poll always starts after the deadline: a process descheduled
    between a poll and its clock reading cannot miss what happened in the
    pause (the observation's own delay is never counted against the
    condition).  ``poll`` runs on the loop: it must be
    quick (an inet_diag dump, a file read), as every caller's is; it may be
    async (its answer is then awaited)."""
    _check(deadline)
    delay = first
    while True:
        expired = time.monotonic() >= deadline
        answer = poll()
        if inspect.isawaitable(answer):
            answer = await answer
        if done(answer):
            return answer
        if expired:
            raise timeout(answer)
        await trio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, longest)


def until_sync(poll: Callable[[], T], deadline: float, *,
               done: Callable[[T], bool] = bool,
               timeout: Callable[[T], BaseException],
               first: float = 0.0001, longest: float = LONGEST) -> T:
    """``until`` for a worker thread (building a lab): sleeps the thread."""
    _check(deadline)
    delay = first
    while True:
        expired = time.monotonic() >= deadline
        answer = poll()
        if done(answer):
            return answer
        if expired:
            raise timeout(answer)
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, longest)
