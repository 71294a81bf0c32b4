"""The pytest plugin: options, markers, the report section, skips.

Cheap to import (nothing heavy at module level); the fixtures live in
harness.fixtures and are registered from here.  Settings resolve
marker > command line > environment > ini, as pytest-timeout does.
"""

from __future__ import annotations

import inspect
import os
import signal

import pytest

pytest_plugins = ["harness.fixtures", "harness._guest_plugin"]

_KEEP_CHOICES = ("failed", "all", "none")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "network fault-injection harness")
    group.addoption("--harness-keep-lab", action="store_true", default=None,
                    help="leave a failed test's lab (namespaces, processes) in place for "
                         "debugging with 'ip netns exec'; removed by the next run once this "
                         "process is gone [env HARNESS_KEEP_LAB=1]")
    group.addoption("--harness-artifacts", choices=_KEEP_CHOICES, default=None,
                    help="which tests keep their lab artifacts (process output, captures): "
                         "failed (default), all, none [env HARNESS_ARTIFACTS]")
    parser.addini("harness_keep_lab", "default for --harness-keep-lab", type="bool", default=False)
    parser.addini("harness_artifacts", "default for --harness-artifacts", default="failed")


def setting(config: pytest.Config, name: str):
    """Command line > environment > ini."""
    cli = config.getoption(f"--harness-{name.replace('_', '-')}")
    if cli is not None:
        return cli
    env = os.environ.get(f"HARNESS_{name.upper()}")
    if env is not None:
        return env.lower() in ("1", "true", "yes") if name == "keep_lab" else env
    return config.getini(f"harness_{name}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*features): skip unless this machine has every feature; the "
        "skip names the missing one (python -m harness doctor lists them)")
    config.addinivalue_line(
        "markers", "slow: waits a fixed kernel constant (e.g. TIME_WAIT's 60 s)")
    artifacts = setting(config, "artifacts")
    if artifacts not in _KEEP_CHOICES:
        raise pytest.UsageError(f"harness_artifacts must be one of {_KEEP_CHOICES}, got "
                                f"{artifacts!r}")
    _sigterm_as_ctrl_c(config)


def _sigterm_as_ctrl_c(config: pytest.Config) -> None:
    """SIGTERM (timeout(1), docker stop, a cancelled CI job) takes Ctrl-C's
    path: the running test is interrupted, every lab torn down, the session
    stopped with exit code 2.  Only where nobody else handles SIGTERM."""
    import threading
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum, frame):
        handler = signal.getsignal(signal.SIGINT)  # trio's while a test runs, else Python's
        if not callable(handler):  # SIGINT ignored (started in the background)
            handler = signal.default_int_handler
        handler(signal.SIGINT, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Async tests that use the lab run under trio (pytest-trio), without
    requiring trio_mode in the user's ini."""
    for item in items:
        fn = getattr(item, "function", None)
        if fn is not None and inspect.iscoroutinefunction(fn) and \
                "lab" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("trio"):
            item.add_marker(pytest.mark.trio)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        from ._features import missing
        for feature in mark.args:
            reason = missing(feature)
            if reason:
                pytest.skip(f"requires {feature}: {reason}")


def _interrupt_leaf(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt inside an exception group, if any."""
    if isinstance(exc, KeyboardInterrupt):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            if (found := _interrupt_leaf(e)) is not None:
                return found
    return None


def _unsupported_leaf(exc: BaseException):
    from .errors import Unsupported
    if isinstance(exc, Unsupported):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_unsupported_leaf(e) for e in exc.exceptions]
        if leaves and all(leaves):
            return leaves[0]
    return None


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item):
    """pytest-trio sets up and tears down async fixtures inside the call, so
    the lab is gone before the report is made.  Wrap the test (before
    pytest-trio wraps it) to describe the lab at the moment of failure and to
    tell the lab fixture that the test failed."""
    fn = getattr(item, "obj", None)
    if fn is not None and inspect.iscoroutinefunction(fn) and \
            "lab" in getattr(item, "fixturenames", ()):
        import functools

        @functools.wraps(fn)
        async def observed(**kwargs):
            __tracebackhide__ = True
            try:
                await fn(**kwargs)
            except (pytest.skip.Exception, pytest.xfail.Exception):
                raise  # not a failure: nothing to describe
            except BaseException:
                lab = getattr(item, "_harness_lab", None)
                if lab is not None:
                    lab.failed = True
                    item._harness_failure = _describe(lab)
                raise
        item.obj = observed
        try:
            outcome = yield
        finally:
            item.obj = fn
    else:
        outcome = yield
    # Ctrl-C (or SIGTERM) under trio arrives wrapped in the test's exception
    # group, but pytest stops the session only for a bare KeyboardInterrupt
    # (the lab's teardown has already run inside the trio run).  A
    # pytest.skip()/xfail() in the group is re-raised by pytest-trio without
    # its reason: report the test's own.
    exc = outcome.exception
    if isinstance(exc, (pytest.skip.Exception, pytest.xfail.Exception)) and \
            isinstance(exc.__context__, BaseExceptionGroup):
        exc = exc.__context__
    if isinstance(exc, BaseExceptionGroup):
        interrupt = _interrupt_leaf(exc)
        if interrupt is not None:
            outcome.force_exception(KeyboardInterrupt().with_traceback(interrupt.__traceback__))
        elif len(leaves := _leaves(exc)) == 1 and \
                isinstance(leaves[0], (pytest.skip.Exception, pytest.xfail.Exception)):
            outcome.force_exception(leaves[0])


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if call.excinfo is not None and rep.failed:
        unsupported = _unsupported_leaf(call.excinfo.value)
        if unsupported is not None:  # a missing kernel feature is a skip, never a failure
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {unsupported}")
            return
    description = getattr(item, "_harness_failure", None)
    if description and rep.failed and rep.when == "call":
        rep.sections.append(("harness lab", description))


def _describe(lab) -> str:
    parts = []
    try:
        parts.append(lab.describe())
        if lab.slot is None:
            return parts[0]
        parts.extend(repr(snap) for snap in lab.snapshots().values())
        events = lab.timeline.events()[-25:]
        parts.append("last timeline events:\n  " + ("\n  ".join(map(repr, events)) or "(none)"))
    except Exception as exc:  # noqa: BLE001 - a report must not fail the run
        parts.append(f"(could not observe the lab: {exc})")
    return "\n".join(parts)
