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
import os
import shutil
import time
from typing import AsyncIterator

import trio

from . import _check, _names, _poll, _sweep
from .errors import InvalidArgument, LabClosed, ObservationTimeout, Unsupported
from ._host import Host, replace_backend
from ._observe.snapshot import Snapshot
from ._observe.states import CLOSED, canonical
from ._observe.timeline import Timeline
from ._tracer import tracer as _tracer
from ._topology import netns as backend

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


class LabContext:
    """What the layers above a lab (faults, hosts, peers, captures) may use of
    it: background tasks in its nursery, its switch, and whether a host is
    still its own.  Nothing else of the lab's internals is theirs to touch
    (tests/test_public_surface.py holds the line)."""

    __slots__ = ("_lab",)

    def __init__(self, lab: "Lab"):
        self._lab = lab

    def start_soon(self, fn, *args, name=None) -> None:
        """Run ``fn(*args)`` in the background until it returns or the lab
        closes (its errors fail the lab's test)."""
        self._lab.check_open()
        self._lab._nursery.start_soon(fn, *args, name=name)

    async def start(self, fn, *args, name=None):
        """``start_soon``, waiting for ``fn``'s ``task_status.started(value)``."""
        self._lab.check_open()
        return await self._lab._nursery.start(fn, *args, name=name)

    @property
    def switch(self) -> tuple[str, int]:
        """The switch namespace: (name, fd).  Ports are ``port(host)``."""
        sw = self._lab._switch
        if sw is None:
            raise InvalidArgument("the lab has no switch yet: add a host first")
        return sw

    @staticmethod
    def port(host: Host) -> str:
        """The name of ``host``'s port on the switch."""
        return f"p{host.index}"

    def holds(self, host: Host) -> bool:
        """Whether ``host`` is this lab's current host of that name."""
        return self._lab._hosts.get(host.name) is host

    @staticmethod
    async def replace_backend(host: Host, backend) -> None:
        """Give ``host`` a new backend (power_on: a fresh namespace)."""
        await replace_backend(host, backend)


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
        self.context = LabContext(self)

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
            self._artifacts = _names.owned_tempdir()
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
        from ._timers import pinned
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
            try:
                _tracer.register(self)
            except BaseException:   # the hosts just made belong to nobody yet: not left behind
                if built is not None:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(lambda: [made.stop() for made in built])
                raise
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
        await made.start_tasks(self.context)
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
        from ._topology import container as cbackend
        self.check_open()
        cspec = cbackend.ContainerSpec.make(image, command)
        if name in self._hosts:
            raise InvalidArgument(f"host {name!r} already exists in this lab")
        spec = backend.HostSpec.make(name, len(self._hosts) + 1, profile, sysctls)
        _check.seconds(ready_timeout, "ready_timeout", positive=True)
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
        slot = _sweep.lease_slot()
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
        from ._sockets import check_family, resolve_address
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
        _check.seconds(timeout)
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
        Capture (see harness._observe.capture).  Saved as pcapng (one
        interface per host's switch port) in the lab's artifacts at
        teardown."""
        from ._observe.capture import Capture
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
        _check.seconds(timeout)
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
