"""Run a command inside a throw-away user-mode Linux (UML) guest.

The host kernel may lack ``sch_netem`` (or forbid loading modules), but
Debian's ``user-mode-linux`` package ships a whole kernel that boots as an
ordinary process (``/usr/bin/linux``) together with its modules.  This module
boots that kernel with the host's filesystem as its root (``hostfs``), loads
the requested modules, runs one command and hands back its exit status and
output, so tests can exercise the real tc-netem path.

Stdlib only.  The guest's init is a small Python script (run by the same
interpreter as the caller, in isolated mode) because the host need not have
kmod/busybox: modules are loaded with ``finit_module(2)``, filesystems mounted
with ``mount(2)`` and the guest is powered off with ``reboot(2)``, all through
ctypes.

Layout inside the guest:

* ``/`` is the host's ``/`` via hostfs, mounted **read-only**;
* ``/proc``, ``/sys``, ``/dev`` (devtmpfs) are the guest's own;
* ``/run``, ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are guest-private tmpfs,
  so host paths below them are hidden; the ``share`` argument (plus the
  caller's interpreter prefix and ``cwd`` automatically) re-exposes selected
  host directories read-only at the same path;
* the per-run host directory is mounted read-write at :data:`GUEST_XCHG` and
  receives the command's stdout, stderr and exit status.

Nothing is left on the host: the per-run directory and the directory for
UML's memory file are removed, and UML's whole process group (UML forks
several helper processes) is killed on timeout, error or KeyboardInterrupt;
a tiny ``/bin/sh`` watchdog does the same if the calling process itself is
killed.
"""

from __future__ import annotations

import ast
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from . import _exclusive

__all__ = [
    "GuestError",
    "GuestResult",
    "GuestTimeout",
    "GuestUnavailable",
    "guest_unavailable_reason",
    "run_in_guest",
]

#: The UML kernel binary (Debian package ``user-mode-linux``).
UML_BINARY = os.environ.get("HARNESS_UML_BINARY", "/usr/bin/linux")
#: Where the package keeps ``<version>/modules.dep`` and the ``.ko`` files.
UML_MODULES_ROOT = os.environ.get("HARNESS_UML_MODULES", "/usr/lib/uml/modules")
#: Modules loaded by default: what the netem tests need.
DEFAULT_MODULES = ("sch_netem", "veth")
#: Where the per-run host directory appears inside the guest.
GUEST_XCHG = "/run/harness-uml"
#: Guest paths covered by guest-private filesystems; host paths below them
#: are invisible in the guest unless shared.
_SHADOWED = ("/tmp", "/var/tmp", "/run", "/dev", "/proc", "/sys")

_KO_SUFFIXES = (".ko", ".ko.xz", ".ko.gz")


class GuestUnavailable(Exception):
    """No UML guest can boot here; the message names what is missing."""


class GuestError(RuntimeError):
    """The guest booted (or tried to) but did not report a result."""


class GuestTimeout(GuestError, TimeoutError):
    """The guest did not finish within the timeout; it has been killed."""


@dataclass(frozen=True)
class GuestResult:
    returncode: int  # negative: killed by that signal (like subprocess)
    stdout: str
    stderr: str
    boot_seconds: float  # host start of UML -> command started in guest
    total_seconds: float  # host start of UML -> UML process gone
    console: str = field(default="", repr=False, compare=False)  # UML/kernel log


# --------------------------------------------------------------------------
# availability


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in _KO_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


