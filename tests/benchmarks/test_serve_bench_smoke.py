"""CI's smoke run of `benchmarks/serve_bench.py --quick`: a real openft server on the tiny model, two
fine-tuned adapters made by a real job, concurrency 1 and 2, four streamed requests per cell. The
benchmark must keep working end to end: every cell measured without errors, every figure a number,
every goal's ratio computed and judged. The values themselves are noise at this size and are not checked."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_MODEL_NAME

REPO = Path(__file__).resolve().parents[2]


def test_quick_benchmark_reports_every_cell_and_goal(tmp_path: Path, models_dir: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [sys.executable, str(REPO / "benchmarks" / "serve_bench.py"), "--quick", "--json", str(report_path)]
    run = subprocess.run(
        [*command, "--models-dir", str(models_dir), "--model", TINY_MODEL_NAME],  # the session's tiny model
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())

    cells = report["cells"]
    assert sorted((c["concurrency"], c["adapters"]) for c in cells) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for cell in cells:
        assert cell["errors"] == 0 and cell["requests"] == 4, cell
        assert len(set(cell["models"])) == cell["adapters"]  # different fine-tuned models, not one named twice
        for key in ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "tokens_per_reply"):
            assert isinstance(cell[key], float) and math.isfinite(cell[key]) and cell[key] > 0, (key, cell)
        assert cell["output_tokens"] == round(cell["tokens_per_reply"] * cell["requests"])
        assert cell["ttft_p99_ms"] >= cell["ttft_p50_ms"] and cell["itl_p99_ms"] >= cell["itl_p50_ms"]
    two = next(c for c in cells if c["adapters"] == 2)
    one = next(c for c in cells if c["adapters"] == 1)
    assert one["models"][0] in two["models"]  # the 1-adapter cells use the first of the same models

    goals = report["goals"]
    assert len(goals) == 4  # speed-up, adapters' cost, TTFT spread with 1 and with 2 adapters
    for goal in goals:
        assert isinstance(goal["value"], float) and math.isfinite(goal["value"]), goal
        assert goal["verdict"] in ("PASS", "MISS") and goal["passed"] is (goal["verdict"] == "PASS")
        printed = re.search(rf"{re.escape(goal['name'])}\s+([0-9.]+)\s+goal .*(PASS|MISS)", run.stdout)
        assert printed is not None, run.stdout
        assert float(printed.group(1)) == round(goal["value"], 2) and printed.group(2) == goal["verdict"]
    speedup = goals[0]
    cell_at = {(c["concurrency"], c["adapters"]): c for c in cells}
    assert math.isclose(speedup["value"], cell_at[(2, 1)]["tokens_per_s"] / cell_at[(1, 1)]["tokens_per_s"])
