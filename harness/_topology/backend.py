"""The host-backend protocol: what a kind of host must provide.

A host of a lab is, to everything above this layer (the lab, the faults,
the observers, the sweep), a *network namespace with one link to the lab's
switch*: ``netns`` (its name under /run/netns) and ``fd`` (an open fd of it)
are all a socket call, a snapshot, an iptables rule or a packet tap needs.
What differs between kinds -- how the namespace comes to exist, what runs
in it, how it goes away, how it is reborn after a power-off -- is behind
the two protocols below, so that adding a kind (a guest kernel, a
Kubernetes pod whose namespace a node agent enters) is one new module in
``topology/`` that implements them and is listed in ``topology.kinds()``.
Nothing outside that module tests which kind a host is.

Threads: ``Kind.create``, ``Kind.sweep``, ``HostBackend.stop`` and
``HostBackend.rebuild`` block (netlink, docker's HTTP API, namespace
teardown) and are called from a worker thread
(``trio.to_thread.run_sync``), never on the trio loop.  ``command`` and
``describe`` are pure.  ``main`` returns an object whose async methods do
their own blocking work off the loop.

The two implementations: ``topology.netns`` (``NamespaceHost``) and
``topology.container`` (``ContainerHost``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from .._names import Slot
    from .._netns import World
    from .netns import HostSpec


@runtime_checkable
class MainProcess(Protocol):
    """A host's main process, when its kind has one (a container's entry
    point): the same surface as ``harness._process.Process``, so readiness,
    kill, pause and wait work on either."""

    pid: int
    #: the Host it runs in (readiness conditions are evaluated on it)
    host: object

    @property
    def returncode(self) -> int | None:
        """None while it runs; its exit code after (negative for a signal).
        Must not block: read from state the backend keeps."""

    async def wait(self, timeout: float | None = None) -> int:
        """Until it exits; its returncode.  ObservationTimeout after ``timeout``."""

    async def kill(self) -> int:
        """SIGKILL, then wait: the kernel closes its sockets."""

    async def pause(self) -> None:
        """Freeze it; its kernel still ACKs."""

    async def resume(self) -> None:
        """Thaw it."""

    def signal(self, sig: int) -> None:
        """Send ``sig`` now (no wait)."""

    def stderr(self) -> str:
        """Its last output lines, for error messages."""


@runtime_checkable
class HostBackend(Protocol):
    """One realised host.  ``netns``/``fd`` stay valid until ``stop``."""

    #: the namespace's name under /run/netns (``ip netns exec NAME`` works)
    netns: str
    #: an open fd of the namespace; the backend closes it in ``stop``
    fd: int
    #: whether the lab may scrub this host (abort its sockets, flush its
    #: caches, re-pin its sysctls) and hand it to the next lab instead of
    #: stopping it; a backend whose host has state beyond the namespace (a
    #: container's filesystem and processes) says False
    reusable: bool

    def command(self, argv: list[str]) -> list[str]:
        """"Run inside": the argv that runs ``argv`` in the host's world as a
        child of the test process, which has already entered ``netns`` (a
        container: nsenter into its mount, uts and ipc namespaces and root,
        without a pid namespace so the child stays ours to kill).  A
        namespace host returns ``argv`` unchanged."""

    def world(self) -> "World | None":
        """The IPC and mount namespaces (``_netns.World``) the harness enters,
        besides ``netns``, to spawn a process in this host; None when
        ``command`` itself enters the host's own (a container) or the kernel
        refuses them here.  Made at the first call, kept until ``stop`` or
        ``rebuild``."""

    @property
    def main(self) -> MainProcess | None:
        """The host's main process, or None for a kind without one."""

    async def booted(self, host) -> None:
        """Return once ``host`` (the Host holding this backend) is up, after
        create or rebuild: a container host whose ``lab.container()`` named
        a readiness condition waits for it again after a reboot; a namespace
        host is up at once.  On the loop, after ``start_tasks``."""

    async def start_tasks(self, context) -> None:
        """Start the background tasks this host needs through the lab's
        context (``context.start_soon``: a container starts the watcher of
        its main process).  Called once, on
        the loop, right after ``Kind.create`` returned."""

    def stop(self) -> None:
        """Worker thread.  Remove the host for good: abort every socket left
        (an orphan would keep the deleted namespace alive, retransmitting),
        un-name the namespace, close ``fd``, and remove what else the kind
        made (a container).  The switch port goes with the namespace."""

    def rebuild(self, slot: "Slot", spec: "HostSpec") -> "HostBackend":
        """Worker thread; the reboot of ``faults.power_on``.  The host is off
        (processes killed, sockets aborted) and its switch port detached.
        Free the name, then make a fresh namespace of the same kind under it
        (a container: a new container of the same image and command) and
        return its backend, not wired yet; the caller wires it, and stops it
        on failure.  ``self.fd`` stays open (the caller closes it) and the
        old namespace stays alive until then."""

    def describe(self) -> str:
        """One line for the lab's description: the kind and what it runs."""


class Kind(Protocol):
    """A kind of host: one module of ``topology/`` exposes one as ``KIND``."""

    #: "netns", "container"...: appears in describe() and error messages
    name: str

    def create(self, slot: "Slot", spec: "HostSpec", switch: tuple[str, int],
               **options) -> HostBackend:
        """Worker thread.  Create and attach: a namespace for ``spec`` named
        ``slot.netns_name(spec.name)``, wired to ``switch`` (name, fd) by
        ``netns.wire_host`` (the same veth, addresses and sysctls for every
        kind) and passing traffic.  ``options`` are the kind's own (a
        container: ``image``, ``command``), validated before anything is
        made.  A failure part-way leaves nothing behind."""

    def unavailable(self) -> str | None:
        """Why this kind cannot be used here (no docker daemon...), or None.
        Worker thread (it may ask a daemon)."""

    def sweep(self) -> list[str]:
        """Worker thread.  Remove what dead harness processes left of this
        kind -- only objects whose name or label carries the pid of a process
        that no longer exists -- and return what was removed."""
