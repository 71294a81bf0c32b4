"""The pytest plugin: options, markers, test styles, deadlines, the report.

Cheap to import: nothing heavy at module level (no trio, none of the
library; tests/test_plugin_import.py measures it).  The fixtures live in
harness._fixtures and are registered from here.  Settings resolve
marker > command line > environment > ini, as pytest-timeout does.

**Styles.**  The ``lab`` fixture serves three kinds of test, chosen per test
function (:func:`style`): ``trio`` (an async test that pytest-trio runs: the
lab lives in the test's own trio run), ``asyncio`` (marked by pytest-asyncio
— strict or auto mode — or by anyio's marker on its asyncio backend) and
``sync`` (a plain ``def``; anyio on its trio backend counts as asyncio here,
its trio run not being the lab's).  The last two get the same lab, run by a trio
loop on a thread of its own (see harness._bridge).  A combination that
cannot work is a usage error at collection, saying what to write instead.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys

import pytest

pytest_plugins = ["harness._fixtures", "harness._guest_plugin"]

_KEEP_CHOICES = ("failed", "all", "none")
TRIO, ASYNCIO, SYNC = "trio", "asyncio", "sync"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "network fault-injection harness")
    group.addoption("--harness-keep-lab", action="store_true", default=None,
                    help="leave a failed test's lab (namespaces, processes) in place for "
                         "debugging with 'ip netns exec'; removed by the next run once this "
                         "process is gone [env HARNESS_KEEP_LAB=1]")
    group.addoption("--harness-artifacts", choices=_KEEP_CHOICES, default=None,
                    help="which tests keep their lab artifacts (process output, captures): "
                         "failed (default), all, none [env HARNESS_ARTIFACTS]")
    group.addoption("--harness-timeout", default=None, metavar="SECONDS",
                    help="deadline of each test that uses a lab: on expiry the lab's calls "
                         "are cancelled, the lab torn down and the test fails (0: none; "
                         "marker harness_timeout(s) overrides) [env HARNESS_TIMEOUT]")
    parser.addini("harness_keep_lab", "default for --harness-keep-lab", type="bool", default=False)
    parser.addini("harness_artifacts", "default for --harness-artifacts", default="failed")
    parser.addini("harness_timeout", "default for --harness-timeout (seconds, 0: none)",
                  default="0")
    parser.addini("harness_containers", "directories of your own image build contexts "
                  "(<dir>/<name>/Dockerfile), searched before the harness's own; relative to "
                  "the ini file [env HARNESS_CONTAINERS, ':'-separated]", type="paths",
                  default=[])


def setting(config: pytest.Config, name: str):
    """Command line > environment > ini."""
    cli = config.getoption(f"--harness-{name.replace('_', '-')}")
    if cli is not None:
        return cli
    env = os.environ.get(f"HARNESS_{name.upper()}")
    if env is not None:
        return env.lower() in ("1", "true", "yes") if name == "keep_lab" else env
    return config.getini(f"harness_{name}")


def _source(config: pytest.Config, name: str) -> str:
    if config.getoption(f"--harness-{name.replace('_', '-')}") is not None:
        return f"--harness-{name.replace('_', '-')}"
    if os.environ.get(f"HARNESS_{name.upper()}") is not None:
        return f"env HARNESS_{name.upper()}"
    return f"ini harness_{name}"


def _seconds(value, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(value)
        if not seconds >= 0 or seconds == float("inf"):
            raise ValueError
    except (TypeError, ValueError):
        raise pytest.UsageError(f"harness_timeout must be seconds >= 0 (0: no deadline), got "
                                f"{value!r} ({type(value).__name__}) from {where}") from None
    return seconds


def test_timeout(item: pytest.Item) -> tuple[float, str]:
    """The test's deadline in seconds (0: none) and where it came from."""
    mark = item.get_closest_marker("harness_timeout")
    if mark is not None:
        where = f"@pytest.mark.harness_timeout on {item.nodeid}"
        if len(mark.args) != 1 or mark.kwargs:
            raise pytest.UsageError(f"harness_timeout takes one argument, seconds; got "
                                    f"args={mark.args} kwargs={mark.kwargs} from {where}")
        return _seconds(mark.args[0], where), "marker harness_timeout"
    source = _source(item.config, "timeout")
    return _seconds(setting(item.config, "timeout"), source), source


