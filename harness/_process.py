"""Processes in hosts: the user's server binary, or the harness's peer.

A process is forked from a thread that has entered the host's namespace, so
it (and its children) live there.  Output goes to files in the lab's
artifact directory (no pipe can fill and stall it); exit is awaited on a
pidfd.  Readiness is a condition polled with a deadline, never a sleep.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from typing import Awaitable, Callable

import trio

from . import _check, _netns
from .errors import InvalidArgument, ObservationTimeout, SetupError


def take_pipes(proc: "Process") -> tuple[int, int]:
    """The stdin and stdout of a process spawned with pipes (a peer program)
    as fds of the caller's own; the Popen's ends are closed."""
    popen = proc._popen
    fds = (os.dup(popen.stdin.fileno()), os.dup(popen.stdout.fileno()))
    popen.stdin.close()
    popen.stdout.close()
    return fds


class Process:
    """A process running in a host.  ``returncode`` is None while it runs;
    negative for a signal, as in subprocess."""

    def __init__(self, host, argv: list[str], popen: subprocess.Popen, out_path: str,
                 err_path: str):
        self.host, self.argv, self._popen = host, argv, popen
        self.pid = popen.pid
        self.kernel_pid: int | None = None  # the pid tracefs reports (set by the tracer)
        self.stdout_path, self.stderr_path = out_path, err_path
        self._pidfd = os.pidfd_open(self.pid)

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<Process {self.pid} {self.argv[0]!r} in {self.host.name} {state}>"

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def stdout(self) -> str:
        with open(self.stdout_path, errors="replace") as f:
            return f.read()

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def output(self) -> str:
        """stdout then stderr, as written so far."""
        return self.stdout() + self.stderr()

    async def wait_output(self, pattern, *, timeout: float = 5.0, stream: str = "both"):
        """Wait until a line the process wrote matches ``pattern`` (a regex
        string or compiled pattern; e.g. "ready to accept connections") on
        ``stream`` ("stdout", "stderr" or "both"); returns the re.Match.
        Fails early if the process exits without having written it."""
        read = {"stdout": self.stdout, "stderr": self.stderr, "both": self.output}.get(stream)
        if read is None:
            raise InvalidArgument(f"stream must be 'stdout', 'stderr' or 'both', got {stream!r}")
        return await wait_output(self, pattern, timeout=timeout, read=read)

    def signal(self, sig: int) -> None:
        # a closed lab's processes were reaped: the pid may be another's now
        self.host.lab.check_open(repr(self))
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and return the returncode."""
        _check.seconds(timeout, none_ok=True)
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while self.returncode is None:
                if self._pidfd < 0:  # already closed: fall back to polling
                    await trio.sleep(0.001)
                    continue
                await trio.lowlevel.wait_readable(self._pidfd)
            return self.returncode
        raise ObservationTimeout(f"{self!r} still running after {timeout}s")

    async def kill(self) -> int:
        """SIGKILL: the kernel closes the process's sockets (FIN, or RST when
        data was left unread)."""
        self.signal(signal.SIGKILL)
        return await self.wait()

    async def pause(self) -> None:
        """SIGSTOP, returning once the process is stopped: its kernel still
        ACKs, the application is silent."""
        self.signal(signal.SIGSTOP)
        await self._wait_stat(lambda s: s in "Tt", "stopped")

    async def resume(self) -> None:
        self.signal(signal.SIGCONT)
        await self._wait_stat(lambda s: s not in "Tt", "running")

    async def _wait_stat(self, ok: Callable[[str], bool], what: str, timeout: float = 5.0) -> None:
        from ._poll import until

        def reached() -> bool:
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                return True  # gone
            return ok(state) or self.returncode is not None
        await until(reached, time.monotonic() + timeout,
                    timeout=lambda _: ObservationTimeout(f"{self!r} not {what} after {timeout}s"))

    def close(self) -> None:
        """Close the pidfd (idempotent: a second close must not hit whatever
        file reused the number)."""
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            os.close(fd)


def check_argv(argv: object, where: str) -> list[str]:
    """An argv is a non-empty list (or tuple) of strings: a string would be
    taken for a sequence of one-letter arguments, or run through no shell."""
    if not isinstance(argv, (list, tuple)) or not argv or \
            not all(isinstance(a, str) for a in argv):
        hint = f" (write [{argv!r}] or {argv.split()!r})" if isinstance(argv, str) else ""
        raise InvalidArgument(f"argv must be a non-empty list of strings, got argv={argv!r} "
                              f"({type(argv).__name__}) from {where}{hint}")
    return list(argv)


# restore_signals=True (Popen's default) already resets these that Python ignores itself
_RESTORED = {signal.SIGPIPE, signal.SIGXFSZ}


def clean_signals() -> dict:
    """Popen arguments that start the child with every signal at its default
    action and an empty signal mask, as a fresh login would.  exec(2) resets
    caught signals but keeps ignored ones and the mask: a runner started in
    the background (SIGINT ignored) or from a thread that blocks signals
    would hand that on to the servers it spawns.  Empty (and Popen keeps its
    fast vfork path) when the calling thread has nothing to hand on."""
    ignored = [s for s in signal.valid_signals()
               if s not in _RESTORED and s not in (signal.SIGKILL, signal.SIGSTOP)
               and signal.getsignal(s) == signal.SIG_IGN]
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    if not ignored and not blocked:
        return {}

    def reset() -> None:  # in the child, between fork and exec
        for s in ignored:
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
    return {"preexec_fn": reset}


