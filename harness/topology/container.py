"""The container backend: a host whose namespace belongs to a container.

The container runs with ``--network none``; its network namespace is then
named like any host's (/run/netns/fih<pid>-<slot>-<name>, a bind mount of
/proc/<pid>/ns/net, as ``ip netns attach`` does) and wired to the lab's
switch by the same code as a namespace host.  From there on every socket
call, fault and observer works unchanged.  Synchronous; called from a
worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import _docker, _names, _netns
from ..errors import InvalidArgument
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


def resolve_image(image: str) -> str:
    """The local tag to run; builds a containers/ image if needed.  A
    missing image is a clear error, raised before anything is created."""
    if image in _docker.known_images():
        return _docker.ensure_image(image)
    try:
        _docker.image_id(image)
    except _docker.DockerError as exc:
        raise InvalidArgument(
            f"image {image!r} is neither a build context under containers/ "
            f"({', '.join(_docker.known_images())}) nor a local image "
            f"(there is no registry here: build or load it first)") from exc
    return image


@dataclass
class Running:
    container: _docker.Container
    netns: str
    fd: int


def start(slot: _names.Slot, host: HostSpec, spec: ContainerSpec, tag: str) -> Running:
    """Start the container and name its namespace (not wired yet)."""
    name = slot.netns_name(host.name)
    labels = {"harness.owner": str(os.getpid()), "harness.netns": name}
    c = _docker.run(tag, name=name, command=list(spec.command) if spec.command else None,
                    labels=labels)
    try:
        _netns.attach(name, c.pid)
        fd = _netns.open_fd(_netns.path(name))
    except BaseException:
        _docker.remove(c.id)
        raise
    try:
        # docker turns IPv6 off in a container's namespace; a lab host has both
        for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6",
                    "net.ipv6.conf.lo.disable_ipv6"):
            _netns.write_sysctl(fd, key, 0)
    except BaseException:
        stop(c.id, name, fd)
        raise
    return Running(c, name, fd)


def start_and_wire(slot: _names.Slot, host: HostSpec, spec: ContainerSpec, tag: str,
                   switch: tuple[str, int]) -> Running:
    run = start(slot, host, spec, tag)
    try:
        wire_host(slot, host, switch, (run.netns, run.fd))
    except BaseException:
        stop(run.container.id, run.netns, run.fd)
        raise
    return run


def stop(container_id: str, netns: str, fd: int) -> None:
    """Abort its sockets, un-name its namespace, remove the container."""
    try:
        destroy_ns(netns, fd)
    finally:
        _docker.remove(container_id)
