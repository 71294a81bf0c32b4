"""Tests of the guest runner (harness._guest_plugin): a test marked
``@pytest.mark.kernel(...)`` really runs in a UML guest kernel, and its
outcome, failure report, skip reason and artifacts come back to the host's
pytest run; a guest that runs too long, or whose pytest is interrupted or
killed, leaves nothing behind.

Each test runs a small test file in a pytest subprocess (pytester), in the
built ``uml-6.12-tt`` kernel (virtual time) where it is built, else in
Debian's ``uml-6.1`` (real time); the virtual-time test skips, naming why,
without the built kernel.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from harness import _kernels
from helpers import dies_with_me

pytest_plugins = ["pytester"]

TT = "uml-6.12-tt"
TT_REASON = _kernels.unavailable_reason(TT)
needs_tt = pytest.mark.skipif(TT_REASON is not None and not os.environ.get("HARNESS_REQUIRE_UML"),
                              reason=str(TT_REASON))
OLD_REASON = _kernels.unavailable_reason("uml-6.1")
needs_old = pytest.mark.skipif(OLD_REASON is not None and not os.environ.get("HARNESS_REQUIRE_UML"),
                               reason=str(OLD_REASON))
#: the kernel the runner's tests use: the built one, else Debian's
ANY = TT if TT_REASON is None else "uml-6.1"
RELEASE = "6.12." if ANY == TT else "6.1."
needs_any = pytest.mark.skipif(_kernels.unavailable_reason(ANY) is not None and
                               not os.environ.get("HARNESS_REQUIRE_UML"),
                               reason=str(_kernels.unavailable_reason(ANY)))


def _guest_processes(marker: str) -> list[int]:
    """Host processes whose command line names ``marker`` (UML's command line
    names its run directory, harness-uml-...)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        out.append(int(entry))
            except OSError:
                pass
    return out


def _leftovers(tmpdir: str) -> list[str]:
    """Guest-session directories (fih<pid>-guest-...) and UML run directories."""
    return sorted(n for n in os.listdir(tmpdir)
                  if re.match(r"fih\d+(p\d+)?-guest-", n) or n.startswith("harness-uml-"))


@pytest.fixture
def guest_tmp(tmp_path, monkeypatch):
    """A TMPDIR of the test's own, so leftovers of this run alone are seen."""
    d = tmp_path / "tmpdir"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    return str(d)


def _run(pytester, *args, timeout=600):
    # a guard against a hang, not a speed assertion: these runs take 10-35 s
    # idle, but two guest boots plus two pytest start-ups under UML's ptrace
    # slow down far more than the host under load (two runs passed 180 s at
    # load 8-10 while other jobs shared the 2 cores)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args, timeout=timeout)


