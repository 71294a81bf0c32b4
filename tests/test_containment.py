"""Containment and recovery (issue 9): a crashed, cancelled or misused run
never harms the next run or the machine.  Each test proves one finding
against the real kernel and real pytest processes."""

import fcntl
import os
import signal
import subprocess
import sys
import struct
import tempfile
import textwrap
import time

import pytest
import trio

import harness
from harness import _netns, _sweep, _tracefs, faults
from harness._names import owner_alive, owner_of, owner_tag
from harness import InvalidArgument, LabClosed

pytest_plugins = ["pytester"]

from helpers import dies_with_me
from test_isolation import nothing, owned_by, pytest_cmd, start_until_ready

SUITE = textwrap.dedent('''
    import os, trio

    async def test_hangs(lab):
        client, server = await lab.pair()
        listener = await server.listen(9000)
        conn = await client.connect(server, 9000)
        await server.spawn(["sleep", "60"])
        open(os.environ["READY_FILE"], "w").close()
        try:
            await trio.sleep_forever()
        finally:
            if os.environ.get("SLOW_TEARDOWN"):  # where a second interrupt lands
                open(os.environ["READY_FILE"] + ".tearing", "w").close()
                with trio.CancelScope(shield=True):
                    await trio.sleep(30)

    def test_after():
        open(os.environ["READY_FILE"] + ".after", "w").close()
''')


# the same suite in the two other styles the lab fixture serves
SUITES = {"trio": SUITE, "asyncio": textwrap.dedent('''
    import asyncio, os, pytest

    @pytest.mark.asyncio
    async def test_hangs(lab):
        client, server = await lab.pair()
        listener = await server.listen(9000)
        conn = await client.connect(server, 9000)
        await server.spawn(["sleep", "60"])
        open(os.environ["READY_FILE"], "w").close()
        await asyncio.sleep(3600)

    def test_after():
        open(os.environ["READY_FILE"] + ".after", "w").close()
'''), "sync": textwrap.dedent('''
    import os, time

    def test_hangs(lab):
        client, server = lab.pair()
        listener = server.listen(9000)
        conn = client.connect(server, 9000)
        server.spawn(["sleep", "60"])
        open(os.environ["READY_FILE"], "w").close()
        time.sleep(3600)

    def test_after():
        open(os.environ["READY_FILE"] + ".after", "w").close()
''')}


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "test_interrupted.py"
    path.write_text(SUITE)
    return path


@pytest.fixture(params=sorted(SUITES))
def styled_suite(tmp_path, request):
    path = tmp_path / "test_interrupted.py"
    path.write_text(SUITES[request.param])
    return path


# --- Ctrl-C, SIGTERM, a second Ctrl-C -------------------------------------------------

@pytest.mark.parametrize("sig, sigint", [(signal.SIGINT, "default"), (signal.SIGTERM, "default"),
                                         (signal.SIGTERM, "ignored")],
                         ids=["ctrl_c", "sigterm", "sigterm_started_in_the_background"])
def test_interrupt_stops_the_session_like_pytest_does(styled_suite, tmp_path, sig, sigint):
    """Teardown runs, exit code 2, the interrupt is not reported as a failed
    test, the remaining tests do not run.  Also for a run started in the
    background, which ignores SIGINT: trio then has no KeyboardInterrupt
    handler, and SIGTERM used to raise one inside trio's scheduler, which
    left the lab's namespaces behind."""
    ready = tmp_path / "ready"
    proc = start_until_ready(styled_suite, ready, sigint=sigint)
    assert owned_by(proc.pid)["netns"]
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "KeyboardInterrupt" in out and "failed" not in out, out
    assert "ExceptionGroup" not in out, out
    assert not os.path.exists(str(ready) + ".after"), "a test ran after the interrupt"
    assert owned_by(proc.pid) == nothing(proc.pid)


