"""A host of a lab: a network namespace with one link to the lab's switch.

A host owns sockets (in the test process, through ``listen``/``connect``),
processes (``spawn``) and peers (``peer``: the harness's killable socket
program).  Container hosts are the same object over a container's namespace.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import trio

from . import _diag, _netns
from .errors import InvalidArgument, SetupError
from .observe import snapshot as _snapshot
from .process import Process, Ready, spawn_in, wait_ready
from .sockets import LocalDriver, PeerDriver, SocketFactory, make_socket_in


class Host(SocketFactory):
    """One host.  ``v4``/``v6`` are its addresses on the lab's switch."""

    def __init__(self, lab, name: str, index: int, netns: str, ns_fd: int, v4: str, v6: str,
                 *, profile: str, sysctls: dict[str, str], kind: str = "netns"):
        self.lab, self.name, self.index = lab, name, index
        self.netns, self.ns_fd = netns, ns_fd
        self.v4, self.v6 = v4, v6
        self.profile, self.sysctls, self.kind = profile, sysctls, kind
        self.host = self
        with _netns.entered(ns_fd):
            self._diag = _diag.open_socket()
        self._driver = LocalDriver(make_socket_in(ns_fd))
        self.processes: list[Process] = []
        self.tainted = kind != "netns"  # changed beyond sockets: never reused (Lab.tainted)
        self.generation = 0   # bumped when power_on gives the host a new namespace
        self.container = None  # a container host's Container (id, name, pid)
        self.container_spec = self.image_tag = None

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.v4} {self.v6} netns={self.netns}>"

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
        snap = _snapshot.take(self._diag, self.name)
        if state is not None or port is not None:
            snap = snap.where(state=state, port=port)
        return snap

    def counters(self, group: str = "TcpExt") -> dict[str, int]:
        """The namespace's SNMP counters of one group, as ``nstat`` reads them
        (/proc/net/netstat and /proc/net/snmp): TcpExt (TCPChallengeACK,
        PAWSEstab, TCPTimeWaitOverflow...), Tcp, Ip, Icmp, Udp..."""
        with _netns.entered(self.ns_fd):
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
        """Read a sysctl of this host, or write it when ``value`` is given."""
        if value is not None:
            self.tainted = True
            _netns.write_sysctl(self.ns_fd, key, value)
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
        if not argv or not all(isinstance(a, str) for a in argv):
            raise InvalidArgument(f"argv must be a non-empty list of strings, got {argv!r}")
        self.tainted = True
        try:
            with _netns.entered(self.ns_fd):
                res = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
        except FileNotFoundError as exc:
            raise SetupError(f"cannot run {argv[0]!r} in host {self.name}: not found",
                             netns=self.netns, call=" ".join(argv)) from exc
        if check and res.returncode != 0:
            raise SetupError(f"{' '.join(argv)} failed with {res.returncode} in host {self.name}"
                             f"\nstdout: {res.stdout.decode(errors='replace')[-2000:]}"
                             f"\nstderr: {res.stderr.decode(errors='replace')[-2000:]}",
                             netns=self.netns, call=" ".join(argv))
        return res

    async def spawn(self, argv: list[str], *, ready: Ready | None = None,
                    ready_timeout: float = 5.0, env: dict | None = None,
                    cwd: str | None = None) -> Process:
        """Run ``argv`` in this host; with ``ready``, return once it holds
        (e.g. ``harness.listening(8080)``).  Stopped at teardown."""
        if not (isinstance(ready_timeout, (int, float)) and ready_timeout > 0):
            raise InvalidArgument(f"ready_timeout must be seconds > 0, got {ready_timeout!r}")
        proc = self._start(argv, env=env, cwd=cwd)
        if ready is not None:
            try:
                await wait_ready(proc, ready, ready_timeout)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await proc.kill()
                raise
        return proc

    @property
    def main(self) -> "ContainerMain":
        """A container host's main process (kill = kill the container's main
        process, pause = freeze the container)."""
        if self.container is None:
            raise InvalidArgument(f"host {self.name} is a namespace host: it has no main "
                                  f"process (use spawn() or peer())")
        return ContainerMain(self)

    def _start(self, argv: list[str], **kw) -> Process:
        self.tainted = True
        host_binary = kw.pop("host_binary", False)
        if self.container is not None and not host_binary:
            # the container's filesystem and namespaces, but our own child
            # (no pid namespace: nsenter need not fork), so kill() reaches it
            argv = ["nsenter", f"--target={self.container.pid}", "--mount", "--uts", "--ipc",
                    "--net", "--root", "--wd", "--", *argv]
        n = len(self.processes)
        base = os.path.join(self.lab.artifacts, f"{self.name}.{n}")
        popen, out, err = spawn_in(self, argv, netns_fd=self.ns_fd, out_path=base + ".out",
                                   err_path=base + ".err", **kw)
        proc = Process(self, argv, popen, out, err)
        self.processes.append(proc)
        from .lab import _tracer
        _tracer.watch(proc.pid, self)
        return proc

    async def peer(self) -> "Peer":
        """Start the harness's peer program in this host: sockets that die
        with a process (kill, pause, power off)."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = self._start([sys.executable, "-m", "harness.peer"], env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, host_binary=True)
        return await Peer.start(self, proc)

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
        self._driver.abort_all()
        return _diag.destroy_all(self._diag)

    def release_observers(self) -> None:
        """Abort the test's sockets and close the diag socket; the namespace
        (and its fd) stay for the lab to scrub or destroy."""
        self._driver.abort_all()
        self._diag.close()

    def _replace_namespace(self, ns_fd: int) -> None:
        """Point this host at a fresh namespace (faults.power_on): its fd, a
        diag socket and a socket driver of the new namespace replace the old
        ones, which are closed.  Name, addresses and processes stay."""
        with _netns.entered(ns_fd):
            diag = _diag.open_socket()
        self.tainted = True
        self.generation += 1
        old_fd, old_diag, old_driver = self.ns_fd, self._diag, self._driver
        self.ns_fd, self._diag = ns_fd, diag
        self._driver = LocalDriver(make_socket_in(ns_fd))
        old_driver.abort_all()
        old_diag.close()
        os.close(old_fd)


class ContainerMain:
    """The main process of a container host, through the docker daemon: the
    same kill/pause/resume/wait as a Process."""

    def __init__(self, host: Host):
        self.host = host
        self.pid = host.container.pid

    def __repr__(self) -> str:
        return f"<main process {self.pid} of container {self.host.container.name}>"

    @property
    def returncode(self) -> int | None:
        from . import _docker
        return _docker.exit_code(self.host.container.id)

    async def kill(self) -> int:
        """SIGKILL the main process: the container stops, the kernel closes
        its sockets (FIN, or RST with unread data)."""
        from . import _docker
        await trio.to_thread.run_sync(_docker.kill, self.host.container.id)
        return await self.wait()

    async def wait(self, timeout: float | None = None) -> int:
        from . import _docker
        from .errors import ObservationTimeout
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while (code := _docker.exit_code(self.host.container.id)) is None:
                await trio.sleep(0.005)
            return code
        raise ObservationTimeout(f"{self!r} still running after {timeout}s")

    async def pause(self) -> None:
        """Freeze the container (cgroup freezer): its kernel still ACKs."""
        from . import _docker
        await trio.to_thread.run_sync(_docker.pause, self.host.container.id)

    async def resume(self) -> None:
        from . import _docker
        await trio.to_thread.run_sync(_docker.unpause, self.host.container.id)

    def signal(self, sig: int) -> None:
        from . import _docker
        _docker.kill(self.host.container.id, sig)

    def stderr(self) -> str:
        """The container's log (stdout and stderr), its last lines."""
        from . import _docker
        return _docker.logs(self.host.container.id)


class Peer(SocketFactory):
    """The peer program in a host: same socket API, owned by a process."""

    def __init__(self, host: Host, process: Process, driver: PeerDriver):
        self.host, self.process, self._driver = host, process, driver

    def __repr__(self) -> str:
        return f"<Peer pid={self.process.pid} in {self.host.name}>"

    @classmethod
    async def start(cls, host: Host, proc: Process) -> "Peer":
        popen = proc._popen
        send = trio.lowlevel.FdStream(os.dup(popen.stdin.fileno()))
        recv = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
        popen.stdin.close()
        popen.stdout.close()
        driver = PeerDriver(proc, send, recv)
        host.lab._nursery.start_soon(driver.reader)
        try:
            with trio.fail_after(30):
                out = await driver.call("ready")
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await proc.kill()
            raise SetupError(f"peer program did not start in {host.name}: "
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

