"""Where users run it: a read-only /proc/sys (docker without --privileged),
a user namespace of a plain user (rootless CI), no docker daemon, and a lab
whose set-up failed.  Each environment is made for real with unshare(1) and
setpriv(1) around a child Python; `bash .ci/environments` runs the whole
test suite in each, in Debian 12 containers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import trio

import harness
from harness import InvalidArgument, _names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = _names.outer_uid() or 65534  # the plain user the rootless runs are


def run_python(code: str, *, wrap: list[str] = (), env: dict | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a child interpreter of this venv, inside ``wrap``
    (an unshare/setpriv prefix); fail with its output if it fails."""
    r = subprocess.run([*wrap, sys.executable, "-c", textwrap.dedent(code)], cwd="/",
                       capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONPATH": REPO, **(env or {})})
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


# /proc/sys bind-mounted read-only over itself, in a private mount namespace:
# exactly what docker does without --privileged
READ_ONLY_PROC_SYS = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys '
                      '&& exec "$@"', "sh"]


def plain_user() -> list[str]:
    """Become nobody (needs the machine's root here)."""
    if os.geteuid() != 0 or _names.outer_uid() != 0:
        pytest.skip("becoming a plain user needs the machine's root; this is uid "
                    f"{_names.outer_uid()} on the machine")
    for path in (sys.executable, REPO):
        real = os.path.realpath(path)
        if os.stat(real).st_mode & 0o005 != 0o005:
            pytest.skip(f"{real} is not readable by uid {NOBODY}: the plain-user run needs it")
        parent = os.path.dirname(real)
        while parent != "/":  # every directory above it must be searchable by others
            if os.stat(parent).st_mode & 0o001 == 0:
                pytest.skip(f"{parent} is not searchable by uid {NOBODY}, so {path} cannot "
                            "run as that user (a venv made from a python under /root?)")
            parent = os.path.dirname(parent)
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def rootless() -> list[str]:
    """A plain user (nobody) in ``unshare --user --map-root-user --net --mount``;
    here as it is when this already is a user namespace of a plain user."""
    if _names.outer_uid() != 0:
        return []
    return [*plain_user(), "unshare", "--user", "--map-root-user", "--net", "--mount",
            "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


@pytest.mark.requires("netns")
def test_sysctls_are_written_through_a_private_clone_of_a_read_only_proc_sys():
    r = run_python("""
        import errno, trio, harness
        from harness import _features, _netns
        try:
            open("/proc/sys/net/ipv4/tcp_fin_timeout", "w")
        except OSError as e:
            assert e.errno == errno.EROFS, e
        else:
            raise AssertionError("/proc/sys is writable: the environment was not made")
        assert _netns.proc_sys_read_only() and _features.sysctls() is None
        before = open("/proc/self/mountinfo").read()
        async def main():
            async with harness.open_lab() as lab:
                client, server = await lab.pair(sysctls={"net.ipv4.tcp_fin_timeout": 7})
                for h in (client, server):
                    assert _netns.read_sysctl(h.ns_fd, "net.ipv4.tcp_fin_timeout") == "7"
                    assert _netns.read_sysctl(h.ns_fd, "net.ipv4.tcp_retries1") == "3"
                listener = await server.listen(9000)
                conn = await client.connect(server, 9000)
                assert (await conn.send(b"x")).value == 1
        trio.run(main)
        # the clone is mounted nowhere: only the lab's /run/netns mounts came and went
        after = open("/proc/self/mountinfo").read()
        new = [l for l in after.splitlines() if l not in before and "/netns" not in l]
        assert not new, new
        assert open("/proc/sys/net/ipv4/tcp_fin_timeout").read().strip() != "7"
    """, wrap=READ_ONLY_PROC_SYS)
    assert r.stderr == "", r.stderr


def test_doctor_reports_a_read_only_proc_sys():
    r = run_python("import sys; from harness.__main__ import main; sys.exit(main(['', 'doctor']))",
                   wrap=READ_ONLY_PROC_SYS)
    assert "/proc/sys is mounted read-only: sysctls are written through a private read-write " \
           "clone of it" in r.stdout
    assert "yes  sysctls" in r.stdout


ROOTLESS_LAB = """
    import os, subprocess, sys, trio, harness
    from harness import Unsupported, _names, _netns, faults
    uid = _names.outer_uid()
    assert os.geteuid() == 0 and uid != 0
    assert not os.access("/run", os.W_OK)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    assert _names.runtime_dir() in (xdg, f"/tmp/fih-{uid}"), _names.runtime_dir()
    async def main():
        async with harness.open_lab() as lab:
            client, server = await lab.pair(profile="fast")
            assert _netns.path(client.netns).startswith(_names.runtime_dir() + "/netns/")
            listener = await server.listen(9000)
            conn = await client.connect(server, 9000)
            peer = await listener.accept()
            assert (await conn.send(b"hello")).value == 5
            assert (await peer.recv()).value == b"hello"
            assert [s.state for s in server.sockets() if s.remote == peer.remote] == ["ESTABLISHED"]
            async with faults.drop(server, direction="in", port=9000) as f:   # iptables
                await conn.send(b"x")
                assert await f.wait_matched(1) >= 1
            async with faults.drop_first(conn, 1, direction="out") as q:       # NFQUEUE
                await conn.send(b"y")
                got = b""
                with trio.fail_after(5):
                    while len(got) < 2:
                        got += (await peer.recv()).value
            assert got == b"xy" and q.counts["dropped"] == 1
            try:
                lab.timeline.events()
            except Unsupported as e:
                assert "user namespace" in str(e), e
            else:
                raise AssertionError("a timeline in a user namespace")
            # the lease: a second process of this user in this network namespace
            # cannot take the same slot while this lab holds it
            code = ("from harness import _names; s = _names.lease_slot(%d); print(s.index)"
                    % lab.slot.index)
            other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            assert other.returncode == 0, other.stderr
            assert int(other.stdout) != lab.slot.index
            print("slot", lab.slot.index)
    trio.run(main)      # teardown raised nothing (no EPERM from the tcp_metrics flush)
    again = _names.lease_slot(0)
    print("again", again.index)
"""


def skip_unless_user_namespaces_can_write_sysctls() -> None:
    """Inside a container whose /proc/sys is read-only (docker without
    --privileged), a user namespace inherits that mount locked read-only:
    no clone of it can be made writable, so no lab can pin its sysctls."""
    r = run_python("from harness import _features; print(_features.sysctls() or '')",
                   wrap=rootless())
    if r.stdout.strip():
        pytest.skip(f"in a user namespace made here: {r.stdout.strip()}")


@pytest.mark.requires("netns")
def test_rootless_labs_sockets_snapshots_firewall_and_nfqueue_work():
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) not installed")
    skip_unless_user_namespaces_can_write_sysctls()
    r = run_python(ROOTLESS_LAB, wrap=rootless())
    out = dict(line.split() for line in r.stdout.splitlines())
    assert out["again"] == out["slot"]  # released at teardown
    assert "Traceback" not in r.stderr, r.stderr


