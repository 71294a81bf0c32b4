"""Run a test inside a guest kernel, and report it as if it ran here.

``@pytest.mark.kernel("uml-6.12-tt")`` (or ``--harness-kernel=host,uml-6.1``
for every test without the marker) parametrizes a test over kernels; the id
gains the kernel's name.  An item for a guest kernel is not run on the host:
a UML guest (harness._uml) with the host's files as its root runs
``python -m pytest <the same node ids>`` there, with the same options - one
guest session for all of the run's items of that kernel, started with the
run's first test (harness._guest_batch; the guest items are ordered last so
their results are usually there when their turn comes).
The guest's plugin writes every report it makes (setup, call, teardown) as a
line of JSON into a directory shared read-write with the host; the host
turns each line back into a report and logs it, so the outcome, the
traceback, captured output, sections and ``user_properties`` (the catalog's
evidence) are the guest's.  Everything of the test - its lab, sockets,
faults, clocks (trio's and time.monotonic are the guest's, virtual in
``uml-6.12-tt``) and assertions - happens in the guest kernel.

Settings resolve marker > command line > environment (HARNESS_KERNEL) > ini
(harness_kernel).  ``timeout=`` on the marker (or --harness-kernel-timeout)
bounds each item's run in the guest in wall seconds.  The guest's basetemp is in the
shared directory: whatever the test left there (its lab's artifacts, under
the artifacts policy) is copied to this run's basetemp and named in the
report.  A kernel that cannot boot here is a skip naming it and why; a skip
inside the guest names the kernel too.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import pytest

#: Set in the guest's environment: the kernel it runs, and where reports go.
ENV_KERNEL = "HARNESS_GUEST_KERNEL"
ENV_REPORTS = "HARNESS_GUEST_REPORTS"
DEFAULT_TIMEOUT = 300.0
_PARAM = "harness_kernel"
_TMP_PROP = "harness_guest_tmp"
#: Handed by the xdist controller to its workers: the run's guest-session directory.
_DIR_INPUT = "harness_guest_dir"
_BATCHES = pytest.StashKey()
_ROOT = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness")
    group.addoption("--harness-kernel", default=None, metavar="NAMES",
                    help="run every test without a kernel marker on these kernels, "
                         "comma-separated: host, uml-6.12-tt (built UML 6.12 in virtual "
                         "time), uml-6.1 (Debian's user-mode-linux) [env HARNESS_KERNEL]")
    group.addoption("--harness-kernel-timeout", type=float, default=None, metavar="SECONDS",
                    help=f"wall-clock limit of one test's guest run (default "
                         f"{DEFAULT_TIMEOUT:g})")
    parser.addini("harness_kernel", "default for --harness-kernel", default="host")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kernel(*names, timeout=None): run this test on these kernels (host, "
        "uml-6.12-tt, uml-6.1) instead of --harness-kernel's; a guest kernel boots for it")
    _cli_kernels(config)  # bad names are a usage error before anything runs


def _parse(value: str, where: str) -> list[str]:
    from ._kernels import get
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    if not names:
        raise pytest.UsageError(f"{where}: expected kernel names, got {value!r}")
    for name in names:
        try:
            get(name, where)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    return list(dict.fromkeys(names))


def _cli_kernels(config: pytest.Config) -> list[str]:
    cli = config.getoption("--harness-kernel")
    if cli is not None:
        return _parse(cli, "--harness-kernel")
    env = os.environ.get("HARNESS_KERNEL")
    if env:
        return _parse(env, "HARNESS_KERNEL")
    return _parse(config.getini("harness_kernel"), "ini harness_kernel")


@pytest.fixture(autouse=True)
def harness_kernel(request) -> str:
    """The kernel this test runs on (``host`` unless parametrized)."""
    return getattr(request, "param", "host")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _PARAM not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("kernel")
    if mark is not None:
        where = f"@pytest.mark.kernel on {metafunc.definition.nodeid}"
        if not mark.args:
            raise pytest.UsageError(f"{where}: name at least one kernel")
        names = _parse(",".join(mark.args), where)
    else:
        names = _cli_kernels(metafunc.config)
    if names != ["host"]:
        metafunc.parametrize(_PARAM, names, indirect=True, ids=names)


def _kernel_of(item: pytest.Item) -> str:
    spec = getattr(item, "callspec", None)
    return spec.params.get(_PARAM, "host") if spec is not None else "host"


# --------------------------------------------------------------------------
# in the guest: write every report to the shared file


def pytest_runtest_logreport(report) -> None:
    path = os.environ.get(ENV_REPORTS)
    if not path or _config is None:
        return
    _append(path, _config.hook.pytest_report_to_serializable(config=_config, report=report))


_config: pytest.Config | None = None


def pytest_runtest_logstart(nodeid, location) -> None:
    path = os.environ.get(ENV_REPORTS)
    if path and _config is not None:
        _append(path, {"start": nodeid})   # the host times each item of a guest session by it


def _append(path: str, data: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(data) + "\n")
        f.flush()
        os.fsync(f.fileno())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "teardown" and os.environ.get(ENV_REPORTS):
        tmp = (getattr(item, "funcargs", None) or {}).get("tmp_path")
        if tmp is not None:   # where this item's artifacts are (the host copies them)
            report.user_properties.append((_TMP_PROP, str(tmp)))
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session) -> None:
    global _config
    _config = session.config


# --------------------------------------------------------------------------
# on the host: run the item in a guest


# The guest sessions (harness._guest_batch): planned when collection ends,
# started with this process's first test, waited for (or stopped) when the
# session ends.


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """On the xdist controller: one guest-session directory for the run."""
    from . import _guest_batch
    config = node.config
    if config.stash.get(_ROOT, None) is None:
        config.stash[_ROOT] = _guest_batch.new_root()
    node.workerinput[_DIR_INPUT] = config.stash[_ROOT]


def pytest_unconfigure(config: pytest.Config) -> None:
    root = config.stash.get(_ROOT, None)
    if root is not None:                   # the controller's
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Guest items go last (each group in its order): their session starts
    when collection ends, so by the time a worker reaches them their results
    are there, and no worker sits waiting for a guest."""
    if os.environ.get(ENV_KERNEL):
        return
    guest = [item for item in items if _kernel_of(item) != "host"]
    if guest:
        items[:] = [item for item in items if _kernel_of(item) == "host"] + guest


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if os.environ.get(ENV_KERNEL) or config.option.collectonly:
        return
    from . import _guest_batch, _kernels
    wanted: dict[str, list[str]] = {}
    timeouts: dict[str, float] = {}
    for item in session.items:
        name = _kernel_of(item)
        if name == "host":
            continue
        try:
            timeouts[item.nodeid] = _timeout(item)
        except pytest.UsageError:
            continue                       # raised when the item's turn comes
        wanted.setdefault(name, []).append(item.nodeid)
    wanted = {k: v for k, v in wanted.items() if _kernels.unavailable_reason(k) is None}
    if not wanted:
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get(_DIR_INPUT):
        batches = _guest_batch.Batches(workerinput[_DIR_INPUT], own_root=False)
        workers = int(workerinput.get("workercount", 1))
    else:
        batches = _guest_batch.Batches(_guest_batch.new_root(), own_root=True)
        workers = 1
    for name, nodeids in wanted.items():
        batches.add(_guest_batch.plan(_kernels.get(name), nodeids, timeouts, batches.root,
                                      workers))
    config.stash[_BATCHES] = batches


