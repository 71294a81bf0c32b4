"""Real tests of harness._uml: boot user-mode Linux guests and use tc-netem in them.

They skip, with the exact reason from guest_unavailable_reason(), where no
guest can boot (set HARNESS_REQUIRE_UML=1 to make that a failure instead).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
import uuid

import pytest

from harness import _uml
from harness._uml import (
    GuestError,
    GuestResult,
    GuestTimeout,
    GuestUnavailable,
    guest_unavailable_reason,
    run_in_guest,
)

REASON = guest_unavailable_reason()


# Where no guest can boot, skip with the exact reason -- unless the
# environment insists on UML (then the tests run and fail with that reason).
needs_guest = pytest.mark.skipif(
    REASON is not None and not os.environ.get("HARNESS_REQUIRE_UML"), reason=str(REASON)
)


def _track_run_dirs(monkeypatch) -> list[str]:
    """Record the directories run_in_guest creates (its per-run directory and
    the one for UML's memory file), so the leftover check sees only this
    test's guest even when other guests run concurrently (pytest-xdist)."""
    created: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*args, **kwargs):
        path = real_mkdtemp(*args, **kwargs)
        created.append(path)
        return path

    monkeypatch.setattr(_uml.tempfile, "mkdtemp", spy)
    return created


def _processes_mentioning(paths: list[str]) -> dict[int, str]:
    """Host processes whose command line names one of ``paths``: UML (its
    umid, uml_dir and init are in the run directory) and _uml's watchdog."""
    found = {}
    needles = [p.encode() for p in paths]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
    return found


def _assert_nothing_left(created: list[str]) -> None:
    assert created, "run_in_guest created no run directory?"
    deadline = time.monotonic() + 5
    while _processes_mentioning(created) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(created) == {}, "UML processes left behind"
    assert [p for p in created if os.path.exists(p)] == [], "per-run files left behind"


# ---------------------------------------------------------------------------
# availability


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the architecture is reported first")
def test_unavailable_reason_names_missing_binary(monkeypatch):
    monkeypatch.setattr(_uml, "UML_BINARY", "/nonexistent/linux")
    assert guest_unavailable_reason() == "user-mode-linux not installed: /nonexistent/linux missing"
    with pytest.raises(GuestUnavailable, match="user-mode-linux not installed: /nonexistent/linux missing"):
        run_in_guest(["true"])


@needs_guest
def test_unavailable_reason_names_missing_module():
    moddir = _uml._modules_dir()
    assert guest_unavailable_reason(("no_such_mod",)) == f"no_such_mod.ko not found under {moddir}"
    with pytest.raises(GuestUnavailable, match="no_such_mod.ko not found"):
        run_in_guest(["true"], modules=("no_such_mod",))


@needs_guest
def test_guest_available_here():
    assert guest_unavailable_reason() is None


# ---------------------------------------------------------------------------
# booting


@needs_guest
def test_true_returns_zero_and_reports_boot_time(monkeypatch):
    created = _track_run_dirs(monkeypatch)
    result = run_in_guest(["true"])
    print(f"\nboot {result.boot_seconds:.3f} s, total {result.total_seconds:.3f} s")
    assert isinstance(result, GuestResult)
    assert result.returncode == 0
    assert (result.stdout, result.stderr) == ("", "")
    assert 0 < result.boot_seconds <= result.total_seconds < 30
    _assert_nothing_left(created)


@needs_guest
def test_exit_status_output_env_cwd_and_private_tmp():
    marker = f"harness-uml-probe-{uuid.uuid4().hex}"
    script = textwrap.dedent(
        f"""
        echo "foo=$FOO"; pwd; echo oops >&2
        touch /tmp/{marker} && echo tmp-writable
        touch /{marker} 2>/dev/null || echo root-read-only
        grep -q '^sch_netem ' /proc/modules && echo netem-loaded
        grep -q '^veth ' /proc/modules && echo veth-loaded
        exit 3
        """
    )
    result = run_in_guest(["sh", "-c", script], env={"FOO": "bar", "PATH": "/usr/bin:/bin"}, cwd="/usr")
    assert result.returncode == 3
    assert result.stdout.splitlines() == [
        "foo=bar",
        "/usr",
        "tmp-writable",
        "root-read-only",
        "netem-loaded",
        "veth-loaded",
    ]
    assert result.stderr == "oops\n"
    assert not os.path.exists(f"/tmp/{marker}"), "guest /tmp leaked onto the host"
    assert not os.path.exists(f"/{marker}")


