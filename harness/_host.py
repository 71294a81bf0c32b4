"""A host of a lab: a network namespace with one link to the lab's switch.

A host owns sockets (in the test process, through ``listen``/``connect``),
processes (``spawn``) and peers (``peer``: the harness's killable socket
program).  Whatever realises the namespace (a bare namespace, a container)
is the host's backend (``topology.backend.HostBackend``); nothing here
depends on which kind it is.
"""

from __future__ import annotations

import errno as _errno
import os
import socket as _socket
import subprocess
import sys
import warnings
from typing import Any

import trio

from . import _check, _diag, _netns
from ._tracer import tracer as _tracer
from .errors import FaultError, InvalidArgument, SetupError, Unsupported
from ._observe import snapshot as _snapshot
from ._process import (Process, Ready, check_argv, popen_in, spawn_in, take_pipes,
                      wait_ready)
from ._sockets import LocalDriver, PeerDriver, SocketFactory, make_socket_in


class Host(SocketFactory):
    """One host.  ``v4``/``v6`` are its addresses on the lab's switch."""

    def __init__(self, lab, name: str, index: int, backend, v4: str, v6: str,
                 *, profile: str, sysctls: dict[str, str]):
        self.lab, self.name, self.index = lab, name, index
        self.backend = backend  # topology.backend.HostBackend
        self.ns_ino = os.fstat(backend.fd).st_ino  # the namespace's identity, kept after the fd closes
        self.v4, self.v6 = v4, v6
        self.profile, self.sysctls = profile, sysctls
        self.host = self
        self._diag = _diag.open_socket(backend.fd)
        self._driver = LocalDriver(make_socket_in(backend.fd))
        self.processes: list[Process] = []
        # changed beyond sockets: never reused (Lab.tainted)
        self.tainted = not backend.reusable
        self.generation = 0   # bumped when power_on gives the host a new namespace

    @property
    def netns(self) -> str:
        """The namespace's name (``ip netns exec NAME ...``)."""
        return self.backend.netns

    @property
    def ns_fd(self) -> int:
        return self.backend.fd

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.v4} {self.v6} netns={self.netns}>"

    def _check_open(self) -> None:
        self.lab.check_open(f"host {self.name} ({self.netns})")

    def address(self, family: int = 4) -> str:
        if family == 4 and self.v4:
            return self.v4
        if family == 6 and self.v6:
            return self.v6
        if family not in (4, 6):
            raise InvalidArgument(f"family must be 4 or 6, got {family!r}")
        raise InvalidArgument(f"host {self.name} has no IPv{family} address")

    # --- observation ----------------------------------------------------
    def sockets(self, *, state: str | None = None, port: int | None = None) -> _snapshot.Snapshot:
        """A frozen snapshot of every TCP socket in the host (TIME_WAIT
        included), optionally filtered."""
        self._check_open()
        snap = _snapshot.take(self._diag, self.name)
        if state is not None or port is not None:
            snap = snap.where(state=state, port=port)
        return snap

    def counters(self, group: str = "TcpExt") -> dict[str, int]:
        """The namespace's SNMP counters of one group, as ``nstat`` reads them
        (/proc/net/netstat and /proc/net/snmp): TcpExt (TCPChallengeACK,
        PAWSEstab, TCPTimeWaitOverflow...), Tcp, Ip, Icmp, Udp..."""
        self._check_open()
        with _netns.inside(self.ns_fd):
            files = [os.open(f"/proc/thread-self/net/{n}", os.O_RDONLY | os.O_CLOEXEC)
                     for n in ("netstat", "snmp")]
        groups: dict[str, dict[str, int]] = {}
        for fd in files:
            with os.fdopen(fd) as f:
                lines = f.read().splitlines()
            for names, values in zip(lines[::2], lines[1::2]):
                head, *keys = names.split()
                groups[head.rstrip(":")] = dict(zip(keys, map(int, values.split()[1:])))
        if group not in groups:
            raise InvalidArgument(f"no counter group {group!r}; this kernel has {sorted(groups)}")
        return groups[group]

    def sysctl(self, key: str, value: Any = None) -> str:
        """Read a sysctl of this host, or write it when ``value`` is given.
        Only per-namespace keys (net.*, and only those the kernel shows in a
        host namespace): nothing machine-wide can be reached from a lab."""
        from . import _sysctls
        where = f"host {self.name}.sysctl()"
        _sysctls.check_name(key, where)
        self._check_open()
        try:
            current = _netns.read_sysctl(self.ns_fd, key)
        except Unsupported:
            raise _sysctls._missing(key, where, optional=False) from None
        if value is None:
            return current
        text = _sysctls.check_value(key, value, where)
        self.tainted = True
        try:
            _netns.write_sysctl(self.ns_fd, key, text)
        except OSError as exc:
            raise InvalidArgument(f"sysctl {key}={value!r} is refused by the kernel "
                                  f"({os.strerror(exc.errno or 0)}), from {where}",
                                  netns=self.netns) from None
        return _netns.read_sysctl(self.ns_fd, key)

    # --- commands and processes -------------------------------------------
    async def run(self, argv: list[str], *, input: bytes | None = None, check: bool = True,
                  timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a command to completion in this host (iptables-restore, tc...).
        With ``check``, a failure raises SetupError with the command, its
        stdout and its stderr."""
        return await trio.to_thread.run_sync(self.run_sync, argv, input, check, timeout)

    def run_sync(self, argv: list[str], input: bytes | None = None, check: bool = True,
                 timeout: float = 30.0) -> subprocess.CompletedProcess:
        check_argv(argv, f"host {self.name}.run()")
        self._check_open()
        self.tainted = True
        world = self.backend.world()
        try:
            proc = _netns.in_own_thread(lambda: popen_in(
                self.ns_fd, world, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL if input is None else subprocess.PIPE))
        except FileNotFoundError as exc:
            raise SetupError(f"cannot run {argv[0]!r} in host {self.name}: not found",
                             netns=self.netns, call=" ".join(argv)) from exc
        with proc:
            try:
                out, err = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
        res = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and res.returncode != 0:
            raise SetupError(f"{' '.join(argv)} failed with {res.returncode} in host {self.name}"
                             f"\nstdout: {res.stdout.decode(errors='replace')[-2000:]}"
                             f"\nstderr: {res.stderr.decode(errors='replace')[-2000:]}",
                             netns=self.netns, call=" ".join(argv))
        return res

    async def spawn(self, argv: list[str], *, ready: Ready | None = None,
                    ready_timeout: float = 5.0, env: dict | None = None,
                    cwd: str | None = None, user: str | int | None = None) -> Process:
        """Run ``argv`` in this host; with ``ready``, return once it holds
        (e.g. ``harness.listening(8080)``).  Stopped at teardown.

        ``user`` (a name or uid; in a container host, from the container's
        /etc/passwd) runs it with that user's uid, gid and no supplementary
        groups, set by the child itself between fork and exec: no wrapper
        (su, runuser) forks in between, and the process is traced from its
        first instruction like any other (its failing socket calls and its
        descendants' are in the timeline).  HOME, USER and LOGNAME follow
        unless ``env`` is given."""
        check_argv(argv, f"host {self.name}.spawn()")
        _check.seconds(ready_timeout, "ready_timeout", positive=True)
        ids = self._user_ids(user) if user is not None else None
        proc = self._start(argv, env=env, cwd=cwd, ids=ids)
        if ready is not None:
            try:
                await wait_ready(proc, ready, ready_timeout)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await proc.kill()
                raise
        return proc

    def _user_ids(self, user: str | int) -> tuple[str, int, int, str]:
        """(name, uid, gid, home) of ``user`` from the host's passwd file (a
        container's own for a container host)."""
        if isinstance(user, bool) or not isinstance(user, (str, int)) or user == "":
            raise InvalidArgument(f"user must be a user name or a uid, got {user!r}")
        main = self.backend.main  # a host with a main process has its own root (a container)
        root = f"/proc/{main.pid}/root" if main is not None else ""
        try:
            with open(f"{root}/etc/passwd") as f:
                entries = [line.rstrip("\n").split(":") for line in f if line.count(":") >= 6]
        except OSError as exc:
            raise SetupError(f"cannot read {root}/etc/passwd to find user {user!r}: {exc}",
                             netns=self.netns) from exc
        for name, _, uid, gid, _, home, _ in (e[:7] for e in entries):
            if name == user or (isinstance(user, int) and uid == str(user)):
                return name, int(uid), int(gid), home
        raise InvalidArgument(f"no user {user!r} in {root or ''}/etc/passwd of host {self.name}")

    @property
    def main(self):
        """The host's main process, for a kind that has one (a container:
        kill = kill its main process, pause = freeze the container); the
        same kill/pause/resume/wait as a Process."""
        main = self.backend.main
        if main is None:
            raise InvalidArgument(f"host {self.name} ({self.backend.describe()}) has no main "
                                  f"process (use spawn() or program())")
        if main.host is None:
            main.host = self  # readiness conditions look at the process's host
        return main

    def _start(self, argv: list[str], **kw) -> Process:
        self._check_open()
        self.tainted = True
        host_binary = kw.pop("host_binary", False)
        ids = kw.pop("ids", None)
        if ids is not None:
            name, uid, gid, home = ids
            if kw.get("env") is None:
                kw["env"] = dict(os.environ, HOME=home, USER=name, LOGNAME=name)
        if not host_binary:
            argv = self.backend.command(argv)  # "run inside" the host's world
        if ids is not None and argv[:1] == ["nsenter"] and "--" in argv:
            # entering the host's world needs root: nsenter drops to the
            # user itself, in the same process, after entering
            at = argv.index("--")
            argv = [*argv[:at], "--setgid", str(ids[2]), "--setuid", str(ids[1]), *argv[at:]]
        elif ids is not None:
            kw.update(user=ids[1], group=ids[2], extra_groups=[])
        n = len(self.processes)
        base = os.path.join(self.lab.artifacts, f"{self.name}.{n}")
        spawner: list[int | None] = []
        popen, out, err = spawn_in(self, argv, netns_fd=self.ns_fd, world=self.backend.world(),
                                   out_path=base + ".out",
                                   err_path=base + ".err",
                                   before_fork=lambda: spawner.append(_tracer.arm_spawner()),
                                   **kw)
        proc = Process(self, argv, popen, out, err)
        self.processes.append(proc)
        _tracer.watch(proc, self, spawner[0] if spawner else None)
        return proc

    async def program(self) -> "Program":
        """Start a program of the harness's in this host whose sockets are
        made through the same API (``connect``, ``listen``...) but owned by
        that separate process: they die with it (kill, pause, power off),
        as a real client's or server's do."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = self._start([sys.executable, "-m", "harness._peer"], env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, host_binary=True)
        return await Program.start(self, proc)

    async def peer(self) -> "Program":
        """Deprecated name of ``program()`` ("peer" reads as the other end
        of a connection)."""
        warnings.warn("host.peer() is now host.program() (a Program: sockets owned by a "
                      "separate process)", DeprecationWarning, stacklevel=2)
        return await self.program()

    async def stop_processes(self) -> None:
        """SIGKILL every process in the namespace (ours and their children)."""
        for proc in self.processes:
            proc.signal(9)
        for pid in _netns.pids_in(os.fstat(self.ns_fd).st_ino):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        for proc in self.processes:
            await proc.wait()
            proc.close()

    def abort_sockets(self) -> int:
        """Abort every socket: the test's (linger 0) then every other one in
        the namespace, TIME_WAIT included (inet_diag destroy)."""
        self._check_open()
        self._driver.abort_all()
        return _diag.destroy_all(self._diag)

    def release_observers(self) -> None:
        """Abort the test's sockets and close the diag socket; the namespace
        (and its fd) stay for the lab to scrub or destroy."""
        self._driver.abort_all()
        self._diag.close()


async def replace_backend(host: Host, backend) -> None:
    """Point this host at a fresh namespace (faults.power_on): a diag
    socket and a socket driver of the new namespace replace the old ones,
    which are closed with the old namespace's fd.  Name, addresses and
    processes stay."""
    diag = _diag.open_socket(backend.fd)
    host.tainted = True
    host.generation += 1
    old, old_diag, old_driver = host.backend, host._diag, host._driver
    host.backend, host._diag = backend, diag
    host._driver = LocalDriver(make_socket_in(backend.fd))
    old_driver.abort_all()
    old_diag.close()
    os.close(old.fd)
    await backend.start_tasks(host.lab.context)
    host.ns_ino = os.fstat(backend.fd).st_ino
    if backend.main is not None:  # a new main process (a new container) to trace
        _tracer.watch_container(host)


class Program(SocketFactory):
    """A program of the harness's in a host (``host.program()``): the same
    socket API, its sockets owned by that process."""

    def __init__(self, host: Host, process: Process, driver: PeerDriver):
        self.host, self.process, self._driver = host, process, driver

    def __repr__(self) -> str:
        return f"<Program pid={self.process.pid} in {self.host.name}>"

    @classmethod
    async def start(cls, host: Host, proc: Process) -> "Program":
        stdin, stdout = take_pipes(proc)
        send, recv = trio.lowlevel.FdStream(stdin), trio.lowlevel.FdStream(stdout)
        driver = PeerDriver(proc, send, recv)
        host.lab.context.start_soon(driver.reader)
        try:
            with trio.fail_after(30):
                out = await driver.call("ready")
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await proc.kill()
            raise SetupError(f"the harness's program did not start in {host.name}: "
                             f"{proc.stderr()[-800:]!r}", netns=host.netns) from exc
        assert out.ok
        return cls(host, proc, driver)

    async def kill(self) -> int:
        return await self.process.kill()

    async def pause(self) -> None:
        await self.process.pause()

    async def resume(self) -> None:
        await self.process.resume()

    async def sigpipe_default(self) -> None:
        """Restore SIGPIPE's default action in the peer, so a send on a
        reset connection kills it (as a C program that did not ignore it)."""
        await self._driver.call("sigpipe")


def check_host(host: object, where: str, name: str = "host") -> Host:
    """``host`` is a Host of an open lab (the one check every entry point
    that takes a host makes, before anything is touched)."""
    if not isinstance(host, Host):
        raise InvalidArgument(f"{name} must be a Host (from lab.pair() or lab.host()), got "
                              f"{name}={host!r} ({type(host).__name__}) from {where}")
    host.lab.check_open(f"{where}: host {host.name}")
    return host


_AF_OF = {4: _socket.AF_INET, 6: _socket.AF_INET6}


def _packed(address: str, family: int) -> bytes:
    return _socket.inet_pton(_AF_OF[family], address)


def destroy_socket(host: "Host", family: int, local: tuple, remote: tuple | None,
                   label: str):
    """Abort the TCP socket of ``host`` with this exact 4-tuple through
    inet_diag SOCK_DESTROY, by tuple *and* cookie (faults.destroy); returns
    its SocketInfo as seen just before.  FaultError when the kernel has no
    such socket or refuses."""
    try:
        return _destroy_socket(host, family, local, remote, label)
    except OSError as exc:  # the diag socket itself failed
        raise FaultError(f"inet_diag failed while destroying {label}: {exc}",
                         netns=host.netns, call="SOCK_DESTROY", errno=exc.errno) from exc


def _destroy_socket(host, family, local, remote, label):
    n = 4 if family == 4 else 16
    remote = remote or (("0.0.0.0" if family == 4 else "::"), 0)
    want = (local[1], remote[1], _packed(local[0], family), _packed(remote[0], family))
    af = _AF_OF[family]
    for buf, off, _length in _diag.dump(host._diag, af):
        head = _diag.decode_header(buf, off)
        if (head[4], head[5], bytes(head[6][:n]), bytes(head[7][:n])) != want:
            continue
        cookie = head[8]
        info = next((s for s in host.sockets() if s.cookie == cookie), None)
        if info is None:
            break  # gone in between: reported below
        # the sockid as the kernel sent it: 4-tuple, interface and cookie
        sockid = bytes(buf[off + 4: off + 52])
        err = _diag.destroy(host._diag, af, _socket.IPPROTO_TCP, sockid)
        if err == _errno.ENOENT:
            break
        if err:
            raise FaultError(f"SOCK_DESTROY of {label} failed: {os.strerror(err)}",
                             netns=host.netns, call="SOCK_DESTROY", errno=err)
        return info
    raise FaultError(f"{label}: the kernel has no such socket any more (reset, timed out or "
                     f"closed by its peer process); nothing to destroy",
                     netns=host.netns, call="SOCK_DESTROY", errno=_errno.ENOENT)
