"""What every fault is: an async context manager whose exit undoes exactly
what its entry did, safe to undo twice, and registered on the lab's undo
stack the moment it is applied (so an aborted test still cleans up).

    async with faults.blackhole(server):       # applied here
        ...
                                               # undone here
    f = await faults.blackhole(server).start() # or across steps
    ...
    await f.stop()

Parameters are validated in ``__init__``, before anything is touched.
Subclasses implement ``_apply`` and ``_revert`` (and set ``label``).
"""

from __future__ import annotations

from .._undo import Undo
from ..errors import FaultError, HarnessError


class Fault:
    label = "fault"

    def __init__(self, lab):
        self.lab = lab
        self._undo: Undo | None = None

    @property
    def active(self) -> bool:
        return self._undo is not None and not self._undo.done

    async def start(self) -> "Fault":
        if self._undo is not None:
            raise FaultError(f"{self.label} was already applied; make a new one")
        self.lab.check_open(self.label)  # before anything: its namespaces may be another lab's
        try:
            await self._apply()
        except HarnessError:
            raise
        except OSError as exc:
            raise FaultError(f"{self.label}: {exc}", errno=exc.errno) from exc
        self._undo = self.lab.undo.push(self.label, self._revert)
        return self

    async def stop(self) -> None:
        """Undo (idempotent)."""
        if self._undo is not None:
            await self._undo.run()

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _apply(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _revert(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.label} {'active' if self.active else 'inactive'}>"
