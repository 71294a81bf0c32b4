"""A test run that is killed leaves no orphan: the pytest runs and scripts
the harness's own tests start (tests/helpers.py: dies_with_me) get SIGTERM
when the process that started them dies, and tear their labs down.  Seen
before: the suite stopped by SIGTERM left test_nothing_left_after_ctrl_c's
inner pytest running its lab for ever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from test_isolation import nothing, owned_by


def test_a_run_killed_mid_test_leaves_no_orphan_and_no_lab(tmp_path):
    ready, pids = tmp_path / "ready", tmp_path / "pids"
    (tmp_path / "test_outer.py").write_text(textwrap.dedent(f'''
        import time
        from test_isolation import LAB_TESTS, start_until_ready

        def test_outer(tmp_path):
            suite = tmp_path / "test_user_suite.py"
            suite.write_text(LAB_TESTS)
            proc = start_until_ready(suite, tmp_path / "inner-ready", "-k", "hangs")
            open({str(pids)!r}, "w").write(str(proc.pid))
            open({str(ready)!r}, "w").close()
            time.sleep(120)
    '''))
    tests = os.path.dirname(os.path.abspath(__file__))
    outer = subprocess.Popen([sys.executable, "-m", "pytest", str(tmp_path / "test_outer.py"), "-q",
                              "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
                             env=dict(os.environ, PYTHONPATH=tests), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert outer.poll() is None and time.monotonic() < deadline, outer.stdout.read()
            time.sleep(0.05)
        inner = int(pids.read_text())
        assert owned_by(inner)["netns"]          # the inner run's lab is up
        outer.send_signal(signal.SIGKILL)        # no teardown in the outer run at all
        outer.wait()
        deadline = time.monotonic() + 60
        while os.path.exists(f"/proc/{inner}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{inner}"), "the inner pytest outlived its parent"
        assert owned_by(inner) == nothing(inner)   # and it tore its lab down (SIGTERM)
    finally:
        outer.kill()
        outer.wait()
