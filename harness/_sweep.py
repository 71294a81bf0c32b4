"""Remove what dead harness processes left: only objects whose name or label
carries the pid of a process that no longer exists.  Never by a broad name."""

from __future__ import annotations

import os
import signal

from . import _diag, _netns, _tracefs
from ._names import owner_of, pid_alive


def stale_netns() -> list[str]:
    return [n for n in _netns.list_names()
            if (pid := owner_of(n)) is not None and not pid_alive(pid)]


def remove_netns(name: str) -> None:
    """Kill every process in it, abort every socket, delete it."""
    path = _netns.path(name)
    try:
        ino = _netns.inode(path)
    except FileNotFoundError:
        return
    for pid in _netns.pids_in(ino):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        fd = _netns.open_fd(path)
    except Exception:  # noqa: BLE001 - the mount may be half gone
        _netns.delete(name)
        return
    try:
        with _netns.entered(fd):
            sock = _diag.open_socket()
        with sock:
            _diag.destroy_all(sock)
    finally:
        os.close(fd)
    _netns.delete(name)


def sweep() -> list[str]:
    """Remove stale namespaces, tracefs instances and containers; returns
    what was removed."""
    from .topology import kinds
    removed = []
    for kind in kinds():  # namespaces, containers...: each kind sweeps its own
        removed += kind.sweep()
    for inst in _tracefs.list_instances():
        pid = owner_of(inst + "-")
        if pid is not None and not pid_alive(pid):
            _tracefs.remove_instance(inst)
            removed.append(f"tracefs instance {inst}")
    return removed
