"""The namespace backend: realises host specs as named network namespaces
joined by a bridge in a namespace of its own (nothing in the root namespace).

Synchronous; the lab calls it from one worker thread per build.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from .. import _diag, _netlink, _netns
from .._names import Slot, check_host_name
from ..errors import InvalidArgument, Unsupported
from ..timers import explicit, resolve


@dataclass(frozen=True)
class HostSpec:
    """A host as plain data.  ``number`` picks its addresses (.n, ::n)."""

    name: str
    number: int
    profile: str = "default"
    sysctls: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    explicit: frozenset = frozenset()  # sysctls the test set itself

    @classmethod
    def make(cls, name: str, number: int, profile: str = "default",
             sysctls: dict | None = None) -> "HostSpec":
        check_host_name(name)
        if name == "sw":
            raise InvalidArgument("host name 'sw' is reserved for the lab's switch")
        if not 1 <= number <= 250:
            raise InvalidArgument(f"a lab holds at most 250 hosts, got host number {number}")
        return cls(name, number, profile, MappingProxyType(resolve(profile, sysctls)),
                   explicit(sysctls))


def build_switch(slot: Slot) -> tuple[str, int]:
    name = slot.netns_name("sw")
    _netns.create(name)
    fd = _netns.open_fd(_netns.path(name))
    try:
        _netlink.make_switch(fd, name)
    except BaseException:
        os.close(fd)
        _netns.delete(name)
        raise
    return name, fd


def create_host_ns(slot: Slot, spec: HostSpec) -> tuple[str, int]:
    name = slot.netns_name(spec.name)
    _netns.create(name)
    return name, _netns.open_fd(_netns.path(name))


def wire_host(slot: Slot, spec: HostSpec, sw: tuple[str, int], ns: tuple[str, int]) -> None:
    """Link, addresses and sysctls; then wait until the links pass traffic."""
    name, fd = ns
    _netlink.attach_host(sw[1], sw[0], fd, name, spec.number, slot.v4(spec.number),
                         slot.v6(spec.number))
    apply_sysctls(fd, name, spec.sysctls, spec.explicit)  # after eth0: per-device keys work
    _netlink.wait_links_ready([(fd, name, _netlink.HOST_IFINDEX),
                               (sw[1], sw[0], 100 + spec.number)])


def apply_sysctls(fd: int, netns: str, sysctls: Mapping[str, str],
                  explicit: frozenset = frozenset()) -> None:
    from ..timers import OPTIONAL
    for key, value in sysctls.items():
        try:
            _netns.write_sysctl(fd, key, value)
        except Unsupported:
            if key in OPTIONAL and key not in explicit:
                continue
            if key in OPTIONAL:
                raise Unsupported(f"sysctl {key} (asked for by the test) does not exist in "
                                  f"this kernel") from None
            raise InvalidArgument(f"sysctl {key} does not exist in a host namespace on this "
                                  f"kernel (only per-namespace sysctls can be set)") from None
        except OSError as exc:
            raise InvalidArgument(f"sysctl {key}={value!r} rejected by the kernel: "
                                  f"{os.strerror(exc.errno or 0)}") from None


def destroy_ns(name: str, fd: int, diag_sock=None) -> int:
    """Abort every socket left in the namespace, then delete it.  Returns the
    number of sockets aborted."""
    n = 0
    if diag_sock is None:
        with _netns.entered(fd):
            diag_sock = _diag.open_socket()
        try:
            n = _diag.destroy_all(diag_sock)
        finally:
            diag_sock.close()
    else:
        n = _diag.destroy_all(diag_sock)
    os.close(fd)
    _netns.delete(name)
    return n


def flush_caches(netns: str, fd: int) -> None:
    """Neighbour entries and cached per-destination TCP metrics (which seed a
    new connection's RTT and ssthresh) go, as in a fresh namespace."""
    _netlink.flush_neighbours(fd, netns)
    _netlink.flush_tcp_metrics(fd, netns)
