"""Namespaces through libc (unshare, setns, mount), nothing else: a host's
network namespace, and the IPC and mount namespaces its processes run in
(``World``).

Named namespaces live where iproute2 keeps them (/run/netns/NAME, a bind
mount of the namespace file), so ``ip netns exec NAME ...`` works for
debugging a kept lab.  Without write access to /run (a user namespace of a
plain user) they live in the harness's runtime directory instead
(``_names.runtime_dir()``: $XDG_RUNTIME_DIR/netns or /tmp/fih-<uid>/netns);
``nsenter --net=PATH`` then enters one.

A thread enters a namespace only for the few microseconds it takes to open a
socket or fork a child, and always goes back: sockets and children keep the
namespace they were created in.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import threading
from typing import Callable, Iterator, TypeVar

from .errors import SetupError, Unsupported

CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWIPC, CLONE_FS = 0x40000000, 0x00020000, 0x08000000, 0x200
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_SLAVE, MS_SHARED = 2, 4, 0x1000, 0x4000, 1 << 19, 1 << 20
MNT_DETACH = 2


def run_dir() -> str:
    """Where named namespaces live: /run/netns, or <runtime dir>/netns."""
    from ._names import runtime_dir
    base = runtime_dir()
    return "/run/netns" if base == "/run" else os.path.join(base, "netns")


_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, call: str, netns: str | None = None) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{call} failed: {os.strerror(err)}", netns=netns, call=call, errno=err)


def _ensure_run_dir() -> None:
    """Make /run/netns a shared mount point, as ``ip netns add`` does."""
    d = run_dir()
    os.makedirs(d, exist_ok=True)
    if _libc.mount(b"", d.encode(), b"none", MS_SHARED | MS_REC, None) != 0:
        _check(_libc.mount(d.encode(), d.encode(), b"none", MS_BIND | MS_REC, None),
               f"mount --bind {d}")
        _check(_libc.mount(b"", d.encode(), b"none", MS_SHARED | MS_REC, None),
               f"mount --make-shared {d}")


_run_dir_ready = False


def path(name: str) -> str:
    return f"{run_dir()}/{name}"


def _reserve(name: str) -> str:
    """The empty file a namespace is bind-mounted on, made exclusively."""
    global _run_dir_ready
    _check_may_create()
    if not _run_dir_ready:
        _ensure_run_dir()
        _run_dir_ready = True
    p = path(name)
    try:
        os.close(os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError as exc:
        raise SetupError(f"network namespace {name} already exists", netns=name) from exc
    return p


def create(name: str, parent: int | None = None) -> str:
    """Create a named network namespace; returns its path.

    With ``parent`` (a namespace fd) the thread unshares from inside that
    namespace: the kernel reads some settings of the new namespace from the
    creating thread's current one (net.ipv4.tcp_child_ehash_entries, read by
    tcp_set_hashinfo() at creation), so a parent of the harness's own chooses
    them without touching the root namespace."""
    p = _reserve(name)
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            if parent is not None:
                _check(_libc.setns(parent, CLONE_NEWNET), "setns(parent)", name)
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)", name)
            _check(_libc.mount(b"/proc/thread-self/ns/net", p.encode(), b"none", MS_BIND, None),
                   f"mount --bind netns {p}", name)
        finally:
            _check(_libc.setns(orig, CLONE_NEWNET), "setns(back)")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(p)
        raise
    finally:
        os.close(orig)
    return p


def _check_may_create() -> None:
    """A plain user (no user namespace) gets a skip that says what to do,
    not a raw EPERM from unshare() or mount()."""
    if os.geteuid() != 0:
        raise Unsupported("network namespaces need CAP_SYS_ADMIN: run as root, or as a plain "
                          "user inside `unshare --user --map-root-user --net --mount`")


def create_unnamed() -> int:
    """A new network namespace held only by the returned fd: it vanishes
    with its last fd (with the process, even after SIGKILL), so there is
    nothing to sweep."""
    _check_may_create()
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            _check(_libc.setns(orig, CLONE_NEWNET), "setns(back)")
    finally:
        os.close(orig)


def attach(name: str, pid: int) -> str:
    """Name the network namespace of process ``pid`` (``ip netns attach``):
    a bind mount of /proc/<pid>/ns/net, which also keeps it alive."""
    p = _reserve(name)
    if _libc.mount(f"/proc/{pid}/ns/net".encode(), p.encode(), b"none", MS_BIND, None) != 0:
        err = ctypes.get_errno()
        os.unlink(p)
        raise SetupError(f"cannot attach the namespace of pid {pid}: {os.strerror(err)}",
                         netns=name, call="mount --bind", errno=err)
    return p


def delete(name: str) -> None:
    """Unmount and unlink; the kernel frees the namespace when its last user
    (a process, an open fd, an orphaned socket) goes."""
    p = path(name)
    _libc.umount2(p.encode(), MNT_DETACH)
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def list_names() -> list[str]:
    try:
        return sorted(os.listdir(run_dir()))
    except FileNotFoundError:
        return []


def open_fd(ns_path: str) -> int:
    try:
        return os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise SetupError(f"network namespace {ns_path} does not exist", netns=ns_path) from exc


def inode(ns_path: str) -> int:
    return os.stat(ns_path).st_ino


@contextlib.contextmanager
def inside(fd: int) -> Iterator[None]:
    """Run the body with the *current thread* in the namespace ``fd``.

    Synchronous on purpose: never hold it across an await.  Sockets and
    processes created inside keep the namespace after the thread leaves.
    """
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), "setns")
        try:
            yield
        finally:
            _check(_libc.setns(orig, CLONE_NEWNET), "setns(back)")
    finally:
        os.close(orig)


T = TypeVar("T")


def in_own_thread(body: Callable[[], T], name: str = "harness-ns") -> T:
    """Run ``body`` in a thread made for it, and return what it returned
    (or raise what it raised).  For what changes the thread for good
    (``World.enter`` unshares its filesystem context): the thread ends
    with the body, and nothing else ever runs in it."""
    result: list = []

    def run() -> None:
        try:
            result.append((True, body()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            result.append((False, exc))
    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


class World:
    """The IPC namespace and the mount namespace a host's processes run in,
    held by two fds: System V shared memory, semaphores and message queues,
    POSIX message queues, and a tmpfs of its own on /dev/shm (POSIX shared
    memory: shm_open, PostgreSQL's dynamic shared memory).  A server
    SIGKILLed in a lab (teardown, ``kill``, ``power_off``) cannot remove
    what it made there; the kernel frees all of it with the namespaces, once
    the host's last process and these fds are gone.  Everything else of the
    mount namespace is the machine's, seen as a slave copy: mounts made on
    the machine later appear in it, and nothing made in it reaches the
    machine."""

    def __init__(self, mnt: int, ipc: int):
        self.mnt, self.ipc = mnt, ipc

    @classmethod
    def create(cls) -> "World":
        """Make the pair (in a thread of its own: see ``in_own_thread``)."""
        return in_own_thread(cls._create)

    @classmethod
    def _create(cls) -> "World":
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare(CLONE_NEWNS|CLONE_NEWIPC)")
        # before any mount: the copy's mounts are peers of the machine's, and
        # a mount on a shared /dev/shm would appear on the machine's too
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None),
               "mount --make-rslave /")
        if os.path.isdir("/dev/shm"):
            _check(_libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV,
                               b"mode=1777"), "mount -t tmpfs tmpfs /dev/shm")
        fds = []
        try:
            for kind in ("mnt", "ipc"):
                fds.append(os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return cls(*fds)

    def enter(self) -> None:
        """Move the calling thread into both namespaces, keeping its working
        directory.  For good: only in a thread made for it (``in_own_thread``),
        which a child is then forked from."""
        cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        try:
            # a thread shares its filesystem context with the others, and
            # setns() into a mount namespace refuses a shared one
            _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
            _check(_libc.setns(self.mnt, CLONE_NEWNS), "setns(mnt)")
            os.fchdir(cwd)  # setns() moved it to the namespace's root
        finally:
            os.close(cwd)
        _check(_libc.setns(self.ipc, CLONE_NEWIPC), "setns(ipc)")

    def close(self) -> None:
        """Drop the harness's hold (idempotent); the host's processes keep
        the namespaces alive until they exit."""
        fds, self.mnt, self.ipc = (self.mnt, self.ipc), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def pids_in(ns_inode: int) -> list[int]:
    """Every process whose network namespace is ``ns_inode``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ns_inode:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


# --- a writable /proc/sys where the container runtime mounted it read-only ---
#
# Docker (without --privileged) bind-mounts /proc/sys read-only over itself.
# The superblock underneath is writable, and /proc/sys/net resolves against
# the *opening thread's* network namespace whatever mount it is reached
# through.  So: open_tree(OPEN_TREE_CLONE) makes a detached copy of that
# mount (visible in no mount namespace, gone when its fd closes),
# mount_setattr() clears its read-only flag, and files are opened relative
# to it.  Needs CAP_SYS_ADMIN over the mount namespace (which a container
# with --cap-add SYS_ADMIN has); nothing is mounted anywhere.

_SYS_OPEN_TREE, _SYS_MOUNT_SETATTR = 428, 442  # same number on every architecture
_OPEN_TREE_CLONE, _AT_EMPTY_PATH, _AT_RECURSIVE = 1, 0x1000, 0x8000
_MOUNT_ATTR_RDONLY = 0x1


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


_rw_proc_sys: int | str | None = None  # the clone's fd, or why it cannot be made


def proc_sys_read_only() -> bool:
    """Whether /proc/sys is mounted read-only here (docker does that)."""
    return bool(os.statvfs("/proc/sys").f_flag & os.ST_RDONLY)


def writable_proc_sys() -> int:
    """A directory fd of a private read-write clone of /proc/sys (made once
    per process); Unsupported naming the refused call when it cannot be."""
    global _rw_proc_sys
    if _rw_proc_sys is None:
        syscall = _libc.syscall
        syscall.restype = ctypes.c_long
        tree = syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(-100), b"/proc/sys",
                       ctypes.c_uint(_OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE))
        if tree < 0:
            _rw_proc_sys = f"open_tree(/proc/sys, OPEN_TREE_CLONE): " \
                           f"{os.strerror(ctypes.get_errno())}"
        else:
            attr = _MountAttr(0, _MOUNT_ATTR_RDONLY, 0, 0)
            if syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(tree), b"",
                       ctypes.c_uint(_AT_EMPTY_PATH), ctypes.byref(attr),
                       ctypes.c_size_t(ctypes.sizeof(attr))) < 0:
                _rw_proc_sys = f"mount_setattr(clear MOUNT_ATTR_RDONLY): " \
                               f"{os.strerror(ctypes.get_errno())}"
                os.close(tree)
            else:
                _rw_proc_sys = tree
    if isinstance(_rw_proc_sys, str):
        raise Unsupported(f"/proc/sys is read-only here and no private read-write clone of it "
                          f"can be made ({_rw_proc_sys}; needs CAP_SYS_ADMIN over a mount "
                          f"namespace whose /proc/sys is not locked read-only by a parent "
                          f"user namespace)", call=_rw_proc_sys.split("(")[0])
    return _rw_proc_sys