def _start_sessions(config: pytest.Config) -> None:
    """Start the guest sessions beside the host's tests, once this process
    runs its first test: not earlier, so a booting guest does not slow the
    other xdist workers' collection (the run's first test waits for all of
    them) - and not before their turn comes when the SO_ERROR uprobe may be
    set (a guest does not survive it)."""
    batches = config.stash.get(_BATCHES, None)
    if batches is None or batches.started or os.environ.get("HARNESS_SO_ERROR_PROBE"):
        return
    batches.started = True
    for shard in batches.shards:
        batches.start(shard, _launcher(config, shard, batches))


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    batches = session.config.stash.get(_BATCHES, None)
    if batches is not None:
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or bool(
            session.shouldstop or session.shouldfail)
        batches.finish(interrupted)


def _launcher(config: pytest.Config, shard, batches):
    """Boots one guest running ``nodeids`` (see _guest_batch.Runner)."""
    from . import _kernels, _uml
    kernel = _kernels.get(shard.kernel)

    def launch(nodeids, basetemp, reports_path, watch):
        return _uml.run_in_guest(
            _guest_argv(config, nodeids, basetemp), modules=kernel.modules,
            kernel=kernel.binary(), kernel_args=kernel.args,
            timeout=sum(shard.timeouts[n] for n in nodeids) + 60, env=_guest_env(shard.kernel, reports_path),
            cwd=str(config.rootpath), writable=[shard.dir],
            remove=[batches.root if batches.own_root else shard.dir],
            sysctls=kernel.sysctls, watch=watch)
    return launch


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    name = _kernel_of(item)
    if os.environ.get(ENV_KERNEL):
        return None  # runs here (in the guest, the guest is "here")
    _start_sessions(item.config)
    if name == "host":
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = None
    batches = item.config.stash.get(_BATCHES, None)
    shard = batches.by_nodeid.get(item.nodeid) if batches is not None else None
    if shard is not None:
        res = batches.wait(shard, item.nodeid, _launcher(item.config, shard, batches))
        if res is not None:
            reports = _from_session(item, name, shard, res)
    if reports is None:                    # not in a session, or its runner died
        reports = run_item(item, name)
    # The host ran no setup for this item, but the previous host item left its
    # module's and session's fixtures set up for it: tear down here what the
    # next item does not need, as pytest's own teardown phase would.
    torn = _teardown_host_side(item, nextitem)
    if torn is not None:
        reports = [r for r in reports if r.when != "teardown"] + [torn]
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _teardown_host_side(item, nextitem):
    """None, or a failed teardown report when a host fixture's finalizer raised."""
    state = getattr(item.session, "_setupstate", None)
    if state is None:
        return None
    try:
        state.teardown_exact(nextitem)
    except Exception as exc:  # noqa: BLE001 - reported as this item's teardown error
        return _report(item, "teardown", "failed", f"host teardown: {exc!r}")
    return None


