"""Habits a suite expects of a pytest plugin, run as a user's suite
(pytester, a fresh pytest process): a per-test deadline native to the lab,
no cascade after pytest-timeout fires, the lab section in junit XML, the
artifacts path in the report, the assertion shown as itself."""

import xml.etree.ElementTree as ET

import pytest

pytest_plugins = ["pytester"]


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W",
                                         "ignore::DeprecationWarning", *args)


DEADLINES = '''
    import asyncio, time, pytest, trio

    @pytest.mark.harness_timeout(1)
    async def test_trio_idle(lab):
        await lab.pair()
        await trio.sleep(60)

    @pytest.mark.harness_timeout(1)
    @pytest.mark.asyncio
    async def test_asyncio_idle(lab):
        await lab.pair()
        await asyncio.sleep(60)

    @pytest.mark.harness_timeout(1)
    def test_sync_waiting_on_the_lab(lab):
        client, server = lab.pair()
        listener = server.listen(7000)
        conn = client.connect(server, 7000)
        lab.wait_state(conn, "TIME_WAIT", timeout=60)    # never: nobody closes

    @pytest.mark.harness_timeout(1)
    def test_sync_busy_elsewhere(lab):
        lab.pair()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:               # no lab call to cancel
            time.sleep(0.05)

    def test_next_test_gets_a_fresh_lab(lab):
        client, server = lab.pair()
        listener = server.listen(7000)
        client.connect(server, 7000)
'''


def test_the_deadline_tears_the_lab_down_and_fails_the_test_in_every_style(pytester):
    pytester.makepyfile(DEADLINES)
    result = run(pytester)
    result.assert_outcomes(failed=4, passed=1)
    for name in ("test_trio_idle", "test_asyncio_idle", "test_sync_waiting_on_the_lab",
                 "test_sync_busy_elsewhere"):
        result.stdout.fnmatch_lines([
            f"*_ {name} _*",
            "E * harness.errors.LabTimeout: the test ran past its deadline of 1 s (marker "
            "harness_timeout): the lab's calls were cancelled and the lab torn down"])


def test_the_deadline_from_ini_and_command_line_and_its_validation(pytester, monkeypatch):
    pytester.makepyfile('''
        import trio

        async def test_idle(lab):
            await trio.sleep(60)
    ''')
    pytester.makeini("[pytest]\nharness_timeout = 1\n")
    run(pytester, "-rf").stdout.fnmatch_lines(["*deadline of 1 s (ini harness_timeout)*"])
    run(pytester, "-rf", "--harness-timeout=0.5").stdout.fnmatch_lines(
        ["*deadline of 0.5 s (--harness-timeout)*"])
    monkeypatch.setenv("HARNESS_TIMEOUT", "soon")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*harness_timeout must be seconds >= 0 (0: no deadline), got 'soon' (str) from env "
        "HARNESS_TIMEOUT*"])


def test_a_bad_marker_is_a_usage_error_naming_the_test(pytester):
    pytester.makepyfile('''
        import pytest

        @pytest.mark.harness_timeout(-3)
        def test_x(lab):
            pass
    ''')
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*got -3 (int) from @pytest.mark.harness_timeout on "
                                 "test_a_bad_marker_is_a_usage_error_naming_the_test.py::test_x*"])


def test_no_cascade_after_pytest_timeout_fires(pytester):
    pytester.makepyfile('''
        import pytest, trio

        async def test_hangs(lab):
            client, server = await lab.pair()
            await trio.sleep(60)

        @pytest.fixture
        async def stuck():
            await trio.sleep(60)

        async def test_hangs_in_a_fixture(lab, stuck):
            pass

        async def test_trio_after(lab):
            client, server = await lab.pair()
            listener = await server.listen(7000)
            await client.connect(server, 7000)

        def test_sync_after(lab):
            client, server = lab.pair()
            assert client.name == "client"
    ''')
    result = run(pytester, "-p", "timeout", "--timeout=3", "--timeout-method=signal", "-rf")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(["*_ test_hangs _*", "E * Failed: Timeout (>3.0s) from "
                                 "pytest-timeout.", "*- harness lab -*"])
    result.stdout.fnmatch_lines(["*_ test_hangs_in_a_fixture _*",
                                 "*Failed: Timeout (>3.0s) from pytest-timeout.*"])
    result.stdout.no_fnmatch_line("RuntimeError: Attempted to call run() from inside a run()")
    result.stdout.no_fnmatch_line("*TrioInternalError*")


def test_junit_xml_carries_the_lab_and_the_report_the_artifacts_path(pytester):
    pytester.makepyfile('''
        async def test_trio_fails(lab):
            client, server = await lab.pair()
            proc = await server.spawn(["sh", "-c", "echo hello"])
            await proc.wait()
            assert 1 == 2

        def test_sync_fails(lab):
            client, server = lab.pair()
            server.spawn(["sh", "-c", "echo hello"]).wait()
            assert 3 == 4
    ''')
    xml = pytester.path / "junit.xml"
    result = run(pytester, f"--junitxml={xml}")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*- harness lab -*", "lab slot *", "  host server: netns *",
                                 "artifacts: */lab (kept per harness_artifacts=failed)"])
    cases = ET.parse(xml).getroot().iter("testcase")
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["harness_lab"].startswith("lab slot "), props
        assert "host server: netns" in props["harness_lab"]
        assert (pytester.path / props["harness_artifacts"] / "server.0.out").read_text() == \
            "hello\n"


def test_a_single_failure_is_shown_as_itself_not_as_an_exception_group(pytester):
    pytester.makepyfile('''
        async def test_trio(lab):
            client, server = await lab.pair()
            assert client.name == "server"
    ''')
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E       AssertionError: assert 'client' == 'server'*"])
    result.stdout.no_fnmatch_line("*ExceptionGroup*")