@functools.lru_cache(maxsize=None)
def _uml_version(modules_root: str, binary: str) -> str | None:
    """The modules directory matching the UML binary (None if there is none)."""
    try:
        versions = sorted(
            d
            for d in os.listdir(modules_root)
            if os.path.isfile(os.path.join(modules_root, d, "modules.dep"))
        )
    except OSError:
        return None
    if len(versions) <= 1:
        return versions[0] if versions else None
    # Several kernels' modules: ask the binary which one it is.
    try:
        out = subprocess.run(
            [binary, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    for word in out:
        if word in versions:
            return word
    return versions[-1]


def _modules_dir() -> str:
    version = _uml_version(UML_MODULES_ROOT, UML_BINARY)
    if version is None:
        raise GuestUnavailable(
            f"no UML kernel modules: no {UML_MODULES_ROOT}/<version>/modules.dep"
        )
    return os.path.join(UML_MODULES_ROOT, version)


def _read_modules_dep(moddir: str) -> tuple[dict[str, str], dict[str, list[str]], set[str]]:
    """name -> relative path, relative path -> deps, builtin names."""
    paths: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    with open(os.path.join(moddir, "modules.dep"), encoding="utf-8") as f:
        for line in f:
            mod, sep, rest = line.partition(":")
            if not sep:
                continue
            mod = mod.strip()
            paths[_module_name(mod)] = mod
            deps[mod] = rest.split()
    builtin: set[str] = set()
    try:
        with open(os.path.join(moddir, "modules.builtin"), encoding="utf-8") as f:
            builtin = {_module_name(line.strip()) for line in f if line.strip()}
    except OSError:
        pass
    return paths, deps, builtin


def _resolve_modules(moddir: str, modules: Sequence[str]) -> list[str]:
    """Absolute paths of ``modules`` and their dependencies, in load order."""
    paths, deps, builtin = _read_modules_dep(moddir)
    order: list[str] = []
    seen: set[str] = set()

    def visit(rel: str) -> None:
        if rel in seen:
            return
        seen.add(rel)
        for dep in deps.get(rel, ()):
            visit(dep)
        order.append(os.path.join(moddir, rel))

    for name in modules:
        key = _module_name(name)
        if key in builtin:
            continue
        rel = paths.get(key)
        if rel is None:
            raise GuestUnavailable(f"{key}.ko not found under {moddir}")
        if not os.path.isfile(os.path.join(moddir, rel)):
            raise GuestUnavailable(f"{key}.ko listed in modules.dep but missing: {moddir}/{rel}")
        visit(rel)
    return order


def guest_unavailable_reason(modules: Sequence[str] = DEFAULT_MODULES,
                             kernel: str | None = None) -> str | None:
    """Why no guest can boot here (None if one can).  File checks only.

    ``kernel`` is another UML binary (e.g. one harness._kernels built, which
    has everything built in: pass ``modules=()``)."""
    binary = kernel or UML_BINARY
    if not sys.platform.startswith("linux"):
        return f"user-mode-linux needs a Linux host (this is {sys.platform})"
    if os.uname().machine != "x86_64":
        # Debian ships UML for amd64 only, and the guest init uses x86_64 syscall numbers.
        return f"user-mode-linux guests need an x86_64 host (this is {os.uname().machine})"
    if not os.path.exists(binary):
        return (f"user-mode-linux not installed: {binary} missing" if kernel is None
                else f"user-mode-linux kernel {binary} missing")
    if not os.access(binary, os.X_OK):
        return f"user-mode-linux kernel {binary} is not executable"
    if not modules:
        return None
    if not os.path.isdir(UML_MODULES_ROOT):
        return f"user-mode-linux modules missing: {UML_MODULES_ROOT} missing"
    try:
        _resolve_modules(_modules_dir(), modules)
    except GuestUnavailable as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read UML modules.dep: {exc}"
    return None


# --------------------------------------------------------------------------
# the guest's init (runs as PID 1 inside UML; stdlib only, no site-packages)

_INIT_SOURCE = r'''
# Imports kept to the cheap ones: under UML every syscall is slow, and
# json/subprocess/socket/re would add ~0.2 s to every boot.
import ctypes, fcntl, os, struct, time
libc = ctypes.CDLL(None, use_errno=True)
X = CFG["xchg"]

def log(msg):
    try:
        with open("/dev/console", "w") as c:
            c.write("harness-uml-init: %s\n" % msg)
    except OSError:
        pass

def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))

def mount(src, target, fstype, flags=0, data=None):
    os.makedirs(target, exist_ok=True)
    check(libc.mount(src.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                     data.encode() if data is not None else None),
          "mount %s on %s" % (fstype, target))

def insmod(path):
    if path.endswith(".ko"):
        fd = os.open(path, os.O_RDONLY)
        try:
            ret = libc.syscall(ctypes.c_long(313), ctypes.c_long(fd), b"", ctypes.c_long(0))  # finit_module
        finally:
            os.close(fd)
    else:
        import gzip, lzma
        opener = lzma.open if path.endswith(".xz") else gzip.open
        with opener(path, "rb") as f:
            image = f.read()
        ret = libc.syscall(ctypes.c_long(175), image, ctypes.c_ulong(len(image)), b"")  # init_module
    if ret != 0 and ctypes.get_errno() != 17:  # EEXIST: already loaded
        check(ret, "load module %s" % path)

def lo_up():
    fd = libc.socket(2, 2, 0)  # AF_INET, SOCK_DGRAM
    if fd < 0:
        check(fd, "socket")
    try:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(fd, 0x8913, req))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(fd, 0x8914, struct.pack("16sh14x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP
    finally:
        os.close(fd)

def run(argv, env, cwd):
    out = os.open(os.path.join(X, "stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(os.path.join(X, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open("/dev/null", os.O_RDONLY)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:
            os.write(2, ("harness-uml: cannot run %r: %s\n" % (argv, exc)).encode())
        os._exit(127)
    for fd in (out, err, null):
        os.close(fd)
    while True:
        wpid, wstatus = os.waitpid(-1, 0)  # PID 1 also reaps orphans
        if wpid == pid:
            return os.waitstatus_to_exitcode(wstatus)

status = {"t_init": time.time()}
try:
    mount("proc", "/proc", "proc")
    mount("sysfs", "/sys", "sysfs")
    for d in ("/run", "/tmp", "/var/tmp", "/dev/shm"):
        mount("tmpfs", d, "tmpfs", 0, "mode=0755" if d == "/run" else "mode=1777")
    mount("hostfs", X, "hostfs", 0, CFG["hostdir"])
    for path in CFG["share"]:
        mount("hostfs", path, "hostfs", 1, path)  # MS_RDONLY
    for path in CFG["writable"]:
        mount("hostfs", path, "hostfs", 0, path)
    for path in CFG["modules"]:
        insmod(path)
    for key, value in CFG["sysctls"].items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)
    lo_up()
    status["t_start"] = time.time()
    status["returncode"] = run(CFG["argv"], CFG["env"], CFG["cwd"])
    status["t_end"] = time.time()
except BaseException:
    import traceback
    status["error"] = traceback.format_exc()
    log(status["error"])
try:
    fd = os.open(os.path.join(X, "status"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, repr(status).encode())
    os.fsync(fd)
    os.close(fd)
except BaseException as exc:
    log("cannot write status: %r" % (exc,))
os.sync()
libc.reboot(0x4321FEDC)  # RB_POWER_OFF
while True:
    time.sleep(1)
'''


# --------------------------------------------------------------------------
# host side


def _is_shadowed(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in _SHADOWED)


def _shares(extra: Sequence[str], cwd: str) -> list[str]:
    """Host directories to expose in the guest because its tmpfs would hide them."""
    candidates = (sys.prefix, sys.base_prefix, cwd, *extra)
    wanted = sorted({os.path.realpath(p) for p in candidates}, key=len)
    out: list[str] = []
    for p in wanted:
        if not _is_shadowed(p) or any(p.startswith(q.rstrip("/") + "/") for q in out):
            continue  # visible anyway, or inside a share
        top = p.split("/")[1]
        if top in ("proc", "sys") or (top == "dev" and not p.startswith("/dev/shm/")):
            raise GuestError(f"cannot share {p} into the guest")
        if not os.path.isdir(p):
            raise GuestError(f"cannot share {p} into the guest: not a directory")
        out.append(p)
    return out  # parents first


def _mem_tmpdir(mem_bytes: int) -> str | None:
    """A fresh dir for UML's memory file, on /dev/shm when it is roomy tmpfs."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > mem_bytes + (1 << 30) and os.access("/dev/shm", os.W_OK):
            return tempfile.mkdtemp(prefix="harness-uml-mem-", dir="/dev/shm")
    except OSError:
        pass
    return None


def _parse_mem(mem: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    mem = mem.strip()
    if mem and mem[-1].lower() in units:
        return int(mem[:-1]) * units[mem[-1].lower()]
    return int(mem)


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after "(comm)": state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL UML and every process of its group; wait until they are gone."""
    if proc.poll() is None:
        # The unreaped leader pins the group id, so killpg cannot hit strangers.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    # Stragglers: a group id stays reserved while any member lives, so every
    # process found with it is one of UML's helpers.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [p for p in _group_pids(proc.pid) if not _is_zombie(p)]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z"


# If this Python process dies without running its cleanup (SIGKILL, a
# crash), UML and its helper processes would run on and the run directories
# would stay.  This watchdog (in its own session) reads UML's group id on
# stdin, then waits: "done" means we cleaned up ourselves; EOF without it
# means we are gone, so it kills the group and removes the directories.
_WATCHDOG = r"""
read pgid || pgid=
read done && exit 0
if [ -n "$pgid" ]; then
    kill -KILL "-$pgid" 2>/dev/null
    n=0
    while kill -0 "-$pgid" 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
fi
rm -rf -- "$@"
"""


def _start_watchdog(*paths: str) -> subprocess.Popen | None:
    try:
        return subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, "harness-uml-watchdog", *paths],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return None  # best effort


def _tell_watchdog(watchdog: subprocess.Popen | None, line: str, close: bool = False) -> None:
    if watchdog is None:
        return
    try:
        watchdog.stdin.write(line.encode() + b"\n")
        watchdog.stdin.flush()
        if close:
            watchdog.stdin.close()
            watchdog.wait(timeout=10)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _uprobes_hint() -> str:
    """For a guest that did not finish: the uprobe events defined on the
    machine, if any.  A guest's programs run the host's files, and one that
    reaches a uprobe in them (glibc's, by perf probe or a harness run that
    bypassed the lock of harness._exclusive) traps and hangs the guest."""
    from ._tracefs import probe_events
    events = probe_events()
    if not events:
        return ""
    shown = ", ".join(events[:5]) + (f" (+{len(events) - 5} more)" if len(events) > 5 else "")
    return (f"\nuprobe events on this machine now: {shown}.  A guest's programs run the "
            f"host's files and hang on a uprobe in them: remove them (or end what made them).")


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


_EXPIRED = object()


def _wait(proc: subprocess.Popen, deadline: float, watch) -> object | None:
    """None once UML has exited; _EXPIRED at the deadline; or what ``watch``
    returned to end the guest early."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return _EXPIRED
        try:
            proc.wait(timeout=left if watch is None else min(left, 0.05))
            return None
        except subprocess.TimeoutExpired:
            pass
        if watch is not None:
            reason = watch()
            if reason is not None:
                return reason


def run_in_guest(
    argv: Sequence[str],
    *,
    modules: Sequence[str] = DEFAULT_MODULES,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    mem: str = "512M",
    share: Sequence[str] = (),
    writable: Sequence[str] = (),
    kernel: str | None = None,
    kernel_args: Sequence[str] = (),
    on_start=None,
    remove: Sequence[str] = (),
    sysctls: Mapping[str, str] | None = None,
    watch=None,
) -> GuestResult:
    """Boot a fresh UML guest, run ``argv`` in it as root, power it off.

    ``env`` defaults to the caller's environment without ``TMPDIR``; ``cwd``
    defaults to the caller's working directory.  Host directories under
    /tmp, /var/tmp, /run or /dev/shm are hidden by the guest's own tmpfs;
    ``share`` lists host directories to expose read-only at the same path
    (``sys.prefix``, ``sys.base_prefix`` and ``cwd`` are shared automatically
    when needed).  ``writable`` lists existing host directories mounted
    read-write at the same path (e.g. where the guest leaves results).
    ``timeout`` (wall seconds) covers boot, the command and shutdown; on
    expiry the guest is killed and :class:`GuestTimeout` raised.

    ``kernel`` boots another UML binary than Debian's (``modules`` must then
    be empty: such a kernel has what it needs built in); ``kernel_args`` are
    appended to its command line (e.g. ``time-travel=inf-cpu``).
    ``on_start(pid)`` is called once UML runs (its process group id).
    ``remove`` names more host paths the watchdog deletes if the caller is
    killed before it could (the caller deletes them otherwise).  ``sysctls``
    ({"net.core.x": "1"}) are written in the guest before the command runs.
    ``watch()``, when given, is called about every 50 ms while the guest
    runs (e.g. to follow what it writes to a shared directory); a string
    it returns ends the guest: it is killed and :class:`GuestTimeout`
    raised with that string as the reason.
    """
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise ValueError("argv must not be empty")
    reason = guest_unavailable_reason(modules, kernel)
    if reason is not None:
        raise GuestUnavailable(reason)
    module_paths = _resolve_modules(_modules_dir(), modules) if modules else []
    for arg in kernel_args:
        if not isinstance(arg, str) or not arg or any(c.isspace() for c in arg):
            raise ValueError(f"kernel_args must be words without spaces, got {arg!r}")
    writable = [os.path.realpath(p) for p in writable]
    for p in writable:
        if not os.path.isdir(p):
            raise GuestError(f"cannot share {p} writable into the guest: not a directory")
    cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
    shares = _shares(share, cwd)
    interpreter = os.path.realpath(sys.executable)
    mem_bytes = _parse_mem(mem)

    rundir = tempfile.mkdtemp(prefix="harness-uml-")
    memdir: str | None = None
    proc: subprocess.Popen | None = None
    watchdog: subprocess.Popen | None = None
    guest_held = False
    console_path = os.path.join(rundir, "console.log")
    try:
        init = os.path.join(rundir, "init")
        shebang = f"#!{interpreter} -ISB"
        if len(shebang) > 250 or any(c.isspace() or c in ",\"'" for c in init + interpreter):
            raise GuestError(f"unusable path for the UML command line: {init!r} / {interpreter!r}")
        config = {
            "argv": argv,
            "env": dict(env),
            "cwd": cwd,
            "hostdir": rundir,
            "xchg": GUEST_XCHG,
            "share": shares,
            "writable": writable,
            "sysctls": {str(k): str(v) for k, v in (sysctls or {}).items()},
            "modules": module_paths,
        }
        with open(init, "w", encoding="utf-8") as f:
            f.write(f"{shebang}\nCFG = {config!r}\n{_INIT_SOURCE}")
        os.chmod(init, 0o755)
        memdir = _mem_tmpdir(mem_bytes) or rundir
        watchdog = _start_watchdog(*{rundir, memdir, *remove})
        cmdline = [
            kernel or UML_BINARY,
            f"mem={mem}",
            f"umid={os.path.basename(rundir)}",  # pid file + mconsole socket go to
            f"uml_dir={rundir}",  # rundir/umid/ instead of ~/.uml/
            "root=/dev/root",
            "rootfstype=hostfs",
            "ro",
            f"init={init}",
            "con=null",
            "con0=null,fd:1",  # kernel console and init's messages -> console.log
            "ssl=null",
            "quiet",
            # Skip boot-time work the guest never needs: RAID6/XOR algorithm
            # benchmarks (~0.8 s) and 256 legacy BSD ptys (~0.2 s).
            "initcall_blacklist=raid6_select_algo,calibrate_xor_blocks",
            "pty.legacy_count=0",
            *kernel_args,
        ]
        uml_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": memdir, "HOME": rundir}
        t0_wall = time.time()
        t0 = time.monotonic()
        try:  # a guest hangs on another process's SO_ERROR uprobe: wait it out
            _exclusive.hold("guest", timeout)
        except _exclusive.Busy as exc:
            raise GuestTimeout(f"UML guest for {argv!r} not started: {exc}") from None
        guest_held = True
        with open(console_path, "wb") as console:
            proc = subprocess.Popen(
                cmdline,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=uml_env,
                cwd=rundir,
                start_new_session=True,  # UML and all its helpers in one process group
            )
        _tell_watchdog(watchdog, str(proc.pid))
        if on_start is not None:
            on_start(proc.pid)
        reason = _wait(proc, t0 + timeout, watch)
        if reason is not None:
            _kill_group(proc)
            if reason is _EXPIRED:
                reason = f"UML guest running {argv!r} did not finish within {timeout:g} s"
            raise GuestTimeout(
                f"{reason}; killed it.\n"
                f"guest stdout so far:\n{_tail(_read_text(os.path.join(rundir, 'stdout')))}\n"
                f"guest stderr so far:\n{_tail(_read_text(os.path.join(rundir, 'stderr')))}\n"
                f"console:\n{_tail(_read_text(console_path))}{_uprobes_hint()}"
            ) from None
        total = time.monotonic() - t0
        console_text = _read_text(console_path)
        try:
            status = ast.literal_eval(_read_text(os.path.join(rundir, "status")))
            if not isinstance(status, dict):
                raise ValueError(status)
        except (ValueError, SyntaxError):
            raise GuestError(
                f"UML guest exited ({proc.returncode}) without reporting a result for "
                f"{argv!r}.\nconsole:\n{_tail(console_text, 60)}"
            ) from None
        if "error" in status:
            raise GuestError(f"guest init failed before/while running {argv!r}:\n{status['error']}")
        return GuestResult(
            returncode=int(status["returncode"]),
            stdout=_read_text(os.path.join(rundir, "stdout")),
            stderr=_read_text(os.path.join(rundir, "stderr")),
            boot_seconds=status["t_start"] - t0_wall,
            total_seconds=total,
            console=console_text,
        )
    finally:
        # Also reached on KeyboardInterrupt and any other exception.
        if proc is not None:
            _kill_group(proc)
        if guest_held:
            _exclusive.release("guest")
        shutil.rmtree(rundir, ignore_errors=True)
        if memdir is not None and memdir != rundir:
            shutil.rmtree(memdir, ignore_errors=True)
        if proc is None:
            _tell_watchdog(watchdog, "")  # no UML group to name
        _tell_watchdog(watchdog, "done", close=True)