@needs_guest
def test_signal_death_is_negative_returncode():
    assert run_in_guest(["sh", "-c", "kill -KILL $$"]).returncode == -signal.SIGKILL


@needs_guest
def test_missing_command_is_127():
    result = run_in_guest(["no-such-command-xyz"])
    assert result.returncode == 127
    assert "no-such-command-xyz" in result.stderr


def _no_wait_for_uprobes(monkeypatch) -> None:
    """For a guest that is to time out anyway: no wait for another test's
    SO_ERROR uprobe (harness._exclusive), which would eat a short timeout
    before the guest starts, and end in "not started" instead."""
    from harness import _exclusive
    monkeypatch.setattr(_exclusive, "hold", lambda kind, timeout: None)
    monkeypatch.setattr(_exclusive, "release", lambda kind: None)


@needs_guest
def test_timeout_kills_guest_and_cleans_up(monkeypatch):
    created = _track_run_dirs(monkeypatch)
    _no_wait_for_uprobes(monkeypatch)
    started = time.monotonic()
    with pytest.raises(GuestTimeout, match=r"did not finish within 5 s"):
        run_in_guest(["sleep", "100"], timeout=5)
    assert time.monotonic() - started < 20
    _assert_nothing_left(created)


@needs_guest
def test_a_timed_out_guest_names_the_uprobes_on_the_machine(monkeypatch, tmp_path):
    """A uprobe in a host file hangs a guest's programs (reproduced with a
    libc probe made outside harness._exclusive's lock: no output, then the
    timeout).  A real one would hang other runs' guests, so the tracefs
    listing is the test's own here.  So is the exclusive lock: the guest
    times out whether or not a real uprobe of a test beside this one hangs
    it, and waiting for that test's lab would eat the 3 s before the guest
    starts (seen under -n 4: "not started: the SO_ERROR uprobe ... was held
    for the whole 3 s")."""
    from harness import _tracefs
    (tmp_path / "uprobe_events").write_text(
        "p:fih77_sys/getsockopt_77 /usr/lib/x86_64-linux-gnu/libc.so.6:0x0000000000123456\n")
    monkeypatch.setattr(_tracefs, "ROOT", str(tmp_path))
    _no_wait_for_uprobes(monkeypatch)
    with pytest.raises(GuestTimeout, match=r"(?s)did not finish within 3 s.*uprobe events on "
                                           r"this machine now: fih77_sys/getsockopt_77\.  A guest's"):
        run_in_guest(["sleep", "100"], timeout=3)
    (tmp_path / "uprobe_events").write_text("")
    with pytest.raises(GuestTimeout) as info:
        run_in_guest(["sleep", "100"], timeout=3)
    assert "uprobe" not in str(info.value)


@needs_guest
def test_keyboard_interrupt_kills_guest_and_cleans_up(monkeypatch):
    created = _track_run_dirs(monkeypatch)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(3)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_in_guest(["sleep", "100"], timeout=60)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    _assert_nothing_left(created)


@needs_guest
def test_unshareable_cwd_is_rejected():
    # /proc/<pid> of this host process cannot exist inside the guest.
    with pytest.raises(GuestError, match="cannot share"):
        run_in_guest(["true"], cwd=f"/proc/{os.getpid()}")


# ---------------------------------------------------------------------------
# the real netem path

