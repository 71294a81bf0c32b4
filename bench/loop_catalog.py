"""Run the catalog N times and print the failures per case: the check that
the catalog is deterministic (issue 9: 100 runs out of 100, half of them with
every core busy).

    python bench/loop_catalog.py --runs 50                 # idle machine
    python bench/loop_catalog.py --runs 50 --busy          # every core busy
    python bench/loop_catalog.py --runs 5 -- -k time_wait  # extra pytest arguments
    python bench/loop_catalog.py --suite --runs 20         # the harness's own tests/
    python bench/loop_catalog.py --keep /tmp/fails ...     # each failed run's junit XML

Each run is ``pytest cases -n 4 -m 'not slow'`` (the CI's run-catalog) with a
junit XML report, from which every test case's outcome is read.  ``--busy``
starts one CPU burner per core for the whole loop and stops it at the end (a
busy loop, at normal priority, in processes of its own).  The load average
before and after is printed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _burn() -> None:  # pragma: no cover - runs in a burner process
    while True:
        pass


def _outcomes(cases: list) -> tuple[dict[str, str], dict[str, str]]:
    """test id -> passed / failed / error / skipped; test id -> failure message."""
    out, why = {}, {}
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag: child for child in case}
        out[name] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                     else "skipped" if "skipped" in kinds else "passed")
        bad = kinds.get("failure", kinds.get("error"))
        if bad is not None:
            lines = [ln.strip() for ln in (bad.text or bad.get("message", "")).splitlines()]
            why[name] = next((ln for ln in reversed(lines) if ln.startswith(("E ", "| ", "|"))
                              and "Error" in ln), (bad.get("message") or "")[:300])
    return out, why


def _slowest(cases: list, n: int = 3) -> list[tuple[float, str]]:
    """The n longest test cases of a run (junit ``time``: set-up and teardown
    included): what made a slow run slow.  Tests run in a guest kernel (a
    ``kernel`` property) are left out: their ``time`` is the guest's clock,
    hours of virtual time for a default-timer case."""
    timed = [(float(c.get("time") or 0), f"{c.get('classname')}::{c.get('name')}")
             for c in cases if not any(p.get("name") == "kernel" for p in c.iter("property"))]
    return sorted(timed, reverse=True)[:n]


def run_once(extra: list[str], slow: bool, workers: int, where: str = "cases",
             keep: str | None = None) -> tuple[tuple, int, float, list]:
    """One run; with ``keep``, a failed run's junit XML (the whole failure
    text of each test) is copied there as run-<time>.xml."""
    with tempfile.TemporaryDirectory(prefix="loop-catalog-") as tmp:
        junit = os.path.join(tmp, "junit.xml")
        argv = [sys.executable, "-m", "pytest", where, "-q", "-p", "no:cacheprovider",
                f"--junitxml={junit}", *(["-n", str(workers)] if workers else []),
                *([] if slow or where != "cases" else ["-m", "not slow"]), *extra]
        t0 = time.monotonic()
        with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as proc:
            try:
                out, err = proc.communicate()
            except BaseException:  # SIGTERM or Ctrl-C: pytest tears its labs down first
                proc.terminate()
                proc.wait(120)
                raise
        res = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        took = time.monotonic() - t0
        if not os.path.exists(junit):
            sys.stderr.write(res.stdout[-3000:] + res.stderr[-3000:])
            raise SystemExit(f"pytest wrote no report (exit {res.returncode})")
        cases = list(ET.parse(junit).getroot().iter("testcase"))
        outcomes = _outcomes(cases)
        if keep and (res.returncode not in (0, 5) or "failed" in outcomes[0].values()
                     or "error" in outcomes[0].values()):
            os.makedirs(keep, exist_ok=True)
            shutil.copy(junit, os.path.join(keep, time.strftime("run-%Y%m%d-%H%M%S.xml")))
        return outcomes, res.returncode, took, _slowest(cases)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--busy", action="store_true", help="keep every core busy meanwhile")
    ap.add_argument("--slow", action="store_true", help="include the slow cases")
    ap.add_argument("--suite", action="store_true", help="loop tests/ (as CI runs it) instead of cases/")
    ap.add_argument("--keep", metavar="DIR", help="copy each failed run's junit XML there")
    ap.add_argument("-n", "--workers", type=int, default=4, help="xdist workers (0: none)")
    ap.add_argument("extra", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error(f"--runs must be >= 1, got {args.runs}")
    # stopped by SIGTERM: unwind as for Ctrl-C (the run's temporary directory goes)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    burners = []
    if args.busy:
        for _ in range(os.cpu_count() or 1):
            p = multiprocessing.Process(target=_burn, daemon=True)
            p.start()
            burners.append(p)
    failures: collections.Counter[str] = collections.Counter()
    seen: collections.Counter[str] = collections.Counter()
    bad_runs, took = 0, []
    load_before = os.getloadavg()
    try:
        for n in range(1, args.runs + 1):
            (outcomes, why), code, t, slowest = run_once(args.extra, args.slow, args.workers,
                                                "tests" if args.suite else "cases", args.keep)
            took.append(t)
            failed = sorted(k for k, v in outcomes.items() if v in ("failed", "error"))
            for k, v in outcomes.items():
                seen[k] += v != "skipped"
            failures.update(failed)
            bad_runs += bool(failed) or code not in (0, 5)
            print(f"run {n}/{args.runs}: {len(outcomes)} cases, {len(failed)} failed, "
                  f"{t:.1f} s, exit {code}, load {os.getloadavg()[0]:.1f}"
                  + (f": {', '.join(failed)}" if failed else ""),
                  flush=True)
            print("    slowest: " + ", ".join(f"{name} {d:.1f} s" for d, name in slowest),
                  flush=True)
            for k in failed:
                print(f"    {k}: {why.get(k, '?')[:400]}", flush=True)
    finally:
        for p in burners:
            p.terminate()
        for p in burners:
            p.join()
    load_after = os.getloadavg()

    print(f"\n{args.runs} runs ({'every core busy' if args.busy else 'no extra load'}, "
          f"{os.cpu_count()} cores, -n {args.workers}): {args.runs - bad_runs} clean, "
          f"{bad_runs} with failures; {min(took):.1f}-{max(took):.1f} s per run")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    if failures:
        width = max(map(len, failures))
        print(f"\n{'case'.ljust(width)}  failed/ran")
        for case, count in failures.most_common():
            print(f"{case.ljust(width)}  {count}/{seen[case]}")
    else:
        print("no case failed")
    return 1 if bad_runs else 0


if __name__ == "__main__":
    sys.exit(main())
