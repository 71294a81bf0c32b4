"""harness._poll: the one polling loop behind the wait_* helpers."""

import time

import pytest
import trio

from harness._poll import until, until_sync
from harness.errors import InvalidArgument, ObservationTimeout


async def test_until_returns_the_first_answer_that_is_done():
    answers = iter([0, 1, 2, 3, 4])
    got = await until(lambda: next(answers), time.monotonic() + 5, done=lambda a: a >= 3,
                      timeout=lambda a: ObservationTimeout(f"saw {a}"))
    assert got == 3


async def test_until_raises_the_callers_error_with_the_last_answer_at_the_deadline():
    calls = []
    start = trio.current_time()
    with pytest.raises(ObservationTimeout, match="still 7"):
        await until(lambda: calls.append(1) or 7, time.monotonic() + 0.05,
                    done=lambda a: a == 8, timeout=lambda a: ObservationTimeout(f"still {a}"))
    # not before the deadline, and asked more than once (the interval doubles
    # from 0.2 ms: at most ~9 asks in 50 ms, fewer on a loaded machine)
    assert trio.current_time() - start >= 0.05 and 2 <= len(calls) <= 12


def test_until_sync_and_bad_deadlines():
    answers = iter([False, False, True])
    assert until_sync(lambda: next(answers), time.monotonic() + 5,
                      timeout=lambda a: ObservationTimeout("never")) is True
    with pytest.raises(InvalidArgument, match="deadline must be a time.monotonic"):
        until_sync(lambda: True, None, timeout=lambda a: ObservationTimeout("x"))