def test_a_second_ctrl_c_leaves_nothing_the_next_start_cannot_remove(styled_suite, tmp_path):
    proc = start_until_ready(styled_suite, tmp_path / "ready")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)  # the second press lands in the teardown
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    _sweep.sweep()  # what the next start does
    assert owned_by(proc.pid) == nothing(proc.pid)
    assert not [d for d in os.listdir(tempfile.gettempdir()) if owner_of(d) == proc.pid]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_a_second_interrupt_during_teardown_ends_the_process_at_once(suite, tmp_path, sig,
                                                                    monkeypatch):
    """The first interrupt cancels the trio run; the second, while the
    teardown still runs, ends the process by the signal's default action.
    Nothing is raised inside the run: trio's own handler used to raise
    KeyboardInterrupt wherever the run was (here a shielded wait; once,
    pytest-trio's fixture bookkeeping, which then waited for ever)."""
    monkeypatch.setenv("SLOW_TEARDOWN", "1")
    ready = tmp_path / "ready"
    proc = start_until_ready(suite, ready)
    proc.send_signal(sig)
    deadline = time.monotonic() + 30
    while not os.path.exists(str(ready) + ".tearing"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.02)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == -sig, out
    _sweep.sweep()  # what the next start does
    assert owned_by(proc.pid) == nothing(proc.pid)
    assert not [d for d in os.listdir(tempfile.gettempdir()) if owner_of(d) == proc.pid]


