"""One engine, any pytest style: the lab from asyncio and sync tests.

The harness is written once, in trio.  A trio test (pytest-trio) creates its
lab in its own ``trio.run`` and calls it natively.  For asyncio tests
(pytest-asyncio, anyio's marker on asyncio) and plain ``def`` tests the lab
lives in a trio event loop on a dedicated daemon thread, the *lab thread*,
and every call crosses to it:

- Every public coroutine method of the library's classes, every fault
  function and ``Fault.__aenter__/__aexit__`` is wrapped (``install()``).
  The wrapper calls the original in the caller's thread — so argument
  validation still raises at the call, before anything is touched — and
  looks at what came back.  Not a coroutine: returned as is.  A coroutine,
  and the caller is inside a trio run: returned as is (the native path; one
  ``isinstance`` test and one flag read).  Otherwise the coroutine is run on
  the lab thread, inside the current lab's call nursery: an asyncio caller
  gets an awaitable (an asyncio future settled with
  ``loop.call_soon_threadsafe``), a sync caller blocks until the result.
  Cancelling the asyncio awaiter cancels the trio task (and waits for it to
  finish, so the lab is never touched behind the test's back).
  A trio caller that is not the lab's run (anyio's trio backend) awaits a
  trio event set from the lab thread.
- Faults gain ``__enter__/__exit__``: ``with faults.drop(server):`` in a sync
  test is ``async with`` elsewhere.
- The lab itself is opened by a *holder* task on the lab thread, which also
  keeps the lab's deadline: on expiry it cancels the calls in flight (their
  callers get :class:`~harness.errors.LabTimeout`), refuses new ones and
  tears the lab down.

Why a thread and not trio's guest mode inside asyncio: a sync test has no
loop to host a guest, and one mechanism for both styles keeps one set of
failure modes.  The cost is two thread wake-ups per call, nothing on the
trio path (bench/bench_styles.py: a send + recv round trip took 77-109 µs
from trio, 0.68-2.3 ms sync and 1.0-2.4 ms from asyncio on this 2-core VM at
load 12; most of it is the GIL going to the woken lab thread and back).  Synchronous methods (``lab.timeline.states(conn)``,
``host.sockets()``, ``cap.summary()``) run in the caller's thread: they read
the kernel or data the lab thread appends to, never trio state.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import threading
from typing import Any, Callable

import trio

from .errors import LabTimeout

_CANCEL_GRACE = 30.0  # s a cancelled call may take to unwind (undo steps are time-capped)

# modules whose classes' coroutine methods are bridged, and fault modules
# whose public functions are
_CLASS_MODULES = ("_lab", "_host", "_sockets", "_process", "_peer", "_observe.timeline",
                  "_observe.capture", "_observe.snapshot", "faults._base",
                  "_topology.container", "_topology.netns",  # host.main of a container
                  "_observe.expect", "_observe.lastinfo", "faults._segments", "faults._stream")
_FAULT_MODULES = ("faults._firewall", "faults._packets", "faults._lastack", "faults._icmp",
                  "faults._process", "faults._sockets", "faults._host", "faults._inject",
                  "faults._netem", "faults._segments", "faults._stream")

class _Local(threading.local):
    bridged = False  # this thread's test uses a lab on the lab thread


_local = _Local()
_installed = False
_install_lock = threading.RLock()  # install() imports faults, whose import calls it


def _bridged(fn: Callable) -> Callable:
    if getattr(fn, "_harness_bridged", False):
        return fn

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        if not inspect.iscoroutine(result) or result.cr_code in _OWN_CODES or \
                (trio.lowlevel.in_trio_run() and not _local.bridged):
            return result  # (already bridged: a wrapped function returning a wrapped call)
        return LAB_THREAD.deliver(result)

    call._harness_bridged = True
    return call


def _sync_enter(self):
    """``with fault:`` — a sync test's ``async with fault:``."""
    if trio.lowlevel.in_trio_run() or _running_asyncio_loop() is not None:
        raise TypeError(f"use 'async with' for {self!r} in an async test ('with' is for "
                        f"sync tests)")
    return self.__aenter__()


