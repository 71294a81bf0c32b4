"""Remove what dead harness processes left: only objects whose name or label
carries the owner tag of a process provably gone (``_names.owner_alive``).
Never by a broad name.

Many runs may start at once (xdist workers, parallel CI jobs after a
cancelled one), so the sweep holds an exclusive lock while it works, and each
removal tolerates the object vanishing under it anyway (a sweeper in another
mount namespace that does not share the lock, a half-removed object):
ENOENT, ENODEV (a tracefs instance being removed), EINVAL (a /run/netns
file whose namespace was just unmounted).  EBUSY means someone still uses
it, so it stays.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import tempfile

from . import _diag, _netns, _tracefs
from . import _names
from ._names import PREFIX, lock_path, owner_alive
from .errors import SetupError, Unsupported

_GONE = (errno.ENOENT, errno.ENODEV, errno.EINVAL)
# the harness's temporary directories: _names.owned_tempdir() (open_lab()'s
# artifacts, "guest-": a run's guest-session directory)
_TMP_DIR = re.compile(rf"^{PREFIX}\d+(?:p\d+)?-(?:[a-z]+-)?[a-z0-9_]{{8}}$")


def _dead(name: str) -> bool:
    return owner_alive(name) is False


def stale_netns() -> list[str]:
    return [n for n in _netns.list_names() if _dead(n)]


def remove_netns(name: str) -> bool:
    """Kill every process in it, abort every socket, delete it.  False if it
    was already gone (someone else removed it)."""
    path = _netns.path(name)
    try:
        ino = _netns.inode(path)
    except FileNotFoundError:
        return False
    for pid in _netns.pids_in(ino):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        fd = _netns.open_fd(path)
    except Exception:  # noqa: BLE001 - the mount may be half gone
        _netns.delete(name)
        return True
    try:
        with _diag.open_socket(fd) as sock:
            _diag.destroy_all(sock)
    except Unsupported:
        pass  # no SOCK_DESTROY here: the namespace goes all the same
    except SetupError as exc:
        if exc.errno != "EINVAL":  # EINVAL: no longer a namespace (just unmounted)
            raise
    finally:
        os.close(fd)
    _netns.delete(name)
    return True


def remove_instance(name: str) -> bool:
    """Remove a dead owner's tracefs instance; False if it was gone or is
    still in use (EBUSY: then its owner was not dead after all)."""
    try:
        os.rmdir(f"{_tracefs.ROOT}/instances/{name}")
    except OSError as exc:
        if exc.errno in _GONE or exc.errno == errno.EBUSY:
            return False
        raise
    return True


@contextlib.contextmanager
def _locked():
    """The machine-wide sweep lock (blocking: a concurrent sweep finishes
    first, then ours finds nothing of what it removed)."""
    try:
        fd = os.open(lock_path("sweep"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:  # no writable lock directory: removals still tolerate races
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def sweep() -> list[str]:
    """Remove dead owners' namespaces, containers, tracefs instances and
    artifact directories; returns what was removed."""
    from ._topology import kinds
    removed = []
    with _locked():
        for kind in kinds():  # namespaces, containers...: each kind sweeps its own
            removed += kind.sweep()
        for inst in _tracefs.list_instances():
            if _dead(inst + "-") and remove_instance(inst):
                removed.append(f"tracefs instance {inst}")
        tmp = tempfile.gettempdir()
        try:
            entries = os.listdir(tmp)
        except OSError:
            entries = []
        for entry in entries:
            # a mount point is never a dead run's own: in a guest kernel, the
            # host's live session directory is mounted at its host path
            if _TMP_DIR.match(entry) and _dead(entry) and \
                    not os.path.ismount(os.path.join(tmp, entry)):
                shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)
                removed.append(f"directory {tmp}/{entry}")
        for group in _tracefs.probe_groups():  # uprobe events (getsockopt SO_ERROR)
            if _dead(_tracefs.instance_of(group) + "-"):
                _tracefs.remove_probes(group)
                removed.append(f"uprobe events {group}")
    return removed


def lease_slot(start: int = 0) -> "_names.Slot":
    """A lab's address slot: ``_names.lease_slot``, but never one whose dead
    owner's namespaces remain.  A slot frees when its owner dies, while a
    killed owner's namespaces stay until a sweep, with the slot's addresses
    and live sockets: their timers (a FIN retransmitted, an orphan's
    reset) and the sweep's own socket aborts would put events with those
    addresses into a new lab's timeline, which attributes kernel events by
    address.  So such a slot is swept first, and passed over (held until a
    clean one is found) if some stay: an owner this process cannot prove
    dead."""
    skipped: list[_names.Slot] = []
    try:
        while True:
            slot = _names.lease_slot(start)
            if not _names.leftovers(slot.index):
                return slot
            try:
                sweep()
            except BaseException:
                slot.release()
                raise
            if not _names.leftovers(slot.index):
                return slot
            skipped.append(slot)
    finally:
        for slot in skipped:
            slot.release()