def test_ctrl_c_during_tracer_set_up_leaves_no_busy_instance(tmp_path):
    """The Ctrl-C lands at the worst moment of making the process's tracefs
    instance: its trace_pipe just opened, the fd not yet recorded (unguarded,
    the fd leaks and the instance answers EBUSY for ever).  It takes effect
    once the instance is complete, and the next lab in the same process works."""
    script = tmp_path / "interrupt_tracer.py"
    script.write_text(textwrap.dedent('''
        import os, signal, trio
        import harness
        from harness import _tracefs

        real_open = os.open
        def interrupting_open(path, *args, **kw):
            fd = real_open(path, *args, **kw)
            if str(path).endswith("/trace_pipe") and not interrupting_open.done:
                interrupting_open.done = True
                os.kill(os.getpid(), signal.SIGINT)   # delivered before this returns
            return fd
        interrupting_open.done = False
        _tracefs.os.open = interrupting_open

        async def one_lab():
            async with harness.open_lab() as lab:
                client, server = await lab.pair()
                listener = await server.listen(9000)
                conn = await client.connect(server, 9000)
                await lab.timeline.wait_for(harness.entered(conn, "ESTABLISHED"))

        try:
            trio.run(one_lab)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        trio.run(one_lab)
        print("second lab ok", flush=True)
    '''))
    proc = subprocess.Popen(dies_with_me([sys.executable, str(script)]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert "interrupted" in out and "second lab ok" in out, out + err
    assert proc.returncode == 0 and "EBUSY" not in err and "busy" not in err, err
    assert owned_by(proc.pid) == nothing(proc.pid)   # its instances went at exit


# --- killed runs, then many starts at once ---------------------------------------------

def test_killed_runs_then_parallel_starts_remove_each_dead_object_once(suite, tmp_path):
    killed = []
    for n in range(2):
        proc = start_until_ready(suite, tmp_path / f"ready{n}", "-k", "hangs")
        proc.kill()
        proc.communicate()
        assert owned_by(proc.pid)["netns"] and owned_by(proc.pid)["tracefs"]
        killed.append(proc.pid)
    many = tmp_path / "test_many.py"
    many.write_text(textwrap.dedent('''
        import pytest

        @pytest.mark.parametrize("n", range(4))
        async def test_connect(lab, n):
            client, server = await lab.pair()
            listener = await server.listen(9000)
            conn = await client.connect(server, 9000)
            assert (await conn.send(b"x")).ok
    '''))
    procs = [subprocess.Popen(pytest_cmd(many, *extra), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for extra in (("-n", "2"), ("-n", "2"), ())]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "4 passed" in out, out
    for pid in killed:
        assert owned_by(pid) == nothing(pid)


def test_objects_already_half_removed_are_swept_without_error():
    """What a concurrent sweeper leaves mid-way: a /run/netns file that is no
    longer a namespace mount (setns: EINVAL) and an instance already gone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"fih{dead.pid}-0-halfgone"
    _netns._reserve(name)          # the empty file, unmounted: what delete() leaves mid-way
    try:
        assert _sweep.remove_netns(name) is True
        assert not _netns.exists(name)
        assert _sweep.remove_instance(f"fih{dead.pid}") is False   # ENOENT: someone else's work
    finally:
        _netns.delete(name)


# --- owners in other pid namespaces -----------------------------------------------------

def _in_pid_namespace(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                             sys.executable, "-c",
                             code, *args], stdout=subprocess.PIPE, text=True)


def test_a_live_owner_in_another_pid_namespace_is_never_swept():
    """A CI container shares the host kernel's tracefs: its job's instance
    must survive a sweep from the host and from a sibling container, and go
    once the job is dead."""
    job = _in_pid_namespace(textwrap.dedent('''
        import os, sys, time
        from harness._names import owner_tag
        name = owner_tag()
        os.mkdir(f"/sys/kernel/tracing/instances/{name}")
        print(name, flush=True)
        time.sleep(60)
    '''))
    name = job.stdout.readline().strip()
    try:
        assert name.startswith("fih") and "p" in name[3:] and os.getpid() != owner_of(name + "-")
        assert owner_alive(name + "-") is True            # proved from the initial pid namespace
        _sweep.sweep()
        assert name in _tracefs.list_instances()
        sibling = _in_pid_namespace(textwrap.dedent('''
            from harness import _sweep
            from harness._names import owner_alive
            import sys
            print(owner_alive(sys.argv[1] + "-"), _sweep.sweep(), flush=True)
        '''), name)
        out, _ = sibling.communicate(timeout=30)
        assert out.startswith("None"), out                # not provable from there: kept
        assert name in _tracefs.list_instances()
    finally:
        job.kill()
        job.wait()
    deadline = time.monotonic() + 5
    while owner_alive(name + "-") is not False:           # the pid namespace dies with its init
        assert time.monotonic() < deadline
        time.sleep(0.01)
    _sweep.sweep()   # this one, or a sweep of a run beside it (-n 4): once, by either
    assert name not in _tracefs.list_instances()


def test_a_sigkilled_open_lab_leaves_a_sweepable_artifact_directory(tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen(dies_with_me([sys.executable, "-c", textwrap.dedent('''
        import sys, trio, harness
        async def main():
            async with harness.open_lab() as lab:
                open(sys.argv[1], "w").write(lab.artifacts)
                await trio.sleep_forever()
        trio.run(main)
    '''), str(ready)]))
    deadline = time.monotonic() + 30
    while not (ready.exists() and ready.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    artifacts = ready.read_text()
    proc.kill()
    proc.wait()
    assert os.path.isdir(artifacts) and owner_of(os.path.basename(artifacts)) == proc.pid
    _sweep.sweep()   # this one, or a sweep of a run beside it (-n 4)
    assert not os.path.exists(artifacts)


def test_a_killed_runs_guest_session_directory_is_swept_but_never_a_mount_point(tmp_path):
    """The xdist controller makes the run's guest-session directory; killed,
    it leaves it, named by its owner, and the next start removes it.  In a
    guest kernel the host's live directory is mounted at its host path and
    the host's pid is not alive there: a sweep never removes a mount point.
    (A TMPDIR of the test's own: no sweep of a run beside it sees these.)"""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    ready = tmp_path / "ready"
    proc = subprocess.Popen(dies_with_me([sys.executable, "-c", textwrap.dedent('''
        import sys, time
        from harness import _guest_batch
        open(sys.argv[1] + ".tmp", "w").write(_guest_batch.new_root())
        import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(60)
    '''), str(ready)]), env=env)
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    root = ready.read_text()
    proc.kill()
    proc.wait()
    assert os.path.dirname(root) == str(tmp_path) and os.path.isdir(root)
    assert os.path.basename(root).startswith(f"fih{proc.pid}-guest-")
    assert owner_of(os.path.basename(root)) == proc.pid
    sweep = "import os, sys; from harness import _sweep; print(_sweep.sweep())"
    mounted = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs tmpfs "$1" && touch "$1/live" && "$2" -c "$3" && test -e "$1/live" '
         '&& echo kept', "sh",
         root, sys.executable, sweep], env=env, capture_output=True, text=True, timeout=60)
    assert mounted.stdout.splitlines()[-1:] == ["kept"], mounted
    swept = subprocess.run([sys.executable, "-c", sweep], env=env, capture_output=True,
                           text=True, timeout=60)
    assert f"directory {root}" in swept.stdout, swept
    assert not os.path.exists(root)


# --- objects of a closed lab ------------------------------------------------------------

async def test_every_object_of_a_closed_lab_refuses_use():
    """lab2 reuses lab1's pooled namespaces (same names, same fds): nothing
    of lab1 may reach them, and nothing hangs."""
    async with harness.open_lab() as lab1:
        client, server = await lab1.pair()
        listener = await server.listen(9001)
        conn = await client.connect(server, 9001)
        peer = await listener.accept()
        await conn.close()
        await lab1.wait_state(peer, "CLOSE_WAIT")
        await peer.close()
    async with harness.open_lab() as lab2:
        client2, server2 = await lab2.pair()
        assert server2.netns == server.netns       # the pooled namespace, reused
        listener2 = await server2.listen(9001)
        with trio.fail_after(10):                  # refused at once, never a hang
            for use in (lambda: server.listen(9002), lambda: client.connect(server, 9001),
                        lambda: conn.send(b"x"), lambda: lab1.host("x"), lambda: lab1.pair(),
                        lambda: lab1.wait_state(peer, "CLOSED"), lambda: server.spawn(["true"]),
                        lambda: server.program(), lambda: server.run(["true"]),
                        lambda: faults.drop(server).start(), lambda: faults.netem(server, delay=0.01).start(),
                        lambda: faults.power_off(server), lambda: faults.destroy(listener),
                        lambda: lab1.capture()):
                with pytest.raises(LabClosed, match="closed"):
                    await use()
            for use in (server.sockets, server.counters, lab1.snapshots,
                        lambda: server.sysctl("net.ipv4.tcp_fin_timeout")):
                with pytest.raises(LabClosed, match=f"host {server.name}|lab"):
                    use()
        assert "closed" in lab1.describe()  # describing stays possible
        # lab2 is untouched: no listener of lab1, no rule of lab1, it connects
        assert [s.sport for s in server2.sockets(state="LISTEN")] == [9001]
        with pytest.raises(LabClosed):
            await client2.connect(server, 9001)    # lab1's host as a target: same address
        conn2 = await client2.connect(server2, 9001)
        assert (await conn2.send(b"x")).ok


async def test_processes_faults_and_captures_of_a_closed_lab_refuse_use():
    async with harness.open_lab() as lab1:
        client, server = await lab1.pair()
        proc = await server.spawn(["sleep", "60"])
        peer = await server.program()
        capture = await lab1.capture()
        fault = faults.drop(server)
    with trio.fail_after(10):
        for use in (proc.kill, peer.kill, lambda: faults.kill(proc), fault.start,
                    lambda: faults.pause(peer).start()):
            with pytest.raises(LabClosed):
                await use()
        with pytest.raises(LabClosed):
            proc.signal(signal.SIGTERM)
        with pytest.raises(LabClosed):
            capture.packets()


async def test_describe_works_on_a_lab_without_hosts():
    async with harness.open_lab() as lab:
        assert "no hosts yet" in lab.describe()


def test_skip_before_the_first_host_is_a_skip(pytester):
    pytester.makepyfile('''
        import pytest

        async def test_skips(lab):
            pytest.skip("not today")

        async def test_fails_before_a_host(lab):
            assert False, "on purpose"
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*on purpose*"])
    result.stdout.fnmatch_lines(["SKIPPED*: not today"])
    result.stdout.no_fnmatch_line("*AttributeError*")


# --- sysctls: per-namespace keys only, checked first ------------------------------------

def _machine(key: str) -> str:
    with open(f"/proc/sys/{key.replace('.', '/')}") as f:
        return f.read().strip()


async def test_host_sysctl_cannot_reach_a_machine_wide_setting(lab):
    client, = [await lab.host("client")]
    before = {k: _machine(k) for k in ("fs.lease-break-time", "net.core.netdev_max_backlog")}
    with pytest.raises(InvalidArgument, match="under net.*fs.lease-break-time"):
        client.sysctl("fs.lease-break-time", 46)
    with pytest.raises(InvalidArgument, match="netdev_max_backlog.*machine-wide"):
        client.sysctl("net.core.netdev_max_backlog", 5)     # global: not shown in a netns
    with pytest.raises(InvalidArgument, match="'abc'.*refused by the kernel"):
        client.sysctl("net.ipv4.tcp_fin_timeout", "abc")
    assert {k: _machine(k) for k in before} == before
    assert client.sysctl("net.ipv4.tcp_fin_timeout", 5) == "5"  # a per-namespace key works


@pytest.mark.parametrize("sysctls, match", [
    ("net.ipv4.tcp_fin_timeout=5", "must be a dict.*tcp_fin_timeout=5"),
    ({"net.ipv4.tcp_fin_timeout": "abc"}, "tcp_fin_timeout='abc' is refused by the kernel"),
    ({"net.ipv4.tcp_no_such_key": 1}, "tcp_no_such_key does not exist"),
    ({"net.core.netdev_max_backlog": 5}, "machine-wide"),
    ({"kernel.panic": 1}, "under net"),
    ({"net.ipv4.tcp_fin_timeout": 2.5}, "int or a string.*2.5"),
])
async def test_bad_sysctls_are_refused_before_anything_is_made(sysctls, match):
    # this process's objects only: other runs on the machine make their own meanwhile
    tag = owner_tag() + "-"
    mine = lambda found: {n for n in found if n.startswith(tag)}  # noqa: E731
    names = mine(_netns.list_names())
    instances = mine(i + "-" for i in _tracefs.list_instances())
    async with harness.open_lab() as lab:
        with pytest.raises(InvalidArgument, match=match):
            await lab.host("client", sysctls=sysctls)
        assert lab.slot is None and lab.hosts == {}
        assert mine(_netns.list_names()) - names == set()
        assert mine(i + "-" for i in _tracefs.list_instances()) - instances == set()


# --- a host's processes: IPC and /dev/shm of the host's own -------------------------------

def _sysv_keys(text: str) -> set[str]:
    """The keys of /proc/sysvipc/shm's lines (as ipcs shows them, key first)."""
    return {line.split()[0] for line in text.splitlines()[1:] if line.split()}


def _machine_sysv_keys() -> set[str]:
    with open("/proc/sysvipc/shm") as f:
        return _sysv_keys(f.read())


async def test_a_hosts_processes_share_ipc_and_dev_shm_with_each_other_only(lab):
    """What one process of a host makes in SysV IPC and /dev/shm, the
    host's other processes see; the other host and the machine do not.
    The working directory is the test's, as before."""
    client, server = await lab.pair()
    name = f"{owner_tag()}-probe"
    made = await server.run(["sh", "-c", f"ipcmk -M 56 >/dev/null && echo x > /dev/shm/{name}"
                                         f" && cat /proc/sysvipc/shm"])
    keys = _sysv_keys(made.stdout.decode())
    assert len(keys) == 1, made.stdout
    seen = await server.spawn(["sh", "-c", f"cat /proc/sysvipc/shm /dev/shm/{name}; pwd"])
    assert await seen.wait(timeout=10) == 0
    assert keys <= _sysv_keys(seen.stdout()) and seen.stdout().endswith(f"x\n{os.getcwd()}\n")
    other = await client.run(["sh", "-c", "cat /proc/sysvipc/shm; ls -A /dev/shm"])
    assert not keys & _sysv_keys(other.stdout.decode()), other.stdout
    assert name not in other.stdout.decode().split()
    assert not keys & _machine_sysv_keys() and not os.path.exists(f"/dev/shm/{name}")


#: ioctl(NS_GET_ID) = _IOR(NSIO=0xb7, 13, __u64): a namespace's 64-bit id, never
#: reused (6.18).  Not the inode number: a freed namespace's number goes to
#: the next namespace made (seen: the host's new /dev/shm namespace after a
#: power cycle had its old one's number).
_NS_GET_ID = (2 << 30) | (8 << 16) | (0xb7 << 8) | 13


def _ns_id(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None   # the process is gone
    try:
        return struct.unpack("Q", fcntl.ioctl(fd, _NS_GET_ID, bytes(8)))[0]
    except OSError:
        return None
    finally:
        os.close(fd)


def _holders(ids: dict[str, int]) -> dict[str, list[str]]:
    """Every process (and fd of this one) that still holds the namespaces
    (by kind: "ipc", "mnt")."""
    held: dict[str, list[str]] = {kind: [] for kind in ids}
    for kind, ns in ids.items():
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if _ns_id(f"/proc/{pid}/ns/{kind}") == ns:
                held[kind].append(f"pid {pid}")
        for fd in os.listdir("/proc/self/fd"):
            try:
                if not os.readlink(f"/proc/self/fd/{fd}").startswith(f"{kind}:["):
                    continue
            except OSError:
                continue
            if _ns_id(f"/proc/self/fd/{fd}") == ns:
                held[kind].append(f"fd {fd}")
    return held


async def test_what_a_killed_server_left_in_ipc_and_dev_shm_goes_with_its_host():
    """A server SIGKILLed by the lab's teardown cannot remove its SysV
    segment or its /dev/shm file.  Nothing holds the host's IPC and mount
    namespaces once the lab is closed, so the kernel frees both, with
    them.  power_off/power_on empties them, as a real power cycle does."""
    if _ns_id("/proc/self/ns/mnt") is None:
        pytest.skip("this kernel has no ioctl(NS_GET_ID) (6.18+): without a namespace id "
                    "that is never reused, what holds a freed namespace cannot be told")
    script = "ipcmk -M 4096 >/dev/null && echo x > /dev/shm/left && exec sleep 60"
    async with harness.open_lab() as lab:
        client, server = await lab.pair()
        proc = await server.spawn(["sh", "-c", script])
        await _until_exec(proc)
        ids = {k: _ns_id(f"/proc/{proc.pid}/ns/{k}") for k in ("ipc", "mnt")}
        assert ids["ipc"] != _ns_id("/proc/self/ns/ipc")
        assert ids["mnt"] != _ns_id("/proc/self/ns/mnt")
        assert _holders(ids)["mnt"] and _holders(ids)["ipc"]  # the check sees a live one
        assert "left" in (await server.run(["ls", "/dev/shm"])).stdout.decode().split()
        await faults.power_off(server)
        await faults.power_on(server)
        after = await server.run(["sh", "-c", "cat /proc/sysvipc/shm; ls -A /dev/shm"])
        assert after.stdout.decode().splitlines()[1:] == [], after.stdout  # empty, both
        assert _holders(ids) == {"ipc": [], "mnt": []}
        late = await server.spawn(["sh", "-c", script])
        await _until_exec(late)
        ids = {k: _ns_id(f"/proc/{late.pid}/ns/{k}") for k in ("ipc", "mnt")}
    assert _holders(ids) == {"ipc": [], "mnt": []}


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


async def _until_exec(proc) -> None:
    """Until ``sh`` has made its segment and file and exec'd sleep."""
    with trio.fail_after(10):
        while _comm(proc.pid) != "sleep":
            assert proc.returncode is None, proc.output()
            await trio.sleep(0.005)


# --- spawned programs: default signal dispositions, empty mask ---------------------------

def _sig_status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in f)
                if k in ("SigBlk", "SigIgn")}


async def test_spawned_programs_get_default_signals_and_an_empty_mask(lab):
    client, = [await lab.host("client")]
    ignored = (signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in ignored}  # like a runner started with &
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    try:
        assert _sig_status(os.getpid())["SigIgn"] & (1 << (signal.SIGINT - 1))
        proc = await client.spawn(["sleep", "60"])
        peer = await client.program()
        run = client.run_sync(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for s, h in saved.items():
            signal.signal(s, h)
    for pid in (proc.pid, peer.process.pid):
        status = _sig_status(pid)
        assert status["SigBlk"] == 0, (pid, status)
        assert not status["SigIgn"] & sum(1 << (s - 1) for s in ignored), (pid, status)
    assert b"SigBlk:\t0000000000000000" in run.stdout and b"SigIgn:\t0000000000000000" in run.stdout
    assert await proc.kill() == -signal.SIGKILL


async def test_sigint_reaches_a_server_spawned_by_a_background_runner(lab):
    """The runner ignores SIGINT (started with &): the server it spawns does
    not, so a Ctrl-C-style stop of the server works."""
    client, = [await lab.host("client")]
    saved = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = await client.spawn(["sleep", "60"])
    finally:
        signal.signal(signal.SIGINT, saved)
    proc.signal(signal.SIGINT)
    assert await proc.wait(timeout=5) == -signal.SIGINT


# --- bad input ---------------------------------------------------------------------------

async def test_bad_arguments_name_the_value(lab):
    client, = [await lab.host("client")]
    with pytest.raises(InvalidArgument, match="wait_state.*'notasocket'"):
        await lab.wait_state("notasocket", "LISTEN")
    with pytest.raises(InvalidArgument, match=r"argv=.ls. \(str\).*\[.ls.\]"):
        await client.spawn("ls")
    with pytest.raises(InvalidArgument, match=r"argv=.ls -l. \(str\)"):
        await client.run("ls -l")
    with pytest.raises(InvalidArgument, match="argv=\\[\\]"):
        await client.spawn([])
    assert client.processes == []


def test_owner_tag_names_this_process():
    assert owner_of(owner_tag() + "-x") == os.getpid()
    assert owner_alive(owner_tag() + "-x") is True
    assert owner_alive("not-ours") is None


# --- determinism: what a snapshot's time means -------------------------------------------

async def test_a_snapshot_brackets_the_dump_that_read_it(lab):
    """A bound on time elapsed since an event uses the end of the dump: the
    test may be preempted between taking the time and the kernel's read."""
    client, server = await lab.pair()
    listener = await server.listen(9000, family=6)
    before = time.monotonic()
    (info,) = server.sockets(state="LISTEN")
    after = time.monotonic()
    assert before <= info.snapshot_time <= info.snapshot_done <= after
    assert info.family == 6 and info.snapshot_done > info.snapshot_time  # read after the v4 dump