def _sync_exit(self, *exc) -> None:
    return self.__aexit__(*exc)


def install() -> None:
    """Wrap the library's coroutine methods and fault functions (idempotent;
    done when ``harness`` or ``harness.faults`` is first used)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
        pkg = __name__.rpartition(".")[0]
        for name in _CLASS_MODULES:
            module = importlib.import_module(f"{pkg}.{name}")
            for cls in vars(module).values():
                if not (inspect.isclass(cls) and cls.__module__ == module.__name__):
                    continue
                for attr, value in list(vars(cls).items()):
                    public = not attr.startswith("_") or attr in ("__aenter__", "__aexit__")
                    if public and inspect.iscoroutinefunction(value):
                        setattr(cls, attr, _bridged(value))
                if "__aenter__" in vars(cls) and "__enter__" not in vars(cls):
                    cls.__enter__, cls.__exit__ = _sync_enter, _sync_exit
        faults = importlib.import_module(f"{pkg}.faults")
        for name in _FAULT_MODULES:
            module = importlib.import_module(f"{pkg}.{name}")
            for attr, value in list(vars(module).items()):
                if attr.startswith("_") or not inspect.isfunction(value) or \
                        value.__module__ != module.__name__:
                    continue
                wrapped = _bridged(value)
                setattr(module, attr, wrapped)
                if getattr(faults, attr, None) is value:
                    setattr(faults, attr, wrapped)


def _running_asyncio_loop():
    asyncio = sys.modules.get("asyncio")
    return asyncio._get_running_loop() if asyncio is not None else None


class _CallerCancelled(Exception):
    """The asyncio task awaiting a call was cancelled (never escapes)."""


class _Held:
    """One lab opened by the holder task, as seen from the test's thread."""

    def __init__(self, artifacts: str, timeout: float, timeout_message: str):
        self.artifacts, self.timeout, self.timeout_message = artifacts, timeout, timeout_message
        self.lab = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.closed = threading.Event()
        self.release: trio.Event | None = None
        self.expired = False


