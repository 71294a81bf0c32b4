"""harness._check: the validators every entry point shares (the harness's own
error paths: no lab needed)."""

import math

import pytest

from harness import _check
from harness.errors import InvalidArgument


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, True, "5", None, [1]])
def test_seconds_refuses_what_is_not_a_duration(bad):
    with pytest.raises(InvalidArgument, match=r"timeout must be seconds >= 0, got "):
        _check.seconds(bad)


def test_seconds_bounds_none_and_origin():
    assert _check.seconds(0) == 0.0 and _check.seconds(2) == 2.0
    assert _check.seconds(None, none_ok=True) is None
    assert _check.seconds(math.inf) == math.inf  # "no deadline" where a caller allows it
    with pytest.raises(InvalidArgument, match=r"^ready_timeout must be seconds > 0, got 0 "
                                              r"\(from lab.container\(\)\)$"):
        _check.seconds(0, "ready_timeout", positive=True, where="lab.container()")
    with pytest.raises(InvalidArgument, match=r"must be seconds >= 0 or None, got -1"):
        _check.seconds(-1, none_ok=True)


async def test_every_timeout_of_the_api_uses_it(lab):
    """The entry points that took a timeout each had their own check (some
    let NaN or a string through to a TypeError deep inside)."""
    a, b = await lab.pair()
    listener = await b.listen(9000)
    proc = await a.spawn(["sleep", "5"])
    for call in (lambda: proc.wait(math.nan), lambda: proc.wait("1"),
                 lambda: lab.wait_state(listener, "LISTEN", timeout=math.nan),
                 lambda: lab.wait_until(lambda s: True, timeout=-1),
                 lambda: lab.timeline.wait_for(lambda e: True, timeout="1"),
                 lambda: proc.wait_output("x", timeout=True)):
        with pytest.raises(InvalidArgument, match="must be seconds"):
            await call()
