"""Topology: hosts as plain data (specs) and the backends that realise them.

Every kind of host implements the host-backend protocol of
``topology.backend``; ``kinds()`` lists them for those that must visit
every kind (the sweep, the feature report)."""

from __future__ import annotations


def kinds() -> list:
    """Every kind of host (``topology.backend.Kind``), the default first.
    Imported on demand: the container kind loads the docker wrapper."""
    from . import container, netns
    return [netns.KIND, container.KIND]
