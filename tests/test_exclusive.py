"""harness._exclusive: the opt-in SO_ERROR uprobe and user-mode Linux guests
never run at once on one machine, whichever processes hold them (a guest
hangs on the uprobe: seen with -n 4 when test_servers ran beside test_uml).

Other processes are real processes here: the kind is held through flocks,
which only another open file description (and, at a kill, the kernel) can
show."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest
import trio

import harness
from harness import _exclusive, _lab, _netns, _tracefs, _tracer, _uml
from harness._names import owner_of
from harness.errors import SetupError
from helpers import dies_with_me

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def holder(kind: str, lockdir: str | None) -> subprocess.Popen:
    """Another process holding ``kind`` until killed (it prints 'held'),
    with its locks in ``lockdir`` (None: the machine's)."""
    code = textwrap.dedent(f"""
        import os, sys, time
        from harness import _exclusive
        if {lockdir!r} is not None:
            _exclusive._path = lambda name: os.path.join({lockdir!r}, name)
        _exclusive.hold({kind!r}, 30)
        print("held", flush=True)
        time.sleep(60)
        """)
    proc = subprocess.Popen(dies_with_me([sys.executable, "-c", code]), cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


MACHINE_LOCKS, UPROBE_WAIT = _exclusive._path, _exclusive.UPROBE_WAIT


@pytest.fixture
def lockdir(tmp_path, monkeypatch):
    """The unit tests' locks, apart from the machine's: guests and uprobes of
    other runs on the machine (the catalog's guest session...) must not
    make them wait."""
    monkeypatch.setattr(_exclusive, "_path", lambda name: str(tmp_path / name))
    return str(tmp_path)


@pytest.fixture
def other(request):
    """Start another process holding a kind: in the test's own lock
    directory when it uses ``lockdir``, else the machine's."""
    procs: list[subprocess.Popen] = []
    where = request.getfixturevalue("lockdir") if "lockdir" in request.fixturenames else None

    def start(kind: str) -> subprocess.Popen:
        procs.append(holder(kind, where))
        return procs[-1]
    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_one_kind_waits_for_the_other_and_goes_when_it_dies(lockdir, other):
    proc = other("uprobe")
    t0 = time.monotonic()
    with pytest.raises(_exclusive.Busy, match="SO_ERROR uprobe .* of another process .* 0.3 s"):
        _exclusive.hold("guest", 0.3)
    assert time.monotonic() - t0 >= 0.3
    assert not _exclusive.held("guest")
    proc.send_signal(signal.SIGKILL)  # no teardown: the kernel drops its flock
    proc.wait()
    _exclusive.hold("guest", 5)
    try:
        assert _exclusive.held("guest")
    finally:
        _exclusive.release("guest")


def test_a_waiting_guest_starts_the_moment_the_uprobe_goes(lockdir, other):
    proc = other("uprobe")

    def kill_later():
        time.sleep(0.5)
        proc.kill()
    t = threading.Thread(target=kill_later)
    t.start()
    t0 = time.monotonic()
    _exclusive.hold("guest", 10)
    waited = time.monotonic() - t0
    t.join()
    _exclusive.release("guest")
    assert 0.5 <= waited < 0.5 + 0.5, waited  # one poll (50 ms) after the kill, with room for the reap


def test_the_same_kind_is_shared(lockdir, other):
    other("guest")
    other("guest")
    _exclusive.hold("guest", 0.1)   # no wait: a guest does not exclude a guest
    _exclusive.hold("guest", 0.1)
    _exclusive.release("guest")
    assert _exclusive.held("guest")
    _exclusive.release("guest")
    assert not _exclusive.held("guest")
    with pytest.raises(_exclusive.Busy):   # and the guests do exclude a uprobe
        _exclusive.hold("uprobe", 0.1)


def _relay(kind: str, lockdir: str, phase: float) -> subprocess.Popen:
    """Another process holding ``kind`` for 1 s at a time, letting go for
    50 ms between holds, from ``phase`` s on: two of them half a period apart
    keep the kind held without a gap (two xdist workers running SO_ERROR
    labs back to back did that in CI).  It prints when each hold began and
    ended (CLOCK_MONOTONIC is the machine's)."""
    code = textwrap.dedent(f"""
        import os, time
        from harness import _exclusive
        _exclusive._path = lambda name: os.path.join({lockdir!r}, name)
        time.sleep({phase!r})
        while True:
            _exclusive.hold({kind!r}, 60)
            began = time.monotonic()
            time.sleep(1.0)
            ended = time.monotonic()
            _exclusive.release({kind!r})
            print(began, ended, flush=True)
            time.sleep(0.05)
        """)
    return subprocess.Popen(dies_with_me([sys.executable, "-c", code]), cwd=REPO,
                            stdout=subprocess.PIPE, text=True)


def _holds(relay: subprocess.Popen) -> tuple[float, float]:
    began, ended = relay.stdout.readline().split()
    return float(began), float(ended)


@pytest.mark.parametrize("kind", _exclusive.KINDS)
def test_a_waiter_is_not_starved_by_overlapping_holders_of_the_other_kind(lockdir, kind):
    """A waiter keeps the turn: newcomers of the other kind queue behind it,
    so the holders already in drain and it goes within about one hold,
    not after its whole timeout.  The relays go on after it."""
    theirs = _exclusive._other(kind)
    relays = [_relay(theirs, lockdir, 0.0), _relay(theirs, lockdir, 0.5)]
    try:
        for r in relays:
            _holds(r)   # both in their stride: from now on no gap is left for a look
        _exclusive.hold(kind, 10)   # before the turnstile: starved all 10 s, then Busy
        began = time.monotonic()
        time.sleep(0.2)
        ended = time.monotonic()
        _exclusive.release(kind)
        for r in relays:
            while True:   # each holds again after us, and never held while we did
                their_began, their_ended = _holds(r)
                assert their_ended <= began or their_began >= ended, \
                    (kind, (began, ended), (their_began, their_ended))
                if their_began >= ended:
                    break
    finally:
        for r in relays:
            r.kill()
            r.wait()


def test_this_process_holding_one_kind_is_refused_the_other_at_once(lockdir):
    _exclusive.hold("uprobe", 1)
    try:
        t0 = time.monotonic()
        with pytest.raises(_exclusive.Busy, match="this process holds the SO_ERROR uprobe"):
            _exclusive.hold("guest", 30)
        assert time.monotonic() - t0 < 1
    finally:
        _exclusive.release("uprobe")
    with pytest.raises(ValueError, match="kind must be one of"):
        _exclusive.hold("probe", 1)


def _uprobe_groups() -> set[str]:
    """This process's uprobe groups (another process may hold its own
    meanwhile: test_a_guest_waits_for_a_real_uprobe_lab... on another worker
    does; its group showed up here once)."""
    return {g for g in _tracefs.probe_groups()
            if owner_of(_tracefs.instance_of(g)) == os.getpid()}


@pytest.mark.skipif(not os.path.exists(f"{_tracefs.ROOT}/uprobe_events"),
                    reason="this kernel has no uprobe events (CONFIG_UPROBE_EVENTS)")
def test_a_lab_asking_for_the_uprobe_while_a_guest_runs_waits_then_says_why(lockdir, other, monkeypatch):
    """Set-up fails after the wait with the reason, and installs no uprobe."""
    other("guest")
    before = _uprobe_groups()
    monkeypatch.setenv("HARNESS_SO_ERROR_PROBE", "1")
    monkeypatch.setattr(_exclusive, "UPROBE_WAIT", 0.3)

    async def main():
        async with harness.open_lab() as lab:
            await lab.host("a")
    with pytest.raises(SetupError, match="uprobe: a user-mode Linux guest of another process"):
        trio.run(main)
    assert _uprobe_groups() == before
    assert not _exclusive.held("uprobe")
    _lab._pool.close()   # host "a", made before the wait failed, was left behind (seen)
    assert [n for n in _netns.list_names() if owner_of(n) == os.getpid()] == []


needs_guest = pytest.mark.skipif(_uml.guest_unavailable_reason() is not None,
                                 reason=str(_uml.guest_unavailable_reason()))


@needs_guest
def test_a_guest_waits_for_a_real_uprobe_lab_of_another_process_then_boots(monkeypatch):
    """The scenario that hung: another process's lab holds the real uprobe;
    the guest starts only once that lab is closing, and then runs."""
    code = textwrap.dedent("""
        import os, time, trio, harness
        os.environ["HARNESS_SO_ERROR_PROBE"] = "1"
        async def main():
            async with harness.open_lab() as lab:
                await lab.host("a")
                print("probe", flush=True)
                await trio.sleep(2)
                print("closing", time.monotonic(), flush=True)
        trio.run(main)
        """)
    started: list[float] = []
    real_hold = _exclusive.hold

    def spy(kind, timeout):
        real_hold(kind, timeout)
        started.append(time.monotonic())
    monkeypatch.setattr(_uml._exclusive, "hold", spy)
    proc = subprocess.Popen(dies_with_me([sys.executable, "-c", code]), cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "probe\n"
        res = _uml.run_in_guest(["true"], timeout=120)
        closing = proc.stdout.readline().split()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert res.returncode == 0
    assert closing[0] == "closing" and started[0] >= float(closing[1]), (started, closing)


@needs_guest
def test_a_guest_in_a_process_holding_the_uprobe_is_refused_at_once(lockdir):
    _exclusive.hold("uprobe", 1)
    try:
        with pytest.raises(_uml.GuestTimeout, match="not started: this process holds"):
            _uml.run_in_guest(["true"], timeout=60)
    finally:
        _exclusive.release("uprobe")


def test_no_uprobe_possible_means_guests_are_not_held_up(lockdir, other, monkeypatch):
    """Where no syscall session can be made (no tracefs, as rootless), the
    probe cannot exist: a lab that asks for it neither waits for guests nor
    keeps them waiting."""
    from harness.errors import Unsupported

    def refused(*args, **kwargs):
        raise Unsupported("no tracing here (test)")
    # a tracer of its own, with no instance at all: one named like this
    # process's would be the process's own tracer's (which other tests need)
    monkeypatch.setattr(_tracefs, "SyscallSession", refused)
    monkeypatch.setattr(_tracefs, "TraceSession", refused)
    monkeypatch.setenv("HARNESS_SO_ERROR_PROBE", "1")
    monkeypatch.setattr(_exclusive, "UPROBE_WAIT", 0.3)
    tracer = _tracer._Tracer()
    lab = types.SimpleNamespace(slot=types.SimpleNamespace(index=10_000))
    try:
        tracer.register(lab)                 # the first lab: tries, finds none, lets go
        assert not _exclusive.held("uprobe")
        other("guest")                       # a guest runs now
        tracer.register(types.SimpleNamespace(slot=types.SimpleNamespace(index=10_001)))
        assert not _exclusive.held("uprobe")  # and a second lab did not wait for it
    finally:
        tracer.close()


@pytest.mark.skipif(not os.path.exists(f"{_tracefs.ROOT}/uprobe_events"),
                    reason="this kernel has no uprobe events (CONFIG_UPROBE_EVENTS)")
def test_every_uprobe_the_harness_makes_waits_for_guests(lockdir, other, monkeypatch):
    """Not only labs: the tracefs session's own probe_libc() (which a test of
    the harness called directly, and so hung another run's guest session)
    takes the kind, waits while a guest runs, and lets it go when removed."""
    libc = next(line.split()[-1] for line in open("/proc/self/maps")
                if os.path.basename(line.split()[-1]).startswith("libc.so"))
    s = _tracefs.SyscallSession(f"fih{os.getpid()}-excltest")
    try:
        guest = other("guest")
        monkeypatch.setattr(_exclusive, "UPROBE_WAIT", 0.3)
        with pytest.raises(_exclusive.Busy, match="user-mode Linux guest"):
            s.probe_libc(libc)
        assert s._group not in _tracefs.probe_groups()   # nothing made
        guest.kill()
        guest.wait()
        # a real uprobe now: under the machine's lock, not the test's own,
        # or a real guest of another worker (test_uml) hangs on it (seen)
        monkeypatch.setattr(_exclusive, "_path", MACHINE_LOCKS)
        monkeypatch.setattr(_exclusive, "UPROBE_WAIT", UPROBE_WAIT)
        assert s.probe_libc(libc) and _exclusive.held("uprobe")
    finally:
        s.close()
    assert not _exclusive.held("uprobe")
