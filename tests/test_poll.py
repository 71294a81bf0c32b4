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


async def test_a_pause_between_a_look_and_the_clock_is_not_a_timeout():
    """The process may be descheduled right after a look (CI's loaded 2-core
    machine: a 4 ms expectation failed with its segment already sent).  What
    happened during the pause must still be seen: the clock is read before
    the look, so the last look always starts after the deadline."""
    deadline = time.monotonic() + 0.01
    calls = []

    def poll():
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.03)  # the pause: the condition comes true meanwhile
            return False
        return True
    assert await until(poll, deadline, timeout=lambda a: ObservationTimeout("missed")) is True
    calls.clear()
    deadline = time.monotonic() + 0.01
    assert until_sync(poll, deadline, timeout=lambda a: ObservationTimeout("missed")) is True


async def test_an_expected_segment_read_after_a_pause_past_the_window_still_matches():
    """harness._observe.expect.wait_segment under the same pause: the segment
    left in time (its kernel stamp is inside the window) but the reader was
    descheduled past the window's end before it read the tap."""
    from harness import _tcpline
    from harness._observe.expect import Isns, Seg, wait_segment
    t0 = time.monotonic()
    a, b = ("198.18.0.2", 8080), ("198.18.0.1", 40000)
    rst = Seg(t0 + 0.001, a, b, 1, 1, 0x14, 0, 0, ())
    looks = []

    def segments():
        looks.append(1)
        if len(looks) == 1:
            time.sleep(0.1)  # past hi (4 ms) + the 50 ms slack
            return []
        return [rst]
    got = await wait_segment(segments, _tcpline.parse("server > client R. 1:1(0) ack 1"), a, b,
                             Isns, {a[0]: "server", b[0]: "client"}, 0.004, t0, t0)
    assert got is rst
