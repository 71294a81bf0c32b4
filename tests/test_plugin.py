"""The pytest plugin, from a user's suite: skips that name the missing
feature, options and their precedence, artifact retention.  (A machine
without a feature is simulated by patching the probe: the error path of the
harness itself, so a mock is fair.)"""


pytest_plugins = ["pytester"]

NO_NETEM = '''
import harness._features as f
f.host_netem = lambda: "kernel has no sch_netem (tc qdisc add ... netem failed)"
f.uml = lambda: "user-mode-linux not installed: /usr/bin/linux missing"
'''


def run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_requires_skips_with_the_exact_missing_feature(pytester):
    pytester.makeconftest(NO_NETEM)
    pytester.makepyfile('''
        import pytest

        @pytest.mark.requires("netem")
        async def test_needs_netem(lab):
            raise AssertionError("must not run")
    ''')
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([
        "*requires netem: kernel has no sch_netem (tc qdisc add ... netem failed); and no "
        "user-mode Linux guest: user-mode-linux not installed: /usr/bin/linux missing*"])


def test_unknown_feature_is_a_clear_error(pytester):
    pytester.makepyfile('''
        import pytest

        @pytest.mark.requires("warp_drive")
        def test_x():
            pass
    ''')
    result = run(pytester)
    result.stdout.fnmatch_lines(["*unknown feature 'warp_drive'; known: [[]*'netem'*"])
    assert result.ret != 0


def test_unsupported_at_run_time_is_a_skip_not_a_failure(pytester):
    pytester.makepyfile('''
        from harness import faults

        async def test_tc_netem_here(lab):
            client, server = await lab.pair()
            async with faults.netem(server, delay=0.01, engine="tc"):
                pass
    ''')
    pytester.makeconftest(NO_NETEM)
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs sch_netem in this kernel*"])


def test_artifacts_are_kept_for_failed_tests_only_by_default(pytester):
    pytester.makepyfile('''
        import os, pathlib

        async def _spawn(lab, tmp_path):
            client, server = await lab.pair()
            proc = await server.spawn(["sh", "-c", "echo hello from the server"])
            await proc.wait()
            (tmp_path.parent / "where").write_text(proc.stdout_path)

        async def test_passes(lab, tmp_path):
            await _spawn(lab, tmp_path)

        async def test_fails(lab, tmp_path):
            await _spawn(lab, tmp_path)
            assert False
    ''')
    base = pytester.path / "base"
    result = run(pytester, "--basetemp", str(base), "-k", "passes")
    result.assert_outcomes(passed=1)
    kept_pass = (base / "test_passes0" / "lab").exists()
    result = run(pytester, "--basetemp", str(base), "-k", "fails")
    result.assert_outcomes(failed=1)
    out = base / "test_fails0" / "lab" / "server.0.out"
    assert not kept_pass and out.read_text() == "hello from the server\n"


def test_artifact_policy_precedence_and_validation(pytester, monkeypatch):
    pytester.makepyfile('''
        async def test_passes(lab):
            client, server = await lab.pair()
            await (await server.spawn(["true"])).wait()
    ''')
    pytester.makeini("[pytest]\nharness_artifacts = none\n")
    base = pytester.path / "base"
    monkeypatch.setenv("HARNESS_ARTIFACTS", "all")        # environment beats ini...
    run(pytester, "--basetemp", str(base)).assert_outcomes(passed=1)
    assert (base / "test_passes0" / "lab").exists()
    run(pytester, "--basetemp", str(base), "--harness-artifacts=none").assert_outcomes(passed=1)
    assert not (base / "test_passes0" / "lab").exists()    # ...and the command line beats both
    monkeypatch.setenv("HARNESS_ARTIFACTS", "sometimes")
    result = run(pytester)
    result.stderr.fnmatch_lines(["*harness_artifacts must be one of*got 'sometimes'*"])
    assert result.ret != 0