def timeout_message(seconds: float, source: str) -> str:
    return (f"the test ran past its deadline of {seconds:g} s ({source}): the lab's calls were "
            f"cancelled and the lab torn down")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*features): skip unless this machine has every feature; the "
        "skip names the missing one (python -m harness doctor lists them)")
    config.addinivalue_line(
        "markers", "slow: waits a fixed kernel constant (e.g. TIME_WAIT's 60 s)")
    config.addinivalue_line(
        "markers", "harness_timeout(seconds): deadline of this test's lab (overrides "
        "--harness-timeout / HARNESS_TIMEOUT / ini harness_timeout); on expiry the lab is torn "
        "down and the test fails")
    artifacts = setting(config, "artifacts")
    if artifacts not in _KEEP_CHOICES:
        raise pytest.UsageError(f"harness_artifacts must be one of {_KEEP_CHOICES}, got "
                                f"{artifacts!r}")
    _seconds(setting(config, "timeout"), _source(config, "timeout"))
    _sigterm_as_ctrl_c(config)
    dirs = [str(p) for p in config.getini("harness_containers")]
    if dirs:
        from .errors import InvalidArgument
        from ._topology import container
        try:
            container.add_context_dirs(dirs, "ini harness_containers")
        except InvalidArgument as exc:
            raise pytest.UsageError(str(exc)) from None


def _sigterm_as_ctrl_c(config: pytest.Config) -> None:
    """SIGTERM (timeout(1), docker stop, a cancelled CI job) takes Ctrl-C's
    path: the running test is interrupted, every lab torn down, the session
    stopped with exit code 2.  Only where nobody else handles SIGTERM."""
    import threading
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum, frame):
        handler = signal.getsignal(signal.SIGINT)  # the plugin's or trio's while a test runs
        if getattr(handler, "harness", False):
            handler(signum, frame)   # a second SIGTERM then ends the process by SIGTERM
            return
        if callable(handler):
            handler(signal.SIGINT, frame)
            return
        # SIGINT ignored (started in the background): trio installed no
        # handler, and a KeyboardInterrupt raised here may land in trio's
        # scheduler and leave the run half-open, the lab not torn down.  In a
        # trio run the run is cancelled instead and the session stopped when
        # it has returned (pytest_runtest_call); elsewhere Python's way.
        from ._pluginrun import terminate_trio_run
        if not terminate_trio_run(signum):
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


# --- styles -------------------------------------------------------------------


def _test_function(item: pytest.Item):
    fn = getattr(item, "obj", None)
    inner = getattr(getattr(fn, "hypothesis", None), "inner_test", None)
    return inner or fn


def _uses_lab(item: pytest.Item) -> bool:
    return "lab" in getattr(item, "fixturenames", ())


def style(item: pytest.Item) -> str:
    """trio, asyncio or sync: how this test runs, hence how its lab does
    (decided at collection: pytest-trio later replaces the test function by
    a synchronous runner)."""
    known = getattr(item, "_harness_style", None)
    if known is not None:
        return known
    if not inspect.iscoroutinefunction(_test_function(item)):
        return SYNC
    if item.get_closest_marker("asyncio") or item.get_closest_marker("anyio"):
        return ASYNCIO
    return TRIO


def style_error(item: pytest.Item) -> str | None:
    """Why this lab test cannot run as written, and what to write instead."""
    if not inspect.iscoroutinefunction(_test_function(item)):
        return None
    trio_mark = item.get_closest_marker("trio")
    if trio_mark and item.get_closest_marker("asyncio"):
        return ("it is marked both trio and asyncio (pytest-trio's trio_mode marks every async "
                "test trio, pytest-asyncio's asyncio_mode=auto every one asyncio): keep one "
                "marker — @pytest.mark.trio or @pytest.mark.asyncio — and turn the other "
                "plugin's auto mode off")
    if trio_mark and item.get_closest_marker("anyio"):
        return ("it is marked both trio and anyio (pytest-trio's trio_mode marks every async "
                "test trio): drop one — @pytest.mark.trio for pytest-trio, or @pytest.mark.anyio "
                "(its trio backend works too) with trio_mode off")
    return None