def _report(item, when: str, outcome: str, longrepr, duration: float = 0.0, sections=()):
    return pytest.TestReport(item.nodeid, item.location, {k: 1 for k in item.keywords},
                             outcome, longrepr, when, sections=list(sections),
                             duration=duration, user_properties=[])


def _guest_argv(config: pytest.Config, nodeids, basetemp: str) -> list[str]:
    argv = [sys.executable, "-m", "pytest", *nodeids, "-q", "-p", "no:cacheprovider",
            "-o", "addopts=", f"--basetemp={basetemp}", f"--rootdir={config.rootpath}"]
    if config.inipath is not None:
        argv += ["--config-file", str(config.inipath)]
    if config.pluginmanager.hasplugin("xdist"):
        argv += ["-p", "no:xdist"]
    kernels = config.getoption("--harness-kernel")
    if kernels is not None:
        argv.append(f"--harness-kernel={kernels}")
    for opt in ("--harness-artifacts",):
        value = config.getoption(opt)
        if value is not None:
            argv.append(f"{opt}={value}")
    return argv


def _timeout(item: pytest.Item) -> float:
    mark = item.get_closest_marker("kernel")
    value = mark.kwargs.get("timeout") if mark is not None else None
    if value is None:
        value = item.config.getoption("--harness-kernel-timeout")
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise pytest.UsageError(f"kernel timeout must be seconds > 0, got {value!r} "
                                f"(on {item.nodeid})")
    return float(value)


def run_item(item: pytest.Item, name: str) -> list:
    """Boot kernel ``name``, run ``item`` in it, return its reports (host objects)."""
    from . import _kernels, _names, _uml

    kernel = _kernels.get(name)
    reason = _kernels.unavailable_reason(name)
    if reason is not None:
        return _skipped(item, name, reason)
    timeout = _timeout(item)
    xdir = _names.owned_tempdir("guest")
    reports_path = os.path.join(xdir, "reports.jsonl")
    basetemp = os.path.join(xdir, "basetemp")
    t0 = time.monotonic()
    failure = None
    result = None
    try:
        try:
            result = _uml.run_in_guest(
                _guest_argv(item.config, [item.nodeid], basetemp), modules=kernel.modules,
                kernel=kernel.binary(), kernel_args=kernel.args, timeout=timeout,
                env=_guest_env(name, reports_path), cwd=str(item.config.rootpath),
                writable=[xdir], remove=[xdir], sysctls=kernel.sysctls)
        except _uml.GuestUnavailable as exc:
            return _skipped(item, name, str(exc))
        except _uml.GuestError as exc:  # GuestTimeout too
            failure = f"kernel {name}: {exc}"
        wall = time.monotonic() - t0
        reports = _read_reports(item, reports_path)
        artifacts = _keep_artifacts(item, _take_tmp(reports), name)
    finally:
        shutil.rmtree(xdir, ignore_errors=True)
    tail = ""
    if result is not None:
        tail = "\n".join(result.stdout.rstrip().splitlines()[-30:] +
                         result.stderr.rstrip().splitlines()[-30:])
    if failure is None and not _finished(reports):
        code = result.returncode if result is not None else "?"
        failure = (f"kernel {name}: the guest's pytest (exit {code}) reported nothing for "
                   f"{item.nodeid}:\n{tail}")
    console = result.console if result is not None else ""
    return _complete(item, name, reports, failure, result is not None, wall, artifacts, console)


def _from_session(item, name: str, shard, res: dict) -> list:
    """The reports of an item a guest session ran (its result line ``res``)."""
    if res.get("skip"):
        return _skipped(item, name, res["skip"])
    reports = [item.config.hook.pytest_report_from_serializable(config=item.config, data=d)
               for d in shard.reports_of(item.nodeid)]
    reports = [r for r in reports if r is not None]
    artifacts = _keep_artifacts(item, _take_tmp(reports), name)
    failure = f"kernel {name}: {res['failure']}" if res.get("failure") else None
    return _complete(item, name, reports, failure, True, float(res.get("wall", 0.0)), artifacts,
                     "")


