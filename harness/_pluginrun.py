"""What the plugin wraps around a lab test while it runs (imported only when
a lab test runs, so the plugin module itself stays cheap).

- ``trio_observed``: the trio test body under its deadline; on failure the
  lab is described while it still exists (pytest-trio tears fixtures down
  inside the call).
- ``asyncio_deadline``: the same deadline for an asyncio test.  (The lab on
  the lab thread keeps its own deadline too: harness._bridge.)
- ``relayed_alarm``: pytest-timeout's signal method raises from a SIGALRM
  handler, wherever the main thread is.  Inside ``trio.run`` that is usually
  trio's scheduler (the test is idle in epoll): the exception escapes the run
  without unwinding it, fixtures are not torn down and trio's run state is
  left behind, so every later trio test fails with "Attempted to call run()
  from inside a run()".  While a trio lab test runs, the handler is replaced
  by a relay that cancels the test body; the original handler (which dumps
  the stacks and fails the test with pytest-timeout's message) is then called
  from inside the test's task, where raising unwinds normally.
- ``interrupt_as_cancel``: Ctrl-C (and SIGTERM) in a trio lab test cancels
  the run, which tears down and stops the session; a second one ends the
  process at once (``terminate_trio_run``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading

import pytest


def _deadline_of(item):
    from .plugin import test_timeout, timeout_message
    seconds, source = test_timeout(item)
    return seconds, timeout_message(seconds, source)


def trio_observed(item: pytest.Item, fn):
    import trio

    from .errors import LabTimeout
    from .plugin import _describe
    seconds, message = _deadline_of(item)

    @functools.wraps(fn)
    async def observed(**kwargs):
        __tracebackhide__ = True
        alarm = getattr(item, "_harness_alarm", None)
        try:
            deadline = trio.current_time() + seconds if seconds else float("inf")
            stuck = None  # the Cancelled, whose traceback shows where the test waited
            with trio.CancelScope(deadline=deadline) as scope:
                if alarm is not None:
                    alarm.arm(scope)
                try:
                    await fn(**kwargs)
                except trio.Cancelled as exc:
                    stuck = exc
                    raise
            if alarm is not None:
                alarm.deliver()          # pytest-timeout fired: its own failure, raised here
            if scope.cancelled_caught:
                raise LabTimeout(message) from stuck
        except (pytest.skip.Exception, pytest.xfail.Exception):
            raise  # not a failure: nothing to describe
        except BaseException:
            lab = getattr(item, "_harness_lab", None)
            if lab is not None:
                lab.failed = True
                item._harness_failure = _describe(lab)
            raise
        finally:
            if alarm is not None:
                alarm.disarm()
    return observed


def asyncio_deadline(item: pytest.Item, fn):
    from .errors import LabTimeout
    seconds, message = _deadline_of(item)
    if not seconds:
        return fn

    @functools.wraps(fn)
    async def bounded(*args, **kwargs):
        import asyncio
        try:
            async with asyncio.timeout(seconds):
                return await fn(*args, **kwargs)
        except TimeoutError:
            raise LabTimeout(message) from None  # the asyncio chain adds nothing
    return bounded


class _Alarm:
    def __init__(self, original):
        self.original = original
        self.fired: tuple | None = None
        self.delivered = False
        self._scope = self._token = None

    def arm(self, scope) -> None:
        import trio
        self._scope, self._token = scope, trio.lowlevel.current_trio_token()
        if self.fired:  # fired during fixture set-up: stop at once
            self._token.run_sync_soon(scope.cancel)

    def disarm(self) -> None:
        self._scope = self._token = None

    def deliver(self) -> None:
        __tracebackhide__ = True
        if self.fired and not self.delivered:
            self.delivered = True
            self.original(*self.fired)

    def handler(self, signum, frame) -> None:
        self.fired = (signum, frame)
        if self._scope is not None:
            self._token.run_sync_soon(self._scope.cancel)
            return
        # outside the test body (fixture set-up or teardown, inside trio.run):
        # cancel every nursery under the main task (pytest-trio's fixture
        # nursery); the failure is raised once trio.run has returned
        import trio
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return  # not in trio: delivered when the run returns
        token.run_sync_soon(_cancel_under_main_task)


terminated: str | None = None  # "SIGINT"/"SIGTERM": the signal that cancelled a trio run


def terminate_trio_run(signum: int) -> bool:
    """From a signal handler: cancel the trio run of this thread, if there is
    one, at trio's next turn, so that the test and its fixtures unwind and
    tear down; the plugin then stops the session (pytest_runtest_call).  A
    second signal while that teardown runs ends the process at once by the
    signal's default action: nothing is raised inside the run, whose code
    (pytest-trio's fixture bookkeeping) would otherwise be left waiting for
    ever; the next start sweeps what the process left.
    False: no trio run here."""
    global terminated
    try:
        import trio
        token = trio.lowlevel.current_trio_token()
    except (ImportError, RuntimeError):
        return False
    if terminated:
        signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
        return True  # not reached unless the default action is to ignore it
    terminated = signal.Signals(signum).name
    token.run_sync_soon(_cancel_under_main_task)
    return True


def _on_interrupt(signum, frame) -> None:
    """SIGINT while a trio lab test runs.  trio's own handler (installed by
    trio.run when SIGINT has Python's default handler) raises
    KeyboardInterrupt wherever the main thread is unless the code is
    KI-protected; pytest-trio's code is not, and an interrupt landing there
    left a fixture waiting for an event nobody would set.  This one cancels
    the run instead (terminate_trio_run); outside the run (just before or
    after it) it is Python's KeyboardInterrupt."""
    if not terminate_trio_run(signum):
        raise KeyboardInterrupt


_on_interrupt.harness = True  # the SIGTERM handler passes its own signal number here


@contextlib.contextmanager
def interrupt_as_cancel():
    """Around the trio.run of a trio lab test: SIGINT cancels the run
    (_on_interrupt).  Only where SIGINT still has Python's default handler
    (a user's own handler, or SIGINT ignored, is left alone)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is _on_interrupt:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _cancel_under_main_task() -> None:
    import trio
    for system in trio.lowlevel.current_root_task().child_nurseries:
        for task in system.child_tasks:
            for nursery in task.child_nurseries:
                nursery.cancel_scope.cancel()


@contextlib.contextmanager
def relayed_alarm(item: pytest.Item):
    original = signal.getsignal(signal.SIGALRM)
    if not callable(original) or threading.current_thread() is not threading.main_thread():
        yield
        return
    alarm = _Alarm(original)
    item._harness_alarm = alarm
    signal.signal(signal.SIGALRM, alarm.handler)
    try:
        yield
    except BaseException:
        alarm.deliver()  # fired outside the body: pytest-timeout's failure, not trio's
        raise
    finally:
        if signal.getsignal(signal.SIGALRM) == alarm.handler:
            signal.signal(signal.SIGALRM, original)
        item._harness_alarm = None
    alarm.deliver()  # fired after the body: fail now, outside trio
