"""Virtual time: guest seconds simulated per wall second by the default-timer
cases (cases/defaults/ and TIME_WAIT's 60 s), run as the catalog runs them:
in one uml-6.12-tt guest session (harness._guest_batch), against a floor
measured in the same run: the wall time of a pytest run whose one guest
test does nothing (host pytest, boot, Python and pytest in the guest,
power-off), i.e. the session's fixed price.

    .venv/bin/python bench/bench_virtual_time.py [-n WORKERS]

Prints, per case, the guest seconds its test took (setup + call + teardown,
by the guest's clock), the wall seconds it took in the session (from its
start to its teardown's report; the boot is the floor's), their ratio; then
the totals, and the whole pytest run's guest seconds per wall second.
Needs the built kernel (python -m harness kernel build).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ["cases/defaults", "cases/time_wait/test_time_wait_expires_after_60s.py"]
_FIGURE = re.compile(r"uml-6\.12-tt: ([\d.]+) s guest time in ([\d.]+) s wall time")


def run(args: list[str], report: str) -> list[dict]:
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--catalog-report={report}", *args], cwd=REPO, check=False)
    with open(report + ".json") as f:
        return json.load(f)


def figures(row: dict) -> tuple[float, float]:
    for item in row["evidence"]:
        m = _FIGURE.search(item)
        if m:
            return float(m.group(1)), float(m.group(2))
    raise SystemExit(f"no guest/wall figures for {row['case']} (did it run? {row})")


def floor(tmp: str) -> float:
    """Wall seconds of a guest whose test does nothing."""
    path = os.path.join(tmp, "test_floor.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent("""
            import pytest
            CLAIM = "floor"
            VERDICT = "holds"

            @pytest.mark.kernel("uml-6.12-tt")
            def test_nothing():
                pass
            """))
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path,
                    "--rootdir", tmp], cwd=tmp, check=True, capture_output=True)
    return time.monotonic() - t0


def main() -> None:
    from harness import _kernels
    reason = _kernels.unavailable_reason("uml-6.12-tt")
    if reason:
        raise SystemExit(f"bench_virtual_time: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        empty = floor(tmp)
        t0 = time.monotonic()
        rows = run([*sys.argv[1:], *CASES], os.path.join(tmp, "catalog"))
        total_wall = time.monotonic() - t0
    print(f"\nfloor (a pytest run of one guest test doing nothing: host pytest, boot, guest "
          f"pytest): {empty:.2f} s wall")
    print(f"{'case':<46} {'guest s':>9} {'wall s':>7} {'guest/wall':>10}")
    guest_sum = wall_sum = 0.0
    for row in rows:
        guest, wall = figures(row)
        guest_sum, wall_sum = guest_sum + guest, wall_sum + wall
        print(f"{os.path.basename(row['case']):<46} {guest:>9.1f} {wall:>7.2f} "
              f"{guest / max(wall, 0.05):>10.0f}")  # walls are timed to the runner's 50 ms poll
    print(f"{'all (' + str(len(rows)) + ' cases, one guest session)':<46} {guest_sum:>9.1f} "
          f"{wall_sum:>7.2f} {guest_sum / wall_sum:>10.0f}")
    print(f"whole pytest run: {total_wall:.1f} s wall for {guest_sum:.0f} s of guest time "
          f"({guest_sum / total_wall:.0f} guest s per wall s; floor {empty:.1f} s of it)")


if __name__ == "__main__":
    main()