@pytest.hookimpl(trylast=True)  # after pytest-trio's and pytest-asyncio's own marking
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Async lab tests with no asyncio/anyio marker run under trio
    (pytest-trio), without requiring trio_mode in the user's ini; impossible
    combinations stop the run here; deadlines are validated."""
    errors = []
    for item in items:
        if not _uses_lab(item):
            continue
        reason = style_error(item)
        if reason:
            errors.append(f"{item.nodeid}: the 'lab' fixture cannot serve this test: {reason}")
            continue
        test_timeout(item)
        item._harness_style = style(item)
        if style(item) == TRIO and not item.get_closest_marker("trio"):
            item.add_marker(pytest.mark.trio)
    if errors:
        raise pytest.UsageError("\n".join(errors))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        from ._features import missing
        for feature in mark.args:
            reason = missing(feature)
            if reason:
                pytest.skip(f"requires {feature}: {reason}")


# --- the call: deadline, failure description, pytest-timeout -------------------


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item):
    """pytest-trio sets up and tears down async fixtures inside the call, so
    the lab is gone before the report is made.  Wrap a trio test (before
    pytest-trio wraps it) to keep its deadline, to describe the lab at the
    moment of failure and to tell the lab fixture that the test failed.
    Asyncio tests get their deadline here too."""
    fn = getattr(item, "obj", None)
    kind = style(item) if fn is not None and _uses_lab(item) else None
    if kind == TRIO:
        from ._pluginrun import trio_observed
        item.obj = trio_observed(item, fn)
    elif kind == ASYNCIO:
        from ._pluginrun import asyncio_deadline
        item.obj = asyncio_deadline(item, fn)
    try:
        outcome = yield
    finally:
        if kind in (TRIO, ASYNCIO):
            item.obj = fn
    run = sys.modules.get("harness._pluginrun")
    if run is not None and run.terminated:   # a signal cancelled the trio run: stop
        outcome.force_exception(KeyboardInterrupt(run.terminated))
        return
    # A KeyboardInterrupt raised inside the trio run (by the test itself, or
    # by trio's handler where a user's SIGINT handler kept the plugin's out)
    # arrives wrapped in the test's exception group, but pytest stops the
    # session only for a bare KeyboardInterrupt (the lab's teardown has
    # already run inside the trio run).  A
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


def _interrupt_leaf(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt inside an exception group, if any."""
    if isinstance(exc, KeyboardInterrupt):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            if (found := _interrupt_leaf(e)) is not None:
                return found
    return None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Around pytest-trio's runner (the ``trio.run`` of the test): a signal
    from pytest-timeout must not land inside trio's scheduler (it would leave
    the run half-open, and every later trio test would fail with
    "Attempted to call run() from inside a run()"); it is relayed into the
    test as a cancellation instead.  Ctrl-C likewise cancels the run rather
    than raising wherever the run is; a second Ctrl-C ends the process
    (harness._pluginrun)."""
    if _uses_lab(pyfuncitem) and style(pyfuncitem) == TRIO:
        from ._pluginrun import interrupt_as_cancel, relayed_alarm
        with relayed_alarm(pyfuncitem), interrupt_as_cancel():
            return (yield)
    return (yield)


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
        leaf = _single_leaf(call.excinfo.value)
        if leaf is not call.excinfo.value and rep.when == "call":
            # the assertion as itself, not inside an ExceptionGroup tree
            rep.longrepr = item.repr_failure(pytest.ExceptionInfo.from_exception(leaf))
    if rep.when != "call" or not rep.failed:
        return
    lab = getattr(item, "_harness_lab", None)
    if lab is not None and getattr(item, "_harness_failure", None) is None:
        lab.failed = True          # a lab on the lab thread is still up: describe it now
        item._harness_failure = _describe(lab)
    description = getattr(item, "_harness_failure", None)
    artifacts = getattr(item, "_harness_artifacts", None)
    if setting(item.config, "artifacts") == "none":
        artifacts = None  # (a sync or asyncio test's lab is removed after this report)
    if description is None and artifacts is None:
        return
    text = description or ""
    if artifacts:
        text += (f"\nartifacts: {artifacts} (kept per harness_artifacts="
                 f"{setting(item.config, 'artifacts')})")
        item.user_properties.append(("harness_artifacts", artifacts))
    rep.sections.append(("harness lab", text.lstrip("\n")))
    item.user_properties.append(("harness_lab", text.lstrip("\n")))  # junit XML <properties>


def _unsupported_leaf(exc: BaseException):
    from .errors import Unsupported
    if isinstance(exc, Unsupported):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_unsupported_leaf(e) for e in exc.exceptions]
        if leaves and all(leaves):
            return leaves[0]
    return None


def _single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups, else ``exc``."""
    leaf = exc
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    return exc if isinstance(leaf, BaseExceptionGroup) else leaf


def _describe(lab) -> str:
    try:
        parts = [lab.describe()]
        if lab.slot is None:
            return parts[0]
    except Exception as exc:  # noqa: BLE001 - a report must not fail the run
        return f"(could not describe the lab: {type(exc).__name__}: {exc})"
    try:
        parts.extend(repr(snap) for snap in lab.snapshots().values())
        events = lab.timeline.events()[-25:]
        parts.append("last timeline events:\n  " + ("\n  ".join(map(repr, events)) or "(none)"))
    except Exception as exc:  # noqa: BLE001 - a report must not fail the run
        parts.append(f"(could not observe the lab: {exc})")
    return "\n".join(parts)
