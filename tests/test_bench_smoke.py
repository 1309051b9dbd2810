"""bench/run.py --quick runs and prints one valid JSON line per benchmark (benchmarks never fail CI)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_bench_quick_noop_plan_prints_json_lines() -> None:
    res = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", "noop_plan", "--json"],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert row["name"] == "noop_plan" and row["quick"] is True
    assert isinstance(row["ratio"], float) and 0 < row["ratio"] < 1
    assert row["cold_s"] > row["warm_s"] > 0 and row["goal"] == 0.05
