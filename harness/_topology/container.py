"""The container backend: a host whose namespace belongs to a container.

The container runs with ``--network none``; its network namespace is then
named like any host's (/run/netns/fih<pid>-<slot>-<name>, a bind mount of
/proc/<pid>/ns/net, as ``ip netns attach`` does) and wired to the lab's
switch by the same code as a namespace host.  From there on every socket
call, fault and observer works unchanged.

This module is the only one that calls the docker wrapper (``_docker``) for
a host, and it never does so on the trio loop: the protocol's blocking
methods run in a worker thread, and the main process's async methods hand
their docker calls to ``trio.to_thread.run_sync``.  Its liveness comes from
the kernel (a pidfd of the container's main process, readable when it
exits), so ``returncode`` and ``wait`` poll nothing.
"""

from __future__ import annotations

import json
import os
import signal as _signal
import time
from collections import deque
from dataclasses import dataclass

import trio

from .. import _check, _docker, _names, _netns
from .._poll import until
from ..errors import InvalidArgument, ObservationTimeout, SetupError
from .netns import HostSpec, destroy_ns, wire_host


@dataclass(frozen=True)
class ContainerSpec:
    """What to run: ``image`` is a build context under containers/ (built
    locally, cached by content) or a local image reference."""

    image: str
    command: tuple[str, ...] | None = None

    @classmethod
    def make(cls, image: object, command: object) -> "ContainerSpec":
        if not isinstance(image, str) or not image:
            raise InvalidArgument(f"image must be a name under containers/ or a local image "
                                  f"reference, got {image!r}")
        if command is not None and (not isinstance(command, (list, tuple)) or not command
                                    or not all(isinstance(a, str) for a in command)):
            raise InvalidArgument(f"command must be a non-empty list of strings or None, "
                                  f"got {command!r}")
        return cls(image, tuple(command) if command else None)


def add_context_dirs(dirs: list[str], where: str) -> None:
    """Search ``dirs`` (each holding ``<name>/Dockerfile``) for build
    contexts before the harness's own; ``where`` names the setting they came
    from, for the error."""
    try:
        _docker.add_context_dirs(dirs, where)
    except _docker.DockerError as exc:
        raise InvalidArgument(str(exc)) from None


def resolve_image(image: str) -> str:
    """The local tag to run; builds a containers/ image if needed.  A
    missing image is a clear error, raised before anything is created."""
    name = _docker.context_name(image)  # a build context's name or path
    if name is not None:
        return _docker.ensure_image(name)
    try:
        _docker.image_id(image)
    except _docker.DockerError as exc:
        raise InvalidArgument(
            f"image {image!r} is neither a build context ({', '.join(_docker.known_images())}"
            f" under {', '.join(map(str, _docker.context_dirs()))}; add yours with ini "
            f"harness_containers, env HARNESS_CONTAINERS, or image='path/to/context') nor a "
            f"local image (there is no registry here: build or load it first)") from exc
    return image


# --- the main process ---------------------------------------------------------


