"""Fixtures: ``lab`` (a fresh lab per test, torn down after it) and
``family`` (4 and 6: every case runs on both by default).

``lab`` serves every test style (harness.plugin.style): for a trio test it
is an async-generator fixture that pytest-trio runs inside the test's trio
run; for an asyncio or a sync test the plugin's ``pytest_fixture_setup``
below opens the same kind of lab on the lab thread (harness._bridge) and
hands the test that Lab, whose calls are awaitable (asyncio) or blocking
(sync).  The fixture function is synchronous so that pytest-asyncio's auto
mode does not claim it; ``_force_trio_fixture`` tells pytest-trio it is
one of its own.
"""

from __future__ import annotations

import shutil

import pytest

from .plugin import TRIO, setting, style, style_error, test_timeout, timeout_message


def _lab(request: pytest.FixtureRequest, tmp_path):
    """A lab of namespace hosts.  Torn down after the test (unless it failed
    and --harness-keep-lab is set); its artifacts kept per
    --harness-artifacts.  Works from trio, asyncio and sync tests."""
    return _trio_lab(request, tmp_path)


_lab._force_trio_fixture = True
lab = pytest.fixture(name="lab")(_lab)


async def _trio_lab(request: pytest.FixtureRequest, tmp_path):
    from ._lab import open_lab

    artifacts = tmp_path / "lab"
    request.node._harness_artifacts = str(artifacts)
    keep_lab = bool(setting(request.config, "keep_lab"))
    failed = True  # until the test is known to have passed
    try:
        async with open_lab(artifacts=str(artifacts)) as the_lab:
            request.node._harness_lab = the_lab
            yield the_lab
            failed = the_lab.failed
            if keep_lab and failed:
                the_lab.keep = True
                request.node.add_report_section(
                    "call", "harness", f"lab kept for debugging:\n{the_lab.describe()}")
    finally:
        request.node._harness_lab = None
        _apply_artifact_policy(request, artifacts, failed)


def _apply_artifact_policy(request, artifacts, failed: bool) -> None:
    policy = setting(request.config, "artifacts")
    if policy == "none" or (policy == "failed" and not failed):
        shutil.rmtree(artifacts, ignore_errors=True)
        request.node._harness_artifacts = None


def _bridged_lab(fixturedef, request: pytest.FixtureRequest):
    """The lab of an asyncio or sync test, opened on the lab thread."""
    from ._bridge import LAB_THREAD, install
    item = request.node
    reason = style_error(item)
    if reason:
        raise pytest.UsageError(f"{item.nodeid}: the 'lab' fixture cannot serve this test: "
                                f"{reason}")
    install()
    tmp_path = request.getfixturevalue("tmp_path")
    artifacts = tmp_path / "lab"
    seconds, source = test_timeout(item)
    held = LAB_THREAD.open_lab(str(artifacts), seconds, timeout_message(seconds, source))
    item._harness_lab, item._harness_held = held.lab, held
    item._harness_artifacts = str(artifacts)
    keep_lab = bool(setting(request.config, "keep_lab"))

    def finish() -> None:
        the_lab = held.lab
        failed = the_lab.failed or held.expired
        item._harness_lab = None
        if keep_lab and failed:
            the_lab.keep = True
            item.add_report_section("teardown", "harness",
                                    f"lab kept for debugging:\n{the_lab.describe()}")
        try:
            LAB_THREAD.close_lab(held)
        finally:
            _apply_artifact_policy(request, artifacts, failed)

    fixturedef.addfinalizer(finish)
    return held.lab


@pytest.hookimpl(tryfirst=True)  # before pytest-trio, which claims ``lab`` for trio tests
def pytest_fixture_setup(fixturedef, request):
    if fixturedef.argname != "lab" or fixturedef.func is not _lab or \
            style(request.node) == TRIO:
        return None
    value = _bridged_lab(fixturedef, request)
    fixturedef.cached_result = (value, fixturedef.cache_key(request), None)
    return value


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A sync or asyncio test whose lab expired fails, even if it made no
    lab call after the deadline."""
    result = yield
    held = getattr(item, "_harness_held", None)
    if held is not None and held.expired:
        from .errors import LabTimeout
        raise LabTimeout(held.timeout_message)
    return result


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def family(request) -> int:
    """The address family of the connections a case makes."""
    return request.param
