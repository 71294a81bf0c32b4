"""The plugin module is cheap to import: pytest imports it at every start in
every project that installed the package, lab or no lab.  ``import
harness.plugin`` must not import trio, the library, or its dependencies."""

import json
import subprocess
import sys

HEAVY = ("trio", "pyroute2", "scapy", "docker", "outcome", "sniffio", "pytest_trio")


def imported_by(statement: str) -> set[str]:
    code = (f"import sys; before = set(sys.modules); {statement}; import json; "
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    return set(json.loads(run.stdout))


def test_importing_the_plugin_imports_no_library_and_no_trio():
    baseline = imported_by("import pytest")
    new = imported_by("import pytest; import harness.plugin") - baseline
    assert {m for m in new if m.split(".")[0] == "harness"} == {"harness", "harness.plugin"}
    assert not {m for m in new if m.split(".")[0] in HEAVY}, sorted(new)


def test_the_library_loads_on_first_use():
    new = imported_by("import harness; harness.Lab")
    assert {"trio", "harness._lab", "harness.faults", "harness._bridge"} <= new
