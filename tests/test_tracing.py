"""The syscall tracer's kernel-facing pieces: pids as the kernel sees them
from inside a pid namespace of its own (a CI container), the getsockopt
uprobe's place in glibc, and the sweep of a dead run's uprobe events."""

import json
import os
import subprocess
import sys

import pytest

from harness import _sweep, _tracefs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(_tracefs.unavailable_reason() is not None,
                                reason=str(_tracefs.unavailable_reason()))

IN_PIDNS = r"""
import json, subprocess, sys, threading
sys.path.insert(0, sys.argv[2])
from harness import _tracefs
s = _tracefs.SyscallSession(sys.argv[1])
try:
    me = s.kernel_tid()
    box = []
    def fork():                       # as Host.spawn does: list the thread, fork
        tid = s.kernel_tid()
        s.add_pid(tid)
        box.append(tid)
        box.append(subprocess.Popen(
            ["bash", "-c", "(exec 3<>/dev/tcp/127.0.0.1/9) 2>/dev/null; exit 0"]))
    t = threading.Thread(target=fork)
    t.start()
    t.join()
    box[1].wait()
    recs = s.drain()
    print(json.dumps({
        "init": _tracefs.in_init_pid_namespace(), "native": threading.get_native_id(),
        "kernel": me, "spawner": box[0], "child_local": box[1].pid,
        "forks": [[r.parent, r.child] for r in recs if isinstance(r, _tracefs.Fork)],
        "calls": [[r.pid, r.call, r.ret] for r in recs if isinstance(r, _tracefs.SyscallExit)],
    }), flush=True)
    sys.stdin.read()                  # alive until the test has looked at /proc
finally:
    s.close()
"""


def _nspid(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return []


def test_pids_are_the_kernels_inside_a_pid_namespace():
    """tracefs lists and reports the kernel's pids.  A run in a pid
    namespace of its own (python is pid 1 there) learns its threads' kernel
    pids from a trace marker, lists them, and finds its child's and
    grandchild's kernel pids in the fork events: the grandchild's failing
    connect() (no loopback in a fresh network namespace: ENETUNREACH) is
    traced and chains back to the spawning thread."""
    name = f"fih{os.getpid()}-pidns"
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--net",
                             sys.executable, "-c", IN_PIDNS, name, REPO],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        got = json.loads(line)
        assert got["init"] is False and got["native"] == 1
        assert _nspid(got["kernel"]) == [got["kernel"], 1]  # the kernel's pid of ns pid 1
        child = [c for p, c in got["forks"] if p == got["spawner"]]
        assert len(child) == 1 and child[0] != got["child_local"]
        grandchild = [c for p, c in got["forks"] if p == child[0]]
        assert [pid for pid, call, ret in got["calls"]
                if call == "connect" and ret == -101] == grandchild  # ENETUNREACH
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    assert name not in _tracefs.list_instances()


def test_getsockopt_probe_point_is_after_the_syscall_in_this_glibc():
    libc = next(line.split()[-1] for line in open("/proc/self/maps")
                if os.path.basename(line.split()[-1]).startswith("libc.so"))
    off = _tracefs.libc_getsockopt_return(libc)
    assert off is not None
    with open(libc, "rb") as f:
        f.seek(off - 2)
        assert f.read(2) == b"\x0f\x05"  # syscall, right before the probe
    assert _tracefs.libc_getsockopt_return(os.path.realpath(sys.executable)) is None  # imports it
    assert _tracefs.libc_getsockopt_return("/nonexistent") is None


def test_sweep_removes_the_uprobe_events_of_a_dead_run():
    """A run killed with SIGKILL leaves its uprobe events (they are global,
    not in its tracefs instance); the next run's sweep removes them, and only
    those of dead owners."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    group = _tracefs.probe_group(f"fih{dead.pid}-sys")
    libc = next(line.split()[-1] for line in open("/proc/self/maps")
                if os.path.basename(line.split()[-1]).startswith("libc.so"))
    off = _tracefs.libc_getsockopt_return(libc)
    _tracefs._append(f"{_tracefs.ROOT}/uprobe_events",
                     f"p:{group}/soerr0 {libc}:{off:#x} value=+0(%r10):s32\n")
    try:
        assert group in _tracefs.probe_groups()
        _sweep.sweep()   # this one, or a sweep of a run beside it (-n 4)
        assert group not in _tracefs.probe_groups()
    finally:
        _tracefs.remove_probes(group)


def test_a_closed_session_leaves_no_uprobe_event_and_no_instance():
    libc = next(line.split()[-1] for line in open("/proc/self/maps")
                if os.path.basename(line.split()[-1]).startswith("libc.so"))
    name = f"fih{os.getpid()}-closetest"
    s = _tracefs.SyscallSession(name)
    try:
        assert s.probe_libc(libc) and s.probe_libc(libc)  # one event per glibc file
        assert len(s._libcs) == 1
        assert s._group in _tracefs.probe_groups()
    finally:
        s.close()
    assert s._group not in _tracefs.probe_groups()
    assert name not in _tracefs.list_instances()
