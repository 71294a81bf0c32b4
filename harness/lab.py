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
import ipaddress
import os
import shutil
import tempfile
import time
from typing import AsyncIterator

import trio

from . import _names, _sweep, _tracefs
from .errors import InvalidArgument, ObservationTimeout, Unsupported
from .host import Host
from .observe.snapshot import Snapshot
from .observe.states import CLOSED, canonical
from .observe.timeline import Timeline, event_from_trace
from .topology import netns as backend

# --- the process's tracefs instance, shared by its labs -----------------------


class _Tracer:
    def __init__(self) -> None:
        self.session: _tracefs.TraceSession | None = None
        self.unavailable: str | None = None
        self.labs: dict[int, "Lab"] = {}

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
        if self.session is None and self.unavailable is None:
            try:
                self.session = _tracefs.TraceSession(_names.owner_tag(), self.keep)
                atexit.register(self.close)
            except Unsupported as exc:
                self.unavailable = str(exc)
        self.labs[lab.slot.index] = lab

    def unregister(self, index: int) -> None:
        self.labs.pop(index, None)

    def refresh(self) -> None:
        if self.session is None:
            if self.unavailable:
                raise Unsupported(f"kernel timeline unavailable: {self.unavailable}")
            return
        for raw in self.session.drain():
            lab = self.labs.get(self.slot_of(raw.fields.get("saddr")))
            ev = event_from_trace(raw) if lab is not None else None
            if ev is not None:
                lab.timeline.add(ev)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


_tracer = _Tracer()
_swept = False


def sweep_once() -> list[str]:
    """Remove what dead harness processes left (once per process)."""
    global _swept
    if _swept:
        return []
    _swept = True
    return _sweep.sweep()


# --- the lab ------------------------------------------------------------------


