"""The process's tracefs instances, shared by its labs: the kernel timeline's
source (socket state changes, RSTs, retransmits) and the failing socket calls
of every process a lab started, with all its descendants.

Labs register here when they open and unregister when they close; hosts
hand it the processes they start (``watch``) and their containers' main
processes (``watch_container``).  It knows labs and hosts only through the
few attributes it reads (``lab.slot``, ``lab.timeline``, ``host.ns_ino``,
``host.lab``), so it imports neither module.
"""

from __future__ import annotations

import atexit
import errno as _errno
import ipaddress
import os
from typing import TYPE_CHECKING

import trio

from . import _exclusive, _names, _netns, _tracefs
from .errors import SetupError, Unsupported
from ._observe.timeline import NOWHERE, Event, event_from_trace

if TYPE_CHECKING:  # pragma: no cover
    from ._host import Host
    from ._lab import Lab


def so_error_probe() -> bool:
    """Whether labs watch getsockopt(SO_ERROR) with a uprobe on glibc
    (``HARNESS_SO_ERROR_PROBE=1``).  Off by default: while the uprobe exists
    every glibc getsockopt() on the machine traps, and user-mode Linux guests
    (ptrace-driven processes running the host's libc) hang on it; it is
    removed again when the process's last lab closes."""
    return os.environ.get("HARNESS_SO_ERROR_PROBE", "0") == "1"