def write_sysctl(fd: int, key: str, value: str | int) -> None:
    """Write a sysctl of the namespace ``fd`` (/proc/sys/net is resolved
    against the opening thread's namespace); through a private read-write
    clone of /proc/sys when it is mounted read-only.  Unsupported when the
    key does not exist; the kernel's OSError when it refuses the value."""
    errors = write_sysctls(fd, [(key, value)])
    if errors:
        raise errors[key]


def write_sysctls(fd: int, items) -> dict[str, BaseException]:
    """Write many sysctls of the namespace ``fd``, entering it once (a
    fresh host pins ~40); returns {key: the error} for those that failed
    (Unsupported: no such sysctl, or, with ``call`` set, /proc/sys is
    read-only and cannot be cloned writable; OSError: the kernel refused the
    value).  Through a private read-write clone of /proc/sys when it is
    mounted read-only."""
    opened, errors = [], {}
    with inside(fd):
        for key, value in items:
            rel = key.replace('.', '/')
            try:
                try:
                    f = open(f"/proc/sys/{rel}", "w")
                except OSError as exc:
                    if exc.errno != errno.EROFS:
                        raise
                    f = open(os.open(rel, os.O_WRONLY | os.O_CLOEXEC,
                                     dir_fd=writable_proc_sys()), "w")
                opened.append((key, value, f))
            except Unsupported as exc:  # read-only, no writable clone
                errors[key] = exc
            except FileNotFoundError as exc:
                errors[key] = Unsupported(f"sysctl {key} does not exist in this kernel")
                errors[key].__cause__ = exc
            except OSError as exc:
                errors[key] = exc
    for key, value, f in opened:
        try:
            with f:
                f.write(str(value))
        except OSError as exc:
            errors[key] = exc
    return errors


def read_sysctl(fd: int, key: str) -> str:
    with inside(fd):
        try:
            f = open(f"/proc/sys/{key.replace('.', '/')}")
        except FileNotFoundError as exc:
            raise Unsupported(f"sysctl {key} does not exist in this kernel") from exc
    with f:
        return f.read().strip()


def socket_in(netns: int | str | None, family: int, type: int, proto: int = 0) -> socket.socket:
    """A socket created inside a network namespace (it stays there): the
    one way the harness opens one.

    ``netns`` is an open namespace fd, a name under /run/netns or a path
    such as ``/proc/<pid>/ns/net``; ``None`` means the calling thread's own."""
    if netns is None:
        return socket.socket(family, type, proto)
    if isinstance(netns, int):
        with inside(netns):
            return socket.socket(family, type, proto)
    fd = open_fd(netns if "/" in netns else path(netns))
    try:
        with inside(fd):
            return socket.socket(family, type, proto)
    finally:
        os.close(fd)