class Lab:
    """Hosts on one switch, with a shared timeline.  Create with open_lab()."""

    def __init__(self, nursery: trio.Nursery, artifacts: str, slot: _names.Slot):
        from ._undo import UndoStack

        self._nursery, self.artifacts, self.slot = nursery, artifacts, slot
        self.undo = UndoStack()
        self._hosts: dict[str, Host] = {}
        self._switch: tuple[str, int] | None = None
        self.timeline = Timeline(refresh=_tracer.refresh, observe=self._observe)
        self.created = time.monotonic()
        self.keep = False  # set True to leave the lab in place at exit
        self.failed = False  # set by the pytest plugin when the test fails
        self.captures: list = []

    # --- hosts ------------------------------------------------------------
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
        specs = []
        for name, profile, sysctls in wanted:
            if name in self._hosts or any(s.name == name for s in specs):
                raise InvalidArgument(f"host {name!r} already exists in this lab")
            specs.append(backend.HostSpec.make(name, len(self._hosts) + len(specs) + 1,
                                               profile, sysctls))
        built = await trio.to_thread.run_sync(self._build, specs)
        hosts = []
        for spec, (ns_name, fd) in zip(specs, built):
            host = Host(self, spec.name, spec.number, ns_name, fd, self.slot.v4(spec.number),
                        self.slot.v6(spec.number), profile=spec.profile,
                        sysctls=dict(spec.sysctls))
            self._hosts[spec.name] = host
            self.undo.push(f"remove host {spec.name}", self._remove_host, host)
            hosts.append(host)
        return hosts

    def _build(self, specs: list) -> list[tuple[str, int]]:
        """Runs in a worker thread.  A failure part-way removes the host
        namespaces this call made (the switch has its own undo step)."""
        made: list[tuple[str, int]] = []
        try:
            if self._switch is None:
                self._switch = backend.build_switch(self.slot)
                self.undo.push("remove switch", self._remove_switch)
            for spec in specs:
                ns = backend.create_host_ns(self.slot, spec)
                made.append(ns)
                backend.wire_host(self.slot, spec, self._switch, ns)
        except BaseException:
            for name, fd in made:
                backend.destroy_ns(name, fd)
            raise
        return made

    async def _remove_host(self, host: Host) -> None:
        await host.stop_processes()
        host.abort_sockets()
        host.close()
        from . import _netns
        _netns.delete(host.netns)

    def _remove_switch(self) -> None:
        if self._switch is not None:
            name, fd = self._switch
            self._switch = None
            backend.destroy_ns(name, fd)

    # --- addressing -------------------------------------------------------
    def resolve(self, target, family: int) -> str:
        from .sockets import check_family, resolve_address
        check_family(family)
        if isinstance(target, Host):
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
        snap = ep.host.sockets()
        mine = Snapshot([s for s in snap if s.local == ep.local and s.remote == ep.remote],
                        snap.host, snap.time)
        self.timeline.add_diag(mine, keys={(ep.local, ep.remote)})
        return mine

    async def wait_state(self, ep, state: str, *, timeout: float = 5.0):
        """Wait until the endpoint's socket is in ``state`` (CLOSED: gone from
        the kernel) and return its SocketInfo (None for CLOSED)."""
        st = canonical(state)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise InvalidArgument(f"timeout must be seconds >= 0, got {timeout!r}")
        if ep.local is None:
            raise InvalidArgument(f"{ep!r} is not bound or connected: no state to wait for")
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            mine = self._observe(ep)
            if st == CLOSED and not mine:
                return None
            for s in mine:
                if s.state == st:
                    return s
            if time.monotonic() >= deadline:
                seen = mine[0].state if mine else CLOSED
                raise ObservationTimeout(f"{ep!r} not {st} within {timeout}s; it is {seen}",
                                         last=mine)
            await trio.sleep(delay)
            delay = min(delay * 2, 0.01)

    async def capture(self):
        """Start capturing every TCP segment that crosses the switch; returns
        the Capture (see harness.observe.capture).  Saved as a pcap in the
        lab's artifacts at teardown."""
        from .observe.capture import Capture
        if self._switch is None:
            raise InvalidArgument("the lab has no hosts yet: add hosts before capturing")
        ports = {f"p{h.index}": h.name for h in self._hosts.values()}
        cap = Capture(self, self._switch[1], ports)
        self._nursery.start_soon(cap.run)
        n = len(self.captures)
        self.captures.append(cap)

        async def save_and_stop():
            await cap.stop()
            cap.write_pcap(os.path.join(self.artifacts, f"capture{n}.pcap"))
        self.undo.push("stop capture", save_and_stop)
        return cap

    def snapshots(self) -> dict[str, Snapshot]:
        return {name: h.sockets() for name, h in self._hosts.items()}

    def describe(self) -> str:
        lines = [f"lab slot {self.slot.index}: {self.slot.v4_network} {self.slot.v6_network}",
                 f"  switch: netns {self._switch[0] if self._switch else '(none)'}"]
        for h in self._hosts.values():
            lines.append(f"  host {h.name}: netns {h.netns}  {h.v4}  {h.v6}  profile={h.profile}")
            for p in h.processes:
                lines.append(f"    {p!r}")
        return "\n".join(lines)


@contextlib.asynccontextmanager
async def open_lab(*, artifacts: str | None = None, keep: bool = False,
                   cleanup_timeout: float = 30.0) -> AsyncIterator[Lab]:
    """Create a lab; tear it down on exit, even on error or cancellation.
    ``keep=True`` leaves it in place (for debugging with ``ip netns exec``)."""
    from .errors import CleanupError
    sweep_once()
    own_artifacts = artifacts is None
    artifacts = artifacts or tempfile.mkdtemp(prefix="fih-")
    os.makedirs(artifacts, exist_ok=True)
    slot = await trio.to_thread.run_sync(_names.lease_slot)
    failures: list[str] = []
    error: BaseException | None = None
    try:
        # the nursery holds only the lab's background tasks; the body's own
        # exception is re-raised as itself, not wrapped in an ExceptionGroup
        async with trio.open_nursery() as nursery:
            lab = Lab(nursery, artifacts, slot)
            lab.keep = keep
            _tracer.register(lab)
            try:
                yield lab
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                error = exc
            finally:
                keep = lab.keep
                if not keep:
                    failures = await lab.undo.unwind(timeout=cleanup_timeout)
                nursery.cancel_scope.cancel()
    finally:
        _tracer.unregister(slot.index)
        if not keep:
            slot.release()
            if own_artifacts:
                shutil.rmtree(artifacts, ignore_errors=True)
    if error is not None:
        if failures:
            error.add_note(str(CleanupError(failures)))
        raise error
    if failures:
        raise CleanupError(failures)
