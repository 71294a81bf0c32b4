"""What this machine supports.  Each probe returns None (supported) or the
exact reason it is not; ``@pytest.mark.requires(name)`` skips with that
reason, and ``python -m harness doctor`` prints them all.  Probes are
cached per process and touch nothing outside namespaces they create, with
one exception: the tracefs probe mounts tracefs at /sys/kernel/tracing when
it is not mounted (as `.ci/setup.sh` does), which is machine-wide."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import uuid

from ._names import owner_tag
from .errors import Unsupported


def _run(argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@functools.cache
def root() -> str | None:
    return None if os.geteuid() == 0 else "not root (network namespaces need CAP_SYS_ADMIN)"


def user_namespace() -> str | None:
    """None in the machine's own user namespace; else what it is (a mapped
    root: labs, firewall and NFQUEUE work, tracefs and docker do not)."""
    from ._names import outer_uid
    try:
        with open("/proc/self/uid_map") as f:
            full = f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        full = True
    if full:
        return None
    return f"a user namespace: uid {os.geteuid()} here is uid {outer_uid()} on the machine"


def container() -> str | None:
    """None on a machine; else the container runtime's marker found."""
    if os.path.exists("/.dockerenv"):
        return "a docker container (/.dockerenv)"
    if os.path.exists("/run/.containerenv"):
        return "a podman container (/run/.containerenv)"
    return None


@functools.cache
def sysctls() -> str | None:
    """Per-namespace sysctls can be written: /proc/sys is writable, or it is
    read-only (docker) and a private read-write clone of it can be made."""
    from . import _netns
    try:
        if _netns.proc_sys_read_only():
            _netns.writable_proc_sys()
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    return None


def environment() -> list[str]:
    """What kind of place this is, for doctor: user namespace, container,
    read-only /proc/sys and how sysctls are written, the runtime directory."""
    from . import _names, _netns
    out = [user_namespace() or "the machine's user namespace (uid map is the identity)",
           container() or "no container marker (/.dockerenv, /run/.containerenv)"]
    try:
        if _netns.proc_sys_read_only():
            out.append("/proc/sys is mounted read-only: sysctls are written through a private "
                       "read-write clone of it" if sysctls() is None else
                       f"/proc/sys is mounted read-only: {sysctls()}")
        else:
            out.append("/proc/sys is writable")
    except OSError as exc:
        out.append(f"/proc/sys: {exc}")
    try:
        out.append(f"runtime directory (locks, named namespaces): {_names.runtime_dir()} "
                   f"(namespaces in {_netns.run_dir()})")
    except Exception as exc:  # noqa: BLE001
        out.append(f"no runtime directory: {exc}")
    return out


@functools.cache
def netns() -> str | None:
    if root():
        return root()
    if sysctls():
        return f"per-namespace sysctls cannot be written: {sysctls()}"
    from . import _netns
    name = f"{owner_tag()}-probe-{uuid.uuid4().hex[:6]}"
    try:
        _netns.create(name)
    except Exception as exc:  # noqa: BLE001
        return f"cannot create a network namespace: {exc}"
    _netns.delete(name)
    return None


@functools.cache
def iptables() -> str | None:
    from . import _iptables
    try:
        _iptables.tools(4), _iptables.tools(6)
    except Unsupported as exc:
        return str(exc)
    return None


def iptables_backend() -> str:
    from . import _iptables
    try:
        return _iptables.backend()
    except Unsupported:
        return "unknown"


@functools.cache
def nfqueue() -> str | None:
    if iptables():
        return iptables()
    from . import _iptables
    return _probe_in_scratch_ns([_iptables.command(4), "-A", "INPUT", "-j", "NFQUEUE",
                                 "--queue-num", "1"])


@functools.cache
def tee() -> str | None:
    """iptables' TEE target (xt_TEE, nf_dup_ipv4/6) in mangle POSTROUTING, both
    families: faults.netem's NFQUEUE fallback lets what a host sends go with it."""
    if iptables():
        return iptables()
    from . import _iptables
    return _probe_in_scratch_ns(
        ["sh", "-c", f"{_iptables.command(4)} -t mangle -A POSTROUTING -p tcp -j TEE --gateway "
                     f"127.0.0.1 && {_iptables.command(6)} -t mangle -A POSTROUTING -p tcp -j "
                     f"TEE --gateway ::1"])


