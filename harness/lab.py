"""The lab: hosts on a switch, their timeline, and the undo stack that takes
it all down.

    async with open_lab() as lab:
        client, server = await lab.pair()
        ...

Teardown (also after a failing test or Ctrl-C) runs the undo stack in
reverse inside a shielded, time-capped scope: stop every process, abort every
socket (an orphan would keep a deleted namespace alive, retransmitting), delete
the namespaces, release the address slot.  Every failed step is reported.
"""

from __future__ import annotations

import atexit
import contextlib
import errno as _errno
import ipaddress
import os
import shutil
import tempfile
import time
from typing import AsyncIterator

import trio

from . import _names, _netns, _poll, _sweep, _tracefs
from .errors import InvalidArgument, LabClosed, ObservationTimeout, Unsupported
from .host import Host
from .observe.snapshot import Snapshot
from .observe.states import CLOSED, canonical
from .observe.timeline import NOWHERE, Event, Timeline, event_from_trace
from .topology import netns as backend

# --- the process's tracefs instance, shared by its labs -----------------------


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

    @trio.lowlevel.enable_ki_protection
    def register(self, lab: "Lab") -> None:
        """Make the process's instances with the first lab.  Protected from
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
        if self.syscalls is not None and so_error_probe():
            libc = _libc_of("self")
            if libc:
                self.syscalls.probe_libc(libc)
        lab._trace_index = lab.slot.index
        self.labs[lab.slot.index] = lab

    def unregister(self, lab: "Lab") -> None:
        """Forget a finished lab and every process attributed to it (its
        namespace fds are closed: nothing may look at them again)."""
        for index in [i for i, known in self.labs.items() if known is lab]:
            del self.labs[index]
        if not self.labs and self.syscalls is not None:
            self.syscalls.unprobe_libcs()  # they trap every getsockopt on the machine
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
        if libc and so_error_probe():
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
                for h in lab._hosts.values():
                    if h.ns_ino == ino:
                        self.pids[pid] = host = h
        return host

    def refresh(self) -> None:
        if self.syscalls is not None:
            for rec in self.syscalls.drain():
                if isinstance(rec, _tracefs.Fork):
                    self.parents[rec.child] = rec.parent
                    self.spawner_tids.pop(rec.child, None)  # a reused pid
                    if rec.parent in self.spawners:
                        host, proc = self.spawners.pop(rec.parent)
                        proc.kernel_pid = rec.child
                        self.roots[rec.child] = (host, proc)
                    continue
                if rec.pid in self.spawner_tids:
                    continue  # the harness's own thread, between listing and fork
                host, _, ancestors = self._attribute(rec.pid)
                if host is not None and host.lab._trace_index in self.labs \
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


_tracer = _Tracer()
_swept = False


def sweep_once() -> list[str]:
    """Remove what dead harness processes left (once per process)."""
    global _swept
    if _swept:
        return []
    _swept = True
    return _sweep.sweep()


# --- the pool of wired units -------------------------------------------------


class _Unit:
    """A switch with its slot and idle hosts: {number: (name, backend,
    sysctls)}, only of reusable backends.  While a lab uses a host, the
    Host owns its backend."""

    def __init__(self, slot: _names.Slot, switch: tuple[str, int]):
        self.slot, self.switch = slot, switch
        self.idle: dict[int, tuple[str, object, dict]] = {}

    def names(self) -> tuple[str, ...]:
        return tuple(self.idle[n][0] for n in sorted(self.idle))

    def destroy(self) -> None:
        """Worker thread: every idle host, then the switch; frees the slot."""
        for _name, made, _ in self.idle.values():
            made.stop()
        self.idle.clear()
        backend.destroy_ns(*self.switch)
        self.slot.release()


class _Pool:
    """Units of labs whose hosts only held sockets, scrubbed and kept for the
    next lab with the same host names: a lab then costs a few socket aborts
    and sysctl writes instead of ~20 ms of kernel netlink work plus the
    deferred namespace teardown.  Anything that ran a command, a process or
    a fault in a lab (``Lab.tainted``) sends its unit to destruction."""

    size = 4

    def __init__(self) -> None:
        self.units: list[_Unit] = []
        atexit.register(self.close)

    def take(self, names: tuple[str, ...]) -> _Unit | None:
        for i, unit in enumerate(self.units):
            if unit.names() == names:
                return self.units.pop(i)
        return None

    def give(self, unit: _Unit) -> list[_Unit]:
        """Keep ``unit``; returns the oldest ones beyond ``size``, for the
        caller to destroy (in a worker thread)."""
        self.units.append(unit)
        evicted = []
        while len(self.units) > self.size:
            evicted.append(self.units.pop(0))
        return evicted

    def close(self) -> None:
        while self.units:
            self.units.pop().destroy()


_pool = _Pool()


_unscrubbable: str | None = None  # why namespaces cannot be scrubbed here (then never pooled)


def scrub(netns: str, fd: int) -> None:
    """Leave a host namespace as a fresh one: no socket of any kind, no
    neighbour entry, no cached per-destination TCP metrics.  Unsupported
    when the kernel refuses the metrics flush: TCP_METRICS_CMD_DEL is
    GENL_ADMIN_PERM, i.e. CAP_NET_ADMIN in the *initial* user namespace,
    which a user namespace's mapped root lacks (the namespace is then
    destroyed instead of reused)."""
    global _unscrubbable
    from .errors import SetupError
    try:
        backend.scrub(netns, fd)
    except Unsupported as exc:  # no SOCK_DESTROY: a namespace cannot be emptied
        _unscrubbable = str(exc)
        raise
    except SetupError as exc:
        if exc.errno != "EPERM":
            raise
        _unscrubbable = ("the tcp_metrics flush needs CAP_NET_ADMIN in the initial user "
                         "namespace (EPERM)")
        raise Unsupported(f"cannot scrub {netns} for reuse: {_unscrubbable}") from exc


# --- the lab ------------------------------------------------------------------


class Lab:
    """Hosts on one switch, with a shared timeline.  Create with open_lab()."""

    def __init__(self, nursery: trio.Nursery, artifacts: str | None):
        from ._undo import UndoStack

        self._nursery, self._artifacts = nursery, artifacts
        self.undo = UndoStack()
        self._hosts: dict[str, Host] = {}
        self._unit: _Unit | None = None
        self._tainted = False
        self.timeline = Timeline(refresh=_tracer.refresh, observe=self._observe)
        self.created = time.monotonic()
        self.keep = False  # set True to leave the lab in place at exit
        self.failed = False  # set by the pytest plugin when the test fails
        self.captures: list = []
        self.closed = False  # set when open_lab() has torn it down
        self._trace_index: int | None = None  # the slot the tracer knows it by

    def check_open(self, what: str | None = None) -> None:
        """Refuse any use of a closed lab's objects: its pooled namespaces
        (same names, same fds) may already belong to another lab."""
        if self.closed:
            subject = f"{what} belongs to a lab that" if what else "this lab"
            raise LabClosed(f"{subject} has been closed (its namespaces may now serve another "
                            f"lab); use objects of the current lab")

    @property
    def artifacts(self) -> str:
        """The directory of the lab's process output and captures; a
        temporary one is made on first use when open_lab() was given none
        (most labs write nothing: a reused lab then costs no mkdir/rmdir)."""
        if self._artifacts is None:
            # the owner in the name: a SIGKILLed run's directory is swept like its namespaces
            self._artifacts = tempfile.mkdtemp(prefix=f"{_names.owner_tag()}-")
            self._own_artifacts = True
        return self._artifacts

    _own_artifacts = False

    # --- hosts ------------------------------------------------------------
    @property
    def slot(self) -> _names.Slot | None:
        """The lab's address block (leased with its first host)."""
        return self._unit.slot if self._unit else None

    @property
    def _switch(self) -> tuple[str, int] | None:
        return self._unit.switch if self._unit else None

    @property
    def tainted(self) -> bool:
        """Whether anything beyond sockets touched the lab's namespaces (a
        fault, a command, a process, an undo step): then its namespaces are
        destroyed at the end instead of being reused."""
        from .timers import pinned
        return self._tainted or self.undo.pushed > 0 or \
            any(h.processes or h.tainted or not all(map(pinned, h.sysctls))
                for h in self._hosts.values())

    @property
    def hosts(self) -> dict[str, Host]:
        return dict(self._hosts)

    def __getitem__(self, name: str) -> Host:
        try:
            return self._hosts[name]
        except KeyError:
            raise InvalidArgument(f"unknown host {name!r}; this lab has "
                                  f"{sorted(self._hosts) or 'no hosts'}") from None

    async def host(self, name: str, *, profile: str = "default",
                   sysctls: dict | None = None) -> Host:
        """Add a host on the switch, with the profile's sysctls pinned and
        ``sysctls`` on top (e.g. {"net.ipv4.tcp_fin_timeout": 5})."""
        (host,) = await self._add([(name, profile, sysctls)])
        return host

    async def pair(self, *, profile: str = "default", sysctls: dict | None = None,
                   names: tuple[str, str] = ("client", "server")) -> tuple[Host, Host]:
        """Two hosts (IPv4 + IPv6) on one switch."""
        a, b = await self._add([(n, profile, sysctls) for n in names])
        return a, b

    async def _add(self, wanted: list) -> list[Host]:
        self.check_open()
        specs = []
        for name, profile, sysctls in wanted:
            if name in self._hosts or any(s.name == name for s in specs):
                raise InvalidArgument(f"host {name!r} already exists in this lab")
            specs.append(backend.HostSpec.make(name, len(self._hosts) + len(specs) + 1,
                                               profile, sysctls))
        built = None
        if self._unit is None:
            self._unit = _pool.take(tuple(s.name for s in specs))
            if self._unit is None:  # a new switch and its hosts: one worker thread
                self._unit, built = await trio.to_thread.run_sync(self._new_unit_with, specs)
            _tracer.register(self)
        if built is None:
            built = self._reuse(specs)  # nothing blocking to do: no thread hop
        if built is None:
            built = await trio.to_thread.run_sync(self._build, specs)
        return [await self._adopt(spec, made) for spec, made in zip(specs, built)]

    async def _adopt(self, spec, made) -> Host:
        """The Host over a backend just created (or taken from the pool)."""
        host = Host(self, spec.name, spec.number, made, self.slot.v4(spec.number),
                    self.slot.v6(spec.number), profile=spec.profile, sysctls=dict(spec.sysctls))
        self._hosts[spec.name] = host
        await made.start_tasks(self._nursery)
        return host

    async def container(self, name: str, *, image: str, command: list[str] | None = None,
                        ready=None, ready_timeout: float = 30.0, profile: str = "default",
                        sysctls: dict | None = None) -> Host:
        """A host whose namespace is a container's: ``image`` is a build
        context under containers/ (built locally, cached by content) or a
        local image; it runs with ``--network none`` and the lab plumbs its
        link like any host's.  ``ready`` as for spawn (e.g.
        ``harness.listening(6379)``), awaited again after each
        ``faults.power_on``.  Removed with the lab."""
        from .topology import container as cbackend
        self.check_open()
        cspec = cbackend.ContainerSpec.make(image, command)
        if name in self._hosts:
            raise InvalidArgument(f"host {name!r} already exists in this lab")
        spec = backend.HostSpec.make(name, len(self._hosts) + 1, profile, sysctls)
        if not (isinstance(ready_timeout, (int, float)) and ready_timeout > 0):
            raise InvalidArgument(f"ready_timeout must be seconds > 0, got {ready_timeout!r}")
        reason = await trio.to_thread.run_sync(cbackend.KIND.unavailable)
        if reason:
            raise Unsupported(reason)
        tag = await trio.to_thread.run_sync(cbackend.resolve_image, cspec.image)
        if self._unit is None:
            self._unit = await trio.to_thread.run_sync(self._new_unit)
            _tracer.register(self)
        made = await trio.to_thread.run_sync(
            lambda: cbackend.KIND.create(self.slot, spec, self._unit.switch, image=cspec,
                                         tag=tag, ready=ready, ready_timeout=ready_timeout))
        host = await self._adopt(spec, made)
        _tracer.watch_container(host)
        await made.booted(host)
        return host

    @staticmethod
    def _new_unit() -> _Unit:
        slot = _names.lease_slot()
        try:
            return _Unit(slot, backend.build_switch(slot))
        except BaseException:
            slot.release()
            raise

    def _new_unit_with(self, specs: list) -> tuple[_Unit, list]:
        """Worker thread: a new unit, and ``specs`` built on it; on failure
        nothing is left."""
        unit = self._new_unit()
        try:
            return unit, self._build(specs, unit)
        except BaseException:
            unit.destroy()
            raise

    def _reuse(self, specs: list) -> list | None:
        """The unit's idle hosts for ``specs`` when each is there under its
        name with the same sysctls already applied; else None (and nothing
        taken)."""
        idle = self._unit.idle
        if not all(spec.number in idle and idle[spec.number][0] == spec.name and
                   idle[spec.number][2] == dict(spec.sysctls) for spec in specs):
            return None
        return [idle.pop(spec.number)[1] for spec in specs]

    def _build(self, specs: list, unit: _Unit | None = None) -> list:
        """Worker thread: each host from the unit's idle ones (sysctls
        re-pinned) or made fresh by the namespace kind.  A failure part-way
        removes what this call made."""
        made: dict = {}
        unit = unit or self._unit
        try:
            fresh = []
            for spec in specs:
                idle = unit.idle.pop(spec.number, None)
                if idle is not None and idle[0] == spec.name:
                    _, host, applied = idle
                    made[spec.name] = host
                    if applied != dict(spec.sysctls):
                        backend.apply_sysctls(host.fd, host.netns, spec.sysctls, spec.explicit)
                    continue
                if idle is not None:  # pragma: no cover - take() matches names
                    idle[1].stop()
                fresh.append(spec)
            if fresh:  # plumbed together, then waited for together
                for spec, host in zip(fresh, backend.KIND.create_many(unit.slot, fresh,
                                                                      unit.switch)):
                    made[spec.name] = host
        except BaseException:
            for host in made.values():
                host.stop()
            raise
        return [made[spec.name] for spec in specs]

    async def _release(self) -> list[str]:
        """End of the lab: stop processes, abort sockets, then either scrub
        the unit back into the pool or destroy it."""
        failures: list[str] = []
        unit, self._unit = self._unit, None
        if unit is None:
            return failures
        tainted = self.tainted
        for host in self._hosts.values():
            try:
                if tainted:
                    await host.stop_processes()
                host.release_observers()
            except Exception as exc:  # noqa: BLE001 - report, go on
                failures.append(f"stopping host {host.name}: {type(exc).__name__}: {exc}")
        hosts = list(self._hosts.values())

        if not (tainted or failures or _unscrubbable):
            # on the loop, like a snapshot: a scrub is a few inet_diag and
            # rtnetlink requests per host (~0.3 ms with a private table),
            # cheaper than the worker thread's hand-off on a busy machine
            try:
                for h in hosts:
                    scrub(h.netns, h.ns_fd)
                    unit.idle[h.index] = (h.name, h.backend, h.sysctls)
            except Unsupported:
                pass  # not reusable here: destroyed below, which is no failure
            except Exception as exc:  # noqa: BLE001 - fall back to destroying
                failures.append(f"scrub for reuse: {type(exc).__name__}: {exc}")
            else:
                evicted = _pool.give(unit)
                if evicted:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(lambda: [u.destroy() for u in evicted])
                return failures

        def finish() -> None:
            for h in hosts:
                recorded = unit.idle.get(h.index)
                if recorded is None or recorded[1] is not h.backend:  # else unit.destroy() does
                    try:
                        h.backend.stop()
                    except Exception as exc:  # noqa: BLE001
                        failures.append(f"removing host {h.name}: {type(exc).__name__}: {exc}")
            unit.destroy()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(finish)
        return failures

    # --- addressing -------------------------------------------------------
    def resolve(self, target, family: int) -> str:
        from .sockets import check_family, resolve_address
        check_family(family)
        if isinstance(target, Host):
            if target.lab is not self:  # a closed lab's host may share this lab's addresses
                target.lab.check_open(f"host {target.name}")
                raise InvalidArgument(f"host {target.name} belongs to another lab; a lab's "
                                      f"hosts reach only hosts of the same lab")
            return target.address(family)
        if isinstance(target, str):
            if target in self._hosts:
                return self._hosts[target].address(family)
            return resolve_address(target, family)
        raise InvalidArgument(f"target must be a Host, a host name or an address, got {target!r}")

    def connection_start(self, local, remote, before: float) -> float:
        """When the kernel made the connection (local, remote): its last
        transition to ESTABLISHED at or before ``before``."""
        with contextlib.suppress(Unsupported):
            for e in reversed(self.timeline.events(since=self.created, kind="state")):
                if e.t <= before and e.local == local and e.remote == remote and \
                        e.new in ("ESTABLISHED", "SYN_RECV"):
                    return e.t
        return self.created

    # --- observation ------------------------------------------------------
    def _observe(self, ep) -> Snapshot:
        host = ep.host if isinstance(ep.host, Host) else self[ep.host]  # Socket or SocketInfo
        snap = host.sockets()
        mine = Snapshot([s for s in snap if s.local == ep.local and s.remote == ep.remote],
                        snap.host, snap.time)
        self.timeline.add_diag(mine, keys={(ep.local, ep.remote)})
        return mine

    async def wait_state(self, ep, state: str, *, timeout: float = 5.0):
        """Wait until the endpoint's socket is in ``state`` (CLOSED: gone from
        the kernel) and return its SocketInfo (None for CLOSED).  ``ep`` is a
        Socket, or a SocketInfo from a snapshot for a socket a process owns
        (e.g. a server's accepted connection)."""
        self.check_open()
        if not (hasattr(ep, "local") and hasattr(ep, "remote") and hasattr(ep, "host")):
            raise InvalidArgument(f"wait_state() takes a Socket or a SocketInfo (from a "
                                  f"snapshot), got {ep!r} ({type(ep).__name__})")
        st = canonical(state)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise InvalidArgument(f"timeout must be seconds >= 0, got {timeout!r}")
        if ep.local is None:
            raise InvalidArgument(f"{ep!r} is not bound or connected: no state to wait for")
        from ._poll import until

        def reached(mine) -> bool:
            return (st == CLOSED and not mine) or any(s.state == st for s in mine)

        def late(mine) -> ObservationTimeout:
            seen = mine[0].state if mine else CLOSED
            return ObservationTimeout(f"{ep!r} not {st} within {timeout}s; it is {seen}",
                                      last=mine)
        mine = await until(lambda: self._observe(ep), time.monotonic() + timeout,
                           done=reached, timeout=late)
        return next((s for s in mine if s.state == st), None)

    async def capture(self):
        """Start capturing every frame that crosses the switch; returns the
        Capture (see harness.observe.capture).  Saved as pcapng (one
        interface per host's switch port) in the lab's artifacts at
        teardown."""
        from .observe.capture import Capture
        self.check_open()
        if self._switch is None:
            raise InvalidArgument("the lab has no hosts yet: add hosts before capturing")
        ports = {f"p{h.index}": h.name for h in self._hosts.values()}
        cap = Capture(self, self._switch[1], ports)
        self._nursery.start_soon(cap.run)
        await trio.lowlevel.checkpoint()  # run() is waiting before anyone can stop() it
        n = len(self.captures)
        self.captures.append(cap)

        async def save_and_stop():
            await cap.stop()
            cap.write_pcapng(os.path.join(self.artifacts, f"capture{n}.pcapng"))
        self.undo.push("stop capture", save_and_stop)
        return cap

    def snapshots(self) -> dict[str, Snapshot]:
        self.check_open()
        return {name: h.sockets() for name, h in self._hosts.items()}

    async def wait_until(self, predicate, *, timeout: float = 5.0, what: str | None = None):
        """Wait until ``predicate(snapshots)`` is truthy and return its value;
        ``snapshots`` is fresh on every try: {host name: Snapshot} (see
        ``snapshots()``).  Any condition on sockets, e.g. the server's
        connection with its keepalive timer armed::

            info = await lab.wait_until(lambda snap: [
                s for s in snap["server"].where(port=6379) if s.timer == "keepalive"])

        ``predicate`` may be async.  On timeout, ObservationTimeout names
        ``what`` (default: the predicate) and holds the last snapshots."""
        if not callable(predicate):
            raise InvalidArgument(f"predicate must be callable with the snapshots, got "
                                  f"{predicate!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise InvalidArgument(f"timeout must be seconds >= 0, got {timeout!r}")
        last = {}

        async def poll():
            last["snaps"] = snaps = self.snapshots()
            value = predicate(snaps)
            return await value if hasattr(value, "__await__") else value

        return await _poll.until(
            poll, time.monotonic() + timeout,
            timeout=lambda _v: ObservationTimeout(
                f"{what or predicate!r} did not hold within {timeout}s; sockets: "
                f"{ {h: list(s) for h, s in last['snaps'].items()} }", last=last["snaps"]))

    def describe(self) -> str:
        """The topology, for a failed test's report; safe on a lab whose
        set-up failed part-way (no slot, no switch, no hosts)."""
        slot = self.slot
        lines = [f"lab slot {slot.index}: {slot.v4_network} {slot.v6_network}" if slot else
                 "lab (closed: its slot and namespaces are released)" if self.closed else
                 "lab (no hosts yet: no address slot)",
                 f"  switch: netns {self._switch[0] if self._switch else '(none)'}"]
        for h in self._hosts.values():
            lines.append(f"  host {h.name}: {h.backend.describe()}  {h.v4}  {h.v6}  "
                         f"profile={h.profile}")
            for p in h.processes:
                lines.append(f"    {p!r}")
        return "\n".join(lines)


@contextlib.asynccontextmanager
async def open_lab(*, artifacts: str | None = None, keep: bool = False,
                   cleanup_timeout: float = 30.0) -> AsyncIterator[Lab]:
    """Create a lab; tear it down on exit, even on error or cancellation.
    ``keep=True`` leaves it in place (for debugging with ``ip netns exec``)."""
    from .errors import CleanupError
    if not _swept:  # a worker thread: the sweep asks the docker daemon too
        await trio.to_thread.run_sync(sweep_once)
    if artifacts is not None:
        os.makedirs(artifacts, exist_ok=True)
    failures: list[str] = []
    error: BaseException | None = None
    lab: Lab | None = None
    try:
        # the nursery holds only the lab's background tasks; the body's own
        # exception is re-raised as itself, not wrapped in an ExceptionGroup
        async with trio.open_nursery() as nursery:
            lab = Lab(nursery, artifacts)
            lab.keep = keep
            try:
                yield lab
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                error = exc
            finally:
                if not lab.keep:
                    failures = await lab.undo.unwind(timeout=cleanup_timeout)
                    with trio.CancelScope(shield=True):
                        failures += await lab._release()
                nursery.cancel_scope.cancel()
    finally:
        if lab is not None:
            lab.closed = True
            _tracer.unregister(lab)
        if lab is not None and lab._own_artifacts and not lab.keep:
            shutil.rmtree(lab._artifacts, ignore_errors=True)
    if error is not None:
        if failures:
            error.add_note(str(CleanupError(failures)))
        raise error
    if failures:
        raise CleanupError(failures)