def test_doctor_in_a_user_namespace_names_what_is_missing():
    skip_unless_user_namespaces_can_write_sysctls()
    r = run_python("import sys; from harness.__main__ import main; sys.exit(main(['', 'doctor']))",
                   wrap=rootless())
    assert f"a user namespace: uid 0 here is uid {NOBODY} on the machine" in r.stdout
    assert f"runtime directory (locks, named namespaces): /tmp/fih-{NOBODY}" in r.stdout or \
        f"runtime directory (locks, named namespaces): {os.environ.get('XDG_RUNTIME_DIR')}" \
        in r.stdout
    assert "no   tracefs              tracefs needs the machine's root; this is a user " \
           "namespace" in r.stdout
    assert "no   netns_reuse" in r.stdout and "EPERM" in r.stdout
    assert "no   docker" in r.stdout
    assert "yes  netns" in r.stdout and "yes  nfqueue" in r.stdout


def test_doctor_without_a_docker_daemon():
    r = run_python("import sys; from harness.__main__ import main; sys.exit(main(['', 'doctor']))",
                   env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert "no   docker " in r.stdout
    assert "no docker daemon answers at unix:///nonexistent/docker.sock" in r.stdout


def test_a_plain_user_gets_a_skip_not_a_raw_permission_error():
    r = run_python("""
        import trio, harness
        from harness import Unsupported
        async def main():
            async with harness.open_lab() as lab:
                try:
                    await lab.pair()
                except Unsupported as e:
                    assert "network namespaces need CAP_SYS_ADMIN" in str(e), e
                else:
                    raise AssertionError("a lab as a plain user")
                print(lab.describe())
        trio.run(main)
    """, wrap=plain_user())
    assert r.stderr == "", r.stderr
    doctor = run_python("import sys; from harness.__main__ import main; "
                        "sys.exit(main(['', 'doctor']))", wrap=plain_user())
    assert "no   root" in doctor.stdout and "no   tracefs              tracefs needs root" \
        in doctor.stdout and doctor.stderr == "", doctor.stdout + doctor.stderr


async def test_a_lab_that_failed_to_set_up_can_still_be_described():
    async with harness.open_lab() as lab:
        with pytest.raises(InvalidArgument):
            await lab.host("Not A Name")
        text = lab.describe()
    assert "no address slot" in text and "switch: netns (none)" in text
    await trio.lowlevel.checkpoint()
