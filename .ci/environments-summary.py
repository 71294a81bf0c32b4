"""Summary of `bash .ci/environments`: passed / skipped / failed per
environment, every skip reason (with its count), every failure, and what
`python -m harness doctor` said there.  Reads RESULTS/<env>.log as written
by the script (pytest's -rfEs short summary and its final count lines).

    python3 .ci/environments-summary.py RESULTS ENV...
"""

from __future__ import annotations

import collections
import os
import re
import sys

COUNTS = re.compile(r"^=*\s*((?:\d+ (?:passed|failed|skipped|errors?|deselected|xfailed|xpassed|"
                    r"warnings?)(?:, )?)+) in ([\d.]+)s")
SKIP = re.compile(r"^SKIPPED \[(\d+)\] ([^:]+(?::\d+)?): (.*)$")
FAIL = re.compile(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$")


def parse(path: str) -> dict:
    totals = collections.Counter()
    skips = collections.Counter()
    fails, doctor, sessions = [], [], []
    section = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("--- "):
                section = line[4:]
                continue
            if section == "doctor" and line.startswith("  no"):
                doctor.append(line.strip())
            m = COUNTS.match(line)
            if m:
                sessions.append((section, m.group(1), float(m.group(2))))
                for part in m.group(1).split(", "):
                    n, what = part.split(" ", 1)
                    totals[{"error": "errors", "warning": "warnings"}.get(what, what)] += int(n)
                continue
            m = SKIP.match(line)
            if m:
                reason = re.sub(r"^Skipped: ", "", m.group(3))
                skips[reason] += int(m.group(1))
                continue
            m = FAIL.match(line)
            if m:
                fails.append(f"{m.group(1)} {m.group(2)}" + (f": {m.group(3)[:200]}" if m.group(3) else ""))
    return {"totals": totals, "skips": skips, "fails": fails, "doctor": doctor,
            "sessions": sessions}


def main(results: str, envs: list[str]) -> int:
    rows, bad = [], 0
    for env in envs:
        log = os.path.join(results, f"{env}.log")
        if not os.path.exists(log):
            rows.append((env, None))
            continue
        rows.append((env, parse(log)))
    print("\n== environments: passed / skipped / failed (errors) ==")
    for env, r in rows:
        secs = open(os.path.join(results, f"{env}.seconds")).read().strip() \
            if os.path.exists(os.path.join(results, f"{env}.seconds")) else "?"
        rc_file = os.path.join(results, f"{env}.rc")
        rc = open(rc_file).read().strip() if os.path.exists(rc_file) else "?"
        if r is None or not r["sessions"]:
            print(f"{env:<11} NO RESULT (pytest never finished, exit status {rc}; see "
                  f"{results}/{env}.log)  [{secs} s]")
            bad += 1
            continue
        t = r["totals"]
        print(f"{env:<11} {t['passed']:4d} passed  {t['skipped']:3d} skipped  {t['failed']:3d} failed"
              f"  {t['errors']:2d} errors   [{secs} s wall, incl. set-up]")
        bad += bool(t["failed"] or t["errors"])
        if len(r["sessions"]) > 1:
            for section, counts, secs in r["sessions"]:
                print(f"{'':<11}   {section}: {counts} in {secs:.0f} s")
    for env, r in rows:
        if r is None:
            continue
        print(f"\n-- {env}")
        for line in r["doctor"]:
            print(f"   doctor: {line}")
        for reason, n in r["skips"].most_common():
            print(f"   skip x{n}: {reason}")
        for line in r["fails"]:
            print(f"   {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
