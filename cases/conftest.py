"""The catalog's verdict table.

Every case module states the seed claim it proves:

    SEED = "003"                 # file in ../shared/seeds/ (by number)
    CLAIM = "after the peer's FIN, send() fails with EPIPE at once"
    VERDICT = "false"            # holds | false | depends

and its docstring says what is true on Linux and why.  A case records the
figures that back its verdict with the ``evidence`` fixture:

    evidence("TIME_WAIT timer", tw.timer_left, "s")

At the end of the run the table (claim, seed, verdict, evidence, result) is
printed and written as Markdown and JSON (``--catalog-report``).
"""

from __future__ import annotations

import json
import os

import pytest

VERDICTS = {"holds": "holds", "false": "false on Linux", "depends": "depends"}
_rows: dict[str, dict] = {}


def _row(item) -> dict | None:
    mod = item.module
    if not hasattr(mod, "CLAIM"):
        return None
    key = item.nodeid.split("::")[0]
    if key not in _rows:
        verdict = getattr(mod, "VERDICT", None)
        if verdict not in VERDICTS:
            raise pytest.UsageError(f"{item.path}: VERDICT must be one of {sorted(VERDICTS)}, "
                                    f"got {verdict!r}")
        _rows[key] = {"case": key, "seed": getattr(mod, "SEED", "?"),
                      "claim": mod.CLAIM, "verdict": VERDICTS[verdict], "evidence": [],
                      "passed": 0, "failed": 0, "skipped": 0}
    return _rows[key]


@pytest.fixture
def evidence(request):
    """Record a measured figure for the catalog table: evidence(name, value, unit)."""
    row = _row(request.node)

    def record(name: str, value, unit: str = "") -> None:
        if row is None:
            return
        text = f"{name} = {value:.3g}{unit}" if isinstance(value, float) else f"{name} = {value}{unit}"
        label = request.node.callspec.id if hasattr(request.node, "callspec") else ""
        row["evidence"].append(f"{text}" + (f" [{label}]" if label else ""))
    return record


def pytest_collection_modifyitems(items):
    for item in items:
        _row(item)


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        row = _rows.get(report.nodeid.split("::")[0])
        if row is not None:
            row[report.outcome] += 1


def pytest_terminal_summary(terminalreporter, config):
    if not _rows:
        return
    rows = sorted(_rows.values(), key=lambda r: r["case"])
    prefix = config.getoption("--catalog-report")
    with open(prefix + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    lines = ["| case | seed | claim | verdict on Linux | evidence | result |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        result = "FAIL" if r["failed"] else ("pass" if r["passed"] else "skip")
        lines.append(f"| {os.path.basename(r['case'])} | {r['seed']} | {r['claim']} | "
                     f"{r['verdict']} | {'; '.join(r['evidence'][:4])} | {result} |")
    with open(prefix + ".md", "w") as f:
        f.write("# Seed claims, verdicts on this kernel\n\n" + "\n".join(lines) + "\n")
    tr = terminalreporter
    tr.section("catalog: seed claims and their verdict on this kernel")
    for r in rows:
        result = "FAIL" if r["failed"] else ("pass" if r["passed"] else "skip")
        tr.write_line(f"{result:4}  seed {r['seed']}  {r['verdict']:<15}  {r['claim']}")
        if r["evidence"]:
            tr.write_line(f"      evidence: {'; '.join(r['evidence'][:4])}")
    tr.write_line(f"written: {prefix}.md, {prefix}.json")