@needs_tt
def test_pass_runs_in_the_guest_kernel_in_virtual_time(pytester, guest_tmp):
    pytester.makepyfile(f"""
        import os, time, pytest

        @pytest.mark.kernel("{TT}", "host")
        def test_where():
            print("release", os.uname().release)

        @pytest.mark.kernel("{TT}")
        def test_an_hour():
            t0 = time.monotonic()
            time.sleep(3600)                       # an hour of the guest's clock
            print("slept", round(time.monotonic() - t0), "guest seconds")
        """)
    t0 = time.monotonic()
    result = _run(pytester, "--junitxml=junit.xml")
    wall = time.monotonic() - t0
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    assert "release 6.12." in out and f"release {os.uname().release}" in out
    # junit XML shows each guest test's guest and wall seconds (the property
    # written from the teardown report), and none for the host's
    times = {case.get("name"): [p.get("value") for p in case.iter("property")
                                if p.get("name") == "guest_time"]
             for case in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    hour = f"test_an_hour[{TT}]"
    assert sorted(times) == sorted(["test_where[host]", f"test_where[{TT}]", hour]), times
    assert times[f"test_where[{TT}]"] and times[hour] and not times["test_where[host]"]
    assert "'guest_s': 3600." in times[hour][0], times
    assert "test_where[host]" in out and f"test_where[{TT}]" in out
    assert "slept 3600 guest seconds" in out
    assert wall < 120                                  # an hour of virtual time
    assert _leftovers(guest_tmp) == []


@needs_any
def test_lab_in_the_guest(pytester, guest_tmp):
    pytester.makepyfile(f"""
        import os, pytest

        @pytest.mark.kernel("{ANY}")
        async def test_pair(lab):
            client, server = await lab.pair()
            listener = await server.listen(9000)
            conn = await client.connect(server, 9000)
            await listener.accept()
            assert conn.info().state == "ESTABLISHED"
            assert os.uname().release.startswith("{RELEASE}")
        """)
    _run(pytester).assert_outcomes(passed=1)


@needs_any
def test_failure_report_comes_back(pytester, guest_tmp):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.kernel("{ANY}")
        def test_bad():
            value = 1 + 1
            print("said in the guest")
            assert value == 3
        """)
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"*_ test_bad[[]{ANY}[]] _*",
        ">*assert value == 3",
        "E*assert 2 == 3",
        "test_failure_report_comes_back.py:7: AssertionError",
        "*Captured stdout call*",
        "said in the guest",
        f"FAILED test_failure_report_comes_back.py::test_bad[[]{ANY}[]] - assert 2 == 3",
    ])
    assert _leftovers(guest_tmp) == []


@needs_any
def test_skip_names_the_kernel_and_the_feature(pytester, guest_tmp):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.kernel("{ANY}")
        @pytest.mark.requires("syscall_tracepoints")
        def test_needs_syscalls():
            pass

        @pytest.mark.kernel("{ANY}")
        def test_skips_itself():
            pytest.skip("not today")
        """)
    result = _run(pytester)
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines_random([
        # uml-6.12-tt: "kernel lacks syscall tracepoints"; uml-6.1: no tracefs at all
        f"SKIPPED * on kernel {ANY}: requires syscall_tracepoints: *",
        f"SKIPPED * on kernel {ANY}: not today",
    ])


def test_unbuilt_kernel_is_a_skip_naming_it(pytester, guest_tmp, tmp_path, monkeypatch):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.kernel("{TT}")
        def test_x():
            pass
        """)
    monkeypatch.setenv("HARNESS_KERNEL_CACHE", str(tmp_path / "no-kernels"))
    result = _run(pytester)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED * kernel {TT} is not built for *: no */no-kernels/*"])


def test_bad_kernel_name_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--harness-kernel=uml-9",
                                           timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("kernel must be one of ['host', 'uml-6.1', 'uml-6.12-tt'], got 'uml-9' "
            "(from --harness-kernel)") in result.stderr.str()


@needs_any
def test_wall_clock_timeout_kills_the_guest(pytester, guest_tmp):
    # CPU time is free in virtual time: a busy loop never advances the
    # guest's clock, so only the host's wall-clock limit ends it.
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.kernel("{ANY}", timeout=30)
        def test_spin():
            while True:
                pass
        """)
    t0 = time.monotonic()
    result = _run(pytester)
    assert time.monotonic() - t0 < 90
    # a failure of the call, or of the setup when the guest had not got that far
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", outcomes.get("error", 0)) == 1
    result.stdout.fnmatch_lines([f"*kernel {ANY}: UML guest running * did not finish within 30 s*"])
    assert _leftovers(guest_tmp) == []


