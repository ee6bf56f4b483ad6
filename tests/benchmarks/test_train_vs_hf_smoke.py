"""CI's smoke run of `benchmarks/train_vs_hf.py --quick` (tiny model, a few steps): the benchmark must keep
working, and with packing off the two trainers must compute the same per-step losses (the equality the
real SmolLM2 run reports). Its timings are noise at this size and are not checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_benchmark_reports_speed_and_equal_losses(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_vs_hf.py"), "--quick", "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "speedup:" in run.stdout and "per-step loss" in run.stdout
    report = json.loads(report_path.read_text())
    assert report["openft_tokens_per_s"] > 0 and report["hf_tokens_per_s"] > 0
    assert report["steps"] == 6
    assert report["max_loss_rel_diff"] <= 1e-4, report