# Run inside the guest as `python -c GUEST_SCRIPT <method> <delay|loss>`:
# two namespaces um-a/um-b joined by veth um-va/um-vb, a TCP echo server in
# um-b, a client in um-a measuring connect time and echo RTTs before and after
# netem is put on um-va's egress.  Prints one JSON object.
GUEST_SCRIPT = textwrap.dedent(
    r"""
    import json, shutil, socket, subprocess, sys, time

    ADDR_A, ADDR_B, PORT = "10.201.0.1", "10.201.0.2", 7777
    ME = [sys.executable, "/tmp/um-echo.py"]  # this script, in the guest's private /tmp

    def server():
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((ADDR_B, PORT))
        ls.listen(8)
        print("ready", flush=True)
        while True:
            c, _ = ls.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := c.recv(64):
                c.sendall(data)
            c.close()

    def client(timeout):
        s = socket.socket()
        s.settimeout(timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = time.perf_counter()
        try:
            s.connect((ADDR_B, PORT))
        except OSError as exc:  # socket.timeout is an OSError
            print(json.dumps({"error": type(exc).__name__, "elapsed": time.perf_counter() - t}))
            return
        connect = time.perf_counter() - t
        rtts = []
        for _ in range(7):
            t = time.perf_counter()
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            rtts.append(time.perf_counter() - t)
        print(json.dumps({"connect": connect, "rtts": rtts}))

    def sh(*argv):
        subprocess.run(argv, check=True)

    def main(method, impairment):
        with open(ME[1], "w") as f:
            f.write(SOURCE)  # defined by the line prepended below
        sh("ip", "netns", "add", "um-a")
        sh("ip", "netns", "add", "um-b")
        sh("ip", "link", "add", "um-va", "netns", "um-a", "type", "veth",
           "peer", "name", "um-vb", "netns", "um-b")
        for ns, dev, addr in (("um-a", "um-va", ADDR_A), ("um-b", "um-vb", ADDR_B)):
            sh("ip", "-n", ns, "addr", "add", addr + "/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        srv = subprocess.Popen(["ip", "netns", "exec", "um-b", *ME, "server"],
                               stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "ready"

        def run_client():
            out = subprocess.run(["ip", "netns", "exec", "um-a", *ME, "client", "2"],
                                 stdout=subprocess.PIPE, text=True, check=True).stdout
            return json.loads(out)

        result = {"baseline": run_client()}
        if method == "tc":
            args = ["delay", "100ms"] if impairment == "delay" else ["loss", "100%"]
            sh("ip", "netns", "exec", "um-a", "tc", "qdisc", "add", "dev", "um-va", "root", "netem", *args)
        else:
            from pyroute2 import IPRoute
            kwargs = {"delay": 100000} if impairment == "delay" else {"loss": 100}  # us / percent
            with IPRoute(netns="um-a") as ipr:
                index = ipr.link_lookup(ifname="um-va")[0]
                ipr.tc("add", "netem", index, **kwargs)
        if shutil.which("tc"):
            shown = subprocess.run(["tc", "-n", "um-a", "-j", "qdisc", "show", "dev", "um-va"],
                                   stdout=subprocess.PIPE, text=True, check=True).stdout
            result["qdiscs"] = [q["kind"] for q in json.loads(shown)]
        else:
            from pyroute2 import IPRoute
            with IPRoute(netns="um-a") as ipr:
                index = ipr.link_lookup(ifname="um-va")[0]
                result["qdiscs"] = [q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index)]
        result["netem"] = run_client()
        srv.kill()
        print(json.dumps(result))

    if sys.argv[1] == "server":
        server()
    elif sys.argv[1] == "client":
        client(float(sys.argv[2]))
    else:
        main(sys.argv[1], sys.argv[2])
    """
)
# The script re-runs itself (as a file) in the namespaces: give it its source.
GUEST_SCRIPT = f"SOURCE = {GUEST_SCRIPT!r}\n" + GUEST_SCRIPT

METHODS = [
    pytest.param("tc", marks=pytest.mark.skipif(shutil.which("tc") is None, reason="iproute2 tc not installed")),
    pytest.param("pyroute2"),
]


def _netem_in_guest(method: str, impairment: str) -> dict:
    if method == "pyroute2":
        pytest.importorskip("pyroute2")
    result = run_in_guest([sys.executable, "-c", GUEST_SCRIPT, method, impairment])
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["qdiscs"] == ["netem"]
    print(f"\n{method}/{impairment}: boot {result.boot_seconds:.3f} s, total {result.total_seconds:.3f} s")
    print(f"baseline {data['baseline']}\nnetem    {data['netem']}")
    baseline = data["baseline"]
    assert "error" not in baseline
    assert baseline["connect"] < 0.05
    assert statistics.median(baseline["rtts"]) < 0.02
    return data


@needs_guest
@pytest.mark.parametrize("method", METHODS)
def test_netem_delay_100ms(method):
    data = _netem_in_guest(method, "delay")
    netem = data["netem"]
    assert "error" not in netem, netem
    assert 0.1 <= netem["connect"] <= 0.12
    assert min(netem["rtts"]) >= 0.1
    assert 0.1 <= statistics.median(netem["rtts"]) <= 0.12


@needs_guest
@pytest.mark.parametrize("method", METHODS)
def test_netem_full_loss_times_out_connect(method):
    data = _netem_in_guest(method, "loss")
    assert data["netem"]["error"] in ("TimeoutError", "timeout"), data["netem"]
    assert data["netem"]["elapsed"] >= 2.0