def _guest_env(name: str, reports_path: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k != "TMPDIR" and not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT", "PYTEST_ADDOPTS"))}
    env.update({ENV_KERNEL: name, ENV_REPORTS: reports_path, "PYTHONDONTWRITEBYTECODE": "1"})
    from ._kernels import ENV_CONFIG, config_path
    config = config_path(name)
    if config:
        env[ENV_CONFIG] = config   # so hz() in the guest need not ask dpkg-query (seconds there)
    return env


def _finished(reports) -> bool:
    """Whether the guest got as far as a result for the item."""
    return any(r.when == "call" or r.skipped or r.failed for r in reports)


def _take_tmp(reports) -> str | None:
    """The item's tmp_path in the guest (from its teardown report), removed
    from the reports' properties."""
    tmp = None
    for r in reports:
        kept = []
        for prop in r.user_properties:
            if prop[0] == _TMP_PROP:
                tmp = prop[1]
            else:
                kept.append(prop)
        r.user_properties = kept
    return tmp


def _skipped(item, name: str, reason: str) -> list:
    skip = _report(item, "setup", "skipped", (str(item.path), item.location[1] or 0,
                                              f"Skipped: {_cannot(name, reason)}"))
    return _complete(item, name, [skip], None, False, 0.0, None, "")


def _read_reports(item, path: str) -> list:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed guest
        rep = item.config.hook.pytest_report_from_serializable(config=item.config, data=data)
        if rep is not None and getattr(rep, "nodeid", None) == item.nodeid:
            out.append(rep)
    return out


def _keep_artifacts(item, tmp: str | None, name: str) -> str | None:
    """Copy what the test left in its tmp_path in the guest to this run's basetemp."""
    if not tmp:
        return None
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp) for f in fs
             if not os.path.islink(os.path.join(d, f))]
    if not files:
        return None
    factory = getattr(item.config, "_tmp_path_factory", None)
    if factory is None:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.name)[:60]
    dest = str(factory.mktemp(f"guest-{name}-{safe}", numbered=True))
    # pytest's "<name>current" links point into the guest's (gone) basetemp: leave them
    shutil.copytree(tmp, dest, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if os.path.islink(os.path.join(d, n))])
    return dest


def _complete(item, name, reports, failure, ran, wall, artifacts, console) -> list:
    """The guest's reports, made whole (a killed or broken guest still ends
    in a failed report with why) and labelled with the kernel and times.
    ``ran``: a guest ran the item (the wall seconds are its)."""
    whens = {r.when for r in reports}
    failed_already = any(r.failed for r in reports)
    if failure is not None and not failed_already:
        when = "call" if "setup" in whens else "setup"
        reports = [r for r in reports if r.when != "teardown"]
        reports.append(_report(item, when, "failed", failure, duration=wall))
    if "teardown" not in {r.when for r in reports}:
        reports.append(_report(item, "teardown", "passed", None))
    guest = sum(r.duration for r in reports)
    for r in reports:
        r.user_properties.append(("kernel", name))
        if r.skipped and isinstance(r.longrepr, list) and len(r.longrepr) == 3:
            r.longrepr = tuple(r.longrepr)           # JSON made the (path, line, reason) a list
        if r.skipped and isinstance(r.longrepr, tuple) and len(r.longrepr) == 3:
            path, line, msg = r.longrepr
            if f"kernel {name}" not in msg:
                msg = msg.replace("Skipped: ", f"Skipped: on kernel {name}: ", 1)
            r.longrepr = (path, line, msg)
        if ran and (r.when == "call" or (r.when == "setup" and not r.passed)):
            r.user_properties.append(
                ("evidence", f"{name}: {guest:.1f} s guest time in {wall:.2f} s wall time"))
        if ran and (r.when in ("call", "teardown") or (r.when == "setup" and not r.passed)):
            # on the teardown report too: junit XML takes its <properties> from it
            r.user_properties.append(("guest_time", {"kernel": name, "guest_s": guest,
                                                     "wall_s": wall}))
        if r.failed:
            if artifacts:
                r.sections.append(("harness guest", f"artifacts of the guest run: {artifacts}"))
            if console.strip():
                r.sections.append(("harness guest console",
                                   "\n".join(console.rstrip().splitlines()[-20:])))
    return reports


def _cannot(name: str, reason: str) -> str:
    return reason if reason.startswith(f"kernel {name} ") else \
        f"kernel {name} cannot run here: {reason}"
