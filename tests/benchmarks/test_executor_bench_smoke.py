"""CI's smoke run of `benchmarks/executor_bench.py --runs 1`: a local and a Ray-executor server (on a real local Ray
cluster), one 2-rank job each. The benchmark must keep working: both latencies measured, the ratio computed. The
values are not checked (they depend on the machine's load)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_executor_benchmark_measures_both_executors(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "executor_bench.py"),
        "--runs",
        "1",
        "--json",
        str(report_path),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert len(report["local_s"]) == len(report["ray_s"]) == 1
    for key in ("local_median_s", "ray_median_s", "ratio_ray_over_local"):
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0, (key, report)
    assert "ratio Ray / local" in run.stdout
