"""Names and address blocks, unique across concurrent pytest processes.

Every object the harness creates carries the owning process id (``fih<pid>``)
so that a later run can remove what a SIGKILLed run left, and nothing else:
we never sweep by a broad name.

Each lab leases a slot: a /24 of 198.18.0.0/15 (RFC 2544, benchmarking) and a
/64 of the ULA prefix fd66:6968::/48.  The lease is an flock on a file under
/run/harness, so it is released by the kernel the instant its owner dies; no
stale lease can block a later run.  Unique subnets matter beyond tidiness:
the kernel's tracepoints carry addresses but no namespace, so a lab's
timeline is told apart from its neighbours' by its subnet.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
from dataclasses import dataclass

from .errors import InvalidArgument, SetupError

PREFIX = "fih"
LEASE_DIR = "/run/harness"
SLOTS = 512  # 198.18.0.0/15 holds 512 /24s
V6_PREFIX = "fd66:6968:0"

_HOST_NAME = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
_OWNED = re.compile(rf"^{PREFIX}(\d+)-")


def owner_tag(pid: int | None = None) -> str:
    return f"{PREFIX}{os.getpid() if pid is None else pid}"


def owner_of(name: str) -> int | None:
    """The pid encoded in a harness object's name, or None if not ours."""
    m = _OWNED.match(name)
    return int(m.group(1)) if m else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_host_name(name: object) -> str:
    if not isinstance(name, str) or not _HOST_NAME.match(name):
        raise InvalidArgument(
            f"host name must match {_HOST_NAME.pattern} (lowercase letter, then up to 23 of "
            f"[a-z0-9_]), got {name!r}")
    return name


@dataclass(frozen=True)
class Slot:
    """A leased address block.  Host number n (1-based) gets .n and ::n."""

    index: int
    fd: int

    @property
    def v4_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"198.{18 + self.index // 256}.{self.index % 256}.0/24")

    @property
    def v6_network(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(f"{V6_PREFIX}:{self.index:x}::/64")

    def v4(self, n: int) -> str:
        return str(self.v4_network[n])

    def v6(self, n: int) -> str:
        return str(self.v6_network[n])

    def netns_name(self, host: str) -> str:
        return f"{owner_tag()}-{self.index}-{host}"

    def contains(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return ip in (self.v4_network if ip.version == 4 else self.v6_network)

    def release(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def lease_slot(start: int = 0) -> Slot:
    """Take the first free slot; the flock dies with the process."""
    os.makedirs(LEASE_DIR, exist_ok=True)
    for i in range(SLOTS):
        index = (start + i) % SLOTS
        fd = os.open(f"{LEASE_DIR}/slot-{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Slot(index, fd)
    raise SetupError(f"all {SLOTS} lab address slots are leased (too many live labs on this machine)")
