"""Kinds of work that must not overlap on one machine, across processes.

The opt-in SO_ERROR uprobe (``HARNESS_SO_ERROR_PROBE=1``) traps every glibc
getsockopt() on the machine, and a user-mode Linux guest hangs on it (seen
with Debian's 6.1 and the harness's 6.12 guests: the boot stops after the
console's first lines and the guest's timeout kills it).  Any number of
processes may hold uprobes, and any number may run guests, but not both at
once: :func:`hold` of one kind waits while another process holds the other.

Three flocks in the runtime directory (see ``_names``) do it:
``exclusive-<kind>.lock`` is held shared by every holder of that kind, and
``exclusive.gate`` is the turnstile: a process takes it exclusively to look
at the other kind's file (a try for an exclusive lock it drops at once) and
take its own, and keeps it while it waits.  So a look and a take are never
interleaved with another process's, and a waiter is never starved: while
it waits, newcomers of *both* kinds queue behind it, and only the holders
already in drain away.  Without that a stream of overlapping holders of
one kind (two xdist workers running SO_ERROR labs back to back) kept the
other kind out for good: a guest waited out its whole timeout (seen in CI).
Kinds thus alternate under contention, and the same kind shares freely
otherwise.  The price: a hold whose release waits on another process's new
hold of the same kind (a SO_ERROR lab whose test runs another SO_ERROR
run) queues that new hold behind a waiter of the other kind, until the
waiter's own timeout lets it through.
flock(2) locks go with their process: a killed run never blocks the next.
A process holds each kind through one file description however many labs
or guests share it; asking for the other kind while it holds one is refused
at once (the two descriptions would wait on each other for ever).
"""

from __future__ import annotations

import fcntl
import os
import time

from . import _names

KINDS = ("uprobe", "guest")
WHAT = {"uprobe": "the SO_ERROR uprobe (HARNESS_SO_ERROR_PROBE=1) of another process",
        "guest": "a user-mode Linux guest of another process"}
POLL = 0.05
UPROBE_WAIT = 300.0  # s a uprobe waits for other processes' guests to end

_held: dict[str, tuple[int, int]] = {}  # kind -> (fd, holders in this process)


class Busy(RuntimeError):
    """The other kind was held for the whole wait, or by this process."""


def _path(name: str) -> str | None:
    directory = _names.lease_dir()
    return None if directory is None else os.path.join(directory, name)


def _open(name: str) -> int | None:
    path = _path(name)
    if path is None:
        return None
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _other(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return KINDS[1 - KINDS.index(kind)]


def hold(kind: str, timeout: float) -> None:
    """Hold ``kind`` (shared with other holders of it), waiting up to
    ``timeout`` seconds while another process holds the other kind; raise
    :class:`Busy` naming it after that.  Each call is paired with one
    :func:`release`.  Without a writable runtime directory nothing can be
    shared with other processes, and this only counts."""
    other = _other(kind)
    if kind in _held:
        fd, n = _held[kind]
        _held[kind] = (fd, n + 1)
        return
    if other in _held:
        raise Busy(f"this process holds {WHAT[other].replace(' of another process', '')}")
    mine = _open(f"exclusive-{kind}.lock")
    if mine is None:
        _held[kind] = (-1, 1)
        return
    theirs = gate = -1
    try:
        theirs = _open(f"exclusive-{other}.lock")
        gate = _open("exclusive.gate")
        deadline = time.monotonic() + timeout
        pause = 0.001   # a look takes microseconds; a waiter's turn takes longer
        while not _try(gate, fcntl.LOCK_EX):   # behind another waiter, of either kind
            if time.monotonic() >= deadline:
                raise Busy(f"another process waiting for its turn (for {WHAT[other]} or "
                           f"for this kind to end) kept this one queued for the whole "
                           f"{timeout:g} s waited (a guest hangs on the uprobe, so they take turns)")
            time.sleep(pause)
            pause = min(2 * pause, POLL)
        while True:   # the turnstile is ours: newcomers wait, the other kind's holders drain
            now = time.monotonic()  # read before the look: the last look starts past the deadline
            if _try(theirs, fcntl.LOCK_EX):
                fcntl.flock(theirs, fcntl.LOCK_UN)
                fcntl.flock(mine, fcntl.LOCK_SH)  # only looks take it exclusively, at the turnstile
                _held[kind] = (mine, 1)
                mine = -1
                return
            if now >= deadline:
                raise Busy(f"{WHAT[other]} was held for the whole {timeout:g} s waited "
                           f"(they cannot run at once: a guest hangs on the uprobe)")
            time.sleep(POLL)
    finally:
        for fd in (mine, theirs, gate):
            if fd >= 0:
                os.close(fd)   # closing the gate's description lets the next one through


def release(kind: str) -> None:
    """Undo one :func:`hold` of ``kind``; the last one lets other processes'
    other kind go ahead."""
    fd, n = _held[kind]
    if n > 1:
        _held[kind] = (fd, n - 1)
        return
    del _held[kind]
    if fd >= 0:
        os.close(fd)   # closing the description drops its flock


def held(kind: str) -> bool:
    return kind in _held
