"""The public surface is a chosen list (as trio's): nothing else leaks."""

import types

import harness
from harness import faults


def public(module) -> set[str]:
    return {n for n, v in vars(module).items()
            if not n.startswith("_") and not isinstance(v, types.ModuleType)
            and n not in ("annotations",)}


def test_harness_exports_exactly_its_list():
    harness._load_all()  # names load on first use (PEP 562)
    assert public(harness) == set(harness.__all__)


def test_faults_exports_exactly_its_list():
    assert public(faults) == set(faults.__all__)
