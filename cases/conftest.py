"""The catalog's verdict table.

Every case module states the seed claim it proves:

    SEED = "003"                 # file in ../shared/seeds/ (by number)
    CLAIM = "after the peer's FIN, send() fails with EPIPE at once"
    VERDICT = "false"            # holds | false | depends

and its docstring says what is true on Linux and why.  A case records the
figures that back its verdict with the ``evidence`` fixture:

    evidence("TIME_WAIT timer", tw.timer_left, "s")

At the end of the run the table (claim, seed, verdict, evidence, result) is
printed and written as Markdown and JSON (``--catalog-report``).  A case
that ran on several kernels (``--harness-kernel``, ``@pytest.mark.kernel``)
gets a result column per kernel; where a case's result differs between
kernels, its module says why in ``KERNEL_NOTES`` (kernel name -> the kernel
change), which the table shows beside the result.
"""

from __future__ import annotations

import json
import os

import pytest

VERDICTS = {"holds": "holds", "false": "false on Linux", "depends": "depends"}
_rows: dict[str, dict] = {}  # in the process that reports (the xdist controller too)


def pytest_collection_modifyitems(items):
    """Carry each case's claim in its reports (xdist relays user_properties),
    from collection on, so a report made before any fixture ran (a skip, a
    guest kernel's report) carries it too."""
    for item in items:
        mod = getattr(item, "module", None)
        if mod is None or not hasattr(mod, "CLAIM"):
            continue
        verdict = getattr(mod, "VERDICT", None)
        if verdict not in VERDICTS:
            raise pytest.UsageError(f"{item.path}: VERDICT must be one of "
                                    f"{sorted(VERDICTS)}, got {verdict!r}")
        item.user_properties.append(
            ("catalog", {"seed": getattr(mod, "SEED", "?"), "claim": mod.CLAIM,
                         "verdict": VERDICTS[verdict],
                         "notes": dict(getattr(mod, "KERNEL_NOTES", {}))}))


@pytest.fixture
def evidence(request):
    """Record a measured figure for the catalog table: evidence(name, value, unit)."""
    label = request.node.callspec.id if hasattr(request.node, "callspec") else ""

    def record(name: str, value, unit: str = "") -> None:
        text = f"{name} = {value:.4g}{unit}" if isinstance(value, float) else f"{name} = {value}{unit}"
        request.node.user_properties.append(("evidence", text + (f" [{label}]" if label else "")))
    return record


def pytest_runtest_logreport(report):
    props = dict((k, v) for k, v in report.user_properties if k == "catalog")
    if "catalog" not in props:
        return
    key = report.nodeid.split("::")[0]
    row = _rows.setdefault(key, {"case": key, **props["catalog"], "evidence": [],
                                 "passed": 0, "failed": 0, "skipped": 0, "kernels": {}})
    kernel = dict(report.user_properties).get("kernel", "host")
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        row[report.outcome] += 1
        per = row["kernels"].setdefault(kernel, {"passed": 0, "failed": 0, "skipped": 0})
        per[report.outcome] += 1
        if report.when == "call":
            row["evidence"] += [v for k, v in report.user_properties if k == "evidence"]


def _merged(evidence: list[str]) -> list[str]:
    """The same figure measured for several parameters is shown once:
    'x = 60 s [ipv4]', 'x = 60 s [ipv6]' -> 'x = 60 s [ipv4, ipv6]'."""
    seen: dict[str, list[str]] = {}
    for item in evidence:
        text, _, label = item.partition(" [")
        seen.setdefault(text, []).append(label.rstrip("]"))
    return [text + (f" [{', '.join(l for l in labels if l)}]" if any(labels) else "")
            for text, labels in seen.items()]


def _result(counts: dict) -> str:
    return "FAIL" if counts["failed"] else ("pass" if counts["passed"] else "skip")


def _kernel_label(name: str) -> str:
    from harness._kernels import KERNELS
    k = KERNELS.get(name)
    return f"{name} ({k.release}{', virtual time' if k.time == 'virtual' else ''})" if k else name


def pytest_terminal_summary(terminalreporter, config):
    if not _rows or os.environ.get("HARNESS_GUEST_KERNEL"):
        return  # in a guest the host reports (and the guest's root is read-only)
    rows = sorted(_rows.values(), key=lambda r: r["case"])
    for r in rows:
        r["evidence"] = _merged(r["evidence"])
    prefix = config.getoption("--catalog-report")
    with open(prefix + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    from harness._kernels import KERNELS
    order = list(KERNELS)                           # host, uml-6.12-tt, uml-6.1
    kernels = sorted({k for r in rows for k in r["kernels"]},
                     key=lambda k: order.index(k) if k in order else len(order))
    lines = ["| case | seed | claim | verdict on Linux | evidence | "
             + " | ".join(_kernel_label(k) for k in kernels) + " |",
             "|---|---|---|---|---|" + "---|" * len(kernels)]
    for r in rows:
        cells = []
        for k in kernels:
            cell = _result(r["kernels"][k]) if k in r["kernels"] else "-"
            if k in r["notes"]:
                cell += f" ({r['notes'][k]})"
            cells.append(cell)
        lines.append(f"| {os.path.basename(r['case'])} | {r['seed']} | {r['claim']} | "
                     f"{r['verdict']} | {'; '.join(r['evidence'])} | {' | '.join(cells)} |")
    with open(prefix + ".md", "w") as f:
        where = "this kernel" if kernels == ["host"] else "each kernel"
        f.write(f"# Seed claims, verdicts on {where}\n\n" + "\n".join(lines) + "\n")
    tr = terminalreporter
    tr.section("catalog: seed claims and their verdict on this kernel")
    if kernels != ["host"]:
        tr.write_line("kernels: " + ", ".join(_kernel_label(k) for k in kernels))
    for r in rows:
        result = _result(r)
        tr.write_line(f"{result:4}  seed {r['seed']}  {r['verdict']:<15}  {r['claim']}")
        if kernels != ["host"]:
            tr.write_line("      per kernel: " + ", ".join(
                f"{k} {_result(r['kernels'][k]) if k in r['kernels'] else '-'}"
                + (f" ({r['notes'][k]})" if k in r["notes"] else "") for k in kernels))
        if r["evidence"]:
            tr.write_line(f"      evidence: {'; '.join(r['evidence'][:4])}")
    tr.write_line(f"written: {prefix}.md, {prefix}.json")
