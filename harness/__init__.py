"""A network fault-injection test harness: real little networks of Linux
network namespaces, broken on purpose, observed exactly.

The public surface is this list; everything else is private.  The names are
loaded on first use (PEP 562), so that ``import harness.plugin`` — which
pytest does at every start, in every project that installed us — costs
neither trio nor the library (tests/test_plugin_import.py holds the line).
"""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "Outcome": "._sockops",
    "CallFailed": ".errors", "CleanupError": ".errors", "FaultError": ".errors",
    "HarnessError": ".errors", "InvalidArgument": ".errors", "LabClosed": ".errors",
    "LabTimeout": ".errors",
    "ObservationTimeout": ".errors", "SetupError": ".errors", "Unsupported": ".errors",
    "Host": "._host", "Program": "._host",
    "Lab": "._lab", "open_lab": "._lab",
    "Capture": "._observe.capture", "Seg": "._wire", "SegmentMismatch": "._observe.expect",
    "Condition": "._observe.timeline", "SocketInfo": "._observe.snapshot", "Snapshot": "._observe.snapshot",
    "Event": "._observe.timeline", "Timeline": "._observe.timeline",
    "entered": "._observe.timeline", "error_reported": "._observe.timeline",
    "retransmitted": "._observe.timeline", "rst_received": "._observe.timeline",
    "rst_sent": "._observe.timeline", "syscall_failed": "._observe.timeline",
    "Process": "._process", "listening": "._process",
    "Socket": "._sockets",
}

__all__ = sorted(_EXPORTS)


def _load_all() -> None:
    """Bind every public name (and make the library usable from asyncio and
    sync tests: see harness._bridge)."""
    for name, module in _EXPORTS.items():
        globals()[name] = getattr(importlib.import_module(module, __name__), name)
    from ._bridge import install
    install()


def __getattr__(name: str):
    if name in _EXPORTS:
        _load_all()
        return globals()[name]
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
