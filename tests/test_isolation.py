"""Cleanup and isolation, proven with real pytest processes: nothing is left
after a passing test, a failing test, Ctrl-C or SIGKILL (swept by the next
run); the root namespace is byte-identical; concurrent runs do not collide."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness import _netns, _tracefs
from harness._names import owner_of

import rootstate
from helpers import dies_with_me

LAB_TESTS = textwrap.dedent('''
    import os, trio

    async def _use(lab, port):
        client, server = await lab.pair(profile="fast")
        listener = await server.listen(port)
        conn = await client.connect(server, port)
        peer = await listener.accept()
        await server.spawn(["sleep", "60"])
        await conn.send(b"x" * 1000)
        await conn.close()                         # leaves TIME_WAIT/orphans behind
        await peer.close()
        return client, server

    async def test_passes(lab):
        await _use(lab, 9001)

    async def test_fails(lab):
        await _use(lab, 9002)
        assert False, "on purpose"

    async def test_hangs(lab):
        await _use(lab, 9003)
        open(os.environ["READY_FILE"], "w").close()
        await trio.sleep_forever()
''')


def owned_by(pid: int) -> dict[str, list[str]]:
    return {"netns": [n for n in _netns.list_names() if owner_of(n) == pid],
            "tracefs": [i for i in _tracefs.list_instances() if owner_of(i + "-") == pid]}


def nothing(pid: int) -> dict[str, list[str]]:
    return {"netns": [], "tracefs": []}


def start_until_ready(suite, ready, *args, timeout=120.0, sigint="default"):
    """Start a pytest run of ``suite`` whose test creates ``ready`` once its
    lab is up; return the running process then.  ``sigint``: as
    helpers.dies_with_me ("ignored": started in the background)."""
    proc = subprocess.Popen(pytest_cmd(suite, *args, sigint=sigint),
                            env=dict(os.environ, READY_FILE=str(ready)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    return proc


def pytest_cmd(path, *args, sigint="default"):
    return dies_with_me([sys.executable, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider",
                         *args], sigint=sigint)


@pytest.fixture
def lab_tests(tmp_path):
    path = tmp_path / "test_user_suite.py"
    path.write_text(LAB_TESTS)
    return path


def test_nothing_left_after_passing_and_failing_tests(lab_tests):
    root_before = rootstate.dump()
    proc = subprocess.Popen(pytest_cmd(lab_tests, "-k", "passes or fails"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    assert "1 failed, 1 passed" in out, out
    assert "on purpose" in out and "harness lab" in out  # the report section on failure
    assert owned_by(proc.pid) == nothing(proc.pid)
    assert rootstate.dump() == root_before


def test_nothing_left_after_ctrl_c(lab_tests, tmp_path):
    proc = start_until_ready(lab_tests, tmp_path / "ready", "-k", "hangs")
    assert owned_by(proc.pid)["netns"]  # the lab is there...
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in out, out
    assert owned_by(proc.pid) == nothing(proc.pid)  # ...and gone after Ctrl-C


def test_sigkilled_run_is_swept_by_the_next(lab_tests, tmp_path):
    proc = start_until_ready(lab_tests, tmp_path / "ready", "-k", "hangs")
    proc.kill()
    proc.communicate()
    left = owned_by(proc.pid)
    assert left["netns"] and left["tracefs"]  # SIGKILL leaves residue...
    nxt = subprocess.run(pytest_cmd(lab_tests, "-k", "passes"), capture_output=True, text=True,
                         timeout=120)
    assert "1 passed" in nxt.stdout, nxt.stdout
    assert owned_by(proc.pid) == nothing(proc.pid)  # ...which the next run removes


def test_concurrent_pytest_processes_and_xdist_do_not_collide(tmp_path):
    many = tmp_path / "test_many.py"
    many.write_text(textwrap.dedent('''
        import os
        import pytest

        @pytest.mark.parametrize("n", range(6))
        async def test_connect(lab, n):
            with open(os.environ["PIDS_FILE"], "a") as f:   # this process: a run or a worker
                f.write(f"{os.getpid()}\\n")
            client, server = await lab.pair()
            listener = await server.listen(9000)
            conn = await client.connect(server, 9000)
            peer = await listener.accept()
            await conn.send(b"%d" % n)
            assert (await peer.recv()).value == b"%d" % n
            assert lab.timeline.states(conn)[:2] == ["SYN_SENT", "ESTABLISHED"]
    '''))
    pids_file = tmp_path / "pids"
    env = dict(os.environ, PIDS_FILE=str(pids_file))
    procs = [subprocess.Popen(pytest_cmd(many, *extra), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
             for extra in ((), (), ("-n", "2"))]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "6 passed" in out, out
    # xdist workers have pids of their own: nothing of any of these runs is
    # left (only theirs: a test beside this one may keep a dead owner's lab)
    ours = {p.pid for p in procs} | {int(line) for line in pids_file.read_text().split()}
    assert len(ours) >= 4  # the three runs, and the -n 2 run's worker(s)
    assert [n for n in _netns.list_names() if owner_of(n) in ours] == []


def test_keep_lab_on_failure_leaves_it_for_debugging_until_the_next_run(lab_tests):
    proc = subprocess.Popen(pytest_cmd(lab_tests, "-k", "fails", "--harness-keep-lab"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    assert "1 failed" in out and "lab kept for debugging" in out, out
    kept = owned_by(proc.pid)["netns"]
    assert len(kept) == 3  # client, server, switch: there for `ip netns exec`
    nxt = subprocess.run(pytest_cmd(lab_tests, "-k", "passes"), capture_output=True, text=True,
                         timeout=120)
    assert "1 passed" in nxt.stdout, nxt.stdout
    assert owned_by(proc.pid) == nothing(proc.pid)


CONTAINER_TESTS = textwrap.dedent('''
    import os, trio, harness

    async def _use(lab):
        client = await lab.host("client")
        server = await lab.container("server", image="echo", ready=harness.listening(8080))
        conn = await client.connect(server, 8080)
        return server

    async def test_fails(lab):
        await _use(lab)
        assert False, "on purpose"

    async def test_hangs(lab):
        await _use(lab)
        open(os.environ["READY_FILE"], "w").close()
        await trio.sleep_forever()
''')


def containers_of(pid: int) -> list[str]:
    from harness import _docker
    return [cid for cid, labels in _docker.list_labelled("harness.owner")
            if owner_of(labels.get("harness.owner", "") + "-") == pid]


@pytest.mark.requires("docker")
def test_no_container_veth_or_namespace_left_after_failing_and_interrupted_runs(tmp_path):
    suite = tmp_path / "test_container_suite.py"
    suite.write_text(CONTAINER_TESTS)
    failing = subprocess.run(pytest_cmd(suite, "-k", "fails"), capture_output=True, text=True,
                             timeout=180)
    assert "1 failed" in failing.stdout and "on purpose" in failing.stdout, failing.stdout
    proc = start_until_ready(suite, tmp_path / "ready", "-k", "hangs")
    assert containers_of(proc.pid) and owned_by(proc.pid)["netns"]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert "KeyboardInterrupt" in out, out
    for pid in (proc.pid,):
        assert containers_of(pid) == [] and owned_by(pid) == nothing(pid)
    # no veth: links live only inside lab namespaces, and the root's are unchanged
    assert not [l for l in os.listdir("/sys/class/net") if l.startswith(("veth", "p"))]
