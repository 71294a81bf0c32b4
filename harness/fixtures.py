"""Fixtures: ``lab`` (a fresh lab per test, torn down after it) and
``family`` (4 and 6: every case runs on both by default)."""

from __future__ import annotations

import shutil

import pytest

from .plugin import setting


@pytest.fixture
async def lab(request: pytest.FixtureRequest, tmp_path):
    """A lab of namespace hosts.  Torn down after the test (unless it failed
    and --harness-keep-lab is set); its artifacts kept per
    --harness-artifacts."""
    from .lab import open_lab

    artifacts = tmp_path / "lab"
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
        policy = setting(request.config, "artifacts")
        if policy == "none" or (policy == "failed" and not failed):
            shutil.rmtree(artifacts, ignore_errors=True)


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def family(request) -> int:
    """The address family of the connections a case makes."""
    return request.param