class ContainerMain:
    """The main process of a container host: the same kill/pause/resume/
    wait/returncode as a Process (the ``MainProcess`` protocol).

    The kernel tells when it exits (a pidfd, watched by a task on the lab's
    nursery); the daemon is asked for the exit code and the log once, then,
    from a worker thread.  ``signal`` goes through the pidfd too."""

    def __init__(self, container: _docker.Container):
        self.container = container
        self.pid = container.pid
        self.kernel_pid = container.pid  # the pid tracefs reports (the daemon's view)
        self.host = None  # the Host, set by Host.main
        self._pidfd = -1
        self._code: int | None = None
        self._lost: str | None = None  # why the exit code could not be read
        self._exited = trio.Event()
        self._log: str | None = None

    def __repr__(self) -> str:
        return f"<main process {self.pid} of container {self.container.name}>"

    @property
    def returncode(self) -> int | None:
        return self._code

    async def watch(self) -> None:
        """Until the process exits: then read its exit code and its log."""
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._pidfd = -1  # already gone
        try:
            if self._pidfd >= 0:
                await trio.lowlevel.wait_readable(self._pidfd)
            # docker records the exit a moment after the kernel reaped it
            try:
                code = await until(self._exit_code, time.monotonic() + 10,
                                   done=lambda c: c is not None, first=0.005, longest=0.05,
                                   timeout=lambda _: _docker.DockerError(
                                       "the daemon did not report the exit within 10 s"))
                try:
                    self._log = await trio.to_thread.run_sync(_docker.logs, self.container.id)
                except _docker.DockerError:
                    pass  # removed meanwhile: stderr() reads the log file
                self._code = code
            except _docker.DockerError as exc:  # removed meanwhile (teardown), or late
                self._lost = str(exc)
            self._exited.set()
        finally:
            if self._pidfd >= 0:
                trio.lowlevel.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = -1

    async def _exit_code(self) -> int | None:
        return await trio.to_thread.run_sync(_docker.exit_code, self.container.id)

    async def wait(self, timeout: float | None = None) -> int:
        _check.seconds(timeout, none_ok=True)
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            await self._exited.wait()
            if self._code is None:
                raise SetupError(f"{self!r} exited but its exit code is unknown: {self._lost}",
                                 netns=self.container.name)
            return self._code
        raise ObservationTimeout(f"{self!r} still running after {timeout}s")

    async def kill(self) -> int:
        """SIGKILL the main process (through the daemon, which also reaches
        a paused container): the container stops, the kernel closes its
        sockets (FIN, or RST with unread data)."""
        await trio.to_thread.run_sync(_docker.kill, self.container.id)
        return await self.wait()

    async def pause(self) -> None:
        """Freeze the container (cgroup freezer): its kernel still ACKs."""
        await trio.to_thread.run_sync(_docker.pause, self.container.id)

    async def resume(self) -> None:
        await trio.to_thread.run_sync(_docker.unpause, self.container.id)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the main process now, through its pidfd (the
        kernel, not the daemon: a paused container's process gets it when
        resumed)."""
        if self._pidfd >= 0:
            _signal.pidfd_send_signal(self._pidfd, sig)
        elif self._code is None:  # not watched yet
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def stderr(self, lines: int = 50) -> str:
        """The container's log (stdout and stderr), its last lines: read at
        exit from the daemon, while it runs from the log driver's file."""
        if self._log is not None:
            return self._log
        path = self.container.log_path
        if not path:
            return "(no log file: the daemon's log driver is not json-file)"
        try:
            with open(path, errors="replace") as f:
                tail = deque(f, maxlen=lines)
        except OSError as exc:
            return f"(log file {path} unreadable: {exc})"
        out = []
        for line in tail:
            try:
                out.append(json.loads(line).get("log", ""))
            except ValueError:
                continue
        return "".join(out)

    def output(self) -> str:
        """The container's whole log (stdout and stderr) so far."""
        if self._log is not None:
            return self._log
        return _docker.logs(self.container.id, tail="all")

    async def wait_output(self, pattern, *, timeout: float = 5.0):
        """Wait until a line of the container's log matches ``pattern`` (a
        regex string or compiled pattern; e.g. "Ready to accept
        connections"); returns the re.Match."""
        from .._process import wait_output
        return await wait_output(self, pattern, timeout=timeout, read=self.output)


# --- the backend ----------------------------------------------------------------


