"""The undo stack: reverse order, each step once, every failure reported,
time-capped.  (Error paths use plain functions: no kernel needed.)"""

import trio

from harness._undo import UndoStack
from harness.errors import CleanupError


async def test_unwinds_in_reverse_and_once():
    order = []
    stack = UndoStack()
    stack.push("a", order.append, "a")
    b = stack.push("b", order.append, "b")

    async def c():
        order.append("c")
    stack.push("c", c)
    await b.run()                      # undone early by its owner
    assert await stack.unwind() == []
    assert order == ["b", "c", "a"]
    assert await stack.unwind() == []  # safe to unwind twice
    assert order == ["b", "c", "a"]


async def test_every_failure_is_reported_and_the_rest_still_run():
    ran = []
    stack = UndoStack()
    stack.push("first", ran.append, 1)

    def boom():
        raise OSError(16, "busy")
    stack.push("second", boom)
    stack.push("third", ran.append, 3)
    failures = await stack.unwind()
    assert ran == [3, 1]
    assert failures == ["undo 2 of 3 failed (second): OSError: [Errno 16] busy"]


async def test_unwind_is_time_capped_and_shielded():
    stack = UndoStack()
    ran = []
    stack.push("quick", ran.append, 1)
    stack.push("hangs", trio.sleep_forever)
    with trio.CancelScope() as outer:
        outer.cancel()  # even a cancelled caller gets its cleanup
        failures = await stack.unwind(timeout=0.2)
    assert ran == [1]  # the hang was cut at its cap and the next step still ran
    assert failures == ["undo 1 of 2 timed out after 0.2s (hangs)"]


async def test_unwind_or_raise():
    stack = UndoStack()
    stack.push("bad", lambda: 1 / 0)
    try:
        await stack.unwind_or_raise()
    except CleanupError as exc:
        assert "ZeroDivisionError" in str(exc) and len(exc.failures) == 1
    else:
        raise AssertionError("no CleanupError")