def popen_in(netns_fd: int, world: "_netns.World | None", argv: list[str],
             **popen_kw) -> subprocess.Popen:
    """Popen ``argv`` with the calling thread in the host's namespaces (its
    ``world`` too, for good: call it only in a thread of its own, see
    ``_netns.in_own_thread``), with default signal dispositions and an empty
    mask."""
    if world is not None:
        world.enter()
    with _netns.inside(netns_fd):
        return subprocess.Popen(argv, **clean_signals(), **popen_kw)


def spawn_in(host, argv: list[str], *, netns_fd: int, out_path: str, err_path: str,
             world: "_netns.World | None" = None,
             env: dict | None = None, cwd: str | None = None, stdin=subprocess.DEVNULL,
             stdout=None, before_fork: Callable[[], None] | None = None,
             **popen_kw) -> tuple[subprocess.Popen, str, str]:
    """Fork ``argv`` inside the namespace (and ``world``), with default
    signal dispositions and an empty mask.  Synchronous (fork+exec is ~1 ms).

    The fork happens in a thread made for it, after ``before_fork()`` ran
    in that thread (the tracer lists it there, so the kernel lists the child
    at fork; the thread's exit unlists it).  ``popen_kw``: user, group,
    extra_groups (set in the child before exec)."""
    argv = check_argv(argv, f"host {host.name}")
    out = open(out_path, "wb") if stdout is None else None
    err = open(err_path, "wb")

    def fork() -> subprocess.Popen:
        if before_fork is not None:
            before_fork()
        return popen_in(netns_fd, world, argv, stdin=stdin,
                        stdout=stdout if out is None else out, stderr=err, env=env, cwd=cwd,
                        start_new_session=True, **popen_kw)

    try:
        popen = _netns.in_own_thread(fork, "harness-spawn")
    except FileNotFoundError as exc:
        raise SetupError(f"cannot spawn {argv[0]!r} in host {host.name}: no such file or "
                         f"directory", netns=host.netns, call="execve") from exc
    except PermissionError as exc:
        raise SetupError(f"cannot spawn {argv[0]!r} in host {host.name}: permission denied",
                         netns=host.netns, call="execve") from exc
    finally:
        for f in (out, err):
            if f is not None:
                f.close()
    return popen, out_path, err_path


async def wait_output(proc, pattern, *, timeout: float, read: Callable[[], str]):
    """Poll ``read()`` until a line matches ``pattern``; the process exiting
    first, or the deadline, fails with what it wrote last."""
    if isinstance(pattern, str):
        try:
            pattern = re.compile(pattern, re.MULTILINE)
        except re.error as exc:
            raise InvalidArgument(f"pattern is not a regular expression: {pattern!r}: {exc}") \
                from None
    elif not isinstance(pattern, re.Pattern):
        raise InvalidArgument(f"pattern must be a regex string or re.Pattern, got {pattern!r}")
    _check.seconds(timeout)
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        expired = time.monotonic() >= deadline  # before the look (see _poll.until)
        exited = proc.returncode is not None  # read after: its last words count
        text = read()
        for line in text.splitlines():
            m = pattern.search(line)
            if m:
                return m
        if exited:
            raise ObservationTimeout(f"{proc!r} exited ({proc.returncode}) without writing a "
                                     f"line matching {pattern.pattern!r}; last output: "
                                     f"{text[-500:]!r}")
        if expired:
            raise ObservationTimeout(f"no line matching {pattern.pattern!r} from {proc!r} "
                                     f"within {timeout}s; last output: {text[-500:]!r}")
        await trio.sleep(delay)
        delay = min(delay * 2, 0.02)


Ready = Callable[[object], "bool | Awaitable[bool]"]


async def wait_ready(proc: Process, ready: Ready, timeout: float) -> None:
    """Poll ``ready(host)`` until true; fail if the process exits first or
    the deadline passes (the caller then kills it)."""
    from ._poll import until

    async def poll() -> bool:
        result = ready(proc.host)
        if hasattr(result, "__await__"):
            result = await result
        if not result and proc.returncode is not None:
            raise SetupError(f"{proc!r} exited with {proc.returncode} before it was ready "
                             f"({ready!r}); stderr: {proc.stderr()[-500:]!r}",
                             netns=proc.host.netns)
        return bool(result)
    await until(poll, time.monotonic() + timeout, first=0.0005, longest=0.02,
                timeout=lambda _: ObservationTimeout(
                    f"{proc!r} not ready within {timeout}s: {ready!r} never held"))


class listening:
    """Readiness: a TCP socket in LISTEN on ``port`` in the host."""

    def __init__(self, port: int):
        if not isinstance(port, int) or not 0 < port < 65536:
            raise InvalidArgument(f"port must be an int in 1..65535, got {port!r}")
        self.port = port

    def __call__(self, host) -> bool:
        return any(s.state == "LISTEN" and s.sport == self.port for s in host.sockets())

    def __repr__(self) -> str:
        return f"listening({self.port})"
