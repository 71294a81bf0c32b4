"""Names and address blocks, unique across concurrent pytest processes.

Every object the harness creates carries its owner (``fih<pid>``) so that a
later run can remove what a SIGKILLed run left, and nothing else: we never
sweep by a broad name.  A pid alone is ambiguous where jobs run in pid
namespaces of their own (CI containers share the host kernel's tracefs,
docker daemon and sometimes /run): there the owner is ``fih<pid>p<ino>``,
``ino`` naming the owner's pid namespace (unique on the machine while it
lives).  ``owner_alive`` answers only what it can prove: an owner in a pid
namespace we cannot see into is never declared dead.

Each lab leases a slot: a /24 of 198.18.0.0/15 (RFC 2544, benchmarking) and a
/64 of the ULA prefix fd66:6968::/48.  The lease is held by the kernel for
its owner and released the instant the owner dies, so no stale lease can
block a later run:
  - a unix socket bound to the abstract name ``@fih-slot-N``: abstract names
    are per network namespace and need no file system, so this works for a
    plain user, in a user namespace, or with a read-only /run, and excludes
    every run in the same network namespace;
  - plus, where the runtime directory is writable, an flock on
    ``<runtime>/harness/slot-N.lock``, which also excludes runs in other
    network namespaces that share the file system (e.g. ``ip netns exec``).
Unique subnets matter beyond tidiness: the kernel's tracepoints carry
addresses but no namespace, so a lab's timeline is told apart from its
neighbours' by its subnet.

The runtime directory is /run when this process may write there (root),
else ``$XDG_RUNTIME_DIR`` when it is ours, else ``/tmp/fih-<uid>`` (uid as
seen from the machine, so a user namespace's mapped root gets its user's
directory), made 0700 and refused unless it is ours.  Every process of one
user in one environment resolves the same one.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass

from .errors import InvalidArgument, SetupError

PREFIX = "fih"
SLOTS = 512  # 198.18.0.0/15 holds 512 /24s
V6_PREFIX = "fd66:6968:0"

_HOST_NAME = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
_OWNED = re.compile(rf"^{PREFIX}(\d+)(?:p(\d+))?-")
INIT_PIDNS = 0xEFFFFFFC  # PROC_PID_INIT_INO: the initial pid namespace's inode, fixed


def pidns_of(pid: int | str = "self") -> int:
    """The inode of a process's pid namespace (the initial one's if /proc
    does not say)."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return INIT_PIDNS


_tag: tuple[int, str] | None = None  # (pid, tag): a process never changes pid namespace


def owner_tag() -> str:
    """This process's owner tag: ``fih<pid>``, or ``fih<pid>p<ino>`` outside
    the initial pid namespace."""
    global _tag
    pid = os.getpid()
    if _tag is None or _tag[0] != pid:
        ns = pidns_of()
        _tag = (pid, f"{PREFIX}{pid}" if ns == INIT_PIDNS else f"{PREFIX}{pid}p{ns}")
    return _tag[1]


def owned_tempdir(label: str = "") -> str:
    """A new directory in the temporary directory named by this process
    (``fih<pid>-[label-]XXXXXXXX``): if the process is killed, the next
    run's sweep removes it (``_sweep``)."""
    import tempfile
    return tempfile.mkdtemp(prefix=f"{owner_tag()}-{label}-" if label else f"{owner_tag()}-")


def lock_path(name: str) -> str:
    """A lock file shared by every harness process on the machine (by every
    process of this user where /run is not writable: see runtime_dir())."""
    directory = os.path.join(runtime_dir(), "harness")
    os.makedirs(directory, exist_ok=True)
    return f"{directory}/{name}.lock"


def owner_of(name: str) -> int | None:
    """The pid encoded in a harness object's name, or None if not ours."""
    m = _OWNED.match(name)
    return int(m.group(1)) if m else None