class _Tracer:
    """The process's tracefs instances, shared by its labs.

    Failing calls are attributed through lineage, not through /proc at read
    time: ``roots`` are the processes the labs started (spawned, peers, a
    container's main process), ``parents`` what sched_process_fork said about
    every task descended from them.  A child that forked and exited long
    before the buffer is read is still its ancestor's and its host's."""

    def __init__(self) -> None:
        self.session: _tracefs.TraceSession | None = None
        self.unavailable: str | None = None
        self.labs: dict[int, "Lab"] = {}
        self.syscalls: _tracefs.SyscallSession | None = None
        self.roots: dict[int, tuple[Host, object]] = {}  # kernel pid -> (host, process)
        self.parents: dict[int, int] = {}  # kernel pid -> parent's, from fork events
        self.spawners: dict[int, tuple[Host, object]] = {}  # spawning thread -> its child's
        self.spawner_tids: dict[int, "Lab"] = {}  # the harness's own threads: never attributed
        self.pids: dict[int, Host] = {}  # resolved kernel pid -> host (cache)
        self.uprobe_held = False  # _exclusive's "uprobe" kind, while labs may probe

    @staticmethod
    def slot_of(address: str | None) -> int | None:
        if not address:
            return None
        if address.startswith(("198.18.", "198.19.")):
            b, c = address.split(".")[1:3]
            return (int(b) - 18) * 256 + int(c)
        if address.startswith("fd66:6968:"):
            try:
                packed = ipaddress.IPv6Address(address).packed
            except ValueError:
                return None
            return int.from_bytes(packed[6:8], "big") if packed[4:6] == b"\0\0" else None
        return None

    def keep(self, fields: dict) -> bool:
        return self.slot_of(fields.get("saddr")) in self.labs

    def register(self, lab: "Lab") -> None:
        """Make the process's instances with the first lab.  With the
        SO_ERROR probe asked for, first wait (Ctrl-C still stops the wait)
        until no other process runs a user-mode Linux guest: the uprobe
        would hang it (``_exclusive``)."""
        tried = self.session is not None or self.unavailable is not None
        if so_error_probe() and not self.uprobe_held and not (tried and self.syscalls is None):
            try:
                _exclusive.hold("uprobe", _exclusive.UPROBE_WAIT)
            except _exclusive.Busy as exc:
                raise SetupError(f"cannot watch getsockopt(SO_ERROR) with a uprobe: {exc}") from None
            self.uprobe_held = True
        try:
            self._register(lab)
        finally:
            if not self.labs or self.syscalls is None:   # no uprobe can be made: let guests run
                self._release_uprobe()

    def _release_uprobe(self) -> None:
        if self.syscalls is not None:
            self.syscalls.unprobe_libcs()  # they trap every getsockopt on the machine
        if self.uprobe_held:
            self.uprobe_held = False
            _exclusive.release("uprobe")

    @trio.lowlevel.enable_ki_protection
    def _register(self, lab: "Lab") -> None:
        """Protected from
        KeyboardInterrupt (trio delivers a Ctrl-C at the next checkpoint
        instead): an instance interrupted half-made could hold a file open
        and answer EBUSY to every later attempt."""
        if self.session is None and self.unavailable is None:
            atexit.register(self.close)
            try:
                self.session = _tracefs.TraceSession(_names.owner_tag(), self.keep)
            except Unsupported as exc:
                self.unavailable = str(exc)
            try:
                self.syscalls = _tracefs.SyscallSession(_names.owner_tag() + "-sys")
            except (Unsupported, OSError):
                pass  # the timeline then has no syscall events
        if self.syscalls is not None and self.uprobe_held:
            libc = _libc_of("self")
            if libc:
                self.syscalls.probe_libc(libc)
        self.labs[lab.slot.index] = lab

    def unregister(self, lab: "Lab") -> None:
        """Forget a finished lab and every process attributed to it (its
        namespace fds are closed: nothing may look at them again)."""
        for index in [i for i, known in self.labs.items() if known is lab]:
            del self.labs[index]
        if not self.labs:
            self._release_uprobe()
        for table in (self.roots, self.spawners):
            for pid in [p for p, (h, _) in table.items() if h.lab is lab]:
                del table[pid]
        for pid in [p for p, h in self.pids.items() if h.lab is lab]:
            del self.pids[pid]
        for tid in [t for t, owner in self.spawner_tids.items() if owner is lab]:
            del self.spawner_tids[tid]
        # lineage that no longer leads to a live lab's process
        for pid in list(self.parents):
            p, hops = pid, 0
            while p not in self.roots and p in self.parents and hops < 64:
                p, hops = self.parents[p], hops + 1
            if p not in self.roots and p not in self.spawners:
                del self.parents[pid]

    def arm_spawner(self) -> int | None:
        """Called in the thread about to fork a lab's process: list the
        thread, so the kernel lists its child at fork (event-fork).  The
        thread exits right after, which takes it off the list."""
        if self.syscalls is None:
            return None
        try:
            tid = self.syscalls.kernel_tid()
            self.syscalls.add_pid(tid)
        except (OSError, Unsupported):  # tracing is lost, not the spawn
            return None
        return tid

    def watch(self, proc, host: Host, spawner: int | None = None) -> None:
        """Attribute ``proc`` (forked by the thread ``spawner``) and its
        descendants to ``host``."""
        if spawner is None or _tracefs.in_init_pid_namespace():
            proc.kernel_pid = proc.pid
            self.roots[proc.pid] = (host, proc)
        if spawner is not None:
            self.spawners[spawner] = (host, proc)
            self.spawner_tids[spawner] = host.lab
            if proc.kernel_pid is None:
                self.refresh()  # the fork event names the child's kernel pid

    def watch_container(self, host: Host) -> None:
        """Trace a container's main process and whatever it already started
        (its children from now on follow by event-fork), and its glibc's
        getsockopt.  Pids are the docker daemon's view (the kernel's, with
        the daemon in the init pid namespace)."""
        main = host.main
        self.roots[main.kernel_pid] = (host, main)
        if self.syscalls is None:
            return
        libc = _libc_of(str(main.pid))
        if libc and self.uprobe_held:
            self.syscalls.probe_libc(f"/proc/{main.pid}/root{libc}")
        if not _tracefs.in_init_pid_namespace():
            # /proc here shows our pid namespace's numbers, not the kernel's:
            # only the main process (docker's pid is the kernel's when the
            # daemon runs in the init namespace) and what it starts from now
            try:
                self.syscalls.add_pid(main.kernel_pid)
            except OSError:
                pass
            return
        seen: set[int] = set()
        while True:  # until no process started between listing and listing
            fresh = [p for p in _netns.pids_in(host.ns_ino) if p not in seen]
            if not fresh:
                break
            for pid in fresh:
                seen.add(pid)
                for tid in _tids(pid):  # its threads too (redis's I/O and bio threads)
                    self.syscalls.add_pid(tid)
                    if tid != pid:
                        self.parents.setdefault(tid, pid)
                if pid != main.pid:
                    self.parents.setdefault(pid, _ppid(pid))

    def _attribute(self, pid: int) -> tuple[Host | None, object, tuple[int, ...]]:
        """(host, root process, ancestors up to that root) of a kernel pid."""
        chain, p = [], pid
        while p not in self.roots and p in self.parents and len(chain) < 64:
            p = self.parents[p]
            chain.append(p)
        if p in self.roots:
            host, proc = self.roots[p]
            return host, proc, tuple(chain)
        return self._host_of(pid), None, tuple(chain)

    def _host_of(self, pid: int) -> Host | None:
        """Fallback for a task whose lineage is unknown: its namespace, while
        it lives, compared with each live host's recorded inode (never an
        fstat of a host's fd, which a finished lab has closed)."""
        host = self.pids.get(pid)
        if host is None:
            try:
                ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                return None
            for lab in self.labs.values():
                for h in lab.hosts.values():
                    if h.ns_ino == ino:
                        self.pids[pid] = host = h
        return host

    def refresh(self) -> None:
        if self.syscalls is not None:
            for rec in self.syscalls.drain():
                if isinstance(rec, _tracefs.Fork):
                    self.parents[rec.child] = rec.parent
                    self.spawner_tids.pop(rec.child, None)  # a reused pid
                    self.pids.pop(rec.child, None)          # (its namespace may be another's)
                    if rec.parent in self.spawners:
                        host, proc = self.spawners.pop(rec.parent)
                        proc.kernel_pid = rec.child
                        self.roots[rec.child] = (host, proc)
                    continue
                if rec.pid in self.spawner_tids:
                    continue  # the harness's own thread, between listing and fork
                host, _, ancestors = self._attribute(rec.pid)
                if host is not None and any(known is host.lab for known in self.labs.values()) \
                        and rec.t >= host.lab.created:
                    host.lab.timeline.add(Event(
                        t=rec.t, kind="syscall", local=NOWHERE, remote=NOWHERE,
                        errno=_errno.errorcode.get(-rec.ret, str(-rec.ret)), source="syscall",
                        host=host.name, detail=rec.call, pid=rec.pid, reason=rec.reason,
                        ancestors=ancestors))
        if self.session is None:
            if self.unavailable:
                raise Unsupported(f"kernel timeline unavailable: {self.unavailable}")
            return
        for raw in self.session.drain():
            lab = self.labs.get(self.slot_of(raw.fields.get("saddr")))
            # a reused slot: what its previous lab did is not this lab's
            ev = event_from_trace(raw) if lab is not None and raw.t >= lab.created else None
            if ev is not None:
                lab.timeline.add(ev)

    def close(self) -> None:
        for session in (self.session, self.syscalls):
            if session is not None:
                session.close()
        self.session = self.syscalls = None
        self._release_uprobe()


def _libc_of(pid: str) -> str | None:
    """The path (in the process's own mount namespace) of the glibc mapped
    by a process."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                path = line.split(None, 5)[-1].strip()
                if os.path.basename(path).startswith("libc.so"):
                    return path
    except OSError:
        pass
    return None


def _tids(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


tracer = _Tracer()
