"""Process faults: a crash (SIGKILL) and a freeze (SIGSTOP ... SIGCONT).

    await faults.kill(peer)              # an action: a crash cannot be undone
    async with faults.pause(peer):       # SIGSTOP here ...
        ...                              # ... SIGCONT here

``kill``: the kernel closes every socket the process held, as close() would
(tcp_close(), net/ipv4/tcp.c): a FIN, or a RST when data the process never
read was left in the receive buffer (RFC 2525 2.17; the RST's reason is
TCP_ABORT_ON_CLOSE).  Its peers then see end of stream, or ECONNRESET.

``pause``: the process is stopped, its sockets are not: the kernel still
ACKs what arrives and queues it (until the receive buffer and window fill),
keepalive probes are still answered, and the application is silent.  SIGCONT
on exit; if the process died meanwhile, there is nothing to resume.

The target is a ``Process`` (``host.spawn``) or a ``Program`` (``host.program()``),
alive when the fault is made.
"""

from __future__ import annotations

from typing import Awaitable

from ..errors import InvalidArgument
from .._host import Program
from .._process import Process
from ._base import Fault


def _process(target: object, where: str) -> Process:
    if isinstance(target, Program):
        proc = target.process
    elif isinstance(target, Process):
        proc = target
    else:
        raise InvalidArgument(f"target must be a Process (host.spawn) or a Program (host.program()), "
                              f"got target={target!r} ({type(target).__name__}) from {where}()")
    proc.host.lab.check_open(f"{where}(): {proc!r}")
    if proc.returncode is not None:
        raise InvalidArgument(f"{proc!r} has already exited (returncode {proc.returncode}); "
                              f"nothing to {where} (from {where}())")
    return proc


def kill(target: Process | Program) -> Awaitable[int]:
    """SIGKILL ``target`` and wait for it to exit; returns (awaitable) its
    returncode (-9)."""
    return _process(target, "kill").kill()


class Pause(Fault):
    def __init__(self, proc: Process):
        super().__init__(proc.host.lab)
        self.process = proc
        self.label = f"pause({proc!r})"

    async def _apply(self) -> None:
        await self.process.pause()

    async def _revert(self) -> None:
        await self.process.resume()  # a no-op for a process that died meanwhile


def pause(target: Process | Program) -> Pause:
    """Freeze ``target`` (SIGSTOP) while the fault is active; SIGCONT on exit."""
    return Pause(_process(target, "pause"))