def owner_alive(name: str) -> bool | None:
    """Whether the process that owns the object ``name`` (``fih<pid>[p<ino>]-...``)
    still lives: True, False, or None when the name is not a harness owner's or
    the answer cannot be proved from here (its pid namespace is not ours and we
    are not in the initial one, which alone sees every process)."""
    m = _OWNED.match(name)
    if not m:
        return None
    pid, ns = int(m.group(1)), int(m.group(2) or INIT_PIDNS)
    mine = pidns_of()
    if ns == mine:
        return pid_alive(pid)
    if mine != INIT_PIDNS:
        return None  # another container's job, or the host's: not provably dead
    # From the initial pid namespace every process is visible, with its pid in
    # each nested namespace (the last NSpid field is the innermost one).
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or pidns_of(entry) != ns:
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
        except OSError:
            continue
        if nspid and int(nspid[-1]) == pid:
            return True
    return False


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
    fd: int  # the abstract unix socket's
    file_fd: int = -1  # the flock's, when the runtime directory is writable

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
        for fd in (self.fd, self.file_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


def outer_uid() -> int:
    """This process's effective uid as the machine sees it: inside a user
    namespace (``unshare --map-root-user``), uid 0 is the invoking user."""
    euid = os.geteuid()
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, outside, count = map(int, line.split())
                if inside <= euid < inside + count:
                    return outside + euid - inside
    except (OSError, ValueError):
        pass
    return euid


def _ours(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and os.access(path, os.W_OK)


@functools.cache
def runtime_dir() -> str:
    """Where the harness keeps its locks (and, off /run, its named
    namespaces): /run, $XDG_RUNTIME_DIR or /tmp/fih-<uid> (see above)."""
    if os.access("/run", os.W_OK):
        return "/run"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and _ours(xdg):
        return xdg
    path = f"/tmp/{PREFIX}-{outer_uid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SetupError(f"no runtime directory for the harness's locks: /run is not writable, "
                         f"XDG_RUNTIME_DIR={xdg!r} is not ours, and {path} cannot be made: "
                         f"{exc.strerror}") from exc
    if not _ours(path):
        raise SetupError(f"no runtime directory for the harness's locks: /run is not writable, "
                         f"XDG_RUNTIME_DIR={xdg!r} is not ours, and {path} is not a directory "
                         f"owned by uid {os.geteuid()} (refused: another user could lock us out)")
    return path


def lease_dir() -> str | None:
    """The directory of the slot flocks, or None when it cannot be written
    (the abstract sockets alone then hold the leases)."""
    path = os.path.join(runtime_dir(), "harness")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def _lock_abstract(index: int) -> int | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        s.bind(f"\0{PREFIX}-slot-{index}")
    except OSError as exc:
        s.close()
        if exc.errno == errno.EADDRINUSE:  # another live process holds it
            return None
        raise SetupError(f"cannot lease address slot {index}: bind(@{PREFIX}-slot-{index}) "
                         f"failed: {exc.strerror}") from exc
    return s.detach()


def leftovers(index: int) -> list[str]:
    """The named namespaces (hosts, containers', switch) of slot ``index``
    that some harness process made: a free slot's are a dead owner's."""
    from . import _netns
    owned = ((n, _OWNED.match(n)) for n in _netns.list_names())
    return [n for n, m in owned if m and n[m.end():].startswith(f"{index}-")]


def lease_slot(start: int = 0) -> Slot:
    """Take the first free slot; the lease dies with the process (a lab
    takes it through _sweep.lease_slot, which also checks leftovers)."""
    directory = lease_dir()
    for i in range(SLOTS):
        index = (start + i) % SLOTS
        sock_fd = _lock_abstract(index)
        if sock_fd is None:
            continue
        if directory is None:
            return Slot(index, sock_fd)
        fd = os.open(f"{directory}/slot-{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            os.close(sock_fd)
            continue
        return Slot(index, sock_fd, fd)
    raise SetupError(f"all {SLOTS} lab address slots are leased (too many live labs on this machine)")