class LabThread:
    """The trio event loop of asyncio and sync tests (started on first use,
    a daemon thread: it holds no lab between tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._root: trio.Nursery | None = None
        self._calls: trio.Nursery | None = None
        self._expired: str | None = None

    # --- the loop ---------------------------------------------------------
    def _ensure(self) -> trio.lowlevel.TrioToken:
        with self._lock:
            if self._token is None:
                ready = threading.Event()
                threading.Thread(target=trio.run, args=(self._serve, ready),
                                 name="harness-lab", daemon=True).start()
                ready.wait()
            return self._token

    async def _serve(self, ready: threading.Event) -> None:
        async with trio.open_nursery() as root:
            self._root = root
            self._token = trio.lowlevel.current_trio_token()
            ready.set()
            await trio.sleep_forever()

    # --- calls ------------------------------------------------------------
    def submit(self, coro, done: Callable[[bool, Any], None]) -> Callable[[], None]:
        """Run ``coro`` on the lab thread; ``done(ok, value_or_exception)``
        is called there.  Returns a function that cancels it."""
        if self._expired is not None:
            coro.close()
            raise LabTimeout(self._expired)
        token = self._ensure()
        scope = trio.CancelScope()

        def spawn() -> None:
            if self._expired is not None:
                coro.close()
                done(False, LabTimeout(self._expired))
                return
            try:
                (self._calls or self._root).start_soon(self._run, coro, scope, done)
            except RuntimeError:  # the lab's call nursery is closing
                self._root.start_soon(self._run, coro, scope, done)

        token.run_sync_soon(spawn)
        return lambda: token.run_sync_soon(scope.cancel)

    async def _run(self, coro, scope: trio.CancelScope, done) -> None:
        try:
            with scope:
                value = await coro
        except trio.Cancelled:  # the deadline (the call nursery was cancelled)
            done(False, LabTimeout(self._expired or "the lab was closed during the call"))
            return
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller
            done(False, exc)
            return
        if scope.cancelled_caught:
            done(False, _CallerCancelled())
        else:
            done(True, value)

    def deliver(self, coro):
        if trio.lowlevel.in_trio_run():  # a trio run not the lab's: anyio's trio backend
            return self._in_foreign_trio(coro)
        loop = _running_asyncio_loop()
        if loop is not None:
            return self._in_asyncio(coro, loop)
        return self.run_blocking(coro)

    async def _in_foreign_trio(self, coro):
        token, finished, box = trio.lowlevel.current_trio_token(), trio.Event(), []

        def done(ok: bool, value: Any) -> None:
            box.append((ok, value))
            token.run_sync_soon(finished.set)

        cancel = self.submit(coro, done)
        try:
            await finished.wait()
        except trio.Cancelled:
            cancel()
            with trio.CancelScope(shield=True):
                await finished.wait()
            raise
        ok, value = box[0]
        if ok:
            return value
        raise value

    def run_blocking(self, coro):
        box: list = []
        finished = threading.Event()

        def done(ok: bool, value: Any) -> None:
            box.append((ok, value))
            finished.set()

        cancel = self.submit(coro, done)
        try:
            finished.wait()
        except BaseException:  # e.g. pytest-timeout's signal: stop the call, then go
            cancel()
            finished.wait(_CANCEL_GRACE)
            raise
        ok, value = box[0]
        if ok:
            return value
        raise value

    async def _in_asyncio(self, coro, loop):
        import asyncio
        fut = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not fut.done():
                (fut.set_result if ok else fut.set_exception)(value)

        def done(ok: bool, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(settle, ok, value)
            except RuntimeError:  # the loop is closed: nobody is waiting
                pass

        cancel = self.submit(coro, done)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancel()
            while not fut.done():  # the trio task finishes before the test goes on
                try:
                    await asyncio.shield(fut)
                except BaseException:  # noqa: BLE001 - cancelled again, or the call's error
                    pass
            raise

    # --- labs -------------------------------------------------------------
    def open_lab(self, artifacts: str, timeout: float, timeout_message: str):
        """Open a lab on the lab thread (blocking); returns its _Held.  Until
        close_lab, trio code in this thread (anyio's trio backend) is a
        foreign caller, not the lab's own run."""
        token = self._ensure()
        _local.bridged = True
        held = _Held(artifacts, timeout, timeout_message)
        self._expired = None
        token.run_sync_soon(self._root.start_soon, self._hold, held)
        held.ready.wait()
        if held.error is not None:
            held.closed.wait()
            raise held.error
        return held

    async def _hold(self, held: _Held) -> None:
        from ._lab import open_lab
        held.release = trio.Event()
        try:
            async with open_lab(artifacts=held.artifacts) as lab:
                async with trio.open_nursery() as calls:
                    self._calls = calls
                    held.lab = lab
                    held.ready.set()
                    with trio.move_on_after(held.timeout or float("inf")):
                        await held.release.wait()
                    if not held.release.is_set():
                        held.expired = True
                        self._expired = held.timeout_message
                        calls.cancel_scope.cancel()
                    self._calls = None
        except BaseException as exc:  # noqa: BLE001 - delivered to the fixture
            held.error = exc
        finally:
            self._calls = None
            held.ready.set()
            held.closed.set()

    def close_lab(self, held: _Held) -> None:
        """Tear the lab down (blocking); raise what the teardown raised."""
        self._token.run_sync_soon(held.release.set)
        held.closed.wait()
        _local.bridged = False
        if held.error is not None:
            raise held.error


LAB_THREAD = LabThread()
_OWN_CODES = frozenset({LabThread._in_asyncio.__code__, LabThread._in_foreign_trio.__code__})
