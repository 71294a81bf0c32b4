"""The undo stack: every side effect pushes its inverse the moment it succeeds.

Like pytest's monkeypatch and the kernel selftests' defer queues: undo runs
last-in-first-out, each step at most once (so an owner that undid its effect
early, e.g. a fault's ``__aexit__``, makes the stack skip it), inside a
shielded and time-capped scope, and every failure is reported as
"undo 3 of 7 failed: ...".
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import trio

from .errors import CleanupError


class Undo:
    """One inverse action.  ``run()`` is idempotent."""

    __slots__ = ("label", "_fn", "_args", "done")

    def __init__(self, label: str, fn: Callable[..., Any], args: tuple):
        self.label, self._fn, self._args, self.done = label, fn, args, False

    async def run(self) -> None:
        if self.done:
            return
        self.done = True
        result = self._fn(*self._args)
        if inspect.isawaitable(result):
            await result

    def run_sync(self) -> None:
        """For undo steps known to be synchronous (used outside trio)."""
        if self.done:
            return
        self.done = True
        result = self._fn(*self._args)
        if inspect.isawaitable(result):  # pragma: no cover - programming error
            result.close()
            raise TypeError(f"undo {self.label!r} is async; use run()")


class UndoStack:
    def __init__(self) -> None:
        self._steps: list[Undo] = []
        self.pushed = 0  # how many steps were ever pushed

    def push(self, label: str, fn: Callable[..., Any], *args: Any) -> Undo:
        self.pushed += 1
        step = Undo(label, fn, args)
        self._steps.append(step)
        return step

    def __len__(self) -> int:
        return sum(not s.done for s in self._steps)

    async def unwind(self, *, timeout: float = 30.0) -> list[str]:
        """Run every pending step in reverse, each shielded from cancellation
        and capped at ``timeout`` seconds; return the failures.  One failing
        or hanging step never stops the others."""
        failures: list[str] = []
        steps, self._steps = self._steps, []
        total = len(steps)
        for n, step in enumerate(reversed(steps), 1):
            if step.done:
                continue
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + timeout
                try:
                    await step.run()
                except Exception as exc:  # noqa: BLE001 - report all, run the rest
                    failures.append(f"undo {n} of {total} failed ({step.label}): "
                                    f"{type(exc).__name__}: {exc}")
            if scope.cancelled_caught:
                failures.append(f"undo {n} of {total} timed out after {timeout:.1f}s ({step.label})")
        return failures

    async def unwind_or_raise(self, *, timeout: float = 30.0) -> None:
        failures = await self.unwind(timeout=timeout)
        if failures:
            raise CleanupError(failures)