def _probe_in_scratch_ns(argv: list[str]) -> str | None:
    if netns():
        return netns()
    from . import _netns
    name = f"{owner_tag()}-probe-{uuid.uuid4().hex[:6]}"
    path = _netns.create(name)
    try:
        r = _run(["nsenter", f"--net={path}", *argv])
        return None if r.returncode == 0 else f"{' '.join(argv)} failed: {r.stderr.strip()}"
    finally:
        _netns.delete(name)


@functools.cache
def host_netem() -> str | None:
    if not shutil.which("tc"):
        return "tc (iproute2) not installed"
    failed = _probe_in_scratch_ns(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
    return "kernel has no sch_netem (tc qdisc add ... netem failed)" if failed else None


@functools.cache
def host_tbf() -> str | None:
    """sch_tbf in this kernel (faults.netem's rate on the tc engine)."""
    if not shutil.which("tc"):
        return "tc (iproute2) not installed"
    failed = _probe_in_scratch_ns(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate",
                                   "1mbit", "burst", "3028", "limit", "30000"])
    return "kernel has no sch_tbf (tc qdisc add ... tbf failed)" if failed else None


@functools.cache
def uml() -> str | None:
    from . import _uml
    return _uml.guest_unavailable_reason()


@functools.cache
def netem() -> str | None:
    """netem for real: in this kernel, or in a user-mode Linux guest."""
    if host_netem() is None or uml() is None:
        return None
    return f"{host_netem()}; and no user-mode Linux guest: {uml()}"


@functools.cache
def tracefs() -> str | None:
    from . import _tracefs
    return _tracefs.unavailable_reason()


@functools.cache
def syscall_tracepoints() -> str | None:
    if tracefs():
        return tracefs()
    return None if os.path.isdir("/sys/kernel/tracing/events/syscalls/sys_exit_sendto") \
        else "kernel lacks syscall tracepoints (CONFIG_FTRACE_SYSCALLS)"


@functools.cache
def sock_destroy() -> str | None:
    if netns():
        return netns()
    import socket
    from . import _diag, _netns
    name = f"{owner_tag()}-probe-{uuid.uuid4().hex[:6]}"
    _netns.create(name)
    fd = _netns.open_fd(_netns.path(name))
    try:
        with _netns.inside(fd):
            ds = _diag.open_socket()
            lo = socket.socket()
            lo.bind(("127.0.0.1", 0))
            lo.listen()
        with ds, lo:
            return None if _diag.destroy_all(ds) == 1 else "inet_diag SOCK_DESTROY destroyed nothing"
    except OSError as exc:
        return f"inet_diag SOCK_DESTROY unsupported (CONFIG_INET_DIAG_DESTROY): {exc}"
    finally:
        os.close(fd)
        _netns.delete(name)


@functools.cache
def netns_reuse() -> str | None:
    """Socket-only labs' namespaces can be scrubbed and reused: the kernel
    lets us flush a namespace's cached TCP metrics (GENL_ADMIN_PERM:
    CAP_NET_ADMIN in the initial user namespace)."""
    if netns():
        return netns()
    from . import _netlink, _netns
    from .errors import SetupError
    name = f"fih{os.getpid()}-probe-{uuid.uuid4().hex[:6]}"
    fd = _netns.open_fd(_netns.create(name))
    try:
        _netlink.flush_tcp_metrics(fd, name)
    except SetupError as exc:
        return (f"the tcp_metrics flush is refused ({exc.errno}; it needs CAP_NET_ADMIN in the "
                f"initial user namespace): every lab gets fresh namespaces")
    finally:
        os.close(fd)
        _netns.delete(name)
    return None


@functools.cache
def private_ipc() -> str | None:
    """A host's processes can get IPC and mount namespaces of their own
    (``_netns.World``: SysV IPC, POSIX message queues, /dev/shm)."""
    if root():
        return root()
    from ._topology import netns
    world = netns.new_world()
    if world is None:
        return netns.world_unavailable
    world.close()
    return None


@functools.cache
def docker() -> str | None:
    from ._topology import container
    return container.KIND.unavailable()


PROBES = {
    "root": root, "sysctls": sysctls, "netns": netns, "iptables": iptables, "nfqueue": nfqueue,
    "host_netem": host_netem, "host_tbf": host_tbf, "uml": uml, "netem": netem, "tracefs": tracefs,
    "syscall_tracepoints": syscall_tracepoints, "sock_destroy": sock_destroy,
    "netns_reuse": netns_reuse, "private_ipc": private_ipc, "docker": docker,
}


def missing(name: str) -> str | None:
    from .errors import InvalidArgument
    try:
        probe = PROBES[name]
    except KeyError:
        raise InvalidArgument(f"unknown feature {name!r}; known: {sorted(PROBES)}") from None
    return probe()