class ContainerHost:
    """A host whose namespace is a container's: the ``HostBackend``
    protocol (topology.backend).  Never reused: a container has a
    filesystem and processes beyond its namespace."""

    reusable = False

    def __init__(self, container: _docker.Container, netns: str, fd: int,
                 spec: ContainerSpec, tag: str):
        self.container, self.netns, self.fd = container, netns, fd
        self.spec, self.tag = spec, tag
        self.main = ContainerMain(container)
        self.ready, self.ready_timeout = None, 30.0  # lab.container(ready=...)

    def __repr__(self) -> str:
        return f"<ContainerHost {self.container.name} ({self.tag})>"

    def command(self, argv: list[str]) -> list[str]:
        # the container's filesystem and namespaces, but our own child (no
        # pid namespace: nsenter need not fork), so kill() reaches it
        return ["nsenter", f"--target={self.container.pid}", "--mount", "--uts", "--ipc",
                "--net", "--root", "--wd", "--", *argv]

    def world(self) -> None:
        return None  # command() enters the container's own IPC and mount namespaces

    async def start_tasks(self, context) -> None:
        context.start_soon(self.main.watch)

    async def booted(self, host) -> None:
        """Its readiness condition holds (e.g. the server listens again
        after a reboot); fails if the main process exits first."""
        if self.ready is not None:
            from .._process import wait_ready
            await wait_ready(host.main, self.ready, self.ready_timeout)

    def stop(self) -> None:
        """Abort its sockets, un-name its namespace, remove the container."""
        try:
            destroy_ns(self.netns, self.fd)
        finally:
            _docker.remove(self.container.id)

    def rebuild(self, slot: _names.Slot, spec: HostSpec) -> "ContainerHost":
        """A new container of the same image and command; the old one (its
        processes killed by power_off) goes, which frees its name; our fd
        keeps its namespace until the caller closes it."""
        _netns.delete(self.netns)
        _docker.remove(self.container.id)
        new = _start(slot, spec, self.spec, self.tag)
        new.ready, new.ready_timeout = self.ready, self.ready_timeout
        return new

    def describe(self) -> str:
        return f"container {self.container.name} ({self.tag}) netns {self.netns}"


def _start(slot: _names.Slot, host: HostSpec, spec: ContainerSpec, tag: str) -> ContainerHost:
    """Start the container and name its namespace (not wired yet)."""
    name = slot.netns_name(host.name)
    labels = {"harness.owner": _names.owner_tag(), "harness.netns": name}
    c = _docker.run(tag, name=name, command=list(spec.command) if spec.command else None,
                    labels=labels)
    try:
        _netns.attach(name, c.pid)
        fd = _netns.open_fd(_netns.path(name))
    except BaseException:
        _docker.remove(c.id)
        raise
    made = ContainerHost(c, name, fd, spec, tag)
    try:
        # docker turns IPv6 off in a container's namespace; a lab host has both
        for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6",
                    "net.ipv6.conf.lo.disable_ipv6"):
            _netns.write_sysctl(fd, key, 0)
    except BaseException:
        made.stop()
        raise
    return made


class _ContainerKind:
    """Creates ContainerHost hosts; sweeps containers of dead processes."""

    name = "container"

    def unavailable(self) -> str | None:
        reason = _docker.daemon_unavailable_reason()
        return f"container hosts need a docker daemon: {reason}" if reason else None

    def create(self, slot: _names.Slot, spec: HostSpec, switch: tuple[str, int], *,
               image: ContainerSpec, tag: str, ready=None,
               ready_timeout: float = 30.0) -> ContainerHost:
        """``image`` as validated by ContainerSpec.make, ``tag`` from
        resolve_image (both before anything is made); ``ready`` the
        condition ``booted`` waits for, after creation and every reboot."""
        made = _start(slot, spec, image, tag)
        made.ready, made.ready_timeout = ready, ready_timeout
        try:
            wire_host(slot, spec, switch, (made.netns, made.fd))
        except BaseException:
            made.stop()
            raise
        return made

    def sweep(self) -> list[str]:
        from .._names import PREFIX, owner_alive
        if _docker.daemon_unavailable_reason() is not None:
            return []
        removed = []
        for cid, labels in _docker.list_labelled("harness.owner"):
            owner = labels.get("harness.owner", "")
            if owner.isdigit():  # written before owners carried their pid namespace
                owner = PREFIX + owner
            if owner_alive(owner + "-") is False:  # another pid namespace's: not provable
                _docker.remove(cid)
                removed.append(f"container {cid[:12]}")
        return removed


KIND = _ContainerKind()