@needs_any
def test_artifacts_of_a_failed_test_come_back(pytester, guest_tmp):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.kernel("{ANY}")
        def test_leaves_a_file(tmp_path):
            (tmp_path / "evidence.txt").write_text("written in the guest")
            assert False
        """)
    base = pytester.path / "base"
    result = _run(pytester, f"--basetemp={base}")
    result.assert_outcomes(failed=1)
    line = next(ln for ln in result.stdout.lines if "artifacts of the guest run:" in ln)
    dest = line.split("artifacts of the guest run:")[1].strip()
    assert dest.startswith(str(base))
    found = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs]
    assert [os.path.basename(p) for p in found] == ["evidence.txt"]
    assert open(found[0]).read() == "written in the guest"
    assert _leftovers(guest_tmp) == []


def _spinning_session(pytester):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.kernel("{ANY}", timeout=120)
        def test_spin():
            while True:
                pass
        """)
    proc = subprocess.Popen(dies_with_me([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                                          "-q"]),   # SIGINT as at a terminal
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not _guest_processes(os.environ["TMPDIR"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _guest_processes(os.environ["TMPDIR"]), "the guest never started"
    time.sleep(1)   # let UML start its helpers too
    return proc


def _assert_gone(guest_tmp):
    deadline = time.monotonic() + 20
    while (_guest_processes(guest_tmp) or _leftovers(guest_tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _guest_processes(guest_tmp) == [], "UML processes left behind"
    assert _leftovers(guest_tmp) == [], "run directories left behind"


@needs_any
def test_ctrl_c_stops_the_guest_and_cleans_up(pytester, guest_tmp):
    proc = _spinning_session(pytester)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0].decode()
    assert "KeyboardInterrupt" in out
    _assert_gone(guest_tmp)


@needs_any
def test_sigkill_of_pytest_leaves_nothing(pytester, guest_tmp):
    proc = _spinning_session(pytester)
    proc.kill()
    proc.wait(timeout=10)
    _assert_gone(guest_tmp)


@needs_old
def test_debian_uml_61_runs_a_lab_in_real_time(pytester, guest_tmp):
    pytester.makepyfile("""
        import os, time, pytest

        @pytest.mark.kernel("uml-6.1")
        async def test_pair(lab):
            client, server = await lab.pair()
            listener = await server.listen(9000)
            conn = await client.connect(server, 9000)
            await listener.accept()
            t0, w0 = time.monotonic(), time.time()
            time.sleep(1)
            assert os.uname().release.startswith("6.1.")
            assert time.time() - w0 >= 0.99          # real time: the guest's second is a second
        """)
    _run(pytester).assert_outcomes(passed=1)


@needs_old
def test_a_kernel_without_sock_destroy_still_tears_a_lab_down(pytester, guest_tmp):
    """Debian's 6.1 UML has no INET_DIAG_DESTROY: a TIME_WAIT socket left at
    teardown cannot be aborted, yet the lab is torn down (the namespace is
    deleted, the socket dies by its own timer) and the test passes."""
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kernel("uml-6.1")
        async def test_leaves_time_wait(lab):
            client, server = await lab.pair()
            listener = await server.listen(9000)
            conn = await client.connect(server, 9000)
            peer = await listener.accept()
            await conn.close()
            await peer.close()
            await lab.wait_state(conn, "TIME_WAIT")
        """)
    _run(pytester).assert_outcomes(passed=1)


def test_a_guest_runs_after_a_lab_that_watched_so_error(pytester, guest_tmp, monkeypatch):
    """The SO_ERROR uprobe traps every glibc getsockopt on the machine, which a
    user-mode Linux guest (ptrace-driven processes running the host's libc)
    does not survive: it exists only while a lab that asked for it is open."""
    monkeypatch.setenv("HARNESS_SO_ERROR_PROBE", "1")
    pytester.makepyfile(f"""
        import os, pytest

        async def test_lab_on_the_host(lab):
            await lab.pair()

        @pytest.mark.kernel("{ANY}")
        def test_then_a_guest():
            assert os.uname().release.startswith("6.")
        """)
    _run(pytester, "-p", "no:randomly").assert_outcomes(passed=2)


# --------------------------------------------------------------------------
# guest sessions (harness._guest_batch): one boot for many tests


def _boot_ids(result) -> dict[str, str]:
    """test name -> the guest's boot id it printed ("boot <name> <id>")."""
    out = {}
    for line in result.stdout.lines:
        if line.startswith("boot "):
            _, name, boot = line.split()
            out[name] = boot
    return out


_BOOT_ID = """
        def _boot(name):
            print("boot", name, open("/proc/sys/kernel/random/boot_id").read().strip())
"""


@needs_any
def test_a_run_boots_one_guest_for_all_its_tests(pytester, guest_tmp):
    pytester.makepyfile(f"""
        import pytest
        {_BOOT_ID}
        @pytest.mark.kernel("{ANY}")
        def test_one():
            _boot("one")

        def test_on_the_host():
            _boot("host")

        @pytest.mark.kernel("{ANY}")
        @pytest.mark.parametrize("n", [2, 3])
        def test_more(n):
            _boot(f"more{{n}}")
        """)
    result = _run(pytester)
    result.assert_outcomes(passed=4)
    boots = _boot_ids(result)
    assert sorted(boots) == ["host", "more2", "more3", "one"]
    assert boots["one"] == boots["more2"] == boots["more3"] != boots["host"]
    # the guest tests were ordered after the host's, each reporting its own wall time
    names = [ln.split("::")[1].split(" ")[0] for ln in result.stdout.lines
             if ln.startswith("PASSED ")]
    assert names[0] == "test_on_the_host"
    assert _leftovers(guest_tmp) == []


@needs_any
def test_a_test_past_its_timeout_fails_alone_and_a_fresh_guest_runs_the_rest(pytester, guest_tmp):
    pytester.makepyfile(f"""
        import pytest
        {_BOOT_ID}
        @pytest.mark.kernel("{ANY}")
        def test_1_before():
            _boot("before")

        @pytest.mark.kernel("{ANY}", timeout=20)
        def test_2_spin():
            while True:
                pass

        @pytest.mark.kernel("{ANY}")
        def test_3_after():
            _boot("after")
        """)
    result = _run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([f"*kernel {ANY}: UML guest running *test_2_spin* did not "
                                 f"finish within 20 s*"])
    boots = _boot_ids(result)
    assert boots["before"] != boots["after"]            # the spinning guest was killed
    assert _leftovers(guest_tmp) == []


@needs_any
def test_xdist_workers_share_one_guest_session(pytester, guest_tmp):
    pytest.importorskip("xdist")
    pytester.makepyfile(f"""
        import pytest
        {_BOOT_ID}
        @pytest.mark.kernel("{ANY}")
        @pytest.mark.parametrize("n", range(4))
        def test_guest(n):
            _boot(f"guest{{n}}")

        @pytest.mark.parametrize("n", range(4))
        def test_host(n):
            pass
        """)
    result = _run(pytester, "-n", "2")
    result.assert_outcomes(passed=8)
    boots = _boot_ids(result)
    assert sorted(boots) == [f"guest{n}" for n in range(4)]
    if ANY == TT:        # virtual time, CPU-bound: 4 tests make one session
        assert len(set(boots.values())) == 1, boots
    else:                # real time: a session per worker, the tests dealt round-robin
        assert boots["guest0"] == boots["guest2"] != boots["guest1"] == boots["guest3"], boots
    assert _leftovers(guest_tmp) == []


def test_shards_per_kernel_clock(tmp_path):
    from harness import _guest_batch
    ids = [f"t.py::test[{n}]" for n in range(20)]
    timeouts = dict.fromkeys(ids, 300.0)
    virtual, real = _kernels.get(TT), _kernels.get("uml-6.1")
    # virtual time is CPU-bound: a shard per SHARD_ITEMS items, at most one per CPU
    shards = _guest_batch.plan(virtual, ids[:7], timeouts, str(tmp_path), workers=4)
    assert [s.nodeids for s in shards] == [ids[:7]]
    shards = _guest_batch.plan(virtual, ids, timeouts, str(tmp_path), workers=4)
    assert len(shards) == min(3, os.cpu_count(), 4)
    # real time mostly waits: one shard per worker, dealt round-robin
    shards = _guest_batch.plan(real, ids[:6], timeouts, str(tmp_path), workers=4)
    assert [s.nodeids for s in shards] == [ids[0:6:4], ids[1:6:4], ids[2:6:4], ids[3:6:4]]
    assert _guest_batch.plan(real, ids[:6], timeouts, str(tmp_path), workers=1)[0].nodeids == ids[:6]


def test_a_dead_runner_hands_its_items_back(tmp_path):
    """A shard that was started but whose lock nobody holds (its process
    died) and that never finished: the waiter gets None at once and runs
    the item in a guest of its own."""
    from harness import _guest_batch
    shard = _guest_batch.plan(_kernels.get(TT), ["t.py::test_x"], {"t.py::test_x": 300.0},
                              str(tmp_path), workers=1)[0]
    with open(os.path.join(shard.dir, "started"), "w") as f:
        f.write("1")
    batches = _guest_batch.Batches(str(tmp_path), own_root=False)
    batches.add([shard])
    t0 = time.monotonic()
    assert batches.wait(shard, "t.py::test_x", launch=None) is None
    assert time.monotonic() - t0 < 1
    assert shard.runner is None                                  # nothing started here
